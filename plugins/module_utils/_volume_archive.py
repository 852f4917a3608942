# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Archive, verify and restore Docker named volumes (logic behind docker_volume_archive).

Two read/write paths produce and accept the same archive (pax tar, one
top-level directory per volume):

* host: root on the Docker host reads the volume's mountpoint with GNU tar
  (xattrs, ACLs, sparse files, hard links; ``tar | zstd -T0`` speed) and
  restores by extracting *beside* the data, checking the result, then
  swapping directories, so a failure leaves every volume as it was;
* api: the Engine archive API through a helper container that is never
  started for reading (remote engines, Docker Desktop); it carries no ACLs,
  no xattrs except ``security.capability`` and stores sparse files densely.

Python parses every stream once, for the content digests and (on restore)
the safety checks made before anything is written.  A host-mode restore
decompresses the archive once: each member is checked before its bytes are
forwarded to the GNU tar that extracts it beside the data.
"""

import collections
import contextlib
import ctypes
import errno
import hashlib
import os
import re
import shutil
import tarfile
import time

from ansible_collections.minimarket.backup.plugins.module_utils import _backup_set as bs
from ansible_collections.minimarket.backup.plugins.module_utils._files import (
    AtomicFile,
    Filesystems,
    SyncHelper,
    backup_lock,
    new_archive_path,
    remove_stale_partials,
    write_metadata,
)
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import (
    CompressedSink,
    archive_stream,
    check_recipients,
    encryption_record,
)
from ansible_collections.minimarket.backup.plugins.module_utils._process import PIPE, Process, libc_function, widen_pipe
from ansible_collections.minimarket.backup.plugins.module_utils import _journal
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._docker import Engine, containers_stopped, start_stopped
from ansible_collections.minimarket.backup.plugins.module_utils import _volume_consistency as vc
from ansible_collections.minimarket.backup.plugins.module_utils._volume_tar import (
    READ,
    STREAM_BUFFER,
    ContentHasher,
    PipeReader,
    SafetyChecker,
    TarSink,
    TeeReader,
    extract_stream,
    is_pipe,
    scan_stream,
)

KIND = "volumes"
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")
DEFAULT_HELPER_IMAGE = "minimarket/busybox:latest"
# GNU tar reports these for files that change or vanish while read; they are warnings, not failures.
TAR_RACE_RE = re.compile(
    r"^tar: (?P<path>.+?): (?P<what>file changed as we read it|File removed before we read it|"
    r"File shrank by \d+ bytes; padding with zeros|Cannot stat: No such file or directory|"
    r"Cannot open: No such file or directory|file changed as we read it)$"
)
TAR_CREATE = [
    "tar", "--create", "--file=-", "--format=posix", "--pax-option=delete=atime,delete=ctime",
    "--sort=name", "--numeric-owner", "--sparse", "--xattrs", "--acls",
]
TAR_EXTRACT = [
    "tar", "--extract", "--file=-", "--numeric-owner", "--same-owner", "--same-permissions",
    "--xattrs", "--xattrs-include=*", "--acls", "--sparse",
]
WIPE_SCRIPT = 'set -e; for v in "$@"; do cd "/mm/$v"; rm -rf -- ..?* .[!.]* *; done'
AT_FDCWD = -100
RENAME_EXCHANGE = 2
_RENAMEAT2 = libc_function("renameat2")
# How often a restore's extraction is made durable while it runs (syncfs: cheap when little is waiting).
SYNC_PERIOD = 0.5


def check_volume_names(names):
    for name in names:
        if not VOLUME_NAME_RE.match(name or ""):
            raise BackupError("%r is not a Docker volume name: use letters, digits, '_', '.' and '-'" % (name,))
    if len(set(names)) != len(names):
        raise BackupError("volumes lists a volume twice: list each volume once")


def classify_tar_stderr(text):
    """Split GNU tar's stderr into (race warnings, real errors)."""
    warnings, errors = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line == "tar: Exiting with failure status due to previous errors":
            continue
        match = TAR_RACE_RE.match(line)
        if match:
            warnings.append("%s: %s while archiving; that member may not be consistent" % (match.group("path"), match.group("what")))
        else:
            errors.append(line)
    return warnings, errors


def host_mountpoint(info):
    """The readable mountpoint of a local-driver volume, or None."""
    mountpoint = info.get("Mountpoint") or ""
    if info.get("Driver") != "local" or os.path.basename(mountpoint) != "_data":
        return None
    if os.path.basename(os.path.dirname(mountpoint)) != info["Name"]:
        return None
    if not os.path.isdir(mountpoint) or not os.access(mountpoint, os.R_OK | os.X_OK):
        return None
    return mountpoint


def choose_mode(engine, infos, mode):
    usable = engine.local and all(host_mountpoint(info) for info in infos)
    if mode == "host" and not usable:
        raise BackupError(
            "mode=host needs root on the Docker host and local-driver volumes whose mountpoint is readable; "
            "use mode=api (or auto)"
        )
    if mode == "auto":
        return "host" if usable else "api"
    return mode


def host_create_command(groups, transform=True):
    """GNU tar over ``[(parent, member)]``; archive names become ``<volume>/...``."""
    command = list(TAR_CREATE)
    if transform:
        command.append(r"--transform=s,^\([^/]*\)/_data,\1,S")
    for parent, member in groups:
        command += ["-C", parent, member]
    return command


def read_host(command, sink, volumes, contents=True):
    """Run GNU tar, copy its stream into ``sink`` and digest it; returns (summaries, warnings)."""
    with Process(command, stdout=PIPE) as proc:
        if is_pipe(proc.stdout) and (sink is None or sink.tee_fd() is not None):
            reader = PipeReader(proc.stdout, sink)
        else:
            reader = TeeReader(proc.stdout, sink)
        summaries = scan_stream(reader, volumes=set(volumes), contents=contents)
        reader.drain()
        rc = proc.wait()
        stderr = proc.stderr()
    warnings, errors = classify_tar_stderr(stderr)
    if errors or (rc != 0 and not warnings):
        raise BackupError("GNU tar failed reading the volumes (exit %d): %s" % (rc, (errors or ["no message"])[0]))
    return summaries, warnings


class _IterReader(object):
    """File-like view of the chunk generator the Engine archive API returns (no re-slicing of big chunks)."""

    def __init__(self, chunks):
        self._chunks = iter(chunks)
        self._chunk = b""
        self._offset = 0

    def read(self, size=-1):
        parts = []
        while size != 0:
            if self._offset >= len(self._chunk):
                self._chunk = next(self._chunks, None)
                self._offset = 0
                if self._chunk is None:
                    self._chunk = b""
                    break
            end = len(self._chunk) if size < 0 else min(len(self._chunk), self._offset + size)
            parts.append(self._chunk[self._offset:end])
            if size > 0:
                size -= end - self._offset
            self._offset = end
        return b"".join(parts)


class _HashingReader(object):
    def __init__(self, handle, hasher):
        self.handle = handle
        self.hasher = hasher

    def read(self, size=-1):
        data = self.handle.read(size)
        self.hasher.data(data)
        return data


def read_api(engine, container_id, names, sink):
    """Read volumes through the archive API, rewriting them as one pax stream into ``sink`` (may be None)."""
    out = tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=STREAM_BUFFER) if sink is not None else None

    def copy(archive, member):
        if out is not None:
            del out.members[:]  # the writer, too, would keep every TarInfo
        if not member.isreg():
            if out is not None:
                out.addfile(member)
            return None
        hasher = ContentHasher()
        reader = _HashingReader(archive.extractfile(member), hasher)
        if out is not None:
            out.addfile(member, reader)
        else:
            for block in iter(lambda: reader.read(READ), b""):
                pass
        if hasher.size != member.size:
            raise BackupError("%s changed size while read through the Engine API: run again with stop_containers=true" % member.name)
        return hasher.hexdigest()

    summaries = {}
    for name in names:
        try:
            chunks, unused = engine.api.get_archive(container_id, "/mm/%s" % name, chunk_size=READ)
        except Exception as exc:
            raise BackupError("cannot read volume %s through the Engine API: %s" % (name, exc))
        summaries.update(scan_stream(_IterReader(chunks), volumes={name}, on_member=copy))
    if out is not None:
        out.close()
    return summaries


def volume_record(info):
    return {
        "name": info["Name"],
        "driver": info.get("Driver") or "local",
        "driver_options": info.get("Options") or {},
        "labels": info.get("Labels") or {},
    }


def inspect_all(engine, names):
    infos = []
    for name in names:
        info = engine.volume(name)
        if info is None:
            raise BackupError("volume %s does not exist on the engine: check the name (docker volume ls)" % name)
        infos.append(info)
    return infos


def running_users(engine, names):
    """{volume: [(id, name)]} of running containers that mount each volume."""
    return dict((name, engine.containers_using(name)) for name in names)


def _unique_containers(users):
    seen = {}
    for containers in users.values():
        for container_id, name in containers:
            seen[container_id] = name
    return sorted(seen.items(), key=lambda item: item[1])


class ArchiveOptions(collections.namedtuple(
        "ArchiveOptions", "names backup_dir environment compression mode stop_containers helper_image recipients consistency",
        defaults=("gzip", "auto", False, DEFAULT_HELPER_IMAGE, None, None))):
    """What one archive writes and how (the module's options), built once by the module instead of a long positional list."""

    __slots__ = ()


class RestoreOptions(collections.namedtuple(
        "RestoreOptions", "src backup_dir environment names mode stop_containers helper_image allow_devices check_restored identity_file",
        defaults=(None, "auto", False, DEFAULT_HELPER_IMAGE, False, True, None))):
    """What one restore does (the module's options); ``names`` None restores every volume of the archive."""

    __slots__ = ()


def archive(engine, options, check_mode=False, journal=None):
    """``options`` is an ArchiveOptions; ``journal`` (a _journal.Job) records each step a killed run leaves for the next run to repair."""
    names, backup_dir, environment, compression, mode, stop_containers, helper_image, recipients, consistency = options
    journal = journal or _journal.Job(None, "archive")
    check_volume_names(names)
    if not names:
        raise BackupError("volumes is empty: list the volumes to archive")
    bs.check_environment(environment)
    recipients = check_recipients(recipients)
    modes = vc.plan(names, consistency)
    planned = bs.archive_name(KIND, environment, bs.utc_now(), compression, bool(recipients))
    infos = inspect_all(engine, names)
    mode = choose_mode(engine, infos, mode)
    users = running_users(engine, names)
    warnings = []
    result = {"mode": mode, "changed": True, "warnings": warnings, "encrypted": bool(recipients), "recipients": recipients}
    if check_mode:
        to_stop = _stop_list(users, modes, stop_containers, [])
        result["stopped_containers"] = [{"id": c[0], "name": c[1]} for c in to_stop]
        result["volumes"] = [dict(volume_record(info), consistency={"mode": modes[info["Name"]]}) for info in infos]
        result["msg"] = "would write %s" % os.path.join(backup_dir, planned)
        return result
    if not os.path.isdir(backup_dir):
        os.makedirs(backup_dir, 0o700)
    stopped = []
    with backup_lock(backup_dir, KIND, environment):
        remove_stale_partials(backup_dir, KIND, environment)
        when = bs.utc_now()
        path = new_archive_path(backup_dir, KIND, environment, when, compression, bool(recipients))
        started = time.time()
        target = AtomicFile(path)
        sink = None
        try:
            mountpoints = dict((info["Name"], host_mountpoint(info)) for info in infos) if mode == "host" else None
            with vc.prepared(engine, infos, mountpoints, modes, users, backup_dir, journal, warnings) as prepared:
                to_stop = _stop_list(users, dict((n, v.mode) for n, v in prepared.items()), stop_containers, warnings)
                sink = CompressedSink(target.handle, compression, recipients)
                with containers_stopped(engine, to_stop, stopped, journal):
                    if mode == "host":
                        summaries, race = read_host(vc.tar_command(prepared, host_create_command([])), sink, names)
                        warnings.extend(w for w in race if not vc.expected_warning(prepared, w))
                    else:
                        with engine.helper(helper_image, names, read_only=True) as container_id:
                            summaries = read_api(engine, container_id, names, sink)
                vc.finish(prepared)
            size, digest = sink.close()
            sink = None
            target.commit()
        except BaseException:
            if sink is not None:
                sink.abort()
            target.discard()
            raise
        stopped_names = set(c[1] for c in to_stop)
        records = []
        for info in infos:
            record = volume_record(info)
            record.update(summaries.get(info["Name"], {"files": 0, "size": 0, "sha256": None}))
            record["stopped_containers"] = [c[1] for c in users[info["Name"]] if c[1] in stopped_names]
            record["consistency"] = prepared[info["Name"]].record
            records.append(record)
        metadata = {
            "format": bs.FORMAT_VERSION,
            "kind": KIND,
            "environment": environment,
            "created": when.isoformat(),
            "archive": os.path.basename(path),
            "compression": compression,
            "size": size,
            "sha256": digest,
            "encryption": encryption_record(recipients),
            "read_mode": mode,
            "volumes": records,
            "stopped_containers": [entry["name"] for entry in stopped],
            "warnings": warnings,
        }
        meta_path = write_metadata(path, metadata)
    result.update({
        "archive": path, "metadata": meta_path, "size": size, "sha256": digest,
        "duration": round(time.time() - started, 3), "volumes": records,
        "stopped_containers": stopped,
    })
    return result


def _stop_list(users, modes, stop_containers, warnings):
    """Containers to stop: those using a ``stop``-mode volume (online volumes keep their service running)."""
    busy = dict((name, containers) for name, containers in users.items() if modes[name] == "stop" and containers)
    if not stop_containers:
        for name, containers in sorted(busy.items()):
            warnings.append("volume %s is in use by running containers %s; the archive may not be consistent "
                            "(set stop_containers=true)" % (name, ", ".join(c[1] for c in containers)))
        return []
    return _unique_containers(busy)


def scan_archive(backup, allow_devices=False, contents=True):
    """Stream the whole archive once: every member safe, every volume's counts (and digest) equal to the metadata.

    Restore passes ``contents=False``: the archive's sha256 already vouches for
    its bytes and the extracted data is digested before it is swapped in, so
    hashing the content here too would only cost time.
    """
    declared = [v["name"] for v in backup.metadata.get("volumes", [])]
    check_volume_names(declared)
    checker = SafetyChecker(declared, allow_devices=allow_devices)
    with archive_stream(backup.path, backup.identity_file) as stream:
        reader = PipeReader(stream) if is_pipe(stream) else TeeReader(stream)
        summaries = scan_stream(reader, checker=checker, contents=contents, name=backup.name)
        reader.drain()
    keys = ("files", "size", "sha256") if contents else ("files", "size")
    report = []
    for record in backup.metadata["volumes"]:
        found = summaries.get(record["name"], {"files": 0, "size": 0, "sha256": None})
        problems = [key for key in keys if found[key] != record.get(key)]
        if problems:
            raise BackupError(
                "%s: volume %s does not match its metadata (%s: archive has %s, metadata %s): the archive is damaged; "
                "use another backup" % (backup.name, record["name"], problems[0], found[problems[0]], record.get(problems[0]))
            )
        entry = dict((key, found[key]) for key in keys)
        entry["name"] = record["name"]
        report.append(entry)
    return report


def verify(src, backup_dir, environment, allow_devices=False, engine=None, mode="auto", helper_image=DEFAULT_HELPER_IMAGE,
           identity_file=None, journal=None):
    """Checksum, member safety and content digests; with ``engine``, also a restore into scratch volumes.

    A host-mode scratch restore makes every check of the plain scan in the
    same pass, so the archive is not decompressed twice.
    """
    backup = bs.resolve_source(src, backup_dir, KIND, environment, identity_file)
    result = {"archive": backup.path, "backup": backup.describe(), "sha256": backup.metadata["sha256"], "warnings": list(backup.warnings)}
    if engine is None:
        result["volumes"] = scan_archive(backup, allow_devices)
    else:
        result["mode"], result["volumes"] = scratch_check(engine, backup, journal or _journal.Job(None, "verify"), mode,
                                                          helper_image, allow_devices)
    return result


def _stage(backup, records, mountpoints, tag, staging_dirs, journal, allow_devices=False, check=True):
    """Extract the chosen volumes into ``<volume dir>/<tag>/<name>``, decompressing the archive once.

    Python parses the stream, checks each member, then forwards its bytes to
    the GNU tar of that volume's filesystem (rename needs the same one): an
    unsafe member never reaches tar.  Each volume's counts and content digest
    come from the same pass and must equal the metadata, and so must the
    archive's sha256 (taken in the same read when ``resolve_source`` did not
    take it first, as a restore asks); ``check`` then reads the staged tree
    back (names, types, modes, owners, mtimes, sizes, links, xattrs, ACLs: what
    a filesystem can drop silently; the bytes are vouched for by the digest and
    tar's exit status).
    Returns ({name: staged directory}, report); ``staging_dirs`` collects what to remove,
    and each is journaled before it is made.
    """
    declared = [v["name"] for v in backup.metadata.get("volumes", [])]
    check_volume_names(declared)
    checker = SafetyChecker(declared, allow_devices=allow_devices)
    digest = hashlib.sha256() if backup.checksum_in_pass else None
    try:
        summaries, extractions = _extract(backup, records, mountpoints, tag, staging_dirs, journal, checker, digest)
    except BackupError:
        if digest is not None:
            backup.check_checksum()  # a damaged archive is named as such, as the checksum before the pass did
        raise
    report = _compare(backup, summaries, [record["name"] for record in records])
    if digest is not None:
        backup.check_checksum(digest.hexdigest())
    staged = {}
    for staging, unused_proc, unused_sink, names in extractions:
        if check:
            found, unused = read_host(host_create_command([(staging, name) for name in names], transform=False), None, names, contents=False)
            for name in names:
                if found.get(name, {}).get("sha256") != summaries[name]["layout"]:
                    raise BackupError("restored content of %s differs from the archive's metadata (a filesystem without "
                                      "xattr/ACL support, or it changed while restored): the volume was not changed" % name)
        staged.update((name, os.path.join(staging, name)) for name in names)
    return staged, report


def _extract(backup, records, mountpoints, tag, staging_dirs, journal, checker, digest):
    """The pass of ``_stage``: one GNU tar per filesystem, fed the checked members; returns (summaries, extractions)."""
    groups = {}
    for record in records:
        groups.setdefault(os.stat(os.path.dirname(mountpoints[record["name"]])).st_dev, []).append(record["name"])
    extractions = []
    sinks = {}
    with contextlib.ExitStack() as stack:
        for names in groups.values():
            staging = os.path.join(os.path.dirname(mountpoints[names[0]]), tag)
            journal.record("staging_directory", path=staging)
            os.mkdir(staging, 0o700)
            staging_dirs.append(staging)
            proc = stack.enter_context(Process(TAR_EXTRACT + ["-C", staging, "--"] + names, stdin=PIPE))
            widen_pipe(proc.stdin.fileno())
            sink = TarSink(proc.stdin)
            extractions.append((staging, proc, sink, names))
            sinks.update((name, sink) for name in names)
        stream = stack.enter_context(archive_stream(backup.path, backup.identity_file, digest=digest))
        try:
            summaries = extract_stream(stream, checker, sinks, backup.name)
            for extraction in extractions:
                extraction[2].close()
            failed = [(staging, proc.reason()) for staging, proc, unused_sink, unused_names in extractions if proc.wait() != 0]
        except BrokenPipeError:
            dead = [(staging, proc) for staging, proc, sink, unused in extractions if sink.broken]
            for unused, proc in dead:
                proc.exited(10)
            raise BackupError("GNU tar stopped while extracting into %s (%s): the volumes were not changed" % (
                ", ".join(staging for staging, unused in dead) or "the staging directory",
                "; ".join(proc.reason() for unused, proc in dead) or "broken pipe"))
    if failed:
        raise BackupError("extracting into %s failed (%s): the volumes were not changed" % failed[0])
    return summaries, extractions


def _compare(backup, summaries, hashed):
    """Each volume's counts (and, for ``hashed`` volumes, content digest) against the metadata; the report."""
    report = []
    for record in backup.metadata["volumes"]:
        found = summaries.get(record["name"], {"files": 0, "size": 0, "sha256": None})
        for key in ("files", "size"):
            if found[key] != record.get(key):
                raise BackupError(
                    "%s: volume %s does not match its metadata (%s: archive has %s, metadata %s): the archive is damaged; "
                    "use another backup; the volumes were not changed" % (backup.name, record["name"], key, found[key], record.get(key)))
        if record["name"] in hashed and found["sha256"] != record.get("sha256"):
            raise BackupError("restored content of %s differs from the archive's metadata (the archive is damaged or was "
                              "tampered with): the volume was not changed" % record["name"])
        entry = {"name": record["name"], "files": found["files"], "size": found["size"]}
        if record["name"] in hashed:
            entry["sha256"] = found["sha256"]
        report.append(entry)
    return report


def exchange(first, second):
    """Swap two directories in one step (renameat2 RENAME_EXCHANGE, Linux 3.15+): neither name is ever missing."""
    if _RENAMEAT2 is None:
        raise BackupError("this C library has no renameat2 (glibc 2.28+ needed) to swap volume data atomically: use mode=api")
    if _RENAMEAT2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in (errno.EINVAL, errno.ENOSYS):
            raise BackupError("the filesystem of %s cannot swap directories atomically (RENAME_EXCHANGE: %s): the volumes were "
                              "not changed; use mode=api" % (os.path.dirname(second), os.strerror(code)))
        raise OSError(code, os.strerror(code), second)


def _stage_durably(backup, records, mountpoints, tag, staging_dirs, journal, allow_devices, check):
    """_stage, with the staged trees on the disk before any is swapped in; returns {volume: staged tree}.

    GNU tar fsyncs nothing it extracts: a power cut shortly after a restore that
    said it was done could otherwise leave empty files in the volume, with the
    previous data already deleted.  A SyncHelper syncs the volumes' filesystems
    while tar writes, so the last sync waits for the tail only.
    """
    filesystems = Filesystems(os.path.dirname(path) for path in mountpoints.values())
    helper = SyncHelper(filesystems.sync, period=SYNC_PERIOD)
    try:
        staged, unused = _stage(backup, records, mountpoints, tag, staging_dirs, journal, allow_devices, check)
        try:
            helper.finish()
            filesystems.sync()
        except OSError as exc:
            raise BackupError("writing the restored data to disk failed (%s: %s): the volumes were not changed; check the "
                              "disk (dmesg) and run the restore again" % (exc.filename, exc.strerror))
        return staged
    finally:
        helper.stop()
        filesystems.close()


def _host_restore(backup, records, infos, journal, allow_devices=False, check=True):
    """Extract the chosen volumes beside their data, check them, make them durable, then exchange each staged tree with ``_data``.

    Returns the staging directories, which hold the replaced data after the
    exchange: the caller deletes them once the containers are running again,
    which keeps the downtime short.  Every step is journaled first (see
    ``repairers``): a killed run leaves each volume with its old data or, when
    every exchange was done, all with the new data.
    """
    tag = ".mm-restore-%d" % os.getpid()
    mountpoints = dict((info["Name"], host_mountpoint(info)) for info in infos)
    staging_dirs = []
    done = False
    try:
        staged = _stage_durably(backup, records, mountpoints, tag, staging_dirs, journal, allow_devices, check)
        volumes = [{"name": record["name"], "mountpoint": mountpoints[record["name"]], "staged": staged[record["name"]],
                    "inode": os.lstat(mountpoints[record["name"]]).st_ino} for record in records]
        journal.record("volume_swap", volumes=volumes)
        swapped = []
        try:
            for volume in volumes:
                exchange(volume["staged"], volume["mountpoint"])
                swapped.append(volume)
        except OSError as exc:
            for volume in swapped:
                exchange(volume["staged"], volume["mountpoint"])
            raise BackupError("swapping restored data into place failed (%s): the volumes were not changed" % exc)
        done = True
        return staging_dirs
    finally:
        if not done:
            for staging in staging_dirs:
                shutil.rmtree(staging, ignore_errors=True)


def _api_put(engine, backup, records, helper_image, mounts, wipe):
    """Stream the archive into the volumes with put_archive, then read them back and compare digests.

    ``mounts`` is [(volume, archive name)]: each volume is mounted at
    /mm/<archive name>.  Members of volumes not being restored land in the
    helper's own filesystem and disappear with it, so the archive streams
    through untouched.
    """
    names = [record["name"] for record in records]
    command = ["sh", "-c", WIPE_SCRIPT, "sh"] + names if wipe else None
    with engine.helper(helper_image, mounts, read_only=False, command=command) as container_id:
        if wipe:
            engine.run_helper(container_id)
        with archive_stream(backup.path, backup.identity_file) as stream:
            try:
                ok = engine.api.put_archive(container_id, "/mm", stream)
            except Exception as exc:
                raise BackupError("the Engine refused the archive for %s: %s" % (", ".join(names), exc))
        if not ok:
            raise BackupError("the Engine refused the archive for %s" % ", ".join(names))
        summaries = read_api(engine, container_id, names, None)
    for record in records:
        if summaries[record["name"]]["sha256"] != record["sha256"]:
            raise BackupError("restored content of %s differs from the archive (API mode cannot restore xattrs/ACLs "
                              "or the engine changed something): use mode=host on the Docker host" % record["name"])


def scratch_check(engine, backup, journal, mode="auto", helper_image=DEFAULT_HELPER_IMAGE, allow_devices=False):
    """Restore every volume of the archive into fresh scratch volumes, compare content digests, remove them.

    Returns (mode, per-volume report).
    """
    with scratch_volumes(engine, backup, journal, mode=mode, helper_image=helper_image, allow_devices=allow_devices) as scratch:
        return scratch[0], scratch[1]


@contextlib.contextmanager
def scratch_volumes(engine, backup, journal, names=None, naming=None, labels=None, mode="auto",
                    helper_image=DEFAULT_HELPER_IMAGE, allow_devices=False):
    """Restore volumes of the archive (``names``, default all) into fresh scratch volumes; always removed afterwards.

    Each scratch volume and staging directory is recorded in ``journal`` before it is made.

    Content digests are compared with the metadata as in a restore.  ``naming``
    maps an archived volume to its scratch name; ``labels`` go on the scratch
    volumes.  Yields (mode, per-volume report, {archived name: scratch name}).
    """
    records = [record for record in backup.metadata["volumes"] if names is None or record["name"] in names]
    token = "mmverify-%d-%d" % (os.getpid(), int(time.time()))
    scratch = []
    try:
        for number, record in enumerate(records):
            name = (naming or {}).get(record["name"]) or "%s-%d" % (token, number)
            journal.record("scratch_volume", name=name, docker_host=engine.docker_host)
            scratch.append(engine.create_volume(name, "local", None, dict(labels or {}, **{"minimarket.backup.scratch": "1"})))
        mode = choose_mode(engine, scratch, mode)
        if mode == "host":
            staging_dirs = []
            mountpoints = dict((record["name"], host_mountpoint(info)) for record, info in zip(records, scratch))
            try:
                staged, report = _stage(backup, records, mountpoints, ".mm-verify", staging_dirs, journal, allow_devices)
                for name, mountpoint in mountpoints.items():
                    os.rmdir(mountpoint)  # a fresh volume: empty
                    os.rename(staged[name], mountpoint)
            finally:
                for staging in staging_dirs:
                    shutil.rmtree(staging, ignore_errors=True)
        else:
            report = scan_archive(backup, allow_devices)
            mounts = [(info["Name"], record["name"]) for record, info in zip(records, scratch)]
            _api_put(engine, backup, records, helper_image, mounts, wipe=False)
        yield mode, report, dict((record["name"], info["Name"]) for record, info in zip(records, scratch))
    finally:
        for info in scratch:
            engine.remove_volume(info["Name"])


def restore(engine, options, check_mode=False, journal=None):
    """``options`` is a RestoreOptions; ``journal`` (a _journal.Job) records each step a killed run leaves for the next run to repair."""
    src, backup_dir, environment, names, mode, stop_containers, helper_image, allow_devices, check_restored, identity_file = options
    journal = journal or _journal.Job(None, "restore")
    # The key of an encrypted archive is proven here, before any container is stopped or volume touched.  A host-mode
    # restore takes the archive's sha256 in its one pass and compares it before anything is swapped in (_stage).
    in_pass = not check_mode and mode != "api" and engine.local
    backup = bs.resolve_source(src, backup_dir, KIND, environment, identity_file, checksum=not in_pass)
    available = [v["name"] for v in backup.metadata.get("volumes", [])]
    if names:
        check_volume_names(names)
        missing = [name for name in names if name not in available]
        if missing:
            raise BackupError("%s does not hold volume(s) %s; it holds %s" % (backup.name, ", ".join(missing), ", ".join(available)))
    else:
        names = available
    check_volume_names(available)
    # Host mode checks every member in its one extraction pass; check mode and API mode (which
    # empties the volume before streaming) need the whole archive checked first.
    report = None
    if check_mode or mode == "api" or not engine.local:
        report = scan_archive(backup, allow_devices, contents=False)
    records = [v for v in backup.metadata["volumes"] if v["name"] in names]
    existing = dict((name, engine.volume(name)) for name in names)
    users = running_users(engine, [name for name in names if existing[name] is not None])
    busy = dict((name, c) for name, c in users.items() if c)
    if busy and not stop_containers:
        raise BackupError("volumes in use by running containers: %s; stop them or set stop_containers=true" % "; ".join(
            "%s by %s" % (name, ", ".join(c[1] for c in containers)) for name, containers in sorted(busy.items())))
    to_stop = _unique_containers(busy)
    actions = dict((name, "replaced" if existing[name] is not None else "created") for name in names)
    summary = dict((entry["name"], entry) for entry in report or backup.metadata["volumes"])
    result = {"archive": backup.path, "backup": backup.describe(), "changed": True, "warnings": list(backup.warnings),
              "stopped_containers": [{"id": c[0], "name": c[1]} for c in to_stop],
              "volumes": [{"name": name, "action": actions[name], "files": summary[name]["files"],
                           "size": summary[name]["size"]} for name in names]}
    if check_mode:
        result["mode"] = choose_mode(engine, [info for info in existing.values() if info is not None], mode)
        return result
    created = []
    stopped = []
    replaced = []
    try:
        for record in records:
            if existing[record["name"]] is None:
                journal.record("volume_created", name=record["name"], docker_host=engine.docker_host)
                existing[record["name"]] = engine.create_volume(
                    record["name"], record.get("driver"), record.get("driver_options"), record.get("labels"))
                created.append(record["name"])
        infos = [existing[name] for name in names]
        mode = choose_mode(engine, infos, mode)
        result["mode"] = mode
        started = time.time()
        with containers_stopped(engine, to_stop, stopped, journal):
            if mode == "host":
                replaced = _host_restore(backup, records, infos, journal, allow_devices, check_restored)
            else:
                if backup.checksum_in_pass:
                    backup.check_checksum()
                if report is None:
                    scan_archive(backup, allow_devices, contents=False)
                journal.record("api_restore", volumes=names)
                _api_put(engine, backup, records, helper_image, [(name, name) for name in names], wipe=True)
    except BaseException:
        for name in created:
            engine.remove_volume(name)
        raise
    for path in replaced:
        shutil.rmtree(path)
    duration = round(time.time() - started, 3)
    for entry in result["volumes"]:
        entry["duration"] = duration
    result["stopped_containers"] = stopped
    return result


# ---------------------------------------------------------------- journal replay


def _is_empty_dir(path):
    with contextlib.suppress(FileNotFoundError):
        return not os.listdir(path)
    return False


def _finish_or_undo_swap(step):
    """All volumes exchanged: the restore is complete, keep it; some: exchange those back (each volume's old data returns)."""
    volumes = step["volumes"]
    swapped = [v for v in volumes if os.path.isdir(v["mountpoint"]) and os.lstat(v["mountpoint"]).st_ino != v["inode"]]
    if len(swapped) == len(volumes):
        return ["kept the restored data of volume(s) %s: every exchange of the interrupted restore was done"
                % ", ".join(v["name"] for v in volumes)]
    done = []
    for volume in swapped:
        if not os.path.isdir(volume["staged"]):
            raise BackupError("the previous data of volume %s should be in %s but is not: the volume holds the restored data; "
                              "restore the volumes again" % (volume["name"], volume["staged"]))
        exchange(volume["staged"], volume["mountpoint"])
        done.append("put the previous data of volume %s back (the interrupted restore had swapped only some volumes)" % volume["name"])
    return done


def _remove_staging(step):
    if not os.path.lexists(step["path"]):
        return []
    shutil.rmtree(step["path"])
    return ["removed staging directory %s" % step["path"]]


def repairers():
    """What a killed archive, restore or verify left, put back by the journal replay (see _journal).

    Order comes from the journal (newest step first): volume data is settled
    before the containers that use it start again.
    """
    engines = {}

    def engine_for(step):
        if step["docker_host"] not in engines:
            engines[step["docker_host"]] = Engine(step["docker_host"])
        return engines[step["docker_host"]]

    def remove_scratch(step):
        engine = engine_for(step)
        if engine.volume(step["name"]) is None:
            return []
        engine.remove_volume(step["name"])
        return ["removed scratch volume %s" % step["name"]]

    def remove_created(step):
        """A volume the restore created that never received data (the swap was undone or never happened)."""
        engine = engine_for(step)
        info = engine.volume(step["name"])
        if info is None or not _is_empty_dir(info.get("Mountpoint") or ""):
            return []
        engine.remove_volume(step["name"])
        return ["removed volume %s, created by the interrupted restore and left empty" % step["name"]]

    def api_restore(step):
        return ["volume(s) %s were being restored through the Engine API when the run was killed: their content may be "
                "incomplete, restore them again" % ", ".join(step["volumes"])]

    return {
        "container_stopped": lambda step: start_stopped(engine_for(step), step),
        "online_undo": lambda step: vc.undo(engine_for(step), step),
        "volume_created": remove_created,
        "staging_directory": _remove_staging,
        "volume_swap": _finish_or_undo_swap,
        "scratch_volume": remove_scratch,
        "api_restore": api_restore,
    }
