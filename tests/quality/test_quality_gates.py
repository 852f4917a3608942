"""The collection's quality gates run as tests, so one pytest summary speaks for all of `make test`."""

import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "plugins", "modules")) if name.endswith(".py"))


def run(args, **kwargs):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env.update(kwargs.pop("env", {}))
    return subprocess.run(args, cwd=kwargs.pop("cwd", ROOT), env=env, capture_output=True, text=True, check=False, **kwargs)


def assert_ok(proc):
    assert proc.returncode == 0, "exit %d\n--- stdout\n%s\n--- stderr\n%s" % (proc.returncode, proc.stdout[-20000:], proc.stderr[-5000:])


def test_ansible_test_sanity_passes_with_no_ignore_file():
    assert not os.path.exists(os.path.join(ROOT, "tests", "sanity")), "ignore files are not allowed: fix the code instead"
    proc = run(["bash", "scripts/sanity.sh"])
    assert_ok(proc)
    assert "Running sanity test \"validate-modules\"" in proc.stdout


def test_ansible_lint_production_profile_passes():
    proc = run([os.path.join(BIN, "ansible-lint"), "--profile", "production", "--nocolor"])
    assert_ok(proc)


@pytest.mark.parametrize("module", MODULES)
def test_fqcn_resolves_from_a_plain_checkout(module):
    proc = run([os.path.join(BIN, "ansible-doc"), "--json", "minimarket.backup." + module])
    assert_ok(proc)
    assert '"module": "%s"' % module in proc.stdout


def test_collection_builds_and_installs(tmp_path):
    proc = run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path), ROOT])
    assert_ok(proc)
    tarball = tmp_path / "minimarket-backup-0.1.0.tar.gz"
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert "plugins/modules/pg_split_dump.py" in names
    assert not [n for n in names if n.startswith((".venv", ".collections", ".git/"))]
    # A bare configuration: the checkout's ansible.cfg would find the collection through .collections.
    install_dir = tmp_path / "installed"
    bare_config = tmp_path / "ansible.cfg"
    bare_config.write_text("[defaults]\n")
    elsewhere = {"ANSIBLE_CONFIG": str(bare_config), "ANSIBLE_COLLECTIONS_PATH": str(install_dir)}
    proc = run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", "-p", str(install_dir), str(tarball)],
               cwd=str(tmp_path), env=elsewhere)
    assert_ok(proc)
    proc = run([os.path.join(BIN, "ansible-doc"), "-t", "module", "--list", "minimarket.backup"], cwd=str(tmp_path), env=elsewhere)
    assert_ok(proc)
    for module in MODULES:
        assert "minimarket.backup." + module in proc.stdout
