# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pg_split_dump archive format in one place: member names, the streamed writer, the manifest, opening a backup.

Dump, load and globals all read or write this layout, so it is defined once here.
An outer tar, streamed through the compressor, never staged:

* ``schema.sql``      plain ``pg_dump --schema-only`` for humans and diffs;
* ``pre-data.dump``   custom-format pre-data section (types, tables, functions...);
* ``post-data.dump``  custom-format post-data section (indexes, constraints,
  triggers), and ``post-data-tables.json``, the table each index and constraint
  belongs to: ahead of the data, so that a table's indexes are built as soon as
  its data is in (see _pg_post_data);
* ``globals.sql``     optional ``pg_dumpall --globals-only``;
* ``data/NNNN.sql``   one plain data-only ``pg_dump -t`` per table (COPY), dumped by
  ``jobs`` parallel workers, all attached to one exported snapshot;
* ``misc-data.dump``  custom-format data that is not table rows (sequence values,
  large objects);
* ``manifest.json``   last: every stream's chunks (member, size) and its sha256;
  a table's stream also its rows.

A tar header needs its member's size, so each stream is cut into members of at
most ``CHUNK`` bytes (``<stream>.partNNNNN``, the final one ending ``.last``).

Format 2 hashes each stream once (format 1 also hashed every chunk: the same
bytes twice, the stream's sha256 already covers them) and records a table's
rows as the lines of its COPY data, which are exactly its own rows (not those of
inheritance children).  Format 3 moves post-data ahead of the data and adds
post-data-tables.json (formats 1 and 2 have post-data last, restored after all
the data).  Formats 1 and 2 are still read.
"""

import collections
import hashlib
import json
import os
import re
import tarfile
import threading

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import resolve_source
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import TAR_PARSE_ERRORS, archive_stream, damaged_archive


KIND = "database"
FORMAT_1 = "minimarket-pg-split-dump/1"
FORMAT_2 = "minimarket-pg-split-dump/2"
ARCHIVE_FORMAT = "minimarket-pg-split-dump/3"
READABLE_FORMATS = (FORMAT_1, FORMAT_2, ARCHIVE_FORMAT)
COLLECTION_VERSION = "0.1.0"
CHUNK = 4 * 1024 * 1024
MANIFEST = "manifest.json"
LAST = ".last"


class BackupSource(collections.namedtuple("BackupSource", "src backup_dir environment identity_file")):
    """Which backup restore and verify read (``src``: a path, a name in ``backup_dir``, or latest) and the age identity that opens it."""

    __slots__ = ()


def chunk_member(stream, seq, last):
    return "%s.part%05d%s" % (stream, seq, LAST if last else "")


def parse_member(member):
    """(stream, seq, last) of a chunk member name, or None."""
    last = member.endswith(LAST)
    base = member[: -len(LAST)] if last else member
    stream, sep, part = base.rpartition(".part")
    if not sep or not part.isdigit():
        return None
    return stream, int(part), last


def read_full(stream, size):
    """BufferedReader.read already blocks for size bytes; raw pipes may return less."""
    parts = []
    remaining = size
    while remaining > 0:
        block = stream.read(remaining)
        if not block:
            break
        parts.append(block)
        remaining -= len(block)
    return b"".join(parts)


# A COPY statement's identifiers are quoted by pg_dump and may hold any character, newline and ";" included.
COPY_STATEMENT = re.compile(rb'COPY (?:[^";]|"[^"]*")*;\n')
COPY_FROM_STDIN = b" FROM stdin;\n"
COPY_END = b"\n\\.\n"
# More than what follows a table's data when it owns fewer than 500 sequences (at most about 900 bytes each).
END_WINDOW = 1024 * 1024


class CopyRowCounter(object):
    """A table's rows from its data-only dump: the lines between its ``COPY ... FROM stdin;`` and the ``\\.`` ending the data.

    COPY's text format escapes newline, carriage return and backslash inside
    values (``\\n``, ``\\r``, ``\\\\``), so each row is exactly one line and no
    row is the line ``\\.``: the first ``\\.`` line after the statement ends the
    data.  Counting lines replaces a ``count(*)`` that read every table a
    second time.  What follows the data (the values of the table's sequences,
    comments) cannot hold such a line unless a sequence's name holds a newline,
    and is shorter than END_WINDOW unless the table owns very many sequences:
    with ``end_search`` (neither is the case) only the stream's last END_WINDOW
    bytes are searched, from the end, instead of every byte.  ``rows`` stays
    None until the end of the data has been seen.
    """

    def __init__(self, end_search=True):
        self.end_search = end_search
        self.head = b""
        self.started = False
        self.newlines = 0
        self.seen = 0  # end_search: bytes of data before the last chunk, of which ``keep`` holds the last END_WINDOW
        self.keep = b""
        self.tail = b"\n"  # otherwise: the last bytes seen, a virtual line end before the first row
        self.rows = None

    def feed(self, data, last):
        if self.rows is not None:
            return
        start = 0
        if not self.started:
            self.head += data
            start = self._data_start()
            if start is None:
                return
            data, self.head, self.started = self.head, b"", True
        if self.end_search:
            self._feed_end(data, start, last)
        else:
            self._feed_forward(data, start)

    def _feed_end(self, data, start, last):
        self.newlines += data.count(b"\n", start)
        if not last:
            self.seen += len(data) - start
            self.keep = data[-END_WINDOW:] if len(data) - start >= END_WINDOW else (self.keep + data[start:])[-END_WINDOW:]
            return
        at = data.rfind(COPY_END, start)
        if at >= 0:
            self.rows = self.newlines - data.count(b"\n", at + 1)
            return
        text = self.keep + data[start:]
        if self.seen <= len(self.keep):
            text = b"\n" + text  # the data begins in ``text``: a virtual line end before the first row
        at = text.rfind(COPY_END)
        if at >= 0:
            self.rows = self.newlines - text.count(b"\n", at + 1)

    def _feed_forward(self, data, start):
        edge = self.tail + data[start:start + 3]
        at = edge.find(COPY_END)
        if at < 0:
            found = data.find(COPY_END, start)
            if found >= 0:
                at = found - start + len(self.tail)
        if at >= 0:
            # COPY_END's first newline ends the last row; one in the tail was counted already.
            self.newlines += data.count(b"\n", start, max(start, start + at + 1 - len(self.tail)))
            self.rows = self.newlines
            return
        self.newlines += data.count(b"\n", start)
        self.tail = (self.tail + data[max(start, len(data) - 3):])[-3:]

    def _data_start(self):
        """Offset of the first row in ``head``, or None while the COPY statement is not complete."""
        begin = 0 if self.head.startswith(b"COPY ") else self.head.find(b"\nCOPY ") + 1
        match = None
        if begin or self.head.startswith(b"COPY "):
            match = COPY_STATEMENT.match(self.head, begin)
        if match is None:
            if len(self.head) > 2 * CHUNK:
                raise BackupError("pg_dump wrote %d bytes without a COPY statement: the table's rows cannot be counted" % len(self.head))
            return None
        if not match.group(0).endswith(COPY_FROM_STDIN):
            raise BackupError("pg_dump wrote an unexpected COPY statement (%r): the table's rows cannot be counted"
                              % match.group(0)[:200].decode("utf-8", "replace"))
        return match.end()


class Aborted(BackupError):
    """A worker stopped because another one failed; the other's error is the one to report."""


class ArchiveWriter(object):
    """Serialises chunk members from parallel producers into one streamed tar."""

    def __init__(self, sink, mtime):
        self.sink = sink
        self.mtime = mtime
        self.lock = threading.Lock()
        self.streams = {}
        self.order = []

    def _add(self, name, data):
        """Header, data and padding in three writes: tarfile's 16 KiB copy loop costs more than pg_dump itself."""
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = self.mtime
        info.mode = 0o600
        self.sink.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self.sink.write(data)
        remainder = len(data) % tarfile.BLOCKSIZE
        if remainder:
            self.sink.write(tarfile.NUL * (tarfile.BLOCKSIZE - remainder))

    def register(self, stream, extra):
        with self.lock:
            entry = dict(extra)
            entry.update(chunks=[], size=0)
            self.streams[stream] = entry
            self.order.append(stream)

    def add_chunk(self, stream, seq, data, last):
        member = chunk_member(stream, seq, last)
        with self.lock:
            self._add(member, data)
            entry = self.streams[stream]
            entry["chunks"].append({"member": member, "size": len(data)})
            entry["size"] += len(data)

    def copy_stream(self, stream, source, extra, abort=None, counter=None):
        """Stream ``source`` into chunk members, hashing it once; ``counter`` (a CopyRowCounter) also sees every chunk."""
        self.register(stream, extra)
        total = hashlib.sha256()
        seq = 0
        data = read_full(source, CHUNK)
        while True:
            if abort is not None and abort.is_set():
                raise Aborted("stopped because another worker failed")
            following = read_full(source, CHUNK) if len(data) == CHUNK else b""
            total.update(data)
            if counter is not None:
                counter.feed(data, not following)
            self.add_chunk(stream, seq, data, last=not following)
            if not following:
                break
            data = following
            seq += 1
        with self.lock:
            self.streams[stream]["sha256"] = total.hexdigest()
            if counter is not None:
                self.streams[stream]["rows"] = counter.rows

    def finish(self):
        manifest = {"format": ARCHIVE_FORMAT, "order": self.order, "streams": self.streams}
        data = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
        with self.lock:
            self._add(MANIFEST, data)
            self.sink.write(tarfile.NUL * (tarfile.BLOCKSIZE * 2))
        return manifest


def extract_stream(backup_path, wanted, expected_sha256, identity_file=None):
    """One small stream (globals.sql) read ahead of the restore: it sits after pre-data, but roles must exist first."""
    name = os.path.basename(backup_path)
    parts = []
    with archive_stream(backup_path, identity_file, partial=True) as reader:
        try:
            tar = tarfile.open(fileobj=reader, mode="r|")
            for member in tar:
                parsed = parse_member(member.name)
                if member.name == MANIFEST or (parsed and parsed[0].startswith("data/")):
                    break
                if parsed and parsed[0] == wanted:
                    parts.append(tar.extractfile(member).read())
        except TAR_PARSE_ERRORS as exc:
            raise damaged_archive(name, exc)
    data = b"".join(parts)
    if not parts or hashlib.sha256(data).hexdigest() != expected_sha256:
        raise BackupError("%s in %s is missing or does not match its checksum: use another backup" % (wanted, name))
    return data.decode("utf-8")


def load_backup(source):
    """Resolve and checksum-verify the archive (and prove the key opens an encrypted one) before anything is touched."""
    src, backup_dir, environment, identity_file = source
    if src != "latest" and not os.path.isabs(src) and backup_dir:
        src = os.path.join(backup_dir, src)
    if src == "latest" and not backup_dir:
        raise BackupError("src=latest needs backup_dir (the backup directory) to look in")
    backup = resolve_source(src, backup_dir or os.path.dirname(src), KIND, environment, identity_file)
    meta = backup.metadata
    if meta.get("archive_format") not in READABLE_FORMATS or meta.get("kind") != KIND:
        raise BackupError("%s was not written by pg_split_dump (archive_format %r): restore it by hand" % (backup.name, meta.get("archive_format")))
    return backup
