# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The options every module names alike (the table of docs/modules/README.md), and which of them a task needs.

One spec per concept, so no module drifts to its own word for it; the names modules used before stay as
aliases, so existing playbooks keep working.  Which options a task needs is said here once, with one line
naming the fix when one is missing.
"""

KINDS = ("database", "volumes")

# Old names of the backup directory: dest (pg_split_dump, docker_volume_archive, service_check, backup_offsite fetch),
# path (backup_info, backup_prune), src_dir (backup_offsite push).
BACKUP_DIR_ALIASES = ("dest", "path", "src_dir")


def backup_dir_argument_spec():
    """``backup_dir``, where the set lives (doc fragment minimarket.backup.backup_set)."""
    return dict(backup_dir=dict(type="path", aliases=list(BACKUP_DIR_ALIASES)))


def environment_argument_spec():
    """``environment`` of a module that needs it only for some tasks (doc fragment minimarket.backup.backup_set.ENVIRONMENT)."""
    return dict(environment=dict(type="str"))


def set_argument_spec():
    """``kind`` and ``environment`` of a module that always works on one set (doc fragment minimarket.backup.backup_set.SET)."""
    return dict(kind=dict(type="str", choices=list(KINDS), required=True), environment=dict(type="str", required=True))


def missing(params, names, why, fix=None):
    """One line when an option ``why`` needs is not set (None when all are): what is missing, why, and the fix."""
    absent = [name for name in names if params.get(name) in (None, "")]
    if not absent:
        return None
    return "%s not set: %s; %s" % (" and ".join(absent), why, fix or "set " + " and ".join(absent))


def names_files(params, kind, what):
    """The line when a task that writes ``kind`` backups lacks the options naming them, else None."""
    return missing(params, ("backup_dir", "environment"),
                   "%s writes %s_<environment>_<YYYYMMDD_HHMMSS> files into backup_dir" % (what, kind),
                   "set backup_dir and environment (the inventory's minimarket_environment, for example production)")


def finds_latest(params, kind):
    """The line when ``src`` is latest but the set to pick it from is not given, else None.

    An explicit ``src`` needs nothing else: its file name carries the kind and environment.
    """
    if params.get("src") != "latest":
        return None
    return missing(params, ("backup_dir", "environment"),
                   "src=latest picks the newest complete %s backup of an environment in backup_dir" % kind,
                   "set backup_dir and environment, or give src the path of a backup")
