"""What AWX / Automation Controller does to run a job, done by hand: a private data directory run by ansible-runner.

AWX syncs the project (a git clone, then ``ansible-galaxy collection install -r collections/requirements.yml`` from the
project root into ``requirements_collections``), imports the inventory source with ``ansible-inventory --list --export``,
and for each job writes the private data directory: ``project/``, ``inventory/hosts`` (an executable that prints the
inventory as JSON), ``env/extravars``, ``env/envvars`` (credential injectors rendered with the credential's inputs),
``env/ssh_key`` (the Machine credential's key: runner loads it into an ssh-agent), ``env/passwords`` (answers to the
prompts its command line asks for, such as ``Vault password:`` for ``--ask-vault-pass``) and ``env/cmdline``. Then it
runs ``ansible-runner`` on it. Nothing here needs AWX itself.
"""
import json
import os
import shlex
import stat
import subprocess
import sys

import jinja2.sandbox
import yaml

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# AWX's answer to ansible-playbook's --ask-vault-pass prompt (awx/main/tasks/jobs.py, get_password_prompts).
VAULT_PROMPT = r"Vault password:\s*?$"


def _run(argv, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600, **kwargs)
    assert proc.returncode == 0, "%s failed (%d):\n%s%s" % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr)
    return proc


def bare_env(**extra):
    """The environment of an AWX task: none of this checkout's settings (no ANSIBLE_CONFIG, no .collections)."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MINIMARKET_")))
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env.update(extra)
    return env


def render_injectors(credential_type, inputs):
    """A custom credential type's ``env`` injectors rendered with the credential's inputs, as AWX renders them."""
    fields = [field["id"] for field in credential_type["inputs"]["fields"]]
    missing = [name for name in credential_type["inputs"].get("required", []) if name not in inputs]
    assert not missing, "credential lacks required inputs %s" % missing
    assert set(inputs) <= set(fields), "credential has inputs %s that its type does not define" % sorted(set(inputs) - set(fields))
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    return dict((name, env.from_string(template).render(**inputs))
                for name, template in credential_type["injectors"].get("env", {}).items())


class AwxJob(object):
    """One job's private data directory under ``base``; ``sync()`` first, then ``inventory()``, ``credentials``, ``run()``."""

    def __init__(self, base, source=ROOT):
        self.base = str(base)
        self.source = source
        self.pdd = os.path.join(self.base, "pdd")
        self.project = os.path.join(self.pdd, "project")
        self.collections = os.path.join(self.pdd, "requirements_collections")
        self.envvars = {}
        self.passwords = {}
        self.cmdline = []

    def sync(self):
        """The project update: a fresh clone of the repository at HEAD, then the project's collection requirements."""
        os.makedirs(os.path.join(self.pdd, "env"), mode=0o700)
        _run(["git", "clone", "--quiet", self.source, self.project], env=bare_env())
        _run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-r", "collections/requirements.yml",
              "--collections-path", self.collections], cwd=self.project, env=bare_env())
        return self

    def commit_to_project(self, relpath, content, message):
        """What a shop commits to its fork of the project (e.g. its Vault-encrypted secrets)."""
        path = os.path.join(self.project, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(content)
        git = ["git", "-C", self.project, "-c", "user.name=shop", "-c", "user.email=shop@example.invalid"]
        _run(git + ["add", relpath], env=bare_env())
        _run(git + ["commit", "--quiet", "-m", message], env=bare_env())

    def imported_inventory(self, source):
        """What AWX's inventory sync stores for an inventory source of the project (templates kept as text)."""
        proc = _run([os.path.join(BIN, "ansible-inventory"), "-i", source, "--list", "--export"], cwd=self.project,
                    env=bare_env(ANSIBLE_INVENTORY_UNPARSED_WARNING="True"))
        return json.loads(proc.stdout), proc.stderr

    def inventory(self, data):
        """inventory/hosts as AWX writes it: an executable that prints the inventory's JSON."""
        directory = os.path.join(self.pdd, "inventory")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "hosts")
        with open(path, "w") as handle:
            handle.write("#! /usr/bin/env python3\n# -*- coding: utf-8 -*-\nprint(%r)\n" % json.dumps(data))
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IXUSR)

    def machine_credential(self, username, key_file, become=True):
        """The Machine credential: its key goes to env/ssh_key; its user and become to the command line."""
        with open(key_file) as handle:
            self._write("ssh_key", handle.read())
        self.cmdline += ["-u", username] + (["--become"] if become else [])

    def vault_credential(self, password):
        self.passwords[VAULT_PROMPT] = password
        self.cmdline.append("--ask-vault-pass")

    def custom_credential(self, credential_type, inputs):
        self.envvars.update(render_injectors(credential_type, inputs))

    def _write(self, name, content, mode=0o600):
        path = os.path.join(self.pdd, "env", name)
        with open(path, "w") as handle:
            handle.write(content)
        os.chmod(path, mode)
        return path

    def run(self, playbook, extravars, ident):
        """ansible-runner on the private data directory; returns (exit status, the job's whole output)."""
        control_dir = os.path.join(self.pdd, "cp")
        os.makedirs(control_dir, mode=0o700, exist_ok=True)
        envvars = dict(self.envvars, ANSIBLE_SSH_CONTROL_PATH_DIR=control_dir, ANSIBLE_RETRY_FILES_ENABLED="False",
                       ANSIBLE_COLLECTIONS_PATH=self.collections, ANSIBLE_NOCOLOR="1")
        self._write("envvars", yaml.safe_dump(envvars))
        self._write("extravars", yaml.safe_dump(extravars))
        self._write("passwords", yaml.safe_dump(self.passwords))
        self._write("cmdline", " ".join(shlex.quote(arg) for arg in self.cmdline))
        self._write("settings", yaml.safe_dump({"pexpect_timeout": 10, "suppress_ansible_output": False}))
        proc = subprocess.run([os.path.join(BIN, "ansible-runner"), "run", self.pdd, "--playbook", playbook, "--ident", ident],
                              cwd=self.base, env=bare_env(), capture_output=True, text=True, check=False, timeout=1200)
        return proc.returncode, proc.stdout + proc.stderr

    def output(self, ident):
        """What AWX keeps of a job and shows its users: the events ansible-runner recorded and the stdout built from them.

        (Runner's other artifacts, such as ``command`` with the job's environment, live only as long as the private data
        directory; AWX stores the environment with its secret values redacted.)
        """
        directory = os.path.join(self.pdd, "artifacts", ident)
        events = os.path.join(directory, "job_events")
        paths = [os.path.join(directory, "stdout")] + [os.path.join(events, name) for name in sorted(os.listdir(events))]
        text = []
        for path in paths:
            with open(path, errors="replace") as handle:
                text.append(handle.read())
        return "\n".join(text)
