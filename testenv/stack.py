"""Names of the development stack and a handle on one running instance (for pytest fixtures).

Compose project ``inventario-retail`` by default; tests use a unique project so the
real one is never touched. Volumes are ``<project>_<key>`` in both compose versions; containers are
``<project>_<service>_1`` (v1, the default) or, with ``naming="v2"``, ``<project>-<service>-1``
(the compose file's explicit container_name values follow MINIMARKET_NAME_SEPARATOR).

With ``compose_dir`` the stack runs from a copy of the compose directory (the file and what it mounts) with a
``.env`` beside it, as a shop's /opt/inventario-retail is: compose run later by the collection on
the host (no MINIMARKET_* variables there) then still finds this project's names, port and password.
"""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STACK_SH = os.path.join(HERE, "stack.sh")
COMPOSE_SH = os.path.join(HERE, "compose.sh")
COMPOSE_DIR = os.path.join(HERE, "compose")
COMPOSE_FILE = "docker-compose.development.yml"
NAME_SEPARATORS = {"v1": "_", "v2": "-"}
PROJECT = "inventario-retail"
PG_IMAGE = "minimarket/postgres:15"
BUSYBOX_IMAGE = "minimarket/busybox:latest"
SERVICES_IMAGE = "minimarket/services:bookworm"
SERVICES = ("postgres", "redis", "grafana", "prometheus", "loki", "agente_deposito", "agente_negocio", "dashboard")
APP_SERVICES = ("agente_deposito", "agente_negocio", "dashboard")
VOLUMES = ("postgres-data", "grafana-data", "prometheus-data", "loki-data", "redis-data")
# The online modes the shipped inventories choose (minimarket_volume_consistency), by volume key.
CONSISTENCY = {"redis-data": "redis", "prometheus-data": "prometheus", "grafana-data": "sqlite"}


class ComposeStack:
    """A development stack under ``project``: names, connection data and script runners."""

    def __init__(self, project, pg_port, password, seed_rows=500, naming="v1", compose_dir=None):
        self.project = project
        self.host = "127.0.0.1"
        self.port = pg_port
        self.user = "postgres"
        self.password = password
        self.dbname = "minimarket"
        self.seed_rows = seed_rows
        sep = NAME_SEPARATORS[naming]
        names = dict(MINIMARKET_PROJECT=project, MINIMARKET_PG_PORT=str(pg_port), MINIMARKET_DB_PASSWORD=password,
                     MINIMARKET_NAME_SEPARATOR=sep)
        self.compose_file = os.path.join(COMPOSE_DIR, COMPOSE_FILE)
        if compose_dir:
            self.compose_file = self._copy_compose(compose_dir, names)
        self.env = dict(os.environ, MINIMARKET_SEED_ROWS=str(seed_rows), MINIMARKET_PYTHON=sys.executable,
                        MINIMARKET_COMPOSE_FILE=self.compose_file, **names)
        self.containers = {s: f"{project}{sep}{s}{sep}1" for s in SERVICES}
        self.volumes = {v: f"{project}_{v}" for v in VOLUMES}
        self.up_output = None

    @staticmethod
    def _copy_compose(directory, names):
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(COMPOSE_DIR):
            shutil.copy(os.path.join(COMPOSE_DIR, name), directory)
        env_file = os.path.join(directory, ".env")
        with open(os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.writelines("%s=%s\n" % item for item in sorted(names.items()))
        return os.path.join(directory, COMPOSE_FILE)

    def inventory_vars(self):
        """The inventory variables that aim the collection at this stack instead of inventario-retail.

        Keys that name volumes (the consistency modes) are rewritten too: the shipped inventories spell them
        with the ``inventario-retail_`` prefix, which would name volumes this stack does not have.
        """
        return {
            "minimarket_compose_project": self.project,
            "minimarket_compose_file": self.compose_file,
            "minimarket_volumes": [self.volumes[v] for v in VOLUMES],
            "minimarket_volume_consistency": {self.volumes[v]: mode for v, mode in CONSISTENCY.items()},
        }

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
