"""Shared fixtures: a throwaway PostgreSQL 15 cluster and Mini Market seed databases.

``pg_server`` (session): see ``testenv.pgserver.PgServer`` -- host, port, user,
password, socket_dir, bindir, datadir, conninfo(dbname)/dsn(dbname), env(dbname),
connect(dbname), execute(sql, dbname), create_database, drop_database, stop, start.
``seeded_db`` (function): name of a fresh database seeded at ``SEED_ROWS``, dropped after.
``seed_database`` (function): factory ``seed_database(rows=...)`` for other scales.
``compose_stack`` (session): the development stack (testenv/stack.sh up) under a unique
project name ``mmtest-<hex>``, seeded at ``STACK_SEED_ROWS``, removed with its volumes after.
The real ``inventario-retail`` project is never touched by tests.
``ssh_host`` (session, tests/ssh_fixtures.py): the shop host reached over SSH as ``deploy`` with become.
"""
import os
import signal
import sys
import uuid

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (REPO_ROOT, os.path.join(REPO_ROOT, ".collections")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from testenv.pgserver import PgServer, free_port  # noqa: E402
from testenv.seed.minimarket_seed import seed  # noqa: E402
from testenv.stack import ComposeStack  # noqa: E402

SEED_ROWS = 2000  # keep in step with ROWS in tests/integration/test_testenv.py
STACK_SEED_ROWS = 500

pytest_plugins = ["tests.ssh_fixtures"]


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_sessionstart(session):
    """SIGTERM (timeout, CI cancel) ends the session like Ctrl-C, so fixtures still tear down."""
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def compose_stack():
    stack = ComposeStack(f"mmtest-{uuid.uuid4().hex[:8]}", free_port(), "pw-" + uuid.uuid4().hex[:12],
                         seed_rows=STACK_SEED_ROWS)
    try:
        yield stack.up()
    finally:
        stack.down()


@pytest.fixture(scope="session")
def pg_server():
    with PgServer() as server:
        yield server


@pytest.fixture
def seed_database(pg_server):
    created = []

    def make(rows=SEED_ROWS, name=None):
        name = name or f"mm_seed_{uuid.uuid4().hex[:10]}"
        pg_server.create_database(name)
        created.append(name)
        with pg_server.connect(name) as conn:
            seed(conn, rows=rows)
        return name

    yield make
    if not pg_server.is_running():
        pg_server.start()
    for name in created:
        pg_server.drop_database(name)


@pytest.fixture
def seeded_db(seed_database):
    return seed_database()
