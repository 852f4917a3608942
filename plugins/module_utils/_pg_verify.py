# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Proof that a backup restores (``verify``) and that a live database holds what the operator expects (``check``).

Both run the same operator checks (critical tables, queries), so a health check
after a recovery and a backup verification say the same thing in the same words.
"""

import collections
import time

from ansible_collections.minimarket.backup.plugins.module_utils import _journal
from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import utc_now
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pg_catalog import (
    check_privileges,
    compare_contents,
    compare_properties,
    count_rows,
    database_exists,
    list_relations,
    table_name,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pg_databases import (
    apply_properties,
    clean_leftovers,
    create_database,
    drop_database,
    is_marked,
    server_identity,
    suffix_name,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pg_format import load_backup
from ansible_collections.minimarket.backup.plugins.module_utils._pg_globals import check_roles, existing_roles
from ansible_collections.minimarket.backup.plugins.module_utils._pg_load import restore_archive


class VerifyOptions(collections.namedtuple("VerifyOptions", "source db jobs scratch_db critical_tables queries")):
    """What one verification restores and checks (``source`` is a BackupSource), built once from the module's options."""

    __slots__ = ()


class VerifyFailed(BackupError):
    def __init__(self, message, result):
        BackupError.__init__(self, message)
        self.result = result


def verify(tools, options, journal=None):
    """Checksums, full restore into a scratch database (always dropped), row counts, properties, critical tables, queries.

    ``options`` is a VerifyOptions.
    """
    source, db, jobs, scratch_db, critical_tables, queries = options
    identity_file = source.identity_file
    journal = journal or _journal.Job(None, "verify")
    started = time.time()
    backup = load_backup(source)
    check_privileges(tools)
    tools.check_client("pg_restore", tools.server_version_num(tools.maintenance_db))
    props = backup.metadata.get("database_properties", {})
    check_roles(props, existing_roles(tools), db)
    result = {"src": backup.path, "backup": backup.describe()}
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
        restore_archive(tools, backup.path, scratch, jobs, identity_file, backup.metadata["archive_format"])
        tables, problems = compare_contents(tools, scratch, backup.metadata, jobs)
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
