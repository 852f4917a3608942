# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which backups of one set exist, which are complete, and the newest complete one: the answer roles ask for.

Nothing is decided here: the listing is ``_backup_set.list_backups`` on the
disk and ``_offsite.scan_remote`` at the second location, both judged by
``_backup_set.judge``; this only puts them into one shape, so no playbook
has to read a file name to know what a backup is.
"""

import os

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import (
    ARCHIVE_MISSING,
    check_environment,
    checksum_problem,
    list_backups,
    list_orphans,
    sha256_file,
)
from ansible_collections.minimarket.backup.plugins.module_utils._offsite import check_remote_sums, scan_remote


def entry(name, created, size, problem, metadata, now, path=None):
    """One backup as backup_info returns it; ``sha256`` only for a complete one, ``problem`` only for the others."""
    result = dict(name=name, created=created.isoformat(), age_seconds=int((now - created).total_seconds()),
                  size=size, complete=problem is None)
    if path is not None:
        result["path"] = path
    if problem is None:
        result["sha256"] = metadata["sha256"]
    else:
        result["problem"] = problem
    return created, result


def summary(entries):
    """(created, entry) pairs newest first, and ``latest``: the newest complete backup, or None."""
    ordered = [found for unused, found in sorted(entries, key=lambda pair: (pair[0], pair[1]["name"]), reverse=True)]
    return dict(backups=ordered, latest=next((found for found in ordered if found["complete"]), None))


def local(directory, kind, environment, now, checksum=False):
    """The set in a local directory (one that does not exist has none).

    With ``checksum`` every complete archive is read and hashed, so one whose
    bytes changed after its metadata was written is not complete either.
    """
    check_environment(environment)
    backups = list_backups(directory, kind, environment)
    entries = []
    for backup in backups:
        problem = backup.problem
        if problem is None and checksum:
            problem = checksum_problem(sha256_file(backup.path), backup.metadata)
        entries.append(entry(backup.name, backup.created, backup.size, problem, backup.metadata, now, backup.path))
    for name, created in list_orphans(directory, kind, environment, backups):
        entries.append(entry(name, created, None, ARCHIVE_MISSING, None, now, os.path.join(directory, name)))
    return summary(entries)


def remote(rclone, kind, environment, now, checksum=False):
    """The set at the second location, judged like the local one; ``checksum`` streams every complete archive back."""
    remote_set = scan_remote(rclone, kind, environment)
    if checksum:
        check_remote_sums(rclone, remote_set)
    entries = [entry(b.name, b.created, b.size, b.problem, b.metadata, now) for b in remote_set.backups]
    entries.extend(entry(name, created, None, ARCHIVE_MISSING, None, now) for name, created in remote_set.orphans)
    return summary(entries)
