"""Encryption at rest with age: names, recipients, and the shared reader, against the real age and compressors."""
import datetime
import hashlib
import os
import subprocess

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _backup_set as bs
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._files import AtomicFile, write_metadata
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import (
    CHUNK,
    CompressedSink,
    archive_stream,
    check_recipients,
    compression_of,
    encryption_record,
    is_encrypted,
    recipients_of,
)
from ansible_collections.minimarket.backup.plugins.module_utils._retention import Policy, plan, prune
from tests.retention_fixtures import BackupDir
from tests.age_keys import make_key

WHEN = datetime.datetime(2025, 10, 7, 12, 0, 0, tzinfo=datetime.timezone.utc)
UTC = datetime.timezone.utc


@pytest.fixture
def keys(tmp_path):
    keydir = tmp_path / "keys"
    keydir.mkdir()
    return make_key(keydir, "right.txt"), make_key(keydir, "wrong.txt")


def write_encrypted(directory, compression, payload, recipients, when=WHEN, kind="database"):
    name = bs.archive_name(kind, "production", when, compression, encrypted=True)
    path = os.path.join(str(directory), name)
    with AtomicFile(path) as target:
        sink = CompressedSink(target.handle, compression, recipients)
        for offset in range(0, len(payload), 65536):
            sink.write(payload[offset:offset + 65536])
        size, digest = sink.close()
        target.commit()
    write_metadata(path, {"archive": name, "size": size, "sha256": digest, "encryption": encryption_record(recipients)})
    return path, size, digest


def test_encrypted_names_keep_the_scheme():
    name = bs.archive_name("database", "production", WHEN, "gzip", encrypted=True)
    assert name == "database_production_20251007_120000.tar.gz.age"
    assert bs.archive_name("volumes", "staging", WHEN, "zstd", True) == "volumes_staging_20251007_120000.tar.zst.age"
    assert bs.archive_name("volumes", "dev-eu", WHEN, "none", True) == "volumes_dev-eu_20251007_120000.tar.age"
    assert bs.archive_name("database", "production", WHEN, "gzip") == "database_production_20251007_120000.tar.gz"
    assert bs.parse_archive_name(name) == ("database", "production", WHEN, ".tar.gz.age")
    assert bs.parse_archive_name("volumes_dev-eu_20251007_120000.tar.age") == ("volumes", "dev-eu", WHEN, ".tar.age")
    for bad in ("database_production_20251007_120000.tar.gz.age.partial", "database_production_20251007_120000.age",
                "database_production_20251007_120000.tar.gz.age.age", "database_production_20251007_120000.tar.gz.gpg"):
        assert bs.parse_archive_name(bad) is None
    assert bs.metadata_path("/b/" + name) == "/b/database_production_20251007_120000_metadata.json"
    assert [compression_of("x" + ext + ".age") for ext in (".tar.gz", ".tar.zst", ".tar")] == ["gzip", "zstd", "none"]
    assert is_encrypted(name) and not is_encrypted(name[:-4])
    with pytest.raises(BackupError, match=r"expected <kind>_<env>_YYYYMMDD_HHMMSS\.tar\[\.gz\|\.zst\]\[\.age\]"):
        bs.metadata_path("/b/dump.sql.age")


def test_encrypted_backups_are_listed_and_complete_without_the_key(tmp_path, keys):
    (unused, public), unused_wrong = keys
    plain = os.path.join(str(tmp_path), bs.archive_name("database", "production", WHEN, "gzip"))
    with open(plain, "wb") as handle:
        handle.write(b"plain")
    write_metadata(plain, {"archive": os.path.basename(plain), "size": 5, "sha256": hashlib.sha256(b"plain").hexdigest()})
    path, size, digest = write_encrypted(tmp_path, "zstd", b"ventas " * 1000, [public], when=WHEN + datetime.timedelta(hours=1))
    no_meta = os.path.join(str(tmp_path), bs.archive_name("database", "production", WHEN + datetime.timedelta(hours=2), "gzip", True))
    open(no_meta, "wb").close()

    found = bs.list_backups(str(tmp_path), "database", "production")
    assert [b.name for b in found] == [os.path.basename(p) for p in (plain, path, no_meta)]
    assert [b.complete for b in found] == [True, True, False]
    assert found[1].extension == ".tar.zst.age" and found[1].metadata["size"] == size == os.path.getsize(path)
    assert recipients_of(found[1]) == [public]
    found[1].check_checksum()  # sha256 of the bytes on disk: no key needed
    assert digest == bs.sha256_file(path)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_sink_and_archive_stream_round_trip(tmp_path, keys, compression):
    (identity, public), (unused, other) = keys
    payload = os.urandom(2 * CHUNK) + b"MARCA-SECRETA-ventas " * 50000
    path, size, digest = write_encrypted(tmp_path, compression, payload, [other, public])
    with open(path, "rb") as handle:
        raw = handle.read()
    assert raw.startswith(b"age-encryption.org/v1\n")
    assert b"MARCA-SECRETA" not in raw
    assert (size, digest) == (len(raw), hashlib.sha256(raw).hexdigest())
    assert os.stat(path).st_mode & 0o777 == 0o600

    with archive_stream(path, identity) as stream:
        assert stream.read() == payload
    with archive_stream(path, identity) as stream:
        assert stream.read(10) == payload[:10]  # the rest is read (and authenticated) on the way out


def test_an_ssh_ed25519_key_is_a_recipient_too(tmp_path):
    key = str(tmp_path / "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operador@tienda", "-f", key], check=True)
    with open(key + ".pub") as handle:
        public = handle.read().strip()
    payload = b"ventas del dia " * 20000
    path, unused_size, digest = write_encrypted(tmp_path, "zstd", payload, [public])
    backup = bs.resolve_source(path, str(tmp_path), "database", "production", key)
    assert recipients_of(backup) == [public]
    with archive_stream(path, key) as stream:
        assert stream.read() == payload


def test_plain_archive_stream_unchanged(tmp_path):
    payload = b"inventario " * 10000
    for compression in ("gzip", "zstd", "none"):
        path = os.path.join(str(tmp_path), bs.archive_name("volumes", "production", WHEN, compression))
        with open(path, "wb") as handle:
            sink = CompressedSink(handle, compression)
            sink.write(payload)
            unused_size, digest = sink.close()
        with open(path, "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == digest
        with archive_stream(path) as stream:
            assert stream.read() == payload
        with archive_stream(path, "/ignored/for/plain/archives") as stream:
            assert stream.read() == payload


def test_wrong_key_missing_key_and_truncation_fail_with_one_line(tmp_path, keys):
    (identity, public), (wrong, unused) = keys
    path, unused_size, unused_digest = write_encrypted(tmp_path, "gzip", os.urandom(300000), [public])
    name = os.path.basename(path)
    with pytest.raises(BackupError) as caught:
        with archive_stream(path, wrong) as stream:
            stream.read()
    assert str(caught.value) == ("the age identity %s cannot decrypt %s (age: no identity matched any of the recipients): "
                                 "use the key of one of its recipients" % (wrong, name))
    with pytest.raises(BackupError, match="^%s is encrypted with age: pass age_identity_file with the private key" % name):
        with archive_stream(path) as stream:
            stream.read()

    with open(path, "rb") as handle:
        raw = handle.read()
    for cut in (len(raw) // 2, len(raw) - 1):
        truncated = os.path.join(str(tmp_path), "cut", name)
        os.makedirs(os.path.dirname(truncated), exist_ok=True)
        with open(truncated, "wb") as handle:
            handle.write(raw[:cut])
        with pytest.raises(BackupError) as caught:
            with archive_stream(truncated, identity) as stream:
                stream.read()
        message = str(caught.value)
        assert message.startswith("decrypting %s failed (age: " % name) and "\n" not in message
        assert message.endswith("the archive is damaged or truncated; use another backup")


def test_reader_failure_reports_age_not_the_empty_tar(tmp_path, keys):
    """A reader that fails because age produced nothing gets age's reason, not 'empty file'."""
    (unused, public), (wrong, unused_public) = keys
    path, unused_size, unused_digest = write_encrypted(tmp_path, "zstd", os.urandom(100000), [public])
    with pytest.raises(BackupError, match="cannot decrypt .*no identity matched any of the recipients"):
        with archive_stream(path, wrong) as stream:
            if not stream.read(512):
                raise BackupError("archive is truncated or damaged (empty file)")


def test_resolve_source_proves_the_key_before_anything(tmp_path, keys):
    (identity, public), (wrong, unused) = keys
    path, unused_size, unused_digest = write_encrypted(tmp_path, "gzip", os.urandom(100000), [public])
    name = os.path.basename(path)
    backup = bs.resolve_source("latest", str(tmp_path), "database", "production", identity)
    assert backup.path == path and backup.identity_file == identity and backup.warnings == []
    with pytest.raises(BackupError, match="^%s is encrypted with age: pass age_identity_file with the private key of one of "
                                          "its recipients$" % name):
        bs.resolve_source(path, str(tmp_path), "database", "production")
    with pytest.raises(BackupError) as caught:
        bs.resolve_source(path, str(tmp_path), "database", "production", wrong)
    assert str(caught.value) == ("the age identity %s cannot decrypt %s (age: no identity matched any of the recipients): "
                                 "use the key of one of %s" % (wrong, name, public))
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(BackupError, match="^age identity file %s cannot be read \\(No such file or directory\\): copy the "
                                          "private key there" % missing):
        bs.resolve_source(path, str(tmp_path), "database", "production", missing)
    not_a_key = str(tmp_path / "not-a-key.txt")
    with open(not_a_key, "w") as handle:
        handle.write("hello\n")
    os.chmod(not_a_key, 0o600)
    with pytest.raises(BackupError, match="^decrypting %s with the age identity %s failed \\(age: .*\\): age_identity_file "
                                          "must be" % (name, not_a_key)):
        bs.resolve_source(path, str(tmp_path), "database", "production", not_a_key)
    os.chmod(identity, 0o644)
    backup = bs.resolve_source(path, str(tmp_path), "database", "production", identity)
    assert backup.warnings == ["age identity file %s has mode 0644: it holds a private key, chmod 600 it" % identity]
    with open(identity) as handle:
        secret = handle.read().split("AGE-SECRET-KEY-")[1][:20]
    assert secret not in " ".join(backup.warnings)


def test_old_signature_and_plain_backups_ignore_the_identity(tmp_path):
    path = os.path.join(str(tmp_path), bs.archive_name("database", "production", WHEN, "none"))
    with open(path, "wb") as handle:
        handle.write(b"x")
    write_metadata(path, {"archive": os.path.basename(path), "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()})
    assert bs.resolve_source(path, str(tmp_path), "database", "production").identity_file is None
    assert bs.resolve_source(path, str(tmp_path), "database", "production", "/no/such/key").warnings == []


def test_recipients_are_checked_up_front_without_echoing_them(tmp_path, keys):
    (identity, public), unused = keys
    ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl operador@tienda"
    assert check_recipients([" %s\n" % public, ssh]) == [public, ssh]
    assert check_recipients([]) == [] and check_recipients(None) == []
    with open(identity) as handle:
        private = [line for line in handle.read().splitlines() if line.startswith("AGE-SECRET-KEY-")][0]
    with pytest.raises(BackupError) as caught:
        check_recipients([public, private])
    assert str(caught.value) == ("age_recipients[1] is a private key: list public keys only (age-keygen -y KEYFILE prints it) "
                                 "and keep the private key off the backup host")
    for bad in ("", "age1short", "gpg:ABCDEF", public + "x", "ssh-dss AAAAB3Nza"):
        with pytest.raises(BackupError, match=r"^age_recipients\[0\] is not a public key: use the 'age1\.\.\.' key"):
            check_recipients([bad])
    with pytest.raises(BackupError, match="is not a public key"):
        CompressedSink(open(os.devnull, "wb"), "gzip", ["age1nope"])


def test_a_recipient_age_rejects_fails_the_write_with_ages_reason(tmp_path):
    # Right shape, wrong bech32 checksum: only age can tell.
    bogus = "age1" + "q" * 58
    target = str(tmp_path / "out")
    with open(target, "wb") as handle:
        sink = CompressedSink(handle, "zstd", [bogus])
        with pytest.raises(BackupError, match="^age (exited with status 1|stopped before the end of the stream).*invalid checksum"):
            for unused in range(64):
                sink.write(os.urandom(65536))
            sink.close()
        sink.abort()


def test_without_age_installed_the_fix_is_named(tmp_path, monkeypatch, keys):
    unused, (unused_identity, public) = keys
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackupError, match="^age is not installed on this host: install it \\(apt install age\\)"):
        check_recipients([public])


def test_prune_treats_encrypted_backups_like_plain_ones(tmp_path, keys):
    """Switching encryption on changes file names only: the same policy keeps and deletes the same backups."""
    unused, (unused_identity, public) = keys
    now = datetime.datetime(2025, 10, 20, 12, 0, tzinfo=UTC)
    times = [now - datetime.timedelta(days=d, hours=h) for d in (1, 2, 5, 9, 20, 40, 70) for h in (0, 6)]
    plain_dir, mixed_dir = tmp_path / "plain", tmp_path / "mixed"
    plain_dir.mkdir()
    mixed_dir.mkdir()
    plain = BackupDir(plain_dir)
    for when in times:
        plain.complete(when)
    for index, when in enumerate(times):
        if index % 2:
            write_encrypted(mixed_dir, "gzip", b"cifrado %d" % index, [public], when=when)
        else:
            BackupDir(mixed_dir).complete(when)
    # the same leftovers in both: a stale partial and an archive without metadata
    old = now - datetime.timedelta(days=3)
    plain.incomplete(old, "partial-archive")
    plain.incomplete(old + datetime.timedelta(minutes=1))
    stale = os.path.join(str(mixed_dir), bs.archive_name("database", "production", old, "gzip", True) + bs.PARTIAL_SUFFIX)
    open(stale, "wb").close()
    open(os.path.join(str(mixed_dir), bs.archive_name("database", "production", old + datetime.timedelta(minutes=1), "gzip", True)),
         "wb").close()

    policy = Policy(retention_days=7, keep_last=3, keep_daily=4, keep_weekly=3, keep_monthly=2)

    def decisions(result):
        return ([(c["created"], c["state"], c["reasons"]) for c in result["kept"]],
                [(c["created"], c["state"], c["reason"], len(c["files"])) for c in result["deleted"]])

    expected = decisions(plan(str(plain_dir), "database_production_", policy, now))
    assert expected[1], "the policy must delete something for this test to mean anything"
    result = prune(str(mixed_dir), "database_production_", policy, now)
    assert decisions(result) == expected
    assert any(c["name"].endswith(".tar.gz.age") for c in result["kept"])
    assert any(c["name"].endswith(".tar.gz.age") and c["state"] == "complete" for c in result["deleted"])
    assert any(c["name"].endswith(".tar.gz.age.partial") for c in result["deleted"])
    left = sorted(name for name in os.listdir(str(mixed_dir)) if not name.startswith("."))
    assert left == sorted(result["files_after"])
    kept = [c["name"] for c in result["kept"] if c["state"] == "complete"]
    assert all(name in left and os.path.basename(bs.metadata_path(os.path.join("/", name))) in left for name in kept)
    assert not os.path.exists(stale)
