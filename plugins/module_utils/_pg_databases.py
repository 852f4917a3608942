# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The databases restore and verify create beside the live one: names, marker, properties, sessions, leftovers.

A temporary copy is ours only if it has our name pattern and our marker comment,
so a killed run's leftovers can be found and dropped without touching a user's database.
"""

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import utc_now
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import quote_ident, quote_literal


TEMP_LABELS = ("restoring", "verify")
MARKER = "minimarket.backup pg_split_dump: temporary copy of database %s, safe to drop"
SESSIONS = """
SELECT pid, usename, application_name, state{terminate} FROM pg_stat_activity
WHERE datname = {db} AND pid <> pg_backend_pid() ORDER BY pid;
"""


def suffix_name(db, label, when):
    return "%s_%s_%s" % (db[:63 - len(label) - 17], label, when.strftime("%Y%m%d_%H%M%S"))


def server_identity(tools):
    """Which server a journal step belongs to (no password): a run against another server must not repair it."""
    return {"host": tools.conn_env.get("PGHOST", ""), "port": tools.conn_env.get("PGPORT", ""), "container": tools.container}


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


def drop_database(tools, name):
    tools.psql(tools.maintenance_db, "DROP DATABASE IF EXISTS %s WITH (FORCE);" % quote_ident(name),
               what="dropping database %s" % name)


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


def other_sessions(tools, db, terminate=False):
    """[{pid, user, application, state}] of the sessions on db (terminated when asked): the operator is told which."""
    sql = SESSIONS.format(terminate=", pg_terminate_backend(pid)" if terminate else "", db=quote_literal(db))
    return session_rows(tools.psql(tools.maintenance_db, sql, what="listing the sessions on %s" % db))


def describe_session(entry):
    return "pid %(pid)d user %(user)s application '%(application)s' %(state)s" % entry


def session_rows(rows):
    return [{"pid": int(r[0]), "user": r[1], "application": r[2], "state": r[3]} for r in rows]
