"""pg_split_dump against a real PostgreSQL 15 cluster (native mode), through the real module entry point."""
import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading

import psycopg
import pytest

from testenv import pgcompare
from tests.pg_fixtures import (
    LO_QUERY,
    REPO_ROOT,
    conn_args,
    dest_files,
    module_argv,
    module_env,
    run_module,
    schema_dump,
    unique,
    wait_for,
)

pytest_plugins = ["tests.pg_fixtures"]


def dump(pg_server, db, dest, **extra):
    args = conn_args(pg_server, state="dump", db=db, backup_dir=dest, environment="testing")
    args.update(extra)
    result = run_module(args)
    assert result["_rc"] == 0, result
    return result


def db_exists(pg_server, name):
    return bool(pg_server.execute("SELECT 1 FROM pg_database WHERE datname = %s", params=(name,)))


def leftover_databases(pg_server):
    return [r[0] for r in pg_server.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE '%\\_restoring\\_%' OR datname LIKE '%\\_verify\\_%'")]


def test_seed_round_trip_swap(pg_server, seeded_db, backup_dir, dropped_databases):
    before = pgcompare.snapshot(pg_server.dsn(seeded_db))
    schema_before = schema_dump(pg_server, seeded_db)
    result = dump(pg_server, seeded_db, backup_dir, compression="zstd", jobs=2)
    assert result["changed"] is True
    archive = result["archive"]
    assert os.path.basename(archive).startswith("database_testing_") and archive.endswith(".tar.zst")
    assert dest_files(backup_dir) == sorted([os.path.basename(archive), os.path.basename(result["metadata"])])
    for path in (archive, result["metadata"]):
        assert os.stat(path).st_mode & 0o777 == 0o600
    with open(result["metadata"], encoding="utf-8") as handle:
        meta = json.load(handle)
    assert pg_server.password not in json.dumps(meta)
    assert meta["sha256"] == result["sha256"] and meta["size"] == os.path.getsize(archive)
    assert meta["kind"] == "database" and meta["environment"] == "testing" and meta["database"] == seeded_db
    assert {"schema.sql", "pre-data.dump", "misc-data.dump", "post-data.dump", "post-data-tables.json"} <= set(meta["members"])
    counts = dict((k.replace("public.", ""), v) for k, v in meta["tables"].items())
    assert counts == before["counts"]
    assert result["tables"] == meta["tables"]

    pg_server.execute("DELETE FROM venta_items WHERE id % 2 = 0", seeded_db)
    damaged = pgcompare.snapshot(pg_server.dsn(seeded_db))
    restored = run_module(conn_args(pg_server, state="restore", db=seeded_db, dest=backup_dir, environment="testing",
                                    src="latest", jobs=2))
    assert restored["_rc"] == 0, restored
    dropped_databases.append(restored["previous"])
    assert restored["previous"].startswith(seeded_db + "_pre_restore_")
    assert all(t["ok"] for t in restored["tables"].values()) and len(restored["tables"]) == len(meta["tables"])
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(seeded_db))) == []
    assert schema_dump(pg_server, seeded_db) == schema_before
    assert pgcompare.diff(damaged, pgcompare.snapshot(pg_server.dsn(restored["previous"]))) == []
    assert leftover_databases(pg_server) == []


def test_torture_round_trip_into_new_database(pg_server, torture_db, backup_dir, dropped_databases):
    before = pgcompare.snapshot(pg_server.dsn(torture_db))
    los = pg_server.execute(LO_QUERY, torture_db)
    result = dump(pg_server, torture_db, backup_dir, compression="gzip", jobs=2, include_globals=True)
    with open(result["metadata"], encoding="utf-8") as handle:
        meta = json.load(handle)
    assert "globals.sql" in meta["members"]
    assert meta["tables"]['almacén.señal ñ'] == 302 and meta["tables"]['public.raro."tabla*'] == 50
    target = unique("mm_torture_copy")
    dropped_databases.append(target)
    restored = run_module(conn_args(pg_server, state="restore", db=target, restore_as=target, src=result["archive"],
                                    environment="testing"))
    assert restored["_rc"] == 0, restored
    assert restored["previous"] is None
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(target))) == []
    assert schema_dump(pg_server, target) == schema_dump(pg_server, torture_db)
    assert pg_server.execute(LO_QUERY, target) == los and len(los) == 2
    assert pg_server.execute("SELECT last_value, is_called FROM \"almacén\".tickets", target) == [(4242, True)]
    assert pg_server.execute("SELECT count(*) FROM resumen_mat", target) == [(100,)]
    assert_analyzed_like_the_source(pg_server, torture_db, target)
    inherited = set(row[1] for row in pg_server.execute(STATS_KEYS, target) if row[3])
    assert {"ventas_part", "resumen_mat"} <= set(row[1] for row in pg_server.execute(STATS_KEYS, target)) and "ventas_part" in inherited


ESCAPES_SQL = r"""
CREATE TABLE public.textos (id serial PRIMARY KEY, v text, b bytea);
INSERT INTO public.textos (v, b) VALUES (E'dos\nlíneas', NULL), (E'\\.', E'\\x5c2e0a'), (E'\r\n\\.\n', NULL),
  (NULL, NULL), ('', '\x'), (E'\\', E'\\x0a0d'), (E'fin\\', NULL), (E'\t\\N', NULL);
INSERT INTO public.textos (v) SELECT E'fila\n' || g || E'\r\\' FROM generate_series(1, 5000) g;
CREATE TABLE public."t;""
\.
x" ("a
\.
" serial, "b;" text);
INSERT INTO public."t;""
\.
x" ("b;") VALUES (E'\n\\.\n'), (NULL), ('\.');
CREATE TABLE public.padre (id int, nota text);
CREATE TABLE public.hija (extra int) INHERITS (public.padre);
INSERT INTO public.padre VALUES (1, E'a\nb');
INSERT INTO public.hija VALUES (2, NULL, 3), (3, E'\\', 4);
CREATE TABLE public.vacia (id int);
CREATE MATERIALIZED VIEW public.sin_datos AS SELECT id FROM public.vacia WITH NO DATA;
"""


STATS_KEYS = """
SELECT schemaname, tablename, attname, inherited FROM pg_stats
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3, 4
"""


def assert_analyzed_like_the_source(pg_server, source, target):
    """The restore leaves the statistics a database-wide ANALYZE of the source leaves: same relations, columns, inheritance."""
    pg_server.execute("ANALYZE", source)
    expected = pg_server.execute(STATS_KEYS, source)
    assert expected and pg_server.execute(STATS_KEYS, target) == expected


def test_rows_are_counted_in_the_copy_data_exactly(pg_server, backup_dir, dropped_databases):
    """Values with newlines, CRs, backslashes, "\\." and NULLs, a sequence whose name holds the end marker, inheritance:
    the metadata's rows are each table's own rows in the snapshot, and the restore checks them."""
    db = unique("mm_escapes")
    pg_server.create_database(db)
    dropped_databases.append(db)
    pg_server.execute(ESCAPES_SQL, db)
    result = dump(pg_server, db, backup_dir, compression="none", jobs=2)
    with open(result["metadata"], encoding="utf-8") as handle:
        meta = json.load(handle)
    own = dict(("public." + name, pg_server.execute('SELECT count(*) FROM ONLY public.%s' % quoted, db)[0][0])
               for name, quoted in (("textos", "textos"), ('t;"\n\\.\nx', '"t;""\n\\.\nx"'), ("padre", "padre"),
                                    ("hija", "hija"), ("vacia", "vacia")))
    assert own == {"public.textos": 5008, 'public.t;"\n\\.\nx': 3, "public.padre": 1, "public.hija": 2, "public.vacia": 0}
    assert meta["tables"] == own and result["tables"] == own and meta["archive_format"] == "minimarket-pg-split-dump/3"
    rows = dict((entry["table"], entry["rows"]) for entry in json.loads(_member(result["archive"], "manifest.json"))["streams"].values()
                if entry["kind"] == "table-data")
    assert rows == own
    target = unique("mm_escapes_copy")
    dropped_databases.append(target)
    restored = run_module(conn_args(pg_server, state="restore", db=target, restore_as=target, src=result["archive"],
                                    environment="testing"))
    assert restored["_rc"] == 0, restored
    assert restored["tables"] == dict((name, {"expected": rows, "restored": rows, "ok": True}) for name, rows in own.items())
    assert pg_server.execute("SELECT v, b FROM public.textos ORDER BY id LIMIT 8", target) == pg_server.execute(
        "SELECT v, b FROM public.textos ORDER BY id LIMIT 8", db)
    assert_analyzed_like_the_source(pg_server, db, target)


def _member(archive, name):
    with tarfile.open(archive) as tar:
        return tar.extractfile(name).read()


def test_uncompressed_drop_strategy_and_readable_schema(pg_server, torture_db, backup_dir):
    before = pgcompare.snapshot(pg_server.dsn(torture_db))
    result = dump(pg_server, torture_db, backup_dir, compression="none", jobs=1)
    assert result["archive"].endswith(".tar")
    with tarfile.open(result["archive"]) as tar:
        names = tar.getnames()
        schema = tar.extractfile("schema.sql.part00000.last").read().decode("utf-8")
    assert names[0] == "schema.sql.part00000.last" and names[-1] == "manifest.json"
    assert 'CREATE TABLE "almacén"."señal ñ"' in schema
    pg_server.execute('DROP TABLE "almacén"."señal ñ"', torture_db)
    restored = run_module(conn_args(pg_server, state="restore", db=torture_db, src=result["archive"], environment="testing",
                                    strategy="drop"))
    assert restored["_rc"] == 0, restored
    assert restored["previous"] is None
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(torture_db))) == []


def test_verify_passes_and_fails_with_reasons(pg_server, seeded_db, backup_dir):
    result = dump(pg_server, seeded_db, backup_dir, compression="zstd")
    ok = run_module(conn_args(pg_server, state="verify", db=seeded_db, dest=backup_dir, environment="testing", src="latest",
                              critical_tables={"productos": 10, "public.venta_items": 1000},
                              queries=["SELECT count(*) > 0 FROM categorias", "SELECT NOT EXISTS (SELECT 1 FROM productos WHERE precio < 0)"]))
    assert ok["_rc"] == 0, ok
    assert ok["changed"] is False and ok["problems"] == [] and len(ok["checks"]) == 4
    assert ok["backup"]["path"] == result["archive"] and ok["backup"]["environment"] == "testing"
    assert all(check["ok"] for check in ok["checks"])
    assert not db_exists(pg_server, ok["scratch_db"])
    bad = run_module(conn_args(pg_server, state="verify", db=seeded_db, src=result["archive"], environment="testing",
                               scratch_db=unique("mm_scratch"), critical_tables={"productos": 10 ** 9},
                               queries=["SELECT count(*) = 0 FROM categorias"]))
    assert bad["_rc"] == 1 and bad["failed"] is True
    assert bad["backup"]["name"] == os.path.basename(result["archive"]) and result["archive"] in bad["backup"]["summary"]
    assert "failed verification" in bad["msg"] and "critical table productos" in bad["msg"]
    assert "SELECT count(*) = 0 FROM categorias" in bad["msg"]
    assert not db_exists(pg_server, bad["scratch_db"])
    checked = run_module(conn_args(pg_server, state="verify", db=seeded_db, src=result["archive"], environment="testing"),
                         check_mode=True)
    assert checked["_rc"] == 0 and checked["changed"] is False and "checksum" in checked["msg"]


def test_verify_of_an_explicit_src_needs_nothing_else(pg_server, seeded_db, backup_dir):
    """The archive's name carries the environment; the connection by the names a community.postgresql user types."""
    archive = dump(pg_server, seeded_db, backup_dir)["archive"]
    verified = run_module(dict(state="verify", src=archive, login_db=seeded_db, host=pg_server.host, port=pg_server.port,
                               login=pg_server.user, login_password=pg_server.password, bin_dir=pg_server.bindir,
                               critical_tables={"productos": 1}))
    assert verified["_rc"] == 0, verified
    assert verified["src"] == archive and verified["problems"] == [] and verified["checks"][0]["ok"] is True
    assert not db_exists(pg_server, verified["scratch_db"])


def test_consistent_under_concurrent_writes(pg_server, seeded_db, backup_dir, dropped_databases):
    """Two tables written in one transaction each: a dump from one snapshot keeps them equal."""
    pg_server.execute("CREATE TABLE w_a (id bigserial PRIMARY KEY, v text); CREATE TABLE w_b (id bigserial PRIMARY KEY, v text)", seeded_db)
    stop = threading.Event()
    written = []

    def writer():
        with pg_server.connect(seeded_db, autocommit=False) as conn:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute("INSERT INTO w_a (v) VALUES ('x')")
                    conn.execute("INSERT INTO venta_items (venta_id, producto_id, cantidad, precio_unitario) "
                                 "SELECT venta_id, producto_id, cantidad, precio_unitario FROM venta_items LIMIT 1")
                    conn.execute("INSERT INTO w_b (v) VALUES ('y')")
                written.append(1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(written) > 20, what="writer")
        result = dump(pg_server, seeded_db, backup_dir, jobs=2)
        during = len(written)
    finally:
        stop.set()
        thread.join()
    assert during > 20
    tables = result["tables"]
    assert tables["public.w_a"] == tables["public.w_b"] > 0
    target = unique("mm_concurrent")
    dropped_databases.append(target)
    restored = run_module(conn_args(pg_server, state="restore", db=target, restore_as=target, src=result["archive"],
                                    environment="testing"))
    assert restored["_rc"] == 0, restored
    counts = pgcompare.row_counts(pg_server.dsn(target))
    assert counts["w_a"] == counts["w_b"] == tables["public.w_a"]
    assert counts["venta_items"] == tables["public.venta_items"]
    assert pgcompare.row_counts(pg_server.dsn(seeded_db))["w_a"] > tables["public.w_a"]


def test_check_mode_changes_nothing(pg_server, seeded_db, backup_dir):
    planned = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=backup_dir, environment="testing"), check_mode=True)
    assert planned["_rc"] == 0 and planned["changed"] is True and "would write" in planned["msg"]
    assert planned["archive"].endswith(".tar.gz") and dest_files(backup_dir) == []
    result = dump(pg_server, seeded_db, backup_dir)
    before = pgcompare.snapshot(pg_server.dsn(seeded_db))
    databases = pg_server.databases()
    checked = run_module(conn_args(pg_server, state="restore", db=seeded_db, src=result["archive"], environment="testing"),
                         check_mode=True)
    assert checked["_rc"] == 0 and "would restore" in checked["msg"]
    assert pg_server.databases() == databases
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(seeded_db))) == []


def _restore_refused(pg_server, db, src, **extra):
    before = pgcompare.snapshot(pg_server.dsn(db))
    databases = pg_server.databases()
    args = conn_args(pg_server, state="restore", db=db, src=src, environment="testing")
    args.update(extra)
    result = run_module(args)
    assert result["_rc"] == 1 and result["failed"] is True, result
    assert "\n" not in result["msg"]
    assert pg_server.databases() == databases
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(db))) == []
    return result["msg"]


def test_bad_archives_are_refused_and_live_db_untouched(pg_server, seeded_db, backup_dir):
    result = dump(pg_server, seeded_db, backup_dir, compression="gzip")
    archive = result["archive"]
    with open(archive, "rb") as handle:
        good = handle.read()

    with open(archive, "r+b") as handle:
        handle.seek(len(good) // 2)
        handle.write(bytes([good[len(good) // 2] ^ 0xFF]))
    assert "corrupted" in _restore_refused(pg_server, seeded_db, archive)

    with open(archive, "wb") as handle:
        handle.write(good[: len(good) // 2])
    assert "not a complete backup" in _restore_refused(pg_server, seeded_db, archive)

    assert "does not exist" in _restore_refused(pg_server, seeded_db, os.path.join(backup_dir, "database_testing_20200101_000000.tar.gz"))
    assert "not a backup of this collection" in _restore_refused(pg_server, seeded_db, "/etc/passwd")

    foreign_dir = os.path.join(backup_dir, "foreign")
    os.mkdir(foreign_dir)
    foreign = os.path.join(foreign_dir, "database_testing_20200101_000000.tar.gz")
    subprocess.run(["tar", "czf", foreign, "-C", REPO_ROOT, "galaxy.yml"], check=True)
    assert "metadata file" in _restore_refused(pg_server, seeded_db, foreign)
    # A foreign archive with metadata that vouches for it gets as far as the temporary database, which is dropped.
    with open(result["metadata"], encoding="utf-8") as handle:
        meta = json.load(handle)
    meta.update(archive=os.path.basename(foreign), size=os.path.getsize(foreign),
                sha256=subprocess.run(["sha256sum", foreign], capture_output=True, text=True, check=True).stdout.split()[0])
    with open(foreign[: -len(".tar.gz")] + "_metadata.json", "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
    assert "not a pg_split_dump backup" in _restore_refused(pg_server, seeded_db, foreign)
    assert leftover_databases(pg_server) == []


def test_restored_copy_not_matching_metadata_is_dropped(pg_server, seeded_db, backup_dir):
    result = dump(pg_server, seeded_db, backup_dir)
    with open(result["metadata"], encoding="utf-8") as handle:
        meta = json.load(handle)
    meta["tables"]["public.productos"] += 1
    with open(result["metadata"], "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
    msg = _restore_refused(pg_server, seeded_db, result["archive"])
    assert "live database untouched" in msg and "public.productos" in msg
    assert leftover_databases(pg_server) == []


def test_connection_and_destination_errors(pg_server, seeded_db, backup_dir, tmp_path):
    wrong = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=backup_dir, login_password="not-it", environment="production"))
    assert wrong["_rc"] == 1 and "password authentication failed" in wrong["msg"] and "login_password" in wrong["msg"]
    assert "not-it" not in json.dumps(wrong)
    missing = run_module(conn_args(pg_server, state="dump", db="no_such_db_x", dest=backup_dir, environment="production"))
    assert missing["_rc"] == 1 and 'database "no_such_db_x" does not exist' in missing["msg"]
    nodir = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=str(tmp_path / "absent"), environment="production"))
    assert nodir["_rc"] == 1 and "is not a directory" in nodir["msg"]
    # No silent production: a dump without environment names the missing option and writes nothing.
    noenv = run_module(conn_args(pg_server, state="dump", db=seeded_db, backup_dir=backup_dir))
    assert noenv["_rc"] == 1 and noenv["msg"] == (
        "environment not set: state=dump writes database_<environment>_<YYYYMMDD_HHMMSS> files into backup_dir; "
        "set backup_dir and environment (the inventory's minimarket_environment, for example production)")
    nolatest = run_module(conn_args(pg_server, state="verify", db=seeded_db, src="latest", backup_dir=backup_dir))
    assert nolatest["_rc"] == 1 and nolatest["msg"].startswith("environment not set: src=latest picks the newest complete")
    assert dest_files(backup_dir) == []

    readonly = tmp_path / "ro"
    readonly.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)], check=True)
    try:
        result = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=str(readonly), environment="production"))
        assert result["_rc"] == 1 and "not writable" in result["msg"]
    finally:
        subprocess.run(["umount", str(readonly)], check=True)

    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        for compression in ("none", "gzip"):
            result = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=str(full), compression=compression, environment="production"))
            assert result["_rc"] == 1 and "No space left on device" in result["msg"], result
            assert "\n" not in result["msg"]
            assert dest_files(str(full)) == []
    finally:
        subprocess.run(["umount", str(full)], check=True)


def _start_blocked_dump(pg_server, db, dest):
    """Start the module and park one of its pg_dump processes behind a waiting ACCESS EXCLUSIVE lock."""
    argv, args_path = module_argv(conn_args(pg_server, state="dump", db=db, dest=dest, environment="testing"))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=module_env(), start_new_session=True)
    wait_for(lambda: [n for n in os.listdir(dest) if n.endswith(".partial")], what="the .partial archive")
    locker = psycopg.connect(pg_server.dsn(db), autocommit=False)

    def lock():
        try:
            locker.execute("LOCK TABLE categorias IN ACCESS EXCLUSIVE MODE")
        except psycopg.Error:
            pass

    thread = threading.Thread(target=lock)
    thread.start()
    wait_for(lambda: pg_server.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = 'minimarket.backup' AND wait_event_type = 'Lock' "
        "AND query LIKE 'LOCK TABLE%'"), what="a pg_dump waiting for its lock")
    return proc, args_path, locker, thread


def _no_password_in_argv(password):
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as handle:
                    assert password.encode() not in handle.read()
            except OSError:
                pass


def test_server_stopped_midway(pg_server, seeded_db, backup_dir):
    proc, args_path, locker, thread = _start_blocked_dump(pg_server, seeded_db, backup_dir)
    try:
        _no_password_in_argv(pg_server.password)
        pg_server.stop(mode="immediate")
        out, _err = proc.communicate(timeout=120)
    finally:
        os.unlink(args_path)
        thread.join()
        locker.close()
        pg_server.start()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert proc.returncode == 1 and result["failed"] is True
    assert "is the PostgreSQL server running?" in result["msg"] and "\n" not in result["msg"]
    assert dest_files(backup_dir) == []


def test_dump_killed_midway_leaves_nothing_complete(pg_server, seeded_db, backup_dir):
    proc, args_path, locker, thread = _start_blocked_dump(pg_server, seeded_db, backup_dir)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        thread.join()
        locker.rollback()
    finally:
        os.unlink(args_path)
        locker.close()
    wait_for(lambda: not pg_server.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = 'minimarket.backup'"),
             what="the killed run's sessions to end")
    leftovers = dest_files(backup_dir)
    assert len(leftovers) == 1 and leftovers[0].endswith(".tar.gz.partial")
    result = dump(pg_server, seeded_db, backup_dir)
    assert dest_files(backup_dir) == sorted([os.path.basename(result["archive"]), os.path.basename(result["metadata"])])


@pytest.fixture
def big_db(pg_server):
    name = unique("mm_big")
    pg_server.create_database(name)
    pg_server.execute("CREATE TABLE grande (id bigint PRIMARY KEY, t text); "
                      "INSERT INTO grande SELECT g, md5(g::text) || repeat('ñ', 40) FROM generate_series(1, 300000) g", name)
    yield name
    pg_server.drop_database(name)


def test_restore_killed_midway_leaves_live_db_intact(pg_server, big_db, backup_dir, dropped_databases):
    result = dump(pg_server, big_db, backup_dir, compression="zstd")
    pg_server.execute("DELETE FROM grande WHERE id > 1000", big_db)
    before = pgcompare.snapshot(pg_server.dsn(big_db))
    oid = pg_server.execute("SELECT oid FROM pg_database WHERE datname = %s", params=(big_db,))
    journal_dir = os.path.join(backup_dir, ".journal")
    argv, args_path = module_argv(conn_args(pg_server, state="restore", db=big_db, src=result["archive"], environment="testing",
                                            journal_dir=journal_dir))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=module_env(), start_new_session=True)
    try:
        with psycopg.connect(pg_server.dsn("postgres"), autocommit=True) as conn:
            wait_for(lambda: conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname LIKE '%\\_restoring\\_%' AND query LIKE 'COPY%'").fetchall(),
                interval=0.005, what="the restore's COPY")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        os.unlink(args_path)
    wait_for(lambda: not pg_server.execute("SELECT 1 FROM pg_stat_activity WHERE datname LIKE '%\\_restoring\\_%'"),
             what="the killed restore's sessions to end")
    assert pg_server.execute("SELECT oid FROM pg_database WHERE datname = %s", params=(big_db,)) == oid
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(big_db))) == []
    assert not [d for d in pg_server.databases() if "_pre_restore_" in d and d.startswith(big_db)]

    # The next run reports and drops what the killed one left, but never a user's database that merely looks like it:
    # the journal names it; without the journal (an older version's leftover) its name and marker comment do.
    leftover = [d for d in pg_server.databases() if d.startswith(big_db + "_restoring_")]
    assert len(leftover) == 1
    decoy = big_db + "_restoring_20200101_000000"
    pg_server.create_database(decoy)
    dropped_databases.append(decoy)
    planned = run_module(conn_args(pg_server, state="restore", db=big_db, src=result["archive"], environment="testing",
                                   journal_dir=journal_dir), check_mode=True)
    assert planned["_rc"] == 0 and planned["leftovers_dropped"] == leftover, planned
    assert any(w["event"]["msg"].startswith("not repairing in check mode: journal %s/pg_split_dump-restore-" % journal_dir)
               for w in planned["warnings"]), planned["warnings"]
    assert leftover[0] in pg_server.databases()
    again = run_module(conn_args(pg_server, state="restore", db=big_db, src=result["archive"], environment="testing", keep_previous=False,
                                 journal_dir=journal_dir))
    assert again["_rc"] == 0 and again["leftovers_dropped"] == [], again
    assert [entry["repair"] for entry in again["repaired"]] == ["dropped database %s" % leftover[0]]
    shutil.rmtree(journal_dir)
    pg_server.execute("CREATE DATABASE %s" % leftover[0])
    pg_server.execute("COMMENT ON DATABASE %s IS 'minimarket.backup pg_split_dump: temporary copy of database %s, safe to drop'"
                      % (leftover[0], big_db))
    again = run_module(conn_args(pg_server, state="restore", db=big_db, src=result["archive"], environment="testing", keep_previous=False,
                                 journal_dir=journal_dir))
    assert again["_rc"] == 0 and again["leftovers_dropped"] == leftover, again
    assert leftover[0] not in pg_server.databases() and decoy in pg_server.databases()
    assert pg_server.execute("SELECT count(*) FROM grande", big_db) == [(300000,)]
    assert pg_server.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", params=(big_db,)) == [(None,)]


def test_through_ansible_cli_no_log_and_argument_spec(pg_server, seeded_db, backup_dir):
    env = dict(module_env(), ANSIBLE_CONFIG=os.path.join(REPO_ROOT, "ansible.cfg"))
    base = ["ansible", "localhost", "-m", "minimarket.backup.pg_split_dump", "-vvv", "-a"]
    ansible = os.path.join(os.path.dirname(os.path.realpath(os.sys.executable)), "ansible")
    if not os.path.exists(ansible):
        ansible = os.path.join(REPO_ROOT, ".venv", "bin", "ansible")
    args = ("db=%s dest=%s environment=cli login_host=%s login_port=%d login_password=%s bin_dir=%s compression=zstd"
            % (seeded_db, backup_dir, pg_server.host, pg_server.port, pg_server.password, pg_server.bindir))
    done = subprocess.run([ansible] + base[1:] + [args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CHANGED" in done.stdout and "database_cli_" in done.stdout
    assert pg_server.password not in done.stdout + done.stderr
    missing = subprocess.run([ansible] + base[1:] + ["db=%s state=restore" % seeded_db], capture_output=True, text=True,
                             env=env, cwd=REPO_ROOT, check=False)
    assert missing.returncode != 0 and "state is restore but all of the following are missing: src" in missing.stdout


def test_database_owner_without_superuser_dumps_globals_without_passwords(pg_server, backup_dir, dropped_databases):
    role, password = unique("mm_owner"), "owner-" + unique("pw")
    db = unique("mm_owned")
    pg_server.execute("CREATE ROLE %s LOGIN CREATEDB PASSWORD '%s'" % (role, password))
    pg_server.execute("CREATE DATABASE %s OWNER %s" % (db, role))
    dropped_databases.append(db)
    try:
        with psycopg.connect(pg_server.dsn(db).replace("user=%s" % pg_server.user, "user=%s" % role)
                             .replace("password=%s" % pg_server.password, "password=%s" % password), autocommit=True) as conn:
            conn.execute("CREATE TABLE caja (id int PRIMARY KEY, monto numeric); INSERT INTO caja SELECT g, g FROM generate_series(1, 10) g")
        result = run_module(conn_args(pg_server, state="dump", db=db, dest=backup_dir, environment="testing", login_user=role,
                                      login_password=password, include_globals=True))
        assert result["_rc"] == 0, result
        with tarfile.open(result["archive"]) as tar:
            globals_sql = tar.extractfile("globals.sql.part00000.last").read().decode()
        assert "CREATE ROLE %s;" % role in globals_sql and "SCRAM-SHA-256" not in globals_sql
        pg_server.execute("DROP TABLE caja", db)
        restored = run_module(conn_args(pg_server, state="restore", db=db, src=result["archive"], environment="testing",
                                        keep_previous=False))
        assert restored["_rc"] == 0, restored
        assert pg_server.execute("SELECT count(*), pg_get_userbyid(relowner) FROM caja, pg_class WHERE relname = 'caja' GROUP BY 2",
                                 db) == [(10, role)]
        assert pg_server.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", params=(db,)) == [(role,)]
    finally:
        pg_server.drop_database(db)
        pg_server.execute("DROP ROLE IF EXISTS %s" % role)
