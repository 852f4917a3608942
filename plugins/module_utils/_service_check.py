# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guide's volume check: start the services on restored volumes and ask each one through its interface.

``scratch`` restores the volumes the checked services use into scratch volumes,
starts those services in a scratch compose project (its own network, no
published port, no name shared with the live stack, every object labelled
``minimarket.backup.scratch-of=<live project>``), asks them, and removes the
project whatever happens; a project left over by a killed run is removed by
the next one.  ``live`` asks the running stack the same questions (after a
recovery).  Expected values come from the checks (the inventory) and from the
archive's metadata (what the online backup recorded: canary, series, rows).
"""

import contextlib
import datetime
import json
import os
import shutil
import tempfile
import time
import uuid

from ansible_collections.minimarket.backup.plugins.module_utils import _backup_set as bs
from ansible_collections.minimarket.backup.plugins.module_utils import _journal
from ansible_collections.minimarket.backup.plugins.module_utils import _services as sv
from ansible_collections.minimarket.backup.plugins.module_utils import _volume_archive as va
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._process import run

KINDS = ("redis", "prometheus", "sqlite", "http")
DEFAULT_PORTS = {"redis": 6379, "prometheus": 9090}
SCRATCH_LABEL = "minimarket.backup.scratch-of"
SERVICE_KEYS = ("image", "command", "entrypoint", "user", "environment", "env_file", "working_dir", "stop_signal",
                "healthcheck", "tmpfs", "read_only", "shm_size", "ulimits", "cap_add", "cap_drop", "sysctls")


def check_specs(checks):
    """Normalise the checks (one per service); a bad one is refused naming the fix."""
    specs = []
    for check in checks or []:
        spec = dict(check)
        kind = spec.get("kind")
        if not spec.get("service") or kind not in KINDS:
            raise BackupError("service check %s needs service and kind (one of %s)" % (json.dumps(check, sort_keys=True), ", ".join(KINDS)))
        if kind == "sqlite" and not str(spec.get("database", "")).startswith("/"):
            raise BackupError("sqlite check of %s needs database: the database's absolute path inside the container" % spec["service"])
        if kind == "http" and not spec.get("port"):
            raise BackupError("http check of %s needs port (and path, default /)" % spec["service"])
        spec.setdefault("port", DEFAULT_PORTS.get(kind))
        spec.setdefault("path", "/")
        spec.setdefault("min_keys", 0)
        spec.setdefault("min_rows", 0)
        specs.append(spec)
    if len(set(spec["service"] for spec in specs)) != len(specs):
        raise BackupError("service checks name a service twice: one check per service")
    return specs


def not_asked(specs, reason):
    """Every check failed with ``reason`` when the services could not be asked at all: none of them counts as verified."""
    return [{"service": spec["service"], "kind": spec["kind"], "ok": False, "checks": [],
             "msg": "%s was not asked: %s" % (spec["service"], reason)} for spec in specs]


def _wait(deadline, attempt):
    """Call ``attempt`` until it returns a value or the deadline passes; raises its last ServiceError then."""
    while True:
        try:
            return attempt()
        except sv.ServiceError:
            if time.time() > deadline:
                raise
        time.sleep(0.5)


class Target(object):
    """One running service: its container, its address and the archived volume records it mounts."""

    def __init__(self, engine, container_id, records):
        self.engine = engine
        self.id = container_id
        self.info = engine.api.inspect_container(container_id)
        self.name = self.info["Name"].lstrip("/")
        self.records = records

    def refresh(self):
        self.info = self.engine.api.inspect_container(self.id)
        state = self.info["State"]
        if not state.get("Running"):
            logs = self.engine.api.logs(self.id, tail=5).decode("utf-8", "replace").strip().splitlines()
            raise BackupError("%s exited (status %s): %s" % (self.name, state.get("ExitCode"), logs[-1] if logs else "no output"))
        address = sv.container_address(self.info)
        if not address:
            raise sv.ServiceError("%s has no network address yet" % self.name)
        return address

    def record(self, path=None):
        """(archived record or None, mount) of the volume holding ``path`` (default: the first volume), or (None, None)."""
        for mount in self.info.get("Mounts") or []:
            if mount.get("Type") != "volume":
                continue
            if path is None or path == mount["Destination"] or path.startswith(mount["Destination"].rstrip("/") + "/"):
                return self.records.get(mount.get("Name")), mount
        return None, None


def _redis(target, spec, deadline, exact, created):
    address = _wait(deadline, target.refresh)
    record = (target.record()[0] or {}).get("consistency") or {}
    canary_key = record.get("canary_key")

    def ping():
        target.refresh()
        with sv.redis(address, spec["port"]) as client:
            if client.command("PING") != "PONG":
                raise sv.ServiceError("no PONG")
            return client.command("DBSIZE"), client.command("GET", canary_key) if canary_key else None
    keys, canary = _wait(deadline, ping)
    checks = ["PING answered PONG", "%d keys (at least %d expected)" % (keys, spec["min_keys"])]
    if keys < spec["min_keys"]:
        raise BackupError("%d keys, at least %d expected" % (keys, spec["min_keys"]))
    if canary_key:
        if canary != record["canary"]:
            raise BackupError("canary key %s is %r, the backup wrote %r" % (canary_key, canary, record["canary"]))
        checks.append("canary %s as written before the backup (%d keys then)" % (canary_key, record["keys"]))
    else:
        checks.append("no canary to compare (%s)" % ("volume archived in %s mode" % record["mode"] if record
                                                     else "no volume archive given"))
    return checks


def _prometheus(target, spec, deadline, exact, created):
    def ready():
        address = target.refresh()
        status, unused = sv.http("GET", "http://%s:%d/-/ready" % (address, spec["port"]))
        if status != 200:
            raise sv.ServiceError("/-/ready answered HTTP %s" % status)
        return address
    address = _wait(deadline, ready)
    record = (target.record()[0] or {}).get("consistency") or {}
    query, at = record.get("query", "up"), record.get("time", created)
    when = "now" if at is None else "at backup time"
    at = time.time() if at is None else at
    status, answer = sv.http_json("GET", "http://%s:%d/api/v1/query" % (address, spec["port"]), {"query": query, "time": "%.3f" % at})
    found = [item["metric"] for item in ((answer or {}).get("data") or {}).get("result", [])]
    if status != 200:
        raise BackupError("query %s failed (HTTP %s: %s)" % (query, status, (answer or {}).get("error")))
    expected = record.get("series")
    if expected:
        missing = [metric for metric in expected if metric not in found]
        if missing:
            raise BackupError("%d of the %d series of %s at backup time are missing, e.g. %s"
                              % (len(missing), len(expected), query, json.dumps(missing[0], sort_keys=True)))
        return ["ready", "%s at backup time returns the %d series recorded then" % (query, len(expected))]
    if not found:
        raise BackupError("%s %s (%s) returns no series: the TSDB holds no data from then"
                          % (query, when, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))))
    return ["ready", "%s %s returns %d series" % (query, when, len(found))]


def _sqlite(target, spec, deadline, exact, created):
    _wait(deadline, target.refresh)
    record, mount = target.record(spec["database"])
    path = sv.volume_path(target.info, mount["Name"], spec["database"]) if mount else None
    if not path or not os.path.isfile(path):
        raise BackupError("database %s is not on a volume of %s" % (spec["database"], target.name))
    with sv.sqlite_connection(path) as conn:
        summary = sv.sqlite_summary(conn)
    if summary["integrity"] != "ok":
        raise BackupError("PRAGMA integrity_check of %s: %s" % (spec["database"], summary["integrity"]))
    checks = ["integrity_check ok"]
    table = spec.get("table")
    if table:
        rows = summary["tables"].get(table)
        if rows is None:
            raise BackupError("%s has no table %s" % (spec["database"], table))
        relpath = os.path.relpath(path, mount["Source"])
        recorded = [db["tables"].get(table) for db in ((record or {}).get("consistency") or {}).get("databases", [])
                    if db["path"] == relpath]
        if recorded and recorded[0] is not None:
            if (rows != recorded[0]) if exact else (rows < recorded[0]):
                raise BackupError("%s has %d rows, the backup copied %d" % (table, rows, recorded[0]))
            checks.append("%s: %d rows, as in the backup" % (table, rows))
        if rows < spec["min_rows"]:
            raise BackupError("%s has %d rows, at least %d expected" % (table, rows, spec["min_rows"]))
        if not recorded:
            checks.append("%s: %d rows (at least %d expected)" % (table, rows, spec["min_rows"]))
    return checks


def _http(target, spec, deadline, exact, created):
    def ok():
        address = target.refresh()
        status, unused = sv.http("GET", "http://%s:%d%s" % (address, spec["port"], spec["path"]))
        if status != 200:
            raise sv.ServiceError("%s answered HTTP %s" % (spec["path"], status))
        return status
    _wait(deadline, ok)
    return ["%s answered HTTP 200" % spec["path"]]


# Each asks one service; ``exact``: restored volumes must equal the backup (live ones may have grown);
# ``created``: the archive's time, for archives without recorded expectations (None: no archive, ask about now).
CHECKERS = {"redis": _redis, "prometheus": _prometheus, "sqlite": _sqlite, "http": _http}


def ask(engine, project, specs, records, created, timeout, exact):
    """Ask each service of ``project``; returns the per-service results and the first failure message (or None)."""
    results, failure = [], None
    for spec in specs:
        result = {"service": spec["service"], "kind": spec["kind"], "ok": False, "checks": []}
        results.append(result)
        try:
            labels = ["%s=%s" % (sv.PROJECT_LABEL, project), "%s=%s" % (sv.SERVICE_LABEL, spec["service"])]
            found = engine.api.containers(all=True, filters={"label": labels})
            if not found:
                raise BackupError("no container of service %s in project %s" % (spec["service"], project))
            target = Target(engine, found[0]["Id"], records)
            deadline = time.time() + timeout
            result["checks"] = CHECKERS[spec["kind"]](target, spec, deadline, exact, created)
            result["ok"] = True
        except sv.ServiceError as exc:
            result["msg"] = "%s did not become ready within %d s (%s)" % (spec["service"], timeout, exc)
        except BackupError as exc:
            result["msg"] = "%s: %s" % (spec["service"], exc)
        if not result["ok"] and failure is None:
            failure = result["msg"]
    return results, failure


def live(engine, project, checks, src=None, backup_dir=None, environment=None, timeout=120):
    """Ask the running stack; expected values from the archive it was recovered from (``src``), when given."""
    specs = check_specs(checks)
    records, created = {}, None
    if src:
        metadata = bs.read_metadata(bs.metadata_path(_archive_path(src, backup_dir, environment)))
        records = dict((record["name"], record) for record in metadata.get("volumes", []))
        created = _created(metadata)
    results, failure = ask(engine, project, specs, records, created, timeout, exact=False)
    return {"project": project, "services": results, "failure": failure}


def _archive_path(src, backup_dir, environment):
    if src != "latest":
        return src
    complete = [b for b in bs.list_backups(backup_dir, va.KIND, environment) if b.complete]
    if not complete:
        raise BackupError("no complete volumes backup for environment %r in %s: pass src" % (environment, backup_dir))
    return complete[-1].path


def _created(metadata):
    """The archive's creation time (UTC) in seconds since the epoch."""
    return datetime.datetime.strptime(metadata["created"][:19], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def compose_command():
    """``docker compose`` (v2) when it works, else ``docker-compose`` (v1); found and probed like every other child."""
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"])[0] == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    raise BackupError("neither 'docker compose' nor 'docker-compose' works on this host: install the docker compose plugin "
                      "or docker-compose")


def _compose_config(compose, project, compose_file):
    """The environment's compose file resolved by compose itself (v2 prints JSON; v1 YAML, read with PyYAML)."""
    base = compose + ["--project-name", project, "--file", compose_file, "config"]
    rc, out, unused_err = run(base + ["--format", "json"])
    if rc == 0 and out.lstrip().startswith("{"):
        return json.loads(out)
    rc, out, err = run(base)
    if rc != 0:
        raise BackupError("%s config failed: %s" % (" ".join(compose), (err.strip().splitlines() or ["no output"])[-1]))
    try:
        import yaml
    except ImportError:
        raise BackupError("reading docker-compose v1's config needs PyYAML for this Python: apt install python3-yaml")
    return yaml.safe_load(out)


def _mounts(service):
    """[(type, source, target, read_only)] of a resolved service, short or long syntax."""
    mounts = []
    for item in service.get("volumes") or []:
        if isinstance(item, dict):
            mounts.append((item.get("type", "volume"), item.get("source"), item["target"], bool(item.get("read_only"))))
            continue
        parts = item.split(":")
        source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
        kind = "bind" if source and (source.startswith("/") or source.startswith(".")) else "volume"
        mounts.append((kind, source, target, len(parts) > 2 and "ro" in parts[2].split(",")))
    return mounts


def scratch_definition(config, live_project, scratch_project, services, archived):
    """The scratch compose file: the checked services only, on scratch volumes, nothing published or shared.

    Returns (definition, {archived volume: compose key}).  Bind mounts stay but
    read-only, so a scratch service can never write into live host files.
    """
    labels = {SCRATCH_LABEL: live_project}
    definition = {"version": "3.8", "services": {}, "volumes": {}, "networks": {"default": {"labels": labels}}}
    keys = {}
    for name in services:
        source = (config.get("services") or {}).get(name)
        if source is None:
            raise BackupError("service %s is not in the compose file: fix minimarket_service_checks" % name)
        service = dict((key, source[key]) for key in SERVICE_KEYS if key in source)
        service["labels"] = labels
        service["volumes"] = []
        for kind, origin, target, read_only in _mounts(source):
            if kind == "bind":
                service["volumes"].append("%s:%s:ro" % (origin, target))
                continue
            if kind != "volume" or not origin:
                continue
            volume_name = ((config.get("volumes") or {}).get(origin) or {}).get("name") or "%s_%s" % (live_project, origin)
            if volume_name not in archived:
                raise BackupError("service %s uses volume %s, which the archive does not hold: check only services whose "
                                  "volumes are backed up" % (name, volume_name))
            keys[volume_name] = origin
            definition["volumes"][origin] = {"external": True, "name": "%s_%s" % (scratch_project, origin)}
            service["volumes"].append("%s:%s%s" % (origin, target, ":ro" if read_only else ""))
        definition["services"][name] = service
    return definition, keys


def remove_leftovers(engine, live_project):
    """Remove every container, network and volume of earlier scratch projects of ``live_project``; returns their names."""
    label = {"label": "%s=%s" % (SCRATCH_LABEL, live_project)}
    removed = []
    for container in engine.api.containers(all=True, filters=label):
        engine.api.remove_container(container["Id"], force=True, v=True)
        removed.append(container["Names"][0].lstrip("/"))
    for network in engine.api.networks(filters=label):
        engine.api.remove_network(network["Id"])
        removed.append(network["Name"])
    for volume in engine.api.volumes(filters=label).get("Volumes") or []:
        engine.remove_volume(volume["Name"])
        removed.append(volume["Name"])
    return removed


def _compose_run(compose, project, path, *args):
    rc, unused_out, err = run(compose + ["--project-name", project, "--file", path] + list(args))
    if rc != 0:
        raise BackupError("%s %s failed in the scratch project %s: %s" % (" ".join(compose), args[0], project,
                                                                          (err.strip().splitlines() or ["no output"])[-1]))


def scratch(engine, compose, live_project, compose_file, checks, src, backup_dir, environment, identity_file=None, timeout=120,
            mode="auto", helper_image=va.DEFAULT_HELPER_IMAGE, allow_devices=False):
    """Restore the checked services' volumes into a scratch project, start it, ask the services, remove it all."""
    specs = check_specs(checks)
    warnings = []
    removed = remove_leftovers(engine, live_project)
    if removed:
        warnings.append("removed a scratch project left over by an earlier verification: %s" % ", ".join(sorted(removed)))
    backup = bs.resolve_source(src, backup_dir, va.KIND, environment, identity_file)
    warnings.extend(backup.warnings)
    records = dict((record["name"], record) for record in backup.metadata.get("volumes", []))
    config = _compose_config(compose, live_project, compose_file)
    project = "mmverify-%s" % uuid.uuid4().hex[:10]
    definition, keys = scratch_definition(config, live_project, project, [spec["service"] for spec in specs], records)
    naming = dict((name, "%s_%s" % (project, key)) for name, key in keys.items())
    result = {"project": project, "archive": backup.path, "services": [], "warnings": warnings, "failure": None}
    workdir = tempfile.mkdtemp(prefix="mmverify-")
    path = os.path.join(workdir, "docker-compose.json")
    try:
        # No journal file: every scratch object carries SCRATCH_LABEL, by which remove_leftovers finds what a killed run left.
        with va.scratch_volumes(engine, backup, _journal.Job(None, "service_check"), names=list(keys), naming=naming, labels={SCRATCH_LABEL: live_project},
                                mode=mode, helper_image=helper_image, allow_devices=allow_devices) as restored:
            result["mode"], result["volumes"] = restored[0], [v for v in restored[1] if v["name"] in keys]
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # resolved environment may hold secrets
            with os.fdopen(fd, "w") as handle:
                json.dump(definition, handle)
            try:
                _compose_run(compose, project, path, "up", "--detach", "--no-color")
                scratch_records = dict((naming[name], records[name]) for name in keys)
                result["services"], result["failure"] = ask(engine, project, specs, scratch_records, _created(backup.metadata),
                                                            timeout, exact=True)
            finally:
                with contextlib.suppress(BackupError):
                    _compose_run(compose, project, path, "down", "--volumes", "--remove-orphans", "--timeout", "5")
                remove_leftovers(engine, live_project)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result
