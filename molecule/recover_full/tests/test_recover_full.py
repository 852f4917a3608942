"""Scenario 2: after the disaster and recover_full.yml the stack is exactly as before the disaster."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from recovery_checks import (SERVICES, compare_with_snapshot, container_exec, newest_volume_metadata, psql,  # noqa: E402
                             running_services)

testinfra_hosts = ["local://"]


def test_data_and_volumes_equal_the_pre_disaster_state(host):
    compare_with_snapshot(host)


def test_the_newer_dump_went_on_top_of_the_older_volume_archive(host):
    assert psql(host, "SELECT count(*) FROM categorias WHERE nombre = 'Panadería artesanal'") == "1"
    assert psql(host, "SELECT count(*) FROM ventas WHERE cliente = 'Señora Muñoz'") == "1"


def test_the_database_from_the_volume_archive_was_kept_aside(host):
    kept = psql(host, "SELECT datname FROM pg_database WHERE datname LIKE 'minimarket_pre_restore_%'", db="postgres").split()
    assert len(kept) == 1, kept
    assert psql(host, "SELECT count(*) FROM categorias WHERE nombre = 'Panadería artesanal'", db=kept[0]) == "0"


def test_every_service_is_running(host):
    assert running_services(host) == sorted(SERVICES)


def test_each_service_serves_the_data_of_its_online_backup(host):
    metadata = newest_volume_metadata(host)
    consistency = {v["name"].split("_", 1)[1]: v["consistency"] for v in metadata["volumes"]}
    assert {name: c["mode"] for name, c in consistency.items()} == {
        "postgres-data": "stop", "loki-data": "stop", "redis-data": "redis", "prometheus-data": "prometheus", "grafana-data": "sqlite"}
    redis = consistency["redis-data"]
    assert container_exec(host, "redis", "redis-cli", "get", redis["canary_key"]) == redis["canary"]
    grafana = consistency["grafana-data"]["databases"][0]
    assert container_exec(host, "grafana", "python3", "-c", "import sqlite3; print(sqlite3.connect('/var/lib/grafana/grafana.db')"
                          ".execute('SELECT count(*) FROM dashboard').fetchone()[0])") == str(grafana["tables"]["dashboard"])
    prometheus = consistency["prometheus-data"]
    query = ("import json, sys, urllib.request, urllib.parse; print(json.dumps(sorted(r['metric']['instance'] for r in json.load("
             "urllib.request.urlopen('http://localhost:9090/api/v1/query?' + urllib.parse.urlencode({'query': 'up', 'time': sys.argv[1]})))"
             "['data']['result'])))")
    assert json.loads(container_exec(host, "prometheus", "python3", "-c", query, str(prometheus["time"]))) == sorted(
        s["instance"] for s in prometheus["series"])


def test_every_volume_is_back_with_its_compose_labels(host):
    for name in ("postgres-data", "grafana-data", "prometheus-data", "loki-data", "redis-data"):
        result = host.run("docker volume inspect --format '{{index .Labels \"com.docker.compose.project\"}}' inventario-retail_%s", name)
        assert result.rc == 0, result.stderr
        assert result.stdout.strip() == "inventario-retail"
