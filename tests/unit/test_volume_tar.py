"""Pure logic of volume archives: content digests, member safety, GNU tar stderr, scanning."""
import contextlib
import io
import os
import resource
import subprocess
import tarfile
import threading

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._volume_archive import _IterReader, classify_tar_stderr, check_volume_names
from ansible_collections.minimarket.backup.plugins.module_utils._volume_tar import (
    BLOCK,
    ContentHasher,
    PipeReader,
    SafetyChecker,
    TarSink,
    TeeReader,
    extract_stream,
    scan_stream,
)
from tests.volume_fixtures import crafted_tar, unparsable_sparse_archives

ARCHIVE = "volumes_test_20250101_000000.tar"
UNPARSABLE_CASES = ["sparse-map-without-newline", "sparse-size-not-a-number", "sparse-map-past-the-data",
                    "gnu-format"]


def digest_of(*parts):
    hasher = ContentHasher()
    for kind, value in parts:
        if kind == "data":
            hasher.data(value)
        else:
            hasher.hole(value)
    return hasher.hexdigest()


def test_hole_and_written_zeros_digest_alike_at_any_alignment():
    payload = os.urandom(5000)
    for lead in (0, 1, 4096, BLOCK - 1, BLOCK, 3 * BLOCK + 17):
        dense = digest_of(("data", bytes(lead) + payload + bytes(2 * BLOCK + 5)))
        sparse = digest_of(("hole", lead), ("data", payload), ("hole", 2 * BLOCK + 5))
        chunked = digest_of(*[("data", bytes([b])) for b in (bytes(lead) + payload)[:300]],
                            ("data", (bytes(lead) + payload)[300:]), ("hole", 2 * BLOCK + 5))
        assert dense == sparse == chunked


def test_digest_depends_on_content_position_and_size():
    base = digest_of(("data", b"abc"))
    assert base != digest_of(("data", b"abd"))
    assert base != digest_of(("hole", 1), ("data", b"abc"))
    assert base != digest_of(("data", b"abc"), ("hole", 1))
    assert digest_of(("hole", 10)) != digest_of(("hole", 11))


def test_huge_hole_is_cheap():
    hasher = ContentHasher()
    hasher.hole(1 << 40)
    assert hasher.size == 1 << 40
    assert len(hasher.hexdigest()) == 64


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize("name,kind,linkname,why", [
    ("/etc/passwd", tarfile.REGTYPE, "", "absolute"),
    ("vol/../../etc/passwd", tarfile.REGTYPE, "", "'..'"),
    ("vol/./x", tarfile.REGTYPE, "", "'.'"),
    ("other/x", tarfile.REGTYPE, "", "outside the volume directories"),
    ("vol/h", tarfile.LNKTYPE, "/etc/shadow", "absolute"),
    ("vol/h", tarfile.LNKTYPE, "vol/../../etc/shadow", "'..'"),
    ("vol/h", tarfile.LNKTYPE, "vol2/file", "another volume"),
    ("vol/sda", tarfile.BLKTYPE, "", "device node"),
    ("vol/null", tarfile.CHRTYPE, "", "device node"),
    ("vol", tarfile.REGTYPE, "", "top-level entry must be a directory"),
    ("vol/x", b"Z", "", "unsupported member type"),
])
def test_unsafe_members_are_refused(name, kind, linkname, why):
    checker = SafetyChecker(["vol", "vol2"])
    checker.check(member("vol", tarfile.DIRTYPE))
    checker.check(member("vol2", tarfile.DIRTYPE))
    checker.check(member("vol2/file"))
    with pytest.raises(BackupError, match="unsafe.*%s" % why.replace("(", r"\(")):
        checker.check(member(name, kind, linkname))


def test_write_through_symlink_is_refused_even_nested():
    checker = SafetyChecker(["vol"])
    checker.check(member("vol", tarfile.DIRTYPE))
    checker.check(member("vol/a", tarfile.SYMTYPE, "/etc"))
    for name in ("vol/a/passwd", "vol/a/sub/file"):
        with pytest.raises(BackupError, match="goes through the symlink vol/a"):
            checker.check(member(name))
    checker.check(member("vol/f"))
    with pytest.raises(BackupError, match="hard-link target goes through the symlink"):
        checker.check(member("vol/h", tarfile.LNKTYPE, "vol/a/passwd"))
    with pytest.raises(BackupError, match="replaces the earlier symlink vol/a"):
        checker.check(member("vol/a", tarfile.DIRTYPE))
    # a hard link to a symlink is a symlink too
    checker.check(member("vol/alias", tarfile.LNKTYPE, "vol/a"))
    with pytest.raises(BackupError, match="goes through the symlink vol/alias"):
        checker.check(member("vol/alias/passwd"))


def test_legitimate_members_pass_and_devices_when_allowed():
    checker = SafetyChecker(["vol"], allow_devices=True)
    for info in (member("vol", tarfile.DIRTYPE), member("vol/abs", tarfile.SYMTYPE, "/etc/passwd"),
                 member("vol/up", tarfile.SYMTYPE, "../../x"), member("vol/f"), member("vol/h", tarfile.LNKTYPE, "vol/f"),
                 member("vol/fifo", tarfile.FIFOTYPE), member("vol/null", tarfile.CHRTYPE), member("vol/" + "ñ" * 75)):
        checker.check(info)


def test_scan_stream_counts_and_digests_per_volume():
    data = crafted_tar([
        ({"name": "v1", "type": tarfile.DIRTYPE, "mode": 0o700}, None),
        ({"name": "v1/a", "uid": 999, "gid": 999}, b"hello"),
        ({"name": "v1/b", "type": tarfile.LNKTYPE, "linkname": "v1/a"}, None),
        ({"name": "v2", "type": tarfile.DIRTYPE}, None),
        ({"name": "v2/c"}, b"x" * 100000),
    ])
    found = scan_stream(io.BytesIO(data), checker=SafetyChecker(["v1", "v2"]))
    assert found["v1"]["files"] == 2 and found["v1"]["size"] == 5
    assert found["v2"]["files"] == 1 and found["v2"]["size"] == 100000
    changed = data.replace(b"hello", b"hellO")
    assert scan_stream(io.BytesIO(changed))["v1"]["sha256"] != found["v1"]["sha256"]
    assert scan_stream(io.BytesIO(changed))["v2"] == found["v2"]


def test_scan_stream_reports_truncation():
    data = crafted_tar([({"name": "v1", "type": tarfile.DIRTYPE}, None), ({"name": "v1/big"}, os.urandom(200000))])
    with pytest.raises(BackupError, match="^archive %s is truncated or damaged \\(member v1/big is truncated\\)" % ARCHIVE):
        scan_stream(io.BytesIO(data[:100000]), name=ARCHIVE)


@pytest.fixture(scope="module")
def unparsable(tmp_path_factory):
    return unparsable_sparse_archives(str(tmp_path_factory.mktemp("sparse")), "vol")


@pytest.mark.parametrize("case", UNPARSABLE_CASES)
def test_any_parse_error_is_the_damaged_archive_message(unparsable, case):
    data, detail, unused = unparsable[case]
    expected = "archive %s is truncated or damaged (%s): use another backup" % (ARCHIVE, detail)
    with pytest.raises(BackupError) as scanned:
        scan_stream(io.BytesIO(data), checker=SafetyChecker(["vol"]), name=ARCHIVE)
    assert str(scanned.value) == expected
    sink = io.BytesIO()
    with pytest.raises(BackupError) as extracted:
        extract_stream(io.BytesIO(data), SafetyChecker(["vol"]), {"vol": sink}, ARCHIVE)
    assert str(extracted.value) == expected
    # only members parsed before the damage went on (the caller discards them); never the damaged one's bytes
    assert b"ventas" not in sink.getvalue()
    with piped(data) as stream, pytest.raises(BackupError) as piped_scan:
        scan_stream(PipeReader(stream), checker=SafetyChecker(["vol"]), name=ARCHIVE)
    assert str(piped_scan.value) == expected
    sent, unused, error = _forwarded(data, ["vol"], ["vol"], "pipe")
    assert str(error) == expected and b"ventas" not in sent["vol"]


def test_a_damaged_header_is_not_taken_for_the_end_of_the_archive():
    data = bytearray(crafted_tar([({"name": "v1", "type": tarfile.DIRTYPE}, None), ({"name": "v1/a"}, b"one"),
                                  ({"name": "v1/b"}, b"two")]))
    second = data.index(b"v1/b\0")  # the header of the third member
    data[second + 124:second + 136] = b"0000000000z\0"  # size field not octal; checksum made valid again
    data[second + 148:second + 156] = b" " * 8
    data[second + 148:second + 156] = b"%06o\0 " % sum(data[second:second + tarfile.BLOCKSIZE])
    with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r|") as archive:
        assert [member.name for member in archive] == ["v1", "v1/a"]  # what tarfile alone makes of it
    with pytest.raises(BackupError, match="^archive %s is truncated or damaged \\(header at offset %d: the size field b'0000000000z"
                       % (ARCHIVE, second)):
        scan_stream(io.BytesIO(bytes(data)), name=ARCHIVE)


def test_tee_reader_copies_exactly_what_gnu_tar_wrote(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "f").write_bytes(os.urandom(70000))
    raw = subprocess.run(["tar", "--format=posix", "-C", str(tmp_path), "-cf", "-", "v"], stdout=subprocess.PIPE, check=True).stdout
    sink = io.BytesIO()
    reader = TeeReader(io.BytesIO(raw), sink)
    found = scan_stream(reader)
    reader.drain()
    assert sink.getvalue() == raw
    assert found["v"]["files"] == 1 and found["v"]["size"] == 70000


def test_gnu_tar_race_messages_are_warnings_and_others_errors():
    warnings, errors = classify_tar_stderr(
        "tar: mm/_data/log.txt: file changed as we read it\n"
        "tar: mm/_data/tmp.1: File removed before we read it\n"
        "tar: mm/_data/x: Cannot open: Permission denied\n"
        "tar: Exiting with failure status due to previous errors\n"
    )
    assert [w.split(":")[0] for w in warnings] == ["mm/_data/log.txt", "mm/_data/tmp.1"]
    assert errors == ["tar: mm/_data/x: Cannot open: Permission denied"]


@pytest.mark.parametrize("names", [["ok", "../etc"], ["a"], ["ok", "ok"], [""]])
def test_bad_volume_names(names):
    with pytest.raises(BackupError):
        check_volume_names(names)


@pytest.mark.parametrize("size", [1, 512, 65536, 3000000, -1])
def test_engine_chunk_reader_returns_the_exact_stream(size):
    data = os.urandom(3 * 1024 * 1024 + 17)
    reader = _IterReader([data[i:i + 1048576] for i in range(0, len(data), 1048576)])
    parts = []
    for block in iter(lambda: reader.read(size), b""):
        parts.append(block)
        if size == 1 and len(parts) == 1000:
            parts.append(reader.read(-1))
    assert b"".join(parts) == data


def test_scanning_many_members_keeps_memory_flat():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        top = tarfile.TarInfo("v")
        top.type = tarfile.DIRTYPE
        archive.addfile(top)
        for number in range(60000):
            info = tarfile.TarInfo("v/f%06d" % number)
            info.size = 1
            archive.addfile(info, io.BytesIO(b"x"))
    data = buf.getvalue()
    del buf
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert scan_stream(io.BytesIO(data), checker=SafetyChecker(["v"]))["v"]["files"] == 60000
    # tarfile alone would keep 60000 TarInfo objects (about 60 MB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 15 * 1024


def tar_of(members):
    return crafted_tar([(dict(fields), data) for fields, data in members])


@contextlib.contextmanager
def piped(data):
    """``data`` read from a real pipe (the kernel-copy readers' path), fed by a thread."""
    read_fd, write_fd = os.pipe()

    def feed():
        with open(write_fd, "wb") as handle, contextlib.suppress(BrokenPipeError):
            handle.write(data)
    thread = threading.Thread(target=feed)
    thread.start()
    handle = open(read_fd, "rb")
    try:
        yield handle
    finally:
        handle.close()
        thread.join()


class PipeCollector(object):
    """A pipe drained by a thread: what a compressor or GNU tar reading it would receive."""

    def __init__(self):
        self._read_fd, write_fd = os.pipe()
        self.handle = open(write_fd, "wb")
        self._parts = []
        self._thread = threading.Thread(target=lambda: self._parts.extend(iter(lambda: os.read(self._read_fd, 1 << 20), b"")))
        self._thread.start()

    def tee_fd(self):
        return self.handle.fileno()

    def broken(self):
        return BackupError("the compressor stopped")

    def value(self):
        self.handle.close()
        self._thread.join()
        os.close(self._read_fd)
        return b"".join(self._parts)


def _forwarded(data, volumes, sinks_for, transport="memory"):
    """extract_stream over ``data`` from memory or from a pipe into pipes; returns ({volume: bytes forwarded}, summaries, error)."""
    if transport == "memory":
        sinks = dict((volume, io.BytesIO()) for volume in sinks_for)
        source = contextlib.nullcontext(io.BytesIO(data))
    else:
        collectors = dict((volume, PipeCollector()) for volume in sinks_for)
        sinks = dict((volume, TarSink(collector.handle)) for volume, collector in collectors.items())
        source = piped(data)
    error = None
    with source as stream:
        try:
            found = extract_stream(stream, SafetyChecker(volumes), sinks, ARCHIVE)
        except BackupError as exc:
            error, found = exc, None
    if transport == "memory":
        return dict((volume, sink.getvalue()) for volume, sink in sinks.items()), found, error
    return dict((volume, collector.value()) for volume, collector in collectors.items()), found, error


@pytest.mark.parametrize("bad", [
    ({"name": "/tmp/pwned"}, b"pwned"),
    ({"name": "v1/../../pwned"}, b"pwned"),
    ({"name": "v9/pwned"}, b"pwned"),
    ({"name": "v1/a/pwned"}, b"pwned"),
    ({"name": "v1/h", "type": tarfile.LNKTYPE, "linkname": "/etc/pwned"}, None),
    ({"name": "v1/pwned", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None),
])
@pytest.mark.parametrize("transport", ["memory", "pipe"])
def test_one_pass_forwards_nothing_of_an_unsafe_member(bad, transport):
    good = [({"name": "v1", "type": tarfile.DIRTYPE}, None), ({"name": "v1/big"}, os.urandom(3 * 1024 * 1024 + 5)),
            ({"name": "v1/a", "type": tarfile.SYMTYPE, "linkname": "/etc"}, None)]
    data = tar_of(good + [bad])
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        boundary = archive.getmembers()[-1].offset  # where the unsafe member's first header starts
    sent, found, error = _forwarded(data, ["v1"], ["v1"], transport)
    assert error is not None and "is unsafe" in str(error)
    # every checked member went on whole, in order; not one byte of the unsafe member's headers or data
    assert sent["v1"] == data[:boundary]
    assert b"pwned" not in sent["v1"]


@pytest.mark.parametrize("transport", ["memory", "pipe"])
def test_one_pass_forwards_each_volume_exactly_and_ends_the_archive_itself(tmp_path, transport):
    members = [({"name": "v1", "type": tarfile.DIRTYPE}, None), ({"name": "v1/f"}, b"one"),
               ({"name": "v2", "type": tarfile.DIRTYPE}, None), ({"name": "v2/g"}, os.urandom(200000))]
    only_v2 = tar_of(members[2:])
    data = tar_of(members) + tar_of([({"name": "v1/after-the-end"}, b"smuggled")])
    forwarded, found, error = _forwarded(data, ["v1", "v2"], ["v2"], transport)
    assert error is None
    sent = forwarded["v2"]
    assert only_v2.startswith(sent) and not only_v2[len(sent):].strip(b"\0")
    assert found["v1"]["files"] == 1 and found["v2"]["files"] == 1
    assert found["v2"]["sha256"] == scan_stream(io.BytesIO(only_v2))["v2"]["sha256"]
    assert found["v2"]["layout"] == scan_stream(io.BytesIO(only_v2), contents=False)["v2"]["sha256"]
    # what GNU tar receives is a complete archive and nothing that followed the end marker
    with open(tmp_path / "in.tar", "wb") as handle:
        sink = TarSink(handle)
        extract_stream(io.BytesIO(data), SafetyChecker(["v1", "v2"]), {"v1": sink, "v2": sink}, ARCHIVE)
        sink.close()
    assert os.path.getsize(tmp_path / "in.tar") % tarfile.RECORDSIZE == 0
    listing = subprocess.run(["tar", "-tf", str(tmp_path / "in.tar")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    assert listing.stdout.decode().split() == ["v1/", "v1/f", "v2/", "v2/g"] and listing.stderr == b""
    assert b"smuggled" not in (tmp_path / "in.tar").read_bytes()


@pytest.fixture(scope="module")
def gnu_tar(tmp_path_factory):
    """What GNU tar writes for a volume with every kind of member (sparse, hard link, symlink, many small files)."""
    root = tmp_path_factory.mktemp("gnu")
    (root / "v1" / "sub").mkdir(parents=True)
    (root / "v1" / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (root / "v1" / "sub" / "a").write_bytes(b"one inode, two names")
    os.link(root / "v1" / "sub" / "a", root / "v1" / "hard")
    os.symlink("/etc", root / "v1" / "link")
    (root / "v2").mkdir()
    with open(root / "v2" / "sparse", "wb") as handle:
        handle.truncate(5 * 1024 * 1024)
        handle.seek(2 * 1024 * 1024 + 3)
        handle.write(b"data in a hole")
    for number in range(300):
        (root / "v2" / ("f%03d" % number)).write_bytes(os.urandom(number * 97))
    return subprocess.run(["tar", "--create", "--file=-", "--format=posix", "--sparse", "-C", str(root), "v1", "v2"],
                          stdout=subprocess.PIPE, check=True).stdout


@pytest.mark.parametrize("contents", [True, False])
def test_pipe_reader_scans_like_the_portable_path_and_the_kernel_copies_every_byte(gnu_tar, contents):
    expected = scan_stream(io.BytesIO(gnu_tar), contents=contents)
    assert expected["v2"]["files"] == 301 and expected["v2"]["size"] > 5 * 1024 * 1024  # the hole counts, as on disk
    with piped(gnu_tar) as stream:
        reader = PipeReader(stream)
        assert scan_stream(reader, contents=contents) == expected
        reader.drain()
    collector = PipeCollector()
    with piped(gnu_tar + b"trailing") as stream:
        reader = PipeReader(stream, collector)
        assert scan_stream(reader, contents=contents) == expected
        reader.drain()
    assert collector.value() == gnu_tar + b"trailing"


def test_pipe_reader_names_a_dead_compressor_and_truncation(gnu_tar):
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    dead = PipeCollector()
    dead.tee_fd = lambda: write_fd
    try:
        with piped(gnu_tar) as stream, pytest.raises(BackupError, match="^the compressor stopped$"):
            scan_stream(PipeReader(stream, dead))
    finally:
        os.close(write_fd)
        dead.value()
    with piped(gnu_tar[:2000000]) as stream, pytest.raises(BackupError, match="^archive %s is truncated or damaged \\(member v1/big is truncated\\)" % ARCHIVE):
        scan_stream(PipeReader(stream), name=ARCHIVE)


def test_one_pass_from_a_pipe_forwards_gnu_tar_streams_exactly(gnu_tar):
    expected, found, error = _forwarded(gnu_tar, ["v1", "v2"], ["v1", "v2"], "memory")
    assert error is None
    sent, found_piped, error = _forwarded(gnu_tar, ["v1", "v2"], ["v1", "v2"], "pipe")
    assert error is None and found_piped == found and sent == expected
    assert found["v2"]["sha256"] == scan_stream(io.BytesIO(gnu_tar))["v2"]["sha256"]
