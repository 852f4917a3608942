#!/usr/bin/python
# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


DOCUMENTATION = r"""
---
module: pitr
short_description: Point-in-time recovery of the stack's PostgreSQL from Barman, and its health
version_added: 0.2.0
description:
  - Barman, in streaming mode (C(pg_basebackup) base backups, C(pg_receivewal) through a replication slot), keeps the
    WAL of the live cluster on the backup host. This module recovers that cluster to a moment, and reports the health of
    the streaming. Barman does all WAL handling; the module decides only what must be safe around it.
  - The live PostgreSQL container is found by its compose labels (O(compose_project), O(compose_service)), so Compose v1
    (C(<project>_<service>_1)) and v2 (C(<project>-<service>-1)) names both work; O(container) names it directly instead.
  - O(state=check) parses O(target_time) and finds the base backup to start from, without changing anything. An
    unparseable time, a time in the future, or one before the oldest base backup fails with one line.
  - O(state=locate) finds the container and its data volume (C(data_path) holds C(pg_hba.conf)), without changing anything.
  - O(state=recover) runs the same checks first, then closes the current WAL segment on the live server and waits for it
    in Barman's archive, runs C(barman recover) into a staging directory beside the data volume's C(_data), stops the
    PostgreSQL container, swaps the staged cluster in by renames (the previous C(_data) is kept as C(_data.pitr-previous)),
    starts the container, waits until recovery reached the target and promoted, and runs the checks of
    M(minimarket.backup.pg_split_dump) (O(critical_tables), O(queries)). If any step after the swap fails, the previous
    C(_data) is put back and the container started on it; the rejected copy is left as C(_data.pitr-failed).
  - A journal (C(pitr-swap.json) beside C(_data)) makes a run killed during the swap repairable; the next run puts the
    previous data back and waits for the server to answer on it before doing anything else (returned in C(repaired)).
  - O(state=status) returns the age of the newest WAL received, the live RPO, the end of the newest base backup, whether
    streaming runs and whether C(barman check) passes, and writes them to a textfile-collector file when O(textfile_dir)
    is set.
author:
  - Mini Market operations (!UNKNOWN)
extends_documentation_fragment:
  - minimarket.backup.postgres
  - minimarket.backup.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    description:
      - O(state=recover) recovers every time it runs; O(state=check) never changes anything.
    support: none
options:
  state:
    description:
      - V(check) validates O(target_time), V(locate) finds the container and its data volume, V(recover) recovers to
        O(target_time), V(verify) recovers a scratch copy and checks it, V(status) reports (and writes) the health metrics.
    type: str
    default: check
    choices: [check, locate, recover, verify, status]
  config:
    description:
      - Barman configuration file written by the C(minimarket.backup.pitr) role.
    type: path
    required: true
  server:
    description:
      - Barman server name (a section of O(config)).
    type: str
    required: true
  target_time:
    description:
      - C(YYYY-MM-DD HH:MM:SS[.ffffff][+TZ]) (a time without zone is the backup host's local time), or V(latest) for
        the last WAL received.
    type: str
  db:
    description:
      - Database checked after the recovery.
    type: str
    default: minimarket
    aliases: [login_db]
  data_dir:
    description:
      - PGDATA inside the PostgreSQL container; its volume is where the recovered cluster goes.
    type: str
    default: /var/lib/postgresql/data
  critical_tables:
    description:
      - Table name to minimum row count, checked on the recovered database.
    type: dict
  queries:
    description:
      - SQL queries that must return true on the recovered database.
    type: list
    elements: str
  verify_minutes:
    description:
      - With O(state=verify), how many minutes before now the scratch recovery targets.
    type: int
    default: 5
  timeout:
    description:
      - Seconds to wait for the recovered cluster to reach its target and promote.
    type: int
    default: 600
  slot_name:
    description:
      - Replication slot of the WAL streaming (O(state=status) reads its lag).
    type: str
    default: barman_minimarket
  environment:
    description:
      - Environment label of the metrics, and part of the name of the file O(textfile_dir) gets. Needed (no default)
        with O(state=status) and O(textfile_dir).
    type: str
  textfile_dir:
    description:
      - With O(state=status), write C(minimarket_backup_pitr_<environment>.prom) there (mode C(0644), atomic).
    type: path
  docker_host:
    description:
      - Docker engine to talk to.
    type: str
    default: unix:///var/run/docker.sock
requirements:
  - barman 3.4 or newer on the backup host
  - docker (Python SDK) on the backup host
notes:
  - The data volume must use the C(local) driver (its C(_data) directory is renamed).
  - O(state=locate), O(state=recover) and O(state=verify) need the container (O(compose_project) and O(compose_service),
    or O(container)); O(state=status) without it runs C(psql) on the host.
  - O(state=recover) and O(state=status) accept a stopped container, unlike the other modules of the collection. Recovery
    stops PostgreSQL itself, a run killed after that stop leaves it stopped and the next run must find it to repair it,
    and a server that is down is what recovery is for; status then reports streaming as down.
"""

EXAMPLES = r"""
- name: Refuse a bad target before anything stops
  minimarket.backup.pitr:
    state: check
    config: /etc/minimarket-backup/barman-production.conf
    server: minimarket-production
    target_time: "2026-03-14 17:55:00-03"

- name: Find the PostgreSQL container (Compose v1 or v2 name) and the host path of its data volume
  minimarket.backup.pitr:
    state: locate
    config: /etc/minimarket-backup/barman-production.conf
    server: minimarket-production
    compose_project: inventario-retail
    compose_service: postgres
  register: pitr_db

- name: Recover to that moment
  minimarket.backup.pitr:
    state: recover
    config: /etc/minimarket-backup/barman-production.conf
    server: minimarket-production
    target_time: "2026-03-14 17:55:00-03"
    compose_project: inventario-retail
    compose_service: postgres
    critical_tables: {ventas: 1}
    queries: ["SELECT count(*) > 0 FROM productos"]
"""

RETURN = r"""
container:
  description: The PostgreSQL container, as found by the compose labels (or given).
  returned: state is locate, recover, verify or status
  type: str
  sample: inventario-retail-postgres-1
volume:
  description: The container's data volume.
  returned: state is locate or recover
  type: str
  sample: inventario-retail_postgres-data
repaired:
  description: What this run first finished of a recovery killed midway (previous data put back, staging removed).
  returned: state is recover
  type: list
  elements: str
  sample: ["put the data from before an unfinished recovery back into place"]
data_path:
  description: Host path of the data volume's C(_data) (the cluster's PGDATA, with C(pg_hba.conf)).
  returned: state is locate
  type: str
  sample: /var/lib/docker/volumes/inventario-retail_postgres-data/_data
backup_id:
  description: Barman base backup the recovery starts from.
  returned: state is check, recover or verify (verify also when it failed once the base backup was chosen)
  type: str
  sample: 20260314T013000
target_time:
  description: The target as understood (ISO 8601 with offset), or V(latest).
  returned: state is check, recover or verify (verify also when it failed once the base backup was chosen)
  type: str
  sample: "2026-03-14 17:55:00-03:00"
checks:
  description: Result of each check on the recovered database.
  returned: state is recover or verify (verify also when its checks failed)
  type: list
  elements: dict
duration:
  description: Seconds the whole recovery took.
  returned: state is recover and it succeeded, or verify (also when it failed once the base backup was chosen)
  type: float
metrics:
  description: Health values, by metric name without the C(minimarket_backup_pitr_) prefix.
  returned: state is status
  type: dict
  sample: {rpo_seconds: 0, streaming_up: 1, check_ok: 1}
"""

import datetime
import os
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._docker import Engine
from ansible_collections.minimarket.backup.plugins.module_utils._pg_verify import VerifyFailed, check_content, table_rows
from ansible_collections.minimarket.backup.plugins.module_utils._pitr import (
    Barman,
    Cluster,
    choose_backup,
    live_container,
    parse_target,
    recover,
    scratch_verify,
    status,
)
from ansible_collections.minimarket.backup.plugins.module_utils._postgres import PgTools, postgres_common_argument_spec
from ansible_collections.minimarket.backup.plugins.module_utils._vocabulary import missing


def run(module, barman):
    params = module.params
    target = None
    if params["state"] in ("check", "recover"):
        if not params["target_time"]:
            raise BackupError("target_time is required: YYYY-MM-DD HH:MM:SS[+TZ] or 'latest'")
        target = parse_target(params["target_time"])
    if params["state"] == "check":
        backup = choose_backup(target, barman.backups())
        return dict(changed=False, backup_id=backup["backup_id"],
                    target_time=target if isinstance(target, str) else target.isoformat(" "))
    if params["state"] == "verify":
        return verify_scratch(module, barman)
    params["container"] = live_container(params)
    tools = PgTools(params)
    if params["state"] == "status":
        result = status(barman, tools, params["slot_name"], params["environment"], params["textfile_dir"], time.time(),
                        write=not module.check_mode)
        result["changed"] = bool(params["textfile_dir"]) and not module.check_mode
        result["container"] = params["container"]
        return result
    cluster = Cluster(Engine(params["docker_host"]), params["container"], params["data_dir"], tools)
    if params["state"] == "locate":
        return dict(changed=False, container=params["container"], volume=cluster.volume, data_path=cluster.paths["data"])

    def verify():
        return check_content(tools, params["db"], table_rows(tools, params["db"]), params["critical_tables"], params["queries"])

    result = recover(barman, cluster, target, verify, timeout=params["timeout"], check_mode=module.check_mode)
    result["changed"] = not module.check_mode
    result["container"] = params["container"]
    return result


def verify_scratch(module, barman):
    """Scratch recovery to a few minutes ago in a throwaway container, checked like a dump."""
    params = module.params
    target = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=params["verify_minutes"])
    if module.check_mode:
        return dict(changed=False, backup_id=choose_backup(target, barman.backups())["backup_id"], target_time=target.isoformat(" "))
    params["container"] = live_container(params)
    engine = Engine(params["docker_host"])
    live = Cluster(engine, params["container"], params["data_dir"], PgTools(params))
    wal = live.switch_wal()
    if wal:
        barman.wait_archived(wal)
    image = engine.api.inspect_container(params["container"])["Config"]["Image"]
    st = os.stat(live.paths["data"])
    workdir = os.path.join(os.path.dirname(barman.home()), "verify-" + barman.server)

    def make_tools(container):
        return PgTools(dict(container=container, login_user=params["login_user"]))

    def checks(tools):
        return check_content(tools, params["db"], table_rows(tools, params["db"]), params["critical_tables"], params["queries"])

    result = scratch_verify(barman, engine, image, (st.st_uid, st.st_gid), workdir, target, make_tools, checks,
                            timeout=params["timeout"])
    result["changed"] = False
    result["container"] = params["container"]
    return result


def main():
    argument_spec = postgres_common_argument_spec()
    argument_spec.update(
        state=dict(type="str", default="check", choices=["check", "locate", "recover", "verify", "status"]),
        config=dict(type="path", required=True),
        server=dict(type="str", required=True),
        target_time=dict(type="str"),
        db=dict(type="str", default="minimarket", aliases=["login_db"]),
        data_dir=dict(type="str", default="/var/lib/postgresql/data"),
        critical_tables=dict(type="dict"),
        queries=dict(type="list", elements="str"),
        verify_minutes=dict(type="int", default=5),
        timeout=dict(type="int", default=600),
        slot_name=dict(type="str", default="barman_minimarket"),
        environment=dict(type="str"),
        textfile_dir=dict(type="path"),
        docker_host=dict(type="str", default="unix:///var/run/docker.sock"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[("container", "compose_service")],
                           required_together=[("compose_project", "compose_service")])
    if module.params["state"] == "status" and module.params["textfile_dir"]:
        problem = missing(module.params, ("environment",), "state=status writes minimarket_backup_pitr_<environment>.prom "
                          "into textfile_dir", "set environment (the inventory's minimarket_environment, for example production)")
        if problem:
            module.fail_json(msg=problem)
    barman = Barman(module.params["config"], module.params["server"])
    try:
        result = run(module, barman)
    except VerifyFailed as exc:
        module.fail_json(msg=str(exc), **exc.result)
    except BackupError as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
