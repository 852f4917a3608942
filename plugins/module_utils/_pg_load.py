# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Replaying an archive into an empty database: each stream piped into its own ``psql``/``pg_restore``.

Restore reads the archive once, in order; table data loads in parallel before any
index, constraint or trigger exists (from format 3 a table's own indexes are built
as soon as its data is in, see _pg_post_data), and every stream is checked against the manifest:
its chunks (names and sizes) and its sha256 (format 1 also recorded a sha256 per chunk).
"""

import contextlib
import hashlib
import json
import os
import queue
import tarfile
import threading

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import TAR_PARSE_ERRORS, archive_stream, damaged_archive
from ansible_collections.minimarket.backup.plugins.module_utils._pg_format import ARCHIVE_FORMAT, FORMAT_1, MANIFEST, parse_member
from ansible_collections.minimarket.backup.plugins.module_utils._pg_post_data import POST_DATA, TABLES, PostData
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import explain
from ansible_collections.minimarket.backup.plugins.module_utils._process import DEVNULL, PIPE, Process


QUEUE_DEPTH = 2


class StreamLoader(object):
    """One restore process fed from a bounded queue, so several tables load at once."""

    def __init__(self, proc, stream, container, chunk_digests=False, loaded=None):
        self.proc = proc
        self.loaded = loaded
        self.chunk_digests = chunk_digests
        self.container = container
        self.stream = stream
        self.queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self.digest = hashlib.sha256()
        self.chunks = []
        self.next_seq = 0
        self.ended = False
        self.thread = threading.Thread(target=self._feed)
        self.thread.daemon = True
        self.thread.start()

    def _feed(self):
        broken = False
        while True:
            data = self.queue.get()
            if data is None:
                break
            if not broken:
                try:
                    self.proc.stdin.write(data)
                except OSError:
                    broken = True  # the process died; wait() reports its own error
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if self.loaded is not None and not broken and self.proc.wait() == 0:
            self.loaded(self.stream, sum(chunk["size"] for chunk in self.chunks))

    def put(self, seq, data, member):
        if seq != self.next_seq:
            raise BackupError("archive member %s is out of order (expected part %d): the archive is damaged, use another backup" % (member, self.next_seq))
        self.next_seq += 1
        self.digest.update(data)
        chunk = {"member": member, "size": len(data)}
        if self.chunk_digests:
            chunk["sha256"] = hashlib.sha256(data).hexdigest()
        self.chunks.append(chunk)
        self.queue.put(data)

    def end(self):
        self.ended = True
        self.queue.put(None)

    def wait(self):
        self.thread.join()
        rc = self.proc.wait()
        text = self.proc.stderr()
        self.proc.close()
        if rc != 0:
            raise BackupError(explain(text, "restoring %s" % self.stream, rc, self.container))

    def kill(self):
        self.proc.kill()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.queue.get_nowait()
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(None)
            self.thread.join(0.1)
        self.proc.close()


def _loader_for(tools, stream, dbname, jobs, archive_format, post):
    loaded = None
    if stream.startswith("data/"):
        proc = tools.start("psql", ["-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "--no-password", "-d", dbname],
                           stdin=PIPE, stdout=DEVNULL)
        loaded = post.loaded if post else None
    elif stream in ("schema.sql", "globals.sql"):
        # Kept for people, not replayed: hash it and throw it away.
        proc = Process(["cat"], stdin=PIPE, stdout=DEVNULL)
    elif post and stream in (POST_DATA, TABLES):
        proc = Process(["cat"], stdin=PIPE, stdout=post.spool(stream))
    elif stream == POST_DATA:
        proc = tools.start("pg_restore", ["--exit-on-error", "--no-password", "-j", str(max(1, jobs)), "-d", dbname],
                           stdin=PIPE, stdout=DEVNULL, spool_stdin=True)
    elif stream in ("pre-data.dump", "misc-data.dump"):
        # pg_restore counts large objects (definition, ACL, comment) as data: create them once, from misc-data.
        section = ["--data-only"] if stream == "misc-data.dump" else ["--schema-only"]
        proc = tools.start("pg_restore", ["--exit-on-error", "--no-password"] + section + ["-d", dbname],
                           stdin=PIPE, stdout=DEVNULL)
    else:
        raise BackupError("archive holds an unknown stream %r: it is not a pg_split_dump backup" % stream)
    return StreamLoader(proc, stream, tools.container, chunk_digests=archive_format == FORMAT_1, loaded=loaded)


def restore_archive(tools, backup_path, dbname, jobs, identity_file=None, archive_format=ARCHIVE_FORMAT):
    """Stream the archive (decrypted and decompressed on the way) into an existing empty database, then check the manifest.

    ``archive_format`` is the one its metadata names: the manifest, read last, must say the same.
    """
    name = os.path.basename(backup_path)
    active = {}
    finished = {}
    post = PostData(tools, dbname, jobs) if archive_format == ARCHIVE_FORMAT else None
    try:
        with archive_stream(backup_path, identity_file) as reader:
            try:
                manifest = _read_members(tools, reader, (dbname, jobs, archive_format, post), active, finished, name)
            except TAR_PARSE_ERRORS as exc:
                raise damaged_archive(name, exc)
        if post:
            post.finish()
        _check_manifest(manifest, finished, name, archive_format)
        return manifest
    except BaseException:
        for loader in active.values():
            loader.kill()
        if post:
            post.kill()
        raise


def member_data(tar, member):
    """A member's bytes read past tarfile's stream (``r|``), which copies every byte several times in 8-10 KiB steps.

    The member's region (its data and padding, up to ``tar.offset`` where the
    next header starts) is taken from the stream's buffer and then straight
    from the pipe, one copy, and the stream's position moved past it, so
    tarfile goes on parsing from the same offset.
    """
    stream = tar.fileobj
    if not isinstance(getattr(stream, "buf", None), bytes) or getattr(stream, "comptype", None) != "tar":
        return tar.extractfile(member).read()
    need = tar.offset - stream.pos
    region = bytearray(need)
    head = stream.buf[:need]
    region[:len(head)] = head
    stream.buf = stream.buf[len(head):]
    view = memoryview(region)
    done = len(head)
    while done < need:
        got = stream.fileobj.readinto(view[done:])
        if not got:
            raise tarfile.ReadError("unexpected end of data in member %s" % member.name)
        done += got
    stream.pos += need
    return view[:member.size]


def _read_members(tools, reader, target, active, finished, name):
    """Dispatch each chunk to its stream's loader; table data streams run concurrently, the rest in order.

    ``target`` is (dbname, jobs, archive_format, post); ``post`` (a PostData, format 3) builds
    each table's indexes as its data comes in.
    """
    post = target[-1]
    in_data = False
    tar = tarfile.open(fileobj=reader, mode="r|")
    for member in tar:
        if not member.isfile():
            raise BackupError("archive member %s is not a regular file: %s is not a pg_split_dump backup" % (member.name, name))
        if post:
            post.check()
        data = member_data(tar, member)
        if member.name == MANIFEST:
            _finish_data(active, finished)
            return json.loads(bytes(data).decode("utf-8"))
        parsed = parse_member(member.name)
        if parsed is None:
            raise BackupError("archive member %s is not ours: %s is not a pg_split_dump backup" % (member.name, name))
        stream, seq, last = parsed
        is_data = stream.startswith("data/")
        if in_data and not is_data:
            _finish_data(active, finished)
        in_data = is_data
        loader = active.get(stream)
        if loader is None:
            if stream in finished:
                raise BackupError("archive stream %s appears twice: the archive is damaged, use another backup" % stream)
            if not finished and not active and stream != "schema.sql":
                raise BackupError("archive does not start with schema.sql: %s is not a pg_split_dump backup" % name)
            if post and is_data and not post.started:
                if not (POST_DATA in finished and TABLES in finished):
                    raise BackupError("archive %s has table data before a complete %s and %s: the archive is damaged, use another backup"
                                      % (name, POST_DATA, TABLES))
                post.start()
            loader = active[stream] = _loader_for(tools, stream, *target)
        loader.put(seq, data, member.name)
        if last:
            loader.end()
            if not is_data:
                finished[stream] = active.pop(stream)
                loader.wait()
    raise BackupError("archive %s has no manifest (truncated?): use another backup" % name)


def _finish_data(active, finished):
    for stream in list(active):
        loader = active[stream]
        if not loader.ended:
            raise BackupError("archive stream %s ends without its last part: the archive is damaged, use another backup" % stream)
        finished[stream] = active.pop(stream)
        loader.wait()


def _check_manifest(manifest, finished, name, archive_format):
    if manifest.get("format") != archive_format:
        raise BackupError("%s has manifest format %r, not %s: restore it with the collection version that wrote it"
                          % (name, manifest.get("format"), archive_format))
    if sorted(finished) != sorted(manifest.get("streams", {})):
        raise BackupError("archive streams of %s do not match its manifest: the archive is damaged, use another backup" % name)
    for stream, entry in manifest["streams"].items():
        loader = finished[stream]
        if loader.chunks != entry.get("chunks") or loader.digest.hexdigest() != entry.get("sha256"):
            raise BackupError("archive stream %s does not match its manifest checksum: the archive is damaged, use another backup" % stream)
