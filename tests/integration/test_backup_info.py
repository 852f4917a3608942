"""backup_info on real files and a real rclone remote, and the roles that now ask it instead of reading file names.

A backup whose metadata exists but whose archive is truncated or gone is listed with its problem, is never
``latest``, does not make a backup run skip as "recent", and does not stop a restore from fetching the good copy
from the second location.
"""
import datetime
import json
import os

from ansible_collections.minimarket.backup.plugins.module_utils import _backup_info
from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import metadata_path, parse_archive_name, utc_now
from testenv import pgcompare
from tests import pg_fixtures
from tests.integration.test_offsite import files, snapshot
from tests.integration.test_offsite import run_module as run_offsite
from tests.integration.test_playbooks import ansible, local_inventory
from tests.pg_fixtures import conn_args, run_module
from tests.retention_fixtures import BackupDir

pytest_plugins = ["tests.pg_fixtures", "tests.volume_fixtures"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = os.path.join(ROOT, "plugins", "modules", "backup_info.py")
SECRET = "backup-info-token-do-not-leak"
# rclone's local backend: a real rclone remote whose store is a directory of this host.
LOCAL_REMOTE = {"type": "local"}


def run_info(args, check_mode=False):
    result = pg_fixtures.run_module(args, check_mode=check_mode, timeout=300, module=MODULE)
    assert SECRET not in json.dumps(result)
    return result


def damaged_set(directory, kind="database", environment="production", now=None):
    """Oldest to newest: two complete backups, one with its archive truncated, one whose archive was deleted."""
    now = now or utc_now()
    backups = BackupDir(directory, kind=kind, environment=environment)
    older = backups.complete(now - datetime.timedelta(hours=4), os.urandom(3000))
    good = backups.complete(now - datetime.timedelta(hours=3), os.urandom(2000))
    truncated = backups.complete(now - datetime.timedelta(hours=2), os.urandom(5000))
    with open(truncated, "r+b") as handle:
        handle.truncate(100)
    gone = backups.complete(now - datetime.timedelta(hours=1), os.urandom(4000))
    os.unlink(gone)
    return dict(older=older, good=good, truncated=truncated, gone=gone)


def judged(result):
    return [(b["name"], b["complete"], b.get("problem")) for b in result["backups"]]


EXPECTED_PROBLEMS = ["its archive is missing", "archive is 100 bytes but metadata records 5000", None, None]


def test_module_lists_a_local_set_and_latest_is_not_the_damaged_newest(tmp_path):
    directory = str(tmp_path / "database")
    os.makedirs(directory)
    start = utc_now()
    paths = damaged_set(directory, now=start)
    before = snapshot(directory)
    args = dict(kind="database", environment="production", path=directory)

    result = run_info(args)
    elapsed = (utc_now() - start).total_seconds()
    assert result["_rc"] == 0 and result["changed"] is False, result
    assert result["location"] == directory
    assert [problem for unused, unused, problem in judged(result)] == EXPECTED_PROBLEMS
    assert [b["path"] for b in result["backups"]] == [
        metadata_path(paths["gone"]), paths["truncated"], paths["good"], paths["older"]]
    assert result["latest"]["path"] == paths["good"] and result["latest"]["size"] == 2000
    # the name keeps whole seconds, so the age is bracketed by the time the run took
    assert 3 * 3600 <= result["latest"]["age_seconds"] <= 3 * 3600 + elapsed + 1

    checked = run_info(args, check_mode=True)
    assert checked["_rc"] == 0 and judged(checked) == judged(result) and checked["latest"]["path"] == paths["good"]

    # same size, other bytes: only reading the archive shows it
    with open(paths["good"], "r+b") as handle:
        handle.write(b"\0" * 10)
    assert run_info(args)["latest"]["path"] == paths["good"]
    thorough = run_info(dict(args, checksum=True))
    assert thorough["latest"]["path"] == paths["older"]
    flipped = [b for b in thorough["backups"] if b["path"] == paths["good"]][0]
    assert flipped["complete"] is False and "does not match metadata" in flipped["problem"] and "the archive is damaged" in flipped["problem"]
    assert set(snapshot(directory)) == set(before)  # nothing created or deleted


def test_module_lists_the_second_location_by_the_same_rule(tmp_path):
    local = str(tmp_path / "local")
    second = tmp_path / "second" / "database"
    os.makedirs(local)
    damaged_set(local)
    second.mkdir(parents=True)
    for name in os.listdir(local):
        os.link(os.path.join(local, name), str(second / name))
    remote = dict(kind="database", environment="production", remote="offsite:%s" % second,
                  remote_config=dict(LOCAL_REMOTE, session_token=SECRET))
    on_disk = run_info(dict(kind="database", environment="production", path=local))
    at_remote = run_info(remote)
    assert at_remote["_rc"] == 0 and at_remote["changed"] is False, at_remote
    assert at_remote["location"] == remote["remote"]
    assert judged(at_remote) == judged(on_disk)
    assert [problem for unused, unused, problem in judged(at_remote)] == EXPECTED_PROBLEMS
    assert at_remote["latest"]["name"] == on_disk["latest"]["name"] and "path" not in at_remote["latest"]
    assert at_remote["latest"]["sha256"] == on_disk["latest"]["sha256"]
    assert run_info(remote, check_mode=True)["latest"]["name"] == on_disk["latest"]["name"]

    good = str(second / on_disk["latest"]["name"])
    os.unlink(good)  # a copy of its own, so the local set stays as it was
    with open(os.path.join(local, on_disk["latest"]["name"]), "rb") as handle:
        data = bytearray(handle.read())
    data[-1] ^= 1
    with open(good, "wb") as handle:
        handle.write(data)
    thorough = run_info(dict(remote, checksum=True))
    assert thorough["_rc"] == 0, thorough
    assert thorough["latest"]["name"] == on_disk["backups"][-1]["name"]
    assert "the remote copy is damaged" in dict((b["name"], b.get("problem")) for b in thorough["backups"])[on_disk["latest"]["name"]]


def test_bad_input_fails_with_one_line(tmp_path):
    both = run_info(dict(kind="database", environment="production", path=str(tmp_path), remote="offsite:x"))
    assert both["_rc"] == 1 and "mutually exclusive" in both["msg"]
    neither = run_info(dict(kind="database", environment="production"))
    assert neither["_rc"] == 1 and "backup_dir, remote" in neither["msg"]
    env = run_info(dict(kind="database", environment="prod_eu", path=str(tmp_path)))
    assert env["_rc"] == 1 and "\n" not in env["msg"] and "use letters, digits and '-' only" in env["msg"]
    config = run_info(dict(kind="volumes", environment="production", remote="offsite:x", rclone_config=str(tmp_path / "none.conf")))
    assert config["_rc"] == 1 and config["msg"].startswith("rclone_config %s does not exist" % (tmp_path / "none.conf"))


RECENT_DATABASE = """\
- name: Back up the database unless a recent complete backup exists
  hosts: backup_hosts
  gather_facts: false
  roles:
    - role: minimarket.backup.database_backup
      vars:
        database_backup_skip_if_recent: 60
        database_backup_prune: false
"""


def recent_damage(directory, kind, environment):
    """An old complete backup, and two newer ones inside the hour that only look like backups by their names."""
    now = utc_now()
    backups = BackupDir(directory, kind=kind, environment=environment)
    backups.complete(now - datetime.timedelta(hours=3))
    truncated = backups.complete(now - datetime.timedelta(minutes=20), b"x" * 500)
    with open(truncated, "r+b") as handle:
        handle.truncate(10)
    backups.incomplete(now - datetime.timedelta(minutes=10), how="orphan-metadata")


def complete_names(directory, kind, environment):
    return [b["name"] for b in _backup_info.local(directory, kind, environment, utc_now())["backups"] if b["complete"]]


def run_recent(tmp_path, playbook_text, directory, kind, **hostvars):
    playbook = tmp_path / "recent.yml"
    playbook.write_text(playbook_text)
    hosts = local_inventory(tmp_path, "testing", **hostvars)
    before = complete_names(directory, kind, "testing")
    proc = ansible("ansible-playbook", "-i", hosts, str(playbook))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return before, complete_names(directory, kind, "testing"), out


def test_database_backup_does_not_skip_for_a_damaged_recent_backup(pg_server, seeded_db, tmp_path):
    directory = str(tmp_path / "backups" / "database")
    os.makedirs(directory)
    recent_damage(directory, "database", "testing")
    untouched = snapshot(directory)
    db = dict(minimarket_db_tools_in_container=False, minimarket_db_name=seeded_db, minimarket_db_host=pg_server.host,
              minimarket_db_port=pg_server.port, minimarket_db_user=pg_server.user, minimarket_db_password=pg_server.password)

    before, after, out = run_recent(tmp_path, RECENT_DATABASE, directory, "database", **db)
    assert len(before) == 1 and len(after) == 2, out
    new = after[0]
    assert "wrote %s" % os.path.join(directory, new) in out
    assert dict((name, snapshot(directory)[name]) for name in untouched) == untouched

    # now a complete backup is minutes old: the next run skips the dump
    again_before, again_after, out = run_recent(tmp_path, RECENT_DATABASE, directory, "database", **db)
    assert again_before == again_after == after, out
    assert "wrote " not in out


RECENT_VOLUMES = RECENT_DATABASE.replace("database_backup", "volume_backup").replace("the database", "the volumes")


def test_volume_backup_does_not_skip_for_a_damaged_recent_backup(mm_docker, helper_image, tmp_path):
    volume = mm_docker.volume("data")
    with open(os.path.join(mm_docker.mountpoint(volume), "ventas.csv"), "wb") as handle:
        handle.write(b"id,total\n1,100\n")
    directory = str(tmp_path / "backups" / "volumes")
    os.makedirs(directory)
    recent_damage(directory, "volumes", "testing")

    before, after, out = run_recent(tmp_path, RECENT_VOLUMES, directory, "volumes", minimarket_volumes=[volume])
    assert len(before) == 1 and len(after) == 2, out
    assert "wrote %s" % os.path.join(directory, after[0]) in out

    again_before, again_after, out = run_recent(tmp_path, RECENT_VOLUMES, directory, "volumes", minimarket_volumes=[volume])
    assert again_before == again_after == after and "wrote " not in out, out


def newer_damaged(directory, archive, kind):
    """A pair a minute newer than ``archive`` whose metadata exists but whose archive was cut short."""
    when = parse_archive_name(os.path.basename(archive))[2] + datetime.timedelta(minutes=1)
    path = BackupDir(directory, kind=kind, environment="testing").complete(when, os.urandom(2000))
    with open(path, "r+b") as handle:
        handle.truncate(50)
    return path


def second_location(tmp_path, kind, src_dir):
    """Push ``src_dir``'s complete backups to an rclone local remote; returns the inventory's minimarket_offsite_* settings."""
    base = "offsite:%s" % (tmp_path / "second")
    pushed = run_offsite(dict(remote="%s/%s" % (base, kind), remote_config=LOCAL_REMOTE, kind=kind, environment="testing",
                              state="push", src_dir=src_dir))
    assert pushed["_rc"] == 0 and len(pushed["pushed"]) == 1, pushed
    return dict(minimarket_offsite_remote=base, minimarket_offsite_remote_config=LOCAL_REMOTE)


def test_database_restore_of_latest_fetches_the_good_copy_when_the_local_newest_is_damaged(
        pg_server, seeded_db, backup_dir, dropped_databases, tmp_path):
    before = pgcompare.snapshot(pg_server.dsn(seeded_db))
    dumped = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=backup_dir, environment="testing"))
    assert dumped["_rc"] == 0, dumped
    offsite = second_location(tmp_path, "database", backup_dir)
    local = str(tmp_path / "backups" / "database")
    os.makedirs(local)
    damaged = newer_damaged(local, dumped["archive"], "database")
    pg_server.execute("UPDATE productos SET nombre = 'damaged'", seeded_db)

    hosts = local_inventory(tmp_path, "testing", minimarket_db_tools_in_container=False,
                            minimarket_db_name=seeded_db, minimarket_db_host=pg_server.host, minimarket_db_port=pg_server.port,
                            minimarket_db_user=pg_server.user, minimarket_db_password=pg_server.password, **offsite)
    proc = ansible("ansible-playbook", "-i", hosts, "playbooks/restore_database.yml", "-e", "backup_file=latest", "-e", "confirm=yes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Fetch a backup from the second location" in out
    fetched = os.path.basename(dumped["archive"])
    assert files(local) == sorted([fetched, os.path.basename(dumped["metadata"]),
                                   os.path.basename(damaged), os.path.basename(metadata_path(damaged))])
    assert "src=latest skipped the newer backup %s: archive is 50 bytes but metadata records 2000" % os.path.basename(damaged) in out
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(seeded_db))) == []


def test_volume_restore_of_latest_fetches_the_good_copy_when_the_local_newest_is_damaged(
        mm_docker, helper_image, tmp_path):
    volume = mm_docker.volume("data")
    data = os.path.join(mm_docker.mountpoint(volume), "ventas.csv")
    with open(data, "wb") as handle:
        handle.write(b"id,total\n1,100\n")
    old_disk = str(tmp_path / "old-disk")
    archived = run_module(dict(state="archive", volumes=[volume], dest=old_disk, environment="testing"),
                          module=os.path.join(ROOT, "plugins", "modules", "docker_volume_archive.py"))
    assert archived["_rc"] == 0, archived
    offsite = second_location(tmp_path, "volumes", old_disk)
    local = str(tmp_path / "backups" / "volumes")
    os.makedirs(local)
    damaged = newer_damaged(local, archived["archive"], "volumes")
    with open(data, "wb") as handle:
        handle.write(b"damaged")

    hosts = local_inventory(tmp_path, "testing", minimarket_volumes=[volume], **offsite)
    proc = ansible("ansible-playbook", "-i", hosts, "playbooks/restore_volumes.yml", "-e", "backup_file=latest", "-e", "confirm=yes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Fetch a backup from the second location" in out
    assert os.path.basename(archived["archive"]) in files(local) and os.path.basename(damaged) in files(local)
    with open(data, "rb") as handle:
        assert handle.read() == b"id,total\n1,100\n"
