#!/usr/bin/python
# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


DOCUMENTATION = r"""
---
module: backup_prune
short_description: Delete old backups of one set, never the last good one
version_added: 0.1.0
description:
  - Applies a retention policy to one backup set (one O(kind) and O(environment)) in O(backup_dir), and deletes the
    backups it does not keep, archive and metadata together.
  - A backup is kept if any rule keeps it. O(retention_days) keeps everything younger than that many days (the documented
    C(RETENTION_DAYS) rule); O(keep_last) keeps the newest complete backups; O(keep_hourly), O(keep_daily), O(keep_weekly),
    O(keep_monthly) and O(keep_yearly) follow C(restic forget) (newest to oldest, the newest backup of each distinct UTC
    hour, day, ISO week, month or year fills one slot until the count is used up; while slots are left, the oldest
    backup is kept as well).
  - Only complete backups (metadata present, naming the archive, with the archive's size and a sha256; the rule of
    M(minimarket.backup.backup_info)) count toward the keep rules.
    If the policy would delete every complete backup, the newest one is kept and a warning is returned.
  - An incomplete backup (archive without valid metadata, or metadata without its archive) is deleted only when it is
    older than O(retention_days), older than O(partial_max_age) and older than the newest complete backup.
  - C(.partial) files left by interrupted runs are deleted once older than O(partial_max_age).
  - Ages come from the UTC timestamp in the file name, never from the modification time.
  - Files outside the naming scheme, of another kind or environment, and anything that is not a regular file are never
    touched.
  - While deleting, the module holds the set's backup lock, so it cannot race a backup of the same set.
author:
  - Mini Market operations (!UNKNOWN)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    description:
      - When run twice in a row with the same parameters, the second run deletes nothing.
      - A later run may delete backups that have aged out in the meantime.
    support: full
options:
  kind:
    description:
      - The kind of backups of the set, the first part of their file names. Required unless O(prefix) is given.
    type: str
    choices: [database, volumes]
  environment:
    description:
      - The environment of the backup set (letters, digits and C(-)), as in its file names. Required with O(kind).
      - Only backups whose kind and environment are exactly these are considered; V(prod) does not match
        C(database_prod-eu_...).
    type: str
  prefix:
    description:
      - The old way to name the set, C(<kind>_<environment>_), for example C(database_production_); still accepted.
        Use O(kind) and O(environment) instead (mutually exclusive with them).
      - Also mutually exclusive with an O(environment) that C(module_defaults) gives the play through
        C(group/minimarket.backup.backup_set); in such a play, name the set with O(kind).
    type: str
extends_documentation_fragment:
  - minimarket.backup.retention
  - minimarket.backup.backup_set
  - minimarket.backup.attributes
notes:
  - Days, weeks, months and years are UTC, like the timestamps in the file names.
seealso:
  - name: restic forget
    description: The keep rules follow restic's policy.
    link: https://restic.readthedocs.io/en/stable/060_forget.html
"""

EXAMPLES = r"""
- name: Keep 30 days, at least 3 backups, and 7 daily, 4 weekly and 12 monthly backups
  minimarket.backup.backup_prune:
    backup_dir: /var/backups/minimarket/database
    kind: database
    environment: production
    retention_days: 30
    keep_last: 3
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 12
    partial_max_age: 1d

- name: Show what would be deleted, without deleting
  minimarket.backup.backup_prune:
    backup_dir: /var/backups/minimarket/volumes
    kind: volumes
    environment: staging
    retention_days: 14
  check_mode: true
  diff: true
  register: plan
"""

RETURN = r"""
deleted:
  description:
    - What was deleted (in check mode, what would be deleted), newest first.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Archive name, or the file name of an orphan metadata file or C(.partial) leftover.
      type: str
    created:
      description: UTC time from the file name, ISO 8601.
      type: str
    state:
      description: V(complete), V(incomplete) or V(partial).
      type: str
    problem:
      description: Why an incomplete backup is not complete.
      type: str
      returned: when state is incomplete
    files:
      description: File names deleted, metadata before archive.
      type: list
      elements: str
    reason:
      description: Why it was deleted.
      type: str
    bytes:
      description: Bytes freed by deleting it.
      type: int
  sample:
    - name: database_production_20250101_020000.tar.gz
      created: "2025-01-01T02:00:00+00:00"
      state: complete
      files:
        - database_production_20250101_020000_metadata.json
        - database_production_20250101_020000.tar.gz
      reason: not kept by any rule
      bytes: 10485760
kept:
  description:
    - What was kept, newest first, with every rule that kept it (like restic's reasons).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Archive name, or the file name of an orphan metadata file or C(.partial) leftover.
      type: str
    created:
      description: UTC time from the file name, ISO 8601.
      type: str
    state:
      description: V(complete), V(incomplete) or V(partial).
      type: str
    problem:
      description: Why an incomplete backup is not complete.
      type: str
      returned: when state is incomplete
    files:
      description: File names of the backup.
      type: list
      elements: str
    reasons:
      description: The rules that kept it, for example V(within 30 days), V(last backup), V(daily backup), V(weekly backup).
      type: list
      elements: str
  sample:
    - name: database_production_20250131_020000.tar.gz
      created: "2025-01-31T02:00:00+00:00"
      state: complete
      files:
        - database_production_20250131_020000_metadata.json
        - database_production_20250131_020000.tar.gz
      reasons:
        - within 30 days
        - last backup
        - daily backup
bytes_freed:
  description: Total size of the deleted files (in check mode, of the files that would be deleted).
  returned: always
  type: int
  sample: 10485760
warnings:
  description: Things an operator should look at, for example that the newest complete backup is older than O(retention_days).
  returned: always
  type: list
  elements: str
  sample:
    - "the newest complete backup, database_production_20250101_020000.tar.gz, is older than 30 days: check that backups still run"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import check_environment, utc_now
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._retention import POLICY_ARGUMENT_SPEC, policy_from_params, prune
from ansible_collections.minimarket.backup.plugins.module_utils._vocabulary import KINDS, backup_dir_argument_spec, missing


def main():
    argument_spec = dict(
        kind=dict(type="str", choices=list(KINDS)),
        environment=dict(type="str"),
        prefix=dict(type="str"),
    )
    argument_spec.update(POLICY_ARGUMENT_SPEC)
    argument_spec.update(backup_dir_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[("prefix", "kind"), ("prefix", "environment")],
                           required_together=[("kind", "environment")])
    params = module.params
    problem = missing(params, ("backup_dir",), "backup_prune deletes backups in backup_dir") or (
        None if params["prefix"] else missing(params, ("kind", "environment"), "backup_prune prunes one set"))
    if problem:
        module.fail_json(msg=problem)
    try:
        policy = policy_from_params(params)
        prefix = params["prefix"] or "%s_%s_" % (params["kind"], check_environment(params["environment"]))
        result = prune(params["backup_dir"], prefix, policy, utc_now(), module.check_mode)
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    for warning in result["warnings"]:
        module.warn(warning)
    output = dict(
        changed=bool(result["deleted"]),
        deleted=result["deleted"],
        kept=result["kept"],
        bytes_freed=result["bytes_freed"],
    )
    if module._diff:
        output["diff"] = dict(
            before_header=params["backup_dir"],
            after_header=params["backup_dir"],
            before="".join(name + "\n" for name in result["files_before"]),
            after="".join(name + "\n" for name in result["files_after"]),
        )
    module.exit_json(**output)


if __name__ == "__main__":
    main()
