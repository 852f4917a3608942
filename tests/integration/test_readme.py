"""README's "Use it for your shop", run as written where a test can: the install and the Vault steps.

The ansible-playbook and ansible commands of the README are checked with the guide's (test_playbooks.py:
syntax-check against the named inventory, documented module options, the secrets of step 4).
"""
import os
import re
import shlex
import subprocess
import sys

from test_playbooks import ROOT, SECRETS_DIR, shell_commands

BIN = os.path.dirname(sys.executable)
SECTION = "## Use it for your shop"


def shop_commands():
    """The bash commands of README's shop section, in order."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    section = os.path.join(os.environ.get("TMPDIR", "/tmp"), "readme-shop-%d.md" % os.getpid())
    with open(section, "w", encoding="utf-8") as handle:
        handle.write(text[start:end])
    try:
        return [part.strip() for command in shell_commands(section) for part in command.split("&&")]
    finally:
        os.unlink(section)


def run(command, cwd, env):
    proc = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, "%s\n%s%s" % (command, proc.stdout, proc.stderr)
    return proc.stdout


def controller_env(home):
    """A controller's shell: the checkout's tools on PATH, a HOME of its own, none of this test run's Ansible settings."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MINIMARKET_")))
    env.update(HOME=str(home), PATH=BIN + os.pathsep + env.get("PATH", "/usr/bin:/bin"))
    return env


def test_the_collection_installs_from_the_artifact_and_from_git_as_the_readme_says(tmp_path):
    commands = shop_commands()
    install = [c for c in commands if c.startswith(("ansible-galaxy ", "ansible-doc "))]
    assert install == [
        "ansible-galaxy collection build --output-path build/",
        "ansible-galaxy collection install -p ~/.ansible/collections build/minimarket-backup-0.1.0.tar.gz",
        "ansible-doc minimarket.backup.pg_split_dump",
        "ansible-galaxy collection install -p ~/.ansible/collections -r collections/requirements.yml",
    ], install
    for way, steps in (("artifact", install[:3]), ("git", install[3:] + install[2:3])):
        checkout = tmp_path / way / "minimarket-backup"
        subprocess.run(["git", "clone", "--quiet", ROOT, str(checkout)], check=True)
        home = tmp_path / way / "home"
        home.mkdir()
        for command in steps:
            out = run(command, str(checkout), controller_env(home))
        assert "minimarket.backup.pg_split_dump" in out and "state" in out, out
        installed = home / ".ansible" / "collections" / "ansible_collections" / "minimarket" / "backup"
        assert (installed / "plugins" / "modules" / "pg_split_dump.py").is_file()
        assert (installed / "MANIFEST.json").is_file()


def test_the_vault_is_made_as_the_readme_says(tmp_path):
    etc = SECRETS_DIR.rstrip("/")
    commands = [c for c in shop_commands() if etc in c and not c.startswith("ansible-playbook ")]
    assert len(commands) == 3 and commands[-1].startswith("sudo ansible-vault create "), commands
    secrets_dir = str(tmp_path / "etc-minimarket-backup") + "/"  # where the commands make /etc/minimarket-backup
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nprintf 'vault_minimarket_db_password: \"from-the-readme\"\\n' > \"$1\"\n")
    editor.chmod(0o755)
    env = dict(controller_env(tmp_path), EDITOR=str(editor))
    for command in commands:
        assert command.startswith("sudo ")  # the test runs as root already
        command = command[len("sudo "):].replace(etc, secrets_dir.rstrip("/"))
        if command.startswith("ansible-vault create "):
            command = "script --quiet --return --command %s /dev/null" % shlex.quote(command)  # it opens the editor on a terminal only
        run(command, str(tmp_path), env)
    assert os.stat(secrets_dir).st_mode & 0o777 == 0o700
    assert os.stat(secrets_dir + "vault-password").st_mode & 0o777 == 0o600
    secrets = open(secrets_dir + "secrets.yml").read()
    assert secrets.startswith("$ANSIBLE_VAULT;1.1;AES256") and "from-the-readme" not in secrets
    out = run("ansible-vault view --vault-password-file %svault-password %ssecrets.yml" % (secrets_dir, secrets_dir), str(tmp_path), env)
    assert out == 'vault_minimarket_db_password: "from-the-readme"\n'
    # What step 4 tells to write is a variable the inventories read.
    assert re.search(r"\bvault_minimarket_db_password\b", open(os.path.join(
        ROOT, "inventories", "production", "group_vars", "backup_hosts", "main.yml")).read())
