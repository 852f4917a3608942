"""Crash harness: SIGKILL a real module process at each named step, then check what it left and that the next run repairs it.

The kill comes from ``strace -e inject=<syscall>:signal=SIGKILL:when=N``: the
journal is written by rename(2) before each step, so the Nth rename is the
moment the module is about to record step N (steps 1..N-1 done); the volume
swap is renameat2(2) RENAME_EXCHANGE, one per volume, after one syncfs(2)
of the staged copy.  After each kill:
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


# ---------------------------------------------------------------- volumes (host mode, real Docker engine)

# (syscall, when, the state the killed run leaves, each volume's marker then, a repair the next run must report)
VOLUME_STEPS = [
    ("rename", 2, "container stopped, nothing staged", ["live", "live"], "started container"),
    ("rename", 3, "restored copy staged beside the data", ["live", "live"], "removed staging directory"),
    ("syncfs", 1, "copy checked, not yet made durable, no volume swapped", ["live", "live"], "removed staging directory"),
    ("renameat2", 1, "copy checked and on disk, no volume swapped", ["live", "live"], "started container"),
    ("renameat2", 2, "first volume swapped, second not", ["backup", "live"], "put the previous data of volume"),
]


@pytest.fixture
def two_volumes(engine, mm_docker, helper_image, backup_root):
    """Two volumes archived with content 'backup', then changed to 'live'; a running container uses the first."""
    names = [mm_docker.volume("uno"), mm_docker.volume("dos")]
    for name in names:
        write_marker(mm_docker.mountpoint(name), "backup")
    user = mm_docker.container("user", names[:1], helper_image)
    args = dict(volumes=names, dest=os.path.join(backup_root, "volumes"), environment="crash", mode="host", stop_containers=True)
    archived = run_module(args, module=VOLUME_MODULE)
    assert archived["_rc"] == 0, archived
    for name in names:
        write_marker(mm_docker.mountpoint(name), "live")
    return names, user, args


def write_marker(mountpoint, text):
    for rel in ("marca.txt", "sub/marca.txt"):
        os.makedirs(os.path.join(mountpoint, "sub"), exist_ok=True)
        with open(os.path.join(mountpoint, rel), "w") as handle:
            handle.write(text)


def volume_contents(mm_docker, names):
    """Each volume's marker ('live' or 'backup'); fails if a _data directory is missing or half of one thing."""
    found = []
    for name in names:
        mountpoint = mm_docker.mountpoint(name)
        assert os.path.isdir(mountpoint), "volume %s has no _data" % name
        texts = set()
        for rel in ("marca.txt", "sub/marca.txt"):
            with open(os.path.join(mountpoint, rel)) as handle:
                texts.add(handle.read())
        assert len(texts) == 1, texts
        found.append(texts.pop())
    return found


def volume_leftovers(mm_docker, names):
    return [entry for name in names for entry in os.listdir(os.path.dirname(mm_docker.mountpoint(name))) if entry != "_data"]


@pytest.mark.parametrize("syscall,when,state,contents,repair", VOLUME_STEPS, ids=[s[2] for s in VOLUME_STEPS])
def test_volume_restore_killed(mm_docker, two_volumes, backup_root, syscall, when, state, contents, repair):
    del state
    names, user, base = two_volumes
    args = dict(base, state="restore", src="latest")

    killed_at(args, syscall, when, module=VOLUME_MODULE)

    # (a) every volume has its data, whole: the old, or the restored one once its swap was done
    assert volume_contents(mm_docker, names) == contents
    assert not mm_docker.running(user), "the kill came before the container was stopped"

    # (b) the next run repairs first: old data back, container running, no staging directory left
    again = run_module(args, module=VOLUME_MODULE)
    assert again["_rc"] == 0, again
    assert any(repair in entry["repair"] for entry in again["repaired"]), again["repaired"]
    assert volume_contents(mm_docker, names) == ["backup", "backup"]
    assert mm_docker.running(user)
    assert volume_leftovers(mm_docker, names) == []
    assert journals(backup_root) == {}


def test_volume_swap_undone_keeps_every_volume_old(mm_docker, two_volumes, backup_root):
    """Killed between the two exchanges: the journal replay alone (a check-mode-free verify run) puts the first back."""
    names, user, base = two_volumes
    killed_at(dict(base, state="restore", src="latest"), "renameat2", 2, module=VOLUME_MODULE)
    assert volume_contents(mm_docker, names) == ["backup", "live"]

    checked = run_module(dict(base, state="verify", src="latest"), module=VOLUME_MODULE)
    assert checked["_rc"] == 0, checked
    assert volume_contents(mm_docker, names) == ["live", "live"]
    assert mm_docker.running(user) and volume_leftovers(mm_docker, names) == []
    assert [e["repair"] for e in checked["repaired"]][:1] == [
        "put the previous data of volume %s back (the interrupted restore had swapped only some volumes)" % names[0]]


def test_volume_restore_refused_when_the_copy_cannot_reach_the_disk(mm_docker, two_volumes, backup_root):
    """syncfs(2) fails (strace injects EIO): one line naming the directory and the fix; every volume keeps its old data."""
    names, user, base = two_volumes
    argv, path = module_argv(dict(base, state="restore", src="latest"), module=VOLUME_MODULE)
    try:
        proc = subprocess.run([STRACE, "-qq", "-o", "/dev/null", "-e", "trace=syncfs", "-e", "inject=syncfs:error=EIO"] + argv,
                              capture_output=True, text=True, env=module_env(), timeout=300, check=False)
    finally:
        os.unlink(path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 1 and result["failed"], result
    assert result["msg"] in ["writing the restored data to disk failed (%s: Input/output error): the volumes were not changed; "
                             "check the disk (dmesg) and run the restore again" % os.path.dirname(mm_docker.mountpoint(name))
                             for name in names]
    assert volume_contents(mm_docker, names) == ["live", "live"]
    assert mm_docker.running(user) and volume_leftovers(mm_docker, names) == []
    assert journals(backup_root) == {}


def test_archive_killed_while_containers_stopped(engine, mm_docker, two_volumes, backup_root):
    """Polling docker inspect: killed while the container is down (a big file keeps the archive reading a while)."""
    names, user, base = two_volumes
    with open(os.path.join(mm_docker.mountpoint(names[0]), "grande.bin"), "wb") as handle:
        for _block in range(256):
            handle.write(os.urandom(1024 * 1024))
    argv, path = module_argv(base, module=VOLUME_MODULE)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=module_env(), start_new_session=True)
    try:
        wait_for(lambda: not mm_docker.running(user), interval=0.005, what="the container to be stopped")
        os.killpg(proc.pid, 9)
        proc.wait()
    finally:
        os.unlink(path)
    assert not mm_docker.running(user)

    again = run_module(base, module=VOLUME_MODULE)
    assert again["_rc"] == 0, again
    assert mm_docker.running(user)
    assert any(e["repair"].startswith("started container %s" % mm_docker.prefix) for e in again["repaired"]), again
    assert again["stopped_containers"] == [{"id": user, "name": "%s-user" % mm_docker.prefix}]
    assert not [n for n in os.listdir(base["dest"]) if n.endswith(".partial")]
    assert journals(backup_root) == {}


def test_scratch_verify_killed_leaves_no_scratch_volume(engine, mm_docker, two_volumes, backup_root):
    names, user, base = two_volumes
    args = dict(base, state="verify", src="latest", scratch_restore=True)
    killed_at(args, "rename", 3, module=VOLUME_MODULE)  # both scratch volumes made, staging directory next
    scratch = [s["name"] for steps in journals(backup_root).values() for s in steps["steps"] if s["step"] == "scratch_volume"]
    assert len(scratch) == 2 and all(engine.volume(name) for name in scratch)

    again = run_module(args, module=VOLUME_MODULE)
    assert again["_rc"] == 0, again
    assert sorted(e["repair"] for e in again["repaired"]) == sorted("removed scratch volume %s" % n for n in scratch)
    assert [name for name in scratch if engine.volume(name)] == []
    assert journals(backup_root) == {}
    assert mm_docker.running(user)


def test_pg_split_dump_repairs_what_a_killed_volume_run_left(pg_server, seeded_db, engine, mm_docker, two_volumes, backup_root):
    """The shared journal: the next run of either module repairs; pg_split_dump loads the volume repairers only then."""
    names, user, base = two_volumes
    killed_at(dict(base, state="verify", src="latest", scratch_restore=True), "rename", 3, module=VOLUME_MODULE)
    scratch = [s["name"] for steps in journals(backup_root).values() for s in steps["steps"] if s["step"] == "scratch_volume"]
    assert len(scratch) == 2 and all(engine.volume(name) for name in scratch)

    checked = run_module(conn_args(pg_server, db=seeded_db, dest=os.path.join(backup_root, "database"), state="check",
                                   critical_tables={"ventas": 1}))
    assert checked["_rc"] == 0, checked
    assert sorted(e["repair"] for e in checked["repaired"]) == sorted("removed scratch volume %s" % n for n in scratch)
    assert [name for name in scratch if engine.volume(name)] == []
    assert journals(backup_root) == {}
    assert mm_docker.running(user) and len(names) == 2
