# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup health as a Prometheus textfile-collector file, one file per environment.

node_exporter reads ``<textfile dir>/*.prom`` at every scrape, so the file is replaced
atomically (``.partial`` + rename, never a half-written file) and is world-readable.
The last success and failure timestamps must survive runs that do not touch them, so
every write reads the previous file first and changes only its own kind.

A verification run also records what its checks found: one series per service started
on the restored volumes (``service`` label) and one for the point-in-time recovery drill.
Series are keyed by their labels as ``((label, value), ...)`` in the order they are written.
"""

import contextlib
import fcntl
import os
import re
import time

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import check_environment
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._files import AtomicFile

PREFIX = "minimarket_backup_"
KINDS = ("database", "volumes", "verify")
STATUSES = ("success", "failure")
FILE_MODE = 0o644
RUN_LABELS = ("kind", "environment")
SERVICE_LABELS = ("service", "environment")
PITR_LABELS = ("environment",)
METRICS = (
    ("last_success_timestamp_seconds", RUN_LABELS, "Unix time of the last successful backup run (0: none recorded yet)."),
    ("last_failure_timestamp_seconds", RUN_LABELS, "Unix time of the last failed backup run (0: none recorded yet)."),
    ("last_duration_seconds", RUN_LABELS, "Duration of the last backup run, successful or not."),
    ("last_size_bytes", RUN_LABELS, "Size of the archive written by the last successful backup run."),
    ("last_verification_ok", RUN_LABELS, "1 if the last verification of the backups passed, 0 if it failed."),
    ("last_repairs", RUN_LABELS, "Repairs the last run made first, from the intent journal of an interrupted run (0: none)."),
    ("service_check_ok", SERVICE_LABELS,
     "1 if the service, started on the volumes restored by the last verification, answered as expected; 0 if not."),
    ("service_check_timestamp_seconds", SERVICE_LABELS, "Unix time the service was last checked on restored volumes."),
    ("pitr_verification_ok", PITR_LABELS,
     "1 if the last point-in-time recovery drill (scratch copy recovered and checked) passed, 0 if it failed."),
    ("pitr_verification_timestamp_seconds", PITR_LABELS, "Unix time of the last point-in-time recovery drill."),
)
NAMES = tuple(name for name, _labels, _help in METRICS)
LABELS = dict((name, labels) for name, labels, _help in METRICS)
SAMPLE_RE = re.compile(r'^%s(?P<name>[a-z_]+)\{(?P<labels>[^{}]*)\} (?P<value>\S+)$' % PREFIX)
LABEL_RE = re.compile(r'^(?P<label>[a-z]+)="(?P<value>[A-Za-z0-9][A-Za-z0-9_.-]*)"$')
SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def file_name(environment):
    check_environment(environment)
    return "%s%s.prom" % (PREFIX, environment)


def run_key(kind, environment):
    return (("kind", kind), ("environment", environment))


def service_key(service, environment):
    return (("service", service), ("environment", environment))


def pitr_key(environment):
    return (("environment", environment),)


def _labels(text):
    """((label, value), ...) of a sample's label text, or None if it is not a plain list of our label values."""
    pairs = []
    for item in text.split(","):
        match = LABEL_RE.match(item)
        if not match:
            return None
        pairs.append((match.group("label"), match.group("value")))
    return tuple(pairs)


def parse(text):
    """Return ({label key: {name: value}}, number of lines that were not ours and are dropped)."""
    series = {}
    ignored = 0
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = SAMPLE_RE.match(line)
        key = _labels(match.group("labels")) if match else None
        value = None
        if key and match.group("name") in NAMES and tuple(label for label, _value in key) == LABELS[match.group("name")]:
            try:
                value = float(match.group("value"))
            except ValueError:
                value = None
        if value is None:
            ignored += 1
            continue
        series.setdefault(key, {})[match.group("name")] = value
    return series, ignored


def _number(value):
    return "%d" % value if float(value).is_integer() else repr(float(value))


def render(series):
    lines = []
    for name, labels, help_text in METRICS:
        lines.append("# HELP %s%s %s" % (PREFIX, name, help_text))
        lines.append("# TYPE %s%s gauge" % (PREFIX, name))
        for key in sorted(series):
            if name in series[key] and tuple(label for label, _value in key) == labels:
                text = ",".join('%s="%s"' % pair for pair in key)
                lines.append("%s%s{%s} %s" % (PREFIX, name, text, _number(series[key][name])))
    return "\n".join(lines) + "\n"


def _service_results(service_checks):
    """{service: ok} of the ``services`` list a service_check run returned; a malformed entry is refused."""
    results = {}
    for number, entry in enumerate(service_checks, 1):
        service = entry.get("service") if isinstance(entry, dict) else None
        ok = entry.get("ok") if isinstance(entry, dict) else None
        if not isinstance(service, str) or not SERVICE_RE.match(service) or not isinstance(ok, bool):
            raise BackupError("service_checks entry %d (service %r, ok %r) needs service (a compose service name) and ok "
                              "(true or false): pass the services list of minimarket.backup.service_check" % (number, service, ok))
        if service in results:
            raise BackupError("service_checks name service %s twice: pass one result per service" % service)
        results[service] = ok
    return results


def record(series, kind, environment, status, timestamp, duration=None, size=None, verified=None, repairs=None,
           service_checks=None, pitr_verified=None):
    """Apply one run to ``series`` in place and return the samples of that kind and environment.

    ``service_checks`` (a verification run only) replaces the environment's service series,
    so a service no longer checked disappears; with ``pitr_verified`` the drill's series are set.
    """
    if kind not in KINDS:
        raise BackupError("kind must be one of %s, not %r" % (", ".join(KINDS), kind))
    if status not in STATUSES:
        raise BackupError("status must be success or failure, not %r" % (status,))
    check_environment(environment)
    for label, value in (("duration", duration), ("size", size), ("timestamp", timestamp), ("repairs", repairs)):
        if value is not None and value < 0:
            raise BackupError("%s must not be negative (got %s)" % (label, value))
    if kind != "verify" and (service_checks is not None or pitr_verified is not None):
        raise BackupError("service_checks and pitr_verified are results of a verification: use them with kind=verify")
    services = None if service_checks is None else _service_results(service_checks)
    entry = series.setdefault(run_key(kind, environment), {})
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
    samples = dict(entry)
    if services is not None:
        for key in [key for key in series if key[0][0] == "service" and key[1] == ("environment", environment)]:
            del series[key]
        for service, ok in services.items():
            series[service_key(service, environment)] = {"service_check_ok": 1 if ok else 0,
                                                         "service_check_timestamp_seconds": timestamp}
        samples["service_check_ok"] = dict((service, 1 if ok else 0) for service, ok in services.items())
    if pitr_verified is not None:
        series[pitr_key(environment)] = {"pitr_verification_ok": 1 if pitr_verified else 0,
                                         "pitr_verification_timestamp_seconds": timestamp}
        samples["pitr_verification_ok"] = 1 if pitr_verified else 0
    return samples


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
                repairs=None, service_checks=None, pitr_verified=None):
    """Record one run in the file at ``path``; returns (before text, after text, samples, ignored lines).

    With ``write=False`` (check mode) a missing directory is fine: the role would create it first.
    """
    directory = os.path.dirname(os.path.abspath(path))
    timestamp = round(time.time(), 3) if timestamp is None else timestamp
    if not os.path.isdir(directory):
        if write:
            raise BackupError("textfile directory %s does not exist; create it or set the right path" % directory)
        series = {}
        samples = record(series, kind, environment, status, timestamp, duration, size, verified, repairs,
                         service_checks=service_checks, pitr_verified=pitr_verified)
        return "", render(series), samples, 0
    with _directory_lock(directory):
        before = _read(path)
        series, ignored = parse(before)
        samples = record(series, kind, environment, status, timestamp, duration, size, verified, repairs,
                         service_checks=service_checks, pitr_verified=pitr_verified)
        after = render(series)
        if write:
            with AtomicFile(path, locked=True) as out:
                os.fchmod(out.handle.fileno(), FILE_MODE)
                out.handle.write(after.encode("utf-8"))
                out.commit()
    return before, after, samples, ignored
