# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention of one backup set: which backups to keep, why, and deleting the rest.

The keep rules follow ``restic forget`` (walk newest to oldest; the newest
backup of each distinct hour/day/ISO week/month/year fills one slot until the
count is used up; while a count is left, the oldest backup is kept too) plus
``retention_days`` (the shop's documented RETENTION_DAYS rule, measured from
now). Only complete backups count. Whatever the policy says, the newest
complete backup is never deleted, and incomplete backups are only deleted when
a complete backup newer than them exists.
"""

import datetime
import errno
import os
import re
import stat

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import (
    ARCHIVE_MISSING,
    PARTIAL_SUFFIX,
    list_backups,
    parse_archive_name,
    parse_metadata_name,
)
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._files import backup_lock, fsync_directory

DURATION_RE = re.compile(r"^(?:\d+[smhdw])+$")
DURATION_PART_RE = re.compile(r"(\d+)([smhdw])")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
PROBE_TIMESTAMP = "20000101_000000.tar"

STATE_COMPLETE = "complete"
STATE_INCOMPLETE = "incomplete"
STATE_PARTIAL = "partial"

# (option, reason, bucket of a UTC datetime); keep_last's bucket is the position.
BUCKET_RULES = (
    ("keep_last", "last backup", None),
    ("keep_hourly", "hourly backup", lambda t: (t.year, t.month, t.day, t.hour)),
    ("keep_daily", "daily backup", lambda t: (t.year, t.month, t.day)),
    ("keep_weekly", "weekly backup", lambda t: tuple(t.isocalendar()[:2])),
    ("keep_monthly", "monthly backup", lambda t: (t.year, t.month)),
    ("keep_yearly", "yearly backup", lambda t: t.year),
)
SAFETY_REASON = "newest complete backup (the policy would delete every complete backup)"

# The policy options as modules take them (doc fragment minimarket.backup.retention); shared so every
# module that prunes (backup_prune locally, backup_offsite on the remote) has the same names and defaults.
POLICY_ARGUMENT_SPEC = dict(
    retention_days=dict(type="int", default=30),
    keep_last=dict(type="int", default=3),
    keep_hourly=dict(type="int", default=0),
    keep_daily=dict(type="int", default=0),
    keep_weekly=dict(type="int", default=0),
    keep_monthly=dict(type="int", default=0),
    keep_yearly=dict(type="int", default=0),
    partial_max_age=dict(type="str", default="1d"),
)


def parse_duration(text, option="partial_max_age"):
    """``1d``, ``12h``, ``30m``, ``1d12h`` ... as a timedelta."""
    value = str(text).strip()
    if not DURATION_RE.match(value):
        raise BackupError(
            "%s %r is not a duration: use a number with a unit s, m, h, d or w (for example 1d, 12h or 30m)" % (option, text)
        )
    seconds = sum(int(number) * DURATION_UNITS[unit] for number, unit in DURATION_PART_RE.findall(value))
    return datetime.timedelta(seconds=seconds)


def parse_prefix(prefix):
    """``database_production_`` -> (kind, environment), checked against the naming scheme itself."""
    parsed = parse_archive_name((prefix or "") + PROBE_TIMESTAMP)
    if parsed is None or "%s_%s_" % parsed[:2] != prefix:
        raise BackupError(
            "prefix %r is not <kind>_<environment>_: use for example database_production_ or volumes_staging_ "
            "(kind in lower-case letters, environment in letters, digits and '-', ending with '_')" % (prefix,)
        )
    return parsed[0], parsed[1]


def format_duration(delta):
    seconds = int(delta.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % DURATION_UNITS[unit] == 0:
            return "%d%s" % (seconds // DURATION_UNITS[unit], unit)
    return "%ds" % seconds


class Policy(object):
    """The retention options of the module, validated."""

    def __init__(self, retention_days=30, keep_last=3, keep_hourly=0, keep_daily=0, keep_weekly=0,
                 keep_monthly=0, keep_yearly=0, partial_max_age="1d"):
        self.retention_days = retention_days
        self.counts = dict(
            keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily,
            keep_weekly=keep_weekly, keep_monthly=keep_monthly, keep_yearly=keep_yearly,
        )
        for option, value in [("retention_days", retention_days)] + sorted(self.counts.items()):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BackupError("%s must be a whole number >= 0 (0 turns the rule off), got %r" % (option, value))
        self.partial_max_age = parse_duration(partial_max_age)


def policy_from_params(params):
    return Policy(**dict((option, params[option]) for option in POLICY_ARGUMENT_SPEC))


class Candidate(object):
    """One thing the policy decides about: a backup pair, an orphan metadata file or a ``.partial`` leftover."""

    def __init__(self, name, created, state, sizes=None, problem=None):
        self.name = name
        self.created = created
        self.state = state
        self.sizes = dict(sizes or {})
        self.files = list(self.sizes)
        self.problem = problem
        self.reasons = []
        self.delete_reason = None

    @property
    def kept(self):
        return bool(self.reasons)

    @property
    def bytes(self):
        return sum(self.sizes[path] for path in self.files)

    def as_dict(self):
        result = dict(
            name=self.name, created=self.created.isoformat(), state=self.state,
            files=[os.path.basename(path) for path in self.files],
        )
        if self.problem:
            result["problem"] = self.problem
        if self.kept:
            result["reasons"] = list(self.reasons)
        else:
            result["reason"] = self.delete_reason
            result["bytes"] = self.bytes
        return result


def _newest_first(candidates):
    return sorted(candidates, key=lambda c: (c.created, c.name), reverse=True)


def apply_bucket_rules(complete, counts):
    """restic's ApplyPolicy on the complete backups: adds the bucket reasons to each kept one."""
    ordered = _newest_first(complete)
    for option, reason, bucket in BUCKET_RULES:
        left = counts.get(option, 0)
        previous = None
        for position, candidate in enumerate(ordered):
            if left == 0:
                break
            value = position if bucket is None else bucket(candidate.created)
            if position == 0 or value != previous or position == len(ordered) - 1:
                candidate.reasons.append(reason)
                previous = value
                left -= 1


def decide(candidates, policy, now):
    """Fill ``reasons`` (kept) or ``delete_reason`` on every candidate; returns warnings.

    Pure: no file system access, ``now`` is passed in so tests control the clock.
    """
    warnings = []
    complete = [c for c in candidates if c.state == STATE_COMPLETE]
    within = datetime.timedelta(days=policy.retention_days)
    within_reason = "within %d days" % policy.retention_days
    for candidate in complete:
        if policy.retention_days and now - candidate.created < within:
            candidate.reasons.append(within_reason)
    apply_bucket_rules(complete, policy.counts)
    newest = _newest_first(complete)[0] if complete else None
    if newest is not None and not any(c.kept for c in complete):
        newest.reasons.append(SAFETY_REASON)
        warnings.append("the policy would delete every complete backup; kept the newest one, %s" % newest.name)
    for candidate in complete:
        if not candidate.kept:
            candidate.delete_reason = "not kept by any rule"

    max_age = policy.partial_max_age
    max_age_text = format_duration(max_age)
    for candidate in candidates:
        age = now - candidate.created
        if candidate.state == STATE_PARTIAL:
            if age < max_age:
                candidate.reasons.append("partial file younger than %s" % max_age_text)
            else:
                candidate.delete_reason = "leftover of an interrupted run, older than %s" % max_age_text
        elif candidate.state == STATE_INCOMPLETE:
            if policy.retention_days and age < within:
                candidate.reasons.append("incomplete, %s" % within_reason)
            if age < max_age:
                candidate.reasons.append("incomplete, younger than %s" % max_age_text)
            if newest is None or candidate.created >= newest.created:
                candidate.reasons.append("incomplete, no complete backup is newer")
            if not candidate.kept:
                candidate.delete_reason = "incomplete (%s), older than the retention and the newest complete backup" % candidate.problem

    if newest is None:
        warnings.append("no complete backup in this set: nothing counts toward the keep rules and incomplete backups are kept")
    elif policy.retention_days and now - newest.created >= within:
        warnings.append(
            "the newest complete backup, %s, is older than %d days: check that backups still run"
            % (newest.name, policy.retention_days)
        )
    future = [c.name for c in candidates if c.created > now]
    if future:
        warnings.append("dated in the future (check the clock): %s" % ", ".join(sorted(future)))
    return warnings


def _regular_size(path):
    """Size of a regular file, None for anything else (only regular files are ever deleted)."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return 0
        raise BackupError("cannot stat %s: %s" % (path, exc.strerror))
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _scheme_of(name):
    """(kind, env, created) for an archive or metadata name of the scheme, else None."""
    parsed = parse_archive_name(name)
    return parsed[:3] if parsed else parse_metadata_name(name)


def require_directory(directory):
    if not os.path.isdir(directory):
        raise BackupError("backup directory %s does not exist or is not a directory: check backup_dir" % directory)


def scan(directory, kind, environment):
    """Candidates of one backup set on disk, plus warnings about names left alone."""
    require_directory(directory)
    warnings = []
    candidates = []
    backups = list_backups(directory, kind, environment)
    paired_metadata = set(backup.metadata_path for backup in backups)
    for backup in backups:
        files = [backup.path]
        if os.path.lexists(backup.metadata_path):
            files.insert(0, backup.metadata_path)
        sizes = [(path, _regular_size(path)) for path in files]
        odd = [os.path.basename(path) for path, size in sizes if size is None]
        if odd:
            warnings.append("%s: not a regular file, left alone with its pair" % odd[0])
            continue
        state = STATE_COMPLETE if backup.complete else STATE_INCOMPLETE
        candidates.append(Candidate(backup.name, backup.created, state, sizes, backup.problem))

    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(PARTIAL_SUFFIX):
            parsed = _scheme_of(name[: -len(PARTIAL_SUFFIX)])
            state = STATE_PARTIAL
            problem = None
        else:
            parsed = parse_metadata_name(name)
            if parsed is None or path in paired_metadata:
                continue
            state = STATE_INCOMPLETE
            problem = ARCHIVE_MISSING
        if parsed is None or parsed[:2] != (kind, environment):
            continue
        size = _regular_size(path)
        if size is None:
            warnings.append("%s: not a regular file, left alone" % name)
            continue
        candidates.append(Candidate(name, parsed[2], state, [(path, size)], problem))
    return candidates, warnings


def _files_to_delete(candidates):
    """Files of the deleted candidates; a metadata file shared with a kept archive stays."""
    claimed = set()
    for candidate in candidates:
        if candidate.kept:
            claimed.update(candidate.files)
    for candidate in candidates:
        if not candidate.kept:
            candidate.files = [path for path in candidate.files if path not in claimed]
            claimed.update(candidate.files)


def plan(directory, prefix, policy, now):
    """Decide without touching anything; returns the result the module reports."""
    kind, environment = parse_prefix(prefix)
    candidates, warnings = scan(directory, kind, environment)
    return plan_candidates(candidates, policy, now, warnings)


def plan_candidates(candidates, policy, now, warnings=()):
    """The decision on candidates from any listing (a local directory, a remote), in the shape the modules report.

    Names in ``files`` may be paths (local) or bare names (remote); the
    ``files_before``/``files_after`` lists hold base names either way.
    """
    warnings = list(warnings) + decide(candidates, policy, now)
    _files_to_delete(candidates)
    ordered = _newest_first(candidates)
    kept = [c for c in ordered if c.kept]
    deleted = [c for c in ordered if not c.kept]
    before = sorted(set(os.path.basename(path) for c in candidates for path in c.sizes))
    gone = set(os.path.basename(path) for c in deleted for path in c.files)
    return dict(
        kept=[c.as_dict() for c in kept],
        deleted=[c.as_dict() for c in deleted],
        bytes_freed=sum(c.bytes for c in deleted),
        warnings=warnings,
        files_before=before,
        files_after=[name for name in before if name not in gone],
        delete_paths=[path for c in deleted for path in c.files],
    )


def delete_files(directory, paths):
    """Metadata goes before its archive, so a half-deleted pair never looks complete."""
    done = []
    for path in paths:
        try:
            os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise BackupError(
                    "cannot delete %s: %s; fix that and run again (already deleted: %s)"
                    % (path, exc.strerror, ", ".join(os.path.basename(p) for p in done) or "nothing")
                )
        done.append(path)
    if done:
        fsync_directory(directory)


def prune(directory, prefix, policy, now, check_mode=False):
    """Plan, then (outside check mode) delete under the set's backup lock so no dump of the set runs meanwhile."""
    kind, environment = parse_prefix(prefix)
    if check_mode and not os.path.lexists(directory):
        # A fresh host: the run creates the directory, so there is nothing to prune (and nothing to warn about).
        return dict(kept=[], deleted=[], bytes_freed=0, warnings=[], files_before=[], files_after=[], delete_paths=[])
    require_directory(directory)
    if check_mode:
        return plan(directory, prefix, policy, now)
    try:
        with backup_lock(directory, kind, environment):
            result = plan(directory, prefix, policy, now)
            delete_files(directory, result["delete_paths"])
    except (OSError, IOError) as exc:
        raise BackupError("cannot prune %s: %s; check that the directory is readable and writable" % (directory, exc))
    return result
