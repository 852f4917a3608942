# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Post-data restored as ``pg_restore -j`` does inside one run: a table's indexes are built as soon as its data is in.

A restore that builds every index after all the data leaves one core idle
while the last big tables load.  The dump records which table each index and
primary key, unique or exclusion constraint belongs to (``post-data-tables.json``,
keyed by the catalog ids ``pg_restore -l`` prints), and writes both ahead of
the data; the restore then runs a table's items (``pg_restore -L``) while other
tables still load, and everything else (foreign keys, triggers, items that
depend on other items, comments) once all the data is in, with ``pg_restore -j``.
"""

import contextlib
import json
import queue
import re
import tempfile
import threading

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import explain
from ansible_collections.minimarket.backup.plugins.module_utils._process import DEVNULL, PIPE, run

POST_DATA = "post-data.dump"
TABLES = "post-data-tables.json"

# Indexes and the constraints that build one, with the table they belong to ("catalog oid" as pg_restore -l prints it).
ITEM_TABLES = """
SELECT to_json(n.nspname), to_json(c.relname), o.catalog::text || ' ' || o.oid::text
FROM (SELECT 'pg_class'::regclass::oid AS catalog, indexrelid AS oid, indrelid AS rel FROM pg_index
      UNION ALL SELECT 'pg_constraint'::regclass::oid, oid, conrelid FROM pg_constraint WHERE contype IN ('p', 'u', 'x')) o
JOIN pg_class c ON c.oid = o.rel AND c.relkind = 'r'
JOIN pg_namespace n ON n.oid = c.relnamespace;
"""
TOC_ENTRY = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
DEPENDS = ";\tdepends on:"
# The pg_restore -l descriptions of the items a table owns alone, with their catalog.
OWN_ITEMS = (("1259", "INDEX "), ("2606", "CONSTRAINT "))


def item_tables(session):
    """{(schema, table): ["catalog oid", ...]} read in the dump's snapshot."""
    items = {}
    for schema, name, key in session.query(ITEM_TABLES, what="listing indexes and constraints"):
        items.setdefault((json.loads(schema), json.loads(name)), []).append(key)
    return items


def tables_stream(tables):
    """The bytes of post-data-tables.json from (data stream, table name, its item keys):
    {"items": {"catalog oid": data stream}, "tables": {data stream: table name}} (the name is for messages)."""
    tables = list(tables)
    return json.dumps({"items": dict((key, stream) for stream, _name, keys in tables for key in keys),
                       "tables": dict((stream, name) for stream, name, keys in tables if keys)}, sort_keys=True).encode("utf-8")


def parse_toc(text):
    """[(dump id, "catalog oid", description, [dependency ids])] of ``pg_restore -l -v`` output, in its order."""
    entries = []
    for line in text.splitlines():
        if line.startswith(DEPENDS) and entries:
            entries[-1][3].extend(int(dep) for dep in line[len(DEPENDS):].split())
            continue
        match = TOC_ENTRY.match(line)
        if match:
            entries.append((int(match.group(1)), "%s %s" % (match.group(2), match.group(3)), match.group(4), []))
    return entries


def plan(entries, owners):
    """({data stream: [dump ids]}, [the other dump ids]): a table's own indexes and constraints, whose dependencies are all its own too."""
    group_of = {}
    groups = {}
    rest = []
    for dump_id, key, desc, deps in entries:
        stream = owners.get(key)
        own = stream is not None and any(key.startswith(catalog + " ") and desc.startswith(prefix) for catalog, prefix in OWN_ITEMS)
        if own and all(group_of.get(dep) == stream for dep in deps):
            group_of[dump_id] = stream
            groups.setdefault(stream, []).append(dump_id)
        else:
            rest.append(dump_id)
    return groups, rest


class PostData(object):
    """The post-data of one restore: spooled as it arrives, a table's items run once its data is loaded, the rest at the end.

    Both spools are anonymous temporary files: a killed run leaves no file behind.
    """

    def __init__(self, tools, dbname, jobs):
        self.tools = tools
        self.dbname = dbname
        self.jobs = max(1, jobs)
        self.spools = {}
        self.groups = None
        self.rest = None
        self.dump = b""
        self.names = {}
        self.ready = queue.Queue()
        self.queued = set()
        self.running = set()
        self.lock = threading.Lock()
        self.failures = []
        self.workers = []

    def spool(self, stream):
        """Where the stream's loader (``cat``) writes it."""
        self.spools[stream] = tempfile.TemporaryFile()
        return self.spools[stream]

    def _read(self, stream):
        spool = self.spools.get(stream)
        if spool is None:
            return None
        spool.seek(0)
        return spool.read()

    def start(self):
        """Once both spools are complete (before any table data): read the TOC, group it by table, start the workers."""
        if self.groups is not None:
            return
        self.dump = self._read(POST_DATA) or b""
        owners = json.loads((self._read(TABLES) or b"{}").decode("utf-8"))
        self.names = owners.get("tables", {})
        text = ""
        if self.dump:
            rc, text, err = run(self.tools.argv("pg_restore", ["-l", "-v"], spool_stdin=True), data=self.dump, env=self.tools.environ_update())
            if rc != 0:
                raise BackupError(explain(err, "listing %s" % POST_DATA, rc, self.tools.container))
        self.groups, self.rest = plan(parse_toc(text), owners.get("items", {}))
        self.workers = [threading.Thread(target=self._work) for _worker in range(self.jobs)]
        for worker in self.workers:
            worker.daemon = True
            worker.start()

    def loaded(self, stream):
        """A table's data is committed: its indexes may be built now (called from the loader's thread)."""
        with self.lock:
            if self.groups is not None and stream in self.groups and stream not in self.queued:
                self.queued.add(stream)
                self.ready.put(stream)

    def check(self):
        """Raise a table's failed items now, not after the rest of the data has loaded for nothing."""
        if self.failures:
            raise self.failures[0]

    def _work(self):
        while True:
            streams = [self.ready.get()]
            if streams[0] is None:
                return
            with contextlib.suppress(queue.Empty):
                while True:
                    more = self.ready.get_nowait()
                    if more is None:
                        self.ready.put(None)
                        break
                    streams.append(more)
            if self.failures:
                continue
            ids = [dump_id for stream in streams for dump_id in self.groups[stream]]
            try:
                self._restore(ids, ["--exit-on-error"], "the indexes and constraints of %s"
                              % ", ".join(self.names.get(stream, stream) for stream in streams))
            except BaseException as exc:  # reported by finish() or superseded by the error that killed the restore
                self.failures.append(exc)

    def _restore(self, ids, options, what):
        proc = self.tools.start("pg_restore", options + ["--no-password", "-d", self.dbname], stdin=PIPE, stdout=DEVNULL, toc_ids=ids)
        with self.lock:
            self.running.add(proc)
            if self.failures:
                proc.kill()  # kill() came between this worker's check and the start
        try:
            with proc:
                try:
                    proc.stdin.write(self.dump)
                    proc.stdin.close()
                except OSError:
                    pass  # pg_restore died; its exit status and stderr say why
                rc = proc.wait()
                if rc != 0:
                    raise BackupError(explain(proc.stderr(), "restoring %s" % what, rc, self.tools.container))
        finally:
            with self.lock:
                self.running.discard(proc)

    def finish(self):
        """After all the data: the tables' items not yet run, then everything else with ``pg_restore -j``."""
        self.start()
        for stream in self.groups:
            self.loaded(stream)
        self._stop()
        self.check()
        if self.rest:
            self._restore(self.rest, ["--exit-on-error", "-j", str(self.jobs)], POST_DATA)

    def _stop(self):
        for _worker in self.workers:
            self.ready.put(None)
        for worker in self.workers:
            worker.join()
        self.workers = []

    def kill(self):
        """An error stopped the restore: stop the workers and their pg_restore now."""
        with self.lock:
            self.failures.append(BackupError("stopped"))
            running = list(self.running)
        for proc in running:
            proc.kill()
        self._stop()
        for spool in self.spools.values():
            spool.close()
