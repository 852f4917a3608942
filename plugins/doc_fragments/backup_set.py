# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """Which backup set and where it lives, named alike in every module (argument specs: module_utils._vocabulary)."""

    DOCUMENTATION = r"""
options:
  backup_dir:
    description:
      - The local directory of the set's backups, for example C(/var/backups/minimarket/database) or
        C(/var/backups/minimarket/volumes). A backup is written there, C(src=latest) looks there, and the set is listed,
        pruned, pushed from and fetched into there.
      - Restore and verify of an explicit C(src) (a path) do not need it.
    type: path
    aliases: [dest, path, src_dir]
"""

    ENVIRONMENT = r"""
options:
  environment:
    description:
      - The environment of the backup set (letters, digits and C(-)), as in its file names
        C(<kind>_<environment>_<YYYYMMDD_HHMMSS>.tar.gz).
      - Needed to write a backup and for O(src=latest); there is no default, a task without it fails naming it.
        Restore and verify of an explicit O(src) do not need it (the file name carries it).
    type: str
"""

    SET = r"""
options:
  kind:
    description:
      - The kind of backups of the set, the first part of their file names.
    type: str
    choices: [database, volumes]
    required: true
  environment:
    description:
      - The environment of the backup set (letters, digits and C(-)), as in its file names
        C(<kind>_<environment>_<YYYYMMDD_HHMMSS>.tar.gz).
    type: str
    required: true
"""
