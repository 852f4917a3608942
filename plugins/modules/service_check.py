#!/usr/bin/python
# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
---
module: service_check
short_description: Ask the stack's services, on restored volumes or live, whether they serve their data
version_added: 0.2.0
description:
  - The guide's volume verification. V(scratch) restores the volumes the checked services use from a volume archive
    into scratch volumes, starts those services in a scratch compose project (its own network, no published port, no
    name shared with the live stack), asks each one through its interface, and removes the project whatever happens.
    A scratch project left over by a killed run is removed by the next run (with a warning).
  - V(live) asks the running stack the same questions, for example after a recovery.
  - Redis is asked C(PING), C(DBSIZE) and the canary key the online backup wrote (see
    M(minimarket.backup.docker_volume_archive) O(minimarket.backup.docker_volume_archive#module:consistency));
    Prometheus C(/-/ready) and a query at backup time that must return the series recorded then; an SQLite database
    C(PRAGMA integrity_check) and a table's row count; any other service an HTTP C(GET) that must answer 200.
  - Services are found by the compose labels C(com.docker.compose.project) and C(com.docker.compose.service) and
    reached at their container's address from the Docker host; SQLite files are read on the volume's mountpoint.
author:
  - Mini Market operations (!UNKNOWN)
requirements:
  - Docker SDK for Python (C(docker)) on the target; root on the Docker host.
  - For V(scratch), C(docker compose) (v2) or C(docker-compose) (v1, then PyYAML for the Python Ansible uses).
attributes:
  check_mode:
    support: partial
    details: V(live) asks the services as usual (it changes nothing); V(scratch) only checks its arguments and starts nothing.
    description: Nothing is started or changed in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is no diff.
  idempotent:
    support: full
    description: Nothing of the live stack is changed.
extends_documentation_fragment:
  - minimarket.backup.backup_set
  - minimarket.backup.backup_set.ENVIRONMENT
options:
  state:
    description:
      - V(scratch) checks the services on volumes restored from O(src); V(live) checks the running stack.
    type: str
    choices: [scratch, live]
    default: scratch
  checks:
    description:
      - One check per service. Keys C(service) (compose service name) and C(kind) (V(redis), V(prometheus),
        V(sqlite), V(http)); C(port) (default 6379 for redis, 9090 for prometheus; required for http); C(path)
        (http, default C(/)); C(database) (sqlite, the database's absolute path inside the container), C(table)
        (sqlite, a table whose rows are counted) and C(min_rows); C(min_keys) (redis).
      - Expected values come from these keys and from the archive's metadata (canary, series and row counts recorded
        by an online backup). On restored volumes the row count must equal the recorded one; live, it may have grown.
    type: list
    elements: dict
    required: true
  compose_project:
    description:
      - Compose project of the live stack (labels of its containers, prefix of its volume names).
    type: str
    required: true
    aliases: [project]
  compose_file:
    description:
      - The environment's compose file; V(scratch) takes the checked services' definitions from it.
    type: path
  src:
    description:
      - Volume archive, or V(latest) for the newest complete one of O(environment) in O(backup_dir). V(scratch) restores
        it; V(live) takes the expected values from its metadata (omit it to check against the inventory's values only).
      - Required with V(scratch). A path needs neither O(backup_dir) nor O(environment).
    type: str
  timeout:
    description:
      - Seconds each service may take to become ready.
    type: int
    default: 120
  docker_host:
    description:
      - Docker Engine address.
    type: str
    default: unix:///var/run/docker.sock
  age_identity_file:
    description:
      - Path on the target of the C(age) private key that opens an encrypted archive (V(scratch) only).
    type: path
"""

EXAMPLES = r"""
- name: Start the services on the newest volume archive in a scratch project and ask them
  minimarket.backup.service_check:
    state: scratch
    compose_project: inventario-retail
    compose_file: /opt/inventario-retail/docker-compose.production.yml
    src: latest
    backup_dir: /var/backups/minimarket/volumes
    environment: production
    checks:
      - {service: redis, kind: redis, min_keys: 1}
      - {service: prometheus, kind: prometheus}
      - {service: grafana, kind: sqlite, database: /var/lib/grafana/grafana.db, table: dashboard, min_rows: 1}
      - {service: loki, kind: http, port: 3100, path: /ready}

- name: After a recovery, ask the live services
  minimarket.backup.service_check:
    state: live
    compose_project: inventario-retail
    src: /var/backups/minimarket/volumes/volumes_production_20251007_120000.tar.gz
    checks:
      - {service: redis, kind: redis}
"""

RETURN = r"""
project:
  description: The compose project asked (the scratch project's name for V(scratch); it no longer exists).
  returned: always
  type: str
  sample: mmverify-3f2a9c0d1e
archive:
  description: The volume archive restored.
  returned: state=scratch
  type: str
services:
  description:
    - Per check C(service), C(kind), C(ok), C(checks) (what was asked and found) and C(msg) when it failed.
    - When the services could not be asked at all (for example the scratch project did not start), every check is
      there with C(ok=false) and the reason, so none counts as verified.
  returned: always
  type: list
  elements: dict
volumes:
  description: The restored volumes (C(name), C(files), C(size), C(sha256)) compared with the metadata.
  returned: state=scratch
  type: list
  elements: dict
mode:
  description: Restore path used for the scratch volumes, V(host) or V(api).
  returned: state=scratch
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._docker import DOCKER_IMPORT_ERROR, HAS_DOCKER, Engine
from ansible_collections.minimarket.backup.plugins.module_utils import _service_check as sc
from ansible_collections.minimarket.backup.plugins.module_utils._vocabulary import (
    backup_dir_argument_spec,
    environment_argument_spec,
    finds_latest,
)


def main():
    argument_spec = dict(
        state=dict(type="str", default="scratch", choices=["scratch", "live"]),
        checks=dict(type="list", elements="dict", required=True),
        compose_project=dict(type="str", required=True, aliases=["project"]),
        compose_file=dict(type="path"),
        src=dict(type="str"),
        timeout=dict(type="int", default=120),
        docker_host=dict(type="str", default="unix:///var/run/docker.sock"),
        age_identity_file=dict(type="path"),
    )
    argument_spec.update(backup_dir_argument_spec())
    argument_spec.update(environment_argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec, supports_check_mode=True,
        required_if=[("state", "scratch", ("compose_file", "src"))],
    )
    if not HAS_DOCKER:
        module.fail_json(msg="the Python 'docker' SDK is not installed on the target host: install it (pip install docker, "
                             "or apt install python3-docker) for the Python Ansible uses", exception=DOCKER_IMPORT_ERROR)
    p = module.params
    try:
        specs = sc.check_specs(p["checks"])
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    problem = finds_latest(p, "volumes")
    if problem:
        module.fail_json(msg=problem)
    if p["state"] == "scratch" and module.check_mode:
        module.exit_json(changed=False, project=p["compose_project"], services=[], msg="check mode: no scratch project started")
    try:
        engine = Engine(p["docker_host"])
        if p["state"] == "live":
            result = sc.live(engine, p["compose_project"], p["checks"], p["src"], p["backup_dir"], p["environment"], p["timeout"])
        else:
            result = sc.scratch(engine, sc.compose_command(), p["compose_project"], p["compose_file"], p["checks"], p["src"],
                                p["backup_dir"], p["environment"], p["age_identity_file"], p["timeout"])
    except BackupError as exc:
        module.fail_json(msg=str(exc), project=p["compose_project"], services=sc.not_asked(specs, exc))
    for warning in result.pop("warnings", []):
        module.warn(warning)
    failure = result.pop("failure")
    if failure:
        module.fail_json(msg="service check failed: %s" % failure, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
