# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery with Barman: the target, the swap into the data volume, the health facts.

Barman (streaming: pg_basebackup + pg_receivewal through a slot) owns the base backups and
the WAL; this file decides only what must be safe around it:

- a target time is parsed and checked against the clock and the catalogue before anything
  stops (one line naming the problem and the fix);
- the recovered cluster is staged beside the volume's ``_data`` and swapped in by renames;
  the previous ``_data`` stays until the recovered cluster has promoted and passed the
  operator's checks, and is put back otherwise. A journal file next to ``_data`` lets the
  next run finish or undo a swap that a killed run left half done;
- the age of the last WAL received and of the last base backup, for the metrics.
"""

import contextlib
import datetime
import json
import os
import re
import shutil
import time

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import check_environment
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._files import AtomicFile, fsync_directory
from ansible_collections.minimarket.backup.plugins.module_utils._compose import service_container
from ansible_collections.minimarket.backup.plugins.module_utils._pg_verify import VerifyFailed
from ansible_collections.minimarket.backup.plugins.module_utils._process import run

LATEST = "latest"
TARGET_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<time>\d{2}:\d{2}:\d{2})(?P<frac>\.\d{1,6})?\s*"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?$"
)
STAGING = "_data.pitr-staging"
PREVIOUS = "_data.pitr-previous"
FAILED = "_data.pitr-failed"
JOURNAL = "pitr-swap.json"
METRICS_PREFIX = "minimarket_backup_pitr_"
METRICS = (
    ("last_wal_received_timestamp_seconds", "Unix time the newest WAL data reached the backup host (0: none yet)."),
    ("rpo_seconds", "Seconds of committed transactions not yet on the backup host (0 when streaming is caught up)."),
    ("last_base_backup_timestamp_seconds", "Unix time the newest complete base backup finished (0: none)."),
    ("streaming_up", "1 if WAL streaming (barman receive-wal) is running and its replication slot is active."),
    ("check_ok", "1 if every 'barman check' passed."),
    ("status_timestamp_seconds", "Unix time these PITR metrics were collected."),
)
STOPPED_OK = ("recover", "status")


def parse_target(text, now=None):
    """``latest`` or an aware datetime; a time without a zone is the backup host's local time."""
    text = (text or "").strip()
    if text == LATEST:
        return LATEST
    match = TARGET_RE.match(text)
    if not match:
        raise BackupError("target_time %r is not a time: write YYYY-MM-DD HH:MM:SS[+TZ] (e.g. '2026-03-14 17:55:00-03') "
                          "or 'latest'" % text)
    tz = match.group("tz")
    iso = "%sT%s%s" % (match.group("date"), match.group("time"), match.group("frac") or "")
    try:
        when = datetime.datetime.fromisoformat(iso)
    except ValueError as exc:
        raise BackupError("target_time %r is not a valid date or time (%s): write YYYY-MM-DD HH:MM:SS[+TZ]" % (text, exc))
    if tz is None:
        when = when.astimezone()
    else:
        if tz == "Z":
            offset = datetime.timedelta(0)
        else:
            digits = tz[1:].replace(":", "")
            offset = datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
            if tz[0] == "-":
                offset = -offset
        if abs(offset) >= datetime.timedelta(hours=24):
            raise BackupError("target_time %r has an impossible time zone offset %s" % (text, tz))
        when = when.replace(tzinfo=datetime.timezone(offset))
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if when > now:
        raise BackupError("target_time %s is in the future (now %s): give a moment in the past, or 'latest'"
                          % (when.isoformat(" "), now.astimezone(when.tzinfo).replace(microsecond=0).isoformat(" ")))
    return when


def choose_backup(target, backups):
    """The newest complete base backup that finished before ``target`` (``latest``: the newest).

    ``backups``: Barman's ``list-backup`` entries (``backup_id``, ``status``, ``end_time_timestamp``).
    A base backup is consistent only from its end, so an earlier target cannot be reached from it.
    """
    done = sorted((b for b in backups if b.get("status") == "DONE"), key=lambda b: float(b["end_time_timestamp"]))
    if not done:
        raise BackupError("Barman has no complete base backup yet: run playbooks/schedule.yml (it takes the first one) "
                          "or use the dump path (recover_database.yml without target_time)")
    if target == LATEST:
        return done[-1]
    eligible = [b for b in done if float(b["end_time_timestamp"]) <= target.timestamp()]
    if not eligible:
        oldest = datetime.datetime.fromtimestamp(float(done[0]["end_time_timestamp"]), target.tzinfo)
        raise BackupError("target_time %s is before the oldest base backup, which finished at %s: choose a later time, "
                          "or restore a nightly dump (recover_database.yml without target_time)"
                          % (target.isoformat(" "), oldest.isoformat(" ")))
    return eligible[-1]


class Barman(object):
    """``barman -c <config>`` for one server."""

    def __init__(self, config, server, binary="barman"):
        self.config = config
        self.server = server
        self.binary = binary

    def run(self, *args, **kwargs):
        argv = [self.binary, "-c", self.config] + list(args)
        rc, out, err = run(argv)
        if rc != 0 and not kwargs.get("allow_failure"):
            lines = [line.strip() for line in (err or out or "").splitlines() if line.strip()]
            raise BackupError("barman %s failed (exit %s): %s" % (args[0] if args[0] != "-f" else args[2], rc,
                                                                  " ".join(lines[-2:]) or "no message"))
        return rc, out

    def json(self, *args):
        _rc, out = self.run("-f", "json", *args)
        try:
            return json.loads(out)
        except ValueError:
            raise BackupError("barman %s printed no JSON: %s" % (args[0], out.strip()[:200]))

    def backups(self):
        return self.json("list-backup", self.server).get(self.server, [])

    def home(self):
        return self.json("show-server", self.server).get(self.server, {}).get("backup_directory")

    def archived(self, wal_name):
        home = self.home()
        return bool(home) and os.path.exists(os.path.join(home, "wals", wal_name[:16], wal_name))

    def wait_archived(self, wal_name, timeout=120):
        """Move streamed segments into the archive until ``wal_name`` is there (recovery reads only the archive)."""
        deadline = time.time() + timeout
        while True:
            self.run("archive-wal", self.server)
            if self.archived(wal_name):
                return
            if time.time() > deadline:
                raise BackupError("WAL segment %s did not reach Barman's archive within %ss: check 'barman check %s' "
                                  "and that receive-wal runs" % (wal_name, timeout, self.server))
            time.sleep(1)

    def recover(self, backup_id, dest, target):
        args = ["recover", self.server, backup_id, dest]
        if target != LATEST:
            args[1:1] = ["--target-time", target.isoformat(" "), "--target-action", "promote"]
        self.run(*args)

    def check(self):
        rc, out = self.run("check", "--nagios", self.server, allow_failure=True)
        return rc == 0, out.strip()


def volume_paths(mountpoint):
    """Staging, previous, failed and journal paths beside the volume's _data (same filesystem: renames)."""
    if os.path.basename(mountpoint.rstrip("/")) != "_data":
        raise BackupError("volume mountpoint %s does not end in _data: point-in-time recovery needs a local-driver volume"
                          % mountpoint)
    parent = os.path.dirname(mountpoint.rstrip("/"))
    return dict(data=mountpoint.rstrip("/"), staging=os.path.join(parent, STAGING), previous=os.path.join(parent, PREVIOUS),
                failed=os.path.join(parent, FAILED), journal=os.path.join(parent, JOURNAL))


def _write_journal(paths, state):
    with AtomicFile(paths["journal"], locked=True) as out:
        out.handle.write(json.dumps({"state": state, "at": time.time()}).encode("utf-8"))
        out.commit()


def _read_journal(paths):
    try:
        with open(paths["journal"]) as handle:
            return json.load(handle).get("state")
    except FileNotFoundError:
        return None
    except ValueError:
        return "swapping"


def _remove(path):
    if os.path.lexists(path):
        shutil.rmtree(path)


def repair(paths):
    """Finish what a killed run left: an unverified swap is undone, the previous data put back; returns what was done."""
    state = _read_journal(paths)
    done = []
    if state in ("swapping", "swapped"):
        if os.path.isdir(paths["previous"]):
            if os.path.lexists(paths["data"]):
                _remove(paths["failed"])
                os.rename(paths["data"], paths["failed"])
            os.rename(paths["previous"], paths["data"])
            done.append("put the data from before an unfinished recovery back into place")
        fsync_directory(os.path.dirname(paths["data"]))
    if os.path.lexists(paths["staging"]):
        _remove(paths["staging"])
        done.append("removed a leftover staging directory")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths["journal"])
    return done


def prepare_staging(paths, owner):
    """Barman writes as root; PostgreSQL (the container's user) must own the cluster, 0700 at the top."""
    uid, gid = owner
    for root, dirs, files in os.walk(paths["staging"]):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)
    os.chown(paths["staging"], uid, gid)
    os.chmod(paths["staging"], 0o700)


def swap_in(paths):
    """_data -> previous, staging -> _data, journaled so a killed run is repaired (undone) by the next one."""
    _remove(paths["previous"])
    _write_journal(paths, "swapping")
    os.rename(paths["data"], paths["previous"])
    os.rename(paths["staging"], paths["data"])
    fsync_directory(os.path.dirname(paths["data"]))
    _write_journal(paths, "swapped")


def swap_back(paths):
    """Put the previous _data back; the rejected recovered cluster is kept as ``_data.pitr-failed`` for inspection."""
    _remove(paths["failed"])
    os.rename(paths["data"], paths["failed"])
    os.rename(paths["previous"], paths["data"])
    fsync_directory(os.path.dirname(paths["data"]))
    os.unlink(paths["journal"])


def commit(paths):
    """The recovered cluster is verified: the previous data can go."""
    os.unlink(paths["journal"])
    _remove(paths["previous"])


def last_wal_received(streaming_dir):
    """Unix time the newest WAL data was written into Barman's streaming directory (0: none)."""
    newest = 0.0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(streaming_dir):
            newest = max(newest, os.stat(os.path.join(streaming_dir, name)).st_mtime)
    return newest


def rpo_seconds(lag_bytes, last_received, now):
    """What a disaster now would lose: nothing if the slot has everything the server wrote, else the time since WAL last arrived."""
    if lag_bytes is not None and lag_bytes <= 0:
        return 0.0
    if not last_received:
        return now
    return max(0.0, now - last_received)


def render_metrics(environment, values):
    check_environment(environment)
    lines = []
    for name, help_text in METRICS:
        lines.append("# HELP %s%s %s" % (METRICS_PREFIX, name, help_text))
        lines.append("# TYPE %s%s gauge" % (METRICS_PREFIX, name))
        value = float(values.get(name, 0))
        lines.append('%s%s{environment="%s"} %s' % (METRICS_PREFIX, name, environment,
                                                    "%d" % value if value.is_integer() else repr(round(value, 3))))
    return "\n".join(lines) + "\n"


def metrics_file(textfile_dir, environment):
    return os.path.join(textfile_dir, "%s%s.prom" % (METRICS_PREFIX, check_environment(environment)))


def write_metrics(path, text):
    with AtomicFile(path, locked=True) as out:
        os.fchmod(out.handle.fileno(), 0o644)
        out.handle.write(text.encode("utf-8"))
        out.commit()


class Container(object):
    """A PostgreSQL container: stop/start, its log, and SQL through ``docker exec`` (PgTools)."""

    def __init__(self, engine, container, tools):
        self.engine = engine
        self.container = container
        self.tools = tools

    def running(self):
        return bool(self.engine.api.inspect_container(self.container)["State"].get("Running"))

    def stop(self):
        if self.running():
            self.engine.stop(self.container, timeout=60)

    def start(self):
        self.engine.start(self.container)

    def last_log(self):
        lines = self.engine.api.logs(self.container, tail=20).decode("utf-8", "replace").strip().splitlines()
        fatal = [line for line in lines if "FATAL" in line or "PANIC" in line]
        return (fatal or lines or ["no output"])[-1].strip()

    def wait_promoted(self, timeout):
        """Until the cluster accepts writes (recovery reached its target and promoted); fails if the container dies."""
        deadline = time.time() + timeout
        while True:
            if not self.running():
                raise BackupError("PostgreSQL stopped during recovery: %s" % self.last_log())
            with contextlib.suppress(BackupError):
                if self.tools.psql(self.tools.maintenance_db, "SELECT pg_is_in_recovery();")[0][0] == "f":
                    return
            if time.time() > deadline:
                raise BackupError("PostgreSQL did not finish recovery within %ss: %s" % (timeout, self.last_log()))
            time.sleep(1)

    def switch_wal(self):
        """Close the segment being written so everything committed until now can be archived; None if the server is down.

        A transaction is committed first: recovery stops at the first commit after the target, and
        PostgreSQL refuses to end recovery before it reached the target (an idle database has none).
        """
        try:
            return self.tools.psql(self.tools.maintenance_db, "SELECT txid_current();\nSELECT pg_walfile_name(pg_switch_wal());",
                                   what="switching WAL")[-1][0]
        except BackupError:
            return None


def live_container(params, run_command=run):
    """The live PostgreSQL container: ``container``, or the one the compose labels point at (None: status without one).

    Found by labels so Compose v1 and v2 names both work. ``recover`` accepts it stopped (a run killed after
    stopping it, or a server that died, leaves it so, and the next recover is what repairs it), and so does
    ``status`` (a server that is down is reported as streaming down, not as a failed measurement).
    """
    if params.get("container"):
        return params["container"]
    if params.get("compose_service"):
        return service_container(run_command, params["compose_project"], params["compose_service"],
                                 allow_stopped=params["state"] in STOPPED_OK)
    if params["state"] == "status":
        return None
    raise BackupError("state=%s needs the live PostgreSQL container: set compose_project and compose_service "
                      "(minimarket_compose_project, minimarket_db_service)" % params["state"])


class Cluster(Container):
    """The live cluster's container and its data volume (where a recovered cluster is swapped in)."""

    def __init__(self, engine, container, data_dir, tools):
        Container.__init__(self, engine, container, tools)
        try:
            info = engine.api.inspect_container(container)
        except Exception as exc:
            raise BackupError("cannot inspect container %s (%s): is it still there? check 'docker ps -a'" % (container, exc))
        mounts = [m for m in info.get("Mounts", []) if m.get("Destination") == data_dir]
        if not mounts or mounts[0].get("Type") != "volume":
            raise BackupError("container %s has no volume mounted at %s: set data_dir to its PGDATA" % (container, data_dir))
        self.volume = mounts[0]["Name"]
        self.paths = volume_paths(mounts[0]["Source"])


def add_partial_wal(barman, staging):
    """Give recovery the segment pg_receivewal was still writing (the live server is gone, so it will never be closed).

    Like ``barman-wal-restore --partial``: the file holds every WAL record received, zeros after them,
    which recovery reads as the end of WAL. Returns the segment name, or None.
    """
    streaming = barman.json("show-server", barman.server).get(barman.server, {}).get("streaming_wals_directory") or ""
    with contextlib.suppress(FileNotFoundError):
        for name in sorted(os.listdir(streaming), reverse=True):
            if name.endswith(".partial"):
                segment = name[:-len(".partial")]
                wal_dir = os.path.join(staging, "barman_wal")  # with a target; without one Barman copies WAL into pg_wal
                if not os.path.isdir(wal_dir):
                    wal_dir = os.path.join(staging, "pg_wal")
                shutil.copyfile(os.path.join(streaming, name), os.path.join(wal_dir, segment))
                return segment
    return None


def recover(barman, cluster, target, check_content, timeout=600, check_mode=False):
    """Recover ``target`` into staging, swap it into the data volume, promote, check; put the old data back on failure.

    ``check_content()`` returns (checks, problems) for the recovered database. Every refusal
    (target, catalogue) happens before the container is stopped.
    """
    started = time.time()
    paths = cluster.paths
    result = {"target_time": target if target == LATEST else target.isoformat(" "), "volume": cluster.volume, "repaired": []}
    backup = choose_backup(target, barman.backups())
    result["backup_id"] = backup["backup_id"]
    if check_mode:
        result["msg"] = "would recover backup %s to %s into volume %s" % (backup["backup_id"], result["target_time"], cluster.volume)
        return result
    if _read_journal(paths) is not None:
        cluster.stop()
        result["repaired"] = repair(paths)
        cluster.start()
        # A server still starting would be taken for a dead one (recovered from the WAL received so far only);
        # one that cannot start at all is what recovery is for, so that is no failure here.
        with contextlib.suppress(BackupError):
            cluster.wait_promoted(timeout)
    wal = cluster.switch_wal()
    if wal:
        barman.wait_archived(wal)
    _remove(paths["staging"])
    try:
        barman.recover(backup["backup_id"], paths["staging"], target)
        if not wal:
            partial = add_partial_wal(barman, paths["staging"])
            result["warnings"] = ["the live server did not answer: recovering with the WAL received so far (%s)"
                                  % (("including the unfinished segment " + partial) if partial else "no unfinished segment")]
        st = os.stat(paths["data"])
        prepare_staging(paths, (st.st_uid, st.st_gid))
    except BaseException:
        _remove(paths["staging"])
        raise
    result["recovered_at"] = round(time.time() - started, 3)
    cluster.stop()
    swap_in(paths)
    try:
        cluster.start()
        cluster.wait_promoted(timeout)
        result["checks"], problems = check_content()
        if problems:
            raise BackupError("recovered database failed verification: %s" % "; ".join(problems[:3]))
    except BaseException as exc:
        with contextlib.suppress(BackupError):
            cluster.stop()
        swap_back(paths)
        cluster.start()
        raise BackupError("%s -- the database is back as it was before the recovery (rejected copy kept in %s)"
                          % (exc, paths["failed"]))
    commit(paths)
    result["duration"] = round(time.time() - started, 3)
    result["msg"] = "recovered to %s from base backup %s" % (result["target_time"], backup["backup_id"])
    return result


def slot_lag(tools, slot_name):
    """(bytes the server wrote that receive-wal has not written yet, slot active), (None, False) when the server is down.

    The write position, not the slot's restart_lsn: pg_receivewal confirms a flush only when it closes a segment.
    """
    try:
        rows = tools.psql(tools.maintenance_db,
                          "SELECT pg_current_wal_lsn() - r.write_lsn, s.active FROM pg_replication_slots s"
                          " LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = '%s';"
                          % slot_name.replace("'", "''"), what="reading the replication slot")
    except BackupError:
        return None, False
    if not rows:
        return None, False
    return (int(float(rows[0][0])) if rows[0][0] else None), rows[0][1] == "t"


def status(barman, tools, slot_name, environment, textfile_dir, now, write=True):
    """The PITR health facts (and the metrics file when ``textfile_dir`` is set)."""
    server = barman.json("show-server", barman.server).get(barman.server, {})
    last_received = last_wal_received(server.get("streaming_wals_directory") or "")
    done = [b for b in barman.backups() if b.get("status") == "DONE"]
    last_backup = max([float(b["end_time_timestamp"]) for b in done] or [0])
    lag, active = slot_lag(tools, slot_name)
    check_ok, check_text = barman.check()
    values = {
        "last_wal_received_timestamp_seconds": round(last_received, 3),
        "rpo_seconds": round(rpo_seconds(lag, last_received, now), 3),
        "last_base_backup_timestamp_seconds": last_backup,
        "streaming_up": 1 if active else 0,
        "check_ok": 1 if check_ok else 0,
        "status_timestamp_seconds": round(now, 3),
    }
    result = {"metrics": values, "lag_bytes": lag, "check": check_text}
    if textfile_dir:
        result["path"] = metrics_file(textfile_dir, environment)
        if write:
            write_metrics(result["path"], render_metrics(environment, values))
    return result


def scratch_verify(barman, engine, image, owner, workdir, target, make_tools, check_content, timeout=600):
    """Recover ``target`` into ``workdir`` and start it in a throwaway container (no network); check it; remove both.

    The live cluster and its volume are never touched. ``make_tools(container)`` returns PgTools for
    that container; ``check_content(tools)`` returns (checks, problems). A failure once the base backup
    is chosen is a VerifyFailed carrying the target, the backup and the checks, for the verification report.
    """
    started = time.time()
    backup = choose_backup(target, barman.backups())
    data = os.path.join(workdir, "data")
    result = {"target_time": target if target == LATEST else target.isoformat(" "), "backup_id": backup["backup_id"]}
    _remove(workdir)
    os.makedirs(workdir, 0o700)
    container = None
    try:
        barman.recover(backup["backup_id"], data, target)
        prepare_staging({"staging": data}, owner)
        config = engine.api.create_host_config(binds={data: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
                                               network_mode="none")
        container = engine.api.create_container(image, host_config=config, network_disabled=True,
                                                labels={"minimarket.backup.helper": "1"})["Id"]
        engine.start(container)
        tools = make_tools(container)
        Container(engine, container, tools).wait_promoted(timeout)
        result["checks"], problems = check_content(tools)
    except BackupError as exc:
        raise VerifyFailed(str(exc), dict(result, duration=round(time.time() - started, 3)))
    finally:
        if container:
            with contextlib.suppress(Exception):
                engine.api.remove_container(container, force=True, v=True)
        _remove(workdir)
    result["duration"] = round(time.time() - started, 3)
    if problems:
        raise VerifyFailed("point-in-time recovery to %s (base backup %s) failed verification: %s"
                           % (result["target_time"], backup["backup_id"], "; ".join(problems[:3])), result)
    return result
