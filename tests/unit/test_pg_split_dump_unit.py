"""Pure logic of pg_split_dump: archive layout, argv/env construction, error lines, version checks."""
import errno
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _pg_catalog as pg_catalog
from ansible_collections.minimarket.backup.plugins.module_utils import _pg_databases as pg_databases
from ansible_collections.minimarket.backup.plugins.module_utils import _pg_dump as pg_dump
from ansible_collections.minimarket.backup.plugins.module_utils import _pg_format as pg_format
from ansible_collections.minimarket.backup.plugins.module_utils import _pg_globals as pg_globals
from ansible_collections.minimarket.backup.plugins.module_utils import _pg_load as pg_load
from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import utc_now
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import CompressedSink
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import (
    PgTools,
    SPOOL_SCRIPT,
    dump_pattern,
    explain,
    major_of,
)
from ansible_collections.minimarket.backup.plugins.module_utils._process import run
from tests.volume_fixtures import with_checksum

PARAMS = dict(login_host="db.example", login_port=5433, login_user="backup", login_password="s3cret-pw",
              login_unix_socket="", maintenance_db="postgres", container=None, bin_dir=None)


def test_member_names_round_trip():
    assert pg_format.chunk_member("data/0001.sql", 3, False) == "data/0001.sql.part00003"
    assert pg_format.parse_member("data/0001.sql.part00003") == ("data/0001.sql", 3, False)
    assert pg_format.parse_member(pg_format.chunk_member("pre-data.dump", 0, True)) == ("pre-data.dump", 0, True)
    assert pg_format.parse_member("manifest.json") is None
    assert pg_format.parse_member("evil.partX") is None


def test_dump_pattern_quotes_everything():
    assert dump_pattern('almacén', 'raro."tabla*') == '"almacén"."raro.""tabla*"'


def test_archive_writer_chunks_streams_and_manifest(monkeypatch):
    monkeypatch.setattr(pg_format, "CHUNK", 10)
    out = io.BytesIO()
    writer = pg_format.ArchiveWriter(out, 1700000000)
    writer.copy_stream("schema.sql", io.BytesIO(b"x" * 25), {"kind": "schema"})
    writer.copy_stream("data/0000.sql", io.BytesIO(b""), {"kind": "table-data", "table": "public.t"})
    writer.copy_stream("post-data.dump", io.BytesIO(b"y" * 20), {"kind": "post-data"})
    manifest = writer.finish()
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:") as tar:
        names = tar.getnames()
        stored = json.loads(tar.extractfile("manifest.json").read())
        modes = set(m.mode for m in tar.getmembers())
    assert names == ["schema.sql.part00000", "schema.sql.part00001", "schema.sql.part00002.last",
                     "data/0000.sql.part00000.last", "post-data.dump.part00000", "post-data.dump.part00001.last",
                     "manifest.json"]
    assert modes == {0o600}
    assert stored == manifest and stored["format"] == pg_format.ARCHIVE_FORMAT
    assert stored["order"] == ["schema.sql", "data/0000.sql", "post-data.dump"]
    assert stored["streams"]["schema.sql"]["sha256"] == hashlib.sha256(b"x" * 25).hexdigest()
    assert [c["size"] for c in stored["streams"]["schema.sql"]["chunks"]] == [10, 10, 5]
    assert stored["streams"]["data/0000.sql"]["table"] == "public.t"


# What pg_dump --data-only -t writes: settings, a COPY statement whose quoted names hold newlines, ";" and "\.",
# rows with escaped newlines, CRs, backslashes and NULLs (a value "\." is the line "\\."), the end marker,
# then the table's sequence values.
COPY_DUMP = (b'--\n-- PostgreSQL database dump\n--\n\\restrict abc\nSET client_encoding = \'UTF8\';\n\n'
             b'--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: postgres\n--\n\n'
             b'COPY public."t;""\n\\.\nx" ("a\n\\.\n", "b;", c) FROM stdin;\n'
             b'1\tline1\\nline2\t\\N\n'
             b'2\t\\\\.\t\\\\x5c2e0a\n'
             b'3\t\\r\\n\\\\.\\n\t\\N\n'
             b'4\t\\N\t\\N\n'
             b'5\t\t\\\\x\n'
             b'\n'
             b'\\.\n\n\n--\n-- Name: t_a_seq; Type: SEQUENCE SET; Schema: public; Owner: postgres\n--\n\n'
             b"SELECT pg_catalog.setval('public.t_a_seq', 5, true);\n\n\n--\n-- PostgreSQL database dump complete\n--\n\n"
             b'\\unrestrict abc\n')
COPY_TAIL = len(COPY_DUMP) - COPY_DUMP.index(b"\n\\.\n")


def count_copy_rows(data, size, end_search):
    counter = pg_format.CopyRowCounter(end_search)
    chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
    for index, chunk in enumerate(chunks):
        counter.feed(chunk, index == len(chunks) - 1)
    return counter.rows


@pytest.mark.parametrize("end_search", [True, False])
def test_copy_rows_are_the_lines_of_the_copy_data(end_search, monkeypatch):
    """Six rows (one of them empty) whatever the cut, escapes included; from the end, a window just longer than what follows the data is enough."""
    assert set(count_copy_rows(COPY_DUMP, size, end_search) for size in range(1, len(COPY_DUMP) + 1)) == {6}
    monkeypatch.setattr(pg_format, "END_WINDOW", COPY_TAIL)
    assert set(count_copy_rows(COPY_DUMP, size, end_search) for size in range(1, len(COPY_DUMP) + 1)) == {6}


@pytest.mark.parametrize("end_search", [True, False])
def test_copy_rows_of_an_empty_table_and_of_a_table_with_one_empty_row(end_search):
    empty = b'SET x = 1;\nCOPY public.t (a) FROM stdin;\n\\.\n\n'
    assert count_copy_rows(empty, len(empty), end_search) == 0
    assert count_copy_rows(empty, 8, end_search) == 0
    one = b'COPY public.t  FROM stdin;\n\n\\.\n'
    assert count_copy_rows(one, 100, end_search) == 1


def test_copy_rows_from_the_start_when_a_sequence_name_holds_the_end_marker():
    """A sequence named with a newline can put a "\\." line after the data: only the forward search is right then."""
    data = COPY_DUMP.replace(b"'public.t_a_seq'", b"'public.\"t_\n\\.\n_seq\"'")
    assert count_copy_rows(data, len(data), end_search=False) == 6
    assert count_copy_rows(data, len(data), end_search=True) != 6


def test_copy_rows_unknown_without_the_end_of_the_data_or_a_copy_statement(monkeypatch):
    cut = COPY_DUMP[:COPY_DUMP.index(b"\n\\.\n") + 1]
    assert count_copy_rows(cut, 7, end_search=False) is None and count_copy_rows(cut, 7, end_search=True) is None
    assert count_copy_rows(b"SET x = 1;\n", 4, end_search=False) is None
    with pytest.raises(BackupError, match="unexpected COPY statement"):
        count_copy_rows(b'COPY public.t (a) TO stdout;\n', 100, True)
    monkeypatch.setattr(pg_format, "CHUNK", 10)
    with pytest.raises(BackupError, match="without a COPY statement"):
        count_copy_rows(b"SET x = 1;\n" * 5, 10, True)


def test_archive_writer_records_the_rows_of_a_table_stream(monkeypatch):
    monkeypatch.setattr(pg_format, "CHUNK", 200)
    writer = pg_format.ArchiveWriter(io.BytesIO(), 1700000000)
    writer.copy_stream("data/0000.sql", io.BytesIO(COPY_DUMP), {"kind": "table-data", "table": "public.t"},
                       counter=pg_format.CopyRowCounter())
    entry = writer.finish()["streams"]["data/0000.sql"]
    assert entry["rows"] == 6 and pg_dump.table_rows({"streams": {"data/0000.sql": entry}}) == {"public.t": 6}
    assert entry["sha256"] == hashlib.sha256(COPY_DUMP).hexdigest()
    assert all(set(chunk) == {"member", "size"} for chunk in entry["chunks"]) and len(entry["chunks"]) > 1


def format_1_archive(path, data=b"-- schema\n"):
    """An archive as the first format wrote it: a sha256 per chunk."""
    manifest = {"format": pg_format.FORMAT_1, "order": ["schema.sql"], "streams": {"schema.sql": {
        "kind": "schema", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "chunks": [{"member": "schema.sql.part00000.last", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}}}
    return _tar(path, [("schema.sql.part00000.last", data), ("manifest.json", json.dumps(manifest).encode())])


def test_format_1_archives_are_still_read_and_checked(tmp_path):
    path = format_1_archive(tmp_path / "database_x_20250101_000000.tar")
    manifest = pg_load.restore_archive(PgTools(PARAMS), path, "unused", 1, archive_format=pg_format.FORMAT_1)
    assert manifest["format"] == pg_format.FORMAT_1
    with pytest.raises(BackupError, match="manifest format 'minimarket-pg-split-dump/1', not minimarket-pg-split-dump/3"):
        pg_load.restore_archive(PgTools(PARAMS), path, "unused", 1)
    damaged = format_1_archive(tmp_path / "database_y_20250101_000000.tar")
    with tarfile.open(damaged) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
    manifest["streams"]["schema.sql"]["chunks"][0]["sha256"] = "0" * 64
    _tar(damaged, [("schema.sql.part00000.last", b"-- schema\n"), ("manifest.json", json.dumps(manifest).encode())])
    with pytest.raises(BackupError, match="does not match its manifest checksum"):
        pg_load.restore_archive(PgTools(PARAMS), damaged, "unused", 1, archive_format=pg_format.FORMAT_1)


def test_row_counts_of_format_1_include_inheritance_children():
    """Format 1 recorded count(*) (children included); later formats each table's own rows, as its COPY holds them."""
    queries = []

    class Session(object):
        def query(self, sql, what=None):
            queries.append(sql)
            return [["0", "3"]]

    relations = [("public", "padre", 0)]
    assert pg_catalog.count_rows(Session(), relations, "counting") == {"public.padre": 3}
    pg_catalog.count_rows(Session(), relations, "counting", own=True)
    assert queries == ['SELECT 0, count(*) FROM "public"."padre";', 'SELECT 0, count(*) FROM ONLY "public"."padre";']


def test_native_argv_and_env_keep_password_out_of_argv(tmp_path):
    for tool in ("psql", "pg_dump"):
        path = tmp_path / tool
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    tools = PgTools(dict(PARAMS, bin_dir=str(tmp_path)))
    argv = tools.argv("pg_dump", ["-d", "shop"])
    assert argv == [str(tmp_path / "pg_dump"), "-d", "shop"]
    env = tools.environ_update()
    assert env["PGPASSWORD"] == "s3cret-pw" and env["PGHOST"] == "db.example" and env["PGPORT"] == "5433"
    assert env["PGUSER"] == "backup"
    assert tools.argv("psql", ["-d", "x"], spool_stdin=True)[:4] == ["sh", "-c", SPOOL_SCRIPT, "sh"]
    with pytest.raises(BackupError, match="pg_restore not found in bin_dir"):
        tools.argv("pg_restore", [])


def test_spooled_stdin_is_a_reopenable_file_that_no_kill_leaves_behind(tmp_path):
    """pg_restore -j reopens and seeks its input: it gets a file whose name is gone before any data is written."""
    spool, bindir = tmp_path / "spool", tmp_path / "bin"
    spool.mkdir()
    bindir.mkdir()
    tool = bindir / "pg_restore"
    tool.write_text('#!/bin/sh\nls -A "$TMPDIR"; head -c 5 "$3"; tail -c 4 "$3"; echo " $1 $2 $3"\n')
    tool.chmod(0o755)
    argv = PgTools(dict(PARAMS, bin_dir=str(bindir))).argv("pg_restore", ["-j", "2"], spool_stdin=True)
    rc, out, err = run(argv, data=b"ABCDE" + b"x" * 200000 + b"WXYZ", env={"TMPDIR": str(spool)})
    assert (rc, err) == (0, "")
    assert out == "ABCDEWXYZ -j 2 /dev/fd/3\n"
    assert os.listdir(str(spool)) == []


def test_a_toc_list_reaches_pg_restore_as_an_unlinked_file(tmp_path):
    """pg_restore -L wants a file: the TOC ids become one (each "N;") that, like the spool, has no name left."""
    spool, bindir = tmp_path / "spool", tmp_path / "bin"
    spool.mkdir()
    bindir.mkdir()
    tool = bindir / "pg_restore"
    tool.write_text('#!/bin/sh\nls -A "$TMPDIR"; cat "$4"; head -c 3 "$5"; echo " $1 $2 $3 $4 $5"\n')
    tool.chmod(0o755)
    argv = PgTools(dict(PARAMS, bin_dir=str(bindir))).argv("pg_restore", ["-j", "2"], spool_stdin=True, toc_ids=[3215, 17])
    rc, out, err = run(argv, data=b"PGDMP...", env={"TMPDIR": str(spool)})
    assert (rc, err) == (0, "")
    assert out == "3215;\n17;\nPGD -j 2 -L /dev/fd/4 /dev/fd/3\n"
    assert os.listdir(str(spool)) == []
    with pytest.raises(ValueError):
        PgTools(dict(PARAMS, bin_dir=str(bindir))).argv("pg_restore", [], toc_ids=["1; rm -rf /"])


def test_run_carries_binary_stdin_untouched_and_says_why_it_failed(tmp_path):
    """A dump (any byte value) goes through tools.run as the file pg_restore reads; the listing comes back as text."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "pg_restore"
    tool.write_text('#!/bin/sh\nod -An -v -tx1 "$3" | tr -d " \\n"; echo " $1 $2 $3 $PGPASSWORD"\n')
    tool.chmod(0o755)
    tools = PgTools(dict(PARAMS, bin_dir=str(bindir)))
    data = b"PGDMP" + bytes(range(256)) + b"\r\n\x00\xff"
    assert tools.run("pg_restore", ["-l", "-v"], data=data, spool_stdin=True) == data.hex() + " -l -v /dev/fd/3 s3cret-pw\n"
    tool.write_text('#!/bin/sh\necho "pg_restore: error: input file does not appear to be a valid archive" >&2; exit 1\n')
    with pytest.raises(BackupError) as info:
        tools.run("pg_restore", ["-l"], data=b"\xff", what="listing post-data.dump", spool_stdin=True)
    assert str(info.value) == "listing post-data.dump failed: pg_restore: error: input file does not appear to be a valid archive"


def test_unix_socket_wins_and_options_override_inherited_variables(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "inherited")
    monkeypatch.setenv("PGHOST", "elsewhere")
    tools = PgTools(dict(PARAMS, login_unix_socket="/run/pg"))
    rc, out, _err = run(["sh", "-c", 'printf "%s %s" "$PGHOST" "$PGPASSWORD"'], env=tools.environ_update())
    assert (rc, out) == (0, "/run/pg s3cret-pw")


def test_ssl_settings_travel_in_the_environment_only(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    params = dict(PARAMS, ssl_mode="verify-full", ca_cert="/etc/minimarket/pg-ca.crt", ssl_cert="/etc/minimarket/backup.crt",
                  ssl_key="/etc/minimarket/backup.key")
    env = PgTools(params).environ_update()
    assert env["PGSSLMODE"] == "verify-full" and env["PGSSLROOTCERT"] == "/etc/minimarket/pg-ca.crt"
    assert env["PGSSLCERT"] == "/etc/minimarket/backup.crt" and env["PGSSLKEY"] == "/etc/minimarket/backup.key"
    for tools in (PgTools(params), PgTools(dict(params, container="inventario-retail_postgres_1"))):
        argv = " ".join(tools.argv("pg_dump", ["-d", "shop"]))
        assert "verify-full" not in argv and "pg-ca.crt" not in argv and "sslmode" not in argv and "backup.k" not in argv
    assert "-e PGSSLCERT -e PGSSLKEY -e PGSSLMODE -e PGSSLROOTCERT" in " ".join(PgTools(dict(params, container="c")).argv("psql", []))
    assert "PGSSLMODE" not in PgTools(PARAMS).environ_update()


def test_container_argv_passes_variable_names_only(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    tools = PgTools(dict(PARAMS, container="inventario-retail_postgres_1"))
    argv = tools.argv("pg_restore", ["-j", "2", "-d", "x"], spool_stdin=True)
    assert "s3cret-pw" not in " ".join(argv)
    assert argv[:3] == ["/usr/bin/docker", "exec", "-i"]
    index = argv.index("inventario-retail_postgres_1")
    assert argv[3:index] == ["-e", "PGAPPNAME", "-e", "PGCONNECT_TIMEOUT", "-e", "PGHOST", "-e", "PGPASSWORD",
                             "-e", "PGPORT", "-e", "PGUSER"]
    assert argv[index + 1:] == ["sh", "-c", SPOOL_SCRIPT, "sh", "pg_restore", "-j", "2", "-d", "x"]
    with_bin = PgTools(dict(PARAMS, container="c", bin_dir="/usr/lib/postgresql/15/bin"))
    assert with_bin.argv("psql", [])[-1] == "/usr/lib/postgresql/15/bin/psql"


def fake_runner(outputs):
    calls = []

    def run(args, data=None, env=None):
        calls.append((args, data, env))
        return outputs.pop(0)
    return run, calls


def test_old_native_pg_dump_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    run, calls = fake_runner([(0, "pg_dump (PostgreSQL) 13.14 (Debian 13.14-0+deb11u1)\n", "")])
    tools = PgTools(PARAMS, run_command=run)
    with pytest.raises(BackupError) as info:
        tools.check_client("pg_dump", 150020)
    msg = str(info.value)
    assert "pg_dump is version 13 but the server is PostgreSQL 15" in msg
    assert "bin_dir" in msg and "container mode" in msg
    assert calls[0][2]["PGPASSWORD"] == "s3cret-pw" and "s3cret-pw" not in calls[0][0]
    run, _calls = fake_runner([(0, "pg_dump (PostgreSQL) 15.20\n", "")])
    assert PgTools(PARAMS, run_command=run).check_client("pg_dump", 150020).startswith("pg_dump")
    run, _calls = fake_runner([(0, "pg_dump (PostgreSQL) 13.1\n", "")])
    assert PgTools(dict(PARAMS, container="c"), run_command=run).check_client("pg_dump", 150020)


def test_major_of():
    assert major_of(" 15.20 (Debian 15.20-0+deb12u1)") == 15
    assert major_of("nothing") is None


@pytest.mark.parametrize("stderr, expected", [
    ('psql: error: connection to server at "h", port 5 failed: FATAL:  password authentication failed for user "u"\n',
     "check login_user/login_password"),
    ('psql: error: connection to server at "h", port 5 failed: FATAL:  database "x" does not exist\n', "check the db name"),
    ('psql: error: connection to server at "127.0.0.1", port 1 failed: Connection refused\n\tIs the server running on that host?\n',
     "is the PostgreSQL server running?"),
    ("Error response from daemon: No such container: pg\n", "docker ps"),
    ("pg_dump: error: query failed: ERROR:  permission denied for table t\n", "enough privileges"),
])
def test_explain_gives_one_line_with_the_fix(stderr, expected):
    line = explain(stderr, "dumping")
    assert "\n" not in line and line.startswith("dumping failed: ") and expected in line


def test_explain_without_output_names_the_likely_cause():
    assert explain("", "pg_dump", 137) == "pg_dump failed: exit status 137 and no message (killed?)"
    assert "did container pg stop? check 'docker ps'" in explain("\n", "pg_dump", 1, "pg")


def test_suffix_names_fit_postgres_limit():
    name = pg_databases.suffix_name("d" * 63, "pre_restore", utc_now())
    assert len(name.encode()) <= 63 and "_pre_restore_" in name


def test_plan_dump_rejects_bad_environment(tmp_path):
    with pytest.raises(BackupError, match="not a valid name"):
        pg_dump.plan_dump(str(tmp_path), "prod_1", "gzip")
    assert pg_dump.plan_dump(str(tmp_path), "prod-1", "zstd").endswith(".tar.zst")


def test_check_backup_dir_messages(tmp_path):
    with pytest.raises(BackupError, match="is not a directory"):
        pg_dump.check_backup_dir(str(tmp_path / "missing"))
    assert pg_dump.check_backup_dir(str(tmp_path)) is True
    assert pg_dump.check_backup_dir(str(tmp_path / "missing" / "database"), may_not_exist=True) is False
    (tmp_path / "file").write_text("")
    with pytest.raises(BackupError, match=r"does not exist and .*/file is not a writable directory"):
        pg_dump.check_backup_dir(str(tmp_path / "file" / "database"), may_not_exist=True)


class FullDisk(object):
    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_compressed_sink_reports_disk_full_instead_of_hanging():
    """Shared _backup_set fix: a failing target must not leave write() blocked on the compressor."""
    sink = CompressedSink(FullDisk(), "gzip")
    with pytest.raises(BackupError, match="No space left on device"):
        for _block in range(64):
            sink.write(os.urandom(1024 * 1024))
        sink.close()
    sink.abort()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("members, message", [
    ([("etc/passwd", b"root")], "is not ours"),
    ([("pre-data.dump.part00000.last", b"x")], "does not start with schema.sql"),
    ([("schema.sql.part00001.last", b"x")], "out of order"),
    ([("schema.sql.part00000.last", b"x")], "has no manifest"),
    ([("schema.sql.part00000", b"x"), ("schema.sql.part00002.last", b"x")], "out of order"),
    ([("schema.sql.part00000.last", b"x"), ("manifest.json", b'{"format": "other"}')], "manifest format"),
    ([("schema.sql.part00000.last", b"x"), ("manifest.json", json.dumps({
        "format": pg_format.ARCHIVE_FORMAT, "streams": {"schema.sql": {"chunks": [], "sha256": "0"}}}).encode())], "does not match its manifest"),
])
def test_restore_reader_refuses_archives_that_are_not_ours(tmp_path, members, message):
    """Structural checks fail before any database tool runs (schema.sql is only hashed)."""
    path = _tar(tmp_path / "database_x_20250101_000000.tar", members)
    with pytest.raises(BackupError, match=message):
        pg_load.restore_archive(PgTools(PARAMS), path, "unused", 1)


def test_restore_reader_reports_truncated_compressed_archive(tmp_path):
    path = _tar(tmp_path / "plain.tar", [("schema.sql.part00000.last", os.urandom(200000))])
    with open(path, "rb") as handle:
        data = handle.read()
    target = tmp_path / "database_x_20250101_000000.tar.gz"
    target.write_bytes(gzip.compress(data)[:5000])
    with pytest.raises(BackupError, match="truncated or damaged|has no manifest"):
        pg_load.restore_archive(PgTools(PARAMS), str(target), "unused", 1)


def _unparsable_first_member(case):
    """One member header whose checksum matches but whose GNU sparse data makes tarfile raise a plain Python error."""
    info = tarfile.TarInfo("schema.sql.part00000.last")
    if case == "pax-sparse-map":
        info.pax_headers = {"GNU.sparse.map": "0,x"}
        return info.tobuf(tarfile.PAX_FORMAT)
    info.type = tarfile.GNUTYPE_SPARSE
    return with_checksum(bytearray(info.tobuf(tarfile.GNU_FORMAT))[:482] + b"\1" + bytes(29))  # "more sparse entries follow", then the end


@pytest.mark.parametrize("case, detail", [("pax-sparse-map", "invalid literal for int() with base 10: 'x'"),
                                          ("sparse-extension-past-the-end", "index out of range")])
def test_any_tar_parse_error_is_the_damaged_archive_message(tmp_path, case, detail):
    path = tmp_path / "database_x_20250101_000000.tar"
    path.write_bytes(_unparsable_first_member(case))
    expected = "archive database_x_20250101_000000.tar is truncated or damaged (%s): use another backup" % detail
    with pytest.raises(BackupError) as restored:
        pg_load.restore_archive(PgTools(PARAMS), str(path), "unused", 1)
    assert str(restored.value) == expected
    with pytest.raises(BackupError) as extracted:
        pg_format.extract_stream(str(path), "globals.sql", "0" * 64)
    assert str(extracted.value) == expected


def test_collection_version_matches_galaxy_yml():
    """module_utils cannot read galaxy.yml on a target host, so the copy is pinned here."""
    import yaml
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "galaxy.yml"), encoding="utf-8") as handle:
        assert pg_format.COLLECTION_VERSION == yaml.safe_load(handle)["version"]


GLOBALS_SQL = '''--
-- PostgreSQL database cluster dump
--

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE "Vendedor ""B""";
ALTER ROLE "Vendedor ""B""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN PASSWORD 'SCRAM-SHA-256$4096:new';
COMMENT ON ROLE "Vendedor ""B""" IS 'dos
líneas; y punto y coma';
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:super';
CREATE ROLE minimarket;
ALTER ROLE minimarket WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:keep';
ALTER ROLE minimarket SET search_path TO 'x';
ALTER ROLE "Vendedor ""B""" SET statement_timeout TO '1min';

--
-- Role memberships
--

GRANT minimarket TO "Vendedor ""B""" GRANTED BY postgres;
GRANT "Vendedor ""B""" TO minimarket GRANTED BY postgres;
ALTER ROLE "Vendedor ""B""" IN DATABASE minimarket SET work_mem TO '8MB';
CREATE TABLESPACE rapido OWNER postgres LOCATION '/srv/rapido';
'''


def test_plan_globals_creates_only_missing_roles_and_never_touches_existing_ones():
    plan = pg_globals.plan_globals(GLOBALS_SQL, {"postgres", "minimarket"})
    assert plan["created"] == ['Vendedor "B"'] and plan["kept"] == ["minimarket"]
    assert plan["statements"] == [
        "SET default_transaction_read_only = off;",
        "SET client_encoding = 'UTF8';",
        "SET standard_conforming_strings = on;",
        'CREATE ROLE "Vendedor ""B""";',
        'ALTER ROLE "Vendedor ""B""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN PASSWORD \'SCRAM-SHA-256$4096:new\';',
        'COMMENT ON ROLE "Vendedor ""B""" IS \'dos\nlíneas; y punto y coma\';',
        'ALTER ROLE "Vendedor ""B""" SET statement_timeout TO \'1min\';',
        'GRANT minimarket TO "Vendedor ""B""" GRANTED BY postgres;',
    ]
    assert plan["skipped"] == 7
    assert not [s for s in plan["statements"] if "keep" in s or "super" in s or "TABLESPACE" in s]
    assert pg_globals.plan_globals(GLOBALS_SQL, {"postgres", "minimarket", 'Vendedor "B"'})["created"] == []


def test_leftover_names_need_our_pattern():
    assert pg_databases.is_leftover_name("minimarket", "minimarket_restoring_20251008_031500")
    assert pg_databases.is_leftover_name("minimarket", "minimarket_verify_20251008_031500")
    assert not pg_databases.is_leftover_name("minimarket", "minimarket_pre_restore_20251008_031500")
    assert not pg_databases.is_leftover_name("minimarket", "minimarket_restoring_copia")
    assert not pg_databases.is_leftover_name("minimarket", "minimarket2_restoring_20251008_031500")
    long_db = "x" * 63
    assert pg_databases.is_leftover_name(long_db, pg_databases.suffix_name(long_db, "restoring", utc_now()))


def test_properties_compare_regardless_of_order():
    acl = [{"grantee": "b", "privilege": "CONNECT", "grantable": False}, {"grantee": "a", "privilege": "TEMPORARY", "grantable": False}]
    settings = [{"role": "r", "name": "work_mem", "value": "8MB"}, {"role": None, "name": "timezone", "value": "UTC"}]
    one = pg_catalog.normalize_properties({"owner": "o", "acl": acl, "settings": settings, "encoding": "UTF8"})
    two = pg_catalog.normalize_properties({"owner": "o", "acl": acl[::-1], "settings": settings[::-1]})
    assert one == two and "encoding" not in one
    assert pg_globals.referenced_roles(dict(one, acl=one["acl"] + [{"grantee": "PUBLIC", "privilege": "CONNECT", "grantable": False}])) == {"o", "a", "b", "r"}
    with pytest.raises(BackupError, match=r"^role\(s\) a, b, r, used by database d .* restore_globals: true"):
        pg_globals.check_roles(one, {"o"}, "d")
    pg_globals.check_roles(one, {"o", "a"}, "d", created=("b", "r"))


def test_compression_level_is_checked_and_reaches_the_compressor(tmp_path):
    pg_dump.check_compression_level("gzip", None)
    pg_dump.check_compression_level("zstd", 19)
    for compression, level in (("gzip", 0), ("gzip", 10), ("zstd", 20), ("none", 1)):
        with pytest.raises(BackupError, match="^compression_level %d does not fit compression %s: use 1-9 for gzip" % (level, compression)):
            pg_dump.check_compression_level(compression, level)
    payload = b"producto;precio;stock\n" * 200000
    sizes = {}
    for level in (1, 9):
        with open(str(tmp_path / ("x%d.gz" % level)), "wb") as handle:
            sink = CompressedSink(handle, "gzip", level=level)
            sink.write(payload)
            sizes[level] = sink.close()[0]
        assert gzip.decompress(open(str(tmp_path / ("x%d.gz" % level)), "rb").read()) == payload
    assert sizes[9] < sizes[1]


def test_the_module_starts_without_the_docker_sdk():
    """Only a repair of what a killed docker_volume_archive left needs it: importing it cost every run 0.1 s."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    probe = ("import sys; import ansible_collections.minimarket.backup.plugins.modules.pg_split_dump; "
             "print(sorted(m for m in ('docker', 'requests') if m in sys.modules))")
    rc, out, err = run([sys.executable, "-c", probe], env={"PYTHONPATH": os.path.join(root, ".collections")})
    assert (rc, out.strip()) == (0, "[]"), err
