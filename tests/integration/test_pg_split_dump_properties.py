"""pg_split_dump: database-level properties, restore_globals and leftovers of killed runs, against a real PostgreSQL 15."""
import json

import psycopg
import pytest

from testenv import pgcompare
from tests.pg_fixtures import conn_args, run_module, unique

pytest_plugins = ["tests.pg_fixtures"]

PROPS = """
SELECT pg_get_userbyid(d.datdba), d.datconnlimit, shobj_description(d.oid, 'pg_database'),
       (SELECT array_agg(a ORDER BY a) FROM unnest(coalesce(d.datacl::text[], '{}')) a),
       (SELECT array_agg(c ORDER BY c) FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE s.setdatabase = d.oid),
       (SELECT array_agg(coalesce(pg_get_userbyid(nullif(s.setrole, 0)), '-') ORDER BY 1) FROM pg_db_role_setting s WHERE s.setdatabase = d.oid)
FROM pg_database d WHERE d.datname = %s
"""


def props_of(pg_server, db):
    return pg_server.execute(PROPS, params=(db,))[0]


def dump(pg_server, db, dest, **extra):
    result = run_module(conn_args(pg_server, state="dump", db=db, dest=dest, environment="testing", **extra))
    assert result["_rc"] == 0, result
    return result


def restore(pg_server, db, archive, check_mode=False, **extra):
    return run_module(conn_args(pg_server, state="restore", db=db, src=archive, environment="testing", **extra), check_mode=check_mode)


@pytest.fixture
def roles(pg_server):
    """Unique role names, dropped (with their databases and grants) after the test."""
    names = []
    yield names
    for name in names:
        if not pg_server.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(name,)):
            continue
        for (db,) in pg_server.execute("SELECT datname FROM pg_database WHERE pg_get_userbyid(datdba) = %s", params=(name,)):
            pg_server.drop_database(db)
        for (db,) in pg_server.execute("SELECT datname FROM pg_database WHERE datallowconn"):
            pg_server.execute('DROP OWNED BY "%s"' % name, db)
        pg_server.execute('DROP ROLE "%s"' % name)


@pytest.fixture
def fancy_db(pg_server, roles):
    """A database whose database-level properties are all set: owner, settings, grants, comment, connection limit."""
    owner, reader, writer = unique("mm_dueño"), unique("mm_lector"), unique("mm_escritor")
    roles.extend([owner, reader, writer])
    db = unique("mm_props")
    for role in (owner, reader, writer):
        pg_server.execute('CREATE ROLE "%s"' % role)
    pg_server.execute('CREATE DATABASE %s OWNER "%s"' % (db, owner))
    with pg_server.connect(db) as conn:
        conn.execute('CREATE SCHEMA "almacén"; CREATE TABLE "almacén".caja (id int PRIMARY KEY, t timestamptz); '
                     "INSERT INTO \"almacén\".caja SELECT g, now() FROM generate_series(1, 20) g")
    pg_server.execute('ALTER DATABASE %s SET search_path = "almacén", public, "$user"; '
                      "ALTER DATABASE %s SET timezone = 'America/Argentina/Buenos_Aires'; "
                      "ALTER DATABASE %s SET work_mem = '8MB'; "
                      'ALTER ROLE "%s" IN DATABASE %s SET statement_timeout = \'5min\'; '
                      "ALTER DATABASE %s CONNECTION LIMIT 40; "
                      "REVOKE ALL ON DATABASE %s FROM PUBLIC; "
                      'GRANT CONNECT, TEMPORARY ON DATABASE %s TO "%s"; '
                      'GRANT CONNECT, CREATE ON DATABASE %s TO "%s" WITH GRANT OPTION; '
                      "COMMENT ON DATABASE %s IS 'base del local\nsegunda línea ''citada'''"
                      % (db, db, db, reader, db, db, db, db, reader, db, writer, db))
    yield db, owner, reader, writer
    pg_server.drop_database(db)


def test_database_properties_survive_swap_restore_and_verify(pg_server, fancy_db, backup_dir, dropped_databases):
    db, owner, reader, _writer = fancy_db
    original = props_of(pg_server, db)
    assert original[0] == owner and original[1] == 40 and original[3] and len(original[4]) == 4
    result = dump(pg_server, db, backup_dir, compression="zstd")
    with open(result["metadata"], encoding="utf-8") as handle:
        recorded = json.load(handle)["database_properties"]
    assert recorded["owner"] == owner and recorded["comment"].startswith("base del local\n")
    assert {"role": None, "name": "search_path", "value": '"almacén", public, "$user"'} in recorded["settings"]
    assert {"grantee": "PUBLIC", "privilege": "CONNECT", "grantable": False} not in recorded["acl"]

    pg_server.execute("ALTER DATABASE %s RESET ALL; ALTER DATABASE %s SET timezone = 'UTC'; GRANT ALL ON DATABASE %s TO PUBLIC; "
                      "COMMENT ON DATABASE %s IS 'cambiado'; ALTER DATABASE %s OWNER TO postgres; ALTER DATABASE %s CONNECTION LIMIT -1"
                      % (db, db, db, db, db, db))
    changed = props_of(pg_server, db)
    restored = restore(pg_server, db, result["archive"])
    assert restored["_rc"] == 0, restored
    dropped_databases.append(restored["previous"])
    assert props_of(pg_server, db) == original
    assert props_of(pg_server, restored["previous"])[1:] == changed[1:]
    assert restored["database_properties"]["owner"] == owner and restored["database_properties"]["connection_limit"] == 40
    with psycopg.connect(pg_server.dsn(db), autocommit=True) as conn:
        assert conn.execute("SHOW search_path").fetchone()[0] == '"almacén", public, "$user"'
        assert conn.execute("SHOW timezone").fetchone()[0] == "America/Argentina/Buenos_Aires"
        assert conn.execute("SELECT count(*) FROM caja").fetchone()[0] == 20
    assert pg_server.execute("SELECT has_database_privilege('public', %s, 'CONNECT'), has_database_privilege(%s, %s, 'TEMP')",
                             params=(db, reader, db)) == [(False, True)]

    verified = run_module(conn_args(pg_server, state="verify", db=db, src=result["archive"], environment="testing"))
    assert verified["_rc"] == 0, verified
    assert verified["database_properties"] == restored["database_properties"]


def test_missing_role_fails_before_touching_anything(pg_server, fancy_db, backup_dir, roles):
    db, _owner, _reader, writer = fancy_db
    result = dump(pg_server, db, backup_dir)
    pg_server.execute('REVOKE ALL ON DATABASE %s FROM "%s"; DROP ROLE "%s"' % (db, writer, writer))
    target = unique("mm_props_copy")
    databases = pg_server.databases()
    for state in ("restore", "verify"):
        extra = dict(restore_as=target) if state == "restore" else {}
        refused = run_module(conn_args(pg_server, state=state, db=target, src=result["archive"], environment="testing", **extra))
        assert refused["_rc"] == 1, refused
        assert writer in refused["msg"] and "do not exist" in refused["msg"] and "restore_globals: true" in refused["msg"]
        assert "\n" not in refused["msg"]
        assert pg_server.databases() == databases
    no_globals = restore(pg_server, target, result["archive"], restore_globals=True, restore_as=target)
    assert no_globals["_rc"] == 1 and "has no globals.sql" in no_globals["msg"] and pg_server.databases() == databases


def _can_login(pg_server, role, password):
    try:
        with psycopg.connect(pg_server.dsn("postgres").replace("user=%s" % pg_server.user, "user=%s" % role)
                             .replace("password=%s" % pg_server.password, "password=%s" % password), connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


def test_restore_globals_creates_missing_roles_only(pg_server, backup_dir, roles, dropped_databases):
    owner, group, kept = unique("mm_g_owner"), unique("mm_g_group"), unique("mm_g_kept")
    roles.extend([owner, group, kept])
    pg_server.execute('CREATE ROLE "%s" LOGIN PASSWORD \'pw-owner\' CONNECTION LIMIT 3; CREATE ROLE "%s" NOLOGIN; '
                      'CREATE ROLE "%s" LOGIN PASSWORD \'pw-kept-old\'; GRANT "%s" TO "%s"; COMMENT ON ROLE "%s" IS \'grupo ; con punto y coma\''
                      % (owner, group, kept, group, owner, group))
    db = unique("mm_g_db")
    dropped_databases.append(db)
    pg_server.execute('CREATE DATABASE %s OWNER "%s"' % (db, owner))
    pg_server.execute('GRANT CONNECT ON DATABASE %s TO "%s"' % (db, kept))
    with pg_server.connect(db) as conn:
        conn.execute('CREATE TABLE caja (id int); INSERT INTO caja VALUES (1), (2); GRANT SELECT ON caja TO "%s"' % group)
        conn.execute('ALTER TABLE caja OWNER TO "%s"' % owner)
    result = dump(pg_server, db, backup_dir, include_globals=True)
    before = pgcompare.snapshot(pg_server.dsn(db))
    pg_server.drop_database(db)
    pg_server.execute('DROP ROLE "%s"; DROP ROLE "%s"; ALTER ROLE "%s" PASSWORD \'pw-kept-new\' NOLOGIN'
                      % (owner, group, kept))
    kept_before = pg_server.execute("SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = %s", params=(kept,))
    super_before = pg_server.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", params=(pg_server.user,))

    planned = restore(pg_server, db, result["archive"], check_mode=True, restore_globals=True)
    assert planned["_rc"] == 0 and planned["changed"] is True, planned
    assert sorted(planned["globals"]["created"]) == sorted([owner, group]) and kept in planned["globals"]["kept"]
    assert not pg_server.execute("SELECT 1 FROM pg_roles WHERE rolname IN (%s, %s)", params=(owner, group))

    restored = restore(pg_server, db, result["archive"], restore_globals=True)
    assert restored["_rc"] == 0, restored
    assert sorted(restored["globals"]["created"]) == sorted([owner, group])
    assert pg_server.user in restored["globals"]["kept"] or pg_server.user not in restored["globals"]["created"]
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(db))) == []
    assert pg_server.execute("SELECT rolconnlimit, rolcanlogin FROM pg_roles WHERE rolname = %s", params=(owner,)) == [(3, True)]
    assert pg_server.execute("SELECT pg_has_role(%s, %s, 'MEMBER'), shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
                             params=(owner, group, group)) == [(True, "grupo ; con punto y coma")]
    assert _can_login(pg_server, owner, "pw-owner")
    assert pg_server.execute("SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = %s", params=(kept,)) == kept_before
    assert pg_server.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", params=(pg_server.user,)) == super_before
    assert pg_server.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", params=(db,)) == [(owner,)]


def test_verify_drops_marked_leftovers_and_keeps_look_alikes(pg_server, seeded_db, backup_dir, dropped_databases):
    result = dump(pg_server, seeded_db, backup_dir)
    marker = "minimarket.backup pg_split_dump: temporary copy of database %s, safe to drop" % seeded_db
    ours, mine, lookalike = seeded_db + "_verify_20200101_000000", unique("mm_scratch"), seeded_db + "_verify_20200101_000001"
    dropped_databases.extend([ours, mine, lookalike])
    for name in (ours, mine, lookalike):
        pg_server.create_database(name)
    for name in (ours, mine):
        pg_server.execute("COMMENT ON DATABASE %s IS '%s'" % (name, marker))
    pg_server.execute("COMMENT ON DATABASE %s IS 'mi copia'" % lookalike)
    verified = run_module(conn_args(pg_server, state="verify", db=seeded_db, src=result["archive"], environment="testing", scratch_db=mine))
    assert verified["_rc"] == 0 and verified["changed"] is True, verified
    assert verified["leftovers_dropped"] == [ours, mine]
    databases = pg_server.databases()
    assert ours not in databases and mine not in databases and lookalike in databases
