# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a backup is on disk, shared by every module of the collection.

A backup is the pair ``<kind>_<env>_<YYYYMMDD_HHMMSS><ext>`` plus
``<same stem>_metadata.json``; it is *complete* only when the metadata exists,
names the archive and records its size (and, when checked, its sha256).
Writers go through ``.partial`` files so that nothing that looks complete can
be left behind by a failure.
"""

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading

METADATA_SUFFIX = "_metadata.json"
PARTIAL_SUFFIX = ".partial"
FORMAT_VERSION = 1
CHUNK = 1024 * 1024

EXTENSIONS = {"gzip": ".tar.gz", "zstd": ".tar.zst", "none": ".tar"}
ENV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
NAME_RE = re.compile(
    r"^(?P<kind>[a-z]+)_(?P<env>[A-Za-z0-9][A-Za-z0-9-]*)_(?P<ts>\d{8}_\d{6})"
    r"(?P<ext>\.tar\.gz|\.tar\.zst|\.tar)$"
)
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"


class BackupError(Exception):
    """A failure an operator can act on; the message is one line naming the fix."""


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


def archive_name(kind, env, when, compression):
    if compression not in EXTENSIONS:
        raise BackupError(
            "compression %r is not supported: use one of %s" % (compression, ", ".join(sorted(EXTENSIONS)))
        )
    return stem(kind, env, when) + EXTENSIONS[compression]


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
        raise BackupError("%s is not a backup archive name (expected <kind>_<env>_YYYYMMDD_HHMMSS.tar[.gz|.zst])" % name)
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


class Backup(object):
    """One archive found in a backup directory, with why it is or is not complete."""

    def __init__(self, directory, name):
        self.name = name
        self.path = os.path.join(directory, name)
        self.kind, self.environment, self.created, self.extension = parse_archive_name(name)
        self.metadata_path = metadata_path(self.path)
        self.metadata = None
        self.problem = None
        self._inspect()

    def _inspect(self):
        if not os.path.exists(self.metadata_path):
            self.problem = "metadata file %s is missing" % os.path.basename(self.metadata_path)
            return
        try:
            meta = read_metadata(self.metadata_path)
        except BackupError as exc:
            self.problem = str(exc)
            return
        if meta.get("archive") != self.name:
            self.problem = "metadata names %r, not this archive" % meta.get("archive")
            return
        try:
            size = os.stat(self.path).st_size
        except OSError as exc:
            self.problem = "cannot stat archive: %s" % exc.strerror
            return
        if meta.get("size") != size:
            self.problem = "archive is %d bytes but metadata records %r" % (size, meta.get("size"))
            return
        self.metadata = meta

    @property
    def complete(self):
        return self.problem is None

    def check_checksum(self):
        """Raise unless the archive's bytes are the ones the metadata vouches for."""
        if not self.complete:
            raise BackupError("%s is not a complete backup: %s" % (self.name, self.problem))
        expected = self.metadata.get("sha256")
        actual = sha256_file(self.path)
        if expected != actual:
            raise BackupError(
                "%s is corrupted: sha256 %s does not match metadata %s; use another backup" % (self.name, actual, expected)
            )


def list_backups(directory, kind=None, environment=None):
    """Backups in directory (complete or not), oldest first; other files are ignored."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise BackupError("cannot list %s: %s" % (directory, exc.strerror))
    found = []
    for name in names:
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


def resolve_source(src, directory, kind, environment):
    """Turn ``src`` ("latest" or a path) into a complete, checksum-verified Backup."""
    if src == "latest":
        complete = [b for b in list_backups(directory, kind, environment) if b.complete]
        if not complete:
            raise BackupError(
                "no complete %s backup for environment %r in %s: pass src with the path of a backup"
                % (kind, environment, directory)
            )
        backup = complete[-1]
    else:
        name = os.path.basename(src)
        if parse_archive_name(name) is None:
            raise BackupError(
                "%s is not a backup of this collection (expected %s_<env>_YYYYMMDD_HHMMSS.tar[.gz|.zst])" % (src, kind)
            )
        if not os.path.isfile(src):
            raise BackupError("backup file %s does not exist: check the path or use src=latest" % src)
        backup = Backup(os.path.dirname(os.path.abspath(src)), name)
        if backup.kind != kind:
            raise BackupError("%s is a %s backup, not a %s backup" % (name, backup.kind, kind))
    backup.check_checksum()
    return backup


@contextlib.contextmanager
def backup_lock(directory, kind, environment):
    """One writer per directory+kind+environment; flock dies with its process, so no stale locks."""
    path = os.path.join(directory, ".%s_%s.lock" % (kind, environment))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise BackupError("cannot create lock file %s: %s; check that the directory exists and is writable" % (path, exc.strerror))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (OSError, IOError):
            raise BackupError(
                "another %s backup of %r is running in %s (lock %s held): wait for it to finish" % (kind, environment, directory, path)
            )
        yield path
    finally:
        os.close(fd)


def fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile(object):
    """A 0600 file written as ``<path>.partial`` and renamed into place only by commit()."""

    def __init__(self, path):
        self.path = path
        self.partial = path + PARTIAL_SUFFIX
        try:
            fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise BackupError("cannot create %s: %s" % (self.partial, exc.strerror))
        self.handle = os.fdopen(fd, "wb")

    def commit(self):
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.rename(self.partial, self.path)
        fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def discard(self):
        if not self.handle.closed:
            self.handle.close()
        with contextlib.suppress(OSError):
            os.unlink(self.partial)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        return False


def write_metadata(archive_path, data):
    """Written last: its existence is what makes a backup complete."""
    path = metadata_path(archive_path)
    with AtomicFile(path) as target:
        target.handle.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
        target.commit()
    return path


def compressor_command(compression):
    if compression == "zstd":
        return ["zstd", "-q", "-T0", "-3", "-c"]
    if compression == "gzip":
        return [shutil.which("pigz") and "pigz" or "gzip", "-c", "-6"]
    return None


def decompressor_command(compression):
    if compression == "zstd":
        return ["zstd", "-q", "-d", "-c"]
    if compression == "gzip":
        return [shutil.which("pigz") and "pigz" or "gzip", "-d", "-c"]
    return None


def compression_of(name):
    for compression, ext in EXTENSIONS.items():
        if name.endswith(ext) and not (compression == "none" and name.endswith((".tar.gz", ".tar.zst"))):
            return compression
    raise BackupError("cannot tell the compression of %s" % name)


class CompressedSink(object):
    """A writable stream: bytes go through the compressor into ``target`` while size and sha256 are counted.

    Popen is needed (not run_command) because the data is produced while it is
    compressed; nothing is staged on disk.
    """

    def __init__(self, target, compression):
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0
        self._error = None
        command = compressor_command(compression)
        self._command = command
        self._proc = None
        self._thread = None
        if command is not None:
            self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self._thread = threading.Thread(target=self._pump)
            self._thread.daemon = True
            self._thread.start()

    def _emit(self, block):
        self.digest.update(block)
        self.size += len(block)
        self.target.write(block)

    def _pump(self):
        try:
            for block in iter(lambda: self._proc.stdout.read(CHUNK), b""):
                self._emit(block)
        except Exception as exc:  # the writer thread reports, close() raises
            self._error = exc
            # Unblock write(): a compressor nobody reads would stall it forever.
            with contextlib.suppress(OSError):
                self._proc.kill()

    def write(self, data):
        if self._proc is None:
            self._emit(bytes(data))
        else:
            try:
                self._proc.stdin.write(data)
            except BrokenPipeError:
                if self._error is not None:
                    raise BackupError("writing the archive failed: %s" % self._error)
                raise BackupError("compressor %s stopped before the end of the stream" % self._command[0])
        return len(data)

    def close(self):
        """Finish the stream; returns (size, sha256 hex) of what reached the target."""
        if self._proc is not None:
            self._proc.stdin.close()
            rc = self._proc.wait()
            self._thread.join()
            if self._error is not None:
                raise BackupError("writing the archive failed: %s" % self._error)
            if rc != 0:
                raise BackupError("compressor %s exited with status %d" % (self._command[0], rc))
        return self.size, self.digest.hexdigest()

    def abort(self):
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            self._proc.wait()
            self._thread.join()
