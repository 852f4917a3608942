"""Crash harness: SIGKILL a real module process at each named step, then check what it left and that the next run repairs it.

The kill comes from ``strace -e inject=<syscall>:signal=SIGKILL:when=N``: the
journal is written by rename(2) before each step, so the Nth rename is the
moment the module is about to record step N (steps 1..N-1 done); the volume
swap is renameat2(2) RENAME_EXCHANGE, one per volume.  After each kill:
(a) the live database exists and every volume has its data (the old or the
new, never a mix); (b) the next run succeeds, restarts every container the
killed run stopped, leaves the live database open and no temporary database,
staging directory or scratch volume behind, and says what it repaired.
"""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from tests.pg_fixtures import MODULE, REPO_ROOT, conn_args, module_argv, module_env, run_module, wait_for

pytest_plugins = ["tests.pg_fixtures", "tests.volume_fixtures"]

VOLUME_MODULE = os.path.join(REPO_ROOT, "plugins", "modules", "docker_volume_archive.py")
STRACE = shutil.which("strace")


@pytest.fixture
def backup_root():
    """A private backup root: its .journal is this test's alone."""
    path = tempfile.mkdtemp(prefix="mm-crash-")
    for sub in ("database", "volumes"):
        os.mkdir(os.path.join(path, sub), 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def killed_at(args, syscall, when, module=MODULE):
    """Run the module under strace; it must die of the SIGKILL injected at the ``when``-th ``syscall``."""
    assert STRACE, "strace is missing: scripts/bootstrap-host.sh installs it"
    argv, path = module_argv(args, module=module)
    command = [STRACE, "-qq", "-o", "/dev/null", "-e", "trace=%s" % syscall,
               "-e", "inject=%s:signal=SIGKILL:when=%d" % (syscall, when)] + argv
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=module_env(), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        os.unlink(path)
        try:
            os.killpg(proc.pid, 9)  # the rest of the tree (a psql, a tar) dies with it, as on a real kill
        except ProcessLookupError:
            pass
    assert b'"changed"' not in out, "the module finished before step %d: %s %s" % (when, out, err)
    return proc.returncode


def journals(root):
    directory = os.path.join(root, ".journal")
    found = {}
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as handle:
                found[name] = json.load(handle)
    return found


# ---------------------------------------------------------------- database swap restore

# (rename number, the state the killed run leaves, the repair the next run must report)
DB_STEPS = [
    (1, "before the temporary database exists", None),
    (2, "temporary copy restored, its marker replaced by the real properties", "dropped database"),
    (3, "live database closed to new connections", "reopened database"),
    (4, "swap committed, previous copy not dropped yet", "the interrupted restore had swapped"),
]


def db_state(pg_server, db):
    rows = pg_server.execute("SELECT datname, datallowconn FROM pg_database WHERE datname = %s OR datname LIKE %s",
                             params=(db, db + "\\_%"))
    return dict(rows)


@pytest.mark.parametrize("when,state,repair", DB_STEPS, ids=[s[1] for s in DB_STEPS])
def test_swap_restore_killed(pg_server, seeded_db, backup_root, dropped_databases, when, state, repair):
    del state
    dest = os.path.join(backup_root, "database")
    base = conn_args(pg_server, db=seeded_db, dest=dest, environment="crash")
    assert run_module(dict(base, state="dump"))["_rc"] == 0
    pg_server.execute("DELETE FROM ventas", seeded_db)
    backup_rows = None
    args = dict(base, state="restore", src="latest", keep_previous=False)

    killed_at(args, "rename", when)

    # (a) the live database is there, with the old data or the new, never missing
    state = db_state(pg_server, seeded_db)
    assert seeded_db in state, state
    rows = pg_server.execute("SELECT count(*) FROM ventas", seeded_db)[0][0] if state[seeded_db] else None
    assert bool(journals(backup_root)) == (when > 1), "the journal does not hold the steps done"

    # (b) the next run repairs, then restores
    again = run_module(args)
    assert again["_rc"] == 0, again
    if repair:
        assert any(repair in entry["repair"] for entry in again["repaired"]), again["repaired"]
    after = db_state(pg_server, seeded_db)
    assert after == {seeded_db: True}, after  # open, and no _restoring_ / _pre_restore_ left
    backup_rows = pg_server.execute("SELECT count(*) FROM ventas", seeded_db)[0][0]
    assert backup_rows > 0 and rows in (0, backup_rows, None)
    assert journals(backup_root) == {}


def test_verify_killed_leaves_no_scratch_database(pg_server, seeded_db, backup_root, dropped_databases):
    """Polling pg_database: killed while its scratch database exists (the marker of a scratch_db is no guide)."""
    dest = os.path.join(backup_root, "database")
    base = conn_args(pg_server, db=seeded_db, dest=dest, environment="crash")
    assert run_module(dict(base, state="dump"))["_rc"] == 0
    args = dict(base, state="verify", src="latest", scratch_db=seeded_db + "_tmpcheck")
    argv, path = module_argv(args)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=module_env(), start_new_session=True)
    try:
        wait_for(lambda: pg_server.execute("SELECT 1 FROM pg_database WHERE datname = %s", params=(args["scratch_db"],)),
                 interval=0.005, what="the scratch database")
        os.killpg(proc.pid, 9)
        proc.wait()
    finally:
        os.unlink(path)
    assert journals(backup_root)

    again = run_module(args)
    assert again["_rc"] == 0, again
    assert {"journal", "job", "repair"} <= set(again["repaired"][0])
    assert any("dropped database %s" % args["scratch_db"] == e["repair"] for e in again["repaired"]), again["repaired"]
    assert db_state(pg_server, seeded_db) == {seeded_db: True}
    assert journals(backup_root) == {}
