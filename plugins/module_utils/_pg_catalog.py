# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a database holds, read from the catalog: tables and their exact rows, object counts, database properties.

The dump records these facts and restore and verify compare a copy against them, so the queries live in one place.
"""

import json

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._parallel import drain
from ansible_collections.minimarket.backup.plugins.module_utils._pg_format import FORMAT_1
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import quote_ident, quote_literal


# Names as JSON: psql prints one row per line, and a name may hold a newline.
USER_RELATIONS = """
SELECT to_json(n.nspname), to_json(c.relname), c.relpages
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY n.nspname, c.relname;
"""
# Every relation's size, which orders the work biggest first, and whether ANALYZE runs on it: a database-wide ANALYZE
# processes tables, partitioned tables and populated materialized views, the system catalogs too but not the shared
# ones, which belong to the cluster.  A partition is analyzed with its root (ANALYZE of a partitioned table analyzes
# every partition), so the root is sized by its whole tree.
RELATION_SIZES = """
SELECT to_json(n.nspname), to_json(c.relname),
       CASE WHEN c.relkind = 'p' THEN (SELECT coalesce(sum(pg_relation_size(t.relid)), 0) FROM pg_partition_tree(c.oid) t)
            ELSE pg_relation_size(c.oid) END,
       NOT c.relispartition AND (c.relkind <> 'm' OR c.relispopulated)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'p') AND c.relpersistence <> 't' AND NOT c.relisshared;
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


def table_name(schema, name):
    return "%s.%s" % (schema, name)


def list_relations(session, what):
    return [(json.loads(r[0]), json.loads(r[1]), int(r[2])) for r in session.query(USER_RELATIONS, what=what)]


def count_rows(session, relations, what, own=False):
    """{schema.table: rows}; rows are labelled by position, since a name may not fit on one psql line.

    ``own``: each table's own rows (``FROM ONLY``), without those of its inheritance children, as its COPY holds them.
    """
    if not relations:
        return {}
    sql = "\nUNION ALL ".join("SELECT %d, count(*) FROM %s%s.%s" % (index, "ONLY " if own else "", quote_ident(s), quote_ident(n))
                              for index, (s, n, _pages) in enumerate(relations))
    return dict((table_name(*relations[int(index)][:2]), int(count)) for index, count in session.query(sql + ";", what=what))


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


def compare_properties(tools, name, expected):
    """Problems (list of lines) where the database's properties differ from the recorded ones."""
    if not expected:
        return {}, []
    actual = read_properties(tools, name)
    problems = ["database %s: %s is %s, backup says %s" % (name, key, json.dumps(actual.get(key)), json.dumps(expected[key]))
                for key in PROPERTY_KEYS if key in expected and actual.get(key) != expected[key]]
    return actual, problems


def compare_contents(tools, dbname, metadata, jobs=1, analyze=False):
    """Per-table rows and object counts of dbname vs the metadata; returns (per-table results, problems).

    Tables are counted by ``jobs`` sessions that share one exported snapshot, so
    the counts stay those of one instant while no table waits for another.
    ``analyze`` first runs ANALYZE on each relation a database-wide ANALYZE
    would, in the same sessions, so a restore leaves the planner's statistics
    without a serial pass over the whole database.  Format 1 metadata counted a
    table with its inheritance children (``count(*)``), later ones its own rows.
    """
    own = metadata.get("archive_format") != FORMAT_1
    lead = tools.session(dbname)
    try:
        lead.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;")
        snapshot = lead.query("SELECT pg_export_snapshot();", what="exporting the snapshot of %s" % dbname)[0][0]
        counted = list_relations(lead, "listing restored tables")
        objects = dict((k, int(v)) for k, v in lead.query(OBJECT_COUNTS, what="counting restored objects"))
        sizes = {}
        analyzed = set()
        for schema, name, size, analyzed_too in lead.query(RELATION_SIZES, what="listing relations"):
            key = (json.loads(schema), json.loads(name))
            sizes[key] = int(size)
            if analyze and analyzed_too == "t":
                analyzed.add(key)
        tables = set((schema, name) for schema, name, _pages in counted)
        tasks = [key + (key in analyzed, key in tables) for key in sorted(analyzed | tables, key=lambda key: (-sizes.get(key, 0), key))]
        actual = _run_in_sessions(tools, dbname, tasks, max(1, jobs), snapshot, own)
        lead.query("COMMIT;")
    finally:
        lead.close()
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


def _run_in_sessions(tools, dbname, tasks, workers, snapshot, own):
    """ANALYZE and count each (schema, name, analyze, count) task in ``workers`` sessions; returns {schema.table: rows}."""
    counts = {}

    def run(session, task, _abort):
        schema, name, analyze_it, count_it = task
        relation = "%s.%s" % (quote_ident(schema), quote_ident(name))
        if analyze_it:
            session.query("ANALYZE %s;" % relation, what="analyzing %s" % table_name(schema, name))
        if count_it:
            rows = session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSET TRANSACTION SNAPSHOT %s;\n"
                                 "SELECT count(*) FROM %s%s;\nCOMMIT;" % (quote_literal(snapshot), "ONLY " if own else "", relation),
                                 what="counting rows of %s" % table_name(schema, name))
            counts[table_name(schema, name)] = int(rows[0][0])

    drain(tasks, workers, run, setup=lambda: tools.session(dbname), teardown=lambda session: session.close())
    return counts
