"""Named retention scenarios, one YAML file each under retention_cases/ (readable by operators)."""
import datetime
import glob
import os

import pytest
import yaml

from ansible_collections.minimarket.backup.plugins.module_utils._retention import Policy, plan
from tests.retention_fixtures import BackupDir

CASES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "retention_cases", "*.yml")))


def utc(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)


def backups_of(case):
    for series in case.get("series", []):
        start = utc(series["start"])
        for index in range(series["count"]):
            yield start + datetime.timedelta(hours=series["every_hours"] * index), series["state"]
    for backup in case.get("backups", []):
        yield utc(backup["at"]), backup["state"]


def test_cases_exist():
    assert len(CASES) >= 3


@pytest.mark.parametrize("path", CASES, ids=[os.path.basename(p)[:-4] for p in CASES])
def test_case(path, tmp_path):
    with open(path) as handle:
        case = yaml.safe_load(handle)
    directory = BackupDir(tmp_path)
    for when, state in backups_of(case):
        if state == "complete":
            directory.complete(when)
        else:
            directory.incomplete(when, state)

    result = plan(str(tmp_path), "database_production_", Policy(**case["policy"]), utc(case["now"]))

    assert dict((e["name"], e["reasons"]) for e in result["kept"]) == case["kept"]
    assert len(result["deleted"]) == case["deleted_count"]
    assert len(result["warnings"]) == len(case["warnings"])
    for expected, actual in zip(case["warnings"], result["warnings"]):
        assert actual.startswith(expected)
