"""The production path end to end: the collection artifact, installed, drives the shop host over SSH.

``ansible-galaxy collection build`` + ``install -p <tmp>``, then ``ansible-playbook minimarket.backup.<playbook>``
by FQCN from a directory that is not the checkout, with no ansible.cfg of ours, reaching the ``ssh_host``
fixture as ``deploy`` with become; the modules run with Debian's /usr/bin/python3. One stack (unique project,
Compose v2 container names ``<project>-<service>-1``, started from a copy of its compose file with a .env as a
shop's /opt/inventario-retail is) serves the steps in order: check mode on a fresh host, schedule, database
backup, volume backup, verify, scenario 1, scenario 2 -- each recovery proved equal with
molecule/shared/stack_snapshot.py, as the local scenarios do.
"""
import glob
import json
import os
import stat
import subprocess
import sys
import sysconfig
import uuid

import pytest

from testenv.pgserver import free_port
from testenv.sshhost import NOSUDO_USER
from testenv.stack import SERVICES, ComposeStack

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
SNAPSHOT = os.path.join(ROOT, "molecule", "shared", "stack_snapshot.py")
ENVIRONMENT = "production"
STATE = {}


@pytest.fixture(scope="module")
def collections_path(tmp_path_factory):
    """The built artifact installed into a temp collections path, plus the ansible package's bundled collections."""
    work = tmp_path_factory.mktemp("galaxy")
    built = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(work), ROOT],
                           cwd=str(work), capture_output=True, text=True, check=False, env=controller_environ(None))
    assert built.returncode == 0, built.stdout + built.stderr
    [tarball] = glob.glob(str(work / "minimarket-backup-*.tar.gz"))
    installed = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", tarball,
                                "-p", str(work / "collections")], cwd=str(work), capture_output=True, text=True,
                               check=False, env=controller_environ(None))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return "%s:%s" % (work / "collections", sysconfig.get_paths()["purelib"])


def controller_environ(collections, extra=None):
    """A controller's environment: no ANSIBLE_* of the checkout (so no ansible.cfg of ours), our collections path."""
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("ANSIBLE_", "MINIMARKET_", "MOLECULE_"))}
    environ.update(ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="false")
    if collections:
        environ["ANSIBLE_COLLECTIONS_PATH"] = collections
    environ.update(extra or {})
    return environ


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    stack = ComposeStack("mmtest-%s" % uuid.uuid4().hex[:8], free_port(), "pw-" + uuid.uuid4().hex[:12], seed_rows=500,
                         naming="v2", compose_dir=str(tmp_path_factory.mktemp("opt-inventario-retail")))
    try:
        yield stack.up()
    finally:
        stack.down()


@pytest.fixture(scope="module")
def controller(tmp_path_factory, ssh_host, shop, collections_path):
    """A controller's working directory with a production inventory for the SSH host and the test stack."""
    work = tmp_path_factory.mktemp("controller")
    backup_root = "/tmp/mm-ssh-backups-%s" % uuid.uuid4().hex[:8]
    installed = collections_path.split(":")[0] + "/ansible_collections/minimarket/backup"
    group_vars = dict(shop.inventory_vars(), minimarket_backup_root=backup_root,
                      minimarket_metrics_textfile_dir=str(work / "metrics"),
                      minimarket_project_dir=installed, minimarket_ansible_playbook=os.path.join(BIN, "ansible-playbook"),
                      minimarket_schedule_inventory=str(work / "inventories" / ENVIRONMENT), minimarket_vault_password_file="",
                      minimarket_secrets_file="")
    inventory = ssh_host.write_inventory(str(work / "inventories" / ENVIRONMENT), ENVIRONMENT, group_vars=group_vars)
    handle = Controller(str(work), inventory, collections_path, shop, backup_root, installed)
    handle.group_vars = group_vars
    try:
        yield handle
    finally:
        subprocess.run(["rm", "-rf", backup_root], check=False)


class Controller(object):
    def __init__(self, cwd, inventory, collections, stack, backup_root, installed):
        self.cwd = cwd
        self.inventory = inventory
        self.collections = collections
        self.stack = stack
        self.backup_root = backup_root
        self.installed = installed

    def play(self, playbook, *args, inventory=None, env=None):
        proc = subprocess.run(
            [os.path.join(BIN, "ansible-playbook"), "minimarket.backup.%s" % playbook, "-i", inventory or self.inventory]
            + list(args), cwd=self.cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900, check=False,
            env=controller_environ(self.collections, dict({"MINIMARKET_DB_PASSWORD": self.stack.password}, **(env or {}))),
        )
        return proc.returncode, proc.stdout + proc.stderr

    def snapshot(self, action, name):
        path = os.path.join(self.cwd, name)
        proc = subprocess.run([sys.executable, SNAPSHOT, action, path], capture_output=True, text=True, check=False,
                              env=dict(os.environ, MINIMARKET_PROJECT=self.stack.project))
        return proc.returncode, proc.stdout + proc.stderr

    def files(self, kind):
        directory = os.path.join(self.backup_root, kind)
        return sorted(name for name in os.listdir(directory) if not name.startswith(".")) if os.path.isdir(directory) else []

    def psql(self, sql):
        return docker("exec", self.stack.containers["postgres"], "psql", "-U", "postgres", "-d", "minimarket", "-tAc", sql)

    def running_services(self):
        out = docker("ps", "--filter", "label=com.docker.compose.project=%s" % self.stack.project,
                     "--format", '{{.Names}} {{.Label "com.docker.compose.service"}}')
        return sorted(tuple(line.split()) for line in out.splitlines())


def docker(*args):
    proc = subprocess.run(["docker"] + list(args), capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, "docker %s: %s" % (" ".join(args), proc.stderr)
    return proc.stdout.strip()


def test_the_playbooks_come_from_the_installed_artifact(controller):
    proc = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "list", "minimarket.backup"], cwd=controller.cwd,
                          capture_output=True, text=True, check=False, env=controller_environ(controller.collections))
    assert proc.returncode == 0, proc.stderr
    assert os.path.dirname(os.path.dirname(controller.installed)) in proc.stdout
    assert ROOT not in proc.stdout
    assert not os.path.exists(os.path.join(controller.cwd, "ansible.cfg"))
    assert not os.path.islink(controller.installed) and os.path.isfile(os.path.join(controller.installed, "MANIFEST.json"))


def test_containers_carry_compose_v2_names(controller):
    assert controller.running_services() == sorted(
        ("%s-%s-1" % (controller.stack.project, service), service) for service in SERVICES)


def test_check_mode_on_a_fresh_host_says_what_it_would_do_and_changes_nothing(controller):
    assert not os.path.exists(controller.backup_root)
    rc, out = controller.play("backup_database", "--check")
    assert rc == 0, out
    assert "would write %s/database/database_production_" % controller.backup_root in out
    assert "(%s/database does not exist yet: the run creates it)" % controller.backup_root in out
    rc, out = controller.play("backup_volumes", "--check")
    assert rc == 0, out
    assert "would write %s/volumes/volumes_production_" % controller.backup_root in out, out
    assert "(5 volumes; containers it would stop and restart: %s-" % controller.stack.project in out, out
    assert not os.path.exists(controller.backup_root)


def test_schedule_prepares_the_host_and_installs_the_jobs_over_ssh(controller):
    cron_file = "mmtest_%s" % uuid.uuid4().hex[:8]
    try:
        rc, out = controller.play("schedule", "-e", "backup_schedule_cron_file=%s" % cron_file)
        assert rc == 0, out
        assert "TASK [minimarket.backup.host_prepare : List the installed packages]" in out
        jobs = open("/etc/cron.d/%s" % cron_file).read()
        assert jobs.count("/usr/bin/flock --wait 7200 --conflict-exit-code 75") == 3, jobs
        assert "cd %s &&" % controller.installed in jobs
        assert "--inventory %s" % controller.inventory in jobs and "playbooks/backup_database.yml" in jobs
        assert stat.S_IMODE(os.stat(controller.backup_root).st_mode) == 0o700
    finally:
        rc, out = controller.play("schedule", "-e", "backup_schedule_cron_file=%s" % cron_file, "-e", "minimarket_schedule_mode=none")
        assert rc == 0, out
    assert not os.path.exists("/etc/cron.d/%s" % cron_file)


def test_compose_v1_names_work_the_same(controller, ssh_host, compose_stack, tmp_path):
    """The session stack keeps Compose v1 names (<project>_<service>_1): the same inventory finds it by its labels."""
    assert compose_stack.containers["postgres"] == "%s_postgres_1" % compose_stack.project
    root = str(tmp_path / "v1-backups")
    inventory = variant_inventory(controller, ssh_host, "compose-v1",
                                  group_vars=dict(compose_stack.inventory_vars(), minimarket_backup_root=root))
    rc, out = controller.play("backup_database", inventory=inventory, env={"MINIMARKET_DB_PASSWORD": compose_stack.password})
    assert rc == 0, out
    [metadata] = glob.glob(os.path.join(root, "database", "database_production_*_metadata.json"))
    assert json.load(open(metadata))["container"] == "%s_postgres_1" % compose_stack.project


def test_database_backup_over_ssh(controller):
    rc, out = controller.snapshot("save", "before.json")
    assert rc == 0, out
    rc, out = controller.play("backup_database")
    assert rc == 0, out
    archives = [name for name in controller.files("database") if name.endswith(".tar.gz")]
    assert len(archives) == 1, controller.files("database")
    path = os.path.join(controller.backup_root, "database", archives[0])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    metadata = json.load(open(path[: -len(".tar.gz")] + "_metadata.json"))
    assert metadata["environment"] == ENVIRONMENT
    assert metadata["container"] == "%s-postgres-1" % controller.stack.project
    assert controller.stack.password not in out


def test_volume_backup_over_ssh_restarts_every_container(controller):
    rc, out = controller.play("backup_volumes")
    assert rc == 0, out
    archives = [name for name in controller.files("volumes") if name.endswith(".tar.gz")]
    assert len(archives) == 1, controller.files("volumes")
    assert len(controller.running_services()) == len(SERVICES)


def test_verify_over_ssh(controller):
    rc, out = controller.play("verify_backups")
    assert rc == 0, out
    reports = [name for name in os.listdir(os.path.join(controller.backup_root, "reports")) if name.endswith(".json")]
    assert reports, os.listdir(os.path.join(controller.backup_root, "reports"))


def test_scenario_1_recover_database_over_ssh(controller):
    before = int(controller.psql("SELECT count(*) FROM ventas"))
    controller.psql("DELETE FROM venta_items WHERE venta_id IN (SELECT id FROM ventas ORDER BY id DESC LIMIT 7)")
    controller.psql("DELETE FROM ventas WHERE id IN (SELECT id FROM ventas ORDER BY id DESC LIMIT 7)")
    assert int(controller.psql("SELECT count(*) FROM ventas")) == before - 7
    rc, out = controller.play("recover_database", "-e", "confirm=yes")
    assert rc == 0, out
    rc, out = controller.snapshot("compare", "before.json")
    assert rc == 0 and "IDENTICAL" in out, out


def test_scenario_2_recover_full_over_ssh(controller):
    stack = controller.stack
    docker("exec", stack.containers["postgres"], "psql", "-U", "postgres", "-d", "postgres", "-c", "DROP DATABASE minimarket WITH (FORCE)")
    containers = docker("ps", "--all", "--quiet", "--filter", "label=com.docker.compose.project=%s" % stack.project).split()
    docker("rm", "--force", *containers)
    docker("volume", "rm", *stack.volumes.values())
    rc, out = controller.play("recover_full", "-e", "confirm=yes")
    assert rc == 0, out
    rc, out = controller.snapshot("compare", "before.json")
    assert rc == 0 and "IDENTICAL" in out, out
    assert controller.running_services() == sorted(("%s-%s-1" % (stack.project, service), service) for service in SERVICES)


def fatal_lines(out):
    return [line for line in out.splitlines() if line.startswith("fatal: [")]


def variant_inventory(controller, ssh_host, name, group_vars=None, host_vars=None, **connection):
    """The controller's inventory with one thing changed (written beside it, so nothing else differs)."""
    directory = os.path.join(controller.cwd, "inventories", name)
    variables = dict(controller.group_vars, **(group_vars or {}))
    return ssh_host.write_inventory(directory, ENVIRONMENT, host_vars=host_vars, group_vars=variables, **connection)


@pytest.mark.parametrize("case, expected", [
    ("unreachable", "UNREACHABLE! => {\"changed\": false, \"msg\": \"Task failed: Failed to connect to the host via ssh: ssh: connect to host 127.0.0.1 port"),
    ("wrong_key", "Permission denied (publickey)"),
    ("sudo_refused", "Missing sudo password"),
])
def test_connection_problems_fail_in_one_line_and_change_nothing(controller, ssh_host, case, expected):
    connection = {
        "unreachable": dict(host_vars={"ansible_port": free_port()}),
        "wrong_key": dict(key=ssh_host.stranger_key),
        "sudo_refused": dict(user=NOSUDO_USER),
    }[case]
    before = controller.files("database"), controller.files("volumes")
    rc, out = controller.play("backup_database", inventory=variant_inventory(controller, ssh_host, case, **connection))
    assert rc != 0, out
    assert expected in fatal_lines(out)[-1], out  # the run ends on the problem itself, once per failed step
    assert "One or more items failed" not in out and "All items completed" not in out, out
    assert (controller.files("database"), controller.files("volumes")) == before


def test_a_vaulted_password_without_the_vault_secret_fails_in_one_line(controller, ssh_host, tmp_path):
    secret = tmp_path / "vault-pass"
    secret.write_text("correct horse battery staple\n")
    encrypted = subprocess.run(
        [os.path.join(BIN, "ansible-vault"), "encrypt_string", "--vault-password-file", str(secret), "--name",
         "vault_minimarket_db_password", controller.stack.password],
        capture_output=True, text=True, check=True, env=controller_environ(controller.collections)).stdout
    inventory = variant_inventory(controller, ssh_host, "vaulted")
    with open(os.path.join(inventory, "group_vars", "backup_hosts", "vault.yml"), "w") as handle:
        handle.write("---\n" + encrypted)
    before = controller.files("database")
    rc, out = controller.play("backup_database", inventory=inventory)
    assert rc != 0, out
    assert "no vault secrets" in out, out
    assert controller.stack.password not in out
    assert controller.files("database") == before
    rc, out = controller.play("backup_database", "--vault-password-file", str(secret), inventory=inventory)
    assert rc == 0, out
    assert len(controller.files("database")) == len(before) + 2


def test_no_container_with_the_labels_names_both(controller, ssh_host):
    before = controller.files("database")
    inventory = variant_inventory(controller, ssh_host, "wrong-project", group_vars={"minimarket_compose_project": "mmtest-absent"})
    rc, out = controller.play("backup_database", inventory=inventory)
    assert rc == 2, out
    expected = ("no container with labels com.docker.compose.project=mmtest-absent and com.docker.compose.service=postgres "
                "on this host")
    assert [line for line in fatal_lines(out) if expected in line] and len(fatal_lines(out)) == 2, out
    assert controller.files("database") == before
