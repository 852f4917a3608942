# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tar headers this module writes (POSIX pax), parsed strictly and at a fraction of tarfile's cost.

Every archive is POSIX pax: GNU tar ``--format=posix`` in host mode, tarfile's
pax writer in API mode.  This parser reads exactly that (ustar headers with the
POSIX magic, one ``x`` extended header before a member, GNU sparse 1.0) and
gives the same fields as tarfile, so a content digest does not depend on which
of them read a stream; it spent about half of the reader's time on the headers
(bench/README.md).  Anything else is refused, never guessed: restore forwards
the bytes it parsed to GNU tar, so every number that decides where a member
ends (sizes, the sparse map) must read the same to both, and GNU tar skips a
malformed pax number with only an error message where tarfile's int() takes
``1_2`` or ``+12``.
"""

import re
import struct
import tarfile

BLOCKSIZE = tarfile.BLOCKSIZE
# The member types of a volume (what GNU tar --format=posix and tarfile's pax writer write for them).
MEMBER_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE,
                          tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE))
REGULAR = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE))
POSIX_MAGIC = tarfile.POSIX_MAGIC  # "ustar\0" and version "00"
OCTAL = re.compile(br" *([0-7]*) *")
# Read whole into memory: names, link targets, xattrs and ACLs fit many times over; a hostile size must not exhaust it.
MAX_PAX = 16 * 1024 * 1024
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


def _size(field, offset):
    """A size field, which frames the stream: octal digits only (or positive GNU base-256), else the header is damaged."""
    if field[0] == 0o200:
        return _number(field)
    match = OCTAL.fullmatch(field.split(b"\0", 1)[0])
    if match is None:
        raise EOFError("header at offset %d: the size field %r is not an octal number" % (offset, bytes(field)))
    return int(match.group(1) or b"0", 8)


def _decimal(text, what, offset):
    """A decimal number of a pax record or the sparse map: ASCII digits only."""
    if not (text.isascii() and text.isdigit()):
        raise EOFError("header at offset %d: %s %r is not a decimal number" % (offset, what, text))
    return int(text)


def _padded(size):
    return -(-size // BLOCKSIZE) * BLOCKSIZE


class Member(object):
    """The fields of a tar member that the content digest and the data region use, named as in tarfile.TarInfo."""

    __slots__ = ("name", "type", "mode", "uid", "gid", "size", "mtime", "linkname", "pax_headers", "sparse")

    def isreg(self):
        return self.type in REGULAR

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
    if buf[257:265] != POSIX_MAGIC:
        raise EOFError("header at offset %d: not a POSIX (pax) tar header, magic %r" % (offset, bytes(buf[257:265])))
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
    member.size = _size(size, offset)
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


def _apply(member, records, offset):
    """The pax records override the ustar fields, in the order they came (tarfile's _apply_pax_info)."""
    for keyword, value in records.items():
        if keyword == "GNU.sparse.name":
            member.name = value
        elif keyword == "GNU.sparse.realsize":
            member.size = _decimal(value, keyword, offset)
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
    count = _decimal(count.decode("ascii", "replace"), "the sparse map's count", offset)
    numbers = []
    while len(numbers) < count * 2:
        if b"\n" not in buf:
            more = read(BLOCKSIZE)
            if len(more) != BLOCKSIZE:
                raise EOFError("header at offset %d: the sparse map is truncated" % offset)
            buf += more
            used += BLOCKSIZE
        number, buf = buf.split(b"\n", 1)
        numbers.append(_decimal(number.decode("ascii", "replace"), "a sparse map entry", offset))
    return list(zip(numbers[::2], numbers[1::2])), used


def _check_sparse(member, stored, offset):
    """The map must describe exactly the stored bytes, in order, inside the file: GNU tar reads the data by it."""
    position = 0
    for start, length in member.sparse:
        if start < position or start + length > member.size:
            raise EOFError("header at offset %d: the sparse map of %s is out of order or past the file's size" % (offset, member.name))
        position = start + length
    if sum(length for unused, length in member.sparse) != stored:
        raise EOFError("header at offset %d: the sparse map of %s does not add up to its stored data" % (offset, member.name))


def members(read):
    """Yield ``(member, data)`` for a POSIX tar stream read through ``read(size)``.

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
            size = _padded(_size(_checked(buf, offset)[124:136], offset))
            if size > MAX_PAX:
                raise EOFError("header at offset %d: a pax header of %d bytes, more than any member needs" % (offset, size))
            records = _pax_records(read(size), offset)
            offset += BLOCKSIZE + size
            buf = read(BLOCKSIZE)
        member = _header(buf, offset)
        if member.type not in MEMBER_TYPES:
            raise tarfile.ReadError("header at offset %d: member type %r is not one this module writes" % (
                offset, member.type))
        size = _decimal(records["size"], "the pax size", offset) if records and "size" in records else member.size
        if not member.isreg() and size:
            raise EOFError("header at offset %d: a %r member with %d bytes of data" % (offset, member.type, size))
        data = _padded(size)
        end = offset + BLOCKSIZE + data
        if records is not None:
            sparse = records.get("GNU.sparse.major") == "1" and records.get("GNU.sparse.minor") == "0"
            if sparse:
                member.sparse, used = _sparse_map(read, offset)
                data -= used
            elif any(key.startswith("GNU.sparse.") for key in records):
                raise tarfile.ReadError("header at offset %d: a GNU sparse format other than 1.0" % offset)
            _apply(member, records, offset)
            if sparse:
                _check_sparse(member, size - used, offset)
        yield member, data
        offset = end
