"""backup_prune through the real entry point: ``ansible localhost -m minimarket.backup.backup_prune`` on real files."""
import datetime
import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import utc_now
from ansible_collections.minimarket.backup.plugins.module_utils._files import backup_lock
from tests.retention_fixtures import FOREIGN_NAMES, BackupDir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
LOCK = ".database_production.lock"
POLICY = dict(prefix="database_production_", retention_days=7, keep_last=3, keep_daily=10, partial_max_age="1d")


def run_module(args, *flags):
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=os.path.join(REPO_ROOT, "ansible.cfg"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    proc = subprocess.run(
        [ANSIBLE, "localhost", "-m", "minimarket.backup.backup_prune", "-a", json.dumps(args)] + list(flags),
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    output = json.loads(proc.stdout)
    return proc.returncode, output["plays"][0]["tasks"][0]["hosts"]["localhost"]


def run_in_play(args, group_environment, tmp_path):
    """The module as a task of a play whose module_defaults give group/minimarket.backup.backup_set an environment."""
    playbook = tmp_path / "prune.yml"
    playbook.write_text(json.dumps([dict(
        name="Prune under the group's environment", hosts="localhost", gather_facts=False,
        module_defaults={"group/minimarket.backup.backup_set": dict(environment=group_environment)},
        tasks=[{"name": "Prune", "minimarket.backup.backup_prune": args}])]))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=os.path.join(REPO_ROOT, "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    output = json.loads(proc.stdout)
    return proc.returncode, output["plays"][0]["tasks"][0]["hosts"]["localhost"]


def name(when, suffix=".tar.gz"):
    return "database_production_%s%s" % (when.strftime("%Y%m%d_%H%M%S"), suffix)


@pytest.fixture
def history(tmp_path):
    """20 daily complete backups (newest 1 h old), damaged and interrupted runs, and foreign files.

    Expected with POLICY: complete backups 0-9 days old stay (within 7 days,
    last 3, daily 10), 10-19 go; the damaged run and orphan metadata older than
    the newest complete backup go; the .partial older than 1d goes, the fresh one
    stays; the incomplete archive newer than every complete backup stays.
    """
    directory = BackupDir(tmp_path)
    now = utc_now()
    stays, goes = set(), set()
    for age in range(20):
        when = now - age * DAY - HOUR
        directory.complete(when)
        (stays if age < 10 else goes).update([name(when), name(when, "_metadata.json")])
    goes.update(directory.incomplete(now - 12 * DAY - 13 * HOUR, "size-mismatch"))
    goes.update(directory.incomplete(now - 15 * DAY - 5 * HOUR, "orphan-metadata"))
    goes.update(directory.incomplete(now - 2 * DAY - 7 * HOUR, "partial-archive"))
    stays.update(directory.incomplete(now - 2 * HOUR, "partial-metadata"))
    stays.update(directory.incomplete(now - HOUR / 2, "no-metadata"))
    directory.foreign()
    return directory, stays, goes, now


def test_check_mode_and_diff_touch_nothing(history):
    directory, stays, goes, now = history
    before = directory.snapshot()
    rc, result = run_module(dict(POLICY, path=directory.path), "--check", "--diff")
    assert rc == 0, result
    assert directory.snapshot() == before
    assert result["changed"] is True
    assert set(f for entry in result["deleted"] for f in entry["files"]) == goes
    assert result["bytes_freed"] == sum(before[f][0] for f in goes)
    assert result["diff"]["before"].splitlines() == sorted(stays | goes)
    assert result["diff"]["after"].splitlines() == sorted(stays)


def test_prune_deletes_exactly_the_plan(history):
    directory, stays, goes, now = history
    before = directory.snapshot()
    rc, result = run_module(dict(POLICY, path=directory.path), "--diff")
    assert rc == 0, result
    after = directory.snapshot()
    assert set(after) == stays | set(FOREIGN_NAMES) | {LOCK}
    for kept in stays | set(FOREIGN_NAMES):
        assert after[kept] == before[kept]
    assert result["changed"] is True
    assert result["bytes_freed"] == sum(before[f][0] for f in goes)
    reasons = dict((e["name"], e["reasons"]) for e in result["kept"])
    assert reasons[name(now - HOUR)] == ["within 7 days", "last backup", "daily backup"]
    assert reasons[name(now - 9 * DAY - HOUR)] == ["daily backup"]
    assert reasons[name(now - HOUR / 2)] == [
        "incomplete, within 7 days", "incomplete, younger than 1d", "incomplete, no complete backup is newer"]
    deleted = dict((e["name"], e) for e in result["deleted"])
    assert deleted[name(now - 10 * DAY - HOUR)]["reason"] == "not kept by any rule"
    assert deleted[name(now - 10 * DAY - HOUR)]["files"] == [
        name(now - 10 * DAY - HOUR, "_metadata.json"), name(now - 10 * DAY - HOUR)]
    assert result["diff"]["after"].splitlines() == sorted(stays)

    rc, again = run_module(dict(POLICY, path=directory.path))
    assert rc == 0, again
    assert again["changed"] is False
    assert again["deleted"] == []
    assert directory.snapshot() == after


def test_the_last_good_backup_survives_when_backups_stopped(tmp_path):
    directory = BackupDir(tmp_path)
    now = utc_now()
    for age in range(35, 45):
        directory.complete(now - age * DAY)
    newest = name(now - 35 * DAY)
    rc, result = run_module(dict(path=directory.path, prefix="database_production_", retention_days=30, keep_last=0))
    assert rc == 0, result
    assert sorted(directory.snapshot()) == [LOCK, newest, name(now - 35 * DAY, "_metadata.json")]
    assert result["kept"][0]["reasons"] == ["newest complete backup (the policy would delete every complete backup)"]
    assert any("kept the newest one, %s" % newest in w for w in result["warnings"])
    assert any("is older than 30 days: check that backups still run" in w for w in result["warnings"])


@pytest.mark.parametrize("args, message", [
    (dict(prefix="database_production"),
     "prefix 'database_production' is not <kind>_<environment>_: use for example database_production_"),
    (dict(prefix="database_production_", partial_max_age="1 day"),
     "partial_max_age '1 day' is not a duration: use a number with a unit s, m, h, d or w"),
    (dict(prefix="database_production_", keep_daily=-1),
     "keep_daily must be a whole number >= 0 (0 turns the rule off), got -1"),
])
def test_bad_input_fails_with_one_line_and_touches_nothing(history, args, message):
    directory = history[0]
    before = directory.snapshot()
    rc, result = run_module(dict(args, path=directory.path))
    assert rc != 0
    assert result["failed"] is True
    assert result["msg"].startswith(message)
    assert "\n" not in result["msg"]
    assert directory.snapshot() == before


def test_kind_and_environment_name_the_set_as_prefix_did(tmp_path):
    """The canonical names prune exactly what the old prefix pruned; the two forms together are refused."""
    now = utc_now()
    directories = [BackupDir(tmp_path / form) for form in ("old", "new")]
    for directory in directories:
        os.mkdir(directory.path)
        for age in range(1, 12):
            directory.complete(now - age * DAY)
    policy = dict(retention_days=3, keep_last=0)
    rc_old, old = run_module(dict(policy, path=directories[0].path, prefix="database_production_"))
    rc_new, new = run_module(dict(policy, backup_dir=directories[1].path, kind="database", environment="production"))
    assert rc_old == rc_new == 0 and len(new["deleted"]) == 9, new
    assert [d["name"] for d in old["deleted"]] == [d["name"] for d in new["deleted"]]
    assert sorted(directories[0].snapshot()) == sorted(directories[1].snapshot())
    rc, both = run_module(dict(policy, backup_dir=directories[1].path, kind="database", environment="production",
                               prefix="database_production_"))
    assert rc != 0 and "mutually exclusive" in both["msg"] and "\n" not in both["msg"]


def test_the_environment_of_the_backup_set_group_names_the_set(tmp_path):
    """In group/minimarket.backup.backup_set, backup_prune takes the play's environment; prefix beside it is refused."""
    now = utc_now()
    os.mkdir(tmp_path / "backups")
    staging = BackupDir(tmp_path / "backups", environment="staging")
    production = BackupDir(tmp_path / "backups", environment="production")
    for age in range(1, 6):
        staging.complete(now - age * DAY)
        production.complete(now - age * DAY)
    before = production.snapshot()
    rc, refused = run_in_play(dict(backup_dir=staging.path, prefix="database_staging_", retention_days=2, keep_last=0),
                              "staging", tmp_path)
    assert rc != 0 and refused["msg"] == "parameters are mutually exclusive: prefix|environment", refused
    assert staging.snapshot() == before
    rc, result = run_in_play(dict(backup_dir=staging.path, kind="database", retention_days=2, keep_last=0), "staging", tmp_path)
    assert rc == 0, result
    assert sorted(d["name"] for d in result["deleted"]) == sorted(
        name(now - age * DAY).replace("production", "staging") for age in range(2, 6))
    assert [n for n in staging.snapshot() if n.startswith("database_staging_")] == [
        name(now - DAY).replace("production", "staging"), name(now - DAY, "_metadata.json").replace("production", "staging")]
    assert dict((n, v) for n, v in production.snapshot().items() if "production" in n) == dict(
        (n, v) for n, v in before.items() if "production" in n)


def test_missing_directory_fails(tmp_path):
    rc, result = run_module(dict(path=str(tmp_path / "nope"), prefix="database_production_"))
    assert rc != 0
    assert result["msg"] == "backup directory %s does not exist or is not a directory: check backup_dir" % (tmp_path / "nope")


def _hold_lock(directory, ready, release):
    with backup_lock(directory, "database", "production"):
        ready.set()
        release.wait(60)


def test_refuses_while_a_backup_of_the_set_runs(history):
    directory = history[0]
    ready, release = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold_lock, args=(directory.path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        before = directory.snapshot()
        rc, result = run_module(dict(POLICY, path=directory.path))
    finally:
        release.set()
        holder.join(30)
    assert rc != 0
    assert result["msg"].startswith("another database backup of 'production' is running in %s" % directory.path)
    assert directory.snapshot() == before
