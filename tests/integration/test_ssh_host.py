"""The test world's shop host over SSH (tests/ssh_fixtures.py): deploy logs in with its key only, becomes
root through sudo, runs modules with Debian's /usr/bin/python3, and host_prepare makes it ready."""
import os

from test_playbooks import ansible


def adhoc(inventory, *args):
    proc = ansible("ansible", "-i", inventory, "backup_hosts", *args)
    return proc.returncode, proc.stdout + proc.stderr


def test_deploy_becomes_root_and_modules_run_with_the_system_python(ssh_host, tmp_path):
    inventory = ssh_host.write_inventory(str(tmp_path / "inv"), "production")
    rc, out = adhoc(inventory, "-m", "ansible.builtin.setup", "-a", "gather_subset=min")
    assert rc == 0, out
    assert '"executable": "/usr/bin/python3"' in out
    assert '"ansible_user_id": "root"' in out
    rc, out = adhoc(inventory, "-m", "ansible.builtin.command", "-a", "docker ps --quiet --filter name=nothing-by-this-name")
    assert rc == 0, out


def test_only_the_key_logs_in(ssh_host):
    assert ssh_host.ssh("id -un").stdout.strip() == "deploy"
    refused = ssh_host.ssh("id -un", key=ssh_host.stranger_key)
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr, refused.stderr
    shadow = open("/etc/shadow").read().splitlines()
    assert [line.split(":")[1] for line in shadow if line.startswith("deploy:")] == ["*"]


def test_host_prepare_finds_the_host_ready_and_changes_nothing(ssh_host, tmp_path):
    inventory = ssh_host.write_inventory(str(tmp_path / "inv"), "production")
    for mode in ([], ["--check"]):
        rc, out = adhoc(inventory, "-m", "ansible.builtin.include_role", "-a", "name=minimarket.backup.host_prepare", *mode)
        assert rc == 0, out
        assert '"__host_prepare_missing": []' in out
        assert "shop-production | SUCCESS | rc=0 >>\n20.10" in out  # the engine answered the docker client
        assert '"changed": true' not in out, out


def test_host_prepare_names_what_is_missing_when_it_may_not_install(ssh_host, tmp_path):
    inventory = ssh_host.write_inventory(str(tmp_path / "inv"), "production", group_vars={
        "host_prepare_install": False, "host_prepare_extra_packages": ["mm-no-such-package"]})
    rc, out = adhoc(inventory, "-m", "ansible.builtin.include_role", "-a", "name=minimarket.backup.host_prepare")
    assert rc == 2, out
    assert ("shop-production lacks mm-no-such-package: install them (apt-get install) or run with host_prepare_install=true"
            in out), out


def test_the_sudoers_drop_in_is_the_fixtures_own(ssh_host):
    assert os.stat(ssh_host.sudoers).st_mode & 0o777 == 0o440
    assert open(ssh_host.sudoers).read() == "deploy ALL=(ALL:ALL) NOPASSWD: ALL\n"
