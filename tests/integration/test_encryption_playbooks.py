"""Encryption through the playbooks as an operator runs them: inventory variables reach the roles."""
import json
import os

from test_playbooks import ansible

from testenv import pgcompare
from tests.age_keys import make_key


def run(playbook, tmp_path, db_vars, *extra, password):
    proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/%s" % playbook,
                   "-e", "minimarket_backup_root=%s" % (tmp_path / "root"), "-e", "minimarket_metrics_enabled=false",
                   "-e", json.dumps(db_vars), *extra, env={"MINIMARKET_DB_PASSWORD": password})
    return proc.returncode, proc.stdout + proc.stderr


def test_backup_and_restore_playbooks_encrypt_and_need_the_key(tmp_path, pg_server, seed_database):
    identity, public = make_key(tmp_path, "right.txt")
    db = seed_database(rows=50)
    db_vars = {"minimarket_db_tools_in_container": False, "minimarket_db_host": pg_server.host, "minimarket_db_port": pg_server.port,
               "minimarket_db_user": pg_server.user, "minimarket_db_name": db}
    before = pgcompare.snapshot(pg_server.dsn(db))

    rc, out = run("backup_database.yml", tmp_path, dict(db_vars, minimarket_age_recipients=[public]), password=pg_server.password)
    assert rc == 0, out
    names = sorted(os.listdir(tmp_path / "root" / "database"))
    archives = [name for name in names if name.endswith(".tar.gz.age")]
    assert len(archives) == 1 and archives[0][: -len(".tar.gz.age")] + "_metadata.json" in names, names

    pg_server.execute("DELETE FROM venta_items", db)
    changed = pgcompare.snapshot(pg_server.dsn(db))
    missing = str(tmp_path / "not-copied-yet.txt")
    rc, out = run("restore_database.yml", tmp_path, dict(db_vars, minimarket_age_identity_file=missing),
                  "-e", "backup_file=latest", "-e", "confirm=yes", password=pg_server.password)
    assert rc == 2, out
    assert "age identity file %s cannot be read (No such file or directory): copy the private key there" % missing in out
    assert pgcompare.diff(changed, pgcompare.snapshot(pg_server.dsn(db))) == []

    rc, out = run("restore_database.yml", tmp_path, dict(db_vars, minimarket_age_identity_file=identity),
                  "-e", "backup_file=latest", "-e", "confirm=yes", "-e", "database_restore_keep_previous=false",
                  password=pg_server.password)
    assert rc == 0, out
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(db))) == []
    with open(identity) as handle:
        assert handle.read().split("AGE-SECRET-KEY-")[1][:16] not in out
