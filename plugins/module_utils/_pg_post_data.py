# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Post-data restored as ``pg_restore -j`` does inside one run: a table's indexes are built as soon as its data is in.

A restore that builds every index and checks every foreign key after all the
data leaves one core idle while the last big tables load, and again while the
last foreign key is checked.  The dump records which table each index and
constraint belongs to (``post-data-tables.json``, keyed by the catalog ids
``pg_restore -l`` prints) and writes both ahead of the data.  The restore runs
an item (``pg_restore -L``) once its table's data is in and the items it
depends on are done (a foreign key waits for the key it references), and
everything else (triggers, partition indexes, comments, materialized views)
once all the data is in, with ``pg_restore -j``.
"""

import json
import re
import tempfile
import threading

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import explain
from ansible_collections.minimarket.backup.plugins.module_utils._process import DEVNULL, PIPE

POST_DATA = "post-data.dump"
TABLES = "post-data-tables.json"

# Indexes and constraints with the table they belong to ("catalog oid" as pg_restore -l prints it); a foreign key
# belongs to the table it checks.
ITEM_TABLES = """
SELECT to_json(n.nspname), to_json(c.relname), o.catalog::text || ' ' || o.oid::text
FROM (SELECT 'pg_class'::regclass::oid AS catalog, indexrelid AS oid, indrelid AS rel FROM pg_index
      UNION ALL SELECT 'pg_constraint'::regclass::oid, oid, conrelid FROM pg_constraint WHERE contype IN ('p', 'u', 'x', 'f')) o
JOIN pg_class c ON c.oid = o.rel AND c.relkind = 'r'
JOIN pg_namespace n ON n.oid = c.relnamespace;
"""
TOC_ENTRY = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
DEPENDS = ";\tdepends on:"
# The pg_restore -l descriptions of the items that belong to a table, with their catalog.
TABLE_ITEMS = (("1259", "INDEX "), ("2606", "CONSTRAINT "), ("2606", "FK CONSTRAINT "))
# Items of tables smaller than this run together in one pg_restore (each costs a start-up, a docker exec in
# container mode), up to this much table data per pg_restore; a bigger table's items run one by one, side by side.
BATCH_BYTES = 16 * 1024 * 1024


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
    """([(dump id, data stream, [dependency ids], exclusive)], [the other dump ids]) in TOC order.

    An item runs with its table when it belongs to one and every item it depends
    on does too (an index of a partition waits for its parent's, so it waits for
    all). A constraint is ``exclusive``: adding it locks its table against any
    other item, where indexes of one table build side by side.
    """
    bound = []
    bound_ids = set()
    rest = []
    for dump_id, key, desc, deps in entries:
        stream = owners.get(key)
        own = stream is not None and any(key.startswith(catalog + " ") and desc.startswith(prefix) for catalog, prefix in TABLE_ITEMS)
        if own and all(dep in bound_ids for dep in deps):
            bound.append((dump_id, stream, list(deps), not desc.startswith("INDEX ")))
            bound_ids.add(dump_id)
        else:
            rest.append(dump_id)
    return bound, rest


class PostData(object):
    """The post-data of one restore: spooled as it arrives, an item run once its table is loaded and its dependencies done.

    Like ``pg_restore -j``, ``jobs`` workers take the items of the biggest table
    first, never two on one table when one is a constraint (they would wait on
    each other's lock); the items of small tables go together, a pg_restore each
    costing a start-up. Both spools are anonymous temporary files: a killed run
    leaves no file behind.
    """

    def __init__(self, tools, dbname, jobs):
        self.tools = tools
        self.dbname = dbname
        self.jobs = max(1, jobs)
        self.spools = {}
        self.started = False
        self.dump = b""
        self.names = {}
        self.waiting = []
        self.rest = []
        self.position = {}
        self.table_of = {}
        self.sizes = {}
        self.done = set()
        self.queue = []
        self.locks = {}
        self.busy = 0
        self.running = set()
        self.stopping = False
        self.ready = threading.Condition()
        self.failures = []
        self.workers = []

    def spool(self, stream):
        """Where the stream's loader (``cat``) writes it."""
        self.spools[stream] = tempfile.TemporaryFile()
        return self.spools[stream]

    def _read(self, stream):
        """The spooled stream's bytes (it is small); the spool is closed, nothing reads it again."""
        spool = self.spools.get(stream)
        if spool is None:
            return None
        with spool:
            spool.seek(0)
            return spool.read()

    def start(self):
        """Once both spools are complete (before any table data): read the TOC, plan it, start the workers."""
        if self.started:
            return
        self.started = True
        self.dump = self._read(POST_DATA) or b""
        owners = json.loads((self._read(TABLES) or b"{}").decode("utf-8"))
        self.names = owners.get("tables", {})
        text = ""
        if self.dump:
            text = self.tools.run("pg_restore", ["-l", "-v"], data=self.dump, what="listing %s" % POST_DATA, spool_stdin=True)
        entries = parse_toc(text)
        self.position = dict((entry[0], index) for index, entry in enumerate(entries))
        self.waiting, self.rest = plan(entries, owners.get("items", {}))
        self.table_of = dict((item[0], item[1]) for item in self.waiting)
        self.workers = [threading.Thread(target=self._work) for _worker in range(self.jobs)]
        for worker in self.workers:
            worker.daemon = True
            worker.start()

    def loaded(self, stream, size):
        """A table's data (``size`` bytes) is committed: its items may run now (called from the loader's thread)."""
        with self.ready:
            self.sizes.setdefault(stream, size)
            self.release()

    def release(self):
        """Queue every waiting item whose table is loaded and whose dependencies are done (the caller holds the lock).

        An item locks its own table and those of the items it depends on: a foreign
        key locks the table it references too.
        """
        waiting = []
        for item in self.waiting:
            dump_id, stream, deps, exclusive = item
            if stream in self.sizes and all(dep in self.done for dep in deps):
                tables = sorted(set([stream] + [self.table_of[dep] for dep in deps]))
                self.queue.append((self.sizes[stream], dump_id, stream, exclusive, tables))
            else:
                waiting.append(item)
        if len(waiting) < len(self.waiting):
            self.waiting = waiting
            self.queue.sort(key=lambda item: (-item[0], self.position.get(item[1], 0)))
            self.ready.notify_all()

    def check(self):
        """Raise a table's failed items now, not after the rest of the data has loaded for nothing."""
        if self.failures:
            raise self.failures[0]

    def _conflicts(self, tables, exclusive):
        """Whether another running pg_restore holds a lock on one of the tables that this item's would wait for."""
        for table in tables:
            shared, exclusive_held = self.locks.get(table, (0, 0))
            if (shared or exclusive_held) and (exclusive or exclusive_held):
                return True
        return False

    def _lock(self, taken, step):
        for table in set(table for item in taken for table in item[4]):
            shared, exclusive = self.locks.get(table, (0, 0))
            if any(item[3] for item in taken if table in item[4]):
                exclusive += step
            else:
                shared += step
            self.locks[table] = (shared, exclusive)

    def take(self):
        """The biggest ready item its table's locks allow, with small ones up to BATCH_BYTES; None once stopped and drained."""
        with self.ready:
            while not self.failures:
                taken = []
                total = 0
                for item in list(self.queue):
                    size, _dump_id, _stream, exclusive, tables = item
                    if taken and (total >= BATCH_BYTES or size >= BATCH_BYTES):
                        break
                    if not self._conflicts(tables, exclusive):
                        taken.append(item)
                        total += size
                        self.queue.remove(item)
                        if size >= BATCH_BYTES:
                            break
                if taken:
                    self._lock(taken, 1)
                    self.busy += 1
                    return taken
                if self.stopping and not self.busy:
                    return None
                self.ready.wait()
            return None

    def _work(self):
        while True:
            taken = self.take()
            if taken is None:
                return
            streams = sorted(set(item[2] for item in taken))
            failure = None
            try:
                self._restore([item[1] for item in taken], ["--exit-on-error"], "the indexes and constraints of %s"
                              % ", ".join(self.names.get(stream, stream) for stream in streams))
            except BaseException as exc:  # reported by check() or superseded by the error that killed the restore
                failure = exc
            self.finished(taken, failure)
            if failure is not None:
                return

    def finished(self, taken, failure=None):
        """A worker's pg_restore of ``taken`` ended: free its locks, and queue what waited for it (or stop everyone)."""
        with self.ready:
            self.busy -= 1
            self._lock(taken, -1)
            if failure is not None:
                self.failures.append(failure)
            else:
                self.done.update(item[1] for item in taken)
                self.release()
            self.ready.notify_all()

    def _restore(self, ids, options, what):
        proc = self.tools.start("pg_restore", options + ["--no-password", "-d", self.dbname], stdin=PIPE, stdout=DEVNULL, toc_ids=ids)
        with self.ready:
            self.running.add(proc)
            if self.failures:
                proc.kill()  # kill() came between this worker's take and the start
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
            with self.ready:
                self.running.discard(proc)

    def finish(self):
        """After all the data: the items still to run, then everything else with ``pg_restore -j``."""
        self.start()
        with self.ready:
            for item in self.waiting:
                self.sizes.setdefault(item[1], 0)  # its data never came: the manifest check says so after
            self.release()
        self._stop()
        self.check()
        rest = sorted(self.rest + [item[0] for item in self.waiting], key=self.position.get)
        if rest:
            self._restore(rest, ["--exit-on-error", "-j", str(self.jobs)], POST_DATA)

    def _stop(self):
        with self.ready:
            self.stopping = True
            self.ready.notify_all()
        for worker in self.workers:
            worker.join()
        self.workers = []

    def kill(self):
        """An error stopped the restore: stop the workers and their pg_restore now."""
        with self.ready:
            self.failures.append(BackupError("stopped"))
            self.ready.notify_all()
            running = list(self.running)
        for proc in running:
            proc.kill()
        self._stop()
        for spool in self.spools.values():
            spool.close()
