# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The headers GNU tar writes with ``--format=posix``, parsed at a fraction of tarfile's cost.

Archiving reads GNU tar's stream of the live volumes, and tarfile spent about
half of that reader's time on the two headers and the pax record every member
has (bench/README.md).  This parser knows exactly what ``--format=posix``
writes (ustar headers, ``x`` extended headers, GNU sparse 1.0) and gives the
same fields as tarfile for it, so the content digest does not depend on which
of them read the stream; anything else is refused, never guessed.  Archives
read back for verify and restore may come from anywhere and still go through
tarfile and the safety checks.
"""

import re
import struct
import tarfile

BLOCKSIZE = tarfile.BLOCKSIZE
# What GNU tar writes in posix format for the members a volume can hold.
MEMBER_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE,
                          tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE))
REGULAR = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE))
PAX_RECORD = re.compile(br"(\d+) ([^=]+)=")
SIGNED = struct.Struct("148b8x356b")
# name, mode, uid, gid, size, mtime, chksum, type, linkname, magic+version, uname+gname+devmajor+devminor, prefix
USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s80s155s12x")
# tarfile's number conversions of pax values (an unreadable number is 0 there too).
PAX_NUMBERS = {"mtime": float, "uid": int, "gid": int, "size": int}


def _decode(value):
    """tarfile's decoding of names and pax values where the file system encoding is UTF-8 (Python 3.7+ on Linux)."""
    return value.decode("utf-8", "surrogateescape")


def _text(field):
    """A NUL-terminated ustar text field (pax values are not: they may hold NUL bytes)."""
    end = field.find(b"\0")
    return _decode(field if end < 0 else field[:end])


def _number(field):
    """A numeric field: octal text as tarfile reads it (up to the first NUL, blanks stripped), or GNU base-256."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _padded(size):
    return -(-size // BLOCKSIZE) * BLOCKSIZE


class Member(object):
    """The fields of a tar member that the content digest and the data region use, named as in tarfile.TarInfo."""

    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime", "linkname", "pax_headers", "sparse")

    def isreg(self):
        return self.type in REGULAR

    def isdir(self):
        return self.type == tarfile.DIRTYPE

    def issym(self):
        return self.type == tarfile.SYMTYPE

    def islnk(self):
        return self.type == tarfile.LNKTYPE


def _checked(buf, offset):
    """The header block if its checksum (unsigned, or signed as some old tars wrote it) matches."""
    if len(buf) != BLOCKSIZE:
        raise EOFError("header at offset %d: truncated header" % offset)
    chksum = _number(buf[148:156])
    if chksum != 256 + sum(buf) - sum(buf[148:156]) and chksum != 256 + sum(SIGNED.unpack(buf)):
        raise EOFError("header at offset %d: bad checksum" % offset)
    return buf


def _header(buf, offset):
    """One ustar header block, checked and decoded as tarfile.TarInfo.frombuf does."""
    (name, mode, uid, gid, size, mtime, unused_chksum, kind, linkname,
     unused_magic, unused_names, prefix) = USTAR.unpack(_checked(buf, offset))
    member = Member()
    member.type = kind
    name = _text(name)
    if kind == tarfile.AREGTYPE and name.endswith("/"):
        member.type = tarfile.DIRTYPE
    if member.type == tarfile.DIRTYPE:
        name = name.rstrip("/")
    prefix = _text(prefix)
    if prefix:
        name = prefix + "/" + name
    member.name = name.rstrip("/") if member.type == tarfile.DIRTYPE else name
    member.mode = _number(mode)
    member.uid = _number(uid)
    member.gid = _number(gid)
    member.size = _number(size)
    member.mtime = _number(mtime)
    member.linkname = _text(linkname)
    member.pax_headers = {}
    member.sparse = None
    return member


def _pax_records(data, offset):
    """{keyword: value} of one extended header's data, parsed as tarfile does (the records end at the padding)."""
    found = {}
    position = 0
    while True:
        match = PAX_RECORD.match(data, position)
        if not match:
            return found
        length = int(match.group(1))
        if length == 0:
            raise EOFError("header at offset %d: invalid pax record" % offset)
        value = data[match.end(2) + 1:match.start(1) + length - 1]
        found[_decode(match.group(2))] = _decode(value)
        position += length


def _apply(member, records):
    """The pax records override the ustar fields, in the order they came (tarfile's _apply_pax_info)."""
    for keyword, value in records.items():
        if keyword == "GNU.sparse.name":
            member.name = value
        elif keyword == "GNU.sparse.realsize":
            member.size = int(value)
        elif keyword == "path":
            member.name = value.rstrip("/")
        elif keyword == "linkpath":
            member.linkname = value
        elif keyword in PAX_NUMBERS:
            try:
                setattr(member, keyword, PAX_NUMBERS[keyword](value))
            except ValueError:
                setattr(member, keyword, 0)
    member.pax_headers = records


def _sparse_map(read, offset):
    """GNU sparse 1.0: the map opens the member's data, in whole blocks; returns ([(offset, length)], bytes used)."""
    buf = read(BLOCKSIZE)
    used = BLOCKSIZE
    count, buf = buf.split(b"\n", 1)
    numbers = []
    while len(numbers) < int(count) * 2:
        if b"\n" not in buf:
            more = read(BLOCKSIZE)
            if len(more) != BLOCKSIZE:
                raise EOFError("header at offset %d: the sparse map is truncated" % offset)
            buf += more
            used += BLOCKSIZE
        number, buf = buf.split(b"\n", 1)
        numbers.append(int(number))
    return list(zip(numbers[::2], numbers[1::2])), used


def members(read):
    """Yield ``(member, data)`` for GNU tar's stream read through ``read(size)``.

    ``data`` is how many bytes follow the headers (padding included); the
    caller consumes exactly that many before asking for the next member.
    Stops at the end-of-archive block or at the clean end of the stream.
    """
    offset = 0
    while True:
        buf = read(BLOCKSIZE)
        if not buf or buf.count(0) == BLOCKSIZE:
            return
        records = None
        if buf[156:157] == tarfile.XHDTYPE:
            size = _padded(_number(_checked(buf, offset)[124:136]))
            records = _pax_records(read(size), offset)
            offset += BLOCKSIZE + size
            buf = read(BLOCKSIZE)
        member = _header(buf, offset)
        if member.type not in MEMBER_TYPES:
            raise tarfile.ReadError("header at offset %d: member type %r is not one GNU tar writes in posix format" % (
                offset, member.type))
        data = 0
        if member.isreg():
            data = _padded(int(records.get("size", member.size)) if records else member.size)
        end = offset + BLOCKSIZE + data
        if records is not None:
            if records.get("GNU.sparse.major") == "1" and records.get("GNU.sparse.minor") == "0":
                member.sparse, used = _sparse_map(read, offset)
                data -= used
            elif any(key.startswith("GNU.sparse.") for key in records):
                raise tarfile.ReadError("header at offset %d: a GNU sparse format other than 1.0" % offset)
            _apply(member, records)
        yield member, data
        offset = end
