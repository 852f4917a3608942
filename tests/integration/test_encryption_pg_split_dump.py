"""pg_split_dump with age encryption at rest: real PostgreSQL 15, real age, through the module entry point."""
import hashlib
import json
import os

import pytest

from testenv import pgcompare
from testenv.seed.minimarket_seed import seed
from tests.pg_fixtures import conn_args, dest_files, run_module, unique
from tests.age_keys import make_key

pytest_plugins = ["tests.pg_fixtures"]

MARKER = "MARCA-CIFRADO-cliente-4f1c9e"


@pytest.fixture
def keys(tmp_path):
    return make_key(tmp_path, "right.txt"), make_key(tmp_path, "wrong.txt")


def secret(path):
    with open(path) as handle:
        return [line for line in handle.read().splitlines() if line.startswith("AGE-SECRET-KEY-")][0]


def temp_databases(pg_server):
    return [r[0] for r in pg_server.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE '%\\_restoring\\_%' OR datname LIKE '%\\_verify\\_%' "
        "OR datname LIKE '%\\_pre\\_restore\\_%'")]


def one_line_failure(result):
    assert result["_rc"] == 1 and result["failed"] is True, result
    assert "\n" not in result["msg"]
    return result["msg"]


def test_encrypted_dump_restore_and_verify(pg_server, seeded_db, backup_dir, keys, dropped_databases, tmp_path):
    (identity, public), (wrong, unused) = keys
    unused, other = make_key(tmp_path, "spare.txt")  # a second recipient, e.g. the owner's offline key
    pg_server.execute("CREATE TABLE notas_cliente (id int PRIMARY KEY, nota text)", seeded_db)
    pg_server.execute("INSERT INTO notas_cliente VALUES (1, '%s')" % MARKER, seeded_db)
    before = pgcompare.snapshot(pg_server.dsn(seeded_db))
    base = conn_args(pg_server, db=seeded_db, dest=backup_dir, environment="cifrado")

    planned = run_module(dict(base, state="dump", compression="none", age_recipients=[public, other]), check_mode=True)
    assert planned["_rc"] == 0 and planned["encrypted"] is True, planned
    assert planned["archive"].endswith(".tar.age") and planned["msg"] == "would write %s" % planned["archive"]
    assert planned["metadata"].endswith("_metadata.json") and dest_files(backup_dir) == []

    dumped = run_module(dict(base, state="dump", compression="none", include_globals=True, age_recipients=[public, other]))
    assert dumped["_rc"] == 0, dumped
    archive = dumped["archive"]
    assert os.path.basename(archive).startswith("database_cifrado_") and archive.endswith(".tar.age")
    assert dumped["encrypted"] is True and dumped["recipients"] == [public, other]
    assert dest_files(backup_dir) == sorted([os.path.basename(archive), os.path.basename(dumped["metadata"])])
    assert dumped["metadata"] == archive[: -len(".tar.age")] + "_metadata.json"
    with open(archive, "rb") as handle:
        raw = handle.read()
    assert raw.startswith(b"age-encryption.org/v1\n")
    assert not raw.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd")) and b"ustar" not in raw[:1024]
    assert MARKER.encode() not in raw and b"CREATE TABLE" not in raw
    with open(dumped["metadata"], encoding="utf-8") as handle:
        meta = json.load(handle)
    assert meta["encryption"] == {"method": "age", "recipients": [public, other]}
    assert meta["archive"] == os.path.basename(archive) and meta["size"] == len(raw) == dumped["size"]
    assert meta["tables"]["public.notas_cliente"] == 1 and "globals.sql" in meta["members"]
    text = json.dumps(meta) + json.dumps(dumped)
    assert secret(identity) not in text and identity not in text and pg_server.password not in text

    pg_server.execute("DELETE FROM notas_cliente; DELETE FROM venta_items WHERE id % 3 = 0", seeded_db)
    changed = pgcompare.snapshot(pg_server.dsn(seeded_db))
    restore = dict(base, state="restore", src="latest", restore_globals=True)

    refused = one_line_failure(run_module(restore))
    assert refused == ("%s is encrypted with age: pass age_identity_file with the private key of one of its recipients"
                       % os.path.basename(archive))
    refused = one_line_failure(run_module(dict(restore, age_identity_file=wrong)))
    assert refused == ("the age identity %s cannot decrypt %s (age: no identity matched any of the recipients): "
                       "use the key of one of %s, %s" % (wrong, os.path.basename(archive), public, other))
    assert secret(wrong) not in refused
    missing = one_line_failure(run_module(dict(restore, age_identity_file=os.path.join(backup_dir, "none.txt"))))
    assert missing.startswith("age identity file %s cannot be read" % os.path.join(backup_dir, "none.txt"))
    # refused before anything was touched: live database as it was, no temporary database created
    assert pgcompare.diff(changed, pgcompare.snapshot(pg_server.dsn(seeded_db))) == []
    assert temp_databases(pg_server) == []

    unlocked = run_module(dict(base, state="verify", src=archive), check_mode=True)
    assert one_line_failure(unlocked).endswith("pass age_identity_file with the private key of one of its recipients")
    assert one_line_failure(run_module(dict(base, state="verify", src="latest"))).startswith(
        "%s is encrypted with age" % os.path.basename(archive))
    checked = run_module(dict(base, state="verify", src=archive, age_identity_file=identity), check_mode=True)
    assert checked["_rc"] == 0 and "checksum" in checked["msg"], checked
    verified = run_module(dict(base, state="verify", src="latest", age_identity_file=identity,
                               critical_tables={"notas_cliente": 1}))
    assert verified["_rc"] == 0 and verified["problems"] == [], verified
    assert all(t["ok"] for t in verified["tables"].values()) and temp_databases(pg_server) == []

    restored = run_module(dict(restore, age_identity_file=identity))
    assert restored["_rc"] == 0, restored
    dropped_databases.append(restored["previous"])
    assert restored["globals"]["created"] == []
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(seeded_db))) == []
    assert pg_server.execute("SELECT nota FROM notas_cliente", seeded_db) == [(MARKER,)]
    assert secret(identity) not in json.dumps(restored)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_encrypted_round_trip_into_a_new_database(pg_server, seeded_db, backup_dir, keys, dropped_databases,
                                                             compression):
    (identity, public), unused = keys
    before = pgcompare.snapshot(pg_server.dsn(seeded_db))
    dumped = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=backup_dir, environment="cifrado",
                                  compression=compression, jobs=2, age_recipients=[public]))
    assert dumped["_rc"] == 0, dumped
    assert dumped["archive"].endswith({"gzip": ".tar.gz.age", "zstd": ".tar.zst.age"}[compression])
    target = unique("mm_cifrado")
    dropped_databases.append(target)
    restored = run_module(conn_args(pg_server, state="restore", db=target, restore_as=target, src=dumped["archive"],
                                    environment="cifrado", age_identity_file=identity))
    assert restored["_rc"] == 0, restored
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(target))) == []


def test_damaged_ciphertext_with_a_matching_checksum_fails_and_leaves_the_database(pg_server, seeded_db, backup_dir, keys):
    """The metadata vouches for the bytes, age's authentication does not: the restore fails, the live database stays."""
    (identity, public), unused = keys
    dumped = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=backup_dir, environment="cifrado",
                                  compression="gzip", age_recipients=[public]))
    assert dumped["_rc"] == 0, dumped
    with open(dumped["archive"], "rb") as handle:
        raw = bytearray(handle.read())
    raw[-100] ^= 0x01  # in the last chunk: the header opens, the stream fails
    with open(dumped["archive"], "wb") as handle:
        handle.write(bytes(raw))
    with open(dumped["metadata"], encoding="utf-8") as handle:
        meta = json.load(handle)
    meta["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
    with open(dumped["metadata"], "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
    before = pgcompare.snapshot(pg_server.dsn(seeded_db))
    failed = run_module(conn_args(pg_server, state="restore", db=seeded_db, src="latest", dest=backup_dir,
                                  environment="cifrado", age_identity_file=identity))
    message = one_line_failure(failed)
    assert message == ("decrypting %s failed (age: failed to decrypt and authenticate payload chunk): the archive is damaged "
                       "or truncated; use another backup" % os.path.basename(dumped["archive"]))
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(seeded_db))) == []
    assert temp_databases(pg_server) == []


def test_container_mode_encrypted_round_trip(pg_container, backup_dir, keys):
    (identity, public), (wrong, unused) = keys
    db = unique("cifrado")
    pg_container.execute("CREATE DATABASE %s" % db)
    with pg_container.connect(db) as conn:
        seed(conn, rows=300)
    args = dict(container=pg_container.name, login_host="127.0.0.1", login_password=pg_container.password,
                db=db, dest=backup_dir, environment="ctr")
    before = pgcompare.snapshot(pg_container.dsn(db))
    dumped = run_module(dict(args, state="dump", compression="zstd", age_recipients=[public]))
    assert dumped["_rc"] == 0 and dumped["archive"].endswith(".tar.zst.age"), dumped
    pg_container.execute("CREATE TABLE intrusa (id int)", db)
    changed = pgcompare.snapshot(pg_container.dsn(db))
    refused = run_module(dict(args, state="restore", src="latest", age_identity_file=wrong))
    assert "cannot decrypt" in one_line_failure(refused)
    assert pgcompare.diff(changed, pgcompare.snapshot(pg_container.dsn(db))) == []
    restored = run_module(dict(args, state="restore", src="latest", age_identity_file=identity, keep_previous=False))
    assert restored["_rc"] == 0, restored
    assert pgcompare.diff(before, pgcompare.snapshot(pg_container.dsn(db))) == []
    names = [r[0] for r in pg_container.execute("SELECT datname FROM pg_database")]
    assert [n for n in names if n.startswith(db + "_")] == []
