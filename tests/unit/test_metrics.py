"""The textfile-collector file: format (checked by promtool), history kept across runs, atomic replacement,
and what a verification's checks found (per service, the point-in-time drill)."""
import os
import stat
import subprocess

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._metrics import (
    file_name,
    parse,
    pitr_key,
    render,
    run_key,
    service_key,
    update_file,
)

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
    series = read(path)[run_key("database", "production")]
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
    assert series[run_key("database", "production")]["last_size_bytes"] == 10
    assert series[run_key("database", "production")]["last_duration_seconds"] == 1.25
    assert series[run_key("volumes", "production")]["last_success_timestamp_seconds"] == T0 + 1
    assert series[run_key("verify", "production")]["last_verification_ok"] == 0
    assert series[run_key("verify", "production")]["last_success_timestamp_seconds"] == T0 + 2
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
    text = render({run_key("database", "production"): {"last_success_timestamp_seconds": T0}})
    text += 'node_load1 0.5\nminimarket_backup_last_size_bytes{kind="database",environment="production"} NaNx\n'
    # A service series with the labels of a run, a run series without its kind, labels out of order, a quote inside.
    text += 'minimarket_backup_service_check_ok{kind="verify",environment="production"} 1\n'
    text += 'minimarket_backup_last_verification_ok{environment="production"} 1\n'
    text += 'minimarket_backup_service_check_ok{environment="production",service="redis"} 1\n'
    text += 'minimarket_backup_service_check_ok{service="re\\"dis",environment="production"} 1\n'
    series, ignored = parse(text)
    assert series == {run_key("database", "production"): {"last_success_timestamp_seconds": T0}}
    assert ignored == 6


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
    assert series[run_key("volumes", "production")]["last_repairs"] == 0
    assert "last_repairs" not in series[run_key("database", "production")]
    promtool_check(path)
    assert '# HELP minimarket_backup_last_repairs Repairs the last run made first' in open(path).read()
    with pytest.raises(BackupError, match="repairs must not be negative"):
        update_file(path, "volumes", "production", "success", repairs=-1)


REDIS_OK = {"service": "redis", "kind": "redis", "ok": True, "checks": ["PING answered PONG"]}
GRAFANA_FAILED = {"service": "grafana", "kind": "sqlite", "ok": False, "checks": [], "msg": "grafana: PRAGMA integrity_check ..."}


def test_a_verification_records_each_service_and_a_failed_one_as_zero(tmp_path):
    path = str(tmp_path / file_name("production"))
    update_file(path, "database", "production", "success", timestamp=T0, size=10)
    _before, _after, samples, _ignored = update_file(
        path, "verify", "production", "failure", timestamp=T0 + 60, service_checks=[REDIS_OK, GRAFANA_FAILED])
    assert samples["service_check_ok"] == {"redis": 1, "grafana": 0}
    promtool_check(path)
    text = open(path).read()
    assert 'minimarket_backup_service_check_ok{service="grafana",environment="production"} 0\n' in text
    assert 'minimarket_backup_service_check_ok{service="redis",environment="production"} 1\n' in text
    assert 'minimarket_backup_service_check_timestamp_seconds{service="redis",environment="production"} 1790000060\n' in text
    assert '# TYPE minimarket_backup_service_check_ok gauge' in text
    series = read(path)
    assert series[run_key("verify", "production")]["last_verification_ok"] == 0
    assert series[run_key("database", "production")]["last_size_bytes"] == 10
    # The next verification's services replace these: grafana passes, redis is no longer checked.
    update_file(path, "verify", "production", "success", timestamp=T0 + 120, verified=True,
                service_checks=[dict(GRAFANA_FAILED, ok=True)])
    series = read(path)
    assert series[service_key("grafana", "production")] == {"service_check_ok": 1, "service_check_timestamp_seconds": T0 + 120}
    assert service_key("redis", "production") not in series
    promtool_check(path)


def test_a_verification_without_service_checks_keeps_the_last_ones_and_other_environments(tmp_path):
    path = str(tmp_path / "shared.prom")
    update_file(path, "verify", "production", "success", timestamp=T0, service_checks=[REDIS_OK])
    update_file(path, "verify", "staging", "failure", timestamp=T0 + 1, service_checks=[dict(REDIS_OK, ok=False)])
    update_file(path, "verify", "production", "success", timestamp=T0 + 2)
    series = read(path)
    assert series[service_key("redis", "production")] == {"service_check_ok": 1, "service_check_timestamp_seconds": T0}
    assert series[service_key("redis", "staging")] == {"service_check_ok": 0, "service_check_timestamp_seconds": T0 + 1}
    promtool_check(path)


def test_the_point_in_time_drill_is_recorded_and_kept_by_runs_without_one(tmp_path):
    path = str(tmp_path / file_name("production"))
    _before, _after, samples, _ignored = update_file(path, "verify", "production", "failure", timestamp=T0, pitr_verified=False)
    assert samples["pitr_verification_ok"] == 0
    update_file(path, "verify", "production", "success", timestamp=T0 + 1, pitr_verified=True)
    update_file(path, "verify", "production", "success", timestamp=T0 + 2)
    update_file(path, "database", "production", "success", timestamp=T0 + 3)
    assert read(path)[pitr_key("production")] == {"pitr_verification_ok": 1, "pitr_verification_timestamp_seconds": T0 + 1}
    text = open(path).read()
    assert 'minimarket_backup_pitr_verification_ok{environment="production"} 1\n' in text
    assert 'minimarket_backup_pitr_verification_timestamp_seconds{environment="production"} 1790000001\n' in text
    promtool_check(path)


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="database", service_checks=[REDIS_OK]), "service_checks and pitr_verified are results of a verification: use them with kind=verify"),
    (dict(kind="volumes", pitr_verified=True), "service_checks and pitr_verified are results of a verification"),
    (dict(service_checks=[REDIS_OK, {"service": "redis"}]),
     r"service_checks entry 2 \(service 'redis', ok None\) needs service \(a compose service name\) and ok \(true or false\): pass the services list"),
    (dict(service_checks=[{"service": "redis", "ok": "yes"}]), "needs service"),
    (dict(service_checks=[{"service": 're"dis', "ok": True}]), "needs service"),
    (dict(service_checks=["redis"]), "needs service"),
    (dict(service_checks=[REDIS_OK, REDIS_OK]), "service_checks name service redis twice: pass one result per service"),
])
def test_bad_check_results_are_one_clear_line_and_change_nothing(tmp_path, kwargs, message):
    path = str(tmp_path / file_name("production"))
    update_file(path, "verify", "production", "success", timestamp=T0, service_checks=[GRAFANA_FAILED], pitr_verified=True)
    before = open(path).read()
    args = dict(kind="verify", environment="production", status="success", timestamp=T0 + 1)
    args.update(kwargs)
    with pytest.raises(BackupError, match=message) as info:
        update_file(path, **args)
    assert "\n" not in str(info.value)
    assert open(path).read() == before
