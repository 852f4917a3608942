"""Online volume backups and the guide's volume check, on the real Redis, Prometheus and the busy SQLite Grafana.

The playbook test runs on the session's ``compose_stack`` (project ``mmtest-<hex>``); the fault tests build
their own volumes and containers under a project name of their own that is never started by compose.
"""
import json
import os
import re
import subprocess
import time
import uuid

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _journal
from ansible_collections.minimarket.backup.plugins.module_utils import _service_check as sc
from ansible_collections.minimarket.backup.plugins.module_utils import _volume_archive as va
from ansible_collections.minimarket.backup.plugins.module_utils._docker import Engine
from test_playbooks import ansible
from testenv.stack import SERVICES_IMAGE

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPOSE_FILE = os.path.join(REPO, "testenv", "compose", "docker-compose.development.yml")
CHECKS = [
    {"service": "redis", "kind": "redis", "min_keys": 1},
    {"service": "prometheus", "kind": "prometheus"},
    {"service": "grafana", "kind": "sqlite", "database": "/var/lib/grafana/grafana.db", "table": "dashboard", "min_rows": 1},
    {"service": "loki", "kind": "http", "port": 3100, "path": "/ready"},
]


def docker(*args, check=True):
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def scratch_objects(project):
    label = "label=%s=%s" % (sc.SCRATCH_LABEL, project)
    return (docker("ps", "-aq", "--filter", label), docker("network", "ls", "-q", "--filter", label),
            docker("volume", "ls", "-q", "--filter", label))


def started_at(container):
    return docker("inspect", "-f", "{{.State.StartedAt}}", container)


def test_weekly_backup_keeps_the_online_services_running_and_verify_asks_them(compose_stack, tmp_path):
    stack = compose_stack
    volumes = [stack.volumes[v] for v in ("postgres-data", "grafana-data", "prometheus-data", "loki-data", "redis-data")]
    extra = {
        "minimarket_backup_root": str(tmp_path), "minimarket_compose_project": stack.project,
        "minimarket_volumes": volumes,
        "minimarket_volume_consistency": {stack.volumes["redis-data"]: "redis", stack.volumes["prometheus-data"]: "prometheus",
                                          stack.volumes["grafana-data"]: "sqlite"},
        "backup_verify_database": False,
    }
    # Prometheus has scraped the apps at least once, so `up` has series at backup time.
    for unused in range(60):
        if docker("exec", stack.containers["prometheus"], "ls", "/prometheus/wal", check=False):
            break
        time.sleep(1)
    time.sleep(3)
    before = dict((s, started_at(stack.containers[s])) for s in ("redis", "prometheus", "grafana", "loki", "postgres"))
    proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/backup_volumes.yml", "-e", json.dumps(extra))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for service in ("redis", "prometheus", "grafana"):
        assert started_at(stack.containers[service]) == before[service], "%s was restarted" % service
    for service in ("loki", "postgres"):
        assert started_at(stack.containers[service]) != before[service], "%s was not stopped" % service
    meta_name = sorted(n for n in os.listdir(tmp_path / "volumes") if n.endswith("_metadata.json"))[-1]
    metadata = json.loads((tmp_path / "volumes" / meta_name).read_text())
    consistency = dict((v["name"], v["consistency"]) for v in metadata["volumes"])
    assert [consistency[v]["mode"] for v in volumes] == ["stop", "sqlite", "prometheus", "stop", "redis"]
    redis = consistency[stack.volumes["redis-data"]]
    assert docker("exec", stack.containers["redis"], "redis-cli", "get", redis["canary_key"]) == redis["canary"]
    assert docker("exec", stack.containers["redis"], "redis-cli", "config", "get", "auto-aof-rewrite-percentage").split() == [
        "auto-aof-rewrite-percentage", "100"]
    assert {s["job"] for s in consistency[stack.volumes["prometheus-data"]]["series"]} == {"prometheus", "minimarket_apps"}
    grafana = consistency[stack.volumes["grafana-data"]]["databases"]
    assert [(d["path"], d["integrity"], d["tables"]["dashboard"]) for d in grafana] == [("grafana.db", "ok", 3)]
    assert metadata["warnings"] == []
    assert os.listdir(docker("volume", "inspect", "-f", "{{.Mountpoint}}", stack.volumes["prometheus-data"]) + "/snapshots") == []
    assert "consistency: %s stop, %s sqlite" % (volumes[0], volumes[1]) in proc.stdout

    textfile_dir = tmp_path / "prom"
    textfile_dir.mkdir()
    extra.update(minimarket_metrics_enabled=True, minimarket_metrics_textfile_dir=str(textfile_dir))
    proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/verify_backups.yml", "-e", json.dumps(extra))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "reports" / sorted(os.listdir(tmp_path / "reports"))[-1]).read_text())
    services = dict((s["service"], s) for s in report["services"]["services"])
    assert all(s["ok"] for s in services.values()), services
    passed = service_metrics(textfile_dir)
    assert passed["ok"] == {"redis": 1, "prometheus": 1, "grafana": 1, "loki": 1}, passed
    assert set(passed["timestamp_seconds"].values()) == {passed["verified_at"]}, passed
    assert "canary %s as written before the backup" % redis["canary_key"] in " ".join(services["redis"]["checks"])
    assert "up at backup time returns the" in " ".join(services["prometheus"]["checks"])
    assert services["grafana"]["checks"] == ["integrity_check ok", "dashboard: 3 rows, as in the backup"]
    assert services["loki"]["checks"] == ["/ready answered HTTP 200"]
    assert report["services"]["project"].startswith("mmverify-")
    assert scratch_objects(stack.project) == ("", "", "")
    assert docker("ps", "-aq", "--filter", "label=com.docker.compose.project=%s" % report["services"]["project"]) == ""
    # The live stack, without an archive to compare with (recover_database.yml): the inventory's minimums only.
    live = sc.live(Engine(), stack.project, CHECKS)
    assert live["failure"] is None, live
    assert [s["checks"][-1] for s in live["services"]] == [
        "no canary to compare (no volume archive given)", "up now returns 4 series", "dashboard: 3 rows (at least 1 expected)",
        "/ready answered HTTP 200"]

    # A service that fails its check on the restored volumes is 0 in the metrics, the others stay 1, and the play fails.
    extra["minimarket_service_checks"] = [dict(check, min_rows=4) if check["service"] == "grafana" else check for check in CHECKS]
    proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/verify_backups.yml", "-e", json.dumps(extra))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "services: service check failed: grafana: dashboard has 3 rows, at least 4 expected;" in proc.stdout, proc.stdout
    failed = service_metrics(textfile_dir)
    assert failed["ok"] == {"redis": 1, "prometheus": 1, "grafana": 0, "loki": 1}, failed
    assert set(failed["timestamp_seconds"].values()) == {failed["failed_at"]} and failed["failed_at"] > passed["verified_at"], failed
    assert scratch_objects(stack.project) == ("", "", "")


def service_metrics(textfile_dir):
    """The service series and the verify run's timestamps of the development metrics file (checked by promtool first)."""
    path = textfile_dir / "minimarket_backup_development.prom"
    with open(path, "rb") as handle:
        check = subprocess.run(["promtool", "check", "metrics"], stdin=handle, capture_output=True, text=True, check=False)
    assert check.returncode == 0 and not check.stdout + check.stderr, check.stdout + check.stderr
    found = {"ok": {}, "timestamp_seconds": {}}
    for line in path.read_text().splitlines():
        name, _sep, value = line.partition(" ")
        if name.startswith("minimarket_backup_service_check_"):
            metric, service = re.match(r'^minimarket_backup_service_check_(\w+)\{service="(\w+)",environment="development"\}$', name).groups()
            found[metric][service] = float(value)
        elif name in ('minimarket_backup_last_success_timestamp_seconds{kind="verify",environment="development"}',
                      'minimarket_backup_last_failure_timestamp_seconds{kind="verify",environment="development"}'):
            found["verified_at" if "success" in name else "failed_at"] = float(value)
    return found


@pytest.fixture
def offline_project(tmp_path):
    """A project name whose volumes the test fills and archives itself; compose never starts it."""
    project = "mmtest-%s" % uuid.uuid4().hex[:8]
    created = []

    def volume(key):
        name = "%s_%s" % (project, key)
        docker("volume", "create", "--label", "com.docker.compose.project=%s" % project, name)
        created.append(name)
        return name

    yield project, volume, str(tmp_path / "volumes")
    for name in created:
        docker("volume", "rm", "-f", name, check=False)
    for kind in ("ps -aq", "network ls -q", "volume ls -q"):
        ids = docker(*kind.split(), "--filter", "label=%s=%s" % (sc.SCRATCH_LABEL, project), check=False).split()
        if ids:
            docker(*{"ps -aq": ["rm", "-f"], "network ls -q": ["network", "rm"], "volume ls -q": ["volume", "rm", "-f"]}[kind], *ids,
                   check=False)


def fill(volume, script, user="0:0"):
    docker("run", "--rm", "-u", user, "-v", "%s:/data" % volume, SERVICES_IMAGE, "sh", "-c", script)


def test_a_redis_that_refuses_its_data_fails_the_check_and_a_killed_runs_leftovers_are_removed(offline_project):
    project, volume, dest = offline_project
    engine = Engine()
    redis = volume("redis-data")
    # A real Redis writes its data, then the RDB base of its append-only file is damaged: the archive stays valid.
    fill(redis, "redis-server --dir /data --appendonly yes --daemonize yes && sleep 1 && redis-cli set k v >/dev/null "
                "&& redis-cli shutdown save; base=$(ls /data/appendonlydir/*.base.rdb) && "
                "printf 'REDIS0011garbage-garbage-garbage' > $base", user="999:999")
    va.archive(engine, va.ArchiveOptions([redis], dest, "development"))
    live_before = docker("run", "--rm", "-v", "%s:/data" % redis, SERVICES_IMAGE, "sh", "-c", "cat /data/appendonlydir/*.base.rdb | sha256sum")
    # What a verification killed midway leaves behind: a container, a network and a volume of its scratch project.
    label = "%s=%s" % (sc.SCRATCH_LABEL, project)
    docker("network", "create", "--label", label, "mmverify-killed_default")
    docker("volume", "create", "--label", label, "mmverify-killed_redis-data")
    docker("create", "--label", label, "--name", "mmverify-killed_redis_1", SERVICES_IMAGE, "sleep", "600")

    result = sc.scratch(engine, ["docker-compose"], project, COMPOSE_FILE, CHECKS[:1], "latest", dest, "development", timeout=60)
    assert result["warnings"] == ["removed a scratch project left over by an earlier verification: mmverify-killed_default, "
                                  "mmverify-killed_redis-data, mmverify-killed_redis_1"]
    assert result["failure"].startswith("redis: %s_redis_1 exited (status 1): " % result["project"])
    assert "Bad file format" in result["failure"] or "Unrecoverable" in result["failure"] or "Short read" in result["failure"], \
        result["failure"]
    assert result["services"][0]["ok"] is False
    assert scratch_objects(project) == ("", "", "")
    assert docker("run", "--rm", "-v", "%s:/data" % redis, SERVICES_IMAGE, "sh", "-c",
                  "cat /data/appendonlydir/*.base.rdb | sha256sum") == live_before


def test_a_prometheus_that_never_becomes_ready_fails_the_check_with_one_line(offline_project):
    project, volume, dest = offline_project
    engine = Engine()
    prometheus = volume("prometheus-data")
    fill(prometheus, "chown 65534:65534 /data")
    va.archive(engine, va.ArchiveOptions([prometheus], dest, "development"))
    wrong_port = dict(CHECKS[1], port=9091)
    result = sc.scratch(engine, ["docker-compose"], project, COMPOSE_FILE, [wrong_port], "latest", dest, "development", timeout=5)
    assert result["failure"].startswith("prometheus did not become ready within 5 s (no answer from http://")
    assert ":9091/-/ready" in result["failure"]
    assert scratch_objects(project) == ("", "", "")


def test_admin_api_off_falls_back_to_stop_with_a_warning(offline_project):
    project, volume, dest = offline_project
    engine = Engine()
    prometheus = volume("prometheus-data")
    fill(prometheus, "chown 65534:65534 /data")
    name = "%s_prometheus_1" % project
    config = os.path.join(REPO, "testenv", "compose", "prometheus.yml")
    docker("run", "-d", "--name", name, "-u", "65534:65534", "-v", "%s:/prometheus" % prometheus,
           "-v", "%s:/etc/prometheus/prometheus.yml:ro" % config, SERVICES_IMAGE,
           "prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus")
    try:
        for unused in range(60):
            if docker("exec", name, "ls", "/prometheus/wal", check=False):
                break
            time.sleep(1)
        result = va.archive(engine, va.ArchiveOptions([prometheus], dest, "development", stop_containers=True,
                                                      consistency={prometheus: "prometheus"}))
        assert [w.split(" (HTTP")[0] for w in result["warnings"]] == [
            "volume %s: the admin API of Prometheus in %s is off or failed" % (prometheus, name)]
        assert result["warnings"][0].endswith("start Prometheus with --web.enable-admin-api for online backups; "
                                              "archived in stop mode instead (its containers stopped)")
        assert [c["name"] for c in result["stopped_containers"]] == [name]
        record = result["volumes"][0]["consistency"]
        assert record["mode"] == "stop" and record["fallback"].startswith("prometheus: the admin API")
        assert docker("inspect", "-f", "{{.State.Running}}", name) == "true"
        metadata = json.load(open(result["metadata"]))
        assert metadata["volumes"][0]["consistency"] == record
        assert metadata["warnings"] == result["warnings"]
    finally:
        docker("rm", "-f", name, check=False)


def test_the_next_run_undoes_what_a_killed_online_backup_left(offline_project):
    project, volume, dest = offline_project
    engine = Engine()
    redis = volume("redis-data")
    name = "%s_redis_1" % project
    docker("run", "-d", "--name", name, "-u", "999:999", "-v", "%s:/data" % redis, SERVICES_IMAGE,
           "redis-server", "--dir", "/data", "--appendonly", "yes", "--bind", "0.0.0.0", "--protected-mode", "no")
    try:
        for unused in range(50):
            if docker("exec", name, "redis-cli", "ping", check=False) == "PONG":
                break
            time.sleep(0.2)
        # A run killed after pausing AOF rewrites, taking a snapshot and copying a database: its journal is all that is left.
        docker("exec", name, "redis-cli", "config", "set", "auto-aof-rewrite-percentage", "0")
        mountpoint = docker("volume", "inspect", "-f", "{{.Mountpoint}}", redis)
        snapshot = os.path.join(mountpoint, "snapshots", "20261202T000000Z-0123456789abcdef")
        copies = os.path.join(dest, ".mm-sqlite-0123456789ab")
        os.makedirs(snapshot)
        os.makedirs(copies)
        container_id = docker("inspect", "-f", "{{.Id}}", name)
        steps = [{"kind": "remove", "path": copies}, {"kind": "redis", "container": container_id,
                                                      "key": "auto-aof-rewrite-percentage", "value": "100"},
                 {"kind": "remove", "path": snapshot}]
        journal_dir = _journal.default_dir(dest)
        os.makedirs(journal_dir, 0o700, exist_ok=True)
        killed = os.path.join(journal_dir, "docker_volume_archive-archive-20261202T000000Z-1")
        with open(killed + ".json", "w") as handle:
            json.dump({"job": "docker_volume_archive archive", "started": "2026-12-02T00:00:00Z",
                       "steps": [dict(step, step="online_undo", docker_host=engine.docker_host) for step in steps]}, handle)
        open(killed + ".lock", "w").close()  # nobody holds it: the run is dead
        repaired, warnings = _journal.replay(journal_dir, va.repairers())
        assert warnings == []
        assert [entry["repair"] for entry in repaired] == [
            "removed %s left by an online backup" % snapshot,
            "set auto-aof-rewrite-percentage back to 100 in Redis %s" % name,
            "removed %s left by an online backup" % copies]
        assert os.listdir(journal_dir) == []
        assert not os.path.exists(snapshot) and not os.path.exists(copies)
        assert docker("exec", name, "redis-cli", "config", "get", "auto-aof-rewrite-percentage").split()[1] == "100"
        result = va.archive(engine, va.ArchiveOptions([redis], dest, "development", consistency={redis: "redis"}))
        assert result["warnings"] == []
        assert result["volumes"][0]["consistency"]["mode"] == "redis"
        assert docker("exec", name, "redis-cli", "get", "minimarket:backup:canary") == result["volumes"][0]["consistency"]["canary"]
    finally:
        docker("rm", "-f", name, check=False)
