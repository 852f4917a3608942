"""Checks shared by the recovery scenarios' testinfra suites."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SERVICES = ["postgres", "redis", "grafana", "prometheus", "loki", "agente_deposito", "agente_negocio", "dashboard"]
PROJECT = "inventario-retail"


def compare_with_snapshot(host):
    before = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "before.json")
    result = host.run("%s %s compare %s", sys.executable, os.path.join(HERE, "stack_snapshot.py"), before)
    assert result.rc == 0, result.stdout + result.stderr
    assert "IDENTICAL" in result.stdout
    with open(before) as handle:
        snapshot = json.load(handle)
    assert snapshot["database"]["tables"]["public.ventas"]["rows"] > 0
    return snapshot


def running_services(host):
    result = host.run("docker ps --filter label=com.docker.compose.project=%s --format '{{.Label \"com.docker.compose.service\"}} {{.State}}'", PROJECT)
    assert result.rc == 0, result.stderr
    return sorted(line.split()[0] for line in result.stdout.splitlines() if line.split()[1] == "running")


def newest_volume_metadata(host):
    """The metadata of the newest volume archive of the development environment."""
    result = host.run("ls /var/backups/minimarket-dev/volumes/ | grep '_metadata.json$' | sort | tail -n 1")
    assert result.rc == 0 and result.stdout.strip(), result.stderr
    return json.loads(host.file("/var/backups/minimarket-dev/volumes/" + result.stdout.strip()).content_string)


def container_exec(host, service, *argv):
    result = host.run("docker exec %s_%s_1 " % (PROJECT, service) + " ".join("'%s'" % a.replace("'", "'\\''") for a in argv))
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def psql(host, sql, db="minimarket"):
    result = host.run("docker exec %s_postgres_1 psql -U postgres -d %s -tAc %s", PROJECT, db, sql)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()
