"""What makes a backup complete, and how it is written, decides whether a restore can be trusted."""

import datetime
import errno
import hashlib
import io
import json
import os
import stat
import subprocess
import sys

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _backup_set as bs
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._files import (
    WRITEBACK_STEP,
    AtomicFile,
    backup_lock,
    new_archive_path,
    remove_stale_partials,
    write_metadata,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import (
    CHUNK,
    EXTENSIONS,
    CompressedSink,
    archive_stream,
    compression_of,
    compressor_command,
    decompressor_command,
)

WHEN = datetime.datetime(2025, 10, 7, 12, 0, 0, tzinfo=datetime.timezone.utc)


def make_backup(directory, env="production", when=WHEN, payload=b"archive bytes", kind="database", meta=None):
    name = bs.archive_name(kind, env, when, "gzip")
    path = os.path.join(str(directory), name)
    with open(path, "wb") as handle:
        handle.write(payload)
    data = {"archive": name, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    data.update(meta or {})
    write_metadata(path, data)
    return path


def test_names_follow_the_shop_guide():
    assert bs.archive_name("database", "production", WHEN, "gzip") == "database_production_20251007_120000.tar.gz"
    assert bs.archive_name("volumes", "staging", WHEN, "zstd") == "volumes_staging_20251007_120000.tar.zst"
    assert bs.archive_name("volumes", "dev-eu", WHEN, "none") == "volumes_dev-eu_20251007_120000.tar"
    assert bs.metadata_path("/b/database_production_20251007_120000.tar.gz") == "/b/database_production_20251007_120000_metadata.json"


@pytest.mark.parametrize("name,expected", [
    ("database_production_20251007_120000.tar.gz", ("database", "production", WHEN, ".tar.gz")),
    ("volumes_dev-eu_20251007_120000.tar", ("volumes", "dev-eu", WHEN, ".tar")),
    ("database_production_20251007_120000.tar.gz.partial", None),
    ("database_production_20251307_120000.tar.gz", None),
    ("database_production_20251007_120000_metadata.json", None),
    ("notes.txt", None),
])
def test_parse_archive_name(name, expected):
    assert bs.parse_archive_name(name) == expected


@pytest.mark.parametrize("env", ["", "prod_eu", "../x", "pro duction"])
def test_bad_environment_names_are_refused_with_the_fix(env):
    with pytest.raises(BackupError, match="use letters, digits and '-' only"):
        bs.stem("database", env, WHEN)


def test_unknown_compression_names_the_choices():
    with pytest.raises(BackupError, match="use one of gzip, none, zstd"):
        bs.archive_name("database", "production", WHEN, "bzip2")


def test_completeness_needs_metadata_naming_the_archive_with_its_size(tmp_path):
    good = make_backup(tmp_path, when=WHEN)
    no_meta = os.path.join(str(tmp_path), "database_production_20251008_120000.tar.gz")
    open(no_meta, "wb").close()
    wrong_size = make_backup(tmp_path, when=WHEN + datetime.timedelta(days=2))
    with open(wrong_size, "ab") as handle:
        handle.write(b"x")
    other_env = make_backup(tmp_path, env="staging")
    (tmp_path / "notes.txt").write_text("mine")

    found = bs.list_backups(str(tmp_path), "database", "production")
    assert [b.path for b in found] == [good, no_meta, wrong_size]
    assert [b.complete for b in found] == [True, False, False]
    assert "metadata file database_production_20251008_120000_metadata.json is missing" == found[1].problem
    assert "metadata records" in found[2].problem
    assert other_env not in [b.path for b in found]


def test_damaged_metadata_makes_a_backup_incomplete(tmp_path):
    path = make_backup(tmp_path)
    with open(bs.metadata_path(path), "w") as handle:
        handle.write("{not json")
    (backup,) = bs.list_backups(str(tmp_path))
    assert not backup.complete
    assert "not valid JSON" in backup.problem


def test_latest_is_the_newest_complete_backup_and_its_checksum_is_checked(tmp_path):
    older = make_backup(tmp_path, when=WHEN)
    newer_incomplete = os.path.join(str(tmp_path), "database_production_20251009_120000.tar.gz")
    open(newer_incomplete, "wb").close()
    assert bs.resolve_source("latest", str(tmp_path), "database", "production").path == older

    with open(older, "r+b") as handle:
        handle.write(b"X")
    with pytest.raises(BackupError, match="is corrupted: sha256"):
        bs.resolve_source("latest", str(tmp_path), "database", "production")


def test_a_resolved_backup_describes_itself_for_the_confirmation(tmp_path):
    path = make_backup(tmp_path, env="staging", payload=b"x" * 1536)
    described = bs.resolve_source("latest", str(tmp_path), "database", "staging").describe()
    assert described == {
        "name": "database_staging_20251007_120000.tar.gz", "path": path, "environment": "staging",
        "created": "2025-10-07T12:00:00+00:00", "size": 1536,
        "summary": "%s (taken 2025-10-07 12:00:00 UTC, 1.5 KiB, environment staging)" % path,
    }


@pytest.mark.parametrize("size,text", [(0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (5 * 1024 ** 2, "5.0 MiB"),
                                       (3 * 1024 ** 3 // 2, "1.5 GiB"), (2048 * 1024 ** 3, "2048.0 GiB")])
def test_sizes_read_as_an_operator_reads_them(size, text):
    assert bs.human_size(size) == text


def test_source_errors_say_what_to_do(tmp_path):
    with pytest.raises(BackupError, match="no complete database backup for environment 'production'"):
        bs.resolve_source("latest", str(tmp_path), "database", "production")
    with pytest.raises(BackupError, match="does not exist: check the path or use src=latest"):
        bs.resolve_source(str(tmp_path / "database_production_20251007_120000.tar.gz"), str(tmp_path), "database", "production")
    with pytest.raises(BackupError, match="is not a backup of this collection"):
        bs.resolve_source(str(tmp_path / "dump.sql.gz"), str(tmp_path), "database", "production")
    volumes = make_backup(tmp_path, kind="volumes")
    with pytest.raises(BackupError, match="is a volumes backup, not a database backup"):
        bs.resolve_source(volumes, str(tmp_path), "database", "production")


def test_atomic_file_is_0600_and_leaves_nothing_on_failure(tmp_path):
    target = str(tmp_path / "database_production_20251007_120000.tar.gz")
    with pytest.raises(RuntimeError):
        with AtomicFile(target) as out:
            out.handle.write(b"half")
            assert stat.S_IMODE(os.stat(out.partial).st_mode) == 0o600
            raise RuntimeError("disk died")
    assert os.listdir(str(tmp_path)) == []

    with AtomicFile(target) as out:
        out.handle.write(b"whole")
        out.commit()
    assert os.listdir(str(tmp_path)) == [os.path.basename(target)]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_atomic_file_removes_the_partial_when_the_final_flush_fails(tmp_path):
    """On a full disk the buffered tail fails at close(); CI once found the .partial left behind."""

    class FullDisk(io.BufferedWriter):
        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    target = str(tmp_path / "database_production_20251007_120000.tar")
    with pytest.raises(RuntimeError):
        with AtomicFile(target) as out:
            out.handle = FullDisk(io.FileIO(out.partial, "wb"))
            out.handle.write(b"buffered tail")
            raise RuntimeError("pg_dump failed")
    assert os.listdir(str(tmp_path)) == []


def _write_steps(out, steps):
    payload = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    for unused in range(steps * WRITEBACK_STEP // len(payload) + 3):
        out.handle.write(payload)
        digest.update(payload)
    return digest.hexdigest()


def test_atomic_file_syncs_while_written_and_keeps_every_byte(tmp_path):
    """Past WRITEBACK_STEP a helper thread fdatasyncs what is written; commit() waits for it and the file is whole."""
    target = str(tmp_path / "volumes_production_20251007_120000.tar.zst")
    with AtomicFile(target) as out:
        expected = _write_steps(out, 2)
        helper = out.handle._helper.thread
        assert helper.is_alive()
        out.commit()
    assert not helper.is_alive()
    with open(target, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == expected
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


def test_atomic_file_stops_the_helper_when_discarded(tmp_path):
    target = str(tmp_path / "volumes_production_20251007_120000.tar.zst")
    with pytest.raises(RuntimeError):
        with AtomicFile(target) as out:
            _write_steps(out, 1)
            helper = out.handle._helper.thread
            raise RuntimeError("tar failed")
    assert not helper.is_alive()
    assert os.listdir(str(tmp_path)) == []


def test_atomic_file_reports_the_write_error_the_helper_met(tmp_path, monkeypatch):
    """The kernel tells one fsync about a failed write-back: the helper's must reach commit(), not vanish with it."""
    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    target = str(tmp_path / "volumes_production_20251007_120000.tar.zst")
    with pytest.raises(BackupError, match=r"^writing .*\.tar\.zst\.partial failed: Input/output error -- check the destination"):
        with AtomicFile(target) as out:
            _write_steps(out, 1)
            out.commit()
    assert os.listdir(str(tmp_path)) == []
    with pytest.raises(OSError, match="Input/output error"):
        with AtomicFile(target) as out:
            _write_steps(out, 1)
            out.handle._helper.thread.join()  # it ends at its error; the next step's write raises it
            _write_steps(out, 1)
    assert os.listdir(str(tmp_path)) == []


def test_lock_refuses_a_second_writer_in_another_process(tmp_path):
    code = (
        "import sys\n"
        "from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError\n"
        "from ansible_collections.minimarket.backup.plugins.module_utils._files import backup_lock\n"
        "try:\n"
        "    with backup_lock(sys.argv[1], 'database', 'production'):\n"
        "        pass\n"
        "except BackupError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    with backup_lock(str(tmp_path), "database", "production"):
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 3, proc.stderr
    assert "another database backup of 'production' is running" in proc.stdout
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressed_sink_streams_and_counts_what_reached_the_file(tmp_path, compression):
    payload = os.urandom(3 * CHUNK) + b"inventario " * 100000
    path = str(tmp_path / ("x" + EXTENSIONS[compression]))
    with open(path, "wb") as handle:
        sink = CompressedSink(handle, compression)
        for offset in range(0, len(payload), 65536):
            sink.write(payload[offset:offset + 65536])
        size, digest = sink.close()
    assert size == os.path.getsize(path)
    assert digest == bs.sha256_file(path)
    command = decompressor_command(compression)
    if command is None:
        restored = open(path, "rb").read()
    else:
        restored = subprocess.run(command + [path], capture_output=True, check=True).stdout
    assert restored == payload
    assert compression_of(os.path.basename(path).replace("x", "database_production_20251007_120000")) == compression


def test_gzip_is_igzip_by_default_and_zlib_for_an_explicit_level(tmp_path):
    """The default writes a standard .tar.gz that plain gzip reads; an explicit zlib level still means that level."""
    assert compressor_command("gzip") == ["igzip", "-c", "-3"]
    assert compressor_command("gzip", 6)[1:] == ["-c", "-6"] and compressor_command("gzip", 6)[0] in ("pigz", "gzip")
    assert decompressor_command("gzip") == ["igzip", "-d", "-c"]
    payload = b"venta;producto;cantidad\n" * 100000 + os.urandom(200000)
    for level in (None, 6):
        path = str(tmp_path / ("x%s.tar.gz" % level))
        with open(path, "wb") as handle:
            sink = CompressedSink(handle, "gzip", level=level)
            sink.write(payload)
            sink.close()
        for reader in (["gzip", "-dc"], decompressor_command("gzip")):
            assert subprocess.run(reader + [path], capture_output=True, check=True).stdout == payload


def test_metadata_is_written_last_as_json(tmp_path):
    path = make_backup(tmp_path, meta={"tables": {"ventas": 3, "año": 1}})
    data = json.loads(open(bs.metadata_path(path), encoding="utf-8").read())
    assert data["tables"] == {"ventas": 3, "año": 1}
    assert stat.S_IMODE(os.stat(bs.metadata_path(path)).st_mode) == 0o600


def test_lock_in_a_missing_directory_names_the_fix(tmp_path):
    with pytest.raises(BackupError, match="check that the directory exists and is writable"):
        with backup_lock(str(tmp_path / "missing"), "database", "production"):
            pass


def test_stale_partials_removed_only_for_this_set(tmp_path):
    names = ["database_prod_20250101_000000.tar.gz.partial", "database_prod_20250101_000000_metadata.json.partial",
             "database_prod_20250101_000000.tar.zst.age.partial", "database_dev_20250101_000000.tar.gz.partial",
             "volumes_prod_20250101_000000.tar.gz.partial", "database_prod-eu_20250101_000000.tar.gz.partial",
             "database_prod_20250101_000000.tar.gz", "database_prod_notes.partial"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_partials(str(tmp_path), "database", "prod") == sorted(names[:3])
    assert sorted(os.listdir(tmp_path)) == sorted(names[3:])


def test_new_archive_path_refuses_a_name_already_taken(tmp_path):
    when = datetime.datetime(2025, 1, 1, 2, 0, tzinfo=datetime.timezone.utc)
    path = new_archive_path(str(tmp_path), "volumes", "prod", when, "zstd")
    assert path == str(tmp_path / "volumes_prod_20250101_020000.tar.zst")
    (tmp_path / "volumes_prod_20250101_020000_metadata.json").write_text("{}")
    with pytest.raises(BackupError, match="already exists .two backups in the same second.: run again"):
        new_archive_path(str(tmp_path), "volumes", "prod", when, "zstd")


def test_atomic_file_replaces_a_killed_runs_partial_only_under_the_lock(tmp_path):
    target = str(tmp_path / "metrics.prom")
    (tmp_path / "metrics.prom.partial").write_text("left by a killed run")
    with pytest.raises(BackupError, match="cannot create"):
        AtomicFile(target)
    with AtomicFile(target, locked=True) as out:
        out.handle.write(b"new\n")
        out.commit()
    assert open(target).read() == "new\n"
    assert oct(os.stat(target).st_mode & 0o777) == "0o600"
    assert not os.path.exists(target + ".partial")


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_archive_stream_takes_the_sha256_in_the_same_read(tmp_path, compression):
    plain = os.urandom(3 * CHUNK + 5)
    path = str(tmp_path / ("volumes_test_20250101_000000" + EXTENSIONS[compression]))
    command = compressor_command(compression)
    with open(path, "wb") as handle:
        handle.write(subprocess.run(command, input=plain, stdout=subprocess.PIPE, check=True).stdout if command else plain)
    digest = hashlib.sha256()
    with archive_stream(path, digest=digest) as stream:
        assert stream.read() == plain
    assert digest.hexdigest() == bs.sha256_file(path)
    # a reader that stops early: its error comes out and the feeding thread ends (no hang)
    with pytest.raises(RuntimeError, match="reader stopped"):
        with archive_stream(path, digest=hashlib.sha256()) as stream:
            stream.read(10)
            raise RuntimeError("reader stopped")
