# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which container runs a compose service, found by compose's own labels.

Compose v1 names containers ``<project>_<service>_1``, v2 ``<project>-<service>-1``, and a
``container_name`` overrides both; the labels ``com.docker.compose.project`` and
``com.docker.compose.service`` are the same in every case, so nobody has to write a name down.
"""

import shutil

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
PS_FORMAT = '{{.Names}}\t{{.State}}\t{{.Label "%s"}}' % NUMBER_LABEL


def ps_argv(docker, project, service):
    return [docker, "ps", "--all", "--no-trunc", "--filter", "label=%s=%s" % (PROJECT_LABEL, project),
            "--filter", "label=%s=%s" % (SERVICE_LABEL, service), "--format", PS_FORMAT]


def _replica_number(row):
    return int(row[2]) if len(row) > 2 and row[2].isdigit() else 0


def pick(ps_output, project, service, allow_stopped=False):
    """The running container of the service (the lowest replica number when it is scaled).

    ``allow_stopped`` is for jobs that stop PostgreSQL themselves (point-in-time recovery): a run
    killed after the stop, or a server that is down, must still find its container to repair or recover
    it. A running replica is still preferred; else the lowest-numbered stopped one.
    """
    rows = [line.split("\t") for line in ps_output.splitlines() if line.strip()]
    if not rows:
        raise BackupError(
            "no container with labels %s=%s and %s=%s on this host: is the stack up, and are the compose project "
            "(minimarket_compose_project) and the service (minimarket_db_service) right? "
            "(docker ps --all --filter label=%s=%s)" % (PROJECT_LABEL, project, SERVICE_LABEL, service, PROJECT_LABEL, project)
        )
    running = [row for row in rows if len(row) > 1 and row[1] == "running"]
    if not running and not allow_stopped:
        name, state = rows[0][0], rows[0][1] if len(rows[0]) > 1 else "unknown"
        raise BackupError("container %s of service %s (compose project %s) is %s, not running: start the stack "
                          "(docker compose up -d %s)" % (name, service, project, state, service))
    return sorted(running or rows, key=_replica_number)[0][0]


def service_container(run_command, project, service, allow_stopped=False):
    """Name of the running container of ``service`` in compose ``project`` (or a stopped one with ``allow_stopped``)."""
    docker = shutil.which("docker")
    if docker is None:
        raise BackupError("finding the container of compose service %s needs the docker CLI on PATH: install docker" % service)
    rc, out, err = run_command(ps_argv(docker, project, service))
    if rc != 0:
        lines = (err or out or "").strip().splitlines()
        raise BackupError("cannot list the containers of compose project %s (docker ps): %s" % (project, lines[-1] if lines else "exit %s" % rc))
    return pick(out, project, service, allow_stopped)
