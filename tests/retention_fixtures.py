"""Backup directories on disk for the retention tests: real files, real metadata (helpers, no fixtures)."""
import hashlib
import os

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import archive_name, metadata_path
from ansible_collections.minimarket.backup.plugins.module_utils._files import write_metadata

# Every way a file can be in a backup directory without being a backup of the set under test.
FOREIGN_NAMES = (
    "notes.txt",
    "database_production_latest.tar.gz",
    "database_production_20200101_000000.tar.gz.bak",
    "database_production_20200101_000000_metadata.json.bak",
    "database_production_2020010_000000.tar.gz",
    "database_staging_20200101_000000.tar.gz",
    "database_staging_20200101_000000_metadata.json",
    "database_staging_20200101_000000.tar.gz.partial",
    "volumes_production_20200101_000000.tar.zst",
    "database_production-eu_20200101_000000.tar.gz",
    "database_prod_20200101_000000.tar.gz",
    "Database_production_20200101_000000.tar.gz",
)


class BackupDir(object):
    """Writes backups of one kind+environment the way the dump modules do (archive, then metadata)."""

    def __init__(self, path, kind="database", environment="production", compression="gzip"):
        self.path = str(path)
        self.kind = kind
        self.environment = environment
        self.compression = compression

    def archive(self, when, payload=None):
        name = archive_name(self.kind, self.environment, when, self.compression)
        path = os.path.join(self.path, name)
        data = payload if payload is not None else ("backup %s\n" % name).encode() * 3
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, 0o600)
        return path

    def complete(self, when, payload=None):
        path = self.archive(when, payload)
        with open(path, "rb") as handle:
            data = handle.read()
        write_metadata(path, dict(
            archive=os.path.basename(path), size=len(data), sha256=hashlib.sha256(data).hexdigest(),
            kind=self.kind, environment=self.environment,
        ))
        return path

    def incomplete(self, when, how="no-metadata"):
        """The shapes an interrupted or damaged run leaves; returns the file names written."""
        if how == "orphan-metadata":
            path = self.complete(when)
            os.unlink(path)
            return [os.path.basename(metadata_path(path))]
        if how == "partial-archive":
            path = self.archive(when) + ".partial"
            os.rename(path[: -len(".partial")], path)
            return [os.path.basename(path)]
        if how == "partial-metadata":
            path = self.archive(when)
            partial = metadata_path(path) + ".partial"
            with open(partial, "w") as handle:
                handle.write("{")
            return [os.path.basename(path), os.path.basename(partial)]
        path = self.complete(when) if how == "size-mismatch" else self.archive(when)
        if how == "size-mismatch":
            with open(path, "ab") as handle:
                handle.write(b"appended after the metadata was written")
        return [os.path.basename(p) for p in (path, metadata_path(path)) if os.path.exists(p)]

    def foreign(self, names=FOREIGN_NAMES):
        for name in names:
            with open(os.path.join(self.path, name), "w") as handle:
                handle.write("not ours: %s\n" % name)
        return list(names)

    def snapshot(self):
        """name -> (size, sha256) of every entry, to prove what was and was not touched."""
        result = {}
        for name in sorted(os.listdir(self.path)):
            path = os.path.join(self.path, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    data = handle.read()
                result[name] = (len(data), hashlib.sha256(data).hexdigest())
            else:
                result[name] = ("not a file",)
        return result
