"""A shop host reached over SSH, the way production runs: a private sshd on loopback, user ``deploy``
with sudo, key login only.

The managed host is this same machine (it has the Docker engine), so ``become`` gives the modules
the engine, and ``ansible_python_interpreter`` is Debian's ``/usr/bin/python3``: nothing of ours
(no venv, no checkout) is on the host's side. Everything the instance owns lives in a temp dir
(sshd config, host key, client keys, authorized keys, known_hosts) plus one sudoers.d drop-in of
its own, so several instances (parallel test runs) never share state. Users are created if
missing and kept (they are harmless without the drop-in and the keys).

``NOSUDO_USER`` logs in with the same key but has no sudo rights: the "sudo refused" case.
"""
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import yaml

from testenv.pgserver import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SSHD = "/usr/sbin/sshd"
SYSTEM_PYTHON = "/usr/bin/python3"
DEPLOY_USER = "deploy"
NOSUDO_USER = "mmnosudo"
SUDOERS_DIR = "/etc/sudoers.d"

SSHD_CONFIG = """\
Port {port}
ListenAddress {address}
HostKey {tmp}/host_ed25519
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys/%u
AllowUsers {users}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
"""


class SshHostError(RuntimeError):
    pass


def _run(argv, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise SshHostError("%s failed (%s): %s" % (" ".join(argv), proc.returncode, (proc.stderr or proc.stdout).strip()))
    return proc


def keygen(path):
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", os.path.basename(path), "-f", path])
    return path


def ensure_user(name):
    """Create ``name`` (home, bash) with no usable password; unlock a ``!``-locked one for key login.

    sshd without PAM refuses even key logins to an account whose password field starts with ``!``;
    ``*`` means "no password" without "locked". Another run creating the user at the same time is fine.
    """
    try:
        pwd.getpwnam(name)
    except KeyError:
        proc = subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", name],
                              capture_output=True, text=True, check=False)
        if proc.returncode not in (0, 9):  # 9: created meanwhile by a parallel run
            raise SshHostError("useradd %s failed: %s" % (name, proc.stderr.strip()))
    field = _run(["getent", "shadow", name]).stdout.split(":")[1]
    if field.startswith("!"):
        _run(["usermod", "--password", "*", name])
    return pwd.getpwnam(name)


def wait_for_port(address, port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SshHostError("sshd exited with status %s before listening on %s:%d" % (proc.returncode, address, port))
        with socket.socket() as sock:
            if sock.connect_ex((address, port)) == 0:
                return
        time.sleep(0.1)
    raise SshHostError("sshd did not listen on %s:%d within %ds" % (address, port, timeout))


class SshHost(object):
    """One private sshd; ``start()``/``stop()``, or use it as a context manager."""

    def __init__(self, address="127.0.0.1"):
        self.address = address
        self.port = free_port()
        self.user = DEPLOY_USER
        self.python = SYSTEM_PYTHON
        self.tmp = None
        self.proc = None
        self.sudoers = os.path.join(SUDOERS_DIR, "mmtest-%s" % uuid.uuid4().hex[:8])

    # -- paths ------------------------------------------------------------------------------------
    @property
    def host(self):
        """The address an inventory's ``ansible_host`` names."""
        return self.address

    @property
    def key(self):
        """The deploy user's private key (authorized for ``deploy`` and ``NOSUDO_USER``)."""
        return os.path.join(self.tmp, "id_ed25519")

    @property
    def stranger_key(self):
        """A key no user authorizes: the "wrong SSH key" case."""
        return os.path.join(self.tmp, "stranger_ed25519")

    @property
    def known_hosts(self):
        return os.path.join(self.tmp, "known_hosts")

    # -- life cycle -------------------------------------------------------------------------------
    def start(self):
        if shutil.which("sudo") is None or not os.access(SSHD, os.X_OK):
            raise SshHostError("sudo and openssh-server are needed for the SSH host: run scripts/bootstrap-host.sh")
        self.tmp = tempfile.mkdtemp(prefix="mm-sshhost-")
        os.chmod(self.tmp, 0o755)  # sshd reads authorized keys as the user
        for user in (DEPLOY_USER, NOSUDO_USER):
            ensure_user(user)
        keygen(os.path.join(self.tmp, "host_ed25519"))
        keygen(self.key)
        keygen(self.stranger_key)
        keys_dir = os.path.join(self.tmp, "authorized_keys")
        os.mkdir(keys_dir, 0o755)
        for user in (DEPLOY_USER, NOSUDO_USER):
            shutil.copy(self.key + ".pub", os.path.join(keys_dir, user))
            os.chmod(os.path.join(keys_dir, user), 0o644)
        with open(os.path.join(self.tmp, "host_ed25519.pub")) as handle:
            host_key = " ".join(handle.read().split()[:2])
        with open(self.known_hosts, "w") as handle:
            handle.write("[%s]:%d %s\n" % (self.address, self.port, host_key))
        self._write_sudoers()
        config = os.path.join(self.tmp, "sshd_config")
        with open(config, "w") as handle:
            handle.write(SSHD_CONFIG.format(port=self.port, address=self.address, tmp=self.tmp,
                                            users=" ".join((DEPLOY_USER, NOSUDO_USER))))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        _run([SSHD, "-t", "-f", config])
        with open(os.path.join(self.tmp, "sshd.log"), "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdout=subprocess.DEVNULL, stderr=log)
        wait_for_port(self.address, self.port, self.proc)
        return self

    def _write_sudoers(self):
        """``deploy`` may become root without a password (what ``become: true`` needs); checked by visudo first."""
        staged = os.path.join(self.tmp, "sudoers")
        with open(staged, "w") as handle:
            handle.write("%s ALL=(ALL:ALL) NOPASSWD: ALL\n" % DEPLOY_USER)
        _run(["visudo", "-c", "-q", "-f", staged])
        os.chmod(staged, 0o440)
        shutil.copy(staged, self.sudoers + ".tmp")  # sudo skips names with a dot: never read half-written
        os.rename(self.sudoers + ".tmp", self.sudoers)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None
        if os.path.exists(self.sudoers):
            os.unlink(self.sudoers)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- what clients need ------------------------------------------------------------------------
    def ssh_args(self, key=None):
        """Client options: this host's known_hosts only, the given key only.

        A key other than the deploy key also gets no connection sharing, so it never rides on a
        master connection that the right key opened.
        """
        args = ["-o", "UserKnownHostsFile=%s" % self.known_hosts, "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
        if key not in (None, self.key):
            args += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        return args

    def ssh(self, command, user=DEPLOY_USER, key=None):
        """Run ``command`` (a shell string) on the host as ``user`` through sshd."""
        argv = ["ssh", "-p", str(self.port), "-i", key or self.key] + self.ssh_args(key) + \
            ["%s@%s" % (user, self.address), command]
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)

    def host_vars(self, user=DEPLOY_USER, key=None, address=None, become=True):
        """The connection variables of an inventory host for this sshd."""
        return {
            "ansible_host": address or self.address,
            "ansible_port": self.port,
            "ansible_user": user,
            "ansible_ssh_private_key_file": key or self.key,
            "ansible_ssh_common_args": " ".join(self.ssh_args(key)),
            "ansible_python_interpreter": self.python,
            "ansible_become": become,
        }

    def write_inventory(self, directory, environment, host_vars=None, group_vars=None, **connection):
        """Write an inventory for ``environment`` that reaches the shop host through this sshd.

        The environment's ``group_vars`` are copied from ``inventories/<environment>`` (its hosts.yml
        is not: the one written here names this host, with ``host_vars`` on top of the connection
        variables). ``group_vars`` land in ``group_vars/backup_hosts/zz-test.yml``, which loads after
        the environment's own files and so overrides them. ``connection`` goes to ``host_vars()``.
        Returns the inventory directory.
        """
        source = os.path.join(REPO, "inventories", environment)
        if not os.path.isdir(source):
            raise SshHostError("no inventory for environment %r under %s" % (environment, os.path.dirname(source)))
        os.makedirs(directory, exist_ok=True)
        shutil.copytree(os.path.join(source, "group_vars"), os.path.join(directory, "group_vars"), dirs_exist_ok=True)
        variables = self.host_vars(**connection)
        variables.update(host_vars or {})
        hosts = {"backup_hosts": {"hosts": {"shop-%s" % environment: variables}}}
        with open(os.path.join(directory, "hosts.yml"), "w") as handle:
            handle.write("---\n")
            yaml.safe_dump(hosts, handle, default_flow_style=False, sort_keys=True)
        if group_vars:
            with open(os.path.join(directory, "group_vars", "backup_hosts", "zz-test.yml"), "w") as handle:
                handle.write("---\n")
                yaml.safe_dump(group_vars, handle, default_flow_style=False, sort_keys=True)
        return directory
