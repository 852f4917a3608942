# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The intent journal: what a run must be able to undo or finish if it is killed (SIGKILL runs no handler).

Before a step the next run would have to repair (stopping a container, closing
or renaming a database, swapping a volume's data, creating a temporary database,
a scratch volume or a staging directory), the job records it in one JSON file
per job, ``<journal_dir>/<job>.json``, written to a temporary name, fsync'd and
renamed (so a reader never sees half a file); the file is removed once the job
has put everything back or finished.  ``<job>.lock`` is flock'd by the running
job for its whole life: a journal whose lock can be taken belongs to a dead run.

Every module run first calls ``replay``: each dead run's steps are repaired in
reverse order by the repairers the module knows; what was repaired is returned
for the result, the backup report and the metrics.  A step no repairer of this
module knows stays in the journal, with a warning naming the module that will
repair it.
"""

import contextlib
import fcntl
import json
import os
import socket
import time

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._files import fsync_directory

JOURNAL_DIRNAME = ".journal"
SUFFIX = ".json"
LOCK_SUFFIX = ".lock"


def default_dir(backup_dir=None, src=None):
    """``.journal`` in the backup root: the parent of ``backup_dir`` (``<root>/database``, ``<root>/volumes``), else of src's directory."""
    if backup_dir:
        base = os.path.dirname(os.path.abspath(backup_dir))
    elif src and src != "latest":
        base = os.path.dirname(os.path.dirname(os.path.abspath(src)))
    else:
        return None
    return os.path.join(base, JOURNAL_DIRNAME)


def _ensure_dir(directory):
    try:
        os.makedirs(directory, 0o700, exist_ok=True)
    except OSError as exc:
        raise BackupError("cannot create the journal directory %s (%s): make the backup root writable or set journal_dir"
                          % (directory, exc.strerror or exc))


class Job(object):
    """One running job's journal; ``record`` persists a step before the caller performs it."""

    def __init__(self, directory, job):
        self.data = {"job": job, "host": socket.gethostname(), "pid": os.getpid(),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": []}
        self.keep = False
        self.path = None
        if directory is None:
            return  # a caller without a backup root (tests, benchmarks): steps are kept in memory only
        _ensure_dir(directory)
        name = "%s-%s-%d" % (job.replace(" ", "-"), time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), os.getpid())
        self.path = os.path.join(directory, name + SUFFIX)
        self.lock_path = os.path.join(directory, name + LOCK_SUFFIX)
        # Locked before it appears under its name: a replay must never find it unlocked while this run lives.
        fresh = os.path.join(directory, "." + name + LOCK_SUFFIX + ".new")
        try:
            self._lock = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            os.link(fresh, self.lock_path)
            os.unlink(fresh)
        except OSError as exc:
            raise BackupError("cannot start the journal in %s (%s): make the backup root writable or set journal_dir"
                              % (directory, exc.strerror or exc))

    def record(self, step, **fields):
        """Append a step (``step`` names what is about to happen) and make it durable."""
        entry = dict(fields, step=step)
        self.data["steps"].append(entry)
        self._write()

    def _write(self):
        """A step that cannot be recorded is not taken: the caller's own error handling undoes what came before."""
        if self.path is None:
            return
        try:
            write_json(self.path, self.data)
        except OSError as exc:
            raise BackupError("cannot write the journal %s (%s): free space in the backup root or set journal_dir"
                              % (self.path, exc.strerror or exc))

    def done(self):
        """Everything is back in order: remove the journal, then the lock."""
        if self.path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        fsync_directory(os.path.dirname(self.path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_path)
        os.close(self._lock)


def write_json(path, data):
    temporary = _tmp_path(path)
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(json.dumps(data, indent=1, sort_keys=True).encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path))


@contextlib.contextmanager
def job(directory, name):
    """A journal for the block, cleared when the block ends by success or by a BackupError it undid itself.

    A BackupError whose undo failed sets ``keep``; any other exception keeps the
    journal too, and the next run repairs (each repair is a no-op on what is
    already in order).  ``directory`` None journals in memory only.
    """
    current = Job(directory, name)
    try:
        yield current
    except BackupError:
        if not current.keep:
            current.done()
        raise
    current.done()


def _tmp_path(path):
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")


def _remove_job_files(path):
    """The journal, a half-written next version of it (killed in write_json), then the lock."""
    for name in (path, _tmp_path(path), path[: -len(SUFFIX)] + LOCK_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    fsync_directory(os.path.dirname(path))


def _dead_runs(directory):
    """(path, lock fd, data) of each journal whose run is gone; the lock is held until the caller closes it.

    A dead run killed before its first step was written left only its lock: removed here.
    """
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if not name.endswith(LOCK_SUFFIX):
            continue
        lock_path = os.path.join(directory, name)
        path = lock_path[: -len(LOCK_SUFFIX)] + SUFFIX
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            continue  # its run finished meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # its run is alive
            continue
        try:
            with open(path, "rb") as handle:
                data = json.loads(handle.read().decode("utf-8"))
        except FileNotFoundError:
            _remove_job_files(path)
            os.close(fd)
            continue
        except (OSError, ValueError) as exc:
            os.close(fd)
            raise BackupError("journal %s cannot be read (%s): repair by hand what it names, then remove it" % (path, exc))
        found.append((path, fd, data))
    return found


def replay(directory, repairers):
    """Repair what dead runs left; returns (repaired, warnings).

    ``repairers`` maps a step name to ``f(step) -> [what was repaired]``; a
    repairer raising BackupError keeps the journal (the next run tries again).
    """
    repaired, warnings = [], []
    if directory is None:
        return repaired, warnings
    for path, fd, data in _dead_runs(directory):
        try:
            steps = data.get("steps", [])
            left = []
            for step in reversed(steps):
                repair = repairers.get(step.get("step"))
                if repair is None:
                    left.insert(0, step)
                    continue
                try:
                    for line in repair(step):
                        repaired.append({"journal": os.path.basename(path), "job": data.get("job"), "repair": line})
                except BackupError as exc:
                    left.insert(0, step)
                    warnings.append("journal %s (%s killed at %s): %s" % (path, data.get("job"), data.get("started"), exc))
            if left:
                data["steps"] = left
                write_json(path, data)
                warnings.append("journal %s of an interrupted %s still holds %s: the next run of the module that owns "
                                "them repairs them (or read the file and repair by hand)"
                                % (path, data.get("job"), ", ".join(sorted(set(s.get("step") for s in left)))))
            else:
                _remove_job_files(path)
        finally:
            os.close(fd)
    return repaired, warnings


def pending(directory):
    """One line per journal of a dead run, for check mode (which repairs nothing)."""
    lines = []
    if directory is None:
        return lines
    for path, fd, data in _dead_runs(directory):
        os.close(fd)
        steps = ", ".join(step.get("step") for step in data.get("steps", []))
        lines.append("journal %s: an interrupted %s left %s" % (path, data.get("job"), steps))
    return lines
