"""Names of the development stack and a handle on one running instance (for pytest fixtures).

Compose project ``inventario-retail`` by default; tests use a unique project so the
real one is never touched. Names follow compose v1 (and the explicit container_name
values in the compose file): volumes ``<project>_<key>``, containers ``<project>_<service>_1``.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STACK_SH = os.path.join(HERE, "stack.sh")
COMPOSE_SH = os.path.join(HERE, "compose.sh")
PROJECT = "inventario-retail"
PG_IMAGE = "minimarket/postgres:15"
BUSYBOX_IMAGE = "minimarket/busybox:latest"
SERVICES_IMAGE = "minimarket/services:bookworm"
SERVICES = ("postgres", "redis", "grafana", "prometheus", "loki", "agente_deposito", "agente_negocio", "dashboard")
APP_SERVICES = ("agente_deposito", "agente_negocio", "dashboard")
VOLUMES = ("postgres-data", "grafana-data", "prometheus-data", "loki-data", "redis-data")


class ComposeStack:
    """A development stack under ``project``: names, connection data and script runners."""

    def __init__(self, project, pg_port, password, seed_rows=500):
        self.project = project
        self.host = "127.0.0.1"
        self.port = pg_port
        self.user = "postgres"
        self.password = password
        self.dbname = "minimarket"
        self.seed_rows = seed_rows
        self.env = dict(os.environ, MINIMARKET_PROJECT=project, MINIMARKET_PG_PORT=str(pg_port),
                        MINIMARKET_DB_PASSWORD=password, MINIMARKET_SEED_ROWS=str(seed_rows),
                        MINIMARKET_PYTHON=sys.executable)
        self.containers = {s: f"{project}_{s}_1" for s in SERVICES}
        self.volumes = {v: f"{project}_{v}" for v in VOLUMES}
        self.up_output = None

    def conninfo(self, dbname="minimarket"):
        return (f"host={self.host} port={self.port} user={self.user} "
                f"password={self.password} dbname={dbname}")

    def run(self, script, *args, check=True):
        result = subprocess.run([script, *args], env=self.env, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{os.path.basename(script)} {' '.join(args)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def stack(self, *args, check=True):
        return self.run(STACK_SH, *args, check=check)

    def compose(self, *args, check=True):
        return self.run(COMPOSE_SH, *args, check=check)

    def up(self):
        self.up_output = self.stack("up").stdout
        return self

    def down(self):
        return self.stack("down", "--volumes", "--timeout", "5", check=False)
