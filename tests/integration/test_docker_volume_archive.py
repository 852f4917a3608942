"""docker_volume_archive against the real Docker engine (host and API paths)."""
import json
import os
import stat
import subprocess
import tarfile

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _volume_archive as va
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from tests.volume_fixtures import (
    LONG_NAME,
    blocks_bytes,
    crafted_tar,
    mtimes_ns,
    populate,
    read_metadata,
    snapshot,
    unparsable_sparse_archives,
    write_backup,
)

pytest_plugins = ["tests.volume_fixtures"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = {"com.docker.compose.project": "mmtest", "com.docker.compose.volume": "data"}


def scratch_volumes(engine):
    return [v["Name"] for v in engine.api.volumes()["Volumes"] or [] if v["Name"].startswith("mmverify-%d-" % os.getpid())]


def leftovers(mountpoint):
    return [name for name in os.listdir(os.path.dirname(mountpoint)) if name != "_data"]


def test_host_mode_round_trip_keeps_every_entry(engine, mm_docker, tmp_path):
    vol = mm_docker.volume("data", labels=LABELS)
    mountpoint = mm_docker.mountpoint(vol)
    populate(mountpoint)
    before, before_ns = snapshot(mountpoint), mtimes_ns(mountpoint)
    assert before["hardlinks"] == [["links/a", "links/b", "other/c"]]
    dest = str(tmp_path / "backups")

    result = va.archive(engine, va.ArchiveOptions([vol], dest, "test", "zstd", mode="host"))

    assert result["mode"] == "host" and result["warnings"] == []
    for path in (result["archive"], result["metadata"]):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert result["size"] < 1024 * 1024  # the 2 GiB sparse file was stored sparse, not as zeros
    meta = read_metadata(result["archive"])
    record = meta["volumes"][0]
    assert (record["name"], record["driver"], record["labels"]) == (vol, "local", LABELS)
    assert record["files"] == len(before["entries"]) - 1
    assert meta["sha256"] == result["sha256"] and meta["size"] == os.path.getsize(result["archive"])
    assert va.verify(result["archive"], dest, "test")["volumes"][0]["sha256"] == record["sha256"]
    assert va.verify(result["archive"], dest, "test", engine=engine)["mode"] == "host"  # scratch restore
    assert scratch_volumes(engine) == []

    engine.remove_volume(vol)
    restored = va.restore(engine, va.RestoreOptions("latest", dest, "test", mode="host"))

    assert restored["volumes"][0]["action"] == "created"
    assert engine.volume(vol)["Labels"] == LABELS
    mountpoint = mm_docker.mountpoint(vol)
    assert snapshot(mountpoint) == before
    assert mtimes_ns(mountpoint) == before_ns
    assert blocks_bytes(os.path.join(mountpoint, "sparse.img")) < 1024 * 1024
    assert os.path.exists(os.path.join(mountpoint, "deep", LONG_NAME))

    with open(os.path.join(mountpoint, "stray"), "w") as handle:
        handle.write("not in the archive")
    with open(os.path.join(mountpoint, "pgdata", "PG_VERSION"), "w") as handle:
        handle.write("16\n")
    restored = va.restore(engine, va.RestoreOptions(result["archive"], dest, "test", [vol], mode="host", check_restored=False))
    assert restored["volumes"][0]["action"] == "replaced"
    assert snapshot(mountpoint) == before
    assert leftovers(mountpoint) == []


def test_api_mode_writes_the_same_format(engine, mm_docker, helper_image, tmp_path):
    plain = mm_docker.volume("plain")
    rich = mm_docker.volume("rich")
    populate(mm_docker.mountpoint(plain), sparse_size=8 * 1024 * 1024, extended=False)
    populate(mm_docker.mountpoint(rich), sparse_size=8 * 1024 * 1024, extended=True)
    before = snapshot(mm_docker.mountpoint(plain))
    rich_before = snapshot(mm_docker.mountpoint(rich), xattrs=False, acls=False)
    dest = str(tmp_path / "b")

    by_host = va.archive(engine, va.ArchiveOptions([plain, rich], dest, "host", "gzip", mode="host"))
    by_api = va.archive(engine, va.ArchiveOptions([plain, rich], dest, "api", "gzip", mode="api", helper_image=helper_image))

    assert by_api["mode"] == "api"
    host_records = dict((v["name"], v) for v in by_host["volumes"])
    api_records = dict((v["name"], v) for v in by_api["volumes"])
    # same content digest whichever path read a volume without xattrs/ACLs
    assert api_records[plain]["sha256"] == host_records[plain]["sha256"]
    assert api_records[plain]["files"] == host_records[plain]["files"]
    # what the API path cannot carry: xattrs and ACLs (documented)
    assert api_records[rich]["files"] == host_records[rich]["files"]
    assert api_records[rich]["sha256"] != host_records[rich]["sha256"]
    with tarfile.open(by_api["archive"]) as archive:
        keys = set(k for m in archive.getmembers() for k in m.pax_headers)
        assert not [k for k in keys if k.startswith(("SCHILY.xattr.user", "SCHILY.acl"))]
        assert sorted(set(m.name.split("/")[0] for m in archive.getmembers())) == sorted([plain, rich])

    checked = va.verify(by_api["archive"], dest, "api", engine=engine, mode="api", helper_image=helper_image)
    assert checked["mode"] == "api" and scratch_volumes(engine) == []
    engine.remove_volume(plain)
    va.restore(engine, va.RestoreOptions(by_api["archive"], dest, "api", mode="api", helper_image=helper_image))
    assert snapshot(mm_docker.mountpoint(plain)) == before
    assert snapshot(mm_docker.mountpoint(rich), xattrs=False, acls=False) == rich_before
    # an API-made archive restores on the host path too (its sparse files were stored densely)
    engine.remove_volume(plain)
    va.restore(engine, va.RestoreOptions(by_api["archive"], dest, "api", [plain], mode="host"))
    assert snapshot(mm_docker.mountpoint(plain)) == before


def test_stop_containers_restarts_exactly_those_running(engine, mm_docker, helper_image, tmp_path):
    vol = mm_docker.volume("busy")
    populate(mm_docker.mountpoint(vol), sparse_size=1024 * 1024, extended=False)
    one = mm_docker.container("one", [vol], helper_image)
    two = mm_docker.container("two", [vol], helper_image)
    idle = mm_docker.container("idle", [vol], helper_image, running=False)
    dest = str(tmp_path / "b")

    warned = va.archive(engine, va.ArchiveOptions([vol], dest, "warn", "none", mode="host"))
    assert "in use by running containers %s-one, %s-two" % (mm_docker.prefix, mm_docker.prefix) in warned["warnings"][0]

    result = va.archive(engine, va.ArchiveOptions([vol], dest, "test", "gzip", stop_containers=True))
    names = sorted("%s-%s" % (mm_docker.prefix, n) for n in ("one", "two"))
    assert sorted(c["name"] for c in result["stopped_containers"]) == names
    assert read_metadata(result["archive"])["stopped_containers"] == names
    assert mm_docker.running(one) and mm_docker.running(two) and not mm_docker.running(idle)

    with pytest.raises(BackupError, match="in use by running containers.*%s-one, %s-two" % (mm_docker.prefix, mm_docker.prefix)):
        va.restore(engine, va.RestoreOptions(result["archive"], dest, "test"))

    # induced failure while they are stopped: the helper image does not exist
    with pytest.raises(BackupError, match="helper image mmtest-no-such-image"):
        va.archive(engine, va.ArchiveOptions([vol], dest, "fail", "gzip", mode="api", stop_containers=True, helper_image="mmtest-no-such-image"))
    assert mm_docker.running(one) and mm_docker.running(two) and not mm_docker.running(idle)
    assert [n for n in os.listdir(dest) if "_fail_" in n] == []

    with open(os.path.join(mm_docker.mountpoint(vol), "stray"), "w") as handle:
        handle.write("x")
    restored = va.restore(engine, va.RestoreOptions(result["archive"], dest, "test", stop_containers=True))
    assert sorted(c["name"] for c in restored["stopped_containers"]) == names
    assert not os.path.exists(os.path.join(mm_docker.mountpoint(vol), "stray"))
    assert mm_docker.running(one) and mm_docker.running(two) and not mm_docker.running(idle)


def _malicious(vol, target):
    d = {"type": tarfile.DIRTYPE, "mode": 0o755}
    top = ({"name": vol, **d}, None)
    return {
        "absolute": [top, ({"name": target + "/pwned"}, b"x")],
        "dotdot": [top, ({"name": vol + "/../../../../../../.." + target + "/pwned"}, b"x")],
        "outside": [top, ({"name": "mmtest-undeclared/pwned"}, b"x")],
        "hardlink-out": [top, ({"name": vol + "/h", "type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}, None)],
        "symlink-write": [top, ({"name": vol + "/a", "type": tarfile.SYMTYPE, "linkname": target}, None),
                          ({"name": vol + "/a/pwned"}, b"x")],
        "device": [top, ({"name": vol + "/null", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)],
        "link-to-symlink-write": [top, ({"name": vol + "/a", "type": tarfile.SYMTYPE, "linkname": target}, None),
                                  ({"name": vol + "/b", "type": tarfile.LNKTYPE, "linkname": vol + "/a"}, None),
                                  ({"name": vol + "/b/pwned"}, b"x")],
        "symlink-then-dir": [top, ({"name": vol + "/a", "type": tarfile.SYMTYPE, "linkname": target}, None),
                             ({"name": vol + "/a", **d}, None), ({"name": vol + "/a/pwned"}, b"x")],
    }


UNSAFE_CASES = ["absolute", "dotdot", "outside", "hardlink-out", "symlink-write", "device", "link-to-symlink-write",
                "symlink-then-dir"]


def _victim(mm_docker, tmp_path, name, case, files, size):
    """A populated volume, an outside target directory, a dest, and the metadata records a crafted archive declares."""
    vol = mm_docker.volume(name)
    mountpoint = mm_docker.mountpoint(vol)
    populate(mountpoint, sparse_size=64 * 1024, extended=False)
    target = str(tmp_path / "target")
    os.mkdir(target)
    dest = str(tmp_path / "b")
    os.mkdir(dest)
    declared = [{"name": vol, "driver": "local", "files": files, "size": size, "sha256": "0" * 64}]
    if case == "outside":
        declared.append({"name": "mmtest-undeclared-x", "driver": "local", "files": 0, "size": 0, "sha256": "0" * 64})
    return vol, mountpoint, snapshot(mountpoint), target, dest, declared


@pytest.mark.parametrize("case", UNSAFE_CASES)
def test_malicious_archives_change_nothing(engine, mm_docker, tmp_path, case):
    vol, mountpoint, before, target, dest, declared = _victim(mm_docker, tmp_path, "victim", case, 1, 1)
    path = write_backup(dest, "volumes_test_20250101_000000.tar.gz", crafted_tar(_malicious(vol, target)[case]),
                        declared, "gzip")

    for mode in ("host", "auto"):
        with pytest.raises(BackupError, match="is unsafe"):
            va.restore(engine, va.RestoreOptions(path, dest, "test", mode=mode, stop_containers=True))
    with pytest.raises(BackupError, match="is unsafe"):
        va.verify(path, dest, "test")
    assert snapshot(mountpoint) == before
    assert os.listdir(target) == []
    assert leftovers(mountpoint) == []


def test_corrupted_and_truncated_archives_are_refused(engine, mm_docker, tmp_path):
    vol = mm_docker.volume("keep")
    mountpoint = mm_docker.mountpoint(vol)
    populate(mountpoint, sparse_size=64 * 1024, extended=False)
    dest = str(tmp_path / "b")
    good = va.archive(engine, va.ArchiveOptions([vol], dest, "test", "gzip"))
    before = snapshot(mountpoint)
    with open(good["archive"], "rb") as handle:
        data = handle.read()
    meta = read_metadata(good["archive"])

    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    cases = {
        "volumes_test_20250101_000001.tar.gz": bytes(flipped),
        "volumes_test_20250101_000002.tar.gz": data[: len(data) // 2],
    }
    for name, payload in cases.items():
        # metadata that does not vouch for these bytes: refused by the checksum
        path = os.path.join(dest, name)
        with open(path, "wb") as handle:
            handle.write(payload)
        fake = dict(meta, archive=name)
        with open(path.replace(".tar.gz", "_metadata.json"), "w") as handle:
            json.dump(fake, handle)
        with pytest.raises(BackupError, match="is not a complete backup|is corrupted"):
            va.restore(engine, va.RestoreOptions(path, dest, "test"))
        # metadata recomputed for the damaged bytes: refused by the stream and content checks
        os.unlink(path.replace(".tar.gz", "_metadata.json"))
        os.unlink(path)
        raw = subprocess.run(["gzip", "-dc"], input=payload, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False).stdout
        repacked = write_backup(dest, name.replace("0000", "1000"), raw, meta["volumes"], "gzip")
        with pytest.raises(BackupError, match="damaged|truncated|does not match its metadata|differs from the archive"):
            va.restore(engine, va.RestoreOptions(repacked, dest, "test"))
        with pytest.raises(BackupError, match="damaged|truncated|does not match its metadata|differs from the archive"):
            va.restore(engine, va.RestoreOptions(write_backup(dest, name.replace("0000", "2000"), payload, meta["volumes"]), dest, "test"))
    assert snapshot(mountpoint) == before
    assert leftovers(mountpoint) == []


def _module(args):
    """docker_volume_archive run by ansible as an operator would: (exit code, the task's result)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    proc = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m",
                           "minimarket.backup.docker_volume_archive", "-a", args],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    return proc.returncode, json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


@pytest.mark.parametrize("case", ["sparse-map-without-newline", "sparse-size-not-a-number", "sparse-map-past-the-data",
                                  "gnu-format"])
def test_archive_the_parser_refuses_is_damaged_and_changes_nothing(engine, mm_docker, helper_image, tmp_path, case):
    vol = mm_docker.volume("unparsable")
    mountpoint = mm_docker.mountpoint(vol)
    populate(mountpoint, sparse_size=64 * 1024, extended=False)
    before = snapshot(mountpoint)
    user = mm_docker.container("user", [vol], helper_image)
    (tmp_path / "src").mkdir()
    data, detail, records = unparsable_sparse_archives(str(tmp_path / "src"), vol)[case]
    dest = str(tmp_path / "b")
    os.mkdir(dest)
    # the metadata vouches for these bytes: the checksum check passes, only the tar parser can find the damage
    path = write_backup(dest, "volumes_test_20250101_000000.tar.gz", data, records, "gzip")
    expected = "archive volumes_test_20250101_000000.tar.gz is truncated or damaged (%s): use another backup" % detail

    for mode in ("host", "api"):
        with pytest.raises(BackupError) as failure:
            va.restore(engine, va.RestoreOptions(path, dest, "test", mode=mode, stop_containers=True))
        assert str(failure.value) == expected
    for scratch in (None, engine):
        with pytest.raises(BackupError) as failure:
            va.verify(path, dest, "test", engine=scratch)
        assert str(failure.value) == expected
    rc, res = _module("state=restore src=%s dest=%s environment=test stop_containers=true" % (path, dest))
    assert rc != 0 and res["failed"] and res["msg"] == expected
    rc, res = _module("state=verify src=%s dest=%s environment=test" % (path, dest))
    assert rc != 0 and res["failed"] and res["msg"] == expected

    assert snapshot(mountpoint) == before
    assert leftovers(mountpoint) == []
    assert scratch_volumes(engine) == []
    assert mm_docker.running(user)


def test_module_entry_point_archive_verify_restore_check_mode(mm_docker, tmp_path):
    vol = mm_docker.volume("cli", labels=LABELS)
    mountpoint = mm_docker.mountpoint(vol)
    populate(mountpoint, sparse_size=1024 * 1024)
    before = snapshot(mountpoint)
    dest = str(tmp_path / "b")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1")

    def run(args, *extra):
        proc = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m",
                               "minimarket.backup.docker_volume_archive", "-a", args] + list(extra),
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
        out = json.loads(proc.stdout)
        return proc.returncode, out["plays"][0]["tasks"][0]["hosts"]["localhost"]

    rc, res = run("state=archive volumes=%s dest=%s environment=test" % (vol, dest), "--check")
    assert rc == 0 and res["changed"] and not os.path.exists(dest)
    rc, res = run("state=dump volumes=%s backup_dir=%s" % (vol, dest))
    assert rc != 0 and res["msg"] == ("environment not set: state=dump writes volumes_<environment>_<YYYYMMDD_HHMMSS> files "
                                      "into backup_dir; set backup_dir and environment (the inventory's "
                                      "minimarket_environment, for example production)")
    assert not os.path.exists(dest)
    rc, res = run("state=dump volumes=%s backup_dir=%s environment=test compression=zstd" % (vol, dest))
    assert rc == 0 and res["archive"].endswith(".tar.zst") and res["volumes"][0]["labels"] == LABELS
    archive = res["archive"]
    rc, res = run("state=verify dest=%s environment=test" % dest)
    assert rc == 0 and not res["changed"] and res["volumes"][0]["files"] == len(before["entries"]) - 1
    rc, res = run("state=verify src=latest backup_dir=%s" % dest)
    assert rc != 0 and res["msg"].startswith("environment not set: src=latest picks the newest complete volumes backup")
    rc, res = run("state=verify src=%s" % archive)  # the file name carries the environment: nothing else needed
    assert rc == 0 and res["archive"] == archive and res["volumes"][0]["files"] == len(before["entries"]) - 1
    rc, res = run("state=verify dest=%s environment=test scratch_restore=true" % dest)
    assert rc == 0 and res["mode"] == "host" and not [v for v in res["volumes"] if v["name"] != vol]
    with open(os.path.join(mountpoint, "stray"), "w") as handle:
        handle.write("x")
    rc, res = run("state=restore dest=%s environment=test" % dest, "--check", "--diff")
    assert rc == 0 and res["diff"]["before"] == {vol: "exists"}
    assert os.path.exists(os.path.join(mountpoint, "stray"))
    rc, res = run("state=restore src=%s" % archive)
    assert rc == 0 and res["volumes"][0]["action"] == "replaced"
    assert snapshot(mountpoint) == before
    rc, res = run("state=restore dest=%s environment=test volumes=mmtest-not-in-archive" % dest)
    assert rc != 0 and res["msg"].startswith("volumes_test_") and "does not hold volume(s) mmtest-not-in-archive" in res["msg"]


def test_tampered_file_content_with_valid_checksum_is_caught_before_the_swap(engine, mm_docker, helper_image, tmp_path):
    vol = mm_docker.volume("tamper")
    mountpoint = mm_docker.mountpoint(vol)
    populate(mountpoint, sparse_size=64 * 1024, extended=False)
    dest = str(tmp_path / "b")
    good = va.archive(engine, va.ArchiveOptions([vol], dest, "test", "none"))
    with open(good["archive"], "rb") as handle:
        raw = bytearray(handle.read())
    with tarfile.open(good["archive"]) as archive:
        target = archive.getmember(vol + "/pgdata/base.bin")
    raw[target.offset_data + 1000] ^= 0xFF  # same names, counts and sizes; different bytes
    forged = write_backup(dest, "volumes_test_20250101_000003.tar", bytes(raw), read_metadata(good["archive"])["volumes"])
    with open(os.path.join(mountpoint, "stray"), "w") as handle:
        handle.write("still here")
    before = snapshot(mountpoint)

    with pytest.raises(BackupError, match="volume %s does not match its metadata \\(sha256" % vol):
        va.verify(forged, dest, "test")
    user = mm_docker.container("user", [vol], helper_image)
    idle = mm_docker.container("idle", [vol], helper_image, running=False)
    with pytest.raises(BackupError, match="restored content of %s differs from the archive's metadata.*not changed" % vol):
        va.restore(engine, va.RestoreOptions(forged, dest, "test", mode="host", stop_containers=True))
    # the failure happened while the container was stopped: it runs again, the idle one does not
    assert mm_docker.running(user) and not mm_docker.running(idle)
    assert snapshot(mountpoint) == before
    assert leftovers(mountpoint) == []


def test_file_growing_while_read_is_a_warning_with_its_path(engine, mm_docker, tmp_path):
    vol = mm_docker.volume("grow")
    path = os.path.join(mm_docker.mountpoint(vol), "app.log")
    with open(path, "wb") as handle:
        handle.write(os.urandom(64 * 1024 * 1024))
    writer = subprocess.Popen(["sh", "-c", "while :; do echo linea >> '%s'; done" % path])
    try:
        result = va.archive(engine, va.ArchiveOptions([vol], str(tmp_path / "b"), "test", "none", mode="host"))
    finally:
        writer.kill()
        writer.wait()
    assert [w for w in result["warnings"] if "app.log: file changed as we read it" in w]
    assert read_metadata(result["archive"])["warnings"] == result["warnings"]
    verified = va.verify(result["archive"], str(tmp_path / "b"), "test")  # complete, consistent members
    assert verified["volumes"][0]["size"] >= 64 * 1024 * 1024


def test_module_fails_clearly_without_the_docker_sdk(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(bare)], check=True)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    proc = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m",
                           "minimarket.backup.docker_volume_archive", "-a", "state=verify dest=%s environment=test" % tmp_path,
                           "-e", "ansible_python_interpreter=%s" % (bare / "bin" / "python")],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    res = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert proc.returncode != 0 and res["failed"]
    assert res["msg"].startswith("the Python 'docker' SDK is not installed on the target host: install it")


def _no_prescan(monkeypatch):
    """Host-mode restore must check members in its one pass, not in a separate scan of the archive."""
    def refuse(*args, **kwargs):
        raise AssertionError("host-mode restore decompressed the archive for a separate scan")
    monkeypatch.setattr(va, "scan_archive", refuse)


@pytest.mark.parametrize("case", UNSAFE_CASES)
def test_one_pass_refuses_unsafe_member_after_tar_has_extracted_others(engine, mm_docker, tmp_path, monkeypatch, case):
    vol, mountpoint, before, target, dest, declared = _victim(mm_docker, tmp_path, "victim1", case, 4, 6 * 1024 * 1024 + 1)
    members = _malicious(vol, target)[case]
    # legitimate members first, so GNU tar is already writing into the staging directory when the unsafe one comes
    members[1:1] = [({"name": vol + "/big%d" % n}, os.urandom(2 * 1024 * 1024)) for n in range(3)]
    path = write_backup(dest, "volumes_test_20250101_000000.tar.zst", crafted_tar(members), declared, "zstd")
    _no_prescan(monkeypatch)

    with pytest.raises(BackupError, match="is unsafe"):
        va.restore(engine, va.RestoreOptions(path, dest, "test", mode="host", stop_containers=True))
    assert snapshot(mountpoint) == before
    assert os.listdir(target) == []
    assert leftovers(mountpoint) == []
    assert engine.volume("mmtest-undeclared-x") is None  # created for the restore, removed again


def test_failures_at_the_end_of_the_pass_leave_the_volume_and_no_staging(engine, mm_docker, tmp_path, monkeypatch):
    vol = mm_docker.volume("late")
    mountpoint = mm_docker.mountpoint(vol)
    populate(mountpoint, sparse_size=64 * 1024, extended=False)
    dest = str(tmp_path / "b")
    good = va.archive(engine, va.ArchiveOptions([vol], dest, "test", "gzip", mode="host"))
    with open(good["archive"], "rb") as handle:
        data = handle.read()
    with open(os.path.join(mountpoint, "stray"), "w") as handle:
        handle.write("still here")
    before = snapshot(mountpoint)
    _no_prescan(monkeypatch)

    # every member is safe and every count right; only the content digest differs: known at the very end
    records = read_metadata(good["archive"])["volumes"]
    wrong = [dict(records[0], sha256="0" * 64)]
    with open(good["archive"], "rb") as handle:
        path = write_backup(dest, "volumes_test_20250101_000004.tar", subprocess.run(
            ["gzip", "-dc"], stdin=handle, stdout=subprocess.PIPE, check=True).stdout, wrong)
    with pytest.raises(BackupError, match="restored content of %s differs from the archive's metadata.*not changed" % vol):
        va.restore(engine, va.RestoreOptions(path, dest, "test", mode="host"))
    assert snapshot(mountpoint) == before
    assert leftovers(mountpoint) == []

    # the archive changes between the checksum and the pass: what the pass reads is held to the metadata
    resolve = va.bs.resolve_source
    plain = subprocess.run(["gzip", "-dc"], input=data, stdout=subprocess.PIPE, check=True).stdout
    marker = plain.index(b"one inode, three names")
    tampered = plain[:marker] + bytes([plain[marker] ^ 1]) + plain[marker + 1:]

    def swap_file(*args, **kwargs):
        backup = resolve(*args, **kwargs)
        with open(backup.path, "wb") as handle:
            handle.write(subprocess.run(["gzip", "-1", "-c"], input=swapped_in[0], stdout=subprocess.PIPE, check=True).stdout)
        return backup
    swapped_in = [tampered]
    monkeypatch.setattr(va.bs, "resolve_source", swap_file)
    with pytest.raises(BackupError, match="restored content of %s differs from the archive's metadata.*not changed" % vol):
        va.restore(engine, va.RestoreOptions(good["archive"], dest, "test", mode="host"))
    assert snapshot(mountpoint) == before
    assert leftovers(mountpoint) == []

    # the same tar recompressed: every member and digest right, only the archive's sha256 (taken in the pass) differs
    swapped_in[0] = plain
    with open(good["archive"], "wb") as handle:
        handle.write(data)
    with pytest.raises(BackupError, match=r"^%s is corrupted: sha256 [0-9a-f]{64} does not match metadata %s; use another backup$"
                       % (os.path.basename(good["archive"]), good["sha256"])):
        va.restore(engine, va.RestoreOptions(good["archive"], dest, "test", mode="host"))
    assert snapshot(mountpoint) == before
    assert leftovers(mountpoint) == []


def test_check_restored_catches_what_the_filesystem_did_not_keep(engine, mm_docker, tmp_path, monkeypatch):
    vol = mm_docker.volume("lossy")
    mountpoint = mm_docker.mountpoint(vol)
    populate(mountpoint, sparse_size=64 * 1024, extended=True)
    dest = str(tmp_path / "b")
    va.archive(engine, va.ArchiveOptions([vol], dest, "test", "zstd", mode="host"))
    with open(os.path.join(mountpoint, "stray"), "w") as handle:
        handle.write("still here")
    before = snapshot(mountpoint)
    # a GNU tar that drops xattrs and ACLs, like a filesystem without them: the stream digest is right, the disk is not
    monkeypatch.setattr(va, "TAR_EXTRACT", [arg for arg in va.TAR_EXTRACT if not arg.startswith(("--xattrs", "--acls"))])
    with pytest.raises(BackupError, match="restored content of %s differs.*without xattr/ACL support.*not changed" % vol):
        va.restore(engine, va.RestoreOptions("latest", dest, "test", mode="host"))
    assert snapshot(mountpoint) == before
    assert leftovers(mountpoint) == []


def test_gnu_tar_dying_midway_leaves_the_volume(engine, mm_docker, tmp_path, monkeypatch):
    vol = mm_docker.volume("tardies")
    mountpoint = mm_docker.mountpoint(vol)
    populate(mountpoint, sparse_size=64 * 1024, extended=False)
    with open(os.path.join(mountpoint, "big.bin"), "wb") as handle:
        handle.write(os.urandom(4 * 1024 * 1024))  # more than a pipe buffer: tar's death is seen as a broken pipe
    dest = str(tmp_path / "b")
    va.archive(engine, va.ArchiveOptions([vol], dest, "test", "none", mode="host"))
    os.unlink(os.path.join(mountpoint, "big.bin"))
    before = snapshot(mountpoint)
    monkeypatch.setattr(va, "TAR_EXTRACT", ["sh", "-c", "head -c 100000 >/dev/null; echo tar: boom >&2; exit 3", "tar"])
    with pytest.raises(BackupError, match="GNU tar stopped while extracting into .* \\(tar: boom\\): the volumes were not changed"):
        va.restore(engine, va.RestoreOptions("latest", dest, "test", mode="host"))
    assert snapshot(mountpoint) == before
    assert leftovers(mountpoint) == []
