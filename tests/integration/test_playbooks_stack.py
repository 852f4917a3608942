"""The restore and verification playbooks on the real development stack (project inventario-retail).

The stack comes up through testenv/stack.sh; every test writes its backups into its own directory
(-e minimarket_backup_root=...), so the development backups are left alone.
"""
import json
import os
import subprocess

import pytest

from test_playbooks import ROOT, ansible

pytest_plugins = ["tests.offsite_fixtures"]

PROJECT = "inventario-retail"
POSTGRES = PROJECT + "_postgres_1"


def sh(*argv):
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, "%s: %s" % (" ".join(argv), proc.stdout + proc.stderr)
    return proc.stdout


def psql(sql, db="minimarket"):
    return sh("docker", "exec", POSTGRES, "psql", "-U", "postgres", "-d", db, "-tAc", sql).strip()


def play(playbook, root, *extra):
    proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/%s" % playbook,
                   "-e", "minimarket_backup_root=%s" % root, *extra)
    return proc.returncode, proc.stdout + proc.stderr


def newest(root, kind):
    directory = os.path.join(root, "database" if kind == "database" else "volumes")
    return os.path.join(directory, sorted(n for n in os.listdir(directory) if n.endswith(".tar.gz"))[-1])


def listing(directory):
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


@pytest.fixture(scope="module")
def stack():
    env = dict(os.environ, MINIMARKET_SEED_ROWS=os.environ.get("MINIMARKET_SEED_ROWS", "2000"))
    proc = subprocess.run([os.path.join(ROOT, "testenv", "stack.sh"), "up"], env=env, capture_output=True, text=True,
                          check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return PROJECT


def test_restore_database_from_an_explicit_file_keeps_the_previous_copy(stack, tmp_path):
    rc, out = play("backup_database.yml", tmp_path)
    assert rc == 0, out
    archive = newest(tmp_path, "database")
    before = psql("SELECT count(*) FROM ventas")
    psql("DELETE FROM venta_items WHERE venta_id IN (SELECT id FROM ventas ORDER BY id DESC LIMIT 5)")
    psql("DELETE FROM ventas WHERE id IN (SELECT id FROM ventas ORDER BY id DESC LIMIT 5)")
    assert int(psql("SELECT count(*) FROM ventas")) == int(before) - 5

    rc, out = play("restore_database.yml", tmp_path, "-e", "backup_file=%s" % archive, "-e", "confirm=yes")
    assert rc == 0, out
    assert "will overwrite: database minimarket (development)" in out
    assert psql("SELECT count(*) FROM ventas") == before
    kept = psql("SELECT datname FROM pg_database WHERE datname LIKE 'minimarket_pre_restore_%' ORDER BY datname DESC LIMIT 1",
                db="postgres")
    assert int(psql("SELECT count(*) FROM ventas", db=kept)) == int(before) - 5
    psql('DROP DATABASE "%s" WITH (FORCE)' % kept, db="postgres")


def test_restore_volumes_puts_one_volume_back_and_restarts_its_container(stack, tmp_path):
    rc, out = play("backup_volumes.yml", tmp_path)
    assert rc == 0, out
    mountpoint = json.loads(sh("docker", "volume", "inspect", PROJECT + "_grafana-data"))[0]["Mountpoint"]
    dashboard = os.path.join(mountpoint, "dashboards", "ventas.json")
    original = open(dashboard, "rb").read()
    os.unlink(dashboard)
    with open(os.path.join(mountpoint, "stray.txt"), "w") as handle:
        handle.write("not in the backup")

    rc, out = play("restore_volumes.yml", tmp_path, "-e", "backup_file=latest", "-e", "confirm=yes",
                   "-e", '{"volumes": ["%s_grafana-data"]}' % PROJECT)
    assert rc == 0, out
    mountpoint = json.loads(sh("docker", "volume", "inspect", PROJECT + "_grafana-data"))[0]["Mountpoint"]
    assert open(os.path.join(mountpoint, "dashboards", "ventas.json"), "rb").read() == original
    assert not os.path.exists(os.path.join(mountpoint, "stray.txt"))
    assert sh("docker", "inspect", "-f", "{{.State.Running}}", PROJECT + "_grafana_1").strip() == "true"


def test_verification_fails_loudly_on_a_corrupted_dump_and_leaves_the_live_database_alone(stack, tmp_path):
    rc, out = play("backup_database.yml", tmp_path)
    assert rc == 0, out
    rc, out = play("backup_volumes.yml", tmp_path)
    assert rc == 0, out
    rc, out = play("verify_backups.yml", tmp_path)
    assert rc == 0, out
    reports = sorted(os.listdir(os.path.join(tmp_path, "reports")))
    report = json.load(open(os.path.join(tmp_path, "reports", reports[-1])))
    assert report["ok"] is True or report["ok"] == "True"
    assert all(check["ok"] for check in report["database"]["checks"])
    assert oct(os.stat(os.path.join(tmp_path, "reports", reports[-1])).st_mode & 0o777) == "0o600"

    archive = newest(tmp_path, "database")
    with open(archive, "r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    live = psql("SELECT count(*) FROM ventas")
    rc, out = play("verify_backups.yml", tmp_path)
    assert rc == 2, out
    assert "failed=1" in out and "ignored=1" in out, out
    failure = [line for line in out.splitlines() if line.startswith("fatal:")]
    message = json.loads(failure[-1].split("=> ", 1)[1])["msg"]
    assert message.startswith("backup verification FAILED for development:")
    assert "corrupted" in message and os.path.basename(archive) in message
    assert "volumes: ok" in message
    reports = sorted(os.listdir(os.path.join(tmp_path, "reports")))
    assert len(reports) == 2
    assert json.load(open(os.path.join(tmp_path, "reports", reports[-1])))["ok"] in (False, "False")
    assert psql("SELECT count(*) FROM ventas") == live


def test_recover_full_after_the_disk_died_fetches_encrypted_backups_from_the_second_location(stack, sftp_server, tmp_path):
    key = tmp_path / "age-identity.txt"
    sh("age-keygen", "-o", str(key))
    recipient = sh("age-keygen", "-y", str(key)).strip()
    settings = json.dumps({
        "minimarket_offsite_remote": "offsite:%s/stacktest" % sftp_server.store,
        "minimarket_offsite_remote_config": sftp_server.remote_config,
        "minimarket_age_recipients": [recipient],
        "minimarket_age_identity_file": str(key),
    })
    root = tmp_path / "backups"
    rc, out = play("backup_volumes.yml", root, "-e", settings)
    assert rc == 0, out
    rc, out = play("backup_database.yml", root, "-e", settings)
    assert rc == 0, out
    remote = dict((kind, listing(os.path.join(sftp_server.store, "stacktest", kind))) for kind in ("database", "volumes"))
    for kind, names in remote.items():
        assert [n for n in names if n.endswith(".age")] and len(names) == 2, (kind, names)
    rc, out = play("verify_backups.yml", root, "-e", settings)
    assert rc == 0, out
    for kind in ("database", "volumes"):
        assert "1 %s backups, all present and read back" % kind in out, out
    before = psql("SELECT count(*) FROM ventas")

    sh("rm", "-rf", str(root))  # the disk died: the backups exist only at the second location
    psql("DELETE FROM venta_items WHERE venta_id IN (SELECT id FROM ventas ORDER BY id DESC LIMIT 7)")
    psql("DELETE FROM ventas WHERE id IN (SELECT id FROM ventas ORDER BY id DESC LIMIT 7)")

    rc, out = play("recover_full.yml", root, "-e", settings, "-e", "confirm=yes")
    assert rc == 0, out
    assert psql("SELECT count(*) FROM ventas") == before
    for kind, names in remote.items():
        fetched = listing(os.path.join(root, kind))
        assert fetched == names, (kind, fetched)
        for name in fetched:
            assert oct(os.stat(os.path.join(root, kind, name)).st_mode & 0o777) == "0o600"
