"""Scenario 2: after the disaster and recover_full.yml the stack is exactly as before the disaster."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from recovery_checks import SERVICES, compare_with_snapshot, psql, running_services  # noqa: E402

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


def test_every_volume_is_back_with_its_compose_labels(host):
    for name in ("postgres-data", "grafana-data", "prometheus-data", "loki-data", "redis-data"):
        result = host.run("docker volume inspect --format '{{index .Labels \"com.docker.compose.project\"}}' inventario-retail_%s", name)
        assert result.rc == 0, result.stderr
        assert result.stdout.strip() == "inventario-retail"
