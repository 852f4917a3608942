"""Compare two PostgreSQL databases: original vs restored.

``snapshot(conn)`` returns everything a restore must bring back: per table the exact
row count and a content checksum, plus the schema objects (views, triggers, enum
types, sequences with their positions, indexes, constraints, functions).
``diff(a, b)`` lists the differences in one line each (empty list = identical).

The checksum is order independent and runs in constant memory on the server: the
sum over rows of the first and last 60 bits of ``md5(row::text)``, so it works on a
1 GB table and does not depend on physical row order.  Text output settings are
pinned for the session so both sides render rows identically.
"""
import psycopg
from psycopg import sql

_SESSION = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",
)


def _connection(conn_or_conninfo):
    if isinstance(conn_or_conninfo, psycopg.Connection):
        return conn_or_conninfo, False
    return psycopg.connect(conn_or_conninfo, autocommit=True), True


def _tables(conn):
    return list(conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2"))


def _with_session(func):
    def wrapper(conn_or_conninfo, *args, **kwargs):
        conn, owned = _connection(conn_or_conninfo)
        try:
            for stmt in _SESSION:
                conn.execute(stmt)
            return func(conn, *args, **kwargs)
        finally:
            if owned:
                conn.close()
    wrapper.__doc__ = func.__doc__
    wrapper.__name__ = func.__name__
    return wrapper


def _qualified(schema, name):
    return name if schema == "public" else f"{schema}.{name}"


@_with_session
def row_counts(conn):
    """{table: exact row count}; tables outside ``public`` are named ``schema.table``."""
    result = {}
    for schema, name in _tables(conn):
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
        result[_qualified(schema, name)] = conn.execute(query).fetchone()[0]
    return result


@_with_session
def checksums(conn):
    """{table: 'count:sum_hi:sum_lo'} over md5 of every row's text form."""
    result = {}
    for schema, name in _tables(conn):
        query = sql.SQL(
            "SELECT count(*), coalesce(sum(('x' || substr(m, 1, 15))::bit(60)::bigint::numeric), 0), "
            "coalesce(sum(('x' || substr(m, 18, 15))::bit(60)::bigint::numeric), 0) "
            "FROM (SELECT md5(t::text) AS m FROM {}.{} t) s"
        ).format(sql.Identifier(schema), sql.Identifier(name))
        count, high, low = conn.execute(query).fetchone()
        result[_qualified(schema, name)] = f"{count}:{high}:{low}"
    return result


_OBJECT_QUERIES = {
    "views": "SELECT schemaname || '.' || viewname, md5(definition) FROM pg_views "
             "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    "matviews": "SELECT schemaname || '.' || matviewname, md5(definition) FROM pg_matviews",
    "triggers": "SELECT c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal",
    "enums": "SELECT n.nspname || '.' || t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) "
             "FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid "
             "JOIN pg_namespace n ON n.oid = t.typnamespace GROUP BY 1",
    "sequences": "SELECT schemaname || '.' || sequencename, coalesce(last_value::text, 'unused') "
                 "FROM pg_sequences",
    "indexes": "SELECT schemaname || '.' || indexname, indexdef FROM pg_indexes "
               "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    "constraints": "SELECT n.nspname || '.' || c.conrelid::regclass::text || '.' || c.conname, "
                   "pg_get_constraintdef(c.oid) FROM pg_constraint c "
                   "JOIN pg_namespace n ON n.oid = c.connamespace "
                   "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.conrelid <> 0",
    "functions": "SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', "
                 "md5(p.prosrc) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                 "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')",
    "comments": "SELECT c.relname, d.description FROM pg_description d JOIN pg_class c ON c.oid = d.objoid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE d.classoid = 'pg_class'::regclass AND d.objsubid = 0 "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
}


@_with_session
def schema_objects(conn):
    """{kind: {name: definition}} for views, triggers, enums, sequences, indexes, constraints, ..."""
    return {kind: dict(conn.execute(query).fetchall()) for kind, query in _OBJECT_QUERIES.items()}


@_with_session
def snapshot(conn):
    """Everything ``diff`` compares: counts, checksums, schema objects, encoding."""
    return {
        "encoding": conn.execute("SELECT pg_encoding_to_char(encoding) FROM pg_database "
                                 "WHERE datname = current_database()").fetchone()[0],
        "counts": row_counts(conn),
        "checksums": checksums(conn),
        "objects": schema_objects(conn),
    }


def _diff_maps(label, a, b):
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out.append(f"{label} {key}: missing in second")
        elif key not in a:
            out.append(f"{label} {key}: only in second")
        elif a[key] != b[key]:
            out.append(f"{label} {key}: {a[key]!r} != {b[key]!r}")
    return out


def diff(a, b):
    """One line per difference between two ``snapshot()`` results; [] when identical."""
    out = []
    if a["encoding"] != b["encoding"]:
        out.append(f"encoding: {a['encoding']} != {b['encoding']}")
    out += _diff_maps("rows", a["counts"], b["counts"])
    out += _diff_maps("checksum", a["checksums"], b["checksums"])
    for kind in sorted(set(a["objects"]) | set(b["objects"])):
        out += _diff_maps(kind, a["objects"].get(kind, {}), b["objects"].get(kind, {}))
    return out


def compare(first, second):
    """``diff(snapshot(first), snapshot(second))``: connections or conninfo strings."""
    return diff(snapshot(first), snapshot(second))
