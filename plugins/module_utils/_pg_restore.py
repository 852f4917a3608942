# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore of a pg_split_dump backup beside the live database, the journaled swap, and the repair of a killed run.

The live database is replaced only after the restored copy matches the backup;
every step a SIGKILL could interrupt is journaled first so the next run repairs it.
"""

import collections
import contextlib
import time

from ansible_collections.minimarket.backup.plugins.module_utils import _journal
from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import utc_now
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pg_catalog import (
    check_privileges,
    compare_contents,
    compare_properties,
    database_exists,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pg_databases import (
    SESSIONS,
    apply_properties,
    clean_leftovers,
    create_database,
    describe_session,
    drop_database,
    other_sessions,
    server_identity,
    session_rows,
    suffix_name,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pg_format import load_backup
from ansible_collections.minimarket.backup.plugins.module_utils._pg_globals import (
    check_roles,
    existing_roles,
    prepare_globals,
    replay_globals,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pg_load import restore_archive
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import quote_ident, quote_literal


class RestoreOptions(collections.namedtuple("RestoreOptions", "source db strategy jobs keep_previous restore_globals restore_as")):
    """What one restore does (``source`` is a BackupSource), built once from the module's options."""

    __slots__ = ()


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


def restore(tools, options, check_mode=False, journal=None):
    """``options`` is a RestoreOptions; ``journal`` (a _journal.Job) records each step a killed run leaves for the next run to repair."""
    source, db, strategy, jobs, keep_previous, restore_globals, restore_as = options
    identity_file = source.identity_file
    journal = journal or _journal.Job(None, "restore")
    started = time.time()
    backup = load_backup(source)
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
        restore_archive(tools, backup.path, db, jobs, identity_file, backup.metadata["archive_format"])
        result["tables"], problems = compare_contents(tools, db, backup.metadata, jobs, analyze=True)
        apply_properties(tools, db, props)
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
        restore_archive(tools, backup.path, temp, jobs, identity_file, backup.metadata["archive_format"])
        result["tables"], problems = compare_contents(tools, temp, backup.metadata, jobs, analyze=True)
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
