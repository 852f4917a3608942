"""PITR decisions without Barman or Docker: target parsing, base backup choice, the journaled swap, RPO, metrics."""
import datetime
import json
import os
import subprocess

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pg_verify import VerifyFailed
from ansible_collections.minimarket.backup.plugins.module_utils._pitr import (
    LATEST,
    choose_backup,
    commit,
    live_container,
    parse_target,
    recover,
    render_metrics,
    repair,
    rpo_seconds,
    scratch_verify,
    swap_back,
    swap_in,
    volume_paths,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 3, 14, 21, 0, 0, tzinfo=UTC)
BACKUPS = [
    {"backup_id": "20260313T013000", "status": "DONE", "end_time_timestamp": str(int(datetime.datetime(2026, 3, 13, 1, 31, tzinfo=UTC).timestamp()))},
    {"backup_id": "20260314T013000", "status": "DONE", "end_time_timestamp": str(int(datetime.datetime(2026, 3, 14, 1, 31, tzinfo=UTC).timestamp()))},
    {"backup_id": "20260314T120000", "status": "FAILED", "end_time_timestamp": "0"},
]


@pytest.mark.parametrize("text, expected", [
    ("2026-03-14 17:55:00-03", datetime.datetime(2026, 3, 14, 20, 55, tzinfo=UTC)),
    ("2026-03-14 20:55:00+00:00", datetime.datetime(2026, 3, 14, 20, 55, tzinfo=UTC)),
    ("2026-03-14T20:55:00.250Z", datetime.datetime(2026, 3, 14, 20, 55, 0, 250000, tzinfo=UTC)),
    ("2026-03-14 22:25:00+0130", datetime.datetime(2026, 3, 14, 20, 55, tzinfo=UTC)),
])
def test_target_times_with_a_zone(text, expected):
    assert parse_target(text, NOW) == expected


def test_a_target_without_zone_is_local_time():
    assert parse_target("2026-03-14 10:00:00", NOW) == datetime.datetime(2026, 3, 14, 10, 0).astimezone()


@pytest.mark.parametrize("text, message", [
    ("ayer a las cinco", "is not a time: write YYYY-MM-DD HH:MM:SS[+TZ]"),
    ("2026-02-30 10:00:00+00", "is not a valid date or time"),
    ("2026-03-14 10:00+00", "is not a time"),
    ("2026-03-14 21:00:01+00", "is in the future (now 2026-03-14 21:00:00+00:00)"),
])
def test_bad_targets_fail_with_one_line(text, message):
    with pytest.raises(BackupError) as info:
        parse_target(text, NOW)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_latest_is_kept_as_is():
    assert parse_target(" latest ", NOW) == LATEST


def test_the_base_backup_is_the_newest_one_finished_before_the_target():
    assert choose_backup(datetime.datetime(2026, 3, 14, 20, 55, tzinfo=UTC), BACKUPS)["backup_id"] == "20260314T013000"
    assert choose_backup(datetime.datetime(2026, 3, 14, 1, 30, tzinfo=UTC), BACKUPS)["backup_id"] == "20260313T013000"
    assert choose_backup(LATEST, BACKUPS)["backup_id"] == "20260314T013000"


def test_a_target_before_the_oldest_base_backup_names_the_earliest_moment():
    with pytest.raises(BackupError) as info:
        choose_backup(datetime.datetime(2026, 3, 13, 1, 0, tzinfo=UTC), BACKUPS)
    assert "is before the oldest base backup, which finished at 2026-03-13 01:31:00+00:00" in str(info.value)
    with pytest.raises(BackupError, match="no complete base backup yet"):
        choose_backup(LATEST, BACKUPS[2:])


def make_volume(tmp_path):
    data = tmp_path / "_data"
    data.mkdir()
    (data / "PG_VERSION").write_text("old")
    staging = tmp_path / "_data.pitr-staging"
    staging.mkdir()
    (staging / "PG_VERSION").write_text("new")
    return volume_paths(str(data))


def test_swap_in_then_back_restores_the_previous_data(tmp_path):
    paths = make_volume(tmp_path)
    swap_in(paths)
    assert open(os.path.join(paths["data"], "PG_VERSION")).read() == "new"
    assert json.load(open(paths["journal"]))["state"] == "swapped"
    swap_back(paths)
    assert open(os.path.join(paths["data"], "PG_VERSION")).read() == "old"
    assert open(os.path.join(paths["failed"], "PG_VERSION")).read() == "new"
    assert not os.path.exists(paths["journal"]) and not os.path.exists(paths["previous"])


def test_commit_drops_the_previous_data(tmp_path):
    paths = make_volume(tmp_path)
    swap_in(paths)
    commit(paths)
    assert sorted(os.listdir(tmp_path)) == ["_data"]


@pytest.mark.parametrize("killed_after", ["first rename", "both renames"])
def test_a_swap_killed_midway_is_undone_by_the_next_run(tmp_path, killed_after):
    paths = make_volume(tmp_path)
    os.rename(paths["data"], paths["previous"])
    if killed_after == "both renames":
        os.rename(paths["staging"], paths["data"])
    with open(paths["journal"], "w") as handle:
        json.dump({"state": "swapping"}, handle)
    assert repair(paths)
    assert open(os.path.join(paths["data"], "PG_VERSION")).read() == "old"
    assert not os.path.exists(paths["journal"]) and not os.path.exists(paths["staging"])


def test_a_volume_that_is_not_local_is_refused():
    with pytest.raises(BackupError, match="does not end in _data"):
        volume_paths("/mnt/nfs/pgdata")


def test_rpo_is_zero_when_caught_up_and_the_age_of_the_last_wal_otherwise():
    assert rpo_seconds(0, 1000.0, 5000.0) == 0
    assert rpo_seconds(8192, 4990.0, 5000.0) == 10.0
    assert rpo_seconds(None, 4700.0, 5000.0) == 300.0


def test_metrics_are_valid_for_promtool(tmp_path):
    text = render_metrics("production", {"rpo_seconds": 1.5, "streaming_up": 1, "check_ok": 0})
    assert 'minimarket_backup_pitr_rpo_seconds{environment="production"} 1.5' in text
    assert 'minimarket_backup_pitr_last_base_backup_timestamp_seconds{environment="production"} 0' in text
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def docker_ps(state):
    """A runner answering ``docker ps`` as for a Compose v2 stack whose PostgreSQL container is in ``state``."""
    calls = []

    def runner(argv, **_kwargs):
        calls.append(argv)
        return 0, "inventario-retail-postgres-1\t%s\t1\n" % state, ""
    return runner, calls


def labels(state):
    return dict(state=state, container=None, compose_project="inventario-retail", compose_service="postgres")


@pytest.mark.parametrize("state", ["recover", "status"])
def test_recover_and_status_find_the_container_stopped(monkeypatch, state):
    """A recovery killed after stopping PostgreSQL leaves it stopped; the next run must find it to repair it."""
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    runner, calls = docker_ps("exited")
    assert live_container(labels(state), runner) == "inventario-retail-postgres-1"
    assert "label=com.docker.compose.service=postgres" in calls[0]


@pytest.mark.parametrize("state", ["locate", "verify"])
def test_the_other_states_want_it_running(monkeypatch, state):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    with pytest.raises(BackupError, match="^container inventario-retail-postgres-1 of service postgres .* is exited, not running"):
        live_container(labels(state), docker_ps("exited")[0])


def test_a_given_container_is_used_without_asking_docker():
    runner, calls = docker_ps("running")
    assert live_container(dict(labels("recover"), container="db", compose_service=None), runner) == "db"
    assert calls == []


def test_without_a_container_status_runs_natively_and_recover_names_the_settings():
    params = dict(labels("status"), compose_project=None, compose_service=None)
    assert live_container(params, docker_ps("running")[0]) is None
    with pytest.raises(BackupError) as info:
        live_container(dict(params, state="recover"), docker_ps("running")[0])
    assert str(info.value) == ("state=recover needs the live PostgreSQL container: set compose_project and compose_service "
                               "(minimarket_compose_project, minimarket_db_service)")


class FakeCluster(object):
    """The live container as ``recover`` sees it: a log of what was done to it, SQL answered only once it is up.

    ``comes_up=False``: the data put back does not start (the recovered cluster then does).
    """

    def __init__(self, paths, comes_up=True):
        self.paths, self.volume, self.comes_up, self.log, self.up = paths, "pgdata", comes_up, [], False

    def stop(self):
        self.log.append("stop")
        self.up = False

    def start(self):
        self.log.append("start")

    def wait_promoted(self, _timeout):
        self.log.append("wait")
        if not self.comes_up and self.log.count("wait") == 1:
            raise BackupError("PostgreSQL stopped during recovery: PANIC: could not locate a valid checkpoint record")
        self.up = True

    def switch_wal(self):
        self.log.append("switch_wal")
        return "000000010000000000000007" if self.up else None


class FakeBarman(object):
    server = "minimarket-production"

    def backups(self):
        return BACKUPS

    def wait_archived(self, wal):
        assert wal == "000000010000000000000007"

    def recover(self, _backup_id, dest, _target):
        os.makedirs(os.path.join(dest, "pg_wal"))

    def json(self, *_args):
        return {}


@pytest.mark.parametrize("comes_up", [True, False])
def test_a_rerun_waits_for_the_repaired_server_before_closing_its_wal(tmp_path, comes_up):
    """After putting the previous data back, a server still starting must not be taken for a dead one."""
    paths = make_volume(tmp_path)
    os.rename(paths["data"], paths["previous"])
    with open(paths["journal"], "w") as handle:
        json.dump({"state": "swapping"}, handle)
    cluster = FakeCluster(paths, comes_up)
    result = recover(FakeBarman(), cluster, LATEST, lambda: ([], []), timeout=5)
    assert cluster.log[:4] == ["stop", "start", "wait", "switch_wal"]
    assert result["repaired"] == ["put the data from before an unfinished recovery back into place",
                                  "removed a leftover staging directory"]
    assert ("warnings" in result) is not comes_up
    assert sorted(os.listdir(tmp_path)) == ["_data"]


class RecoveryFails(object):
    """Barman whose recovery of the chosen base backup fails (a missing WAL segment, say)."""

    def backups(self):
        return BACKUPS

    def recover(self, backup_id, dest, target):
        os.makedirs(dest)
        raise BackupError("barman recover %s failed: WAL file 000000010000000000000007 not found" % backup_id)


def test_a_failed_drill_still_tells_the_report_its_target_and_base_backup(tmp_path):
    workdir = tmp_path / "verify-minimarket-production"
    with pytest.raises(VerifyFailed, match="^barman recover 20260314T013000 failed: WAL file") as info:
        scratch_verify(RecoveryFails(), None, "postgres:15", (999, 999), str(workdir), NOW, None, None)
    assert info.value.result["target_time"] == "2026-03-14 21:00:00+00:00"
    assert info.value.result["backup_id"] == "20260314T013000"
    assert info.value.result["duration"] >= 0
    assert not workdir.exists()
