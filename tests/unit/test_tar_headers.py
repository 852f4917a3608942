"""The header parser gives tarfile's fields for everything GNU tar writes from a volume, and refuses what this module never writes."""
import io
import os
import subprocess
import tarfile

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._tar_headers import members
from ansible_collections.minimarket.backup.plugins.module_utils._volume_archive import host_create_command
from ansible_collections.minimarket.backup.plugins.module_utils._volume_tar import PipeReader, SafetyChecker, extract_stream, scan_stream
from tests.unit.test_volume_tar import piped
from tests.volume_fixtures import populate, with_checksum

FIELDS = ("name", "type", "mode", "uid", "gid", "mtime", "size", "linkname", "pax_headers", "sparse")


def _odd_members(root):
    """What the shop's volumes could hold beyond populate(): names and numbers that need pax records."""
    odd = os.path.join(root, "odd")
    os.mkdir(odd)
    deep = os.path.join(odd, *(["carpeta-con-nombre-largo-%02d" % depth for depth in range(12)]))
    os.makedirs(deep)
    with open(os.path.join(deep, "x" * 200), "wb") as handle:
        handle.write(b"past 255 bytes of path")
    os.symlink("t" * 180, os.path.join(odd, "long-target"))
    for name in (b"\xff\xfe-not-utf8", "línea\nnueva=igual".encode("utf-8"), b"trailing space "):
        with open(os.path.join(odd.encode(), name), "wb") as handle:
            handle.write(name)
    for name, size in (("empty", 0), ("one-block", 512), ("block-and-one", 513)):
        with open(os.path.join(odd, name), "wb") as handle:
            handle.write(os.urandom(size))
    big_ids = os.path.join(odd, "big-ids")
    with open(big_ids, "wb") as handle:
        handle.write(b"uid and gid past ustar's 7 octal digits")
    os.chown(big_ids, 4000000, 3000000)
    os.utime(os.path.join(odd, "empty"), ns=(-1500000000, -1500000000))
    os.utime(os.path.join(odd, "one-block"), ns=(2 ** 34 * 10 ** 9 + 5, 2 ** 34 * 10 ** 9 + 5))
    os.mknod(os.path.join(odd, "null"), 0o600 | 0o020000, os.makedev(1, 3))
    holes = os.path.join(odd, "many-holes")
    with open(holes, "wb") as handle:
        for number in range(80):  # a sparse map longer than one block
            handle.seek(number * 128 * 1024)
            handle.write(b"%d" % number)
        handle.truncate(81 * 128 * 1024)


@pytest.fixture(scope="module")
def volume_stream(tmp_path_factory):
    """GNU tar's stream of a volume with every kind of member, written by the module's own tar command."""
    root = tmp_path_factory.mktemp("headers")
    os.mkdir(root / "vol")
    populate(str(root / "vol"), sparse_size=64 * 1024 * 1024)
    _odd_members(str(root / "vol"))
    command = host_create_command([(str(root), "vol")], transform=False)
    return subprocess.run(command, stdout=subprocess.PIPE, check=True).stdout


def _fields(member):
    return dict((field, getattr(member, field)) for field in FIELDS)


def test_every_member_gnu_tar_writes_parses_as_tarfile_parses_it(volume_stream):
    expected = []
    with tarfile.open(fileobj=io.BytesIO(volume_stream), mode="r|") as archive:
        for member in archive:
            data = archive.fileobj.read(archive.offset - archive.fileobj.tell())
            expected.append((_fields(member), data[:member.size] if member.sparse is None else data))
    stream = io.BytesIO(volume_stream)
    found = [(_fields(member), stream.read(data)) for member, data in members(stream.read)]
    assert [fields["name"] for fields, data in found] == [fields["name"] for fields, data in expected]
    for (fields, data), (want_fields, want_data) in zip(found, expected):
        assert fields == want_fields
        assert data[:len(want_data)] == want_data
    names = set(fields["name"] for fields, data in found)
    assert {"vol/odd/\udcff\udcfe-not-utf8", "vol/odd/línea\nnueva=igual", "vol/sparse.img", "vol/odd/null"} <= names
    sparse = [fields for fields, data in found if fields["name"] == "vol/odd/many-holes"][0]
    assert len(sparse["sparse"]) > 40 and sparse["size"] == 81 * 128 * 1024


@pytest.mark.parametrize("contents", [True, False])
def test_volume_digests_from_the_pipe_equal_tarfiles(volume_stream, contents):
    expected = scan_stream(io.BytesIO(volume_stream), contents=contents)
    with piped(volume_stream) as stream:
        reader = PipeReader(stream)
        assert scan_stream(reader, contents=contents) == expected
        reader.drain()


def _gnu_format(name):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(tarfile.TarInfo(name))
    return out.getvalue()


def _sparse_01():
    out = io.BytesIO()
    member = tarfile.TarInfo("vol/f")
    member.pax_headers = {"GNU.sparse.map": "0,0", "GNU.sparse.size": "0"}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(member)
    return out.getvalue()


def _global_header():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x"}) as archive:
        archive.addfile(tarfile.TarInfo("vol/f"))
    return out.getvalue()


def _pax(name, pax_headers, data=None, kind=tarfile.REGTYPE):
    out = io.BytesIO()
    member = tarfile.TarInfo(name)
    member.type = kind
    member.pax_headers = pax_headers
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        if data is None:
            archive.addfile(member)
        else:
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return out.getvalue()


def _negative_size():
    data = bytearray(_pax("vol/f", {}, b"x"))
    data[0:512] = with_checksum(bytes(data[0:124]) + b"\xff" * 12 + bytes(data[136:512]))
    return bytes(data)


def _huge_pax_header():
    data = bytearray(_pax("vol/f", {"comment": "x"}))
    data[0:512] = with_checksum(bytes(data[0:124]) + b"77777777777\0" + bytes(data[136:512]))
    return bytes(data)


@pytest.mark.parametrize("stream, why", [
    (_gnu_format("vol/" + "n" * 120), r"header at offset 0: not a POSIX \(pax\) tar header, magic b'ustar  \\x00'"),
    (_global_header(), r"header at offset 0: member type b'g' is not one this module writes"),
    (_sparse_01(), r"header at offset 1024: a GNU sparse format other than 1.0"),
    # GNU tar skips a pax number it cannot read (with an error message) and frames by the ustar size instead
    (_pax("vol/f", {"size": "1_0"}, b"0123456789"), r"header at offset 1024: the pax size '1_0' is not a decimal number"),
    (_pax("vol/f", {"size": "+10"}, b"0123456789"), r"header at offset 1024: the pax size '\+10' is not a decimal number"),
    # data after a symlink: GNU tar and tarfile need not agree where the next header starts
    (_pax("vol/l", {"size": "512"}, kind=tarfile.SYMTYPE), r"header at offset 1024: a b'2' member with 512 bytes of data"),
    (_huge_pax_header(), r"header at offset 0: a pax header of 8589934592 bytes, more than any member needs"),
    (_negative_size(), r"header at offset 0: the size field b'\\xff.*' is not an octal number"),
])
def test_what_this_module_never_writes_is_refused(stream, why):
    with piped(stream) as pipe, pytest.raises(BackupError, match=r"^the tar stream read from the volumes cannot be parsed \(%s\)" % why):
        scan_stream(PipeReader(pipe))
    with pytest.raises(BackupError, match=r"^archive a.tar is truncated or damaged \(%s\)" % why):
        extract_stream(io.BytesIO(stream), SafetyChecker(["vol"]), {}, "a.tar")


def test_a_bad_checksum_names_its_offset(volume_stream):
    damaged = bytearray(volume_stream)
    damaged[1024 + 100] ^= 1  # the mode field of the first member's ustar header, after its pax header
    with piped(bytes(damaged)) as pipe, pytest.raises(BackupError, match=r"cannot be parsed \(header at offset 1024: bad checksum\)"):
        scan_stream(PipeReader(pipe))
