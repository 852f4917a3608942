"""AWX's way of running jobs, end to end: ansible-runner on a private data directory built from a fresh clone.

The project is a git clone of this repository at HEAD whose collection requirements install the collection from the
project itself (no Galaxy, no manual step); the inventory is what AWX's sync imports from ``inventories/staging``,
with the shop's host (the SSH host of the test world, reached as ``deploy`` with become and Debian's python3) and the
test stack's names; the SSH key comes from a Machine credential, the database password from the custom credential type
kept in ``awx/credential_types/``, and the Vault password answers ``--ask-vault-pass`` for the shop's encrypted
secrets committed to its fork. Backup, then scenario 1: the dump is complete and the recovered data equal.
"""
import json
import os
import subprocess
import uuid

import psycopg
import pytest
import yaml

from testenv import pgcompare
from tests.awx_job import BIN, ROOT, AwxJob, bare_env
from tests.integration import test_backup_report

CREDENTIAL_TYPE = os.path.join(ROOT, "awx", "credential_types", "minimarket_database.yml")
VAULT_PASSWORD = "vault-" + uuid.uuid4().hex
receiver = test_backup_report.receiver  # the webhook receiver fixture: the job's success notification lands there


def encrypted(plain, tmp_path):
    """ansible-vault encrypt of ``plain`` with VAULT_PASSWORD (the shop does this once, on its workstation)."""
    password_file = tmp_path / "vault-password"
    password_file.write_text(VAULT_PASSWORD)
    source = tmp_path / "secrets.yml"
    source.write_text(plain)
    subprocess.run([os.path.join(BIN, "ansible-vault"), "encrypt", "--vault-password-file", str(password_file), str(source)],
                   check=True, capture_output=True, env=bare_env())
    password_file.unlink()
    return source.read_text()


def materialized_compose_file(stack, path):
    """The test stack's compose file with its names resolved, so compose run over SSH finds this project, not another."""
    path.write_text(stack.compose("config").stdout)
    return str(path)


def psql(stack, sql, dbname="minimarket"):
    with psycopg.connect(stack.conninfo(dbname), autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def awx_job(tmp_path, ssh_host, compose_stack, receiver):
    """A job's private data directory against the stack on the SSH host, with every credential AWX would give."""
    hook = receiver()
    job = AwxJob(tmp_path).sync()
    job.commit_to_project("playbooks/group_vars/backup_hosts/secrets.yml",
                          encrypted(yaml.safe_dump({"vault_minimarket_notify_webhook_url": hook.url}), tmp_path),
                          "shop: Vault-encrypted secrets of the job")
    imported, warnings = job.imported_inventory("inventories/staging")
    assert "WARNING" not in warnings, warnings  # AWX's inventory sync reads no Vault file and no example
    imported["_meta"]["hostvars"] = {"shop-host": {
        "ansible_host": ssh_host.address, "ansible_port": ssh_host.port,
        "ansible_python_interpreter": ssh_host.python,
        "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o BatchMode=yes" % ssh_host.known_hosts,
        "minimarket_backup_root": str(tmp_path / "backups"),
        "minimarket_compose_project": compose_stack.project,
        "minimarket_compose_file": materialized_compose_file(compose_stack, tmp_path / "compose.yml"),
        # The tools run in the postgres container (found by its compose labels) over TCP: scram, so the job needs
        # the password its credential injects.
        "minimarket_db_host": "127.0.0.1",
        "minimarket_volumes": sorted(compose_stack.volumes.values()),
        "minimarket_metrics_enabled": False,
        "minimarket_notify_on_success": True,
    }}
    imported["backup_hosts"]["hosts"] = ["shop-host"]
    job.inventory(imported)
    job.machine_credential(ssh_host.user, ssh_host.key)
    job.vault_credential(VAULT_PASSWORD)
    with open(CREDENTIAL_TYPE) as handle:
        job.custom_credential(yaml.safe_load(handle), {"db_password": compose_stack.password})
    job.hook = hook
    yield job
    for (name,) in psql(compose_stack, "SELECT datname FROM pg_database WHERE datname LIKE 'minimarket\\_pre\\_restore\\_%'",
                        "postgres"):
        psql(compose_stack, 'DROP DATABASE "%s" WITH (FORCE)' % name, "postgres")


def test_awx_job_backs_up_and_recovers_the_database_over_ssh(awx_job, compose_stack, tmp_path):
    secrets = (compose_stack.password, VAULT_PASSWORD, "s3cr3t-hook-token")
    before = pgcompare.snapshot(compose_stack.conninfo())

    rc, out = awx_job.run("playbooks/backup_database.yml", {}, "backup")
    assert rc == 0, out
    assert "shop-host" in out and "failed=0" in out
    dumps = tmp_path / "backups" / "database"
    archives = sorted(name for name in os.listdir(dumps) if name.endswith(".tar.gz"))
    assert len(archives) == 1 and archives[0].startswith("database_staging_"), archives
    archive = dumps / archives[0]
    metadata = json.loads((dumps / archives[0].replace(".tar.gz", "_metadata.json")).read_text())
    # Complete: the metadata vouches for these bytes, and for every table's rows as they were.
    assert metadata["size"] == archive.stat().st_size
    assert metadata["archive"] == archives[0] and metadata["environment"] == "staging"
    assert archive.stat().st_mode & 0o777 == 0o600
    live = pgcompare.row_counts(compose_stack.conninfo())
    assert {name[len("public."):] if name.startswith("public.") else name: rows for name, rows in metadata["tables"].items()} == live
    # The secret the Vault credential opened was used: the run's success went to the webhook it names.
    assert [body["status"] for _path, _type, body in awx_job.hook.received] == ["success"]

    psql(compose_stack, "DELETE FROM venta_items WHERE venta_id IN (SELECT id FROM ventas ORDER BY id DESC LIMIT 7)")
    psql(compose_stack, "DELETE FROM ventas WHERE id IN (SELECT id FROM ventas ORDER BY id DESC LIMIT 7)")
    psql(compose_stack, "UPDATE productos SET precio = precio + 1")
    assert pgcompare.diff(before, pgcompare.snapshot(compose_stack.conninfo()))

    rc, out = awx_job.run("playbooks/recover_database.yml", {"backup_file": "latest", "confirm": "yes"}, "recover")
    assert rc == 0, out
    assert "from backup %s (taken" % archive in out
    assert pgcompare.diff(before, pgcompare.snapshot(compose_stack.conninfo())) == []
    running = subprocess.run(["docker", "inspect", "--format", "{{.State.Running}}", compose_stack.containers["agente_deposito"]],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert running == "true"

    kept = awx_job.output("backup") + awx_job.output("recover")
    assert "from backup %s (taken" % archive in kept  # the events hold what the job said
    for secret in secrets:
        assert secret not in kept and secret not in out, "a secret reached the job's output or events"


def test_a_wrong_vault_password_stops_the_job_before_it_touches_the_host(awx_job, tmp_path):
    awx_job.passwords = {key: "not-the-password" for key in awx_job.passwords}
    rc, out = awx_job.run("playbooks/backup_database.yml", {}, "wrong-vault")
    assert rc != 0, out
    assert "Decryption failed" in out, out
    assert not (tmp_path / "backups").exists()
