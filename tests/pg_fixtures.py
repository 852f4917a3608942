"""Fixtures and helpers for the pg_split_dump tests (loaded with ``pytest_plugins``)."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg
import pytest
from psycopg import sql

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(REPO_ROOT, "plugins", "modules", "pg_split_dump.py")
COLLECTIONS = os.path.join(REPO_ROOT, ".collections")
BINDIR = "/usr/lib/postgresql/15/bin"

TORTURE_SQL = r"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mm_torture_lector') THEN CREATE ROLE mm_torture_lector; END IF;
END $$;
CREATE SCHEMA "almacén";
COMMENT ON SCHEMA "almacén" IS 'depósito central';
CREATE TYPE "almacén".estado AS ENUM ('activo', 'pausado', 'baja ñ');
CREATE DOMAIN "almacén".precio AS numeric(12, 2) CHECK (VALUE >= 0);
CREATE TYPE "almacén".dirección AS (calle text, número int);
CREATE SEQUENCE "almacén".tickets START 1000 INCREMENT 7;
SELECT setval('"almacén".tickets', 4242, true);
CREATE SEQUENCE "almacén".sin_usar;
CREATE TABLE "almacén"."señal ñ" (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "año" smallint, i4 integer, i8 bigint, num numeric(30, 10), r real, d double precision, m money,
    t text, vc varchar(20), ch char(5), b bytea, ok boolean, fecha date, hora time, horatz timetz,
    ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb, x xml, ip inet, red cidr,
    mac macaddr, p point, caja box, arr integer[], txts text[], rango int4range, tsv tsvector,
    bits bit(8), vbits varbit, est "almacén".estado, pr "almacén".precio, dir "almacén".dirección,
    doble numeric GENERATED ALWAYS AS (i4 * 2) STORED
);
COMMENT ON TABLE "almacén"."señal ñ" IS 'tabla con todos los tipos';
COMMENT ON COLUMN "almacén"."señal ñ"."año" IS 'año fiscal';
INSERT INTO "almacén"."señal ñ" ("año", i4, i8, num, r, d, m, t, vc, ch, b, ok, fecha, hora, horatz, ts, tstz, iv, u, j, jb, x,
    ip, red, mac, p, caja, arr, txts, rango, tsv, bits, vbits, est, pr, dir)
SELECT 2000 + g % 30, g, g::bigint * 1000000007, g / 7.0, g / 3.0, g / 9.0, g * 1.25, 'línea ' || g || E'\ttab\nnueva "comillas" \\ barra',
    'vc' || g, 'c' || (g % 10), decode(md5(g::text), 'hex'), g % 2 = 0, date '2024-01-01' + g, time '08:00' + g * interval '1 minute',
    timetz '08:00+03', timestamp '2024-01-01' + g * interval '1 hour', timestamptz '2024-01-01 00:00+00' + g * interval '1 day',
    g * interval '3 minutes', md5(g::text)::uuid, json_build_object('g', g, 'ñ', 'ü'), jsonb_build_object('k', g, 'arr', jsonb_build_array(1, 'dos')),
    ('<p a="' || g || '">ñ</p>')::xml, ('10.0.' || (g % 250) || '.1')::inet, '192.168.0.0/16', '08:00:2b:01:02:03', point(g, -g),
    box(point(0, 0), point(g, g)), ARRAY[g, g + 1, NULL], ARRAY['a', NULL, 'ñ'], int4range(g, g + 10), to_tsvector('simple', 'texto ' || g),
    B'10101010', B'101', (ARRAY['activo', 'pausado', 'baja ñ'])[1 + g % 3]::"almacén".estado, g * 1.5, ROW('Calle ' || g, g)::"almacén".dirección
FROM generate_series(1, 300) g;
INSERT INTO "almacén"."señal ñ" (t) VALUES (NULL), ('');
CREATE TABLE public."raro.""tabla*" (id int PRIMARY KEY, v text);
INSERT INTO public."raro.""tabla*" SELECT g, repeat('x', g) FROM generate_series(1, 50) g;
CREATE TABLE public.padre (id serial PRIMARY KEY, nombre text UNIQUE, creado timestamptz DEFAULT now());
CREATE TABLE public.hijo (id serial PRIMARY KEY, padre_id int NOT NULL REFERENCES public.padre(id) DEFERRABLE,
    cantidad int CHECK (cantidad > 0));
INSERT INTO public.padre (nombre) SELECT 'padre ' || g FROM generate_series(1, 100) g;
INSERT INTO public.hijo (padre_id, cantidad) SELECT 1 + g % 100, g FROM generate_series(1, 500) g;
CREATE INDEX hijo_cantidad_idx ON public.hijo (cantidad) WHERE cantidad > 10;
CREATE TABLE public.ventas_part (id bigint, vendido date NOT NULL, total numeric) PARTITION BY RANGE (vendido);
CREATE TABLE public.ventas_2024 PARTITION OF public.ventas_part FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.ventas_2025 PARTITION OF public.ventas_part FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE public.ventas_otro PARTITION OF public.ventas_part DEFAULT;
CREATE INDEX ventas_part_vendido ON public.ventas_part (vendido);
INSERT INTO public.ventas_part SELECT g, date '2024-01-01' + g, g * 2.5 FROM generate_series(1, 900) g;
CREATE TABLE public.auditoria (id bigserial PRIMARY KEY, tabla text, cuando timestamptz DEFAULT now(), fila jsonb);
CREATE FUNCTION public.auditar() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.auditoria (tabla, fila) VALUES (TG_TABLE_NAME, to_jsonb(NEW));
  RETURN NEW;
END $$;
CREATE TRIGGER hijo_auditar AFTER INSERT OR UPDATE ON public.hijo FOR EACH ROW EXECUTE FUNCTION public.auditar();
CREATE FUNCTION "almacén".doble(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
COMMENT ON FUNCTION "almacén".doble(int) IS 'duplica';
CREATE VIEW public.resumen AS SELECT p.nombre, sum(h.cantidad) AS total FROM public.padre p JOIN public.hijo h ON h.padre_id = p.id GROUP BY p.nombre;
CREATE MATERIALIZED VIEW public.resumen_mat AS SELECT * FROM public.resumen;
CREATE UNLOGGED TABLE public.cache_temporal (k text PRIMARY KEY, v text);
INSERT INTO public.cache_temporal VALUES ('a', 'uno'), ('ñ', 'dos');
CREATE TABLE public.vacia (id int);
ALTER TABLE public.padre ENABLE ROW LEVEL SECURITY;
CREATE POLICY padre_ver ON public.padre FOR SELECT USING (true);
GRANT USAGE ON SCHEMA "almacén" TO mm_torture_lector;
GRANT SELECT ON "almacén"."señal ñ" TO mm_torture_lector;
GRANT SELECT (nombre) ON public.padre TO mm_torture_lector;
SELECT lo_from_bytea(0, convert_to('objeto grande ñ', 'UTF8'));
SELECT lo_from_bytea(0, decode(repeat('00ff', 40000), 'hex'));
"""

LO_QUERY = "SELECT md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1"


def unique(prefix):
    return "%s_%s" % (prefix, uuid.uuid4().hex[:8])


def module_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = COLLECTIONS + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"):
        env.pop(name, None)
    return env


def module_argv(args, check_mode=False, tmpdir=None, module=MODULE, diff=False):
    """argv running the real module entry point with an Ansible args file."""
    payload = {"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)}
    handle, path = tempfile.mkstemp(suffix=".json", dir=tmpdir)
    with os.fdopen(handle, "w") as out:
        json.dump(payload, out)
    return [sys.executable, module, path], path


def run_module(args, check_mode=False, timeout=600, module=MODULE, diff=False):
    argv, path = module_argv(args, check_mode, module=module, diff=diff)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=module_env(), timeout=timeout, check=False)
    finally:
        os.unlink(path)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError("module printed no JSON: rc=%s stdout=%r stderr=%r" % (proc.returncode, proc.stdout, proc.stderr))
    result["_rc"] = proc.returncode
    result["_stderr"] = proc.stderr
    return result


def conn_args(server, **extra):
    args = dict(login_host=server.host, login_port=server.port, login_user=server.user, login_password=server.password,
                bin_dir=server.bindir)
    args.update(extra)
    return args


def dest_files(dest):
    return sorted(name for name in os.listdir(dest) if not name.startswith(".database_"))


def schema_dump(server, dbname):
    env = dict(os.environ, PGPASSWORD=server.password)
    out = subprocess.run([os.path.join(server.bindir, "pg_dump"), "-h", server.host, "-p", str(server.port), "-U", server.user,
                          "--schema-only", "-d", dbname], capture_output=True, check=True, env=env)
    # \restrict lines carry a random key per run (PostgreSQL 15.14+).
    return "".join(line for line in out.stdout.decode("utf-8").splitlines(True) if not line.startswith(("\\restrict", "\\unrestrict")))


def wait_for(predicate, timeout=60, interval=0.02, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s" % what)


@pytest.fixture
def torture_db(pg_server):
    name = unique("mm_torture")
    pg_server.create_database(name)
    with pg_server.connect(name) as conn:
        conn.execute(TORTURE_SQL)
    yield name
    pg_server.drop_database(name)


@pytest.fixture
def backup_dir():
    """``<private root>/database``: the root's ``.journal`` is this test's alone, as on a shop host."""
    root = tempfile.mkdtemp(prefix="mm-pgsd-")
    path = os.path.join(root, "database")
    os.mkdir(path, 0o700)
    yield path
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dropped_databases(pg_server):
    """Names appended here are dropped after the test (restore leftovers: previous copies, temp dbs)."""
    names = []
    yield names
    if not pg_server.is_running():
        pg_server.start()
    for name in names:
        pg_server.drop_database(name)
    for (name,) in pg_server.execute("SELECT datname FROM pg_database WHERE datname LIKE '%\\_restoring\\_%' "
                                     "OR datname LIKE '%\\_verify\\_%' OR datname LIKE '%\\_pre\\_restore\\_%'"):
        pg_server.drop_database(name)


class PgContainer(object):
    """A throwaway minimarket/postgres:15 container, reached from the host over the bridge network."""

    image = "minimarket/postgres:15"

    def __init__(self, labels=None):
        self.name = unique("pgsd-test")
        self.password = "ctr-" + uuid.uuid4().hex
        self.user = "postgres"
        self.port = 5432
        self.host = None
        self.labels = labels or {}

    def start(self):
        env = dict(os.environ, POSTGRES_PASSWORD=self.password)
        labels = [arg for key, value in sorted(self.labels.items()) for arg in ("--label", "%s=%s" % (key, value))]
        subprocess.run(["docker", "run", "-d", "--name", self.name, "-e", "POSTGRES_PASSWORD"] + labels + [self.image],
                       check=True, capture_output=True, env=env)
        self.host = subprocess.run(["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", self.name],
                                   check=True, capture_output=True, text=True).stdout.strip()
        wait_for(self._ready, timeout=120, interval=0.2, what="the postgres container")
        return self

    def _ready(self):
        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                return True
        except psycopg.Error:
            return False

    def dsn(self, dbname):
        return "host=%s port=%d user=%s password=%s dbname=%s" % (self.host, self.port, self.user, self.password, dbname)

    def connect(self, dbname="postgres"):
        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def execute(self, sql, dbname="postgres", params=None):
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def create_database(self, name, template="template0"):
        """As testenv's PgServer: the bench's steps run against either server."""
        self.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} ENCODING 'UTF8'").format(sql.Identifier(name), sql.Identifier(template)))
        return name

    def drop_database(self, name):
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def remove(self):
        subprocess.run(["docker", "rm", "-f", "-v", self.name], check=False, capture_output=True)

    def __enter__(self):
        """Removed again when start() fails half-way (docker run done, the server never ready)."""
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, *exc):
        self.remove()


@pytest.fixture(scope="module")
def pg_container():
    with PgContainer() as container:
        yield container
