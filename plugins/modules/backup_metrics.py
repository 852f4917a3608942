#!/usr/bin/python
# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


DOCUMENTATION = r"""
---
module: backup_metrics
short_description: Record a backup run in a Prometheus textfile-collector file
version_added: 0.1.0
description:
  - Writes the health of the backups of one environment to C(<textfile_dir>/minimarket_backup_<environment>.prom), the
    format the node_exporter textfile collector reads, so the stack's own Prometheus and Grafana can alert on and show it.
  - Metrics, per O(kind) and O(environment) labels, all gauges with C(HELP) and C(TYPE) lines
    C(minimarket_backup_last_success_timestamp_seconds), C(minimarket_backup_last_failure_timestamp_seconds),
    C(minimarket_backup_last_duration_seconds), C(minimarket_backup_last_size_bytes) (successful runs only) and
    C(minimarket_backup_last_verification_ok) (V(1) or V(0)). A timestamp never recorded is V(0), so an alert on the age of
    the last success also fires for a backup that never succeeded.
  - A verification (O(kind=verify)) also records what its checks found, with the time of the run as their timestamp. Per
    service started on the restored volumes (labels C(service) and C(environment), from O(service_checks))
    C(minimarket_backup_service_check_ok) (V(1) or V(0)) and C(minimarket_backup_service_check_timestamp_seconds); for the
    point-in-time recovery drill (label C(environment), from O(pitr_verified)) C(minimarket_backup_pitr_verification_ok)
    and C(minimarket_backup_pitr_verification_timestamp_seconds).
  - The existing file is read first and only the series of this O(kind) (and of the checks given) are changed, so the last
    success survives later failures and the other kinds are kept. Lines that are not ours are dropped with a warning.
  - The file is replaced atomically (written as C(.partial), then renamed) with mode C(0644), under an exclusive lock on the
    directory, so a scrape never sees a half-written file and concurrent runs do not lose each other's update.
author:
  - Mini Market operations (!UNKNOWN)
extends_documentation_fragment:
  - minimarket.backup.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    description:
      - Every run records a new timestamp, so the file always changes; run it once per backup run.
    support: none
options:
  textfile_dir:
    description:
      - Directory read by the node_exporter textfile collector (C(--collector.textfile.directory)), for example
        C(/var/lib/prometheus/node-exporter) on Debian. It must exist (in check mode a missing directory only predicts the
        file).
    type: path
    required: true
  kind:
    description:
      - What ran.
    type: str
    required: true
    choices: [database, volumes, verify]
  environment:
    description:
      - Environment name (letters, digits and C(-)), the C(environment) label.
    type: str
    required: true
  status:
    description:
      - Outcome of the run. V(success) sets the last success timestamp (and the size), V(failure) the last failure
        timestamp; a failed O(kind=verify) also sets the verification to V(0).
    type: str
    required: true
    choices: [success, failure]
  duration:
    description:
      - Duration of the run in seconds.
    type: float
  size:
    description:
      - Size in bytes of the archive written (ignored when O(status=failure)).
    type: int
  verified:
    description:
      - Whether the verification passed; sets C(minimarket_backup_last_verification_ok).
    type: bool
  timestamp:
    description:
      - Unix time of the run; defaults to now.
    type: float
  repairs:
    description:
      - How many repairs the run made first from the intent journal of an interrupted run (the length of the
        C(repaired) list of M(minimarket.backup.pg_split_dump) and M(minimarket.backup.docker_volume_archive)); sets
        C(minimarket_backup_last_repairs).
    type: int
  service_checks:
    description:
      - O(kind=verify) only. The C(services) list that M(minimarket.backup.service_check) returned, failed or not; each
        entry needs C(service) and C(ok). Its services replace the environment's earlier service series, so a service no
        longer checked disappears; omitted, they stay as they were.
    type: list
    elements: dict
  pitr_verified:
    description:
      - O(kind=verify) only. Whether the point-in-time recovery drill passed (M(minimarket.backup.pitr) with
        O(minimarket.backup.pitr#module:state=verify)); omitted (no drill in this run), its series stay as they were.
    type: bool
"""

EXAMPLES = r"""
- name: Record a successful database backup
  minimarket.backup.backup_metrics:
    textfile_dir: /var/lib/prometheus/node-exporter
    kind: database
    environment: production
    status: success
    duration: "{{ database_backup_result.duration }}"
    size: "{{ database_backup_result.size }}"

- name: Record a failed verification and what each check found
  minimarket.backup.backup_metrics:
    textfile_dir: /var/lib/prometheus/node-exporter
    kind: verify
    environment: production
    status: failure
    verified: false
    service_checks: "{{ service_check_result.services }}"
    pitr_verified: "{{ pitr_verify_result is not failed }}"
"""

RETURN = r"""
path:
  description: The file written (or that would be written in check mode).
  returned: always
  type: str
  sample: /var/lib/prometheus/node-exporter/minimarket_backup_production.prom
metrics:
  description:
    - The samples of this kind and environment after the run, by metric name without the C(minimarket_backup_) prefix.
    - With O(service_checks), C(service_check_ok) maps each service to V(1) or V(0); with O(pitr_verified),
      C(pitr_verification_ok) is V(1) or V(0).
  returned: always
  type: dict
  sample:
    last_success_timestamp_seconds: 1790000000
    last_failure_timestamp_seconds: 0
    last_duration_seconds: 12.5
    last_size_bytes: 104857600
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._metrics import file_name, update_file


def main():
    module = AnsibleModule(
        argument_spec=dict(
            textfile_dir=dict(type="path", required=True),
            kind=dict(type="str", required=True, choices=["database", "volumes", "verify"]),
            environment=dict(type="str", required=True),
            status=dict(type="str", required=True, choices=["success", "failure"]),
            duration=dict(type="float"),
            size=dict(type="int"),
            verified=dict(type="bool"),
            timestamp=dict(type="float"),
            repairs=dict(type="int"),
            service_checks=dict(type="list", elements="dict"),
            pitr_verified=dict(type="bool"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        path = os.path.join(params["textfile_dir"], file_name(params["environment"]))
        before, after, samples, ignored = update_file(
            path, params["kind"], params["environment"], params["status"], timestamp=params["timestamp"],
            duration=params["duration"], size=params["size"], verified=params["verified"], write=not module.check_mode,
            repairs=params["repairs"], service_checks=params["service_checks"], pitr_verified=params["pitr_verified"],
        )
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    if ignored:
        module.warn("dropped %d line(s) of %s that are not minimarket_backup metrics" % (ignored, path))
    output = dict(changed=True, path=path, metrics=samples)
    if module._diff:
        output["diff"] = dict(before_header=path, after_header=path, before=before, after=after)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
