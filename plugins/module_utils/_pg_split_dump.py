# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consistent split dump of one PostgreSQL database, safe restore and provable verification.

Archive layout (an outer tar, streamed through the compressor, never staged):

* ``schema.sql``      plain ``pg_dump --schema-only`` for humans and diffs;
* ``pre-data.dump``   custom-format pre-data section (types, tables, functions...);
* ``data/NNNN.sql``   one plain data-only ``pg_dump -t`` per table (COPY), dumped by
  ``jobs`` parallel workers, all attached to one exported snapshot;
* ``misc-data.dump``  custom-format data that is not table rows (sequence values,
  large objects);
* ``post-data.dump``  custom-format post-data section (indexes, constraints,
  triggers), restored with ``pg_restore -j``;
* ``globals.sql``     optional ``pg_dumpall --globals-only``;
* ``manifest.json``   last: every stream's chunks with their sha256.

A tar header needs its member's size, so each stream is cut into members of at
most ``CHUNK`` bytes (``<stream>.partNNNNN``, the final one ending ``.last``).
Restore reads the archive once, in order, and pipes each stream's chunks into
its own ``psql``/``pg_restore`` process: table data loads in parallel before any
index, constraint or trigger exists.
"""

import contextlib
import hashlib
import io
import json
import os
import queue
import re
import socket
import subprocess
import tarfile
import tempfile
import threading
import time

from ansible_collections.minimarket.backup.plugins.module_utils import _journal
from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import (
    EXTENSIONS,
    FORMAT_VERSION,
    TAR_PARSE_ERRORS,
    AtomicFile,
    BackupError,
    CompressedSink,
    archive_name,
    archive_stream,
    backup_lock,
    check_environment,
    check_recipients,
    damaged_archive,
    encryption_record,
    new_archive_path,
    remove_stale_partials,
    resolve_source,
    utc_now,
    write_metadata,
)
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import (
    dump_pattern,
    explain,
    quote_ident,
    quote_literal,
)

KIND = "database"
ARCHIVE_FORMAT = "minimarket-pg-split-dump/1"
COLLECTION_VERSION = "0.1.0"
CHUNK = 4 * 1024 * 1024
QUEUE_DEPTH = 2
MANIFEST = "manifest.json"
LAST = ".last"
LEVELS = {"gzip": 9, "zstd": 19}

# Names as JSON: psql prints one row per line, and a name may hold a newline.
USER_RELATIONS = """
SELECT to_json(n.nspname), to_json(c.relname), c.relpages
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname;
"""

USER_NS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
OBJECT_COUNTS = """
SELECT 'tables', count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND {ns}
UNION ALL SELECT 'views', count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm') AND {ns}
UNION ALL SELECT 'sequences', count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND {ns}
UNION ALL SELECT 'indexes', count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('i', 'I') AND {ns}
UNION ALL SELECT 'constraints', count(*) FROM pg_constraint o JOIN pg_namespace n ON n.oid = o.connamespace WHERE {ns}
UNION ALL SELECT 'triggers', count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE NOT t.tgisinternal AND {ns}
UNION ALL SELECT 'functions', count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {ns}
UNION ALL SELECT 'types', count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype IN ('e', 'd') AND {ns}
UNION ALL SELECT 'large_objects', count(*) FROM pg_largeobject_metadata;
""".format(ns=USER_NS)

# What ``pg_dump --create`` carries beyond the schema: owner, connection limit, comment, ACL
# (null = never granted or revoked, i.e. the default) and ALTER [ROLE ... IN] DATABASE ... SET.
# jsonb text keeps everything, comments with newlines included, on one psql output line.
DATABASE_PROPERTIES = """
SELECT json_build_object(
  'encoding', pg_encoding_to_char(d.encoding), 'collate', d.datcollate, 'ctype', d.datctype,
  'owner', pg_get_userbyid(d.datdba), 'server_version', current_setting('server_version'),
  'connection_limit', d.datconnlimit, 'comment', shobj_description(d.oid, 'pg_database'),
  'acl', CASE WHEN d.datacl IS NULL THEN NULL ELSE coalesce((
    SELECT json_agg(json_build_object('grantee', CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                                      'privilege', a.privilege_type, 'grantable', a.is_grantable))
    FROM aclexplode(d.datacl) a), '[]') END,
  'settings', coalesce((
    SELECT json_agg(json_build_object('role', CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,
                                      'name', split_part(c, '=', 1), 'value', substr(c, strpos(c, '=') + 1)))
    FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE s.setdatabase = d.oid), '[]'))::jsonb
FROM pg_database d WHERE d.datname = %s;
"""
PROPERTY_KEYS = ("owner", "connection_limit", "comment", "acl", "settings")
TEMP_LABELS = ("restoring", "verify")
MARKER = "minimarket.backup pg_split_dump: temporary copy of database %s, safe to drop"


def table_name(schema, name):
    return "%s.%s" % (schema, name)


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
        digest = hashlib.sha256(data).hexdigest()
        with self.lock:
            self._add(member, data)
            entry = self.streams[stream]
            entry["chunks"].append({"member": member, "size": len(data), "sha256": digest})
            entry["size"] += len(data)

    def copy_stream(self, stream, source, extra, abort=None):
        self.register(stream, extra)
        total = hashlib.sha256()
        seq = 0
        data = read_full(source, CHUNK)
        while True:
            if abort is not None and abort.is_set():
                raise Aborted("stopped because another worker failed")
            following = read_full(source, CHUNK) if len(data) == CHUNK else b""
            total.update(data)
            self.add_chunk(stream, seq, data, last=not following)
            if not following:
                break
            data = following
            seq += 1
        with self.lock:
            self.streams[stream]["sha256"] = total.hexdigest()

    def finish(self):
        manifest = {"format": ARCHIVE_FORMAT, "order": self.order, "streams": self.streams}
        data = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
        with self.lock:
            self._add(MANIFEST, data)
            self.sink.write(tarfile.NUL * (tarfile.BLOCKSIZE * 2))
        return manifest


def run_dump_stream(tools, writer, stream, args, extra, abort=None):
    """One pg_dump process streamed into the archive as it runs."""
    with tempfile.TemporaryFile() as errors:
        proc = tools.popen("pg_dump", args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        try:
            writer.copy_stream(stream, proc.stdout, extra, abort)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        rc = proc.wait()
        if rc != 0:
            errors.seek(0)
            raise BackupError(explain(errors.read().decode("utf-8", "replace"), "pg_dump of %s" % stream, rc, tools.container))


def list_relations(session, what):
    return [(json.loads(r[0]), json.loads(r[1]), int(r[2])) for r in session.query(USER_RELATIONS, what=what)]


def count_rows(session, relations, what):
    """{schema.table: rows}; rows are labelled by position, since a name may not fit on one psql line."""
    if not relations:
        return {}
    sql = "\nUNION ALL ".join("SELECT %d, count(*) FROM %s.%s" % (index, quote_ident(s), quote_ident(n))
                              for index, (s, n, _pages) in enumerate(relations))
    return dict((table_name(*relations[int(index)][:2]), int(count)) for index, count in session.query(sql + ";", what=what))


def snapshot_facts(session, db):
    """Everything the metadata records about the data, read inside the exported snapshot."""
    session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;", what="starting the snapshot transaction")
    snapshot = session.query("SELECT pg_export_snapshot();", what="exporting the snapshot")[0][0]
    relations = list_relations(session, "listing tables")
    counts = count_rows(session, relations, "counting rows")
    objects = dict((k, int(v)) for k, v in session.query(OBJECT_COUNTS, what="counting objects"))
    props = json.loads(session.query(DATABASE_PROPERTIES % quote_literal(db), what="reading database properties")[0][0])
    return snapshot, relations, counts, objects, props


def check_dest(dest, may_not_exist=False):
    """Refuse a dest the dump cannot write into.

    With ``may_not_exist`` (check mode: backup_storage creates the directories only in a real run) a
    missing dest is fine when its nearest existing parent is a writable directory; returns whether it exists.
    """
    if may_not_exist and not os.path.lexists(dest):
        parent = os.path.dirname(os.path.abspath(dest))
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)):
            raise BackupError("dest %s does not exist and %s is not a writable directory: fix dest or the permissions of %s"
                              % (dest, parent, parent))
        return False
    if not os.path.isdir(dest):
        raise BackupError("dest %s is not a directory: create it (mode 0700) or fix dest" % dest)
    if not os.access(dest, os.W_OK | os.X_OK):
        raise BackupError("dest %s is not writable by this user: fix its permissions or choose another dest" % dest)
    return True


def plan_dump(dest, environment, compression, when=None, encrypted=False):
    check_environment(environment)
    name = archive_name(KIND, environment, when or utc_now(), compression, encrypted)
    path = os.path.join(dest, name)
    return path


def check_compression_level(compression, level):
    if level is not None and not 1 <= level <= LEVELS.get(compression, 0):
        raise BackupError("compression_level %s does not fit compression %s: use 1-9 for gzip, 1-19 for zstd, "
                          "and leave it unset for none" % (level, compression))


def dump(tools, db, dest, environment, compression="gzip", jobs=2, include_globals=False, recipients=None,
         compression_level=None):
    """Write one complete backup or raise BackupError leaving nothing that looks complete.

    With ``recipients`` (age public keys) the archive is encrypted as it is written.
    """
    started = time.time()
    check_environment(environment)
    if compression not in EXTENSIONS:
        raise BackupError("compression %r is not supported: use gzip, zstd or none" % compression)
    check_compression_level(compression, compression_level)
    recipients = check_recipients(recipients)
    check_dest(dest)
    server_num = tools.server_version_num(db)
    pg_dump_version = tools.check_client("pg_dump", server_num)
    with backup_lock(dest, KIND, environment):
        remove_stale_partials(dest, KIND, environment)
        when = utc_now()
        path = new_archive_path(dest, KIND, environment, when, compression, bool(recipients))
        session = tools.session(db)
        try:
            snapshot, relations, counts, objects, props = snapshot_facts(session, db)
            with AtomicFile(path) as target:
                sink = CompressedSink(target.handle, compression, recipients, compression_level)
                try:
                    manifest = _write_archive(tools, sink, db, snapshot, relations, jobs, include_globals, int(when.timestamp()))
                    size, sha256 = sink.close()
                except BaseException:
                    sink.abort()
                    raise
                target.commit()
        except OSError as exc:
            raise BackupError("writing %s failed: %s -- free space on the destination or choose another dest" % (path, exc.strerror or exc))
        finally:
            session.close()
        metadata = {
            "format_version": FORMAT_VERSION,
            "archive_format": ARCHIVE_FORMAT,
            "kind": KIND,
            "environment": environment,
            "database": db,
            "created_at": when.isoformat(),
            "host": socket.gethostname(),
            "server_version": props["server_version"],
            "pg_dump_version": pg_dump_version,
            "collection_version": COLLECTION_VERSION,
            "compression": compression,
            "archive": os.path.basename(path),
            "size": size,
            "sha256": sha256,
            "encryption": encryption_record(recipients),
            "members": dict((name, {"sha256": s["sha256"], "size": s["size"]}) for name, s in manifest["streams"].items()),
            "tables": counts,
            "objects": objects,
            "database_properties": normalize_properties(props, ("encoding", "collate", "ctype") + PROPERTY_KEYS),
            "container": tools.container,
            "jobs": jobs,
            "duration": round(time.time() - started, 3),
        }
        try:
            meta_path = write_metadata(path, metadata)
        except (OSError, BackupError) as exc:
            # An archive without metadata is not a backup; do not leave one that might be mistaken for it.
            os.unlink(path)
            raise BackupError("writing the metadata of %s failed (%s): free space on the destination and run again"
                              % (path, getattr(exc, "strerror", None) or exc))
    return {
        "archive": path,
        "metadata": meta_path,
        "size": size,
        "sha256": sha256,
        "duration": metadata["duration"],
        "tables": counts,
        "encrypted": bool(recipients),
        "recipients": recipients,
    }


def _write_archive(tools, sink, db, snapshot, relations, jobs, include_globals, mtime):
    writer = ArchiveWriter(sink, mtime)
    base = ["--snapshot=" + snapshot, "--no-password", "-d", db]
    run_dump_stream(tools, writer, "schema.sql", base + ["--schema-only"], {"kind": "schema"})
    run_dump_stream(tools, writer, "pre-data.dump", base + ["-Fc", "--section=pre-data"], {"kind": "pre-data"})
    if include_globals:
        _dump_globals(tools, writer)
    tasks = queue.Queue()
    # Biggest tables first so the last worker does not start a giant alone.
    for index, (schema, name, _pages) in enumerate(sorted(relations, key=lambda r: -r[2])):
        tasks.put(("data/%04d.sql" % index, schema, name))
    abort = threading.Event()
    failures = []

    def worker():
        while not abort.is_set():
            try:
                stream, schema, name = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                run_dump_stream(tools, writer, stream, base + ["--data-only", "-t", dump_pattern(schema, name)],
                                {"kind": "table-data", "table": table_name(schema, name)}, abort)
            except BaseException as exc:  # the first failure stops everyone; the main thread re-raises
                failures.append(exc)
                abort.set()
                return

    threads = [threading.Thread(target=worker) for _worker in range(max(1, min(jobs, len(relations))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise ([f for f in failures if not isinstance(f, Aborted)] or failures)[0]
    # Not a "*.*" pattern: that would also drop the values of sequences no table owns.
    excluded = ["--exclude-table-data=" + dump_pattern(schema, name) for schema, name, _pages in relations]
    run_dump_stream(tools, writer, "misc-data.dump", base + ["-Fc", "--data-only"] + excluded, {"kind": "misc-data"})
    run_dump_stream(tools, writer, "post-data.dump", base + ["-Fc", "--section=post-data"], {"kind": "post-data"})
    return writer.finish()


def _dump_globals(tools, writer):
    """Small output, so run_command; non-superusers cannot read role passwords, so retry without them."""
    args = ["--globals-only", "--no-password", "-l", tools.maintenance_db]
    try:
        out = tools.run("pg_dumpall", args, what="pg_dumpall --globals-only")
    except BackupError as exc:
        if "permission denied" not in str(exc):
            raise
        out = tools.run("pg_dumpall", args + ["--no-role-passwords"], what="pg_dumpall --globals-only")
    writer.copy_stream("globals.sql", io.BytesIO(out.encode("utf-8")), {"kind": "globals"})


# ---------------------------------------------------------------- restore


class StreamLoader(object):
    """One restore process fed from a bounded queue, so several tables load at once."""

    def __init__(self, proc, stream, errors, container):
        self.proc = proc
        self.container = container
        self.stream = stream
        self.errors = errors
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

    def put(self, seq, data, member):
        if seq != self.next_seq:
            raise BackupError("archive member %s is out of order (expected part %d): the archive is damaged, use another backup" % (member, self.next_seq))
        self.next_seq += 1
        self.digest.update(data)
        self.chunks.append({"member": member, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        self.queue.put(data)

    def end(self):
        self.ended = True
        self.queue.put(None)

    def wait(self):
        self.thread.join()
        rc = self.proc.wait()
        self.errors.seek(0)
        text = self.errors.read().decode("utf-8", "replace")
        self.errors.close()
        if rc != 0:
            raise BackupError(explain(text, "restoring %s" % self.stream, rc, self.container))

    def kill(self):
        with contextlib.suppress(OSError):
            self.proc.kill()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.queue.get_nowait()
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(None)
            self.thread.join(0.1)
        self.proc.wait()


def _loader_for(tools, stream, dbname, jobs):
    errors = tempfile.TemporaryFile()
    if stream.startswith("data/") or stream in ("schema.sql", "globals.sql"):
        if stream.startswith("data/"):
            proc = tools.popen("psql", ["-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "--no-password", "-d", dbname],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        else:
            # Kept for people, not replayed: hash it and throw it away.
            proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
    elif stream == "post-data.dump":
        proc = tools.popen("pg_restore", ["--exit-on-error", "--no-password", "-j", str(max(1, jobs)), "-d", dbname],
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, spool_stdin=True)
    elif stream in ("pre-data.dump", "misc-data.dump"):
        # pg_restore counts large objects (definition, ACL, comment) as data: create them once, from misc-data.
        section = ["--data-only"] if stream == "misc-data.dump" else ["--schema-only"]
        proc = tools.popen("pg_restore", ["--exit-on-error", "--no-password"] + section + ["-d", dbname],
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
    else:
        errors.close()
        raise BackupError("archive holds an unknown stream %r: it is not a pg_split_dump backup" % stream)
    return StreamLoader(proc, stream, errors, tools.container)


def restore_archive(tools, backup_path, dbname, jobs, identity_file=None):
    """Stream the archive (decrypted and decompressed on the way) into an existing empty database, then check the manifest."""
    name = os.path.basename(backup_path)
    active = {}
    finished = {}
    try:
        with archive_stream(backup_path, identity_file) as reader:
            try:
                manifest = _read_members(tools, reader, dbname, jobs, active, finished, name)
            except TAR_PARSE_ERRORS as exc:
                raise damaged_archive(name, exc)
        _check_manifest(manifest, finished, name)
        return manifest
    except BaseException:
        for loader in active.values():
            loader.kill()
        raise


def _read_members(tools, reader, dbname, jobs, active, finished, name):
    """Dispatch each chunk to its stream's loader; table data streams run concurrently, the rest in order."""
    in_data = False
    tar = tarfile.open(fileobj=reader, mode="r|")
    for member in tar:
        if not member.isfile():
            raise BackupError("archive member %s is not a regular file: %s is not a pg_split_dump backup" % (member.name, name))
        data = tar.extractfile(member).read()
        if member.name == MANIFEST:
            _finish_data(active, finished)
            return json.loads(data.decode("utf-8"))
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
            loader = active[stream] = _loader_for(tools, stream, dbname, jobs)
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


def _check_manifest(manifest, finished, name):
    if manifest.get("format") != ARCHIVE_FORMAT:
        raise BackupError("%s has manifest format %r, not %s: restore it with the collection version that wrote it"
                          % (name, manifest.get("format"), ARCHIVE_FORMAT))
    if sorted(finished) != sorted(manifest.get("streams", {})):
        raise BackupError("archive streams of %s do not match its manifest: the archive is damaged, use another backup" % name)
    for stream, entry in manifest["streams"].items():
        loader = finished[stream]
        if loader.chunks != entry.get("chunks") or loader.digest.hexdigest() != entry.get("sha256"):
            raise BackupError("archive stream %s does not match its manifest checksum: the archive is damaged, use another backup" % stream)


def database_exists(tools, name):
    rows = tools.psql(tools.maintenance_db, "SELECT 1 FROM pg_database WHERE datname = %s;" % quote_literal(name),
                      what="connecting to PostgreSQL")
    return bool(rows)


def check_privileges(tools):
    rows = tools.psql(tools.maintenance_db, "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user;",
                      what="connecting to PostgreSQL")
    if not rows or rows[0][0] != "t":
        raise BackupError("login_user may not create databases: use a superuser or a role with CREATEDB")


def normalize_properties(props, keys=PROPERTY_KEYS):
    """Order-independent form of database properties, so a dump and a restored copy compare equal."""
    out = dict((k, props.get(k)) for k in keys if k in props)
    if out.get("acl") is not None:
        out["acl"] = sorted(out["acl"], key=lambda a: (a["grantee"], a["privilege"]))
    if "settings" in out:
        out["settings"] = sorted(out["settings"] or [], key=lambda s: (s["role"] or "", s["name"]))
    return out


def read_properties(tools, dbname):
    rows = tools.psql(tools.maintenance_db, DATABASE_PROPERTIES % quote_literal(dbname), what="reading properties of %s" % dbname)
    return normalize_properties(json.loads(rows[0][0]))


def referenced_roles(props):
    roles = set()
    if props.get("owner"):
        roles.add(props["owner"])
    roles.update(a["grantee"] for a in props.get("acl") or [] if a["grantee"] != "PUBLIC")
    roles.update(s["role"] for s in props.get("settings") or [] if s["role"])
    return roles


def existing_roles(tools):
    return set(r[0] for r in tools.psql(tools.maintenance_db, "SELECT rolname FROM pg_roles;", what="listing roles"))


def check_roles(props, existing, db, created=()):
    """Fail before anything is touched: GRANT/OWNER to a missing role would fail after the data load."""
    missing = sorted(referenced_roles(props) - set(existing) - set(created))
    if missing:
        raise BackupError("role(s) %s, used by database %s in the backup (owner, grants or settings), do not exist on this server: "
                          "create them, or restore with restore_globals: true from a backup made with include_globals: true"
                          % (", ".join(missing), db))


def create_database(tools, name, props, marker_for):
    """The comment marks the database as ours until the real properties replace it (see find_leftovers)."""
    sql = "CREATE DATABASE %s TEMPLATE template0" % quote_ident(name)
    if props.get("encoding"):
        sql += " ENCODING %s LC_COLLATE %s LC_CTYPE %s" % (
            quote_literal(props["encoding"]), quote_literal(props["collate"]), quote_literal(props["ctype"]))
    if props.get("owner"):
        sql += " OWNER %s" % quote_ident(props["owner"])
    sql += ";\n"
    if marker_for:
        sql += "COMMENT ON DATABASE %s IS %s;\n" % (quote_ident(name), quote_literal(MARKER % marker_for))
    tools.psql(tools.maintenance_db, sql, what="creating database %s" % name)


def apply_properties(tools, name, props):
    """Owner, connection limit, comment, ACL and settings as recorded; the ACL is rebuilt from scratch, granted by the owner."""
    db_q = quote_ident(name)
    sql = []
    if props.get("owner"):
        sql.append("ALTER DATABASE %s OWNER TO %s;" % (db_q, quote_ident(props["owner"])))
    if props.get("connection_limit") is not None:
        sql.append("ALTER DATABASE %s CONNECTION LIMIT %d;" % (db_q, int(props["connection_limit"])))
    # Always: it also replaces our marker comment, for metadata written before comments were recorded.
    sql.append("COMMENT ON DATABASE %s IS %s;" % (db_q, quote_literal(props["comment"]) if props.get("comment") is not None else "NULL"))
    if props.get("acl") is not None:
        sql.append("REVOKE ALL ON DATABASE %s FROM PUBLIC;" % db_q)
        sql.append("REVOKE ALL ON DATABASE %s FROM %s;" % (db_q, quote_ident(props.get("owner") or "postgres")))
        for entry in props["acl"]:
            grantee = "PUBLIC" if entry["grantee"] == "PUBLIC" else quote_ident(entry["grantee"])
            sql.append("GRANT %s ON DATABASE %s TO %s%s;" % (entry["privilege"], db_q, grantee,
                                                             " WITH GRANT OPTION" if entry["grantable"] else ""))
    for setting in props.get("settings") or []:
        # set_config + FROM CURRENT stores the value exactly as recorded, list settings (search_path) included.
        target = "ROLE %s IN DATABASE %s" % (quote_ident(setting["role"]), db_q) if setting["role"] else "DATABASE %s" % db_q
        sql.append("BEGIN; SELECT set_config(%s, %s, true); ALTER %s SET %s FROM CURRENT; COMMIT;"
                   % (quote_literal(setting["name"]), quote_literal(setting["value"]), target, quote_ident(setting["name"])))
    if sql:
        tools.psql(tools.maintenance_db, "\n".join(sql) + "\n", what="applying the database properties to %s" % name)


def compare_properties(tools, name, expected):
    """Problems (list of lines) where the database's properties differ from the recorded ones."""
    if not expected:
        return {}, []
    actual = read_properties(tools, name)
    problems = ["database %s: %s is %s, backup says %s" % (name, key, json.dumps(actual.get(key)), json.dumps(expected[key]))
                for key in PROPERTY_KEYS if key in expected and actual.get(key) != expected[key]]
    return actual, problems


def is_leftover_name(db, name):
    for label in TEMP_LABELS:
        prefix = suffix_name(db, label, utc_now())[:-15]
        rest = name[len(prefix):]
        if name.startswith(prefix) and len(rest) == 15 and rest[8] == "_" and (rest[:8] + rest[9:]).isdigit():
            return True
    return False


def find_leftovers(tools, db):
    """Temporary databases of ours for db: our name pattern AND our marker comment; a user's database has no marker."""
    rows = tools.psql(tools.maintenance_db,
                      "SELECT d.datname, (SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid) FROM pg_database d "
                      "WHERE shobj_description(d.oid, 'pg_database') = %s ORDER BY 1;" % quote_literal(MARKER % db),
                      what="looking for leftover temporary databases")
    leftovers, busy = [], []
    for name, sessions in rows:
        if is_leftover_name(db, name):
            (busy if int(sessions) else leftovers).append(name)
    return leftovers, busy


def is_marked(tools, name, db):
    return bool(tools.psql(tools.maintenance_db,
                           "SELECT 1 FROM pg_database d WHERE d.datname = %s AND shobj_description(d.oid, 'pg_database') = %s;"
                           % (quote_literal(name), quote_literal(MARKER % db))))


def clean_leftovers(tools, db, result, check_mode):
    """Report and drop what a killed restore/verify left; databases somebody is connected to are only reported."""
    leftovers, busy = find_leftovers(tools, db)
    result["leftovers_dropped"] = leftovers
    if busy:
        result.setdefault("warnings", []).append(
            "temporary database(s) %s of an earlier run still have sessions (another restore running?): left alone" % ", ".join(busy))
    if not check_mode:
        for name in leftovers:
            drop_database(tools, name)


# ---------------------------------------------------------------- journal replay


def repairers(tools):
    """What a killed restore or verify on this server left, put back by the journal replay (see _journal)."""

    def on_this_server(step):
        if step.get("server") != server_identity(tools):
            where = step.get("server") or {}
            raise BackupError("step %s on database %s belongs to the PostgreSQL server at %s (container %s): run pg_split_dump "
                              "with those login settings to repair it" % (step["step"], step["database"],
                                                                          "%s:%s" % (where.get("host"), where.get("port")),
                                                                          where.get("container")))

    def drop(step):
        on_this_server(step)
        if not database_exists(tools, step["database"]):
            return []
        drop_database(tools, step["database"])
        return ["dropped database %s" % step["database"]]

    def reopen(step):
        on_this_server(step)
        rows = tools.psql(tools.maintenance_db, "SELECT datallowconn FROM pg_database WHERE datname = %s;"
                          % quote_literal(step["database"]), what="reading database %s" % step["database"])
        if not rows or rows[0][0] == "t":
            return []
        tools.psql(tools.maintenance_db, "ALTER DATABASE %s WITH ALLOW_CONNECTIONS true;" % quote_ident(step["database"]),
                   what="reopening %s" % step["database"])
        return ["reopened database %s to connections" % step["database"]]

    def swapped(step):
        """Nothing to undo (both renames commit together): say which state the interrupted restore left."""
        on_this_server(step)
        if not database_exists(tools, step["restored"]):
            done = ["the interrupted restore had swapped %s into place: %s holds the restored data (the previous one was "
                    "renamed %s)" % (step["restored"], step["database"], step["previous"])]
            if step.get("drop_previous"):
                done += drop(dict(step, database=step["previous"]))  # keep_previous: false, as the run was asked
            return done
        return ["the interrupted restore had not swapped yet: %s still holds its previous data" % step["database"]]

    def recreated(step):
        on_this_server(step)
        return ["database %s was being restored with strategy drop when its run was killed: it may be missing or incomplete, "
                "restore it again" % step["database"]]

    return {"temporary_database": drop, "previous_database": drop, "database_closed": reopen, "database_swap": swapped,
            "database_recreated": recreated}


# ---------------------------------------------------------------- globals

IDENT = r'(?:"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*)'
ROLE_STATEMENT = re.compile(r"^(?:CREATE ROLE|ALTER ROLE|COMMENT ON ROLE|SECURITY LABEL FOR \S+ ON ROLE) (%s)" % IDENT, re.S)
ROLE_IN_DATABASE = re.compile(r"^ALTER ROLE %s IN DATABASE " % IDENT)
MEMBERSHIP = re.compile(r"^GRANT %s(?:\s*,\s*%s)* TO (%s)" % (IDENT, IDENT, IDENT), re.S)


def unquote_ident(text):
    return text[1:-1].replace('""', '"') if text.startswith('"') else text


def split_sql(text):
    """Statements of a pg_dumpall --globals-only script: no dollar quoting there, only '...' and "..." to respect."""
    statements, current, quote = [], [], None
    for line in text.splitlines(True):
        if quote is None and not "".join(current).strip() and (line.startswith("--") or line.startswith("\\") or not line.strip()):
            continue
        for char in line:
            current.append(char)
            if quote:
                if char == quote:
                    quote = None
            elif char in "'\"":
                quote = char
            elif char == ";":
                statements.append("".join(current).strip())
                current = []
    if "".join(current).strip():
        statements.append("".join(current).strip())
    return statements


def plan_globals(text, existing):
    """Which statements of globals.sql to replay: only those creating or describing roles that do not exist yet.

    Existing roles (the connecting superuser included) are never altered -- not their attributes, not their
    password, not their memberships. Tablespaces and per-database role settings are skipped.
    """
    statements = split_sql(text)
    created, kept = [], []
    for statement in statements:
        match = re.match(r"^CREATE ROLE (%s);$" % IDENT, statement)
        if match:
            role = unquote_ident(match.group(1))
            (kept if role in existing else created).append(role)
    run, skipped = [], []
    for statement in statements:
        role = ROLE_STATEMENT.match(statement)
        member = MEMBERSHIP.match(statement)
        if statement.upper().startswith("SET "):
            run.append(statement)
        elif ROLE_IN_DATABASE.match(statement):
            skipped.append(statement)
        elif role:
            (run if unquote_ident(role.group(1)) in created else skipped).append(statement)
        elif member and " ON " not in statement.split(" TO ")[0]:
            (run if unquote_ident(member.group(1)) in created else skipped).append(statement)
        else:
            skipped.append(statement)
    return {"created": created, "kept": kept, "statements": run, "skipped": len(skipped)}


def prepare_globals(backup, existing, identity_file=None):
    member = backup.metadata.get("members", {}).get("globals.sql")
    if member is None:
        raise BackupError("restore_globals: %s has no globals.sql (dumped without include_globals): create the roles by hand "
                          "or restore without restore_globals" % backup.name)
    return plan_globals(extract_stream(backup.path, "globals.sql", member["sha256"], identity_file), existing)


def replay_globals(tools, plan):
    """All or nothing: one transaction (CREATE ROLE is transactional; tablespaces, which are not, are skipped)."""
    if plan["created"]:
        tools.psql(tools.maintenance_db, "BEGIN;\n%s\nCOMMIT;\n" % "\n".join(plan["statements"]), what="replaying globals.sql")


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


def drop_database(tools, name):
    tools.psql(tools.maintenance_db, "DROP DATABASE IF EXISTS %s WITH (FORCE);" % quote_ident(name),
               what="dropping database %s" % name)


def compare_contents(tools, dbname, metadata):
    """Per-table rows and object counts of dbname vs the metadata; returns (per-table results, problems)."""
    session = tools.session(dbname)
    try:
        session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;")
        actual = count_rows(session, list_relations(session, "listing restored tables"), "counting restored rows")
        objects = dict((k, int(v)) for k, v in session.query(OBJECT_COUNTS, what="counting restored objects"))
        session.query("COMMIT;")
    finally:
        session.close()
    expected = metadata.get("tables", {})
    results = {}
    problems = []
    for name in sorted(set(expected) | set(actual)):
        exp = expected.get(name)
        got = actual.get(name)
        results[name] = {"expected": exp, "restored": got, "ok": exp == got}
        if exp != got:
            problems.append("table %s has %s rows, metadata says %s" % (name, got, exp))
    for name, exp in sorted(metadata.get("objects", {}).items()):
        if objects.get(name) != exp:
            problems.append("%s: %s restored, metadata says %s" % (name, objects.get(name), exp))
    return results, problems


def load_backup(src, dest, environment, identity_file=None):
    """Resolve and checksum-verify the archive (and prove the key opens an encrypted one) before anything is touched."""
    if src != "latest" and not os.path.isabs(src) and dest:
        src = os.path.join(dest, src)
    if src == "latest" and not dest:
        raise BackupError("src=latest needs dest (the backup directory) to look in")
    backup = resolve_source(src, dest or os.path.dirname(src), KIND, environment, identity_file)
    meta = backup.metadata
    if meta.get("archive_format") != ARCHIVE_FORMAT or meta.get("kind") != KIND:
        raise BackupError("%s was not written by pg_split_dump (archive_format %r): restore it by hand" % (backup.name, meta.get("archive_format")))
    return backup


def suffix_name(db, label, when):
    return "%s_%s_%s" % (db[:63 - len(label) - 17], label, when.strftime("%Y%m%d_%H%M%S"))


SESSIONS = """
SELECT pid, usename, application_name, state{terminate} FROM pg_stat_activity
WHERE datname = {db} AND pid <> pg_backend_pid() ORDER BY pid;
"""


def other_sessions(tools, db, terminate=False):
    """[{pid, user, application, state}] of the sessions on db (terminated when asked): the operator is told which."""
    sql = SESSIONS.format(terminate=", pg_terminate_backend(pid)" if terminate else "", db=quote_literal(db))
    return session_rows(tools.psql(tools.maintenance_db, sql, what="listing the sessions on %s" % db))


def describe_session(entry):
    return "pid %(pid)d user %(user)s application '%(application)s' %(state)s" % entry


def session_rows(rows):
    return [{"pid": int(r[0]), "user": r[1], "application": r[2], "state": r[3]} for r in rows]


def check_source_database(backup, db, restore_as):
    """A dump of database A restored under the name B is a decision, not an accident: it needs restore_as."""
    source = backup.metadata.get("database")
    if source and source != db:
        if restore_as != db:
            raise BackupError("%s is a dump of database %s, not %s: to restore it under the name %s set restore_as: %s, "
                              "or set db: %s" % (backup.name, source, db, db, db, source))
        return "restoring %s, a dump of database %s, under the name %s (restore_as)" % (backup.name, source, db)
    if restore_as and restore_as != db:
        raise BackupError("restore_as is %s but db is %s: restore_as must repeat db (it confirms the name the dump is "
                          "restored under)" % (restore_as, db))
    return None


def server_identity(tools):
    """Which server a journal step belongs to (no password): a run against another server must not repair it."""
    return {"host": tools.conn_env.get("PGHOST", ""), "port": tools.conn_env.get("PGPORT", ""), "container": tools.container}


def restore(tools, src, db, dest=None, environment=None, strategy="swap", jobs=2, keep_previous=True, check_mode=False,
            restore_globals=False, identity_file=None, restore_as=None, journal=None):
    """``journal`` (a _journal.Job) records each step a killed run leaves for the next run to repair."""
    journal = journal or _journal.Job(None, "restore")
    started = time.time()
    backup = load_backup(src, dest, environment, identity_file)
    renamed = check_source_database(backup, db, restore_as)
    check_privileges(tools)
    server_num = tools.server_version_num(tools.maintenance_db)
    tools.check_client("pg_restore", server_num)
    live_exists = database_exists(tools, db)
    when = utc_now()
    result = {"src": backup.path, "strategy": strategy, "database": db, "source_database": backup.metadata.get("database"),
              "previous": None, "tables": {}, "warnings": list(backup.warnings)}
    if renamed:
        result["warnings"].append(renamed)
    props = backup.metadata.get("database_properties", {})
    result["backup"] = backup.describe()
    existing = existing_roles(tools)
    plan = prepare_globals(backup, existing, identity_file) if restore_globals else None
    check_roles(props, existing, db, plan["created"] if plan else ())
    if plan:
        result["globals"] = {"created": plan["created"], "kept": plan["kept"], "skipped_statements": plan["skipped"]}
    clean_leftovers(tools, db, result, check_mode)
    if check_mode:
        result["sessions"] = other_sessions(tools, db) if live_exists else []
        result["msg"] = "would restore %s into %s (strategy %s)%s" % (
            backup.name, db, strategy, ", terminating %d session(s) on it" % len(result["sessions"]) if result["sessions"] else "")
        if result["sessions"]:
            # A warning, so that the confirmation of a destructive playbook shows them before the operator answers.
            result["warnings"].append("the restore will terminate %d session(s) on %s: %s" % (
                len(result["sessions"]), db, "; ".join(describe_session(entry) for entry in result["sessions"])))
        return result
    if plan:
        replay_globals(tools, plan)
    server = server_identity(tools)
    if strategy == "drop":
        journal.record("database_recreated", database=db, server=server)
        result["sessions"] = other_sessions(tools, db, terminate=True) if live_exists else []
        if live_exists:
            drop_database(tools, db)
        create_database(tools, db, props, None)
        restore_archive(tools, backup.path, db, jobs, identity_file)
        tools.psql(db, "ANALYZE;", what="analyzing %s" % db)
        apply_properties(tools, db, props)
        result["tables"], problems = compare_contents(tools, db, backup.metadata)
        result["database_properties"], more = compare_properties(tools, db, props)
        problems += more
        if problems:
            raise BackupError("restored %s does not match the backup: %s -- restore another backup" % (db, "; ".join(problems[:3])))
        result["duration"] = round(time.time() - started, 3)
        return result
    temp = suffix_name(db, "restoring", when)
    journal.record("temporary_database", database=temp, server=server)
    create_database(tools, temp, props, db)
    try:
        restore_archive(tools, backup.path, temp, jobs, identity_file)
        tools.psql(temp, "ANALYZE;", what="analyzing %s" % temp)
        result["tables"], problems = compare_contents(tools, temp, backup.metadata)
        if not problems:
            apply_properties(tools, temp, props)
            result["database_properties"], problems = compare_properties(tools, temp, props)
        if problems:
            raise BackupError("restored copy does not match the backup, live database untouched: %s -- restore another backup"
                              % "; ".join(problems[:3]))
        result["restore_duration"] = round(time.time() - started, 3)
        if live_exists:
            previous = suffix_name(db, "pre_restore", when)
            result["sessions"] = swap(tools, db, temp, previous, journal, server, keep_previous)
            result["previous"] = previous
        else:
            result["sessions"] = []
            tools.psql(tools.maintenance_db, "ALTER DATABASE %s RENAME TO %s;" % (quote_ident(temp), quote_ident(db)),
                       what="renaming %s to %s" % (temp, db))
    except BaseException:
        with contextlib.suppress(BackupError):
            drop_database(tools, temp)
        raise
    if result["previous"] and not keep_previous:
        journal.record("previous_database", database=result["previous"], server=server)
        drop_database(tools, result["previous"])
        result["previous_dropped"] = True
    result["duration"] = round(time.time() - started, 3)
    return result


def swap(tools, db, temp, previous, journal, server, keep_previous=True):
    """Close live to new clients, then one transaction: terminate its sessions, rename live -> previous, temp -> live.

    Both renames commit together, so nobody ever finds the live name missing;
    a killed run leaves at most the live database closed, which the journal's
    ``database_closed`` step reopens.  Returns the sessions terminated.
    """
    live_q, temp_q, prev_q = quote_ident(db), quote_ident(temp), quote_ident(previous)
    journal.record("database_closed", database=db, server=server)
    tools.psql(tools.maintenance_db, "ALTER DATABASE %s WITH ALLOW_CONNECTIONS false;" % live_q, what="closing %s to new clients" % db)
    terminated = {}
    try:
        terminated.update((entry["pid"], entry) for entry in other_sessions(tools, db, terminate=True))
        journal.record("database_swap", database=db, restored=temp, previous=previous, server=server,
                       drop_previous=not keep_previous)
        last_error = None
        for _attempt in range(20):
            try:
                rows = tools.psql(tools.maintenance_db,
                                  "BEGIN;\n%s\nALTER DATABASE %s RENAME TO %s;\nALTER DATABASE %s RENAME TO %s;\n"
                                  "ALTER DATABASE %s WITH ALLOW_CONNECTIONS true;\nCOMMIT;\n"
                                  % (SESSIONS.format(terminate=", pg_terminate_backend(pid)", db=quote_literal(db)).strip(),
                                     live_q, prev_q, temp_q, live_q, prev_q),
                                  what="swapping %s into place as %s" % (temp, db))
                terminated.update((s["pid"], s) for s in session_rows(rows))
                break
            except BackupError as exc:
                last_error = exc
                if "being accessed by other users" not in str(exc):
                    raise
                time.sleep(0.25)
        else:
            raise last_error
    except BaseException:
        with contextlib.suppress(BackupError):
            tools.psql(tools.maintenance_db, "ALTER DATABASE %s WITH ALLOW_CONNECTIONS true;" % live_q)
        raise
    return [terminated[pid] for pid in sorted(terminated)]


def verify(tools, src, db, dest=None, environment=None, jobs=2, scratch_db=None, critical_tables=None, queries=None,
           identity_file=None, journal=None):
    """Checksums, full restore into a scratch database (always dropped), row counts, properties, critical tables, queries."""
    journal = journal or _journal.Job(None, "verify")
    started = time.time()
    backup = load_backup(src, dest, environment, identity_file)
    check_privileges(tools)
    tools.check_client("pg_restore", tools.server_version_num(tools.maintenance_db))
    props = backup.metadata.get("database_properties", {})
    check_roles(props, existing_roles(tools), db)
    result = {"src": backup.path}
    if backup.warnings:
        result["warnings"] = list(backup.warnings)
    clean_leftovers(tools, db, result, False)
    scratch = scratch_db or suffix_name(db, "verify", utc_now())
    if database_exists(tools, scratch):
        if not is_marked(tools, scratch, db):
            raise BackupError("scratch database %s already exists: choose another scratch_db or drop it" % scratch)
        drop_database(tools, scratch)
        result["leftovers_dropped"].append(scratch)
    problems = []
    checks = []
    journal.record("temporary_database", database=scratch, server=server_identity(tools))
    create_database(tools, scratch, props, db)
    try:
        restore_archive(tools, backup.path, scratch, jobs, identity_file)
        tables, problems = compare_contents(tools, scratch, backup.metadata)
        apply_properties(tools, scratch, props)
        result["database_properties"], more = compare_properties(tools, scratch, props)
        problems += more
        checks, more = check_content(tools, scratch, tables, critical_tables, queries)
        problems += more
    finally:
        drop_database(tools, scratch)
    result.update(scratch_db=scratch, tables=tables, checks=checks, problems=problems, duration=round(time.time() - started, 3))
    if problems:
        raise VerifyFailed(failed_verification("backup %s" % backup.name, problems, "use another backup or fix the checks"), result)
    return result


def critical_key(name):
    """How a critical table is named (``schema.table``, or ``table`` in ``public``) as a key of ``table_rows``."""
    return name if "." in name else "public." + name


def table_rows(tools, dbname, only=None):
    """Exact row count of user tables, from one snapshot: {schema.table: {"restored": n}}.

    ``only`` (critical table names) counts just those: on a live database
    counting every table costs too much.  Tables are found in the catalog and
    counted as quoted identifiers, so a name with capitals, spaces or quotes
    is counted and a crafted one runs no SQL; a name that is no table is left
    out (``check_content`` then says so).
    """
    wanted = None if only is None else set(critical_key(name) for name in only)
    session = tools.session(dbname)
    try:
        session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;")
        relations = [relation for relation in list_relations(session, "listing tables")
                     if wanted is None or table_name(*relation[:2]) in wanted]
        counts = dict((name, {"restored": rows}) for name, rows in count_rows(session, relations, "counting rows").items())
        session.query("COMMIT;")
    finally:
        session.close()
    return counts


def check_live(tools, dbname, critical_tables=None, queries=None):
    """The checks of ``verify`` on a live database (after a recovery); returns the result, raises VerifyFailed.

    ``msg`` is the one line a health report shows: each critical table with its rows, and the queries.
    """
    tables = table_rows(tools, dbname, only=critical_tables or {})
    checks, problems = check_content(tools, dbname, tables, critical_tables, queries)
    result = {"database": dbname, "checks": checks, "problems": problems}
    if problems:
        raise VerifyFailed(failed_verification("database %s" % dbname, problems, "restore another backup or fix the checks"), result)
    names = sorted(critical_tables or {})
    result["msg"] = "%d critical tables at or above their minimum (%s), %d queries true" % (
        len(names), ", ".join("%s=%d" % (name, tables[critical_key(name)]["restored"]) for name in names), len(queries or []))
    return result


def failed_verification(subject, problems, fix):
    """The one line of a failed verification, whether of a backup's scratch copy or of a live database."""
    return "%s failed verification: %s -- %s" % (subject, "; ".join(problems[:3]), fix)


def check_content(tools, dbname, tables, critical_tables=None, queries=None):
    """The operator's checks (critical tables' minimum rows, queries that must be true) on a restored or recovered database.

    ``tables`` maps schema.table to {"restored": rows}; returns (checks, problems).
    """
    checks = []
    problems = []
    for name, minimum in sorted((critical_tables or {}).items()):
        got = tables.get(critical_key(name), {}).get("restored")
        ok = got is not None and got >= int(minimum)
        checks.append({"check": "critical table %s >= %s rows" % (name, minimum), "ok": ok, "value": got})
        if got is None:
            problems.append("critical table %s was not found (name it schema.table, or table for one in public)" % name)
        elif not ok:
            problems.append("critical table %s has %s rows, needs at least %s" % (name, got, minimum))
    for sql in queries or []:
        try:
            rows = tools.psql(dbname, sql.rstrip().rstrip(";") + ";", what="query")
            value = rows[0][0] if rows and rows[0] else None
        except BackupError as exc:
            value = str(exc)
        ok = value == "t"
        checks.append({"check": sql, "ok": ok, "value": value})
        if not ok:
            problems.append("query %r returned %r, not true" % (sql, value))
    return checks, problems


class VerifyFailed(BackupError):
    def __init__(self, message, result):
        BackupError.__init__(self, message)
        self.result = result
