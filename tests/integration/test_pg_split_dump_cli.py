"""Every state of pg_split_dump through ``ansible localhost -m``: each documented RETURN key is returned, nothing undocumented is."""
import json
import os
import subprocess

import pytest
import yaml

from ansible_collections.minimarket.backup.plugins.modules import pg_split_dump
from tests.pg_fixtures import REPO_ROOT, conn_args, module_env

pytest_plugins = ["tests.pg_fixtures"]

RETURN = yaml.safe_load(pg_split_dump.RETURN)
STANDARD = {"action", "changed", "failed", "invocation", "warnings", "deprecations", "_ansible_no_log", "_ansible_verbose_always"}

# (scenario, extra args, check mode, changed, documented keys it must return)
SCENARIOS = [
    ("dump", dict(state="dump", include_globals=True), False, True,
     {"archive", "metadata", "size", "sha256", "duration", "tables", "encrypted", "recipients"}),
    ("dump in check mode", dict(state="dump"), True, True, {"archive", "metadata", "msg", "encrypted", "recipients"}),
    ("restore in check mode", dict(state="restore", src="latest", restore_globals=True), True, True,
     {"src", "backup", "database", "source_database", "strategy", "previous", "tables", "leftovers_dropped", "globals",
      "sessions", "msg"}),
    ("restore", dict(state="restore", src="latest", keep_previous=False, restore_globals=True), False, True,
     {"src", "backup", "database", "source_database", "strategy", "previous", "previous_dropped", "restore_duration",
      "duration", "tables", "database_properties", "leftovers_dropped", "globals", "sessions", "repaired"}),
    ("verify in check mode", dict(state="verify", src="latest"), True, False, {"src", "backup", "msg"}),
    ("verify", dict(state="verify", src="latest", critical_tables={"productos": 1}), False, False,
     {"src", "leftovers_dropped", "database_properties", "scratch_db", "tables", "checks", "problems", "duration"}),
]


def ansible_json(args, check_mode):
    ansible = os.path.join(REPO_ROOT, ".venv", "bin", "ansible")
    env = dict(module_env(), ANSIBLE_CONFIG=os.path.join(REPO_ROOT, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    argv = [ansible, "localhost", "-m", "minimarket.backup.pg_split_dump", "-a", json.dumps(args)] + (["--check"] if check_mode else [])
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def dead_run_journal(pg_server, directory, temporary):
    """What a restore killed after creating its temporary database leaves: the database and its journal, unlocked."""
    pg_server.create_database(temporary)
    os.makedirs(directory)
    name = os.path.join(directory, "pg_split_dump-restore-20250101T000000Z-1")
    step = {"step": "temporary_database", "database": temporary,
            "server": {"host": pg_server.host, "port": str(pg_server.port), "container": None}}
    with open(name + ".json", "w") as handle:
        json.dump({"job": "pg_split_dump restore", "steps": [step]}, handle)
    open(name + ".lock", "w").close()


def test_scenarios_cover_every_documented_key():
    assert set().union(*(keys for *_rest, keys in SCENARIOS)) == set(RETURN)


@pytest.mark.parametrize("scenario", [s[0] for s in SCENARIOS])
def test_documented_return_keys(pg_server, seeded_db, backup_dir, dropped_databases, scenario):
    del dropped_databases
    base = conn_args(pg_server, db=seeded_db, dest=backup_dir, environment="cli", journal_dir=os.path.join(backup_dir, ".journal"))
    if scenario != "dump":
        ansible_json(dict(base, state="dump", include_globals=True), False)
    if scenario == "restore":
        dead_run_journal(pg_server, base["journal_dir"], seeded_db + "_restoring_20250101_000000")
    _name, extra, check_mode, changed, expected = [s for s in SCENARIOS if s[0] == scenario][0]
    result = ansible_json(dict(base, **extra), check_mode)
    assert result["changed"] is changed, result
    returned = set(result) - STANDARD
    assert expected <= returned, "documented but not returned: %s" % sorted(expected - returned)
    assert returned <= set(RETURN), "returned but not documented: %s" % sorted(returned - set(RETURN))
    assert pg_server.password not in json.dumps(result)
