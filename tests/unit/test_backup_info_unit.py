"""backup_info's answer (which backups exist, which are complete, the newest complete one) and the one rule behind it."""

import datetime
import hashlib
import json
import os

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _backup_info
from ansible_collections.minimarket.backup.plugins.module_utils import _backup_set as bs
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._offsite import RemoteBackup
from tests.retention_fixtures import FOREIGN_NAMES, BackupDir

UTC = datetime.timezone.utc
T0 = datetime.datetime(2025, 10, 7, 2, 0, tzinfo=UTC)
NOW = T0 + datetime.timedelta(days=3)
NAME = "database_production_20251007_020000.tar.gz"
META = "database_production_20251007_020000_metadata.json"
PAYLOAD = b"ten bytes!"


def metadata(**fields):
    data = dict(archive=NAME, size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    data.update(fields)
    return json.dumps(data).encode()


# Every way a pair can be incomplete, given as (metadata bytes or None, archive bytes) and the problem expected.
CASES = [
    (None, PAYLOAD, "metadata file %s is missing" % META),
    (b"{not json", PAYLOAD, "metadata %s is not valid JSON" % META),
    (b"\xff\xfe", PAYLOAD, "metadata %s is not valid JSON" % META),
    (b"[]", PAYLOAD, "metadata %s is not a JSON object" % META),
    (metadata(archive="other.tar.gz"), PAYLOAD, "metadata names 'other.tar.gz', not this archive"),
    (metadata(), PAYLOAD[:4], "archive is 4 bytes but metadata records 10"),
    (metadata(), PAYLOAD + b"more", "archive is 14 bytes but metadata records 10"),
    (metadata(size="10"), PAYLOAD, "archive is 10 bytes but metadata records '10'"),
    (metadata(sha256=None), PAYLOAD, "metadata records no sha256"),
    (metadata(sha256=""), PAYLOAD, "metadata records no sha256"),
]


@pytest.mark.parametrize("raw, payload, problem", CASES)
def test_a_local_and_a_remote_copy_are_judged_by_the_same_rule(tmp_path, raw, payload, problem):
    (tmp_path / NAME).write_bytes(payload)
    if raw is not None:
        (tmp_path / META).write_bytes(raw)
    local = bs.Backup(str(tmp_path), NAME)
    remote = RemoteBackup(NAME, len(payload), META, raw)
    assert not local.complete and not remote.complete
    assert local.problem == remote.problem
    assert local.problem.startswith(problem)
    assert local.metadata is None and remote.metadata is None


def test_a_complete_pair_is_complete_in_both_places(tmp_path):
    (tmp_path / NAME).write_bytes(PAYLOAD)
    (tmp_path / META).write_bytes(metadata())
    local = bs.Backup(str(tmp_path), NAME)
    remote = RemoteBackup(NAME, len(PAYLOAD), META, metadata())
    assert local.complete and remote.complete
    assert local.metadata == remote.metadata == json.loads(metadata().decode())
    assert local.size == len(PAYLOAD)


def test_judge_is_the_whole_rule():
    assert bs.judge(NAME, 10, META, metadata()) == (json.loads(metadata().decode()), None)
    assert bs.judge(NAME, 10, META, None) == (None, "metadata file %s is missing" % META)


@pytest.fixture
def backup_set(tmp_path):
    """Oldest to newest: complete, complete, truncated archive, metadata without archive, archive without metadata."""
    backups = BackupDir(tmp_path)
    older = backups.complete(T0, b"older" * 10)
    good = backups.complete(T0 + datetime.timedelta(hours=1), b"good" * 10)
    truncated = backups.complete(T0 + datetime.timedelta(hours=2), b"truncated" * 10)
    with open(truncated, "r+b") as handle:
        handle.truncate(7)
    orphan = backups.incomplete(T0 + datetime.timedelta(hours=3), how="orphan-metadata")[0]
    bare = backups.archive(T0 + datetime.timedelta(hours=4), b"no metadata")
    backups.incomplete(T0 + datetime.timedelta(hours=5), how="partial-archive")
    backups.foreign()
    return str(tmp_path), dict(older=older, good=good, truncated=truncated, orphan=os.path.join(str(tmp_path), orphan), bare=bare)


def test_local_listing_is_newest_first_with_each_problem_and_latest_the_newest_complete(backup_set):
    directory, paths = backup_set
    info = _backup_info.local(directory, "database", "production", NOW)
    listed = [(b["path"], b["complete"], b.get("problem")) for b in info["backups"]]
    assert listed == [
        (paths["bare"], False, "metadata file database_production_20251007_060000_metadata.json is missing"),
        (paths["orphan"], False, "its archive is missing"),
        (paths["truncated"], False, "archive is 7 bytes but metadata records 90"),
        (paths["good"], True, None),
        (paths["older"], True, None),
    ]
    good = info["backups"][3]
    assert info["latest"] == good
    assert good == dict(
        name=os.path.basename(paths["good"]), path=paths["good"], created="2025-10-07T03:00:00+00:00",
        age_seconds=3 * 86400 - 3600, size=40, complete=True, sha256=hashlib.sha256(b"good" * 10).hexdigest())
    orphan = info["backups"][1]
    assert orphan["name"] == "database_production_20251007_050000_metadata.json" and orphan["size"] is None
    assert "sha256" not in orphan and "sha256" not in info["backups"][2]


def test_latest_is_the_backup_a_restore_of_latest_takes(backup_set):
    directory, paths = backup_set
    info = _backup_info.local(directory, "database", "production", NOW)
    assert bs.resolve_source("latest", directory, "database", "production").path == info["latest"]["path"] == paths["good"]


def test_checksum_makes_a_same_size_damage_incomplete(backup_set):
    directory, paths = backup_set
    with open(paths["good"], "r+b") as handle:
        handle.write(b"G")
    quick = _backup_info.local(directory, "database", "production", NOW)
    assert quick["latest"]["path"] == paths["good"]
    checked = _backup_info.local(directory, "database", "production", NOW, checksum=True)
    damaged = [b for b in checked["backups"] if b["path"] == paths["good"]][0]
    assert damaged["complete"] is False and "sha256" not in damaged
    assert damaged["problem"] == "sha256 %s does not match metadata %s: the archive is damaged" % (
        hashlib.sha256(b"Good" + b"good" * 9).hexdigest(), hashlib.sha256(b"good" * 10).hexdigest())
    assert checked["latest"]["path"] == paths["older"]


def test_other_sets_and_foreign_files_are_not_listed(backup_set):
    directory, unused = backup_set
    staging = _backup_info.local(directory, "database", "staging", NOW)
    (only,) = staging["backups"]
    assert only["name"] == "database_staging_20200101_000000.tar.gz"
    assert only["problem"].startswith("metadata database_staging_20200101_000000_metadata.json is not valid JSON")
    assert staging["latest"] is None
    listed = [b["name"] for b in _backup_info.local(directory, "database", "production", NOW)["backups"]]
    assert not set(listed) & set(FOREIGN_NAMES)
    volumes = _backup_info.local(directory, "volumes", "production", NOW)
    assert [b["name"] for b in volumes["backups"]] == ["volumes_production_20200101_000000.tar.zst"] and volumes["latest"] is None


def test_a_directory_that_does_not_exist_holds_no_backups(tmp_path):
    assert _backup_info.local(str(tmp_path / "not-yet"), "database", "production", NOW) == dict(backups=[], latest=None)


def test_a_bad_environment_name_is_refused_with_the_fix(tmp_path):
    with pytest.raises(BackupError, match="use letters, digits and '-' only"):
        _backup_info.local(str(tmp_path), "database", "prod_eu", NOW)


def test_a_backup_dated_in_the_future_has_a_negative_age(tmp_path):
    BackupDir(tmp_path).complete(NOW + datetime.timedelta(minutes=5))
    assert _backup_info.local(str(tmp_path), "database", "production", NOW)["latest"]["age_seconds"] == -300
