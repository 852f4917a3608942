"""Second-location servers for the off-site tests: a private OpenSSH sftp server and a moto S3 server on loopback.

Each fixture starts its own server on a free port with all state in a temporary directory and stops it afterwards.
``sftp_server`` and ``s3_server`` both give an ``OffsiteServer``: ``remote`` (rclone path of a fresh directory),
``remote_config`` (the module's option), ``local_path(name)`` (where an uploaded file lands on disk, sftp only),
``stop()``/``start()``.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from testenv.pgserver import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RCLONE = shutil.which("rclone") or "rclone"
S3_ACCESS_KEY = "AKIAMINIMARKETTEST"
S3_SECRET_KEY = "s3cr3t-offsite-key-do-not-leak"

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {tmp}/host_ed25519
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {tmp}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
"""


def wait_for_port(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited with status %s before listening on %d" % (proc.returncode, port))
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("server did not listen on %d within %ds" % (port, timeout))


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)


class OffsiteServer(object):
    def __init__(self, tmp):
        self.tmp = tmp
        self.port = free_port()
        self.proc = None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None

    def rclone(self, *args, data=None):
        """rclone with this server's config in the child's environment (test set-up and inspection)."""
        env = dict(os.environ, AWS_CA_BUNDLE="")
        for key, value in self.remote_config.items():
            env["RCLONE_CONFIG_OFFSITE_%s" % key.upper()] = str(value)
        return subprocess.run([RCLONE] + list(args), env=env, input=data, capture_output=True, check=False)


class SftpServer(OffsiteServer):
    backend = "sftp"

    def __init__(self, tmp):
        super(SftpServer, self).__init__(tmp)
        self.store = os.path.join(tmp, "store")
        os.makedirs(self.store)
        keygen(os.path.join(tmp, "host_ed25519"))
        keygen(os.path.join(tmp, "client_ed25519"))
        keygen(os.path.join(tmp, "stranger_ed25519"))
        shutil.copy(os.path.join(tmp, "client_ed25519.pub"), os.path.join(tmp, "authorized_keys"))
        with open(os.path.join(tmp, "host_ed25519.pub")) as handle:
            host_key = handle.read().split()[:2]
        with open(os.path.join(tmp, "known_hosts"), "w") as handle:
            handle.write("[127.0.0.1]:%d %s\n" % (self.port, " ".join(host_key)))
        self.config = os.path.join(tmp, "sshd_config")
        with open(self.config, "w") as handle:
            handle.write(SSHD_CONFIG.format(port=self.port, tmp=tmp))
        self.prefix = "minimarket/%s/database" % uuid.uuid4().hex[:8]
        self.remote = "offsite:%s/%s" % (self.store, self.prefix)
        self.remote_config = dict(
            type="sftp", host="127.0.0.1", port=self.port, user="root",
            key_file=os.path.join(tmp, "client_ed25519"), known_hosts_file=os.path.join(tmp, "known_hosts"),
        )

    def start(self):
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", self.config],
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.tmp, "sshd.log"), "ab"))
        wait_for_port(self.port, self.proc)
        return self

    def local_path(self, name):
        return os.path.join(self.store, self.prefix, name)


class S3Server(OffsiteServer):
    backend = "s3"

    def __init__(self, tmp):
        super(S3Server, self).__init__(tmp)
        self.bucket = "mm-%s" % uuid.uuid4().hex[:8]
        self.remote = "offsite:%s/minimarket/production/database" % self.bucket
        self.remote_config = dict(
            type="s3", provider="Other", endpoint="http://127.0.0.1:%d" % self.port, access_key_id=S3_ACCESS_KEY,
            secret_access_key=S3_SECRET_KEY, region="us-east-1",
        )

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.tmp, "moto.log"), "ab"),
        )
        wait_for_port(self.port, self.proc)
        made = self.rclone("mkdir", "offsite:%s" % self.bucket)
        assert made.returncode == 0, made.stderr
        return self


def _serve(cls):
    tmp = tempfile.mkdtemp(prefix="mm-offsite-%s-" % cls.backend)
    server = cls(tmp)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def sftp_server():
    yield from _serve(SftpServer)


@pytest.fixture
def s3_server():
    yield from _serve(S3Server)


@pytest.fixture(params=["sftp", "s3"])
def offsite_server(request):
    yield from _serve(SftpServer if request.param == "sftp" else S3Server)
