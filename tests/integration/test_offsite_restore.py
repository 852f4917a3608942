"""The disaster the second location is for: the local dumps are gone, the database is restored from the off-site copy."""
import os
import shutil

from testenv import pgcompare
from tests.integration.test_offsite import files, offsite_args
from tests.integration.test_offsite import run_module as run_offsite
from tests.pg_fixtures import conn_args, run_module

pytest_plugins = ["tests.pg_fixtures", "tests.offsite_fixtures"]


def test_restore_from_the_second_location_after_the_local_disk_is_lost(
        pg_server, seeded_db, backup_dir, dropped_databases, s3_server, tmp_path):
    before = pgcompare.snapshot(pg_server.dsn(seeded_db))
    dumped = run_module(conn_args(pg_server, state="dump", db=seeded_db, dest=backup_dir, environment="testing", compression="zstd"))
    assert dumped["_rc"] == 0, dumped
    pushed = run_offsite(offsite_args(s3_server, state="push", environment="testing", src_dir=backup_dir))
    assert pushed["_rc"] == 0 and pushed["pushed"] == [os.path.basename(dumped["archive"])], pushed
    shutil.rmtree(backup_dir)

    new_disk = str(tmp_path / "new-disk" / "database")
    fetched = run_offsite(offsite_args(s3_server, state="fetch", environment="testing", dest=new_disk))
    assert fetched["_rc"] == 0 and fetched["changed"] is True, fetched
    assert files(new_disk) == sorted([os.path.basename(dumped["archive"]), os.path.basename(dumped["metadata"])])
    assert fetched["path"] == os.path.join(new_disk, os.path.basename(dumped["archive"]))

    pg_server.execute("DELETE FROM venta_items WHERE id % 3 = 0", seeded_db)
    restored = run_module(conn_args(pg_server, state="restore", db=seeded_db, dest=new_disk, environment="testing",
                                    src=fetched["path"]))
    assert restored["_rc"] == 0, restored
    dropped_databases.append(restored["previous"])
    assert pgcompare.diff(before, pgcompare.snapshot(pg_server.dsn(seeded_db))) == []
