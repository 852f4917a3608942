"""The textfile-collector file: format (checked by promtool), history kept across runs, atomic replacement."""
import os
import stat
import subprocess

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._metrics import file_name, parse, render, update_file

T0 = 1790000000


def promtool_check(path):
    with open(path, "rb") as handle:
        proc = subprocess.run(["promtool", "check", "metrics"], stdin=handle, capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout + proc.stderr == ""


def read(path):
    with open(path) as handle:
        return parse(handle.read())[0]


def test_success_then_failure_keeps_the_last_success(tmp_path):
    path = str(tmp_path / file_name("production"))
    update_file(path, "database", "production", "success", timestamp=T0, duration=12.5, size=4096)
    update_file(path, "database", "production", "failure", timestamp=T0 + 86400, duration=3)
    series = read(path)[("database", "production")]
    assert series == {
        "last_success_timestamp_seconds": T0,
        "last_failure_timestamp_seconds": T0 + 86400,
        "last_duration_seconds": 3,
        "last_size_bytes": 4096,
    }
    promtool_check(path)
    text = open(path).read()
    assert '# TYPE minimarket_backup_last_success_timestamp_seconds gauge' in text
    assert 'minimarket_backup_last_success_timestamp_seconds{kind="database",environment="production"} 1790000000\n' in text
    assert 'minimarket_backup_last_duration_seconds{kind="database",environment="production"} 3\n' in text


def test_a_first_failure_records_zero_as_last_success(tmp_path):
    path = str(tmp_path / file_name("staging"))
    _before, _after, samples, _ignored = update_file(path, "volumes", "staging", "failure", timestamp=T0, size=99)
    assert samples == {"last_success_timestamp_seconds": 0, "last_failure_timestamp_seconds": T0}
    promtool_check(path)


def test_kinds_and_environments_are_kept_apart(tmp_path):
    path = str(tmp_path / file_name("production"))
    update_file(path, "database", "production", "success", timestamp=T0, duration=1.25, size=10)
    update_file(path, "volumes", "production", "success", timestamp=T0 + 1, duration=2, size=20)
    update_file(path, "verify", "production", "success", timestamp=T0 + 2, duration=3, verified=True)
    update_file(path, "verify", "production", "failure", timestamp=T0 + 3, duration=4)
    series = read(path)
    assert series[("database", "production")]["last_size_bytes"] == 10
    assert series[("database", "production")]["last_duration_seconds"] == 1.25
    assert series[("volumes", "production")]["last_success_timestamp_seconds"] == T0 + 1
    assert series[("verify", "production")]["last_verification_ok"] == 0
    assert series[("verify", "production")]["last_success_timestamp_seconds"] == T0 + 2
    promtool_check(path)


def test_file_is_world_readable_and_replaced_atomically(tmp_path):
    path = str(tmp_path / file_name("production"))
    old_umask = os.umask(0o077)
    try:
        update_file(path, "database", "production", "success", timestamp=T0)
        inode = os.stat(path).st_ino
        (tmp_path / (file_name("production") + ".partial")).write_text("stale from a killed run")
        update_file(path, "database", "production", "success", timestamp=T0 + 1)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.stat(path).st_ino != inode
    assert sorted(os.listdir(str(tmp_path))) == [file_name("production")]


def test_check_mode_writes_nothing(tmp_path):
    path = str(tmp_path / file_name("production"))
    before, after, _samples, _ignored = update_file(path, "database", "production", "success", timestamp=T0, write=False)
    assert before == ""
    assert "minimarket_backup_last_success_timestamp_seconds" in after
    assert os.listdir(str(tmp_path)) == []


def test_foreign_and_broken_lines_are_dropped_and_counted():
    text = render({("database", "production"): {"last_success_timestamp_seconds": T0}})
    text += 'node_load1 0.5\nminimarket_backup_last_size_bytes{kind="database",environment="production"} NaNx\n'
    series, ignored = parse(text)
    assert series == {("database", "production"): {"last_success_timestamp_seconds": T0}}
    assert ignored == 2


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="logs"), "kind must be one of database, volumes, verify"),
    (dict(status="ok"), "status must be success or failure"),
    (dict(environment="prod_eu"), "is not a valid name"),
    (dict(duration=-1), "duration must not be negative"),
])
def test_bad_input_is_one_clear_line_and_writes_nothing(tmp_path, kwargs, message):
    path = str(tmp_path / "minimarket_backup_production.prom")
    args = dict(kind="database", environment="production", status="success", timestamp=T0)
    args.update(kwargs)
    with pytest.raises(BackupError, match=message) as info:
        update_file(path, **args)
    assert "\n" not in str(info.value)
    assert os.listdir(str(tmp_path)) == []


def test_missing_directory_names_the_fix_but_check_mode_only_predicts(tmp_path):
    path = str(tmp_path / "nope" / "x.prom")
    with pytest.raises(BackupError, match="does not exist; create it"):
        update_file(path, "database", "production", "success")
    before, after, samples, _ignored = update_file(path, "database", "production", "success", timestamp=T0, write=False)
    assert before == "" and samples["last_success_timestamp_seconds"] == T0 and str(T0) in after
    assert os.listdir(str(tmp_path)) == []


def test_repairs_of_an_interrupted_run_are_recorded(tmp_path):
    path = str(tmp_path / file_name("production"))
    update_file(path, "volumes", "production", "success", timestamp=T0, repairs=3)
    update_file(path, "volumes", "production", "success", timestamp=T0 + 1, repairs=0)
    update_file(path, "database", "production", "success", timestamp=T0 + 2)
    series = read(path)
    assert series[("volumes", "production")]["last_repairs"] == 0
    assert "last_repairs" not in series[("database", "production")]
    promtool_check(path)
    assert '# HELP minimarket_backup_last_repairs Repairs the last run made first' in open(path).read()
    with pytest.raises(BackupError, match="repairs must not be negative"):
        update_file(path, "volumes", "production", "success", repairs=-1)
