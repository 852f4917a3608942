"""The ``backup`` return value is written twice (doc fragments cannot hold RETURN): the two copies must not drift.

Both modules return ``_backup_set.Backup.describe()`` from restore and verify, so the block must say the same thing
in both; only the sample's kind differs (a database dump, a volume archive).
"""
import datetime
import importlib
import os

import yaml

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import Backup
from tests.retention_fixtures import BackupDir

MODULES = {"pg_split_dump": "database", "docker_volume_archive": "volumes"}


def returned_backup(name):
    module = importlib.import_module("ansible_collections.minimarket.backup.plugins.modules.%s" % name)
    return yaml.safe_load(module.RETURN)["backup"]


def test_both_modules_document_backup_alike():
    blocks = dict((name, returned_backup(name)) for name in MODULES)
    same = [dict((key, value) for key, value in block.items() if key != "sample") for block in blocks.values()]
    assert same[0] == same[1], "the backup RETURN blocks of %s differ: make them say the same" % " and ".join(MODULES)
    samples = [yaml.safe_dump(block["sample"]).replace(kind + "_", "KIND_").replace("/" + kind + "/", "/KIND/")
               for kind, block in zip(MODULES.values(), blocks.values())]
    assert samples[0] == samples[1], "the backup samples differ in more than their kind"


def test_the_documented_keys_are_the_ones_describe_returns(tmp_path):
    """The block documents exactly what Backup.describe() returns, so the copies cannot agree on a wrong key."""
    path = BackupDir(tmp_path).complete(datetime.datetime(2025, 10, 7, 12, 0, tzinfo=datetime.timezone.utc))
    backup = Backup(str(tmp_path), os.path.basename(path))
    assert backup.complete, backup.problem
    assert set(backup.describe()) == set(returned_backup("pg_split_dump")["contains"])
