# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup health as a Prometheus textfile-collector file, one file per environment.

node_exporter reads ``<textfile dir>/*.prom`` at every scrape, so the file is replaced
atomically (``.partial`` + rename, never a half-written file) and is world-readable.
The last success and failure timestamps must survive runs that do not touch them, so
every write reads the previous file first and changes only its own kind.
"""

import contextlib
import fcntl
import os
import re
import time

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import (
    AtomicFile,
    BackupError,
    check_environment,
)

PREFIX = "minimarket_backup_"
KINDS = ("database", "volumes", "verify")
STATUSES = ("success", "failure")
FILE_MODE = 0o644
METRICS = (
    ("last_success_timestamp_seconds", "Unix time of the last successful backup run (0: none recorded yet)."),
    ("last_failure_timestamp_seconds", "Unix time of the last failed backup run (0: none recorded yet)."),
    ("last_duration_seconds", "Duration of the last backup run, successful or not."),
    ("last_size_bytes", "Size of the archive written by the last successful backup run."),
    ("last_verification_ok", "1 if the last verification of the backups passed, 0 if it failed."),
    ("last_repairs", "Repairs the last run made first, from the intent journal of an interrupted run (0: none)."),
)
NAMES = tuple(name for name, _help in METRICS)
SAMPLE_RE = re.compile(
    r'^%s(?P<name>[a-z_]+)\{kind="(?P<kind>[a-z]+)",environment="(?P<env>[A-Za-z0-9-]+)"\} (?P<value>\S+)$' % PREFIX
)


def file_name(environment):
    check_environment(environment)
    return "%s%s.prom" % (PREFIX, environment)


def parse(text):
    """Return ({(kind, env): {name: value}}, number of lines that were not ours and are dropped)."""
    series = {}
    ignored = 0
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = SAMPLE_RE.match(line)
        value = None
        if match and match.group("name") in NAMES:
            try:
                value = float(match.group("value"))
            except ValueError:
                value = None
        if value is None:
            ignored += 1
            continue
        series.setdefault((match.group("kind"), match.group("env")), {})[match.group("name")] = value
    return series, ignored


def _number(value):
    return "%d" % value if float(value).is_integer() else repr(float(value))


def render(series):
    lines = []
    for name, help_text in METRICS:
        lines.append("# HELP %s%s %s" % (PREFIX, name, help_text))
        lines.append("# TYPE %s%s gauge" % (PREFIX, name))
        for (kind, env) in sorted(series):
            if name in series[(kind, env)]:
                lines.append('%s%s{kind="%s",environment="%s"} %s' % (PREFIX, name, kind, env, _number(series[(kind, env)][name])))
    return "\n".join(lines) + "\n"


def record(series, kind, environment, status, timestamp, duration=None, size=None, verified=None, repairs=None):
    """Apply one run to ``series`` in place and return the samples of that kind and environment."""
    if kind not in KINDS:
        raise BackupError("kind must be one of %s, not %r" % (", ".join(KINDS), kind))
    if status not in STATUSES:
        raise BackupError("status must be success or failure, not %r" % (status,))
    check_environment(environment)
    for label, value in (("duration", duration), ("size", size), ("timestamp", timestamp), ("repairs", repairs)):
        if value is not None and value < 0:
            raise BackupError("%s must not be negative (got %s)" % (label, value))
    entry = series.setdefault((kind, environment), {})
    entry.setdefault("last_success_timestamp_seconds", 0)
    entry.setdefault("last_failure_timestamp_seconds", 0)
    entry["last_%s_timestamp_seconds" % status] = timestamp
    if duration is not None:
        entry["last_duration_seconds"] = duration
    if size is not None and status == "success":
        entry["last_size_bytes"] = size
    if verified is not None:
        entry["last_verification_ok"] = 1 if verified else 0
    if status == "failure" and kind == "verify":
        entry["last_verification_ok"] = 0
    if repairs is not None:
        entry["last_repairs"] = repairs
    return dict(entry)


@contextlib.contextmanager
def _directory_lock(directory):
    """flock on the directory itself: concurrent runs of other kinds must not lose each other's update."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise BackupError("textfile directory %s is not usable: %s; create it or set the right path" % (directory, exc.strerror))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path):
    try:
        with open(path, "r") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise BackupError("cannot read %s: %s; fix its permissions or remove it" % (path, exc.strerror))


def update_file(path, kind, environment, status, timestamp=None, duration=None, size=None, verified=None, write=True,
                repairs=None):
    """Record one run in the file at ``path``; returns (before text, after text, samples, ignored lines).

    With ``write=False`` (check mode) a missing directory is fine: the role would create it first.
    """
    directory = os.path.dirname(os.path.abspath(path))
    timestamp = round(time.time(), 3) if timestamp is None else timestamp
    if not os.path.isdir(directory):
        if write:
            raise BackupError("textfile directory %s does not exist; create it or set the right path" % directory)
        series = {}
        samples = record(series, kind, environment, status, timestamp, duration, size, verified, repairs)
        return "", render(series), samples, 0
    with _directory_lock(directory):
        before = _read(path)
        series, ignored = parse(before)
        samples = record(series, kind, environment, status, timestamp, duration, size, verified, repairs)
        after = render(series)
        if write:
            with AtomicFile(path, locked=True) as out:
                os.fchmod(out.handle.fileno(), FILE_MODE)
                out.handle.write(after.encode("utf-8"))
                out.commit()
    return before, after, samples, ignored
