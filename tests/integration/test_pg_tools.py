"""PgTools.kept_session against a real server: one psql for the maintenance database, each script as if alone."""
import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import PgTools
from tests.pg_fixtures import conn_args, wait_for

pytest_plugins = ["tests.pg_fixtures"]

PID = "SELECT pg_backend_pid();"


def tools_for(pg_server, **extra):
    return PgTools(conn_args(pg_server, maintenance_db="postgres", **extra))


def backend_alive(pg_server, pid):
    return bool(pg_server.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %d" % int(pid)))


def test_maintenance_scripts_share_one_backend_inside_the_block_only(pg_server):
    tools = tools_for(pg_server)
    outside = [tools.psql("postgres", PID)[0][0] for _attempt in range(2)]
    assert outside[0] != outside[1]
    with tools.kept_session():
        inside = [tools.psql("postgres", PID)[0][0] for _attempt in range(3)]
        other_db = tools.psql("template1", PID)[0][0]
        assert backend_alive(pg_server, inside[0])
    assert len(set(inside)) == 1
    assert other_db != inside[0]
    wait_for(lambda: not backend_alive(pg_server, inside[0]), timeout=30, interval=0.1, what="the kept session to end")


def test_each_script_starts_as_in_a_fresh_psql(pg_server):
    tools = tools_for(pg_server)
    with tools.kept_session():
        default = tools.psql("postgres", "SHOW work_mem;")[0][0]
        tools.psql("postgres", "SET work_mem = '77MB';")
        assert tools.psql("postgres", "SHOW work_mem;") == [[default]]
        tools.psql("postgres", "BEGIN;\nCREATE TEMP TABLE mm_left_open (x int);")
        assert tools.psql("postgres", "SELECT count(*) FROM pg_class WHERE relname = 'mm_left_open';") == [["0"]]
        assert tools.psql("postgres", "SELECT 40 + 2") == [["42"]]
        assert tools.psql("postgres", "SELECT 'a', 'b';\nSELECT 'c', 'd'") == [["a", "b"], ["c", "d"]]


def test_a_failing_script_names_its_own_error_and_the_next_gets_a_new_session(pg_server):
    tools = tools_for(pg_server)
    with tools.kept_session():
        first = tools.psql("postgres", PID)[0][0]
        tools.psql("postgres", "DO $$BEGIN RAISE WARNING 'an earlier step failed harmlessly'; END$$;")
        with pytest.raises(BackupError) as failed:
            tools.psql("postgres", "SELECT * FROM mm_no_such_table;", what="reading the plan")
        message = str(failed.value)
        assert message.startswith("reading the plan failed: ")
        assert 'relation "mm_no_such_table" does not exist' in message
        assert "earlier step" not in message
        second = tools.psql("postgres", PID)[0][0]
    assert second != first
    assert not backend_alive(pg_server, first)


def test_a_session_that_cannot_connect_says_what_it_was_for(pg_server):
    tools = tools_for(pg_server, login_password="not-the-password")
    with tools.kept_session(), pytest.raises(BackupError) as failed:
        tools.psql("postgres", "SELECT 1;", what="listing roles")
    message = str(failed.value)
    assert message.startswith("listing roles failed: ")
    assert message.endswith("-- check login_user/login_password")
    assert "not-the-password" not in message
