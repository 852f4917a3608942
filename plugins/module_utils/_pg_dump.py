# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One consistent dump of a PostgreSQL database: every stream read from one exported snapshot, written atomically.

Table data is dumped by ``jobs`` parallel ``pg_dump`` workers attached to the
snapshot; the metadata (written last) records the exact rows and objects seen in it,
each table's rows counted in its own COPY stream (see CopyRowCounter).
"""

import collections
import io
import json
import os
import socket
import time

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import (
    FORMAT_VERSION,
    archive_name,
    check_environment,
    utc_now,
)
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._files import (
    AtomicFile,
    backup_lock,
    new_archive_path,
    remove_stale_partials,
    write_metadata,
)
from ansible_collections.minimarket.backup.plugins.module_utils._parallel import drain
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import (
    EXTENSIONS,
    CompressedSink,
    check_recipients,
    encryption_record,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pg_catalog import (
    DATABASE_PROPERTIES,
    OBJECT_COUNTS,
    PROPERTY_KEYS,
    list_relations,
    normalize_properties,
    table_name,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pg_format import (
    ARCHIVE_FORMAT,
    COLLECTION_VERSION,
    KIND,
    ArchiveWriter,
    CopyRowCounter,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pg_globals import dump_globals
from ansible_collections.minimarket.backup.plugins.module_utils._pg_post_data import POST_DATA, TABLES, item_tables, tables_stream
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import dump_pattern, explain, quote_literal
from ansible_collections.minimarket.backup.plugins.module_utils._process import DEVNULL, PIPE, widen_pipe


LEVELS = {"gzip": 9, "zstd": 19}

# Tables whose dump may end with a "\\." line after their data, or with more than a chunk of it: a sequence
# they own has a newline in its name, or they own very many (CopyRowCounter then reads every byte for the end).
SEARCH_FROM_START = """
SELECT to_json(tn.nspname), to_json(t.relname)
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
GROUP BY tn.nspname, t.relname
HAVING count(*) >= 500 OR bool_or(strpos(sn.nspname || s.relname, chr(10)) > 0);
"""


DUMP_FIELDS = "db backup_dir environment compression jobs include_globals recipients compression_level"


class DumpOptions(collections.namedtuple("DumpOptions", DUMP_FIELDS)):
    """What one dump writes and how (the module's options), built once instead of passed as eight positional arguments."""

    __slots__ = ()


class DumpProcess(object):
    """One pg_dump started now and streamed into the archive when its turn comes.

    Until then what it writes waits in its pipe (1 MiB, then it blocks), so the
    small sections are dumped while other streams are written, without any
    memory or disk of ours.
    """

    def __init__(self, tools, stream, args, extra, counter=None):
        self.tools = tools
        self.stream = stream
        self.extra = extra
        self.counter = counter
        self.done = False
        self.proc = tools.start("pg_dump", args, stdin=DEVNULL, stdout=PIPE)
        widen_pipe(self.proc.stdout.fileno())

    def copy(self, writer, abort=None):
        """Stream the output into the archive; a table's rows are counted on the way (``counter``)."""
        with self.proc:
            self.done = True
            writer.copy_stream(self.stream, self.proc.stdout, self.extra, abort, self.counter)
            rc = self.proc.wait()
            if rc != 0:
                raise BackupError(explain(self.proc.stderr(), "pg_dump of %s" % self.stream, rc, self.tools.container))
        if self.counter is not None and self.counter.rows is None:
            raise BackupError("pg_dump of table %s ended without the end of its COPY data: its rows cannot be counted, "
                              "check the server's log and run the dump again" % self.extra["table"])

    def close(self):
        """Kill and reap a pg_dump whose turn never came (an error stopped the dump)."""
        if not self.done:
            self.done = True
            self.proc.close()


def snapshot_facts(session, db):
    """What the metadata records about the catalog, read inside the exported snapshot (rows are counted in the dump itself)."""
    session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;", what="starting the snapshot transaction")
    snapshot = session.query("SELECT pg_export_snapshot();", what="exporting the snapshot")[0][0]
    relations = list_relations(session, "listing tables")
    from_start = set((json.loads(schema), json.loads(name)) for schema, name in session.query(SEARCH_FROM_START, what="listing sequences"))
    items = item_tables(session)
    relations = [(schema, name, pages, (schema, name) not in from_start, items.get((schema, name), [])) for schema, name, pages in relations]
    objects = dict((k, int(v)) for k, v in session.query(OBJECT_COUNTS, what="counting objects"))
    props = json.loads(session.query(DATABASE_PROPERTIES % quote_literal(db), what="reading database properties")[0][0])
    return snapshot, relations, objects, props


def table_rows(manifest):
    """{schema.table: rows} from the manifest: the lines of each table's COPY data, read from the snapshot like everything else."""
    return dict(sorted((entry["table"], entry["rows"]) for entry in manifest["streams"].values() if entry.get("kind") == "table-data"))


def check_backup_dir(backup_dir, may_not_exist=False):
    """Refuse a backup_dir the dump cannot write into.

    With ``may_not_exist`` (check mode: backup_storage creates the directories only in a real run) a
    missing backup_dir is fine when its nearest existing parent is a writable directory; returns whether it exists.
    """
    if may_not_exist and not os.path.lexists(backup_dir):
        parent = os.path.dirname(os.path.abspath(backup_dir))
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not (os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)):
            raise BackupError("backup_dir %s does not exist and %s is not a writable directory: fix backup_dir or the permissions of %s"
                              % (backup_dir, parent, parent))
        return False
    if not os.path.isdir(backup_dir):
        raise BackupError("backup_dir %s is not a directory: create it (mode 0700) or fix backup_dir" % backup_dir)
    if not os.access(backup_dir, os.W_OK | os.X_OK):
        raise BackupError("backup_dir %s is not writable by this user: fix its permissions or choose another backup_dir" % backup_dir)
    return True


def plan_dump(backup_dir, environment, compression, when=None, encrypted=False):
    check_environment(environment)
    name = archive_name(KIND, environment, when or utc_now(), compression, encrypted)
    path = os.path.join(backup_dir, name)
    return path


def check_compression_level(compression, level):
    if level is not None and not 1 <= level <= LEVELS.get(compression, 0):
        raise BackupError("compression_level %s does not fit compression %s: use 1-9 for gzip, 1-19 for zstd, "
                          "and leave it unset for none" % (level, compression))


def dump(tools, options):
    """Write one complete backup (``options`` is a DumpOptions) or raise BackupError leaving nothing that looks complete.

    With ``recipients`` (age public keys) the archive is encrypted as it is written.
    """
    db, backup_dir, environment, compression, jobs, include_globals, recipients, compression_level = options
    started = time.time()
    check_environment(environment)
    if compression not in EXTENSIONS:
        raise BackupError("compression %r is not supported: use gzip, zstd or none" % compression)
    check_compression_level(compression, compression_level)
    recipients = check_recipients(recipients)
    check_backup_dir(backup_dir)
    server_num = tools.server_version_num(db)
    pg_dump_version = tools.check_client("pg_dump", server_num)
    with backup_lock(backup_dir, KIND, environment):
        remove_stale_partials(backup_dir, KIND, environment)
        when = utc_now()
        path = new_archive_path(backup_dir, KIND, environment, when, compression, bool(recipients))
        session = tools.session(db)
        try:
            snapshot, relations, objects, props = snapshot_facts(session, db)
            with AtomicFile(path) as target:
                sink = CompressedSink(target.handle, compression, recipients, compression_level)
                try:
                    manifest = _write_archive(tools, sink, db, snapshot, relations, jobs, include_globals, int(when.timestamp()))
                    size, sha256 = sink.close()
                except BaseException:
                    sink.abort()
                    raise
                target.commit()
            counts = table_rows(manifest)
        except OSError as exc:
            raise BackupError("writing %s failed: %s -- free space on the destination or choose another backup_dir" % (path, exc.strerror or exc))
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
    # Not a "*.*" pattern: that would also drop the values of sequences no table owns.
    excluded = ["--exclude-table-data=" + dump_pattern(schema, name) for schema, name, _pages, _end_search, _items in relations]
    # Biggest tables first so the last worker does not start a giant alone.
    ordered = sorted(relations, key=lambda r: -r[2])
    tables = [("data/%04d.sql" % index, base + ["--data-only", "-t", dump_pattern(schema, name)],
               {"kind": "table-data", "table": table_name(schema, name)}, end_search)
              for index, (schema, name, _pages, end_search, _items) in enumerate(ordered)]
    owners = tables_stream((stream, extra["table"], relation[4]) for (stream, _args, extra, _end), relation in zip(tables, ordered))
    workers = max(1, min(jobs, len(relations)))
    started = []
    try:
        # Every pg_dump needed first starts at once (see DumpProcess): the sections are small, the first tables wait their turn.
        for stream, args, kind in (("schema.sql", ["--schema-only"], "schema"), ("pre-data.dump", ["-Fc", "--section=pre-data"], "pre-data"),
                                   (POST_DATA, ["-Fc", "--section=post-data"], "post-data"),
                                   ("misc-data.dump", ["-Fc", "--data-only"] + excluded, "misc-data")):
            started.append(DumpProcess(tools, stream, base + args, {"kind": kind}))
        for stream, args, extra, end_search in tables[:workers]:
            started.append(DumpProcess(tools, stream, args, extra, CopyRowCounter(end_search)))
        schema, pre_data, post_data, misc_data = started[:4]
        schema.copy(writer)
        pre_data.copy(writer)
        post_data.copy(writer)
        writer.copy_stream(TABLES, io.BytesIO(owners), {"kind": "post-data-tables"})
        if include_globals:
            dump_globals(tools, writer)
        _write_tables(tools, writer, tables, started[4:], workers)
        misc_data.copy(writer)
    except BaseException:
        for process in started:
            process.close()
        raise
    return writer.finish()


def _write_tables(tools, writer, tables, first, workers):
    """Every table's data by ``workers`` threads; ``first`` are the pg_dumps of the first tables, already running."""
    running = dict((process.stream, process) for process in first)

    def copy(_state, table, abort):
        stream, args, extra, end_search = table
        process = running.pop(stream, None) or DumpProcess(tools, stream, args, extra, CopyRowCounter(end_search))
        process.copy(writer, abort)

    drain(tables, workers, copy)
