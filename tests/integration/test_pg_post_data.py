"""Post-data per table (archive format 3) against a real PostgreSQL 15: what runs early, that it does, and older formats still restore."""
import hashlib
import io
import json
import os
import subprocess
import tarfile

from ansible_collections.minimarket.backup.plugins.module_utils import _pg_post_data as post_data
from tests.pg_fixtures import conn_args, run_module, unique

pytest_plugins = ["tests.pg_fixtures"]

# A big table and small ones with every kind of post-data item: the small tables' data is in long before the big one's.
SCHEMA_SQL = r"""
CREATE TABLE grande (id int PRIMARY KEY, v text);
INSERT INTO grande SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 300000) g;
CREATE TABLE "chica ñ" (id int PRIMARY KEY, "código" text UNIQUE, n int);
CREATE INDEX "chica ñ_expr" ON "chica ñ" (lower("código"));
COMMENT ON INDEX "chica ñ_expr" IS 'por código';
INSERT INTO "chica ñ" SELECT g, 'C' || g, g FROM generate_series(1, 1000) g;
CREATE TABLE pedido (id int PRIMARY KEY, chica_id int REFERENCES "chica ñ"(id), periodo tsrange,
    EXCLUDE USING gist (periodo WITH &&));
INSERT INTO pedido SELECT g, g, tsrange(timestamp '2026-01-01' + g * interval '1 hour', timestamp '2026-01-01' + (g + 1) * interval '1 hour')
FROM generate_series(1, 500) g;
CREATE TABLE venta (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE venta_1 PARTITION OF venta FOR VALUES FROM (0) TO (1000);
CREATE INDEX venta_id ON venta (id);
INSERT INTO venta SELECT g, g FROM generate_series(1, 999) g;
CREATE FUNCTION nada() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER pedido_nada BEFORE INSERT ON pedido FOR EACH ROW EXECUTE FUNCTION nada();
ANALYZE;
"""
INDEXES = """
SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1
"""


def source_db(pg_server, dropped_databases):
    db = unique("mm_post")
    pg_server.create_database(db)
    dropped_databases.append(db)
    pg_server.execute(SCHEMA_SQL, db)
    return db


def dump(pg_server, db, backup_dir):
    result = run_module(conn_args(pg_server, state="dump", db=db, backup_dir=backup_dir, environment="testing", compression="none", jobs=2))
    assert result["_rc"] == 0, result
    return result


def read_members(archive):
    """[(member, bytes)] in archive order (the manifest left out), and the manifest."""
    members = []
    with tarfile.open(archive) as tar:
        for member in tar:
            data = tar.extractfile(member).read()
            if member.name == "manifest.json":
                return members, json.loads(data)
            members.append((member.name, data))
    raise AssertionError("no manifest in %s" % archive)


def stream_of(member):
    return member.rpartition(".part")[0]


def stream_bytes(members, name):
    return b"".join(data for member, data in members if stream_of(member) == name)


def rewrite(result, target_dir, archive_format, members, manifest):
    """Write ``members`` as a complete backup in ``target_dir``: archive, manifest and metadata agree with every byte."""
    order = []
    for member, _data in members:
        if stream_of(member) not in order:
            order.append(stream_of(member))
    entries = {}
    for stream in order:
        chunks = [(member, data) for member, data in members if stream_of(member) == stream]
        data = b"".join(part for _member, part in chunks)
        entries[stream] = dict(manifest["streams"][stream], chunks=[{"member": member, "size": len(part)} for member, part in chunks],
                               size=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest = dict(manifest, format=archive_format, order=order, streams=entries)
    os.makedirs(target_dir, mode=0o700, exist_ok=True)
    archive = os.path.join(target_dir, os.path.basename(result["archive"]))
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, part in members + [("manifest.json", json.dumps(manifest).encode("utf-8"))]:
            info = tarfile.TarInfo(member)
            info.size = len(part)
            tar.addfile(info, io.BytesIO(part))
    os.chmod(archive, 0o600)
    with open(result["metadata"], encoding="utf-8") as handle:
        meta = json.load(handle)
    with open(archive, "rb") as handle:
        content = handle.read()
    meta.update(archive_format=archive_format, size=len(content), sha256=hashlib.sha256(content).hexdigest(),
                members=dict((stream, {"sha256": entry["sha256"], "size": entry["size"]}) for stream, entry in entries.items()))
    metadata = os.path.join(target_dir, os.path.basename(result["metadata"]))
    with open(metadata, "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
    os.chmod(metadata, 0o600)
    return archive


def restore(pg_server, archive, target, **extra):
    return run_module(conn_args(pg_server, state="restore", db=target, restore_as=target, src=archive, environment="testing", jobs=2, **extra))


def test_each_table_owns_its_indexes_and_everything_else_waits(pg_server, backup_dir, dropped_databases):
    """The plan read from the real pg_restore -l of a real dump: what may run with its table, and what must wait for all of them."""
    db = source_db(pg_server, dropped_databases)
    result = dump(pg_server, db, backup_dir)
    members, manifest = read_members(result["archive"])
    order = manifest["order"]
    assert [stream_of(member) for member, _data in members][:4] == ["schema.sql", "pre-data.dump", "post-data.dump", "post-data-tables.json"]
    assert order[:4] == ["schema.sql", "pre-data.dump", "post-data.dump", "post-data-tables.json"]
    assert all(stream.startswith("data/") for stream in order[4:-1]) and order[-1] == "misc-data.dump"
    listing = subprocess.run([os.path.join(pg_server.bindir, "pg_restore"), "-l", "-v"], input=stream_bytes(members, "post-data.dump"),
                             capture_output=True, check=True).stdout.decode("utf-8")
    entries = post_data.parse_toc(listing)
    owners = json.loads(stream_bytes(members, "post-data-tables.json"))
    bound, rest = post_data.plan(entries, owners["items"])
    desc = dict((dump_id, text.rsplit(" ", 1)[0]) for dump_id, _key, text, _deps in entries)
    table_of = dict((stream, entry["table"]) for stream, entry in manifest["streams"].items() if entry["kind"] == "table-data")
    planned = {}
    for dump_id, stream, deps, exclusive in bound:
        assert exclusive == (not desc[dump_id].startswith("INDEX "))
        planned.setdefault(table_of[stream], []).append((desc[dump_id], sorted(desc[dep] for dep in deps)))
    assert dict((table, sorted(items)) for table, items in planned.items()) == {
        "public.grande": [("CONSTRAINT public grande grande_pkey", [])],
        "public.chica ñ": [("CONSTRAINT public chica ñ chica ñ_código_key", []), ("CONSTRAINT public chica ñ chica ñ_pkey", []),
                           ("INDEX public chica ñ_expr", [])],
        "public.pedido": [("CONSTRAINT public pedido pedido_periodo_excl", []), ("CONSTRAINT public pedido pedido_pkey", []),
                          ("FK CONSTRAINT public pedido pedido_chica_id_fkey", ["CONSTRAINT public chica ñ chica ñ_pkey"])],
    }
    assert owners["tables"] == table_of
    waiting = sorted(desc[dump_id] for dump_id in rest if not desc[dump_id].split(" ")[0] in ("ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE"))
    assert waiting == ['COMMENT public INDEX "chica ñ_expr"', "INDEX ATTACH public venta_1_id_idx", "INDEX public venta_1_id_idx",
                       "INDEX public venta_id", "TRIGGER public pedido pedido_nada"]


# The big table's last row waits (30 s at most) until the small tables' index and foreign key exist: its data commits
# after them only if they were built while it loaded, not by how fast anything runs.
WAIT_SQL = r"""
CREATE FUNCTION espera_indices(id int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF id = 300000 THEN
    FOR attempt IN 1..600 LOOP
      EXIT WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relname = 'chica ñ_expr')
            AND EXISTS (SELECT 1 FROM pg_catalog.pg_constraint WHERE conname = 'pedido_chica_id_fkey');
      PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
  END IF;
  RETURN true;
END $$;
ALTER TABLE grande ADD CONSTRAINT espera CHECK (espera_indices(id));
"""


def test_small_tables_are_indexed_while_the_big_one_still_loads(pg_server, backup_dir, dropped_databases, tmp_path):
    """Commit times in the restored copy: the small tables' indexes and foreign key were in before the big table's data was."""
    db = source_db(pg_server, dropped_databases)
    pg_server.execute(WAIT_SQL, db)
    result = dump(pg_server, db, backup_dir)
    members, manifest = read_members(result["archive"])
    big = [stream for stream, entry in manifest["streams"].items() if entry.get("table") == "public.grande"][0]
    # The small tables' data ahead of the big table's, whatever order the dump's workers wrote them in.
    last_data = max(index for index, (member, _data) in enumerate(members) if stream_of(member).startswith("data/"))
    ordered = ([entry for entry in members[:last_data + 1] if stream_of(entry[0]) != big] + [entry for entry in members if stream_of(entry[0]) == big]
               + members[last_data + 1:])
    archive = rewrite(result, str(tmp_path / "ordered"), "minimarket-pg-split-dump/3", ordered, manifest)
    target = unique("mm_post_copy")
    dropped_databases.append(target)
    restored = restore(pg_server, archive, target)
    assert restored["_rc"] == 0, restored
    assert all(entry["ok"] for entry in restored["tables"].values()) and len(restored["tables"]) == 4
    assert pg_server.execute(INDEXES, target) == pg_server.execute(INDEXES, db)
    committed = dict(pg_server.execute("""
        SELECT c.relname, pg_xact_commit_timestamp(i.xmin) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relname IN ('chica ñ_pkey', 'chica ñ_expr', 'pedido_pkey', 'grande_pkey')""", target))
    big_data = pg_server.execute("SELECT pg_xact_commit_timestamp(xmin) FROM grande LIMIT 1", target)[0][0]
    assert committed["chica ñ_pkey"] < big_data and committed["chica ñ_expr"] < big_data and committed["pedido_pkey"] < big_data
    assert committed["grande_pkey"] > big_data
    checked = pg_server.execute("SELECT pg_xact_commit_timestamp(xmin) FROM pg_constraint WHERE conname = 'pedido_chica_id_fkey'", target)[0][0]
    assert committed["chica ñ_pkey"] < checked < big_data
    assert pg_server.execute("SELECT obj_description('\"chica ñ_expr\"'::regclass, 'pg_class')", target) == [("por código",)]


def test_format_2_archives_restore_post_data_after_all_the_data(pg_server, backup_dir, dropped_databases, tmp_path):
    """An archive as format 2 wrote it (post-data last, no post-data-tables.json) restores completely."""
    db = source_db(pg_server, dropped_databases)
    result = dump(pg_server, db, backup_dir)
    members, manifest = read_members(result["archive"])
    post = [entry for entry in members if stream_of(entry[0]) == "post-data.dump"]
    older = [entry for entry in members if stream_of(entry[0]) not in ("post-data.dump", "post-data-tables.json")] + post
    archive = rewrite(result, str(tmp_path / "format2"), "minimarket-pg-split-dump/2", older, manifest)
    target = unique("mm_post_f2")
    dropped_databases.append(target)
    restored = restore(pg_server, archive, target)
    assert restored["_rc"] == 0, restored
    assert all(entry["ok"] for entry in restored["tables"].values()) and len(restored["tables"]) == 4
    assert pg_server.execute(INDEXES, target) == pg_server.execute(INDEXES, db)


def test_a_table_whose_index_fails_is_named_and_the_live_database_kept(pg_server, backup_dir, dropped_databases, tmp_path):
    """A duplicate key in one table's data (archive and checksums consistent): that table's items fail, with its name, during the load."""
    db = source_db(pg_server, dropped_databases)
    result = dump(pg_server, db, backup_dir)
    members, manifest = read_members(result["archive"])
    table_of = dict((stream, entry["table"]) for stream, entry in manifest["streams"].items() if entry["kind"] == "table-data")
    small = [stream for stream, table in table_of.items() if table == "public.chica ñ"][0]
    data = stream_bytes(members, small)
    head, end = data.split(b"\n\\.\n", 1)
    first_row = head.split(b" FROM stdin;\n", 1)[1].split(b"\n", 1)[0]
    duplicated = (small + ".part00000.last", head + b"\n" + first_row + b"\n\\.\n" + end)
    at = [stream_of(member) for member, _data in members].index(small)
    changed = members[:at] + [duplicated] + [entry for entry in members[at:] if stream_of(entry[0]) != small]
    archive = rewrite(result, str(tmp_path / "duplicate"), "minimarket-pg-split-dump/3", changed, manifest)
    before = pg_server.execute("SELECT count(*) FROM \"chica ñ\"", db), pg_server.execute(INDEXES, db)
    restored = run_module(conn_args(pg_server, state="restore", db=db, src=archive, environment="testing", jobs=2))
    assert restored["_rc"] != 0
    assert "restoring the indexes and constraints of public.chica ñ" in restored["msg"] and "could not create unique index" in restored["msg"]
    assert "\n" not in restored["msg"], restored["msg"]
    assert (pg_server.execute("SELECT count(*) FROM \"chica ñ\"", db), pg_server.execute(INDEXES, db)) == before
    assert not pg_server.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", params=(db + "\\_restoring\\_%",))
