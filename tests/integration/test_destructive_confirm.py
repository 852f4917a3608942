"""Destructive playbooks resolve and check the backup first, then show it and ask (tiny inventory, real servers, no stack).

Without a terminal and without confirm=yes they refuse at once; the live database and volumes stay as they were.
"""
import json
import os
import re

import psycopg
import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _volume_archive
from testenv import pgcompare
from tests.integration.test_playbooks import ansible, local_inventory
from tests.pg_fixtures import conn_args, run_module

pytest_plugins = ["tests.pg_fixtures", "tests.volume_fixtures"]

TAKEN = re.compile(r"\(taken \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, [0-9.]+ (KiB|MiB|bytes), environment testing\)")


def refusal(proc):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    fatal = [line for line in out.splitlines() if line.startswith("fatal:")]
    assert len(fatal) == 1, out
    message = json.loads(fatal[0].split("=> ", 1)[1])["msg"]
    assert message.startswith("not confirmed:") and "nothing was changed" in message and "pass -e confirm=yes" in message
    assert "changed=0" in out
    return out


@pytest.fixture
def dumped(pg_server, seeded_db, tmp_path, dropped_databases):
    dest = tmp_path / "backups" / "database"
    dest.mkdir(parents=True)
    result = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=str(dest), environment="testing"))
    assert result["_rc"] == 0, result
    hosts = local_inventory(tmp_path, "testing", minimarket_db_name=seeded_db, minimarket_db_host=pg_server.host, minimarket_db_port=pg_server.port,
                            minimarket_db_user=pg_server.user, minimarket_db_password=pg_server.password,
                            minimarket_db_tools_in_container=False, minimarket_services_to_stop=["agente_deposito"])
    return hosts, result["archive"]


@pytest.mark.parametrize("playbook,given", [("restore_database.yml", "path"), ("recover_database.yml", "latest")])
def test_database_restore_shows_the_resolved_dump_then_refuses_without_confirmation(playbook, given, dumped, pg_server, seeded_db):
    hosts, archive = dumped
    before = pgcompare.snapshot(pg_server.dsn(seeded_db))
    proc = ansible("ansible-playbook", "-i", hosts, "playbooks/" + playbook, "-e", "backup_file=" + (archive if given == "path" else "latest"))
    out = refusal(proc)
    # The file resolved and checked by the module in check mode: its path, UTC date, size and environment.
    shown = [line for line in out.splitlines() if "from backup %s (taken" % archive in line]
    assert shown and TAKEN.search(shown[0]), out
    assert "will overwrite: database %s (testing)" % seeded_db in out
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(seeded_db))) == []


def test_the_question_names_the_sessions_the_restore_would_terminate(dumped, pg_server, seeded_db):
    hosts, archive = dumped
    with psycopg.connect(pg_server.dsn(seeded_db) + " application_name=dashboard") as busy:
        busy.execute("SELECT count(*) FROM ventas")  # an open transaction
        pid = busy.info.backend_pid
        out = refusal(ansible("ansible-playbook", "-i", hosts, "playbooks/restore_database.yml", "-e", "backup_file=latest"))
        busy.execute("SELECT 1")  # refused: the session is still there
    assert ("warning: the restore will terminate 1 session(s) on %s: pid %d user %s application 'dashboard' "
            "idle in transaction" % (seeded_db, pid, pg_server.user)) in out


def test_an_empty_target_time_is_the_dump_path(dumped):
    """AWX's recover database survey sends target_time empty when the operator leaves it blank."""
    hosts, archive = dumped
    out = refusal(ansible("ansible-playbook", "-i", hosts, "playbooks/recover_database.yml", "-e", "target_time="))
    assert "from backup %s" % archive in out and "point in time" not in out


def test_a_wrong_answer_is_a_refusal(dumped, pg_server, seeded_db):
    hosts, archive = dumped
    proc = ansible("ansible-playbook", "-i", hosts, "playbooks/recover_database.yml", "-e", "confirm=no")
    out = refusal(proc)
    assert "from backup %s" % archive in out


def test_a_damaged_dump_fails_before_the_question(dumped, pg_server, seeded_db):
    hosts, archive = dumped
    with open(archive, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))
    proc = ansible("ansible-playbook", "-i", hosts, "playbooks/restore_database.yml", "-e", "backup_file=latest", "-e", "confirm=yes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "is corrupted: sha256" in out
    assert "will overwrite" not in out and "changed=0" in out


def test_restore_after_confirmation_uses_the_dump_it_showed(dumped, pg_server, seeded_db):
    hosts, archive = dumped
    before = pgcompare.snapshot(pg_server.dsn(seeded_db))
    pg_server.execute("UPDATE productos SET nombre = 'damaged'", seeded_db)
    proc = ansible("ansible-playbook", "-i", hosts, "playbooks/restore_database.yml", "-e", "backup_file=latest", "-e", "confirm=yes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "from backup %s (taken" % archive in out
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(seeded_db))) == []


def test_volume_restore_shows_the_archive_and_what_it_replaces_then_refuses(engine, mm_docker, tmp_path):
    volume = mm_docker.volume("data")
    mountpoint = mm_docker.mountpoint(volume)
    with open(os.path.join(mountpoint, "ventas.csv"), "wb") as handle:
        handle.write(b"id,total\n1,100\n")
    options = _volume_archive.ArchiveOptions([volume], str(tmp_path / "backups" / "volumes"), "testing", "gzip", mode="host")
    archived = _volume_archive.archive(engine, options)
    with open(os.path.join(mountpoint, "ventas.csv"), "wb") as handle:
        handle.write(b"changed since")
    hosts = local_inventory(tmp_path, "testing", minimarket_volumes=[volume])
    proc = ansible("ansible-playbook", "-i", hosts, "playbooks/restore_volumes.yml", "-e", "backup_file=latest")
    out = refusal(proc)
    shown = [line for line in out.splitlines() if "from backup %s (taken" % archived["archive"] in line]
    assert shown and TAKEN.search(shown[0]), out
    assert "will overwrite: %s replaced" % volume in out
    with open(os.path.join(mountpoint, "ventas.csv"), "rb") as handle:
        assert handle.read() == b"changed since"
