"""pg_split_dump in container mode: every client tool runs inside a minimarket/postgres:15 container."""
import json
import os
import subprocess
import threading

import psycopg

from testenv import pgcompare
from testenv.seed.minimarket_seed import seed
from tests.pg_fixtures import LO_QUERY, TORTURE_SQL, dest_files, module_argv, module_env, run_module, schema_dump, wait_for

pytest_plugins = ["tests.pg_fixtures"]


def ctr_args(container, **extra):
    # login_host 127.0.0.1 inside the container: scram auth, so the password really travels (by environment).
    args = dict(container=container.name, login_host="127.0.0.1", login_password=container.password)
    args.update(extra)
    return args


class _HostView(object):
    """What schema_dump needs to reach the container's server from the host."""

    def __init__(self, container):
        self.host = container.host
        self.port = container.port
        self.user = container.user
        self.password = container.password
        self.bindir = "/usr/lib/postgresql/15/bin"


def test_container_round_trip_seed_and_torture(pg_container, backup_dir):
    pg_container.execute("CREATE DATABASE minimarket")
    pg_container.execute("CREATE DATABASE torture")
    with pg_container.connect("minimarket") as conn:
        seed(conn, rows=1500)
    with pg_container.connect("torture") as conn:
        conn.execute(TORTURE_SQL)
    view = _HostView(pg_container)
    for db, compression in (("minimarket", "gzip"), ("torture", "zstd")):
        before = pgcompare.snapshot(pg_container.dsn(db))
        schema_before = schema_dump(view, db)
        los = pg_container.execute(LO_QUERY, db)
        dumped = run_module(ctr_args(pg_container, state="dump", db=db, dest=backup_dir, environment="ctr", compression=compression))
        assert dumped["_rc"] == 0, dumped
        with open(dumped["metadata"], encoding="utf-8") as handle:
            meta = json.load(handle)
        assert meta["container"] == pg_container.name and pg_container.password not in json.dumps(meta)
        assert meta["server_version"].startswith("15.")
        pg_container.execute("CREATE TABLE intrusa (id int)", db)
        restored = run_module(ctr_args(pg_container, state="restore", db=db, src=dumped["archive"], environment="ctr",
                                       keep_previous=False))
        assert restored["_rc"] == 0, restored
        assert restored["previous_dropped"] is True
        assert pgcompare.diff(before, pgcompare.snapshot(pg_container.dsn(db))) == []
        assert schema_dump(view, db) == schema_before
        assert pg_container.execute(LO_QUERY, db) == los
    names = [r[0] for r in pg_container.execute("SELECT datname FROM pg_database ORDER BY 1")]
    assert names == ["minimarket", "postgres", "template0", "template1", "torture"]

    verified = run_module(ctr_args(pg_container, state="verify", db="torture", dest=backup_dir, environment="ctr", src="latest",
                                   critical_tables={"padre": 100, "almacén.señal ñ": 302}))
    assert verified["_rc"] == 0, verified
    assert verified["src"].endswith(".tar.zst")  # latest = the torture dump, written last

    archive = dumped["archive"]
    with open(archive, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))
    refused = run_module(ctr_args(pg_container, state="restore", db="torture", src=archive, environment="ctr"))
    assert refused["_rc"] == 1 and "corrupted" in refused["msg"]
    assert pgcompare.diff(before, pgcompare.snapshot(pg_container.dsn("torture"))) == []


def test_container_errors(pg_container, backup_dir):
    wrong = run_module(ctr_args(pg_container, state="dump", db="postgres", dest=backup_dir, login_password="nope", environment="production"))
    assert wrong["_rc"] == 1 and "password authentication failed" in wrong["msg"]
    args = ctr_args(pg_container, state="dump", db="postgres", dest=backup_dir, environment="production")
    args["container"] = "no-such-container-pgsd"
    missing = run_module(args)
    assert missing["_rc"] == 1 and "No such container" in missing["msg"] and "docker ps" in missing["msg"]
    assert dest_files(backup_dir) == []
    assert os.listdir(backup_dir) in ([], [".database_production.lock"])


def test_container_stopped_midway_leaves_nothing(pg_container, backup_dir):
    """Runs last in this module: the container is stopped mid-dump, then started again."""
    pg_container.execute("CREATE DATABASE midway")
    pg_container.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)", "midway")
    argv, args_path = module_argv(ctr_args(pg_container, state="dump", db="midway", dest=backup_dir, environment="ctr"))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=module_env(), start_new_session=True)
    locker = pg_container.connect("midway")
    locker.autocommit = False
    try:
        wait_for(lambda: [n for n in os.listdir(backup_dir) if n.endswith(".partial")], what="the .partial archive")
        thread = threading.Thread(target=_lock_quietly, args=(locker,))
        thread.start()
        wait_for(lambda: pg_container.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'minimarket.backup' AND wait_event_type = 'Lock'"),
            what="a pg_dump waiting for its lock")
        subprocess.run(["docker", "stop", "-t", "1", pg_container.name], check=True, capture_output=True)
        out, _err = proc.communicate(timeout=120)
        thread.join()
    finally:
        os.unlink(args_path)
        locker.close()
        subprocess.run(["docker", "start", pg_container.name], check=True, capture_output=True)
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 1 and result["failed"] is True and "\n" not in result["msg"]
    assert ("is the PostgreSQL server running?" in result["msg"] or "did container %s stop?" % pg_container.name in result["msg"]
            or "check the container name" in result["msg"]), result["msg"]
    assert dest_files(backup_dir) == []


def _lock_quietly(conn):
    try:
        conn.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    except psycopg.Error:
        pass
