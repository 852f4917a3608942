# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consistent volume archives without stopping the service: the per-volume consistency modes.

* ``stop``: the containers using the volume are stopped while it is read (the fallback).
* ``redis``: a canary key is written, ``BGSAVE`` runs and is waited for (``INFO
  persistence``); automatic AOF rewrites are paused while the volume is read, so
  the append-only file is read as a prefix of itself, which Redis loads.
* ``prometheus``: a TSDB snapshot (admin API) is taken and archived *as* the
  volume's data, then deleted.
* ``sqlite``: every SQLite database of the volume is copied with SQLite's online
  backup API; the copy is read in place of the live file (a bind mount in a
  private mount namespace, so names and order in the archive stay those of the
  volume) and the live ``-wal``/``-shm`` are left out.

A service that cannot be asked (admin API off, not reachable, several
containers) falls back to ``stop`` with a warning.  Every step that must be
undone (a snapshot or copy to delete, AOF rewrites to resume) is written to the
intent journal (_journal) before it is taken, so the next run undoes what a
killed one left.  The metadata records per
volume how it was made consistent and what a restore must show (canary, key
count, series, table counts), which the service checks compare against.
"""

import contextlib
import os
import re
import shutil
import sqlite3
import time
import uuid

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils import _services as sv

MODES = ("stop", "redis", "prometheus", "sqlite")
REDIS_PORT = 6379
PROMETHEUS_PORT = 9090
CANARY_KEY = "minimarket:backup:canary"
SERIES_QUERY = "up"
WAIT_SECONDS = 300
SNAPSHOT_NAME_RE = re.compile(r"^[0-9A-Za-z-]+$")
# Binds each copy over its live file in a private mount namespace, then runs tar there.
BIND_SCRIPT = 'set -e; while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done; shift; exec "$@"'


def undo(engine, step):
    """Take back one step: delete a snapshot or copy, or set a Redis setting back; returns what was done."""
    if step["kind"] == "remove":
        if not os.path.lexists(step["path"]):
            return []
        shutil.rmtree(step["path"], ignore_errors=True)
        return ["removed %s left by an online backup" % step["path"]]
    try:
        info = engine.api.inspect_container(step["container"])
    except Exception:
        return []  # the container is gone; its setting went with it
    address = sv.container_address(info)
    if info["State"].get("Running") and address:
        with sv.redis(address, REDIS_PORT) as client:
            client.command("CONFIG", "SET", step["key"], step["value"])
        return ["set %s back to %s in Redis %s" % (step["key"], step["value"], info["Name"].lstrip("/"))]
    return []


class Fallback(Exception):
    """The volume cannot be made consistent online; it is archived in ``stop`` mode instead."""


def plan(names, consistency):
    """{volume: mode} for the volumes to archive; a mode for an unlisted volume or an unknown mode is refused."""
    consistency = consistency or {}
    unknown = sorted(set(consistency) - set(names))
    if unknown:
        raise BackupError("consistency names volume(s) %s that are not archived: list them in volumes or remove them"
                          % ", ".join(unknown))
    modes = {}
    for name in names:
        mode = consistency.get(name) or "stop"
        if mode not in MODES:
            raise BackupError("consistency of %s is %r: use one of %s" % (name, mode, ", ".join(MODES)))
        modes[name] = mode
    return modes


def _glob_escape(path):
    return re.sub(r"([*?\[\\])", r"\\\1", path)


class Volume(object):
    """How one volume is read: its tar member, exclusions, bind mounts, metadata record and clean-up."""

    def __init__(self, info, mountpoint, mode):
        self.name = info["Name"]
        self.mountpoint = mountpoint
        self.mode = mode
        self.record = {"mode": mode}
        self.parent = os.path.dirname(os.path.dirname(mountpoint))
        self.member = "%s/_data" % self.name
        self.transform = None
        self.excludes = []
        self.binds = []
        self.quiet_prefixes = []
        self.steps = []
        self.journal = None
        self.docker_host = None
        self.finish = None

    def undoable(self, step):
        """Record an undo step (journal first, as ``online_undo``) before the action it undoes is taken."""
        self.journal.record("online_undo", docker_host=self.docker_host, **step)
        self.steps.append(step)

    def exclude(self, relpath, wildcard=False):
        self.excludes.append("%s/%s" % (self.member, relpath if wildcard else _glob_escape(relpath)))


def _one_container(engine, users, name, service):
    running = users.get(name) or []
    if len(running) > 1:
        raise Fallback("volume %s is used by several running containers (%s); %s mode needs exactly one"
                       % (name, ", ".join(c[1] for c in running), service))
    if not running:
        return None
    info = engine.api.inspect_container(running[0][0])
    if not sv.container_address(info):
        raise Fallback("container %s has no network address to reach %s on" % (running[0][1], service))
    return info


def _wait(condition, what, timeout=WAIT_SECONDS):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            raise BackupError("%s did not happen within %d s" % (what, timeout))
        time.sleep(0.2)


def _redis(engine, volume, users):
    info = _one_container(engine, users, volume.name, "redis")
    if info is None:
        volume.record["how"] = "no running container: files at rest"
        return
    address = sv.container_address(info)
    container = info["Name"].lstrip("/")
    with sv.redis(address, REDIS_PORT) as client:
        try:
            data_dir = client.command("CONFIG", "GET", "dir")[1]
            dbfilename = client.command("CONFIG", "GET", "dbfilename")[1]
            appendonly = client.command("CONFIG", "GET", "appendonly")[1] == "yes"
        except sv.ServiceError as exc:
            raise Fallback("Redis in %s cannot be asked (%s)" % (container, exc))
        if data_dir.rstrip("/") != sv.mount_destination(info, volume.name):
            raise Fallback("Redis in %s keeps its data in %s, not at the root of volume %s" % (container, data_dir, volume.name))
        _wait(lambda: client.info("persistence").get("rdb_bgsave_in_progress") == "0"
              and client.info("persistence").get("aof_rewrite_in_progress") == "0",
              "Redis in %s finishing a running save or AOF rewrite" % container)
        if appendonly:
            rewrite = client.command("CONFIG", "GET", "auto-aof-rewrite-percentage")[1]
            volume.undoable({"kind": "redis", "container": info["Id"], "key": "auto-aof-rewrite-percentage", "value": rewrite})
            client.command("CONFIG", "SET", "auto-aof-rewrite-percentage", "0")
        canary = "%s %s" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), uuid.uuid4().hex)
        client.command("SET", CANARY_KEY, canary)
        keys = client.command("DBSIZE")
        before = _bgsave(client, container)
        done = _wait(lambda: _saved(client, before), "Redis in %s finishing BGSAVE" % container)
        if done.get("rdb_last_bgsave_status") != "ok":
            raise BackupError("Redis in %s failed its BGSAVE (rdb_last_bgsave_status %s; see its log): nothing was archived"
                              % (container, done.get("rdb_last_bgsave_status")))
        rewrites = done.get("aof_rewrites")
    volume.exclude("temp-*", wildcard=True)
    volume.quiet_prefixes.append("%s/appendonlydir/" % volume.member)
    volume.record.update({
        "how": "BGSAVE finished" + ("; append-only file read with automatic rewrites paused" if appendonly else ""),
        "container": container, "canary_key": CANARY_KEY, "canary": canary, "keys": keys, "appendonly": appendonly,
        "rdb": dbfilename,
    })

    def finish():
        with sv.redis(address, REDIS_PORT) as client:
            if client.info("persistence").get("aof_rewrites") != rewrites:
                raise BackupError("Redis in %s rewrote its append-only file while %s was archived: run the backup again"
                                  % (container, volume.name))
    volume.finish = finish


def _bgsave(client, container):
    """Start a BGSAVE (waiting out one already running, which may predate the canary); returns INFO from just before."""
    while True:
        before = client.info("persistence")
        try:
            client.command("BGSAVE")
            return before
        except sv.ServiceError as exc:
            if "in progress" not in str(exc):
                raise BackupError("Redis in %s refused BGSAVE (%s): nothing was archived" % (container, exc))
        _wait(lambda: client.info("persistence").get("rdb_bgsave_in_progress") == "0",
              "Redis in %s finishing a running save" % container)


def _saved(client, before):
    now = client.info("persistence")
    if now.get("rdb_bgsave_in_progress") == "0" and now.get("rdb_saves") != before.get("rdb_saves"):
        return now
    return None


def _prometheus(engine, volume, users):
    info = _one_container(engine, users, volume.name, "prometheus")
    if info is None:
        volume.record["how"] = "no running container: files at rest"
        return
    base = "http://%s:%d" % (sv.container_address(info), PROMETHEUS_PORT)
    container = info["Name"].lstrip("/")
    try:
        status, flags = sv.http_json("GET", base + "/api/v1/status/flags")
    except sv.ServiceError as exc:
        raise Fallback("Prometheus in %s cannot be asked (%s)" % (container, exc))
    path = ((flags or {}).get("data") or {}).get("storage.tsdb.path", "").rstrip("/")
    if status != 200 or path != sv.mount_destination(info, volume.name):
        raise Fallback("Prometheus in %s keeps its TSDB in %r, not at the root of volume %s" % (container, path, volume.name))
    at = time.time()
    status, answer = sv.http_json("GET", base + "/api/v1/query", {"query": SERIES_QUERY, "time": "%.3f" % at})
    series = sorted((item["metric"] for item in ((answer or {}).get("data") or {}).get("result", [])),
                    key=lambda metric: sorted(metric.items()))
    status, answer = sv.http_json("POST", base + "/api/v1/admin/tsdb/snapshot")
    name = ((answer or {}).get("data") or {}).get("name", "")
    if status != 200 or not SNAPSHOT_NAME_RE.match(name):
        raise Fallback("the admin API of Prometheus in %s is off or failed (HTTP %s: %s); start Prometheus with "
                       "--web.enable-admin-api for online backups" % (container, status, (answer or {}).get("error", "no answer")))
    snapshot = os.path.join(volume.mountpoint, "snapshots", name)
    volume.undoable({"kind": "remove", "path": snapshot})
    if not os.path.isdir(snapshot):
        raise BackupError("Prometheus in %s reported snapshot %s but %s does not exist" % (container, name, snapshot))
    volume.parent = os.path.dirname(snapshot)
    volume.member = name
    volume.transform = r"s,^%s,%s,S" % (name, volume.name)
    volume.record.update({"how": "TSDB snapshot %s archived as the volume's data" % name, "container": container,
                          "query": SERIES_QUERY, "time": round(at, 3), "series": series})


def _sqlite(volume, workdir):
    databases = []
    for root, dirs, files in os.walk(volume.mountpoint):
        dirs.sort()
        for entry in sorted(files):
            path = os.path.join(root, entry)
            if not os.path.islink(path) and os.path.isfile(path) and sv.is_sqlite(path):
                databases.append(path)
    if not databases:
        raise Fallback("volume %s holds no SQLite database" % volume.name)
    copies = os.path.join(workdir, ".mm-sqlite-%s" % uuid.uuid4().hex[:12])
    volume.undoable({"kind": "remove", "path": copies})
    os.mkdir(copies, 0o700)
    records = []
    for number, path in enumerate(databases):
        relpath = os.path.relpath(path, volume.mountpoint)
        copy = os.path.join(copies, "%d.db" % number)
        st = os.stat(path)
        try:
            with sv.sqlite_connection(path) as source:
                target = sqlite3.connect(copy)
                try:
                    source.backup(target)
                    summary = sv.sqlite_summary(target)
                finally:
                    target.close()
        except sqlite3.Error as exc:
            raise BackupError("online backup of %s in volume %s failed (%s): nothing was archived" % (relpath, volume.name, exc))
        if summary["integrity"] != "ok":
            raise BackupError("the online copy of %s in volume %s fails integrity_check (%s): nothing was archived"
                              % (relpath, volume.name, summary["integrity"]))
        os.chown(copy, st.st_uid, st.st_gid)
        os.chmod(copy, st.st_mode & 0o7777)
        os.utime(copy, (st.st_atime, st.st_mtime))
        volume.binds.append((copy, path))
        for suffix in ("-wal", "-shm", "-journal"):
            volume.exclude(relpath + suffix)
        summary["path"] = relpath
        records.append(summary)
    volume.record.update({"how": "SQLite online backup of each database", "databases": records})


@contextlib.contextmanager
def prepared(engine, infos, mountpoints, modes, users, workdir, journal, warnings):
    """Make each online volume consistent while its service runs; yields {name: Volume}; always undoes what it did.

    Each undo step is recorded in ``journal`` (a _journal.Job) first; what a
    killed run left is undone by the journal replay (``online_undo`` in
    _volume_archive's repairers).  ``mountpoints`` is None in API mode,
    where online modes fall back to ``stop``.  A volume that falls back has
    ``mode == "stop"`` and a warning in ``warnings``.
    """
    volumes = {}
    try:
        for info in infos:
            name = info["Name"]
            mountpoint = (mountpoints or {}).get(name)
            volume = volumes[name] = Volume(info, mountpoint or "/%s/_data" % name, modes[name])
            volume.journal = journal
            volume.docker_host = engine.docker_host
            if volume.mode == "stop":
                continue
            try:
                if mountpoint is None:
                    raise Fallback("online modes need host mode (root on the Docker host)")
                if volume.mode == "redis":
                    _redis(engine, volume, users)
                elif volume.mode == "prometheus":
                    _prometheus(engine, volume, users)
                else:
                    _sqlite(volume, workdir)
            except (Fallback, sv.ServiceError) as exc:
                for step in reversed(volume.steps):
                    undo(engine, step)
                volume.steps = []
                volumes[name] = Volume(info, volume.mountpoint, "stop")
                volumes[name].record["fallback"] = "%s: %s" % (volume.mode, exc)
                warnings.append("volume %s: %s; archived in stop mode instead (its containers stopped)" % (name, exc))
        yield volumes
    finally:
        problems = []
        for volume in volumes.values():
            for step in reversed(volume.steps):
                try:
                    undo(engine, step)
                except Exception as exc:
                    problems.append("%s (%s)" % (volume.name, exc))
        if problems:
            journal.keep = True
            raise BackupError("could not undo the online backup steps for %s (the next backup retries): check those services"
                              % ", ".join(problems))


def finish(volumes):
    """Checks that can only be made once the volumes were read (e.g. no AOF rewrite meanwhile)."""
    for volume in volumes.values():
        if volume.finish is not None:
            volume.finish()


def tar_command(volumes, base_command):
    """GNU tar over the prepared volumes (``base_command`` without members), wrapped in a mount namespace for copies."""
    command = list(base_command)
    for volume in volumes.values():
        if volume.transform:
            command.append("--transform=" + volume.transform)
    excludes = [pattern for volume in volumes.values() for pattern in volume.excludes]
    if excludes:
        command += ["--anchored", "--wildcards"] + ["--exclude=" + pattern for pattern in excludes]
    for volume in volumes.values():
        command += ["-C", volume.parent, volume.member]
    binds = [path for volume in volumes.values() for pair in volume.binds for path in pair]
    if binds:
        command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", BIND_SCRIPT, "sh"] + binds + ["--"] + command
    return command


def expected_warning(volumes, warning):
    """Whether a tar race warning is expected for an online volume (Redis appending to its AOF)."""
    return any(warning.startswith(prefix) for volume in volumes.values() for prefix in volume.quiet_prefixes)
