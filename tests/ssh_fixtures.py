"""The shop host over SSH (``testenv.sshhost.SshHost``), as pytest fixtures; loaded by tests/conftest.py.

``ssh_host`` (session): a private sshd on loopback with user ``deploy`` (sudo, key login only) and a
fresh ed25519 key pair. It gives ``host`` (= ``address``), ``port``, ``user``, ``key``, ``python`` (Debian's
``/usr/bin/python3``), ``host_vars(user=, key=, address=, become=)``, ``ssh(command, user=, key=)``
and ``write_inventory(directory, environment, host_vars=None, group_vars=None, **connection)``;
``stranger_key`` (authorized nowhere) and ``testenv.sshhost.NOSUDO_USER`` (key login, no sudo)
are the bad-input cases.
"""
import pytest

from testenv.sshhost import SshHost


@pytest.fixture(scope="session")
def ssh_host():
    with SshHost() as host:
        yield host
