"""The backup_offsite role run by ansible-playbook on localhost against a real sftp server (tiny inventory, no stack)."""
import json
import os

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _volume_archive
from testenv import pgcompare
from tests.integration.test_offsite import T0, files, offsite_args, remote_files
from tests.integration.test_offsite import run_module as run_offsite
from tests.integration.test_playbooks import ansible, local_inventory
from tests.pg_fixtures import conn_args, run_module
from tests.retention_fixtures import BackupDir

pytest_plugins = ["tests.offsite_fixtures", "tests.pg_fixtures", "tests.volume_fixtures"]

PLAYBOOK = """\
- name: Push to the second location, then fetch back into an empty directory
  hosts: backup_hosts
  gather_facts: false
  tasks:
    - name: Push and prune
      ansible.builtin.import_role:
        name: minimarket.backup.backup_offsite
    - name: Fetch the newest backup
      ansible.builtin.include_role:
        name: minimarket.backup.backup_offsite
      vars:
        backup_offsite_state: fetch
        backup_offsite_dir: "{{ fetch_dir }}"
    - name: Show where it went
      ansible.builtin.debug:
        msg: "FETCHED={{ backup_offsite_fetched.path }}"
"""


def test_role_pushes_prunes_and_fetches_back(sftp_server, tmp_path):
    base = sftp_server.remote.rsplit("/", 1)[0]
    local = tmp_path / "backups" / "database"
    local.mkdir(parents=True)
    backups = BackupDir(local)
    days = [0, 1, 2, 3, 4]
    pushed = [backups.complete(T0.replace(day=1 + day)) for day in days]
    playbook = tmp_path / "offsite.yml"
    playbook.write_text(PLAYBOOK)
    hosts = local_inventory(tmp_path, "production", minimarket_offsite_remote=base + "/", minimarket_offsite_remote_config=sftp_server.remote_config,
                            minimarket_offsite_retention={"days": 0, "keep_last": 2})
    fetch_dir = str(tmp_path / "fetched")
    proc = ansible("ansible-playbook", "-i", hosts, str(playbook), "-e", json.dumps({"fetch_dir": fetch_dir}))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # pushed all five, then the remote retention kept the newest two
    kept = [os.path.basename(p) for p in pushed[-2:]]
    assert sorted(n for n in remote_files(sftp_server) if not n.endswith("_metadata.json")) == kept
    assert len(files(str(local))) == 10  # the local copies are untouched
    newest = pushed[-1]
    assert "FETCHED=%s" % os.path.join(fetch_dir, os.path.basename(newest)) in out
    with open(newest, "rb") as a, open(os.path.join(fetch_dir, os.path.basename(newest)), "rb") as b:
        assert a.read() == b.read()

    again = ansible("ansible-playbook", "-i", hosts, str(playbook), "-e", json.dumps({"fetch_dir": fetch_dir}))
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout + again.stderr


VERIFY_PLAYBOOK = """\
- name: Check the second location
  hosts: backup_hosts
  gather_facts: false
  tasks:
    - name: Verify the remote copies
      ansible.builtin.include_role:
        name: minimarket.backup.backup_offsite
      vars:
        backup_offsite_state: verify
"""


def test_role_verify_reads_the_remote_back_and_names_damaged_and_missing_copies(sftp_server, tmp_path):
    base = sftp_server.remote.rsplit("/", 1)[0]
    local = tmp_path / "backups" / "database"
    local.mkdir(parents=True)
    backups = BackupDir(local)
    pushed = [os.path.basename(backups.complete(T0.replace(day=1 + day))) for day in range(3)]
    assert run_offsite(offsite_args(sftp_server, state="push", src_dir=str(local), retention_days=0, keep_last=5))["pushed"] == pushed[::-1]
    playbook = tmp_path / "verify.yml"
    playbook.write_text(VERIFY_PLAYBOOK)
    hosts = local_inventory(tmp_path, "production", minimarket_offsite_remote=base, minimarket_offsite_remote_config=sftp_server.remote_config,
                            minimarket_offsite_retention={"days": 0, "keep_last": 5})

    def verify():
        before = (remote_files(sftp_server), files(str(local)))
        proc = ansible("ansible-playbook", "-i", hosts, str(playbook))
        assert (remote_files(sftp_server), files(str(local))) == before  # verifying changes nothing
        return proc.returncode, proc.stdout + proc.stderr

    code, out = verify()
    assert code == 0 and "3 database backups, all present and read back" in out, out

    # same size, one byte flipped: only reading it back shows it
    damaged = sftp_server.local_path(pushed[0])
    with open(damaged, "r+b") as handle:
        handle.seek(5)
        byte = handle.read(1)
        handle.seek(5)
        handle.write(bytes([byte[0] ^ 1]))
    code, out = verify()
    assert code != 0, out
    assert "damaged: %s: sha256 " % pushed[0] in out and "the remote copy is damaged" in out and "missing: none" in out, out

    with open(damaged, "r+b") as handle:
        handle.seek(5)
        handle.write(byte)
    newer = os.path.basename(backups.complete(T0.replace(day=10)))
    code, out = verify()
    assert code != 0 and "damaged: none" in out and "missing: %s" % newer in out, out


def test_role_does_nothing_without_a_remote(tmp_path):
    playbook = tmp_path / "offsite.yml"
    playbook.write_text(PLAYBOOK.replace("FETCHED={{ backup_offsite_fetched.path }}", "FETCHED={{ backup_offsite_fetched is defined }}"))
    proc = ansible("ansible-playbook", "-i", local_inventory(tmp_path, "production"), str(playbook), "-e", json.dumps({"fetch_dir": str(tmp_path / "f")}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FETCHED=False" in proc.stdout and "changed=0" in proc.stdout


@pytest.mark.parametrize("requested", ["latest", "path"])
def test_restore_playbook_fetches_from_the_second_location_what_the_disk_lacks(
        requested, pg_server, seeded_db, backup_dir, dropped_databases, sftp_server, tmp_path):
    before = pgcompare.snapshot(pg_server.dsn(seeded_db))
    dumped = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=backup_dir, environment="testing"))
    assert dumped["_rc"] == 0, dumped
    pushed = run_offsite(offsite_args(sftp_server, state="push", environment="testing", src_dir=backup_dir))
    assert pushed["_rc"] == 0 and len(pushed["pushed"]) == 1, pushed
    pg_server.execute("DELETE FROM ventas WHERE id % 2 = 0 AND id NOT IN (SELECT venta_id FROM venta_items)", seeded_db)
    pg_server.execute("UPDATE productos SET nombre = 'damaged'", seeded_db)

    hosts = local_inventory(tmp_path, "testing", minimarket_db_tools_in_container=False,
                            minimarket_db_name=seeded_db, minimarket_db_host=pg_server.host,
                            minimarket_db_port=pg_server.port, minimarket_db_user=pg_server.user, minimarket_db_password=pg_server.password,
                            minimarket_offsite_remote=sftp_server.remote.rsplit("/", 1)[0],
                            minimarket_offsite_remote_config=sftp_server.remote_config)
    fetched = str(tmp_path / "backups" / "database")
    backup_file = "latest" if requested == "latest" else os.path.join(fetched, os.path.basename(dumped["archive"]))
    proc = ansible("ansible-playbook", "-i", hosts, "playbooks/restore_database.yml", "-e", "backup_file=" + backup_file,
                   "-e", "confirm=yes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Fetch a backup from the second location" in out
    assert files(fetched) == sorted([os.path.basename(dumped["archive"]), os.path.basename(dumped["metadata"])])
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(seeded_db))) == []


def test_volume_restore_fetches_a_missing_archive_path_from_the_second_location(engine, mm_docker, s3_server, tmp_path):
    volume = mm_docker.volume("data")
    mountpoint = mm_docker.mountpoint(volume)
    with open(os.path.join(mountpoint, "ventas.csv"), "wb") as handle:
        handle.write(b"id,total\n1,100\n")
    archived = _volume_archive.archive(engine, _volume_archive.ArchiveOptions([volume], str(tmp_path / "old-disk"), "testing", "gzip", mode="host"))
    base = s3_server.remote.rsplit("/", 1)[0]
    pushed = run_offsite(dict(offsite_args(s3_server, state="push", kind="volumes", environment="testing",
                                           src_dir=str(tmp_path / "old-disk")), remote=base + "/volumes"))
    assert pushed["_rc"] == 0 and len(pushed["pushed"]) == 1, pushed
    with open(os.path.join(mountpoint, "ventas.csv"), "wb") as handle:
        handle.write(b"damaged")

    hosts = local_inventory(tmp_path, "testing", minimarket_volumes=[volume],
                            minimarket_offsite_remote=base, minimarket_offsite_remote_config=s3_server.remote_config)
    backup_file = str(tmp_path / "backups" / "volumes" / os.path.basename(archived["archive"]))
    proc = ansible("ansible-playbook", "-i", hosts, "playbooks/restore_volumes.yml", "-e", "backup_file=" + backup_file,
                   "-e", "confirm=yes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert os.path.isfile(backup_file)
    with open(os.path.join(mountpoint, "ventas.csv"), "rb") as handle:
        assert handle.read() == b"id,total\n1,100\n"
