"""Retention policy: property tests against an independent reference of restic's rules, and on real files."""
import datetime
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import list_backups
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._retention import (
    STATE_COMPLETE,
    STATE_INCOMPLETE,
    Candidate,
    Policy,
    decide,
    delete_files,
    parse_duration,
    parse_prefix,
    plan,
    prune,
)
from tests.retention_fixtures import FOREIGN_NAMES, BackupDir


UTC = datetime.timezone.utc
RULE_FORMATS = (
    ("keep_hourly", "hourly backup", "%Y-%m-%d %H"),
    ("keep_daily", "daily backup", "%Y-%m-%d"),
    ("keep_weekly", "weekly backup", "%G-W%V"),
    ("keep_monthly", "monthly backup", "%Y-%m"),
    ("keep_yearly", "yearly backup", "%Y"),
)


@pytest.fixture
def backup_dir(tmp_path):
    directory = tmp_path / "database"
    directory.mkdir()
    return BackupDir(directory)


def reference_reasons(times, now, retention_days, counts):
    """restic's forget rules stated plainly: time -> set of reasons, for complete backups at ``times``.

    For a count N and a period: list the distinct periods newest first, keep the
    newest backup of each of the first N; if there are fewer than N periods, the
    oldest backup is kept as well (restic >= 0.17).
    """
    reasons = dict((t, set()) for t in times)
    if not times:
        return reasons
    for t in times:
        if retention_days and (now - t).total_seconds() < retention_days * 86400:
            reasons[t].add("within %d days" % retention_days)
    newest_first = sorted(times, reverse=True)
    for t in newest_first[: counts["keep_last"]]:
        reasons[t].add("last backup")
    if 0 < len(times) < counts["keep_last"]:
        reasons[min(times)].add("last backup")
    for option, reason, fmt in RULE_FORMATS:
        count = counts[option]
        if not count:
            continue
        periods = {}
        for t in times:
            periods.setdefault(t.strftime(fmt), []).append(t)
        chosen = sorted(periods, reverse=True)[:count]
        for period in chosen:
            reasons[max(periods[period])].add(reason)
        if len(periods) < count:
            reasons[min(times)].add(reason)
    if not any(reasons.values()):
        reasons[max(times)].add("newest complete backup (the policy would delete every complete backup)")
    return reasons


def reference_incomplete_deleted(t, complete_times, now, retention_days, partial_max_age):
    if not complete_times or t >= max(complete_times):
        return False
    if retention_days and (now - t).total_seconds() < retention_days * 86400:
        return False
    return now - t >= partial_max_age


# Histories: start near the 2020/2021 ISO week 53, steps from minutes to months so
# that several per day, gaps, and month/year boundaries all occur.
STEPS = st.one_of(
    st.integers(min_value=1, max_value=180).map(lambda m: datetime.timedelta(minutes=m)),
    st.integers(min_value=1, max_value=30).map(lambda h: datetime.timedelta(hours=h)),
    st.integers(min_value=1, max_value=10).map(lambda d: datetime.timedelta(days=d)),
    st.integers(min_value=20, max_value=120).map(lambda d: datetime.timedelta(days=d)),
)
STARTS = st.sampled_from([
    datetime.datetime(2020, 12, 20, 2, 0, tzinfo=UTC),
    datetime.datetime(2020, 12, 31, 23, 30, tzinfo=UTC),
    datetime.datetime(2021, 1, 3, 22, 0, tzinfo=UTC),
    datetime.datetime(2019, 2, 27, 12, 0, tzinfo=UTC),
    datetime.datetime(2015, 12, 28, 0, 0, tzinfo=UTC),
])


@st.composite
def histories(draw, max_size=40):
    start = draw(STARTS)
    steps = draw(st.lists(STEPS, max_size=max_size))
    times = [start]
    for step in steps:
        times.append(times[-1] + step)
    states = [draw(st.sampled_from([STATE_COMPLETE] * 4 + [STATE_INCOMPLETE])) for dummy in times]
    now = times[-1] + draw(st.sampled_from([
        datetime.timedelta(0), datetime.timedelta(minutes=5), datetime.timedelta(hours=20),
        datetime.timedelta(days=3), datetime.timedelta(days=35), datetime.timedelta(days=400),
    ]))
    return list(zip(times, states)), now


COUNTS = st.fixed_dictionaries(dict(
    retention_days=st.integers(0, 40),
    keep_last=st.integers(0, 5),
    keep_hourly=st.integers(0, 4),
    keep_daily=st.integers(0, 8),
    keep_weekly=st.integers(0, 5),
    keep_monthly=st.integers(0, 13),
    keep_yearly=st.integers(0, 3),
    partial_max_age=st.sampled_from(["30m", "12h", "1d", "3d"]),
))


def candidates_for(history):
    return [
        Candidate("b%s.tar.gz" % t.strftime("%Y%m%d_%H%M%S"), t, state, problem=None if state == STATE_COMPLETE else "damaged")
        for t, state in history
    ]


@settings(max_examples=400, deadline=None, database=None)
@given(histories(), COUNTS)
def test_decisions_match_reference(history_now, options):
    history, now = history_now
    policy = Policy(**options)
    candidates = candidates_for(history)
    decide(candidates, policy, now)

    complete_times = [c.created for c in candidates if c.state == STATE_COMPLETE]
    counts = dict((k, v) for k, v in options.items() if k.startswith("keep_"))
    expected = reference_reasons(complete_times, now, options["retention_days"], counts)
    for candidate in candidates:
        if candidate.state == STATE_COMPLETE:
            assert set(candidate.reasons) == expected[candidate.created], candidate.name
            assert len(candidate.reasons) == len(set(candidate.reasons))
        else:
            deleted = reference_incomplete_deleted(
                candidate.created, complete_times, now, options["retention_days"], policy.partial_max_age)
            assert candidate.kept is not deleted, candidate.name
        assert candidate.kept != bool(candidate.delete_reason)


@settings(max_examples=300, deadline=None, database=None)
@given(histories(), COUNTS)
def test_floor_buckets_and_safety_net(history_now, options):
    history, now = history_now
    candidates = candidates_for(history)
    decide(candidates, Policy(**options), now)
    complete = sorted((c for c in candidates if c.state == STATE_COMPLETE), key=lambda c: c.created, reverse=True)
    if complete:
        assert complete[0].kept, "the newest complete backup is never deleted"
    for candidate in complete[: options["keep_last"]]:
        assert "last backup" in candidate.reasons
    kept_days = set(c.created.date() for c in complete if c.kept)
    all_days = sorted(set(c.created.date() for c in complete), reverse=True)
    assert set(all_days[: options["keep_daily"]]) <= kept_days
    kept_weeks = set(c.created.isocalendar()[:2] for c in complete if c.kept)
    all_weeks = sorted(set(c.created.isocalendar()[:2] for c in complete), reverse=True)
    assert set(all_weeks[: options["keep_weekly"]]) <= kept_weeks


@settings(max_examples=200, deadline=None, database=None)
@given(histories(max_size=25), COUNTS)
def test_second_run_deletes_nothing(history_now, options):
    history, now = history_now
    policy = Policy(**options)
    first = candidates_for(history)
    decide(first, policy, now)
    survivors = [(c.created, c.state) for c in first if c.kept]
    again = candidates_for(survivors)
    decide(again, policy, now)
    assert all(c.kept for c in again)


def test_week_53_and_new_year():
    times = [datetime.datetime(2020, 12, 27, 3, tzinfo=UTC), datetime.datetime(2020, 12, 28, 3, tzinfo=UTC),
             datetime.datetime(2020, 12, 31, 3, tzinfo=UTC), datetime.datetime(2021, 1, 1, 3, tzinfo=UTC),
             datetime.datetime(2021, 1, 3, 3, tzinfo=UTC), datetime.datetime(2021, 1, 4, 3, tzinfo=UTC)]
    candidates = candidates_for([(t, STATE_COMPLETE) for t in times])
    decide(candidates, Policy(retention_days=0, keep_last=0, keep_weekly=2, keep_yearly=2), times[-1])
    reasons = dict((c.created.strftime("%m-%d"), c.reasons) for c in candidates)
    # 2020-12-28 .. 2021-01-03 is ISO week 2020-W53: 2021-01-03 is its newest, 12-31 is not weekly.
    assert reasons == {
        "12-27": [], "12-28": [], "12-31": ["yearly backup"], "01-01": [],
        "01-03": ["weekly backup"], "01-04": ["weekly backup", "yearly backup"],
    }


def test_oldest_is_kept_while_slots_are_left():
    times = [datetime.datetime(2024, 5, 1, h, tzinfo=UTC) for h in (1, 2, 3)]
    candidates = candidates_for([(t, STATE_COMPLETE) for t in times])
    decide(candidates, Policy(retention_days=0, keep_last=0, keep_daily=7), times[-1])
    assert [c.reasons for c in candidates] == [["daily backup"], [], ["daily backup"]]


def test_stopped_backups_keep_the_last_good_one():
    """The documented 30-day rule alone would delete everything after 35 days of silence."""
    times = [datetime.datetime(2024, 1, d, 2, tzinfo=UTC) for d in range(1, 11)]
    now = times[-1] + datetime.timedelta(days=35)
    candidates = candidates_for([(t, STATE_COMPLETE) for t in times])
    warnings = decide(candidates, Policy(retention_days=30, keep_last=0), now)
    assert [c.name for c in candidates if c.kept] == ["b20240110_020000.tar.gz"]
    assert candidates[-1].reasons == ["newest complete backup (the policy would delete every complete backup)"]
    assert any("policy would delete every complete backup" in w for w in warnings)
    assert any("is older than 30 days: check that backups still run" in w for w in warnings)


@pytest.mark.parametrize("prefix, expected", [
    ("database_production_", ("database", "production")),
    ("volumes_prod-eu_", ("volumes", "prod-eu")),
])
def test_prefix_accepted(prefix, expected):
    assert parse_prefix(prefix) == expected


@pytest.mark.parametrize("prefix", [
    "database_production", "database_", "database_prod_eu_", "Database_production_", "_production_",
    "database_production_2024", "", None, "database_production_/", "database_production_.tar",
])
def test_prefix_rejected(prefix):
    with pytest.raises(BackupError) as error:
        parse_prefix(prefix)
    message = str(error.value)
    assert "\n" not in message
    assert "is not <kind>_<environment>_: use for example database_production_" in message


@pytest.mark.parametrize("text, seconds", [
    ("1d", 86400), ("12h", 43200), ("30m", 1800), ("45s", 45), ("2w", 1209600), ("1d12h", 129600), ("0m", 0),
])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["1", "1 day", "d", "-1d", "1.5h", "", "1y", "1d 2h"])
def test_bad_durations(text):
    with pytest.raises(BackupError, match=r"^partial_max_age .* is not a duration: use a number with a unit"):
        parse_duration(text)


@pytest.mark.parametrize("option", ["retention_days", "keep_last", "keep_daily", "keep_yearly"])
def test_negative_counts_rejected(option):
    with pytest.raises(BackupError, match=r"^%s must be a whole number >= 0 \(0 turns the rule off\), got -1$" % option):
        Policy(**{option: -1})


# On disk: real files written like the dump modules write them.

INCOMPLETE_SHAPES = ("no-metadata", "size-mismatch", "orphan-metadata", "partial-archive", "partial-metadata")


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(max_size=20), COUNTS, st.lists(st.sampled_from(INCOMPLETE_SHAPES), min_size=21, max_size=21))
def test_plan_and_delete_on_disk(history_now, options, shapes):
    history, now = history_now
    with tempfile.TemporaryDirectory() as tmp:
        directory = BackupDir(tmp)
        directory.foreign()
        os.mkdir(os.path.join(tmp, "database_production_20000101_000000.tar.gz"))
        for (when, state), shape in zip(history, shapes):
            if state == STATE_COMPLETE:
                directory.complete(when)
            else:
                directory.incomplete(when, shape)
        before = directory.snapshot()
        ours = set(before) - set(FOREIGN_NAMES) - {"database_production_20000101_000000.tar.gz"}
        policy = Policy(**options)

        result = plan(tmp, "database_production_", policy, now)
        assert directory.snapshot() == before, "planning touches nothing"
        kept_files = set(f for entry in result["kept"] for f in entry["files"])
        deleted_files = set(f for entry in result["deleted"] for f in entry["files"])
        assert kept_files | deleted_files == ours
        assert not kept_files & deleted_files
        assert result["files_before"] == sorted(ours)
        assert set(result["files_after"]) == kept_files
        assert result["bytes_freed"] == sum(before[name][0] for name in deleted_files)
        assert any("not a regular file, left alone" in w for w in result["warnings"])

        delete_files(tmp, result["delete_paths"])
        after = directory.snapshot()
        assert set(after) == set(before) - deleted_files
        assert dict((k, v) for k, v in after.items() if k not in ours) == dict(
            (k, v) for k, v in before.items() if k not in ours), "nothing foreign touched"
        complete_after = [b.name for b in list_backups(tmp, "database", "production") if b.complete]
        if any(state == STATE_COMPLETE for dummy, state in history):
            assert complete_after, "the newest complete backup survives"
        assert plan(tmp, "database_production_", policy, now)["deleted"] == []


def test_prefix_is_kind_and_environment_exactly(tmp_path):
    when = datetime.datetime(2020, 1, 1, tzinfo=UTC)
    mine = BackupDir(tmp_path, environment="prod")
    theirs = BackupDir(tmp_path, environment="prod-eu")
    for day in range(5):
        mine.complete(when + datetime.timedelta(days=day))
        theirs.complete(when + datetime.timedelta(days=day))
    before = theirs.snapshot()
    result = plan(str(tmp_path), "database_prod_", Policy(retention_days=0, keep_last=1), when + datetime.timedelta(days=100))
    delete_files(str(tmp_path), result["delete_paths"])
    after = theirs.snapshot()
    assert sorted(n for n in after if "prod-eu" in n) == sorted(n for n in before if "prod-eu" in n)
    assert sorted(n for n in after if "_prod_" in n) == [
        "database_prod_20200105_000000.tar.gz", "database_prod_20200105_000000_metadata.json"]


def test_incomplete_rule_on_disk(backup_dir):
    day = datetime.timedelta(days=1)
    start = datetime.datetime(2024, 3, 1, 2, tzinfo=UTC)
    backup_dir.incomplete(start, "size-mismatch")
    backup_dir.complete(start + day)
    backup_dir.incomplete(start + 2 * day, "no-metadata")
    backup_dir.incomplete(start + 3 * day, "partial-archive")
    now = start + 60 * day
    result = plan(backup_dir.path, "database_production_", Policy(retention_days=30), now)
    deleted = dict((e["name"], e) for e in result["deleted"])
    kept = dict((e["name"], e) for e in result["kept"])
    assert sorted(deleted) == ["database_production_20240301_020000.tar.gz", "database_production_20240304_020000.tar.gz.partial"]
    assert deleted["database_production_20240301_020000.tar.gz"]["files"] == [
        "database_production_20240301_020000_metadata.json", "database_production_20240301_020000.tar.gz"]
    assert deleted["database_production_20240301_020000.tar.gz"]["problem"].startswith("archive is ")
    assert kept["database_production_20240302_020000.tar.gz"]["reasons"] == ["last backup"]
    assert kept["database_production_20240303_020000.tar.gz"]["reasons"] == ["incomplete, no complete backup is newer"]


def test_shared_metadata_stays_with_the_complete_archive(backup_dir):
    when = datetime.datetime(2024, 3, 1, 2, tzinfo=UTC)
    backup_dir.complete(when)
    BackupDir(backup_dir.path, compression="zstd").archive(when)
    backup_dir.complete(when + datetime.timedelta(days=1))
    now = when + datetime.timedelta(days=90)
    result = plan(backup_dir.path, "database_production_", Policy(retention_days=0, keep_last=2), now)
    assert [(e["name"], e["files"]) for e in result["deleted"]] == [
        ("database_production_20240301_020000.tar.zst", ["database_production_20240301_020000.tar.zst"])]


def test_missing_directory_is_an_error(tmp_path):
    with pytest.raises(BackupError, match=r"^backup directory .*/nope does not exist or is not a directory: check backup_dir$"):
        plan(str(tmp_path / "nope"), "database_production_", Policy(), datetime.datetime.now(UTC))


def test_delete_failure_names_the_file_and_what_was_done(backup_dir):
    first = backup_dir.complete(datetime.datetime(2024, 3, 1, 2, tzinfo=UTC))
    not_a_file = os.path.join(backup_dir.path, "a-directory")
    os.mkdir(not_a_file)
    with pytest.raises(BackupError) as error:
        delete_files(backup_dir.path, [first, not_a_file])
    assert str(error.value) == (
        "cannot delete %s: Is a directory; fix that and run again "
        "(already deleted: database_production_20240301_020000.tar.gz)" % not_a_file
    )
    assert not os.path.exists(first)
    assert os.path.isdir(not_a_file)


def test_stray_archive_beside_the_newest_complete_one_is_kept(backup_dir):
    when = datetime.datetime(2024, 3, 1, 2, tzinfo=UTC)
    backup_dir.complete(when)
    BackupDir(backup_dir.path, compression="zstd").archive(when)
    result = plan(backup_dir.path, "database_production_", Policy(retention_days=0, keep_last=1), when + datetime.timedelta(days=90))
    assert result["deleted"] == []
    assert [(e["name"], e["reasons"]) for e in result["kept"]] == [
        ("database_production_20240301_020000.tar.zst", ["incomplete, no complete backup is newer"]),
        ("database_production_20240301_020000.tar.gz", ["last backup"]),
    ]


def test_prune_check_mode_takes_no_lock_and_deletes_nothing(backup_dir):
    when = datetime.datetime(2024, 3, 1, 2, tzinfo=UTC)
    for day in range(3):
        backup_dir.complete(when + day * datetime.timedelta(days=1))
    before = backup_dir.snapshot()
    policy = Policy(retention_days=0, keep_last=1)
    result = prune(backup_dir.path, "database_production_", policy, when + datetime.timedelta(days=9), check_mode=True)
    assert len(result["deleted"]) == 2
    assert backup_dir.snapshot() == before
    prune(backup_dir.path, "database_production_", policy, when + datetime.timedelta(days=9))
    assert sorted(backup_dir.snapshot()) == [
        ".database_production.lock", "database_production_20240303_020000.tar.gz",
        "database_production_20240303_020000_metadata.json"]


def test_prune_check_mode_on_a_fresh_host_plans_nothing_and_creates_nothing(tmp_path):
    missing = str(tmp_path / "database")
    now = datetime.datetime(2024, 3, 1, 2, tzinfo=UTC)
    result = prune(missing, "database_production_", Policy(retention_days=0, keep_last=1), now, check_mode=True)
    assert (result["kept"], result["deleted"], result["files_before"], result["warnings"]) == ([], [], [], [])
    assert not os.path.exists(missing)
    with pytest.raises(BackupError, match="does not exist or is not a directory"):
        prune(missing, "database_production_", Policy(retention_days=0, keep_last=1), now)


def test_prune_reports_an_unusable_lock_in_one_line(backup_dir):
    backup_dir.complete(datetime.datetime(2024, 3, 1, 2, tzinfo=UTC))
    os.mkdir(os.path.join(backup_dir.path, ".database_production.lock"))
    with pytest.raises(BackupError) as error:
        prune(backup_dir.path, "database_production_", Policy(), datetime.datetime(2024, 3, 2, tzinfo=UTC))
    assert str(error.value).startswith("cannot create lock file %s/.database_production.lock: Is a directory" % backup_dir.path)
    assert str(error.value).endswith("; check that the directory exists and is writable")
    assert "\n" not in str(error.value)
