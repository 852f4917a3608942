"""A throwaway PostgreSQL 15 cluster on a free TCP port, for tests and benchmarks.

initdb refuses to run as root, so when we are root the cluster belongs to the
``postgres`` system user (created if missing) and every server command runs
through ``runuser``.
"""
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

DEFAULT_BINDIR = os.environ.get("MINIMARKET_PG_BINDIR", "/usr/lib/postgresql/15/bin")
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "40",
    "shared_buffers": "64MB",
    # A throwaway cluster: durability buys nothing and costs a lot on shared disks.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "timezone": "'UTC'",
    "log_min_messages": "warning",
    # Commit times show which restore step finished first (tests/integration/test_pg_post_data.py).
    "track_commit_timestamp": "on",
}


class PgServerError(RuntimeError):
    pass


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_postgres_user():
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--home-dir", "/var/lib/postgresql",
             "--shell", "/bin/bash", "postgres"],
            check=True,
        )
        return pwd.getpwnam("postgres")


class PgServer:
    """One cluster in its own temp dir; ``start()``/``stop()`` can be repeated (server-down tests)."""

    def __init__(self, bindir=DEFAULT_BINDIR, user="postgres", password=None, base_dir=None):
        self.bindir = bindir
        self.user = user
        self.password = password or "pw-" + secrets.token_hex(12)
        self.host = "127.0.0.1"
        self.port = None
        self._base_dir = base_dir
        self.root = None
        self.datadir = None
        self.socket_dir = None
        self.logfile = None
        self._os_user = None

    # -- lifecycle -----------------------------------------------------
    def init(self):
        if os.geteuid() == 0:
            self._os_user = _ensure_postgres_user()
        self.root = tempfile.mkdtemp(prefix="mm-pg-", dir=self._base_dir)
        self.datadir = os.path.join(self.root, "data")
        self.socket_dir = os.path.join(self.root, "sock")
        self.logfile = os.path.join(self.root, "server.log")
        os.mkdir(self.socket_dir)
        pwfile = os.path.join(self.root, "pwfile")
        with open(pwfile, "w", encoding="utf-8") as handle:
            handle.write(self.password + "\n")
        if self._os_user:
            os.chmod(self.root, 0o755)
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)
        try:
            self._run([
                os.path.join(self.bindir, "initdb"), "-D", self.datadir, "-U", self.user,
                "--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256",
                "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions",
            ])
        finally:
            os.unlink(pwfile)
        self.port = free_port()
        with open(os.path.join(self.datadir, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write("\n# minimarket testenv\n")
            for key, value in SERVER_SETTINGS.items():
                conf.write(f"{key} = {value}\n")
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")
        return self

    def start(self):
        for attempt in range(3):
            result = self._run(
                [os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-l", self.logfile,
                 "-o", f"-p {self.port}", "-w", "-t", "60", "start"],
                check=False,
            )
            if result.returncode == 0:
                return self
            # Another process may have taken the port between free_port() and start.
            if attempt == 2 or not self._port_taken():
                break
            self.port = free_port()
        raise PgServerError(f"pg_ctl start failed: {result.stdout}{result.stderr}{self.log_tail()}")

    def stop(self, mode="fast"):
        if self.datadir and os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop"],
                      check=False)
        return self

    def is_running(self):
        result = subprocess.run(
            [os.path.join(self.bindir, "pg_isready"), "-h", self.socket_dir, "-p", str(self.port)],
            capture_output=True, check=False,
        )
        return result.returncode == 0

    def destroy(self):
        try:
            self.stop(mode="immediate")
        finally:
            if self.root:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def __enter__(self):
        try:
            self.init().start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc):
        self.destroy()

    # -- client side ---------------------------------------------------
    def conninfo(self, dbname="postgres"):
        """TCP + password (scram): what the backup modules see in production."""
        return make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname,
        )

    dsn = conninfo

    def socket_conninfo(self, dbname="postgres"):
        return make_conninfo(
            host=self.socket_dir, port=self.port, user=self.user, dbname=dbname,
        )

    def env(self, dbname="postgres"):
        """libpq environment for a child process (password stays out of argv)."""
        return {
            "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
            "PGPASSWORD": self.password, "PGDATABASE": dbname,
        }

    def connect(self, dbname="postgres", autocommit=True):
        return psycopg.connect(self.conninfo(dbname), autocommit=autocommit)

    def execute(self, sql, dbname="postgres", params=None):
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name, template="template0"):
        self.execute(pgsql.SQL("CREATE DATABASE {} TEMPLATE {} ENCODING 'UTF8'").format(
            pgsql.Identifier(name), pgsql.Identifier(template)))
        return name

    def drop_database(self, name):
        self.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name)))

    def databases(self):
        return [row[0] for row in self.execute(
            "SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY 1")]

    def log_tail(self, lines=20):
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""

    # -- internals -----------------------------------------------------
    def _port_taken(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def _run(self, argv, check=True):
        if self._os_user:
            argv = ["runuser", "-u", self._os_user.pw_name, "--"] + argv
        result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
        if check and result.returncode != 0:
            raise PgServerError(f"{argv[-1] if argv else ''} failed ({result.returncode}): "
                                f"{result.stderr.strip() or result.stdout.strip()}")
        return result
