"""The intent journal's own logic: durable steps, dead vs live runs, replay order, steps left for another module."""
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _journal
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError


def files(directory):
    return sorted(os.listdir(directory))


def dead_run(directory, steps, name="x-restore-20260101T000000Z-1"):
    """The files a killed run leaves: its journal and an unlocked lock."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name + ".json"), "w") as handle:
        json.dump({"job": "x restore", "started": "2026-01-01T00:00:00Z", "steps": steps}, handle)
    open(os.path.join(directory, name + ".lock"), "w").close()
    return name


def test_a_job_records_durably_and_clears_when_done(tmp_path):
    directory = str(tmp_path / ".journal")
    with _journal.job(directory, "x restore") as journal:
        journal.record("container_stopped", id="abc", name="web")
        (name,) = [n for n in files(directory) if n.endswith(".json")]
        with open(os.path.join(directory, name)) as handle:
            data = json.load(handle)
        assert data["job"] == "x restore" and data["steps"] == [{"step": "container_stopped", "id": "abc", "name": "web"}]
        assert oct(os.stat(os.path.join(directory, name)).st_mode & 0o777) == "0o600"
        assert oct(os.stat(directory).st_mode & 0o777) == "0o700"
        # While it runs, a replay leaves it alone (its lock is held).
        assert _journal.replay(directory, {"container_stopped": lambda step: ["started"]}) == ([], [])
    assert files(directory) == []


def test_a_backup_error_the_job_undid_clears_it_anything_else_keeps_it(tmp_path):
    directory = str(tmp_path / ".journal")
    with pytest.raises(BackupError):
        with _journal.job(directory, "x restore") as journal:
            journal.record("temporary_database", database="t")
            raise BackupError("refused")
    assert files(directory) == []
    with pytest.raises(BackupError):
        with _journal.job(directory, "x restore") as journal:
            journal.record("container_stopped", id="abc", name="web")
            journal.keep = True  # the restart failed: the next run must start it
            raise BackupError("could not restart")
    assert [n for n in files(directory) if n.endswith(".json")]


def test_replay_repairs_a_dead_run_newest_step_first_and_reports_it(tmp_path):
    directory = str(tmp_path / ".journal")
    name = dead_run(directory, [{"step": "container_stopped", "name": "web"}, {"step": "staging_directory", "path": "/s"}])
    order = []
    repairers = {"container_stopped": lambda step: order.append(step["step"]) or ["started web"],
                 "staging_directory": lambda step: order.append(step["step"]) or ["removed /s"]}
    repaired, warnings = _journal.replay(directory, repairers)
    assert order == ["staging_directory", "container_stopped"]
    assert repaired == [{"journal": name + ".json", "job": "x restore", "repair": "removed /s"},
                        {"journal": name + ".json", "job": "x restore", "repair": "started web"}]
    assert warnings == [] and files(directory) == []


def test_steps_of_another_module_or_a_failed_repair_stay_with_a_warning(tmp_path):
    directory = str(tmp_path / ".journal")
    name = dead_run(directory, [{"step": "database_closed", "database": "minimarket"},
                                {"step": "scratch_volume", "name": "mmverify-1-2-0"}])

    def engine_down(step):
        raise BackupError("cannot reach the Docker engine")

    repaired, warnings = _journal.replay(directory, {"scratch_volume": engine_down})
    assert repaired == []
    assert "cannot reach the Docker engine" in warnings[0]
    assert "still holds database_closed, scratch_volume" in warnings[1]
    assert _journal.pending(directory) == ["journal %s: an interrupted x restore left database_closed, scratch_volume"
                                           % os.path.join(directory, name + ".json")]
    repaired, warnings = _journal.replay(directory, {"scratch_volume": lambda step: ["removed"],
                                                     "database_closed": lambda step: ["reopened"]})
    assert [entry["repair"] for entry in repaired] == ["removed", "reopened"] and warnings == []
    assert files(directory) == []


def test_a_run_killed_before_its_first_step_leaves_only_a_lock_which_is_removed(tmp_path):
    directory = str(tmp_path / ".journal")
    os.makedirs(directory)
    open(os.path.join(directory, "x-restore-20260101T000000Z-1.lock"), "w").close()
    assert _journal.replay(directory, {}) == ([], []) and files(directory) == []


def test_a_live_run_in_another_process_is_never_replayed(tmp_path):
    directory = str(tmp_path / ".journal")
    name = dead_run(directory, [{"step": "container_stopped", "name": "web"}])
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               os.path.join(directory, name + ".lock")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        assert _journal.replay(directory, {"container_stopped": lambda step: ["started"]}) == ([], [])
        assert _journal.pending(directory) == []
    finally:
        holder.kill()
        holder.wait()
    assert _journal.replay(directory, {"container_stopped": lambda step: ["started"]})[0][0]["repair"] == "started"


def test_without_a_directory_steps_stay_in_memory(tmp_path):
    with _journal.job(None, "x verify") as journal:
        journal.record("temporary_database", database="t")
        assert journal.data["steps"] == [{"step": "temporary_database", "database": "t"}]
    assert _journal.replay(None, {}) == ([], [])


def test_default_directory_is_in_the_backup_root():
    assert _journal.default_dir("/var/backups/minimarket/database") == "/var/backups/minimarket/.journal"
    assert _journal.default_dir("/var/backups/minimarket/volumes/") == "/var/backups/minimarket/.journal"
    assert _journal.default_dir(None, "/var/backups/minimarket/database/database_production_20260101_000000.tar.gz") == \
        "/var/backups/minimarket/.journal"
    assert _journal.default_dir(None, "latest") is None
