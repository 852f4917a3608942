"""stack_health's database checks after a recovery: pg_split_dump state=check on a real PostgreSQL in a compose-labelled container.

The role reaches the database by its compose labels, as after a recovery; the checks are those of
``pg_split_dump state=verify`` (one Python function), so a table whose name needs quoting is counted
and a failure reads as verify's.
"""
import json
import uuid

import pytest

from test_playbooks import ansible
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import quote_ident
from tests.pg_fixtures import PgContainer, run_module

pytest_plugins = ["tests.pg_fixtures"]

PROJECT = "mmtest-%s" % uuid.uuid4().hex[:8]
QUOTED = 'it\'s "quoted"'
INJECTION = "productos; DROP TABLE productos; --"
SCHEMA = """
CREATE TABLE productos (id int PRIMARY KEY);
INSERT INTO productos SELECT generate_series(1, 10);
CREATE TABLE "Ventas Día" (id int);
INSERT INTO "Ventas Día" VALUES (1), (2), (3);
CREATE TABLE {quoted} (id int);
INSERT INTO {quoted} VALUES (1), (2);
CREATE SCHEMA "almacén";
CREATE TABLE "almacén"."Stock" (id int);
INSERT INTO "almacén"."Stock" VALUES (1);
""".format(quoted=quote_ident(QUOTED))
PLAYBOOK = """---
- name: The database checks of stack_health, as recover_*.yml run them
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Check the database content
      ansible.builtin.include_role:
        name: minimarket.backup.stack_health
        tasks_from: database.yml
"""


@pytest.fixture(scope="module")
def labelled_db():
    container = PgContainer(labels={"com.docker.compose.project": PROJECT, "com.docker.compose.service": "postgres"})
    try:
        container.start()
        container.execute("CREATE DATABASE minimarket")
        container.execute(SCHEMA, "minimarket")
        yield container
    finally:
        container.remove()


@pytest.fixture
def stack_health(tmp_path):
    playbook = tmp_path / "health.yml"
    playbook.write_text(PLAYBOOK)

    def run(critical_tables, queries):
        settings = {"ansible_python_interpreter": "{{ ansible_playbook_python }}", "stack_health_project": PROJECT,
                    "stack_health_db_service": "postgres", "stack_health_db_name": "minimarket", "stack_health_db_user": "postgres",
                    "stack_health_critical_tables": critical_tables, "stack_health_queries": queries}
        proc = ansible("ansible-playbook", "-i", "localhost,", str(playbook), "-e", json.dumps(settings))
        return proc.returncode, proc.stdout + proc.stderr
    return run


def test_names_that_need_quoting_are_counted(labelled_db, stack_health):
    rc, out = stack_health({"Ventas Día": 3, QUOTED: 2, "almacén.Stock": 1, "public.productos": 10},
                           ["SELECT count(*) = 3 FROM \"Ventas Día\""])
    assert rc == 0, out
    assert ('healthy: 4 critical tables at or above their minimum (Ventas Día=3, almacén.Stock=1, %s=2, public.productos=10), '
            '1 queries true' % QUOTED) in out.replace('\\"', '"')


def test_a_failed_check_fails_the_role_with_the_words_of_verify(labelled_db, stack_health, backup_dir):
    critical, queries = {"Ventas Día": 4, "productos": 10}, ["SELECT count(*) > 100 FROM productos"]
    rc, out = stack_health(critical, queries)
    problems = ("critical table Ventas Día has 3 rows, needs at least 4; "
                "query 'SELECT count(*) > 100 FROM productos' returned 'f', not true")
    assert rc != 0 and "failed=1" in out, out
    assert "database minimarket failed verification: %s -- restore another backup or fix the checks" % problems in out, out
    assert "healthy:" not in out

    # verify, on a scratch copy of a dump of the same database, says the same
    conn = dict(container=labelled_db.name, login_host="127.0.0.1", login_password=labelled_db.password)
    dumped = run_module(dict(conn, state="dump", db="minimarket", dest=backup_dir, environment="health"))
    assert dumped["_rc"] == 0, dumped
    verified = run_module(dict(conn, state="verify", db="minimarket", src=dumped["archive"], critical_tables=critical,
                               queries=queries))
    assert verified["_rc"] == 1
    assert verified["msg"].startswith("backup %s failed verification: %s -- " % (dumped["archive"].rsplit("/", 1)[1], problems))
    checked = run_module(dict(conn, state="check", db="minimarket", critical_tables=critical, queries=queries))
    assert checked["_rc"] == 1 and checked["problems"] == verified["problems"] and checked["checks"] == verified["checks"]


def test_a_crafted_table_name_runs_no_sql(labelled_db, stack_health):
    rc, out = stack_health({INJECTION: 1}, [])
    assert rc != 0
    assert ("database minimarket failed verification: critical table %s was not found (name it schema.table, or table "
            "for one in public) -- restore another backup or fix the checks" % INJECTION) in out, out
    assert labelled_db.execute("SELECT count(*) FROM productos", "minimarket") == [(10,)]
