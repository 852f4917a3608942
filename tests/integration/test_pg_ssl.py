"""ssl_mode, ca_cert, ssl_cert and ssl_key against a real PostgreSQL that accepts SSL connections only (certificates made
here with openssl).

verify-full with the CA that signed the server's certificate dumps and verifies; with another CA, or without SSL,
the module fails with one line and writes nothing. A role the server authenticates by client certificate dumps and
restores with ssl_cert/ssl_key and fails in one line without them. The settings travel to libpq in the environment,
never in argv.
"""
import os
import shutil
import subprocess

import pytest

from testenv.pgserver import PgServer
from tests.pg_fixtures import dest_files, run_module

pytest_plugins = ["tests.pg_fixtures"]

SERVER_EXTENSIONS = "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
CERT_USER = "mm_cert_backup"


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def make_ca(directory, name):
    key, cert = os.path.join(directory, name + ".key"), os.path.join(directory, name + ".crt")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
            "-subj", "/CN=" + name, "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign")
    return key, cert


@pytest.fixture(scope="module")
def ssl_server(tmp_path_factory):
    """A cluster whose pg_hba accepts TCP only over SSL, its certificate signed by a CA of its own; and another CA."""
    certs = str(tmp_path_factory.mktemp("pg-ssl"))
    ca_key, ca_cert = make_ca(certs, "mm-test-ca")
    unused, wrong_ca = make_ca(certs, "mm-other-ca")
    server = PgServer()
    try:
        server.init()
        key, csr = os.path.join(server.datadir, "server.key"), os.path.join(certs, "server.csr")
        cert, extensions = os.path.join(server.datadir, "server.crt"), os.path.join(certs, "server.ext")
        with open(extensions, "w", encoding="utf-8") as handle:
            handle.write(SERVER_EXTENSIONS)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
        openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
                "-days", "2", "-extfile", extensions)
        os.chmod(key, 0o600)
        client_ca = os.path.join(server.datadir, "client-ca.crt")
        shutil.copy(ca_cert, client_ca)
        owner = os.stat(server.datadir)
        for path in (key, cert, client_ca):
            os.chown(path, owner.st_uid, owner.st_gid)
        client_key, client_cert = os.path.join(certs, CERT_USER + ".key"), os.path.join(certs, CERT_USER + ".crt")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", client_key, "-out", os.path.join(certs, "client.csr"),
                "-subj", "/CN=" + CERT_USER)
        openssl("x509", "-req", "-in", os.path.join(certs, "client.csr"), "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
                "-out", client_cert, "-days", "2")
        os.chmod(client_key, 0o600)
        with open(os.path.join(server.datadir, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'client-ca.crt'\n")
        with open(os.path.join(server.datadir, "pg_hba.conf"), "w", encoding="utf-8") as hba:
            hba.write("local all all trust\nhostssl all %s 127.0.0.1/32 cert\nhostssl all all 127.0.0.1/32 scram-sha-256\n" % CERT_USER)
        server.start()
        server.execute("CREATE ROLE %s LOGIN SUPERUSER" % CERT_USER)
        server.execute("CREATE DATABASE ssl_tienda")
        server.execute("CREATE TABLE productos (id int PRIMARY KEY, nombre text);"
                       "INSERT INTO productos SELECT g, 'producto ' || g FROM generate_series(1, 50) g", "ssl_tienda")
        server.client_cert, server.client_key = client_cert, client_key
        yield server, ca_cert, wrong_ca
    finally:
        server.destroy()


def args(server, **extra):
    """The connection as a community.postgresql user writes it: login_host, port, login_user, login_db, ssl_rootcert."""
    result = dict(login_host="127.0.0.1", port=server.port, login_user=server.user, login_password=server.password,
                  bin_dir=server.bindir, login_db="ssl_tienda", environment="ssl")
    result.update(extra)
    return result


def test_verify_full_with_the_right_ca_dumps_and_verifies(ssl_server, backup_dir):
    server, ca_cert, unused = ssl_server
    dumped = run_module(args(server, state="dump", backup_dir=backup_dir, ssl_mode="verify-full", ca_cert=ca_cert))
    assert dumped["_rc"] == 0, dumped
    assert os.path.basename(dumped["archive"]).startswith("database_ssl_")
    verified = run_module(args(server, state="verify", src=dumped["archive"], ssl_mode="verify-full", ssl_rootcert=ca_cert,
                               critical_tables={"productos": 50}))
    assert verified["_rc"] == 0 and verified["problems"] == [], verified


def test_verify_full_with_another_ca_fails_in_one_line(ssl_server, backup_dir):
    server, unused, wrong_ca = ssl_server
    failed = run_module(args(server, state="dump", backup_dir=backup_dir, ssl_mode="verify-full", ca_cert=wrong_ca))
    assert failed["_rc"] == 1 and "\n" not in failed["msg"], failed
    assert "certificate verify failed" in failed["msg"]
    assert failed["msg"].endswith("-- check ssl_mode and ca_cert (the CA that signed the server's certificate)")
    assert dest_files(backup_dir) == []


def test_without_ssl_the_server_refuses(ssl_server, backup_dir):
    """The server takes SSL connections only, so the dump above did go over SSL."""
    server, ca_cert, unused = ssl_server
    refused = run_module(args(server, state="dump", backup_dir=backup_dir, ssl_mode="disable", ca_cert=ca_cert))
    assert refused["_rc"] == 1 and "\n" not in refused["msg"]
    assert "no encryption" in refused["msg"] and refused["msg"].endswith("-- the server takes SSL connections only: "
                                                                         "set ssl_mode (verify-full with ca_cert)")
    assert dest_files(backup_dir) == []


def test_a_role_authenticated_by_certificate_needs_ssl_cert_and_ssl_key(ssl_server, backup_dir):
    """pg_hba says cert for this role: no password at all, the client certificate (CN = the role) is the login."""
    server, ca_cert, unused = ssl_server
    cert_login = dict(login_user=CERT_USER, login_password="", ssl_mode="verify-full", ca_cert=ca_cert)
    refused = run_module(args(server, state="dump", backup_dir=backup_dir, **cert_login))
    assert refused["_rc"] == 1 and "\n" not in refused["msg"], refused
    assert "requires a valid client certificate" in refused["msg"]
    assert refused["msg"].endswith("-- the server wants a client certificate: set ssl_cert and ssl_key (a key file of mode 0600) "
                                   "for login_user")
    assert dest_files(backup_dir) == []
    with_cert = dict(cert_login, ssl_cert=server.client_cert, ssl_key=server.client_key)
    dumped = run_module(args(server, state="dump", backup_dir=backup_dir, **with_cert))
    assert dumped["_rc"] == 0, dumped
    assert dumped["tables"] == {"public.productos": 50}
    restored = run_module(args(server, state="restore", src=dumped["archive"], login_db="ssl_copia", restore_as="ssl_copia", **with_cert))
    assert restored["_rc"] == 0, restored
    assert server.execute("SELECT count(*), max(nombre) FROM productos", "ssl_copia") == [(50, "producto 9")]
