# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing backups safely: one writer per set, files that appear only when complete, a killed run's leftovers removed.

Writers go through ``.partial`` files (mode 0600) renamed into place and
fsynced, so nothing that looks complete can be left behind by a failure.
"""

import contextlib
import ctypes
import errno
import fcntl
import io
import json
import os
import threading

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import (
    METADATA_SUFFIX,
    PARTIAL_SUFFIX,
    archive_name,
    metadata_path,
    parse_archive_name,
)
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._process import libc_function

WRITEBACK_STEP = 16 * 1024 * 1024
_SYNCFS = libc_function("syncfs", (ctypes.c_int,))


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


class Filesystems(object):
    """The filesystems that hold ``paths``, for trees other processes write (GNU tar fsyncs nothing it extracts).

    Each is opened once, before the writing starts: syncfs(2) reports a write
    error only to descriptors that were open when it happened.  sync(2) where
    the C library has no syncfs.
    """

    def __init__(self, paths):
        self._open = {}
        try:
            for path in paths:
                device = os.stat(path).st_dev
                if device not in self._open:
                    self._open[device] = (path, os.open(path, os.O_RDONLY))
        except BaseException:
            self.close()
            raise

    def sync(self):
        for path, fd in self._open.values():
            if _SYNCFS is None:
                os.sync()
            elif _SYNCFS(fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), path)

    def close(self):
        for unused, fd in self._open.values():
            os.close(fd)
        self._open = {}


def remove_stale_partials(directory, kind, environment):
    """Only under backup_lock: a .partial of this set that nobody is writing is what a killed run left."""
    removed = []
    prefix = "%s_%s_" % (kind, environment)
    for name in sorted(os.listdir(directory)):
        if not (name.startswith(prefix) and name.endswith(PARTIAL_SUFFIX)):
            continue
        base = name[: -len(PARTIAL_SUFFIX)]
        if base.endswith(METADATA_SUFFIX):
            base = base[: -len(METADATA_SUFFIX)] + ".tar"
        parsed = parse_archive_name(base)
        if parsed is not None and parsed[:2] == (kind, environment):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


def new_archive_path(directory, kind, environment, when, compression, encrypted=False):
    """The path of a backup about to be written; two backups in the same second must not meet in one name."""
    path = os.path.join(directory, archive_name(kind, environment, when, compression, encrypted))
    if os.path.lexists(path) or os.path.lexists(metadata_path(path)):
        raise BackupError("%s already exists (two backups in the same second): run again" % path)
    return path


class SyncHelper(object):
    """A thread that makes written data durable while more is written, so that the last sync waits for the tail only.

    The disk, and a VM host's flush (most of the cost on the machines we
    measure), then work while the data is still produced instead of after it.
    ``sync`` (an fdatasync, a syncfs) runs each time ``ask`` is called, or every
    ``period`` seconds.  The kernel reports a write error to one sync only: the
    helper stops at it and keeps it in ``error`` for its owner to raise.
    """

    def __init__(self, sync, period=None):
        self._sync = sync
        self._period = period
        self._wake = threading.Event()
        self._closing = False
        self.error = None
        self.thread = threading.Thread(target=self._run)
        self.thread.daemon = True
        self.thread.start()

    def ask(self):
        self._wake.set()

    def _run(self):
        while True:
            self._wake.wait(self._period)
            self._wake.clear()
            if self._closing:
                return
            try:
                self._sync()
            except OSError as exc:
                self.error = exc
                return

    def stop(self):
        self._closing = True
        self._wake.set()
        self.thread.join()

    def finish(self):
        """Stop, raising the OSError the helper met: the owner's last sync comes after this."""
        self.stop()
        if self.error is not None:
            raise self.error


class WritebackWriter(io.BufferedWriter):
    """A buffered file that a SyncHelper fdatasyncs every 16 MiB while more is written.

    The fsync before the rename then waits for the last step only: 0.4 s at the
    end of a 2.5 s archive of 500 MB (bench/README.md).  Small files never
    start the helper.
    """

    def __init__(self, raw):
        super(WritebackWriter, self).__init__(raw)
        self._written = self._asked = 0
        self._helper = None

    def write(self, data):
        count = super(WritebackWriter, self).write(data)
        self._written += count
        if self._written - self._asked >= WRITEBACK_STEP:
            if self._helper is not None and self._helper.error is not None:
                raise self._helper.error  # a disk that failed a write-back: stop producing the rest
            self.flush()
            self._asked = self._written
            if self._helper is None:
                self._helper = SyncHelper(lambda: os.fdatasync(self.raw.fileno()))
            self._helper.ask()
        return count

    def sync(self):
        """Flush and fsync; raises the OSError the helper met, if it met one."""
        self.flush()
        if self._helper is not None:
            self._helper.finish()
        os.fsync(self.fileno())

    def close(self):
        # The helper must not outlive the descriptor it syncs: the number could name another file next.
        if self._helper is not None:
            self._helper.stop()
        super(WritebackWriter, self).close()


class AtomicFile(object):
    """A 0600 file written as ``<path>.partial`` and renamed into place only by commit().

    ``locked``: the caller holds the writer's lock, so a ``.partial`` already
    there is a killed run's leftover and is replaced instead of refused.
    """

    def __init__(self, path, locked=False):
        self.path = path
        self.partial = path + PARTIAL_SUFFIX
        if locked:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.partial)
        try:
            # Opened by name (not os.fdopen) so handle.name is the path a disk-full message must show.
            self.handle = WritebackWriter(io.FileIO(self.partial, "xb", opener=lambda path, flags: os.open(path, flags, 0o600)))
        except OSError as exc:
            raise BackupError("cannot create %s: %s" % (self.partial, exc.strerror))

    def commit(self):
        try:
            self.handle.sync()
            self.handle.close()
        except OSError as exc:
            fix = "free space on the destination" if exc.errno == errno.ENOSPC else "check the destination"
            raise BackupError("writing %s failed: %s -- %s or choose another backup_dir" % (self.partial, exc.strerror or exc, fix))
        os.rename(self.partial, self.path)
        fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def discard(self):
        """Closing flushes the buffer, which fails on a full disk: the unlink must still happen."""
        try:
            with contextlib.suppress(OSError):
                self.handle.close()
        finally:
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
