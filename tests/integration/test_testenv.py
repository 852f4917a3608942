"""The test world itself: throwaway cluster, seed data, comparison helper, images and stack."""
import json
import os
import socket
import stat
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
import yaml

from testenv import pgcompare
from testenv.pgserver import PgServer, free_port
from testenv.seed.minimarket_seed import SeedError, scale, seed
from testenv.stack import (APP_SERVICES, BUSYBOX_IMAGE, COMPOSE_SH, PG_IMAGE, PROJECT, SERVICES, SERVICES_IMAGE, VOLUMES,
                           ComposeStack)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS = 2000


# -- pg_server ---------------------------------------------------------------

def test_pg_server_uses_scram_on_tcp_and_its_own_socket(pg_server):
    assert pg_server.execute("SHOW server_version_num")[0][0].startswith("15")
    assert pg_server.execute("SHOW password_encryption") == [("scram-sha-256",)]
    assert os.path.exists(os.path.join(pg_server.socket_dir, f".s.PGSQL.{pg_server.port}"))
    assert os.path.isfile(os.path.join(pg_server.datadir, "PG_VERSION"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.conninfo().replace(pg_server.password, "wrong"))
    with psycopg.connect(pg_server.socket_conninfo()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_pg_server_stop_and_start(pg_server):
    pg_server.stop()
    try:
        assert not pg_server.is_running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_server.conninfo(), connect_timeout=3)
    finally:
        pg_server.start()
    assert pg_server.execute("SELECT 1") == [(1,)]


def test_pg_server_moves_to_another_port_when_its_port_was_taken():
    server = PgServer().init()
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", server.port))
            squatter.listen()
            taken = server.port
            server.start()
        assert server.port != taken
        assert server.execute("SELECT 1") == [(1,)]
    finally:
        server.destroy()
    assert not os.path.exists(server.datadir)


def test_pg_server_env_lets_client_tools_connect_without_argv_password(pg_server):
    env = dict(os.environ, **pg_server.env())
    result = subprocess.run([os.path.join(pg_server.bindir, "psql"), "-XAtc", "SELECT current_user"],
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "postgres"


# -- seed --------------------------------------------------------------------

def test_seeded_db_has_expected_objects_and_counts(pg_server, seeded_db):
    assert pgcompare.row_counts(pg_server.conninfo(seeded_db)) == scale(ROWS)
    objects = pgcompare.schema_objects(pg_server.conninfo(seeded_db))
    assert {"public.v_stock_valorizado", "public.v_ventas_diarias"} <= set(objects["views"])
    assert "productos.productos_cambio_precio" in objects["triggers"]
    assert objects["enums"]["public.medio_pago"] == "efectivo,débito,crédito,transferencia,mercado_pago"
    assert objects["sequences"]["public.numero_ticket_seq"] == str(100000 + scale(ROWS)["ventas"])
    assert "public.productos_atributos_idx" in objects["indexes"]
    assert any("FOREIGN KEY" in d for d in objects["constraints"].values())
    types = dict(pg_server.execute(
        "SELECT data_type, count(*) FROM information_schema.columns WHERE table_schema = 'public' GROUP BY 1",
        dbname=seeded_db))
    for data_type in ("jsonb", "bytea", "numeric", "timestamp with time zone", "USER-DEFINED"):
        assert types.get(data_type, 0) > 0, data_type
    nulls = pg_server.execute(
        "SELECT count(*) FILTER (WHERE descripcion IS NULL), count(*) FILTER (WHERE imagen IS NOT NULL) "
        "FROM productos", dbname=seeded_db)[0]
    assert nulls[0] > 0 and nulls[1] > 0


def test_seed_trigger_and_view_work(pg_server, seeded_db):
    before = pg_server.execute("SELECT count(*) FROM historial_precios", dbname=seeded_db)[0][0]
    pg_server.execute("UPDATE productos SET precio = precio + 1 WHERE id = 20", dbname=seeded_db)
    after = pg_server.execute("SELECT count(*) FROM historial_precios", dbname=seeded_db)[0][0]
    assert after == before + 1
    total = pg_server.execute("SELECT sum(ventas) FROM v_ventas_diarias", dbname=seeded_db)[0][0]
    assert total == scale(ROWS)["ventas"]


def test_spanish_text_round_trips(pg_server, seeded_db):
    names = [r[0] for r in pg_server.execute(
        "SELECT nombre FROM productos WHERE nombre ~ '[ñÑáéíóú]' ORDER BY id", dbname=seeded_db)]
    assert any("Ñ" in n for n in names) and any("ñ" in n for n in names)
    assert any("ó" in n for n in names)
    text = "Ñoquis de papa con azúcar — «añejo» ¿sí?"
    pg_server.execute("INSERT INTO categorias (nombre) VALUES (%s)", dbname=seeded_db, params=(text,))
    assert pg_server.execute("SELECT nombre FROM categorias WHERE nombre = %s",
                             dbname=seeded_db, params=(text,)) == [(text,)]


def test_seed_is_deterministic(pg_server, seeded_db, seed_database):
    other = seed_database()
    first = pgcompare.snapshot(pg_server.conninfo(seeded_db))
    assert pgcompare.diff(first, pgcompare.snapshot(pg_server.conninfo(other))) == []
    assert first["counts"]["venta_items"] == ROWS


def test_seed_twice_is_skipped_and_other_scale_refused(pg_server, seeded_db):
    before = pgcompare.snapshot(pg_server.conninfo(seeded_db))
    with pg_server.connect(seeded_db) as conn:
        assert seed(conn, rows=ROWS) is False
        with pytest.raises(SeedError, match="already seeded with rows=2000"):
            seed(conn, rows=ROWS * 2)
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.conninfo(seeded_db))) == []


def test_seed_refuses_foreign_productos_table_and_changes_nothing(pg_server):
    name = pg_server.create_database("mm_foreign_productos")
    try:
        pg_server.execute("CREATE TABLE productos (id int)", dbname=name)
        with pg_server.connect(name) as conn, pytest.raises(SeedError, match="not a minimarket seed"):
            seed(conn, rows=ROWS)
        tables = pg_server.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", dbname=name)
        assert tables == [("productos",)]
    finally:
        pg_server.drop_database(name)


def test_pgcompare_detects_changed_rows_and_objects(pg_server, seeded_db, seed_database):
    other = seed_database()
    pg_server.execute("UPDATE ventas SET cliente = 'Begoña' WHERE id = 5", dbname=other)
    pg_server.execute("DROP VIEW v_stock_valorizado", dbname=other)
    lines = pgcompare.compare(pg_server.conninfo(seeded_db), pg_server.conninfo(other))
    assert any(line.startswith("checksum ventas:") for line in lines)
    assert "views public.v_stock_valorizado: missing in second" in lines
    assert not any(line.startswith("rows ") for line in lines)


def test_seed_cli_takes_password_from_env_only(pg_server):
    name = pg_server.create_database("mm_seed_cli")
    try:
        base = [sys.executable, "-m", "testenv.seed.minimarket_seed"]
        dsn = f"host={pg_server.host} port={pg_server.port} user={pg_server.user} dbname={name}"
        env = dict(os.environ, PGPASSWORD=pg_server.password, PYTHONPATH=REPO_ROOT)
        env.pop("PGPASSFILE", None)
        run = [*base, "--dsn", dsn, "--rows", "100"]
        first = subprocess.run(run, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        assert (first.returncode, first.stdout) == (0, f"seeded database {name} with rows=100\n")
        second = subprocess.run(run, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        assert second.returncode == 0 and "already seeded" in second.stdout
        leaked = subprocess.run([*base, "--dsn", dsn + " password=x", "--rows", "100"],
                                env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        assert leaked.returncode == 2 and "must not contain a password" in leaked.stderr
        no_pw = dict(env, PGPASSFILE="/nonexistent")
        no_pw.pop("PGPASSWORD")
        failed = subprocess.run(run, env=no_pw, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        assert failed.returncode == 1
        assert failed.stderr.startswith("minimarket_seed: ") and len(failed.stderr.splitlines()) == 1
    finally:
        pg_server.drop_database(name)


# -- images --------------------------------------------------------------------

def _docker(*args, check=True):
    result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_build_sh_keeps_up_to_date_images():
    images = (PG_IMAGE, BUSYBOX_IMAGE, SERVICES_IMAGE)
    ids = [_docker("image", "inspect", "-f", "{{.Id}}", tag).stdout for tag in images]
    result = subprocess.run([os.path.join(REPO_ROOT, "testenv", "images", "build.sh")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"build.sh: {BUSYBOX_IMAGE} is up to date, kept",
                                          f"build.sh: {PG_IMAGE} is up to date, kept",
                                          f"build.sh: {SERVICES_IMAGE} is up to date, kept"]
    assert [_docker("image", "inspect", "-f", "{{.Id}}", tag).stdout for tag in images] == ids
    versions = _docker("run", "--rm", SERVICES_IMAGE, "sh", "-c", "redis-server --version; prometheus --version 2>&1").stdout
    assert "Redis server v=7." in versions and "prometheus, version 2." in versions
    assert _docker("run", "--rm", PG_IMAGE, "id", "-u").stdout == "999\n"
    passwd = _docker("run", "--rm", BUSYBOX_IMAGE, "cat", "/etc/passwd").stdout
    for entry in ("root:x:0:0:", "grafana:x:472:", "postgres:x:999:", "nobody:x:65534:"):
        assert entry in passwd


@pytest.fixture
def scratch_volume():
    name = f"mmtest-scratch-{uuid.uuid4().hex[:8]}"
    _docker("volume", "create", name)
    yield name
    _docker("volume", "rm", "-f", name, check=False)


def test_postgres_image_refuses_to_initdb_over_foreign_files(scratch_volume):
    _docker("run", "--rm", "-v", f"{scratch_volume}:/d", BUSYBOX_IMAGE, "sh", "-c",
            "echo keep > /d/precious.txt && chown -R 999:999 /d")
    result = _docker("run", "--rm", "-e", "POSTGRES_PASSWORD=x", "-v",
                     f"{scratch_volume}:/var/lib/postgresql/data", PG_IMAGE, check=False)
    assert result.returncode == 1
    assert "is not empty but holds no cluster" in result.stderr
    listing = _docker("run", "--rm", "-v", f"{scratch_volume}:/d", BUSYBOX_IMAGE, "ls", "-A", "/d").stdout
    assert listing == "precious.txt\n"


def test_postgres_image_needs_a_password_for_a_new_cluster(scratch_volume):
    result = _docker("run", "--rm", "-v", f"{scratch_volume}:/var/lib/postgresql/data", PG_IMAGE, check=False)
    assert result.returncode == 1
    assert "POSTGRES_PASSWORD is not set" in result.stderr


# -- compose stack -------------------------------------------------------------

def test_compose_defaults_name_the_production_objects():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIMARKET_")}
    result = subprocess.run([COMPOSE_SH, "config"], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert sorted(config["services"]) == sorted(SERVICES)
    assert sorted(config["volumes"]) == sorted(VOLUMES)
    for service, spec in config["services"].items():
        assert spec["container_name"] == f"{PROJECT}_{service}_1"
    port = config["services"]["postgres"]["ports"][0]
    if isinstance(port, dict):  # compose v2 prints the long syntax
        port = f"{port['host_ip']}:{port['published']}:{port['target']}"
    assert port.startswith("127.0.0.1:55432:5432")
    assert config["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "minimarket-dev"
    refused = subprocess.run([COMPOSE_SH, "config"], env=dict(env, MINIMARKET_ENV="production"),
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("compose.sh: no compose file for environment 'production'")


def test_compose_sh_prefers_compose_v2(tmp_path):
    fake = tmp_path / "docker"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "compose version" ] && exit 0\necho "$@"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", MINIMARKET_PROJECT="p1")
    result = subprocess.run([COMPOSE_SH, "ps"], env=env, capture_output=True, text=True, check=True)
    compose_file = os.path.join(REPO_ROOT, "testenv", "compose", "docker-compose.development.yml")
    assert result.stdout == f"compose -p p1 -f {compose_file} ps\n"


def test_stack_volumes_have_exact_names_and_compose_labels(compose_stack):
    for key, name in compose_stack.volumes.items():
        assert name == f"{compose_stack.project}_{key}"
        labels = json.loads(_docker("volume", "inspect", "-f", "{{json .Labels}}", name).stdout)
        assert labels["com.docker.compose.project"] == compose_stack.project
        assert labels["com.docker.compose.volume"] == key


def test_stack_services_run_and_mount_their_volumes(compose_stack):
    mounts = {"postgres": "postgres-data:/var/lib/postgresql/data", "grafana": "grafana-data:/var/lib/grafana",
              "prometheus": "prometheus-data:/prometheus", "loki": "loki-data:/loki", "redis": "redis-data:/data"}
    for service, container in compose_stack.containers.items():
        info = json.loads(_docker("inspect", container).stdout)[0]
        assert info["State"]["Running"], service
        assert info["Config"]["Labels"]["com.docker.compose.service"] == service
        volumes = {f"{m['Name']}:{m['Destination']}" for m in info["Mounts"] if m["Type"] == "volume"}
        expected = {f"{compose_stack.project}_{mounts[service]}"} if service in mounts else set()
        assert volumes == expected, service


def _volume_path(name, *parts):
    return os.path.join(_docker("volume", "inspect", "-f", "{{.Mountpoint}}", name).stdout.strip(), *parts)


def test_stack_volumes_hold_files_with_service_owners(compose_stack):
    expected = {
        ("postgres-data", "PG_VERSION"): (999, 0o600),
        ("grafana-data", "grafana.db"): (472, 0o640),
        ("grafana-data", "csv/informe año 2024.csv"): (472, 0o644),
        ("prometheus-data", "wal"): (65534, 0o755),
        ("loki-data", "index/index_19723"): (10001, 0o600),
        ("redis-data", "appendonlydir"): (999, 0o755),
    }
    for (volume, path), (uid, mode) in expected.items():
        st = os.lstat(_volume_path(compose_stack.volumes[volume], path))
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, mode), path
    link = _volume_path(compose_stack.volumes["grafana-data"], "dashboard-principal.json")
    assert os.readlink(link) == "dashboards/ventas.json"
    with open(_volume_path(compose_stack.volumes["grafana-data"], "grafana.db"), "rb") as handle:
        assert handle.read(16) == b"SQLite format 3\x00"


def test_stack_database_is_seeded_and_up_is_idempotent(compose_stack):
    rows = compose_stack.seed_rows
    assert f"seeded database minimarket with rows={rows}" in compose_stack.up_output
    assert pgcompare.row_counts(compose_stack.conninfo()) == scale(rows)
    before = _docker("ps", "-q", "--no-trunc", "--filter",
                     f"label=com.docker.compose.project={compose_stack.project}").stdout
    snap = pgcompare.snapshot(compose_stack.conninfo())
    again = compose_stack.stack("up").stdout
    assert f"stack.sh: stack {compose_stack.project}: already up, no container changed" in again
    assert f"stack.sh: seed: database minimarket already seeded with rows={rows}; nothing to do" in again
    assert "is up to date, kept" in again and "built" not in again
    assert _docker("ps", "-q", "--no-trunc", "--filter",
                   f"label=com.docker.compose.project={compose_stack.project}").stdout == before
    assert pgcompare.diff(snap, pgcompare.snapshot(compose_stack.conninfo())) == []
    status = compose_stack.stack("status").stdout
    assert f"stack.sh: database minimarket: minimarket seed v1 rows={rows}" in status


def test_stack_app_containers_stop_and_start_without_touching_data(compose_stack):
    apps = list(APP_SERVICES)
    loki_index = _volume_path(compose_stack.volumes["loki-data"], "index", "index_19723")
    with open(loki_index, "rb") as handle:
        content = handle.read()
    line = "fake-service: agente_deposito reached postgres:5432"
    # The stack is shared by the module's tests: other tests may have restarted the apps already.
    starts = _docker("logs", compose_stack.containers["agente_deposito"]).stdout.count(line)
    compose_stack.compose("stop", *apps, "loki")
    for service in apps + ["loki"]:
        assert _docker("inspect", "-f", "{{.State.Running}}", compose_stack.containers[service]).stdout == "false\n"
    assert _docker("inspect", "-f", "{{.State.Health.Status}}",
                   compose_stack.containers["postgres"]).stdout == "healthy\n"
    compose_stack.compose("start", *apps, "loki")
    for service in apps + ["loki"]:
        assert _docker("inspect", "-f", "{{.State.Running}}", compose_stack.containers[service]).stdout == "true\n"
    with open(loki_index, "rb") as handle:
        assert handle.read() == content
    # Running is true before the restarted script has printed its line: wait for exactly one more.
    _wait_for("the restarted agente_deposito reaching postgres",
              lambda: _docker("logs", compose_stack.containers["agente_deposito"]).stdout.count(line) > starts)
    assert _docker("logs", compose_stack.containers["agente_deposito"]).stdout.count(line) == starts + 1


def test_stack_up_refuses_a_busy_port_and_creates_nothing():
    project = f"mmtest-{uuid.uuid4().hex[:8]}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        stack = ComposeStack(project, busy.getsockname()[1], "unused")
        result = stack.stack("up", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"stack.sh: port 127.0.0.1:{stack.port} is already in use; set MINIMARKET_PG_PORT to a free port")
    assert _docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").stdout == ""
    assert _docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout == ""


def test_stack_up_reports_a_postgres_volume_it_cannot_use_and_keeps_it():
    project = f"mmtest-{uuid.uuid4().hex[:8]}"
    stack = ComposeStack(project, free_port(), "pw-bad")
    _docker("volume", "create", stack.volumes["postgres-data"])
    try:
        _docker("run", "--rm", "-v", f"{stack.volumes['postgres-data']}:/d", BUSYBOX_IMAGE, "sh", "-c",
                "echo keep > /d/stray && chown -R 999:999 /d")
        result = stack.stack("up", check=False)
        assert result.returncode == 1
        assert "is not empty but holds no cluster" in result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            "stack.sh: compose up failed (postgres container: exited); see the lines above")
        listing = _docker("run", "--rm", "-v", f"{stack.volumes['postgres-data']}:/d", BUSYBOX_IMAGE, "ls", "-A", "/d")
        assert listing.stdout == "stray\n"
    finally:
        stack.down()
        _docker("volume", "rm", "-f", stack.volumes["postgres-data"], check=False)


def _wait_for(what, probe, seconds=60):
    deadline = time.time() + seconds
    while True:
        value = probe()
        if value:
            return value
        assert time.time() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.5)


def test_stack_runs_real_redis_prometheus_and_a_busy_sqlite_grafana(compose_stack):
    redis = compose_stack.containers["redis"]
    assert _docker("exec", redis, "redis-cli", "ping").stdout == "PONG\n"
    persistence = _docker("exec", redis, "redis-cli", "config", "get", "appendonly").stdout.split()
    assert persistence == ["appendonly", "yes"]
    # agente_negocio writes a sale every second

    def sales():
        return int(_docker("exec", redis, "redis-cli", "get", "ventas:contador").stdout.strip() or 0)
    first = _wait_for("a sale in Redis", sales)
    _wait_for("more sales", lambda: sales() > first)
    # Prometheus scrapes itself and the three applications (busybox httpd /metrics)
    query = 'count(up{job="minimarket_apps"} == 1) + count(up{job="prometheus"} == 1)'
    script = ("import json, urllib.request, urllib.parse, sys; "
              "print(json.load(urllib.request.urlopen('http://localhost:9090/api/v1/query?' + "
              "urllib.parse.urlencode({'query': sys.argv[1]})))['data']['result'][0]['value'][1])")
    _wait_for("four healthy scrape targets", lambda: _docker(
        "exec", compose_stack.containers["prometheus"], "python3", "-c", script, query, check=False).stdout.strip() == "4")
    assert os.path.isdir(_volume_path(compose_stack.volumes["prometheus-data"], "wal"))
    # grafana.db: WAL mode, written continuously by the stand-in
    db = _volume_path(compose_stack.volumes["grafana-data"], "grafana.db")
    assert os.path.exists(db + "-wal")
    count = ("import sqlite3; c = sqlite3.connect('/var/lib/grafana/grafana.db'); "
             "print(c.execute('PRAGMA journal_mode').fetchone()[0], c.execute('SELECT max(id) FROM user_auth_token').fetchone()[0], "
             "c.execute('SELECT count(*) FROM dashboard').fetchone()[0])")
    mode, tokens, dashboards = _docker("exec", compose_stack.containers["grafana"], "python3", "-c", count).stdout.split()
    assert (mode, dashboards) == ("wal", "3")
    _wait_for("new Grafana sessions", lambda: int(_docker(
        "exec", compose_stack.containers["grafana"], "python3", "-c", count).stdout.split()[1]) > int(tokens))
