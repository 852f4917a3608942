#!/usr/bin/python
# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


DOCUMENTATION = r"""
---
module: backup_info
short_description: List the backups of one set, local or at the second location, with which are complete and the newest complete one
version_added: 0.1.0
description:
  - Lists the backups of one O(kind) and O(environment) in a local directory (O(backup_dir)) or at the second location
    (O(remote), the rclone remote of M(minimarket.backup.backup_offsite)), newest first, each with its time, size and
    whether it is complete, and if not, why.
  - A backup is complete when its C(_metadata.json) exists, is a JSON object, names the archive and records its size and
    sha256, and the archive has that size. This is the rule the restore modules use for C(src=latest), the one
    M(minimarket.backup.backup_prune) and M(minimarket.backup.backup_offsite) use, for local and remote copies alike.
  - Metadata whose archive is missing is listed too (under the metadata file's name), as incomplete.
  - RV(latest) is the newest complete backup, the one a restore with C(src=latest) would take (when O(checksum)
    is false). Roles use it instead of reading file names.
  - Reads only; nothing is created, changed or deleted.
author:
  - Mini Market operations (!UNKNOWN)
requirements:
  - rclone (Debian package C(rclone), 1.60 or later), only with O(remote)
attributes:
  check_mode:
    description: Reads only, so it runs in check mode exactly as without it.
    support: full
  diff_mode:
    description: Nothing changes, so there is no diff.
    support: none
  idempotent:
    description: Never changes anything.
    support: full
extends_documentation_fragment:
  - minimarket.backup.backup_set
  - minimarket.backup.backup_set.SET
options:
  remote:
    description:
      - The rclone path of the remote directory, C(<remote name>:<path>), as for M(minimarket.backup.backup_offsite),
        for example C(offsite:minimarket/production/database).
      - Exactly one of O(backup_dir) (a directory that does not exist holds no backups) and O(remote) is required.
    type: str
  rclone_config:
    description:
      - With O(remote), path of an existing C(rclone.conf) that defines the remote.
    type: path
  remote_config:
    description:
      - With O(remote), the remote's rclone settings, as for M(minimarket.backup.backup_offsite) (C(type) plus the
        backend's options). Keep it in Ansible Vault.
      - Settings named like secrets are masked in the module's output; they reach rclone only through its environment.
    type: dict
  checksum:
    description:
      - Also read every complete archive (streamed back from the remote with O(remote)) and compare its sha256 with its
        metadata; one that differs is reported as incomplete, with the problem.
      - Without it, a backup whose bytes changed but whose size did not still counts as complete; the restore modules
        check the sha256 before they touch anything.
    type: bool
    default: false
notes:
  - Times are the UTC timestamps in the file names, as for the other modules of the collection.
seealso:
  - module: minimarket.backup.backup_offsite
  - module: minimarket.backup.backup_prune
"""

EXAMPLES = r"""
- name: List the database backups of production on this host
  minimarket.backup.backup_info:
    kind: database
    environment: production
    backup_dir: /var/backups/minimarket/database
  register: database_backups

- name: Say which backup a restore with src=latest would take
  ansible.builtin.debug:
    msg: >-
      {{ database_backups.latest.name ~ ' (' ~ database_backups.latest.created ~ ')'
         if database_backups.latest else 'no complete database backup' }}

- name: List the volume archives at the second location and read each one back
  minimarket.backup.backup_info:
    kind: volumes
    environment: production
    remote: offsite:minimarket/production/volumes
    remote_config: "{{ minimarket_offsite_remote_config }}"
    checksum: true
  register: offsite_volumes
"""

RETURN = r"""
location:
  description: Where the backups were listed, O(backup_dir) or O(remote).
  returned: always
  type: str
  sample: /var/backups/minimarket/database
backups:
  description: The backups of the set, newest first, complete or not.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Archive name; for metadata whose archive is missing, the metadata file's name.
      type: str
    path:
      description: Local path of the archive (or of the orphan metadata file).
      type: str
      returned: with O(backup_dir)
    created:
      description: UTC time of the backup (from its name), ISO 8601.
      type: str
    age_seconds:
      description: Seconds since the backup was taken, by its UTC time (negative for a backup dated in the future).
      type: int
    size:
      description: Size of the archive in bytes, null when the archive is missing.
      type: int
    complete:
      description: Whether the backup is complete (see the description).
      type: bool
    sha256:
      description: The archive's sha256 as its metadata records it.
      type: str
      returned: when complete
    problem:
      description: Why the backup is not complete.
      type: str
      returned: when not complete
  sample:
    - name: database_production_20251008_020000.tar.gz
      path: /var/backups/minimarket/database/database_production_20251008_020000.tar.gz
      created: "2025-10-08T02:00:00+00:00"
      age_seconds: 3600
      size: 100
      complete: false
      problem: archive is 100 bytes but metadata records 10485760
    - name: database_production_20251007_020000.tar.gz
      path: /var/backups/minimarket/database/database_production_20251007_020000.tar.gz
      created: "2025-10-07T02:00:00+00:00"
      age_seconds: 90000
      size: 10485760
      complete: true
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
latest:
  description: The newest complete backup (an element of RV(backups)), or null when there is none.
  returned: always
  type: dict
  sample:
    name: database_production_20251007_020000.tar.gz
    path: /var/backups/minimarket/database/database_production_20251007_020000.tar.gz
    created: "2025-10-07T02:00:00+00:00"
    age_seconds: 90000
    size: 10485760
    complete: true
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.minimarket.backup.plugins.module_utils import _backup_info
from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import utc_now
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._offsite import Rclone, secret_values
from ansible_collections.minimarket.backup.plugins.module_utils._vocabulary import backup_dir_argument_spec, set_argument_spec


def main():
    argument_spec = set_argument_spec()
    argument_spec.update(backup_dir_argument_spec())
    argument_spec.update(
        remote=dict(type="str"),
        rclone_config=dict(type="path"),
        remote_config=dict(type="dict", no_log=False),
        checksum=dict(type="bool", default=False),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_one_of=[("backup_dir", "remote")],
        mutually_exclusive=[("backup_dir", "remote"), ("rclone_config", "remote_config")],
        required_by=dict(rclone_config="remote", remote_config="remote"),
        supports_check_mode=True,
    )
    params = module.params
    module.no_log_values.update(secret_values(params["remote_config"]))
    try:
        if params["backup_dir"]:
            result = _backup_info.local(params["backup_dir"], params["kind"], params["environment"], utc_now(), params["checksum"])
        else:
            rclone = Rclone(module.get_bin_path("rclone", required=True), params["remote"],
                            rclone_config=params["rclone_config"], remote_config=params["remote_config"])
            result = _backup_info.remote(rclone, params["kind"], params["environment"], utc_now(), params["checksum"])
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, location=params["backup_dir"] or params["remote"], **result)


if __name__ == "__main__":
    main()
