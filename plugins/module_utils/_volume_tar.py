# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tar side of volume archives: content digests and member safety checks.

A volume archive is one POSIX (pax) tar stream holding one top-level directory
per volume.  Whatever produced it (GNU tar on the host, or the Engine archive
API), the same *content digest* describes each volume, so archive, verify and
restore can compare what they hold without trusting the producer.

Content digest of a volume: sha256 over one record per member, in archive
order (both producers walk name-sorted, depth first).  A record is
``path NUL type NUL mode NUL uid NUL gid NUL mtime NUL size NUL target NUL
xattrs NUL acl`` where ``target`` is the symlink or hard-link target, or the
canonical digest of a regular file's content.  The canonical content digest
splits the file at absolute 64 KiB boundaries and hashes only the blocks that
are not all zeros (plus the lengths of the zero runs), so a sparse hole and a
run of written zeros give the same digest, and a 2 GiB hole costs nothing.

``_tar_headers`` (everything this module wrote) and ``tarfile`` (the Engine
archive API's stream) only *parse*; every safety decision is made here,
because this Python's ``tarfile`` filters predate the 2025 bypass fixes.
"""

import collections
import ctypes
import errno
import hashlib
import os
import stat
import tarfile

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import TAR_PARSE_ERRORS, damaged_archive
from ansible_collections.minimarket.backup.plugins.module_utils._process import libc_function, widen_pipe
from ansible_collections.minimarket.backup.plugins.module_utils._tar_headers import members

BLOCK = 64 * 1024
ZERO_BLOCK = bytes(BLOCK)
READ = 1024 * 1024
# tarfile's stream buffer is re-sliced on every header read: a small one keeps that cheap (1 MiB is 2x slower).
STREAM_BUFFER = 64 * 1024

TYPE_NAMES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CHRTYPE: "chardev",
    tarfile.BLKTYPE: "blockdev",
}
ACL_KEYS = ("SCHILY.acl.access", "SCHILY.acl.default")
XATTR_PREFIX = "SCHILY.xattr."
# ACLs travel as SCHILY.acl.* text; their binary xattr twins would duplicate them.
SKIPPED_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")
# A header tarfile cannot parse: past the first one tarfile ends the archive quietly (StrictTarInfo).
HEADER_DAMAGE = (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError)


class StrictTarInfo(tarfile.TarInfo):
    """tarfile ends an archive quietly at a header it cannot parse past the first; here that header is damage.

    A zero block (the end-of-archive marker) and a clean end of the stream
    still end the archive.
    """

    @classmethod
    def fromtarfile(cls, tarfile):
        try:
            return super(StrictTarInfo, cls).fromtarfile(tarfile)
        except HEADER_DAMAGE as exc:
            raise EOFError("header at offset %d: %s" % (tarfile.offset, exc))


class ContentHasher(object):
    """Canonical digest of a file's logical bytes, fed as data and holes in order."""

    def __init__(self):
        self._digest = hashlib.sha256()
        self._buf = bytearray()
        self._zero_blocks = 0
        self.size = 0

    def _block(self, block):
        if ZERO_BLOCK.startswith(block):
            self._zero_blocks += 1
            return
        if self._zero_blocks:
            self._digest.update(b"Z%d;" % self._zero_blocks)
            self._zero_blocks = 0
        self._digest.update(b"D%d;" % len(block))
        self._digest.update(block)

    def data(self, data):
        self.size += len(data)
        if self._buf:
            need = BLOCK - len(self._buf)
            self._buf += data[:need]
            data = data[need:]
            if len(self._buf) < BLOCK:
                return
            self._block(bytes(self._buf))
            self._buf = bytearray()
        view = memoryview(data)
        whole = len(view) - len(view) % BLOCK
        for start in range(0, whole, BLOCK):
            self._block(view[start:start + BLOCK])
        self._buf += view[whole:]

    def hole(self, length):
        if length <= 0:
            return
        if self._buf:
            fill = min(length, BLOCK - len(self._buf))
            self.data(bytes(fill))
            length -= fill
        if length >= BLOCK:
            self._zero_blocks += length // BLOCK
            self.size += length - length % BLOCK
            length %= BLOCK
        if length:
            self.data(bytes(length))

    def hexdigest(self):
        if self._buf:
            self._block(bytes(self._buf))
            self._buf = bytearray()
        if self._zero_blocks:
            self._digest.update(b"Z%d;" % self._zero_blocks)
            self._zero_blocks = 0
        self._digest.update(b"S%d" % self.size)
        return self._digest.hexdigest()


def _xattr_record(member):
    items = []
    for key in sorted(member.pax_headers):
        if key.startswith(XATTR_PREFIX) and key[len(XATTR_PREFIX):] not in SKIPPED_XATTRS:
            value = member.pax_headers[key].encode("utf-8", "surrogateescape")
            items.append("%s=%s" % (key[len(XATTR_PREFIX):], value.hex()))
    return ",".join(items)


def member_record(member, target):
    acl = "|".join(member.pax_headers.get(key, "").strip() for key in ACL_KEYS)
    return "\0".join((
        member.name,
        TYPE_NAMES.get(member.type, "other"),
        "%o" % (member.mode & 0o7777),
        str(member.uid),
        str(member.gid),
        str(int(member.mtime)),
        str(member.size if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) else 0),
        target,
        _xattr_record(member),
        acl,
    )).encode("utf-8", "surrogateescape") + b"\n"


def volume_of(name):
    return name.split("/", 1)[0]


class VolumeDigest(object):
    """Running totals for one volume: members, regular-file bytes, content digest.

    ``layout=True`` also keeps the digest a content-less scan
    (``scan_stream(contents=False)``) of the same tree gives: restore compares
    it with what landed on disk without hashing the data twice.
    """

    def __init__(self, name, layout=False):
        self.name = name
        self.files = 0
        self.size = 0
        self._digest = hashlib.sha256()
        self._layout = hashlib.sha256() if layout else None

    def add(self, member, content_digest=None):
        if member.islnk() or member.issym():
            target = member.linkname
        else:
            target = content_digest or ""
        self._digest.update(member_record(member, target))
        if self._layout is not None:
            self._layout.update(member_record(member, member.linkname if member.islnk() or member.issym() else ""))
        if member.name != self.name:
            self.files += 1
        if member.isreg():
            self.size += member.size

    def summary(self):
        found = {"files": self.files, "size": self.size, "sha256": self._digest.hexdigest()}
        if self._layout is not None:
            found["layout"] = self._layout.hexdigest()
        return found


class SafetyChecker(object):
    """Refuses, member by member, anything that could write outside the declared volumes.

    Only symlink names are remembered (memory stays flat for millions of
    files): archives are always extracted into empty directories, so a hard
    link can only reach a member extracted before it.
    """

    def __init__(self, volumes, allow_devices=False):
        self.volumes = set(volumes)
        self.allow_devices = allow_devices
        self._symlinks = set()

    def _refuse(self, member, why):
        raise BackupError(
            "archive member %r is unsafe (%s): refusing to restore anything; the archive was not made by this "
            "module or was tampered with, use another backup" % (member.name, why)
        )

    def _check_path(self, member, path, what):
        if path.startswith("/"):
            self._refuse(member, "%s is an absolute path" % what)
        parts = path.split("/")
        if any(part in ("", ".", "..") for part in parts):
            self._refuse(member, "%s has an empty, '.' or '..' component" % what)
        if parts[0] not in self.volumes:
            self._refuse(member, "%s is outside the volume directories %s" % (what, ", ".join(sorted(self.volumes))))
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in self._symlinks:
                self._refuse(member, "%s goes through the symlink %s" % (what, "/".join(parts[:depth])))
        return parts

    def check(self, member):
        name = member.name
        if "\0" in name or "\0" in member.linkname:
            self._refuse(member, "NUL byte in a name")
        parts = self._check_path(member, name, "its name")
        kind = TYPE_NAMES.get(member.type)
        if kind is None:
            self._refuse(member, "unsupported member type %r" % member.type)
        if kind in ("chardev", "blockdev") and not self.allow_devices:
            self._refuse(member, "device node; set allow_devices=true if the volume really holds devices")
        if len(parts) == 1 and kind != "dir":
            self._refuse(member, "a volume's top-level entry must be a directory")
        if kind == "hardlink":
            target = self._check_path(member, member.linkname, "its hard-link target")
            if target[0] != parts[0]:
                self._refuse(member, "hard-link target is in another volume")
        if name in self._symlinks:
            self._refuse(member, "it replaces the earlier symlink %s" % name)
        if kind == "symlink" or (kind == "hardlink" and member.linkname in self._symlinks):
            self._symlinks.add(name)


_TEE = libc_function("tee", (ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint), ctypes.c_ssize_t)


def is_pipe(handle):
    """Whether ``handle`` is a pipe the kernel-copy readers can take over (else the portable path is used).

    Callers pass handles nothing has read yet: a buffered reader's buffer would be skipped.
    """
    try:
        fd = handle.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if _TEE is None or not hasattr(os, "splice"):
        return False
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def kernel_tee(source, target, size):
    """Copy up to ``size`` bytes waiting in pipe ``source`` into pipe ``target`` without consuming them; 0 at end of stream."""
    while True:
        copied = _TEE(source, target, size, 0)
        if copied >= 0:
            return copied
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


def _read_into(fd, view):
    """Fill ``view`` from ``fd``; fewer bytes only at the end of the stream."""
    done = 0
    while done < len(view):
        got = os.readv(fd, [view[done:]])
        if not got:
            break
        done += got
    return done


class PipeReader(object):
    """Reads a pipe into one reusable buffer: one copy per byte, none for data nobody needs.

    The header parser reads through ``read``; member data goes through ``view``
    (memoryviews of the buffer, valid until the next call) or ``skip``
    (spliced to /dev/null).  With ``copy_to`` (a sink with ``tee_fd`` and
    ``broken``), the kernel first copies every byte into that sink's pipe
    (tee(2)): archiving, the compressor gets GNU tar's stream without Python
    writing it.
    """

    def __init__(self, handle, copy_to=None):
        self.fd = handle.fileno()
        self.copy_to = copy_to
        self._buffer = bytearray(READ)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0
        widen_pipe(self.fd)

    def _fill(self):
        size = READ
        if self.copy_to is not None:
            try:
                size = kernel_tee(self.fd, self.copy_to.tee_fd(), READ)
            except BrokenPipeError:
                raise self.copy_to.broken()
            if not size:
                return False
        self._start, self._end = 0, _read_into(self.fd, self._view[:size]) if self.copy_to is not None else os.readv(self.fd, [self._view])
        return self._end > 0

    def view(self, size):
        if self._start == self._end and not self._fill():
            return b""
        take = min(size, self._end - self._start)
        self._start += take
        return self._view[self._start - take:self._start]

    def read(self, size=-1):
        parts = []
        while size:
            block = self.view(READ if size < 0 else size)
            if not block:
                break
            parts.append(bytes(block))
            if size > 0:
                size -= len(block)
        return b"".join(parts)

    def skip(self, size):
        """Consume ``size`` bytes; returns how many there were."""
        left = size
        while left:
            if self._start == self._end and self.copy_to is None:
                moved = _splice_to_null(self.fd, left)
            else:
                moved = len(self.view(left))
            if not moved:
                break
            left -= moved
        return size - left

    def drain(self):
        while self.skip(READ):
            pass


def _splice_to_null(fd, size):
    """Drop up to ``size`` bytes of pipe ``fd`` inside the kernel; 0 at the end of the stream."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        return os.splice(fd, null, size)
    finally:
        os.close(null)


class GatedPipe(object):
    """Restore's reader of a decompressed pipe: headers are held until checked, data goes to its sink by tee(2).

    The header parser reads exactly the header blocks, so nothing past the
    current header is ever read; ``release`` writes the checked member's held
    headers to its sink, then ``view`` has the kernel copy the member's data into the sink's
    pipe before reading it once for the content digest.
    """

    def __init__(self, handle):
        self.fd = handle.fileno()
        self._held = []
        self._sink = None
        self._buffer = bytearray(READ)
        self._view = memoryview(self._buffer)
        widen_pipe(self.fd)

    def read(self, size=-1):
        if size < 0:
            raise ValueError("GatedPipe reads whole blocks only")
        data = bytearray(size)
        got = _read_into(self.fd, memoryview(data))
        data = bytes(data[:got])
        self._held.append(data)
        return data

    def release(self, unused_data, sink):
        """The held headers go to ``sink`` (None: dropped); the member's data follows them there."""
        if sink is not None:
            for data in self._held:
                sink.write(data)
        self._held = []
        self._sink = sink

    def view(self, size):
        size = min(size, READ)
        if self._sink is not None:
            size = self._sink.tee_from(self.fd, size)
            if not size:
                return b""
        return self._view[:_read_into(self.fd, self._view[:size])]

    def skip(self, size):
        left = size
        while left:
            moved = len(self.view(left)) if self._sink is not None else _splice_to_null(self.fd, min(left, READ))
            if not moved:
                break
            left -= moved
        return size - left

    def drain(self):
        """What follows the end-of-archive marker is never forwarded."""
        self._held = []
        self._sink = None
        while self.skip(READ):
            pass


class _BlockReader(object):
    """``view`` and ``skip`` over ``read``: member data for readers of file objects (no kernel copies)."""

    def view(self, size):
        return memoryview(self.read(min(size, READ)))

    def skip(self, size):
        left = size
        while left:
            got = len(self.read(min(left, READ)))
            if not got:
                break
            left -= got
        return size - left


class TeeReader(_BlockReader):
    """File-like reader that copies every byte it returns to ``sink`` (archive in one pass); the portable PipeReader."""

    def __init__(self, source, sink=None):
        self.source = source
        self.sink = sink

    def read(self, size=-1):
        data = self.source.read(size)
        if data and self.sink is not None:
            self.sink.write(data)
        return data

    def drain(self):
        for block in iter(lambda: self.read(READ), b""):
            pass


def scan_stream(reader, volumes=None, checker=None, on_member=None, contents=True, name=None):
    """Parse a tar stream; returns {volume: summary}.  Raises BackupError on damage or unsafe members.

    ``volumes`` restricts which top-level directories may appear; ``on_member``
    lets callers copy members (API mode) while the digest is computed;
    ``contents=False`` skips hashing file data (the digest is then meaningless).
    ``name`` is the archive's file name; None when the stream comes straight
    from the volumes (archiving, or reading a restore back).  What this module
    wrote (GNU tar's posix stream, or tarfile's pax rewrite of the Engine's)
    is read by _tar_headers; only the Engine's own stream (``on_member``),
    which may use any tar dialect, goes through tarfile.
    """
    digests = {}
    try:
        if on_member is not None:
            found = _engine_members(reader, on_member)
        else:
            found = _members(reader if isinstance(reader, (PipeReader, TeeReader)) else TeeReader(reader), checker, contents)
        for member, content in found:
            volume = volume_of(member.name)
            if volumes is not None and volume not in volumes:
                raise BackupError("archive holds %r, which is not a listed volume" % volume)
            if volume not in digests:
                digests[volume] = VolumeDigest(volume)
            digests[volume].add(member, content)
    except TAR_PARSE_ERRORS + (OSError,) as exc:
        if name is None:
            raise BackupError("the tar stream read from the volumes cannot be parsed (%s): nothing was written; run again" % exc)
        raise damaged_archive(name, exc)
    return dict((volume, digest.summary()) for volume, digest in digests.items())


def _members(gate, checker, contents):
    """(member, content digest) of a posix stream; each member checked by ``checker`` before its data is read."""
    for member, data in members(gate.read):
        if checker is not None:
            checker.check(member)
        hasher = ContentHasher() if member.isreg() and contents else None
        yield member, _DataRegion(gate, data).pass_through(member, hasher)


def _engine_members(reader, on_member):
    """(member, what ``on_member`` returns) of the Engine archive API's stream, parsed by tarfile."""
    archive = tarfile.open(fileobj=reader, mode="r|", bufsize=STREAM_BUFFER, tarinfo=StrictTarInfo)
    for member in archive:
        yield member, on_member(archive, member)
        # tarfile keeps every TarInfo it has seen: forget them so memory stays flat at any file count.
        del archive.members[:]


class GatedReader(_BlockReader):
    """Restore's reader of any other stream: passes on only the bytes of members already checked.

    A member's headers must be read before they can be checked, so the bytes
    read past the last release wait here (one member's headers); released
    ranges go to their sink as memoryviews, without copies.
    """

    def __init__(self, source):
        self.source = source
        self._pending = collections.deque()
        self._offset = 0
        self._taken = 0
        self._limit = 0
        self._sink = None

    def read(self, size=-1):
        data = self.source.read(size)
        if data:
            self._taken += len(data)
            self._pending.append(memoryview(data))
            self._flush()
        return data

    def release(self, data, sink):
        """The headers read so far and the ``data`` bytes that follow them go to ``sink`` (None: dropped)."""
        self._limit = self._taken + data
        self._sink = sink
        self._flush()

    def _flush(self):
        while self._pending and self._offset < self._limit:
            chunk = self._pending[0]
            take = min(len(chunk), self._limit - self._offset)
            if self._sink is not None:
                self._sink.write(chunk[:take])
            self._offset += take
            if take == len(chunk):
                self._pending.popleft()
            else:
                self._pending[0] = chunk[take:]

    def drain(self):
        """Read what follows the end-of-archive marker (so the archive is hashed whole) and drop it."""
        self._pending.clear()
        for block in iter(lambda: self.source.read(READ), b""):
            pass


class TarSink(object):
    """GNU tar's stdin: checked members, then an end-of-archive marker of our own.

    Whatever followed the end of the archive is never forwarded, so tar cannot
    be made to read past what Python parsed.
    """

    def __init__(self, handle):
        self.handle = handle
        self.written = 0
        self.broken = False

    def write(self, data):
        try:
            self.handle.write(data)
        except BrokenPipeError:
            self.broken = True
            raise
        self.written += len(data)

    def tee_from(self, fd, size):
        """The kernel copies up to ``size`` bytes waiting in pipe ``fd`` to tar (GatedPipe); returns how many."""
        try:
            self.handle.flush()
            copied = kernel_tee(fd, self.handle.fileno(), size)
        except BrokenPipeError:
            self.broken = True
            raise
        self.written += copied
        return copied

    def close(self):
        end = 2 * tarfile.BLOCKSIZE
        end += -(self.written + end) % tarfile.RECORDSIZE
        self.write(bytes(end))
        try:
            self.handle.close()
        except BrokenPipeError:
            self.broken = True
            raise


class _DataRegion(object):
    """A member's data region (``left`` bytes, padding included), read past the parser straight from the gate."""

    def __init__(self, gate, left):
        self.gate = gate
        self.left = left

    def read(self, size):
        size = min(size, self.left)
        if not size:
            return b""
        data = self.gate.view(size)
        self.left -= len(data)
        return data

    def pass_through(self, member, hasher=None):
        """Read the whole region; ``hasher`` gets the logical content (holes of sparse members included)."""
        position = 0
        if hasher is not None:
            for offset, length in member.sparse if member.sparse is not None else [(0, member.size)]:
                hasher.hole(offset - position)
                remaining = length
                while remaining:
                    block = self.read(min(READ, remaining))
                    if not block:
                        break
                    hasher.data(block)
                    remaining -= len(block)
                position = offset + length
            hasher.hole(member.size - position)
        if self.left:
            self.left -= self.gate.skip(self.left)
            if self.left:
                raise EOFError("member %s is truncated" % member.name)
        if hasher is not None:
            return hasher.hexdigest()
        return None


def extract_stream(source, checker, sinks, name):
    """Restore in one pass: check each member, then forward its bytes to ``sinks[volume]``.

    A member reaches its sink only after its headers passed ``checker``: an
    unsafe member raises with nothing of it forwarded.  Members of volumes
    without a sink are checked and counted but not forwarded nor hashed.
    Returns {volume: summary} with the content digest (forwarded volumes) and
    the ``layout`` digest.  BrokenPipeError (a sink died) propagates; a
    stream that cannot be parsed raises the damaged-archive message naming
    ``name`` (the sinks must then be discarded: they hold part of it).
    """
    gate = GatedPipe(source) if is_pipe(source) else GatedReader(source)
    digests = {}
    try:
        for member, data in members(gate.read):
            checker.check(member)
            volume = volume_of(member.name)
            sink = sinks.get(volume)
            gate.release(data, sink)
            if volume not in digests:
                digests[volume] = VolumeDigest(volume, layout=True)
            hasher = ContentHasher() if member.isreg() and sink is not None else None
            digests[volume].add(member, _DataRegion(gate, data).pass_through(member, hasher))
        gate.drain()
    except BrokenPipeError:
        raise
    except TAR_PARSE_ERRORS + (OSError,) as exc:
        raise damaged_archive(name, exc)
    return dict((volume, digest.summary()) for volume, digest in digests.items())
