# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a backup is on disk, shared by every module of the collection.

A backup is the pair ``<kind>_<env>_<YYYYMMDD_HHMMSS><ext>`` plus
``<same stem>_metadata.json``; it is *complete* only when the metadata exists,
names the archive and records its size and sha256, and the archive has that
size (``judge``: the one rule for local and remote copies; the sha256 itself
is compared only when checked). How they are written safely is ``_files``;
how their bytes are compressed, encrypted and read back is ``_pipeline``.

An archive encrypted with ``age`` ends in ``.age`` (``...tar.gz.age``); its
metadata stays plain JSON, and its size and sha256 are those of the encrypted
bytes, so completeness and checksums are checked without the private key.
"""

import datetime
import errno
import hashlib
import json
import os
import re

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import (
    AGE_SUFFIX,
    CHUNK,
    EXTENSIONS,
    check_identity,
    is_encrypted,
)

METADATA_SUFFIX = "_metadata.json"
PARTIAL_SUFFIX = ".partial"
FORMAT_VERSION = 1

EXPECTED_NAME = "<kind>_<env>_YYYYMMDD_HHMMSS.tar[.gz|.zst][.age]"
ENV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
NAME_RE = re.compile(
    r"^(?P<kind>[a-z]+)_(?P<env>[A-Za-z0-9][A-Za-z0-9-]*)_(?P<ts>\d{8}_\d{6})"
    r"(?P<ext>(?:\.tar\.gz|\.tar\.zst|\.tar)(?:\.age)?)$"
)
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
# The problem of metadata whose archive is not there (locally or at the second location).
ARCHIVE_MISSING = "its archive is missing"


def check_environment(env):
    """Environment names go into file names, so an underscore would make them ambiguous."""
    if not ENV_RE.match(env or ""):
        raise BackupError(
            "environment %r is not a valid name: use letters, digits and '-' only "
            "(for example 'production')" % (env,)
        )
    return env


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def stem(kind, env, when):
    return "%s_%s_%s" % (kind, check_environment(env), when.strftime(TIMESTAMP_FORMAT))


def archive_name(kind, env, when, compression, encrypted=False):
    if compression not in EXTENSIONS:
        raise BackupError(
            "compression %r is not supported: use one of %s" % (compression, ", ".join(sorted(EXTENSIONS)))
        )
    return stem(kind, env, when) + EXTENSIONS[compression] + (AGE_SUFFIX if encrypted else "")


def parse_archive_name(name):
    """Return (kind, env, utc datetime, extension) or None for names outside the scheme."""
    match = NAME_RE.match(name)
    if not match:
        return None
    try:
        when = datetime.datetime.strptime(match.group("ts"), TIMESTAMP_FORMAT)
    except ValueError:
        return None
    return match.group("kind"), match.group("env"), when.replace(tzinfo=datetime.timezone.utc), match.group("ext")


def metadata_path(archive_path):
    name = os.path.basename(archive_path)
    parsed = parse_archive_name(name)
    if parsed is None:
        raise BackupError("%s is not a backup archive name (expected %s)" % (name, EXPECTED_NAME))
    return os.path.join(os.path.dirname(archive_path), name[: -len(parsed[3])] + METADATA_SUFFIX)


def read_metadata(path):
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, IOError) as exc:
        raise BackupError("cannot read metadata %s: %s" % (path, exc.strerror or exc))
    except ValueError as exc:
        raise BackupError("metadata %s is not valid JSON (%s): the backup is incomplete or damaged" % (path, exc))
    if not isinstance(data, dict):
        raise BackupError("metadata %s is not a JSON object: the backup is incomplete or damaged" % path)
    return data


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_metadata_name(name):
    """(kind, env, utc datetime) of ``<kind>_<env>_<ts>_metadata.json``, by the archive naming rules, or None."""
    if not name.endswith(METADATA_SUFFIX):
        return None
    parsed = parse_archive_name(name[: -len(METADATA_SUFFIX)] + ".tar")
    return parsed and parsed[:3]


def orphan_metadata(names, kind, environment, paired):
    """(name, created) of the set's metadata files among ``names`` that no archive pairs with, oldest first."""
    found = []
    for name in names:
        parsed = parse_metadata_name(name)
        if parsed is not None and parsed[:2] == (kind, environment) and name not in paired:
            found.append((name, parsed[2]))
    return sorted(found, key=lambda pair: (pair[1], pair[0]))


def completeness_problem(name, size, meta):
    """Why an archive of ``size`` bytes with metadata ``meta`` is not complete, or None."""
    if meta.get("archive") != name:
        return "metadata names %r, not this archive" % meta.get("archive")
    if meta.get("size") != size:
        return "archive is %d bytes but metadata records %r" % (size, meta.get("size"))
    if not meta.get("sha256"):
        return "metadata records no sha256"
    return None


def judge(name, size, metadata_name, raw):
    """The one completeness rule, for a local or a remote copy: (metadata, None) or (None, why it is incomplete).

    ``raw`` is the metadata file's bytes (None when it is missing), ``size``
    the archive's size; the callers only differ in where they read them.
    """
    if raw is None:
        return None, "metadata file %s is missing" % metadata_name
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        return None, "metadata %s is not valid JSON (%s): the backup is incomplete or damaged" % (metadata_name, exc)
    if not isinstance(meta, dict):
        return None, "metadata %s is not a JSON object: the backup is incomplete or damaged" % metadata_name
    problem = completeness_problem(name, size, meta)
    return (None, problem) if problem else (meta, None)


def checksum_problem(actual, meta, what="archive"):
    """Why bytes whose sha256 is ``actual`` are not the ones ``meta`` vouches for, or None."""
    if actual == meta.get("sha256"):
        return None
    return "sha256 %s does not match metadata %s: the %s is damaged" % (actual, meta.get("sha256"), what)


def human_size(size):
    """Bytes as an operator reads them: 1.5 GiB, 312.0 KiB, 12 bytes."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return "%d bytes" % size if unit == "bytes" else "%.1f %s" % (size, unit)
        size /= 1024.0


class Backup(object):
    """One archive found in a backup directory, with why it is or is not complete."""

    def __init__(self, directory, name):
        self.name = name
        self.path = os.path.join(directory, name)
        self.kind, self.environment, self.created, self.extension = parse_archive_name(name)
        self.metadata_path = metadata_path(self.path)
        self.metadata = None
        self.size = None
        self.problem = None
        self.warnings = []
        self.identity_file = None
        # resolve_source(checksum=False): the reader must take the sha256 in its own read (archive_stream digest).
        self.checksum_in_pass = False
        self._inspect()

    def _inspect(self):
        """Read what ``judge`` needs from the disk; RemoteBackup reads the same from the remote."""
        metadata_name = os.path.basename(self.metadata_path)
        try:
            with open(self.metadata_path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raw = None
        except (OSError, IOError) as exc:
            self.problem = "cannot read metadata %s: %s" % (metadata_name, exc.strerror or exc)
            return
        try:
            self.size = os.stat(self.path).st_size
        except OSError as exc:
            self.problem = "cannot stat archive: %s" % exc.strerror
            return
        self.metadata, self.problem = judge(self.name, self.size, metadata_name, raw)

    @property
    def complete(self):
        return self.problem is None

    def describe(self):
        """What an operator confirms a restore against, before anything is touched (complete backups only)."""
        size = self.metadata["size"]
        return {"name": self.name, "path": self.path, "environment": self.environment,
                "created": self.created.isoformat(), "size": size,
                "summary": "%s (taken %s, %s, environment %s)" % (
                    self.path, self.created.strftime("%Y-%m-%d %H:%M:%S UTC"), human_size(size), self.environment)}

    def check_complete(self):
        if not self.complete:
            raise BackupError("%s is not a complete backup: %s" % (self.name, self.problem))

    def check_checksum(self, actual=None):
        """Raise unless the archive's bytes are the ones the metadata vouches for (``actual``: their sha256, already taken)."""
        self.check_complete()
        expected = self.metadata.get("sha256")
        actual = actual or sha256_file(self.path)
        if expected != actual:
            raise BackupError(
                "%s is corrupted: sha256 %s does not match metadata %s; use another backup" % (self.name, actual, expected)
            )


def _listdir(directory):
    """Names in directory; a directory that does not exist yet holds no backups."""
    try:
        return os.listdir(directory)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise BackupError("cannot list %s: %s" % (directory, exc.strerror))


def list_backups(directory, kind=None, environment=None):
    """Backups in directory (complete or not), oldest first; other files are ignored."""
    found = []
    for name in _listdir(directory):
        parsed = parse_archive_name(name)
        if parsed is None:
            continue
        if kind is not None and parsed[0] != kind:
            continue
        if environment is not None and parsed[1] != environment:
            continue
        found.append(Backup(directory, name))
    found.sort(key=lambda b: (b.created, b.name))
    return found


def list_orphans(directory, kind, environment, backups):
    """(name, created) of the set's metadata files in directory whose archive is not among ``backups``, oldest first."""
    paired = set(os.path.basename(backup.metadata_path) for backup in backups)
    return orphan_metadata(_listdir(directory), kind, environment, paired)


def resolve_source(src, directory, kind, environment, identity_file=None, checksum=True):
    """Turn ``src`` ("latest" or a path) into a complete, checksum-verified Backup.

    An encrypted backup is also checked to open with ``identity_file``, so a
    missing or wrong key fails here, before the caller touches anything.
    ``checksum=False`` is for a caller that hashes the archive in the same read
    as its restore (``archive_stream(digest=...)``) and compares before
    anything is swapped in.
    """
    if src == "latest":
        found = list_backups(directory, kind, environment)
        complete = [b for b in found if b.complete]
        if not complete:
            raise BackupError(
                "no complete %s backup for environment %r in %s: pass src with the path of a backup"
                % (kind, environment, directory)
            )
        backup = complete[-1]
        # The operator must know that latest is not the newest backup: each newer one is named with why it was passed over.
        skipped = ["src=latest skipped the newer backup %s: %s" % (b.name, b.problem) for b in found[found.index(backup) + 1:]]
        backup.warnings.extend(skipped)
    else:
        name = os.path.basename(src)
        if parse_archive_name(name) is None:
            raise BackupError(
                "%s is not a backup of this collection (expected %s)" % (src, EXPECTED_NAME.replace("<kind>", kind))
            )
        if not os.path.isfile(src):
            raise BackupError("backup file %s does not exist: check the path or use src=latest" % src)
        backup = Backup(os.path.dirname(os.path.abspath(src)), name)
        if backup.kind != kind:
            raise BackupError("%s is a %s backup, not a %s backup" % (name, backup.kind, kind))
    if checksum:
        backup.check_checksum()
    else:
        backup.check_complete()
        backup.checksum_in_pass = True
    if is_encrypted(backup.name):
        backup.warnings.extend(check_identity(backup, identity_file))
        backup.identity_file = identity_file
    return backup
