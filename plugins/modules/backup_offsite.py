#!/usr/bin/python
# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


DOCUMENTATION = r"""
---
module: backup_offsite
short_description: Copy complete backups to a second location with rclone, verify them there, prune and fetch them back
version_added: 0.1.0
description:
  - Keeps a second copy of one backup set (one O(kind) and O(environment)) in an rclone remote (SFTP, S3 and every other
    rclone backend), as the shop's guide asks (local for fast recovery, external for disasters).
  - V(push) uploads every complete local backup the remote does not have as a complete backup, newest first. Each archive
    is checked against its local metadata before the upload, then read back from the remote (size from the listing,
    sha256 of the bytes streamed back); only then is the metadata uploaded, so a remote pair looks complete only when its
    archive is verified. A remote archive that fails the check is deleted from the remote. The local backups are never
    changed or deleted.
  - V(push) leaves out local backups that the retention options would delete at the remote right away (returned in
    RV(expired)), so a push followed by V(prune) does not upload the same old backups again on every run.
  - V(prune) applies the retention of M(minimarket.backup.backup_prune) (same options, same rules) to the remote listing;
    the newest complete remote backup is never deleted.
  - V(fetch) downloads one complete remote backup into O(backup_dir) (archive through a C(.partial) file renamed only when its
    sha256 matches the remote metadata, then the metadata), ready to be restored by the restore modules.
  - V(report) reports the remote backups of the set and whether they are complete.
  - The remote's settings and secrets reach rclone only through its environment, never its command line, files in clear or
    the module's output.
author:
  - Mini Market operations (!UNKNOWN)
requirements:
  - rclone (Debian package C(rclone), 1.60 or later)
extends_documentation_fragment:
  - minimarket.backup.retention
  - minimarket.backup.backup_set
  - minimarket.backup.backup_set.SET
attributes:
  check_mode:
    description: Nothing is uploaded, downloaded or deleted; the remote is listed and the plan is returned.
    support: full
  diff_mode:
    description: V(prune) returns the remote file names before and after.
    support: full
  idempotent:
    description:
      - A second V(push) or V(fetch) with the same parameters changes nothing.
      - A later V(prune) may delete remote backups that have aged out in the meantime.
    support: full
options:
  state:
    description:
      - V(push) copies complete local backups to the remote, V(prune) applies the retention there, V(fetch) downloads one
        remote backup, V(report) only reports.
    type: str
    choices: [push, prune, fetch, report]
    default: push
  remote:
    description:
      - The rclone path of the remote directory, C(<remote name>:<path>), for example C(offsite:minimarket/production/database)
        (SFTP) or C(offsite:my-bucket/production/database) (S3).
    type: str
    required: true
  rclone_config:
    description:
      - Path of an existing C(rclone.conf) that defines the remote (readable only by its owner; rclone's obscured passwords).
      - Without it and without O(remote_config), rclone's default configuration file is used.
    type: path
  remote_config:
    description:
      - The remote's rclone settings, C(type) plus the backend's options, for example C(type=sftp), C(host), C(port),
        C(user), C(key_file), C(known_hosts_file), or C(type=s3), C(provider), C(endpoint), C(access_key_id),
        C(secret_access_key), C(region). Keep it in Ansible Vault.
      - The values of settings named like secrets (C(pass), C(password), C(secret_access_key), C(access_key_id), C(token),
        C(session_token), C(key_pem), ...) are masked in the module's output like C(no_log) values; the other
        settings (host, port, user, region) are not secret and stay readable.
      - They are given to rclone as C(RCLONE_CONFIG_<NAME>_<OPTION>) environment variables of the rclone process only.
        C(pass), C(password), C(password2) and C(key_file_pass) are obscured with C(rclone obscure) (through its standard
        input) first, as rclone expects.
    type: dict
  src:
    description:
      - With O(state=fetch), V(latest) (the newest complete remote backup of the set) or the archive name of one.
      - A path is accepted; only its file name is used.
    type: str
    default: latest
    aliases: [backup]
  checksum:
    description:
      - With O(state=report), also stream every complete remote archive back and compare its sha256 with its metadata.
    type: bool
    default: false
notes:
  - Incomplete local backups (no metadata, or an archive whose size differs from its metadata) are never pushed; they are
    returned in RV(incomplete).
  - O(state=push) stops at the first failed transfer and fails, naming the backup, the reason and what was pushed before.
  - Remote deletions (prune, a failed verification) remove the metadata before the archive, so a half-deleted pair never
    looks complete.
seealso:
  - module: minimarket.backup.backup_prune
  - name: rclone environment configuration
    description: How rclone reads a remote's settings from RCLONE_CONFIG_<NAME>_<OPTION>.
    link: https://rclone.org/docs/#config-file
"""

EXAMPLES = r"""
- name: Copy the new database dumps to the SFTP server and verify them there
  minimarket.backup.backup_offsite:
    state: push
    remote: offsite:minimarket/production/database
    remote_config: "{{ minimarket_offsite_remote_config }}"
    kind: database
    environment: production
    backup_dir: /var/backups/minimarket/database

- name: Keep 90 days and 12 monthly backups at the second location
  minimarket.backup.backup_offsite:
    state: prune
    remote: offsite:minimarket-backups/production/database
    rclone_config: /etc/minimarket/rclone.conf
    kind: database
    environment: production
    retention_days: 90
    keep_monthly: 12

- name: Fetch the newest complete dump back after the local disk was lost
  minimarket.backup.backup_offsite:
    state: fetch
    remote: offsite:minimarket/production/database
    remote_config: "{{ minimarket_offsite_remote_config }}"
    kind: database
    environment: production
    src: latest
    backup_dir: /var/backups/minimarket/database
  register: fetched

- name: Restore the fetched dump
  minimarket.backup.pg_split_dump:
    state: restore
    src: "{{ fetched.path }}"
    db: minimarket
"""

RETURN = r"""
pushed:
  description: Archives uploaded and verified (in check mode, that would be uploaded), newest first.
  returned: state is push
  type: list
  elements: str
  sample: [database_production_20251007_020000.tar.gz]
already_remote:
  description:
    - Archives already complete at the remote with the same sha256, so not copied again.
    - Called C(skipped) before; renamed because Ansible shows a task returning a non-empty C(skipped) as skipped.
  returned: state is push
  type: list
  elements: str
  sample: [database_production_20251006_020000.tar.gz]
expired:
  description: Complete local backups not pushed because the retention options would delete them at the remote at once.
  returned: state is push
  type: list
  elements: str
  sample: [database_production_20240101_020000.tar.gz]
failed:
  description: Backups that could not be pushed, with the reason.
  returned: state is push
  type: list
  elements: dict
  sample:
    - name: database_production_20251007_020000.tar.gz
      reason: "uploading database_production_20251007_020000.tar.gz to offsite:minimarket failed: connection refused"
incomplete:
  description: Local backups that are not complete and so were not pushed.
  returned: state is push
  type: list
  elements: dict
  sample:
    - name: database_production_20251007_030000.tar.gz
      problem: metadata file database_production_20251007_030000_metadata.json is missing
bytes:
  description: Bytes of the archives pushed or fetched (in check mode, that would be).
  returned: state is push or fetch
  type: int
  sample: 10485760
duration:
  description: Seconds the push or fetch took.
  returned: state is push or fetch
  type: float
  sample: 4.2
deleted:
  description: Remote backups deleted by the retention (in check mode, that would be), newest first, as in M(minimarket.backup.backup_prune).
  returned: state is prune
  type: list
  elements: dict
  sample:
    - name: database_production_20250101_020000.tar.gz
      created: "2025-01-01T02:00:00+00:00"
      state: complete
      files: [database_production_20250101_020000_metadata.json, database_production_20250101_020000.tar.gz]
      reason: not kept by any rule
      bytes: 10485760
kept:
  description: Remote backups kept, newest first, with the rules that kept them, as in M(minimarket.backup.backup_prune).
  returned: state is prune
  type: list
  elements: dict
  sample:
    - name: database_production_20250131_020000.tar.gz
      created: "2025-01-31T02:00:00+00:00"
      state: complete
      files: [database_production_20250131_020000_metadata.json, database_production_20250131_020000.tar.gz]
      reasons: [within 30 days, last backup]
bytes_freed:
  description: Total size of the remote files deleted (in check mode, that would be).
  returned: state is prune
  type: int
  sample: 10485760
backups:
  description:
    - The remote backups of the set, newest first, judged and shaped as M(minimarket.backup.backup_info) lists them
      (the same function decides RV(latest)); each incomplete one has its C(problem).
  returned: state is report
  type: list
  elements: dict
  sample:
    - name: database_production_20251007_020000.tar.gz
      created: "2025-10-07T02:00:00+00:00"
      age_seconds: 3600
      complete: true
      size: 10485760
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
latest:
  description: The name of the newest complete remote backup (null when none is), as M(minimarket.backup.backup_info) decides it.
  returned: state is report
  type: str
  sample: database_production_20251007_020000.tar.gz
name:
  description: The archive fetched (or already present locally).
  returned: state is fetch
  type: str
  sample: database_production_20251007_020000.tar.gz
path:
  description: Local path of the fetched archive, to pass as C(src) to the restore modules.
  returned: state is fetch
  type: str
  sample: /var/backups/minimarket/database/database_production_20251007_020000.tar.gz
metadata:
  description: Local path of the fetched archive's metadata.
  returned: state is fetch
  type: str
  sample: /var/backups/minimarket/database/database_production_20251007_020000_metadata.json
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.minimarket.backup.plugins.module_utils import _backup_info
from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import utc_now
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._offsite import (
    Rclone,
    fetch,
    prune,
    push,
    push_failure_message,
    secret_values,
)
from ansible_collections.minimarket.backup.plugins.module_utils._retention import POLICY_ARGUMENT_SPEC, policy_from_params
from ansible_collections.minimarket.backup.plugins.module_utils._vocabulary import backup_dir_argument_spec, set_argument_spec


def main():
    argument_spec = dict(
        state=dict(type="str", choices=["push", "prune", "fetch", "report"], default="push"),
        remote=dict(type="str", required=True),
        rclone_config=dict(type="path"),
        remote_config=dict(type="dict", no_log=False),
        src=dict(type="str", default="latest", aliases=["backup"]),
        checksum=dict(type="bool", default=False),
    )
    argument_spec.update(POLICY_ARGUMENT_SPEC)
    argument_spec.update(set_argument_spec())
    argument_spec.update(backup_dir_argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("rclone_config", "remote_config")],
        required_if=[("state", "push", ["backup_dir"]), ("state", "fetch", ["backup_dir"])],
        supports_check_mode=True,
    )
    params = module.params
    # Only the secret settings are masked: masking the whole dict would also mask its port or host inside backup names.
    module.no_log_values.update(secret_values(params["remote_config"]))

    try:
        rclone = Rclone(module.get_bin_path("rclone", required=True), params["remote"],
                        rclone_config=params["rclone_config"], remote_config=params["remote_config"])
        kind, environment = params["kind"], params["environment"]
        if params["state"] == "push":
            result = push(rclone, params["backup_dir"], kind, environment, policy_from_params(params), utc_now(), module.check_mode)
            if result["failed"]:
                module.fail_json(msg=push_failure_message(result, params["remote"]), **result)
            module.exit_json(changed=bool(result["pushed"]), **result)
        if params["state"] == "prune":
            result = prune(rclone, kind, environment, policy_from_params(params), utc_now(), module.check_mode)
            for warning in result.pop("warnings"):
                module.warn(warning)
            before, after = result.pop("files_before"), result.pop("files_after")
            if module._diff:
                result["diff"] = dict(before_header=params["remote"], after_header=params["remote"],
                                      before="".join(name + "\n" for name in before),
                                      after="".join(name + "\n" for name in after))
            module.exit_json(changed=bool(result["deleted"]), **result)
        if params["state"] == "fetch":
            result = fetch(rclone, kind, environment, params["src"], params["backup_dir"], module.check_mode)
            module.exit_json(**result)
        report = _backup_info.remote(rclone, kind, environment, utc_now(), params["checksum"])
        module.exit_json(changed=False, backups=report["backups"], latest=report["latest"]["name"] if report["latest"] else None)
    except BackupError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
