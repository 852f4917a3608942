# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The second location: complete backup pairs copied with rclone, verified there, pruned there, fetched back.

The remote follows the local rule (``_backup_set.judge``): a backup is complete
only when its metadata exists, names the archive and records the archive's size
and sha256, and the metadata is always uploaded (and downloaded) last. Nothing here ever deletes or rewrites a
local backup. The remote's configuration reaches rclone only through its
environment (``RCLONE_CONFIG_<NAME>_<KEY>`` or ``RCLONE_CONFIG``), never argv.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import time

from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import (
    ARCHIVE_MISSING,
    METADATA_SUFFIX,
    Backup,
    check_environment,
    checksum_problem,
    judge,
    list_backups,
    metadata_path,
    orphan_metadata,
    parse_archive_name,
)
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._files import AtomicFile, backup_lock
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import CHUNK
from ansible_collections.minimarket.backup.plugins.module_utils._process import DEVNULL, PIPE, Process, run
from ansible_collections.minimarket.backup.plugins.module_utils._retention import (
    STATE_COMPLETE,
    STATE_INCOMPLETE,
    Candidate,
    decide,
    plan_candidates,
)

REMOTE_RE = re.compile(r"^(?P<name>[A-Za-z0-9_]+):(?P<path>.*)$")
CONFIG_KEY_RE = re.compile(r"^[A-Za-z0-9_]+$")
# Backend options rclone stores obscured (its IsPassword options); plain text there is rejected by rclone.
OBSCURED_KEYS = frozenset(["pass", "password", "password2", "key_file_pass"])
# Settings whose values are secrets (masked in the module's output); host, port, user and the like stay readable.
SECRET_KEY_RE = re.compile(r"pass|secret|token|credential|key_id|account_key|sas_url|key_pem|private_key|session", re.IGNORECASE)
# Our own verification is the retry: rclone should fail fast and say why.
RCLONE_FLAGS = ["--retries", "1", "--low-level-retries", "3", "--contimeout", "15s"]
DIRECTORY_NOT_FOUND = 3
LOG_PREFIX_RE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (?:[A-Z]+ ?: ?)?")


def secret_values(remote_config):
    return [str(value) for key, value in (remote_config or {}).items()
            if SECRET_KEY_RE.search(str(key)) and value not in (None, "") and not isinstance(value, bool)]


def last_error(stderr):
    """The line of rclone's stderr that says what went wrong, without its time stamp."""
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    if not lines:
        return "no error output"
    return LOG_PREFIX_RE.sub("", lines[-1])


def stream_output(argv, env, consume):
    """Run argv and hand its stdout to consume() block by block; returns (rc, stderr).

    Streamed, not run to the end: an archive read back from the remote must be
    hashed (and written) as it arrives, never held in memory.
    """
    with Process(argv, stdin=DEVNULL, stdout=PIPE, env=env) as proc:
        for block in iter(lambda: proc.stdout.read(CHUNK), b""):
            consume(block)
        return proc.wait(), proc.stderr()


class Rclone(object):
    """rclone bound to one remote directory; ``commands`` records every argv it ran (never a secret).

    ``run`` (``_process.run``) runs a short command and ``stream`` (``stream_output``) reads a file back;
    tests swap in a recorder or a corrupting reader.
    """

    def __init__(self, binary, remote, run_command=run, stream=stream_output, rclone_config=None, remote_config=None):
        match = REMOTE_RE.match(remote or "")
        if not match:
            raise BackupError(
                "remote %r is not <name>:<path>: use an rclone remote path such as offsite:minimarket/production/database "
                "(the remote's settings go in remote_config or rclone_config, never in the path)" % (remote,)
            )
        self.binary = binary
        self.remote = remote
        self.name = match.group("name")
        self.run_command = run_command
        self.stream_command = stream
        self.commands = []
        # rclone 1.60's S3 client refuses any AWS_CA_BUNDLE ("unsupported transport"); an empty one is ignored.
        self.env = {"AWS_CA_BUNDLE": ""}
        if rclone_config:
            if not os.path.isfile(rclone_config):
                raise BackupError("rclone_config %s does not exist: give the path of an rclone.conf or use remote_config" % rclone_config)
            self.env["RCLONE_CONFIG"] = rclone_config
        if remote_config:
            self.env.update(self._config_env(remote_config))

    def _config_env(self, remote_config):
        if not remote_config.get("type"):
            raise BackupError("remote_config has no 'type': set the rclone backend, for example type: sftp or type: s3")
        env = {}
        for key, value in sorted(remote_config.items()):
            if not CONFIG_KEY_RE.match(str(key)):
                raise BackupError("remote_config key %r is not an rclone option name: use the backend's option names (host, user, ...)" % (key,))
            if isinstance(value, bool):
                value = "true" if value else "false"
            value = str(value)
            if key.lower() in OBSCURED_KEYS:
                value = self._obscure(key, value)
            env["RCLONE_CONFIG_%s_%s" % (self.name.upper(), key.upper())] = value
        return env

    def _obscure(self, key, value):
        rc, out, err = self.call(["obscure", "-"], data=value.encode("utf-8"), flags=False)
        if rc != 0:
            raise BackupError("rclone obscure of remote_config.%s failed: %s" % (key, last_error(err)))
        return out.decode("utf-8").strip()

    def path(self, name):
        if self.remote.endswith((":", "/")):
            return self.remote + name
        return self.remote + "/" + name

    def call(self, args, data=None, flags=True):
        argv = [self.binary] + list(args) + (RCLONE_FLAGS if flags else [])
        self.commands.append(argv)
        return self.run_command(argv, data=data, env=self.env, binary=True)

    def check(self, args, what):
        rc, out, err = self.call(args)
        if rc != 0:
            raise BackupError("%s failed: %s" % (what, last_error(err)))
        return out

    def stream(self, name, consume):
        argv = [self.binary, "cat", self.path(name)] + RCLONE_FLAGS
        self.commands.append(argv)
        rc, err = self.stream_command(argv, self.env, consume)
        if rc != 0:
            raise BackupError("reading %s from %s failed: %s" % (name, self.remote, last_error(err)))

    def hash_remote(self, name):
        digest = hashlib.sha256()
        counted = [0]

        def consume(block):
            digest.update(block)
            counted[0] += len(block)
        self.stream(name, consume)
        return counted[0], digest.hexdigest()

    def read_small(self, name):
        rc, out, err = self.call(["cat", self.path(name)])
        if rc != 0:
            raise BackupError("reading %s from %s failed: %s" % (name, self.remote, last_error(err)))
        return out

    def stat_size(self, name):
        out = self.check(["lsjson", "--stat", "--no-mimetype", "--no-modtime", self.path(name)], "checking %s at %s" % (name, self.remote))
        return json.loads(out).get("Size")

    def delete(self, name):
        self.check(["deletefile", self.path(name)], "deleting %s from %s" % (name, self.remote))

    def upload(self, local_path, name):
        self.check(["copyto", "--ignore-times", local_path, self.path(name)], "uploading %s to %s" % (name, self.remote))


class RemoteBackup(object):
    """One archive in the remote directory, judged by the rule of a local Backup (``judge``)."""

    def __init__(self, name, size, metadata_name, metadata_raw):
        self.name = name
        self.size = size
        self.kind, self.environment, self.created, self.extension = parse_archive_name(name)
        self.metadata_name = metadata_name
        self.metadata_raw = metadata_raw
        self.metadata = None
        self.problem = None
        self._inspect()

    def _inspect(self):
        self.metadata, self.problem = judge(self.name, self.size, self.metadata_name, self.metadata_raw)

    @property
    def complete(self):
        return self.problem is None

    def as_dict(self):
        result = dict(name=self.name, created=self.created.isoformat(), complete=self.complete, size=self.size)
        if self.metadata:
            result["sha256"] = self.metadata["sha256"]
        if self.problem:
            result["problem"] = self.problem
        return result


class RemoteSet(object):
    """The remote listing of one kind+environment: archives, their metadata, orphan metadata."""

    def __init__(self, backups, orphans, sizes):
        self.backups = backups
        self.orphans = orphans
        self.sizes = sizes

    def get(self, name):
        for backup in self.backups:
            if backup.name == name:
                return backup
        return None

    def complete(self):
        return [b for b in self.backups if b.complete]


def metadata_name(archive):
    return os.path.basename(metadata_path(archive))


def _set_of(name, kind, environment):
    parsed = parse_archive_name(name)
    return parsed is not None and parsed[:2] == (kind, environment)


def scan_remote(rclone, kind, environment):
    """List the remote directory and read the set's metadata files in one download."""
    check_environment(environment)
    rc, out, err = rclone.call(["lsjson", "--files-only", "--no-mimetype", "--no-modtime", rclone.remote])
    if rc == DIRECTORY_NOT_FOUND:
        return RemoteSet([], [], {})
    if rc != 0:
        raise BackupError("cannot list %s: %s; check the remote's address, credentials and that it is reachable" % (rclone.remote, last_error(err)))
    sizes = dict((entry["Name"], entry["Size"]) for entry in json.loads(out or b"[]") if not entry.get("IsDir"))
    metadata = _download_metadata(rclone, kind, environment, sizes)
    backups = []
    for name in sizes:
        if _set_of(name, kind, environment):
            meta_name = metadata_name(name)
            backups.append(RemoteBackup(name, sizes[name], meta_name, metadata.get(meta_name)))
    backups.sort(key=lambda b: (b.created, b.name))
    orphans = orphan_metadata(sizes, kind, environment, set(b.metadata_name for b in backups))
    return RemoteSet(backups, orphans, sizes)


def _download_metadata(rclone, kind, environment, sizes):
    """The set's metadata files, fetched with one ``rclone copy`` (not one connection per file)."""
    wanted = [name for name, unused in orphan_metadata(sizes, kind, environment, ())]
    if not wanted:
        return {}
    scratch = tempfile.mkdtemp(prefix="offsite-meta-")
    try:
        rclone.check(["copy", "--max-depth", "1", "--include", "/%s_%s_*%s" % (kind, environment, METADATA_SUFFIX),
                      rclone.remote, scratch], "reading the metadata files from %s" % rclone.remote)
        found = {}
        for name in wanted:
            path = os.path.join(scratch, name)
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    found[name] = handle.read()
        return found
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def verify_remote_archive(rclone, name, size, sha256):
    """Size from the listing and sha256 of the bytes streamed back: works on every backend."""
    listed = rclone.stat_size(name)
    if listed != size:
        raise BackupError("%s at %s is %r bytes, expected %d" % (name, rclone.remote, listed, size))
    read_size, digest = rclone.hash_remote(name)
    if read_size != size or digest != sha256:
        raise BackupError("%s at %s reads back as %d bytes with sha256 %s, expected %d bytes with sha256 %s"
                          % (name, rclone.remote, read_size, digest, size, sha256))


def _push_one(rclone, backup, remote_set):
    meta_name = os.path.basename(backup.metadata_path)
    if meta_name in remote_set.sizes:
        # An earlier, unfinished pair: the metadata goes first so the pair never looks complete while it changes.
        rclone.delete(meta_name)
    rclone.upload(backup.path, backup.name)
    try:
        verify_remote_archive(rclone, backup.name, backup.metadata["size"], backup.metadata["sha256"])
    except BackupError as exc:
        try:
            rclone.delete(backup.name)
        except BackupError as cleanup:
            raise BackupError("%s; removing the bad remote copy also failed (%s)" % (exc, cleanup))
        raise BackupError("%s; the bad remote copy was deleted" % exc)
    with open(backup.metadata_path, "rb") as handle:
        local_meta = handle.read()
    rclone.upload(backup.metadata_path, meta_name)
    if rclone.read_small(meta_name) != local_meta:
        rclone.delete(meta_name)
        raise BackupError("%s at %s does not read back as written; it was deleted" % (meta_name, rclone.remote))


def _kept_by_remote_policy(remote_set, local, policy, now):
    """Names the remote retention keeps once the local complete backups are there too.

    Push leaves out what prune would delete at once, so push followed by prune
    does not upload the same old backups again on every run.
    """
    candidates = dict((b.name, Candidate(b.name, b.created, STATE_COMPLETE)) for b in remote_set.complete())
    for backup in local:
        candidates.setdefault(backup.name, Candidate(backup.name, backup.created, STATE_COMPLETE))
    decide(list(candidates.values()), policy, now)
    return set(name for name, candidate in candidates.items() if candidate.kept)


def push(rclone, backup_dir, kind, environment, policy, now, check_mode=False):
    """Copy every complete local pair the remote lacks and its retention keeps, newest first; stop at the first transfer failure."""
    if not os.path.isdir(backup_dir):
        raise BackupError("backup_dir %s does not exist or is not a directory: give the local backup directory" % backup_dir)
    started = time.monotonic()
    remote_set = scan_remote(rclone, kind, environment)
    result = dict(pushed=[], already_remote=[], expired=[], failed=[], incomplete=[], bytes=0)
    local = list_backups(backup_dir, kind, environment)
    kept = _kept_by_remote_policy(remote_set, [b for b in local if b.complete], policy, now)
    for backup in reversed(local):
        if not backup.complete:
            result["incomplete"].append(dict(name=backup.name, problem=backup.problem))
            continue
        if backup.name not in kept:
            result["expired"].append(backup.name)
            continue
        there = remote_set.get(backup.name)
        if there is not None and there.complete:
            if there.metadata["sha256"] == backup.metadata.get("sha256"):
                result["already_remote"].append(backup.name)
            else:
                result["failed"].append(dict(name=backup.name, reason=(
                    "the remote holds a different backup with this name (sha256 %s, local %s): move one of them away"
                    % (there.metadata["sha256"], backup.metadata.get("sha256")))))
            continue
        if check_mode:
            result["pushed"].append(backup.name)
            result["bytes"] += backup.metadata["size"]
            continue
        try:
            backup.check_checksum()
        except BackupError as exc:
            result["failed"].append(dict(name=backup.name, reason=str(exc)))
            continue
        try:
            _push_one(rclone, backup, remote_set)
        except BackupError as exc:
            result["failed"].append(dict(name=backup.name, reason=str(exc)))
            break
        result["pushed"].append(backup.name)
        result["bytes"] += backup.metadata["size"]
    result["duration"] = round(time.monotonic() - started, 3)
    return result


def push_failure_message(result, remote):
    first = result["failed"][0]
    more = len(result["failed"]) - 1
    return "off-site push to %s failed for %s: %s (pushed before the failure: %s%s; local backups untouched)" % (
        remote, first["name"], first["reason"], ", ".join(result["pushed"]) or "nothing",
        "; %d more failed" % more if more else "",
    )


def _candidates(remote_set):
    candidates = []
    for backup in remote_set.backups:
        sizes = []
        if backup.metadata_raw is not None:
            sizes.append((backup.metadata_name, remote_set.sizes[backup.metadata_name]))
        sizes.append((backup.name, backup.size))
        state = STATE_COMPLETE if backup.complete else STATE_INCOMPLETE
        candidates.append(Candidate(backup.name, backup.created, state, sizes, backup.problem))
    for name, created in remote_set.orphans:
        candidates.append(Candidate(name, created, STATE_INCOMPLETE, [(name, remote_set.sizes[name])], ARCHIVE_MISSING))
    return candidates


def prune(rclone, kind, environment, policy, now, check_mode=False):
    """backup_prune's policy (module_utils._retention) on the remote listing; metadata is deleted before its archive."""
    result = plan_candidates(_candidates(scan_remote(rclone, kind, environment)), policy, now)
    gone = result.pop("delete_paths")
    if not check_mode:
        done = []
        for name in gone:
            try:
                rclone.delete(name)
            except BackupError as exc:
                raise BackupError("%s; fix that and run again (already deleted: %s)" % (exc, ", ".join(done) or "nothing"))
            done.append(name)
    return result


def check_remote_sums(rclone, remote_set):
    """Stream every complete remote archive back: one whose bytes differ from its metadata is no longer complete."""
    for backup in remote_set.complete():
        backup.problem = checksum_problem(rclone.hash_remote(backup.name)[1], backup.metadata, "remote copy")


def _choose(remote_set, backup, kind, environment, remote):
    if backup == "latest":
        complete = remote_set.complete()
        if not complete:
            raise BackupError("no complete %s backup of %r at %s: nothing to fetch" % (kind, environment, remote))
        return complete[-1]
    name = os.path.basename(backup)
    if not _set_of(name, kind, environment):
        raise BackupError("%s is not a %s backup of %r: pass src=latest or the archive name of one, as shown by state=report"
                          % (backup, kind, environment))
    found = remote_set.get(name)
    if found is None:
        raise BackupError("%s is not at %s: list the remote (state=report) and pick a complete backup" % (name, remote))
    if not found.complete:
        raise BackupError("%s at %s is not complete (%s): pick another backup" % (name, remote, found.problem))
    return found


def _fetch_into(rclone, chosen, local_path):
    digest = hashlib.sha256()
    size = [0]
    with AtomicFile(local_path) as target:

        def consume(block):
            digest.update(block)
            size[0] += len(block)
            target.handle.write(block)
        rclone.stream(chosen.name, consume)
        expected = chosen.metadata
        if size[0] != expected["size"] or digest.hexdigest() != expected["sha256"]:
            raise BackupError(
                "%s at %s is damaged: it reads as %d bytes with sha256 %s but its metadata records %d bytes with sha256 %s; "
                "nothing was written, fetch another backup" % (
                    chosen.name, rclone.remote, size[0], digest.hexdigest(), expected["size"], expected["sha256"]))
        target.commit()
    with AtomicFile(metadata_path(local_path)) as meta:
        meta.handle.write(chosen.metadata_raw)
        meta.commit()


def fetch(rclone, kind, environment, backup, backup_dir, check_mode=False):
    """Download one complete remote pair into backup_dir: archive through a ``.partial`` checked against the metadata, then the metadata."""
    started = time.monotonic()
    chosen = _choose(scan_remote(rclone, kind, environment), backup, kind, environment, rclone.remote)
    local_path = os.path.join(backup_dir, chosen.name)
    result = dict(name=chosen.name, path=local_path, metadata=metadata_path(local_path), bytes=0, changed=False)
    if os.path.lexists(local_path) or os.path.lexists(metadata_path(local_path)):
        local = Backup(backup_dir, chosen.name)
        try:
            local.check_checksum()
        except BackupError as exc:
            raise BackupError("a local copy of %s exists but is not usable (%s): move it out of %s and run again"
                              % (chosen.name, exc, backup_dir))
        result["duration"] = round(time.monotonic() - started, 3)
        return result
    result["changed"] = True
    result["bytes"] = chosen.size
    if not check_mode:
        os.makedirs(backup_dir, 0o700, exist_ok=True)
        with backup_lock(backup_dir, kind, environment):
            _fetch_into(rclone, chosen, local_path)
    result["duration"] = round(time.monotonic() - started, 3)
    return result
