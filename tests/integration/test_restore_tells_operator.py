"""What a restore must say, and the small failures that must read right (issue: crash-safe restores)."""
import json
import os
import subprocess
import time

import psycopg
import pytest

from tests.pg_fixtures import conn_args, run_module, unique, wait_for
from tests.volume_fixtures import populate

pytest_plugins = ["tests.pg_fixtures", "tests.volume_fixtures"]

VOLUME_MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "plugins", "modules", "docker_volume_archive.py")


def warnings(result):
    """Warnings as text (ansible-core 2.19 returns each as an event dict)."""
    return [w["event"]["msg"] if isinstance(w, dict) else w for w in result.get("warnings", [])]


def dump(pg_server, db, dest):
    result = run_module(conn_args(pg_server, state="dump", db=db, dest=dest, environment="testing"))
    assert result["_rc"] == 0, result
    return result


def test_table_name_with_newline_round_trips(pg_server, backup_dir, dropped_databases):
    db = unique("mm_newline")
    pg_server.create_database(db)
    dropped_databases.append(db)
    pg_server.execute('CREATE TABLE "línea\nnueva" (id int); INSERT INTO "línea\nnueva" SELECT generate_series(1, 3)', db)
    result = dump(pg_server, db, backup_dir)
    assert result["tables"] == {"public.línea\nnueva": 3}
    restored = run_module(conn_args(pg_server, state="restore", db=db, src=result["archive"], environment="testing"))
    assert restored["_rc"] == 0, restored
    assert restored["tables"] == {"public.línea\nnueva": {"expected": 3, "restored": 3, "ok": True}}
    assert pg_server.execute('SELECT count(*) FROM "línea\nnueva"', db) == [(3,)]


def test_restore_under_another_name_needs_restore_as(pg_server, seeded_db, backup_dir, dropped_databases):
    result = dump(pg_server, seeded_db, backup_dir)
    target = unique("mm_otro_nombre")
    dropped_databases.append(target)
    databases = pg_server.databases()
    for check_mode in (True, False):
        refused = run_module(conn_args(pg_server, state="restore", db=target, src=result["archive"], environment="testing"),
                             check_mode=check_mode)
        assert refused["_rc"] == 1, refused
        assert refused["msg"] == ("%s is a dump of database %s, not %s: to restore it under the name %s set restore_as: %s, "
                                  "or set db: %s" % (os.path.basename(result["archive"]), seeded_db, target, target, target,
                                                     seeded_db))
        assert pg_server.databases() == databases
    args = conn_args(pg_server, state="restore", db=target, restore_as=target, src=result["archive"], environment="testing")
    planned = run_module(args, check_mode=True)
    assert planned["_rc"] == 0 and planned["source_database"] == seeded_db and planned["database"] == target
    assert any("a dump of database %s, under the name %s" % (seeded_db, target) in w for w in warnings(planned)), planned
    restored = run_module(args)
    assert restored["_rc"] == 0 and restored["source_database"] == seeded_db, restored
    assert pg_server.execute("SELECT count(*) FROM productos", target) == pg_server.execute("SELECT count(*) FROM productos", seeded_db)


def test_latest_names_every_newer_backup_it_skipped(pg_server, seeded_db, backup_dir, dropped_databases):
    del dropped_databases
    older = dump(pg_server, seeded_db, backup_dir)
    time.sleep(1.1)  # file names carry the second of the dump
    newer = dump(pg_server, seeded_db, backup_dir)
    os.unlink(newer["metadata"])
    checked = run_module(conn_args(pg_server, state="restore", db=seeded_db, dest=backup_dir, src="latest", environment="testing"),
                         check_mode=True)
    assert checked["_rc"] == 0 and checked["src"] == older["archive"], checked
    skipped = "src=latest skipped the newer backup %s: metadata file %s is missing" % (
        os.path.basename(newer["archive"]), os.path.basename(newer["metadata"]))
    assert warnings(checked) == [skipped]


def test_restore_lists_the_sessions_it_terminates(pg_server, seeded_db, backup_dir, dropped_databases):
    result = dump(pg_server, seeded_db, backup_dir)
    args = conn_args(pg_server, state="restore", db=seeded_db, src=result["archive"], environment="testing", keep_previous=False)
    with psycopg.connect(pg_server.dsn(seeded_db) + " application_name=agente_negocio") as busy:
        busy.execute("SELECT count(*) FROM ventas")  # an open transaction
        pid = busy.info.backend_pid
        planned = run_module(args, check_mode=True)
        assert planned["_rc"] == 0, planned
        expected = {"pid": pid, "user": pg_server.user, "application": "agente_negocio", "state": "idle in transaction"}
        assert planned["sessions"] == [expected]
        assert "terminating 1 session(s)" in planned["msg"]
        assert warnings(planned) == ["the restore will terminate 1 session(s) on %s: pid %d user %s application "
                                     "'agente_negocio' idle in transaction" % (seeded_db, pid, pg_server.user)]
        restored = run_module(args)
        assert restored["_rc"] == 0, restored
        assert restored["sessions"] == [expected]
        with pytest.raises(psycopg.OperationalError):
            busy.execute("SELECT 1")
    wait_for(lambda: not pg_server.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", params=(pid,)), what="the session")


@pytest.fixture
def full_dest(tmp_path):
    """A 64 KiB tmpfs: any archive fills it."""
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)], check=True)
    os.mkdir(str(root / "volumes"))
    yield str(root / "volumes")
    subprocess.run(["umount", str(root)], check=True)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_volume_archive_on_a_full_disk_says_so(engine, mm_docker, full_dest, compression):
    volume = mm_docker.volume("lleno")
    populate(mm_docker.mountpoint(volume), sparse_size=64 * 1024, extended=False)
    with open(os.path.join(mm_docker.mountpoint(volume), "azar.bin"), "wb") as handle:
        handle.write(os.urandom(512 * 1024))
    result = run_module(dict(volumes=[volume], dest=full_dest, environment="lleno", compression=compression, mode="host",
                             journal_dir=os.path.join(os.path.dirname(full_dest), "..", "journal")), module=VOLUME_MODULE)
    assert result["_rc"] == 1, result
    assert "damaged" not in result["msg"] and "\n" not in result["msg"]
    assert "No space left on device -- free space on the destination or choose another backup_dir" in result["msg"], result["msg"]
    assert os.path.join(full_dest, "volumes_lleno_") in result["msg"], result["msg"]
    assert os.listdir(full_dest) == [".volumes_lleno.lock"]
    assert json.dumps(result).count("Traceback") == 0


def test_a_journal_on_a_full_disk_fails_before_the_step(full_dest):
    """The backup root is full: the step is not recorded, so it must not be taken (one clear line, no traceback)."""
    from ansible_collections.minimarket.backup.plugins.module_utils import _journal
    from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
    root = os.path.dirname(full_dest)
    journal = _journal.Job(os.path.join(root, ".journal"), "x restore")
    filler = os.open(os.path.join(root, "relleno"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(filler, b"\0" * 4096)
        with pytest.raises(BackupError, match=r"cannot write the journal .*No space left on device.*: free space in the backup root"):
            journal.record("container_stopped", id="abc", name="web")
    finally:
        os.close(filler)
        os.unlink(os.path.join(root, "relleno"))
        journal.done()
    assert os.listdir(os.path.join(root, ".journal")) == []
