# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a backup is on disk, shared by every module of the collection.

A backup is the pair ``<kind>_<env>_<YYYYMMDD_HHMMSS><ext>`` plus
``<same stem>_metadata.json``; it is *complete* only when the metadata exists,
names the archive and records its size and sha256, and the archive has that
size (``judge``: the one rule for local and remote copies; the sha256 itself
is compared only when checked).
Writers go through ``.partial`` files so that nothing that looks complete can
be left behind by a failure.

An archive encrypted with ``age`` ends in ``.age`` (``...tar.gz.age``); its
metadata stays plain JSON, and its size and sha256 are those of the encrypted
bytes, so completeness and checksums are checked without the private key.
"""

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tarfile
import tempfile
import threading

METADATA_SUFFIX = "_metadata.json"
PARTIAL_SUFFIX = ".partial"
FORMAT_VERSION = 1
CHUNK = 1024 * 1024

EXTENSIONS = {"gzip": ".tar.gz", "zstd": ".tar.zst", "none": ".tar"}
AGE_SUFFIX = ".age"
EXPECTED_NAME = "<kind>_<env>_YYYYMMDD_HHMMSS.tar[.gz|.zst][.age]"
ENV_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
NAME_RE = re.compile(
    r"^(?P<kind>[a-z]+)_(?P<env>[A-Za-z0-9][A-Za-z0-9-]*)_(?P<ts>\d{8}_\d{6})"
    r"(?P<ext>(?:\.tar\.gz|\.tar\.zst|\.tar)(?:\.age)?)$"
)
AGE_RECIPIENT_RE = re.compile(r"^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$")
SSH_RECIPIENT_RE = re.compile(r"^ssh-(?:ed25519|rsa) [A-Za-z0-9+/]+={0,2}(?: [^\n]*)?$")
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
# The problem of metadata whose archive is not there (locally or at the second location).
ARCHIVE_MISSING = "its archive is missing"
DAMAGED = "decrypting %s failed (age: %s): the archive is damaged or truncated; use another backup"


class BackupError(Exception):
    """A failure an operator can act on; the message is one line naming the fix."""


def check_environment(env):
    """Environment names go into file names, so an underscore would make them ambiguous."""
    if not ENV_RE.match(env or ""):
        raise BackupError(
            "environment %r is not a valid name: use letters, digits and '-' only "
            "(for example 'production')" % (env,)
        )
    return env


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def stem(kind, env, when):
    return "%s_%s_%s" % (kind, check_environment(env), when.strftime(TIMESTAMP_FORMAT))


def archive_name(kind, env, when, compression, encrypted=False):
    if compression not in EXTENSIONS:
        raise BackupError(
            "compression %r is not supported: use one of %s" % (compression, ", ".join(sorted(EXTENSIONS)))
        )
    return stem(kind, env, when) + EXTENSIONS[compression] + (AGE_SUFFIX if encrypted else "")


def is_encrypted(name):
    return name.endswith(AGE_SUFFIX)


def parse_archive_name(name):
    """Return (kind, env, utc datetime, extension) or None for names outside the scheme."""
    match = NAME_RE.match(name)
    if not match:
        return None
    try:
        when = datetime.datetime.strptime(match.group("ts"), TIMESTAMP_FORMAT)
    except ValueError:
        return None
    return match.group("kind"), match.group("env"), when.replace(tzinfo=datetime.timezone.utc), match.group("ext")


def metadata_path(archive_path):
    name = os.path.basename(archive_path)
    parsed = parse_archive_name(name)
    if parsed is None:
        raise BackupError("%s is not a backup archive name (expected %s)" % (name, EXPECTED_NAME))
    return os.path.join(os.path.dirname(archive_path), name[: -len(parsed[3])] + METADATA_SUFFIX)


def read_metadata(path):
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, IOError) as exc:
        raise BackupError("cannot read metadata %s: %s" % (path, exc.strerror or exc))
    except ValueError as exc:
        raise BackupError("metadata %s is not valid JSON (%s): the backup is incomplete or damaged" % (path, exc))
    if not isinstance(data, dict):
        raise BackupError("metadata %s is not a JSON object: the backup is incomplete or damaged" % path)
    return data


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_metadata_name(name):
    """(kind, env, utc datetime) of ``<kind>_<env>_<ts>_metadata.json``, by the archive naming rules, or None."""
    if not name.endswith(METADATA_SUFFIX):
        return None
    parsed = parse_archive_name(name[: -len(METADATA_SUFFIX)] + ".tar")
    return parsed and parsed[:3]


def orphan_metadata(names, kind, environment, paired):
    """(name, created) of the set's metadata files among ``names`` that no archive pairs with, oldest first."""
    found = []
    for name in names:
        parsed = parse_metadata_name(name)
        if parsed is not None and parsed[:2] == (kind, environment) and name not in paired:
            found.append((name, parsed[2]))
    return sorted(found, key=lambda pair: (pair[1], pair[0]))


def completeness_problem(name, size, meta):
    """Why an archive of ``size`` bytes with metadata ``meta`` is not complete, or None."""
    if meta.get("archive") != name:
        return "metadata names %r, not this archive" % meta.get("archive")
    if meta.get("size") != size:
        return "archive is %d bytes but metadata records %r" % (size, meta.get("size"))
    if not meta.get("sha256"):
        return "metadata records no sha256"
    return None


def judge(name, size, metadata_name, raw):
    """The one completeness rule, for a local or a remote copy: (metadata, None) or (None, why it is incomplete).

    ``raw`` is the metadata file's bytes (None when it is missing), ``size``
    the archive's size; the callers only differ in where they read them.
    """
    if raw is None:
        return None, "metadata file %s is missing" % metadata_name
    try:
        meta = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        return None, "metadata %s is not valid JSON (%s): the backup is incomplete or damaged" % (metadata_name, exc)
    if not isinstance(meta, dict):
        return None, "metadata %s is not a JSON object: the backup is incomplete or damaged" % metadata_name
    problem = completeness_problem(name, size, meta)
    return (None, problem) if problem else (meta, None)


def checksum_problem(actual, meta, what="archive"):
    """Why bytes whose sha256 is ``actual`` are not the ones ``meta`` vouches for, or None."""
    if actual == meta.get("sha256"):
        return None
    return "sha256 %s does not match metadata %s: the %s is damaged" % (actual, meta.get("sha256"), what)


def human_size(size):
    """Bytes as an operator reads them: 1.5 GiB, 312.0 KiB, 12 bytes."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return "%d bytes" % size if unit == "bytes" else "%.1f %s" % (size, unit)
        size /= 1024.0


class Backup(object):
    """One archive found in a backup directory, with why it is or is not complete."""

    def __init__(self, directory, name):
        self.name = name
        self.path = os.path.join(directory, name)
        self.kind, self.environment, self.created, self.extension = parse_archive_name(name)
        self.metadata_path = metadata_path(self.path)
        self.metadata = None
        self.size = None
        self.problem = None
        self.warnings = []
        self.identity_file = None
        # resolve_source(checksum=False): the reader must take the sha256 in its own read (archive_stream digest).
        self.checksum_in_pass = False
        self._inspect()

    def _inspect(self):
        """Read what ``judge`` needs from the disk; RemoteBackup reads the same from the remote."""
        metadata_name = os.path.basename(self.metadata_path)
        try:
            with open(self.metadata_path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            raw = None
        except (OSError, IOError) as exc:
            self.problem = "cannot read metadata %s: %s" % (metadata_name, exc.strerror or exc)
            return
        try:
            self.size = os.stat(self.path).st_size
        except OSError as exc:
            self.problem = "cannot stat archive: %s" % exc.strerror
            return
        self.metadata, self.problem = judge(self.name, self.size, metadata_name, raw)

    @property
    def complete(self):
        return self.problem is None

    def describe(self):
        """What an operator confirms a restore against, before anything is touched (complete backups only)."""
        size = self.metadata["size"]
        return {"name": self.name, "path": self.path, "environment": self.environment,
                "created": self.created.isoformat(), "size": size,
                "summary": "%s (taken %s, %s, environment %s)" % (
                    self.path, self.created.strftime("%Y-%m-%d %H:%M:%S UTC"), human_size(size), self.environment)}

    def check_complete(self):
        if not self.complete:
            raise BackupError("%s is not a complete backup: %s" % (self.name, self.problem))

    def check_checksum(self, actual=None):
        """Raise unless the archive's bytes are the ones the metadata vouches for (``actual``: their sha256, already taken)."""
        self.check_complete()
        expected = self.metadata.get("sha256")
        actual = actual or sha256_file(self.path)
        if expected != actual:
            raise BackupError(
                "%s is corrupted: sha256 %s does not match metadata %s; use another backup" % (self.name, actual, expected)
            )


def _listdir(directory):
    """Names in directory; a directory that does not exist yet holds no backups."""
    try:
        return os.listdir(directory)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise BackupError("cannot list %s: %s" % (directory, exc.strerror))


def list_backups(directory, kind=None, environment=None):
    """Backups in directory (complete or not), oldest first; other files are ignored."""
    found = []
    for name in _listdir(directory):
        parsed = parse_archive_name(name)
        if parsed is None:
            continue
        if kind is not None and parsed[0] != kind:
            continue
        if environment is not None and parsed[1] != environment:
            continue
        found.append(Backup(directory, name))
    found.sort(key=lambda b: (b.created, b.name))
    return found


def list_orphans(directory, kind, environment, backups):
    """(name, created) of the set's metadata files in directory whose archive is not among ``backups``, oldest first."""
    paired = set(os.path.basename(backup.metadata_path) for backup in backups)
    return orphan_metadata(_listdir(directory), kind, environment, paired)


def resolve_source(src, directory, kind, environment, identity_file=None, checksum=True):
    """Turn ``src`` ("latest" or a path) into a complete, checksum-verified Backup.

    An encrypted backup is also checked to open with ``identity_file``, so a
    missing or wrong key fails here, before the caller touches anything.
    ``checksum=False`` is for a caller that hashes the archive in the same read
    as its restore (``archive_stream(digest=...)``) and compares before
    anything is swapped in.
    """
    if src == "latest":
        found = list_backups(directory, kind, environment)
        complete = [b for b in found if b.complete]
        if not complete:
            raise BackupError(
                "no complete %s backup for environment %r in %s: pass src with the path of a backup"
                % (kind, environment, directory)
            )
        backup = complete[-1]
        # The operator must know that latest is not the newest backup: each newer one is named with why it was passed over.
        skipped = ["src=latest skipped the newer backup %s: %s" % (b.name, b.problem) for b in found[found.index(backup) + 1:]]
        backup.warnings.extend(skipped)
    else:
        name = os.path.basename(src)
        if parse_archive_name(name) is None:
            raise BackupError(
                "%s is not a backup of this collection (expected %s)" % (src, EXPECTED_NAME.replace("<kind>", kind))
            )
        if not os.path.isfile(src):
            raise BackupError("backup file %s does not exist: check the path or use src=latest" % src)
        backup = Backup(os.path.dirname(os.path.abspath(src)), name)
        if backup.kind != kind:
            raise BackupError("%s is a %s backup, not a %s backup" % (name, backup.kind, kind))
    if checksum:
        backup.check_checksum()
    else:
        backup.check_complete()
        backup.checksum_in_pass = True
    if is_encrypted(backup.name):
        backup.warnings.extend(check_identity(backup, identity_file))
        backup.identity_file = identity_file
    return backup


def recipients_of(backup):
    return ((backup.metadata or {}).get("encryption") or {}).get("recipients") or []


def check_identity(backup, identity_file):
    """Prove ``identity_file`` opens the encrypted backup by decrypting its header; returns warnings.

    Popen, not run_command: only the first plaintext byte is read, then age is
    stopped instead of decrypting the whole archive.
    """
    if not identity_file:
        raise BackupError("%s is encrypted with age: pass age_identity_file with the private key of one of its recipients" % backup.name)
    try:
        mode = os.stat(identity_file).st_mode
        with open(identity_file, "rb"):
            pass
    except (OSError, IOError) as exc:
        raise BackupError("age identity file %s cannot be read (%s): copy the private key there (mode 0600) or fix age_identity_file"
                          % (identity_file, exc.strerror or exc))
    warnings = []
    if mode & 0o077:
        warnings.append("age identity file %s has mode %04o: it holds a private key, chmod 600 it" % (identity_file, mode & 0o7777))
    with tempfile.TemporaryFile() as errors:
        proc = _start(["age", "-d", "-i", identity_file, backup.path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        try:
            opened = proc.stdout.read(1)
        finally:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            proc.stdout.close()
        if not opened:
            reason = _age_message(errors) or "exit status %d" % proc.returncode
            recipients = ", ".join(recipients_of(backup)) or "its recipients"
            if "no identity matched" in reason:
                raise BackupError("the age identity %s cannot decrypt %s (age: %s): use the key of one of %s"
                                  % (identity_file, backup.name, reason, recipients))
            if "payload" in reason:
                raise BackupError(DAMAGED % (backup.name, reason))
            raise BackupError("decrypting %s with the age identity %s failed (age: %s): age_identity_file must be the "
                              "age-keygen file (or unencrypted SSH key) of one of %s" % (backup.name, identity_file, reason, recipients))
    return warnings


@contextlib.contextmanager
def backup_lock(directory, kind, environment):
    """One writer per directory+kind+environment; flock dies with its process, so no stale locks."""
    path = os.path.join(directory, ".%s_%s.lock" % (kind, environment))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise BackupError("cannot create lock file %s: %s; check that the directory exists and is writable" % (path, exc.strerror))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (OSError, IOError):
            raise BackupError(
                "another %s backup of %r is running in %s (lock %s held): wait for it to finish" % (kind, environment, directory, path)
            )
        yield path
    finally:
        os.close(fd)


def fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_partials(directory, kind, environment):
    """Only under backup_lock: a .partial of this set that nobody is writing is what a killed run left."""
    removed = []
    prefix = "%s_%s_" % (kind, environment)
    for name in sorted(os.listdir(directory)):
        if not (name.startswith(prefix) and name.endswith(PARTIAL_SUFFIX)):
            continue
        base = name[: -len(PARTIAL_SUFFIX)]
        if base.endswith(METADATA_SUFFIX):
            base = base[: -len(METADATA_SUFFIX)] + ".tar"
        parsed = parse_archive_name(base)
        if parsed is not None and parsed[:2] == (kind, environment):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


def new_archive_path(directory, kind, environment, when, compression, encrypted=False):
    """The path of a backup about to be written; two backups in the same second must not meet in one name."""
    path = os.path.join(directory, archive_name(kind, environment, when, compression, encrypted))
    if os.path.lexists(path) or os.path.lexists(metadata_path(path)):
        raise BackupError("%s already exists (two backups in the same second): run again" % path)
    return path


class AtomicFile(object):
    """A 0600 file written as ``<path>.partial`` and renamed into place only by commit().

    ``locked``: the caller holds the writer's lock, so a ``.partial`` already
    there is a killed run's leftover and is replaced instead of refused.
    """

    def __init__(self, path, locked=False):
        self.path = path
        self.partial = path + PARTIAL_SUFFIX
        if locked:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.partial)
        try:
            # Opened by name (not os.fdopen) so handle.name is the path a disk-full message must show.
            self.handle = open(self.partial, "xb", opener=lambda path, flags: os.open(path, flags, 0o600))
        except OSError as exc:
            raise BackupError("cannot create %s: %s" % (self.partial, exc.strerror))

    def commit(self):
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
        except OSError as exc:
            fix = "free space on the destination" if exc.errno == errno.ENOSPC else "check the destination"
            raise BackupError("writing %s failed: %s -- %s or choose another dest" % (self.partial, exc.strerror or exc, fix))
        os.rename(self.partial, self.path)
        fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def discard(self):
        """Closing flushes the buffer, which fails on a full disk: the unlink must still happen."""
        try:
            with contextlib.suppress(OSError):
                self.handle.close()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.partial)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        return False


def write_metadata(archive_path, data):
    """Written last: its existence is what makes a backup complete."""
    path = metadata_path(archive_path)
    with AtomicFile(path) as target:
        target.handle.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
        target.commit()
    return path


def compressor_command(compression, level=None):
    """``level`` None: zstd 3; gzip: ISA-L ``igzip -3`` when installed, else level 6.

    ``igzip -3`` spends about a tenth of the CPU of ``pigz -6`` for an archive
    a few per cent bigger (bench/README.md); an explicit gzip level keeps the
    zlib family (``pigz``/``gzip``), whose levels it names.
    """
    if compression == "zstd":
        return ["zstd", "-q", "-T0", "-%d" % (level or 3), "-c"]
    if compression == "gzip":
        if level is None and shutil.which("igzip"):
            return ["igzip", "-c", "-3"]
        return [_first_installed("pigz", "gzip"), "-c", "-%d" % (level or 6)]
    return None


def decompressor_command(compression):
    """gzip: ISA-L's ``igzip`` decodes with half the CPU of ``pigz`` (deflate decoding is single-threaded in both)."""
    if compression == "zstd":
        return ["zstd", "-q", "-d", "-c"]
    if compression == "gzip":
        return [_first_installed("igzip", "pigz", "gzip"), "-d", "-c"]
    return None


def _first_installed(*tools):
    """The first of ``tools`` on PATH; the last one is used regardless, so a missing tool fails by its own name."""
    return next((tool for tool in tools[:-1] if shutil.which(tool)), tools[-1])


def compression_of(name):
    if is_encrypted(name):
        name = name[: -len(AGE_SUFFIX)]
    for compression, ext in EXTENSIONS.items():
        if name.endswith(ext) and not (compression == "none" and name.endswith((".tar.gz", ".tar.zst"))):
            return compression
    raise BackupError("cannot tell the compression of %s" % name)


def _start(command, **kwargs):
    try:
        return subprocess.Popen(command, **kwargs)
    except OSError as exc:
        raise BackupError("cannot run %s (%s): install it on this host (apt install %s)" % (command[0], exc.strerror or exc, command[0]))


def _age_message(errors):
    """age's own error line from its stderr file ("no identity matched any of the recipients"), or None."""
    errors.seek(0)
    lines = [line.strip() for line in errors.read().decode("utf-8", "replace").splitlines() if line.strip()]
    for line in lines:
        if line.startswith("age: error: "):
            return line[len("age: error: "):]
    return lines[0] if lines else None


def check_recipients(recipients):
    """The age recipients of a new archive, checked before anything is written; [] means not encrypted.

    The value is never echoed: a private key pasted here by mistake must not end up in a log.
    """
    checked = []
    for index, recipient in enumerate(recipients or []):
        text = recipient.strip() if isinstance(recipient, str) else ""
        if text.upper().startswith("AGE-SECRET-KEY-"):
            raise BackupError("age_recipients[%d] is a private key: list public keys only (age-keygen -y KEYFILE prints it) "
                              "and keep the private key off the backup host" % index)
        if not (AGE_RECIPIENT_RE.match(text) or SSH_RECIPIENT_RE.match(text)):
            raise BackupError("age_recipients[%d] is not a public key: use the 'age1...' key printed by age-keygen, "
                              "or an 'ssh-ed25519 ...' or 'ssh-rsa ...' public key" % index)
        checked.append(text)
    if checked and shutil.which("age") is None:
        raise BackupError("age is not installed on this host: install it (apt install age) or leave age_recipients empty")
    return checked


def encryption_argument_spec():
    """Options of the modules that write or read archives (documented in the encryption doc fragment)."""
    return dict(
        age_recipients=dict(type="list", elements="str", default=[]),
        age_identity_file=dict(type="path"),
    )


def encryption_record(recipients):
    """What the metadata says about encryption: public keys only, never the identity."""
    return {"method": "age", "recipients": list(recipients)} if recipients else None


class CompressedSink(object):
    """A writable stream: bytes go through the compressor (and ``age``) into ``target`` while size and sha256 are counted.

    Popen is needed (not run_command) because the data is produced while it is
    compressed and encrypted; nothing is staged on disk.  With ``recipients``
    the compressor's output goes through ``age -r ...``: size and sha256 are
    those of the encrypted bytes, the ones on disk.
    """

    def __init__(self, target, compression, recipients=None, level=None):
        self.target = target
        self.where = target.name if isinstance(getattr(target, "name", None), str) else "the archive"
        self.digest = hashlib.sha256()
        self.size = 0
        self._error = None
        self._procs = []
        self._thread = None
        commands = []
        command = compressor_command(compression, level)
        if command is not None:
            commands.append(("compressor %s" % command[0], command))
        if recipients:
            age = ["age"]
            for recipient in check_recipients(recipients):
                age += ["-r", recipient]
            commands.append(("age", age))
        try:
            upstream = subprocess.PIPE
            for name, command in commands:
                errors = tempfile.TemporaryFile() if name == "age" else None
                proc = _start(command, stdin=upstream, stdout=subprocess.PIPE, stderr=errors)
                if self._procs:
                    # age owns the compressor's output now: if age dies, the compressor gets SIGPIPE.
                    self._procs[-1][1].stdout.close()
                self._procs.append((name, proc, errors))
                upstream = proc.stdout
        except BaseException:
            self.abort()
            raise
        if self._procs:
            self._thread = threading.Thread(target=self._pump)
            self._thread.daemon = True
            self._thread.start()

    def _emit(self, block):
        self.digest.update(block)
        self.size += len(block)
        self.target.write(block)

    def _pump(self):
        try:
            for block in iter(lambda: self._procs[-1][1].stdout.read(CHUNK), b""):
                self._emit(block)
        except Exception as exc:  # the writer thread reports, close() raises
            self._error = exc
            # Unblock write(): a pipeline nobody reads would stall it forever.
            for unused_name, proc, unused_errors in self._procs:
                with contextlib.suppress(OSError):
                    proc.kill()

    def _stopped(self):
        """Why the pipeline stopped taking data: age's own message when age is the one that died."""
        if self._error is not None:
            return self._write_failed(self._error)
        for name, proc, errors in reversed(self._procs):
            if errors is not None and proc.poll():
                return "%s stopped before the end of the stream (%s)" % (name, _age_message(errors) or "exit status %d" % proc.returncode)
        return "%s stopped before the end of the stream" % self._procs[0][0]

    def _write_failed(self, exc):
        """One line with the file and the fix: a full disk is not a damaged archive."""
        reason = getattr(exc, "strerror", None) or str(exc)
        if getattr(exc, "errno", None) == errno.ENOSPC:
            return "writing %s failed: %s -- free space on the destination or choose another dest" % (self.where, reason)
        return "writing %s failed: %s -- check the destination (space, permissions, disk) or choose another dest" % (self.where, reason)

    def write(self, data):
        if not self._procs:
            try:
                self._emit(bytes(data))
            except OSError as exc:
                raise BackupError(self._write_failed(exc))
        else:
            try:
                self._procs[0][1].stdin.write(data)
            except BrokenPipeError:
                raise BackupError(self._stopped())
        return len(data)

    def tee_fd(self):
        """The compressor's stdin, a pipe the kernel can copy GNU tar's stream into (PipeReader); None without one."""
        return self._procs[0][1].stdin.fileno() if self._procs else None

    def broken(self):
        """The error for a pipeline that stopped taking data, as write() raises it."""
        return BackupError(self._stopped())

    def close(self):
        """Finish the stream; returns (size, sha256 hex) of what reached the target."""
        if self._procs:
            try:
                self._procs[0][1].stdin.close()
            except BrokenPipeError:
                raise BackupError(self._stopped())
            codes = [(name, proc.wait(), errors) for name, proc, errors in self._procs]
            self._thread.join()
            if self._error is not None:
                raise BackupError(self._write_failed(self._error))
            # From the target end: a dead age makes the compressor die of SIGPIPE, age's status says why.
            for name, rc, errors in reversed(codes):
                if rc != 0:
                    detail = _age_message(errors) if errors is not None else None
                    raise BackupError("%s exited with status %d%s" % (name, rc, ": %s" % detail if detail else ""))
            self._close_errors()
        return self.size, self.digest.hexdigest()

    def _close_errors(self):
        for unused_name, unused_proc, errors in self._procs:
            if errors is not None:
                errors.close()

    def abort(self):
        for unused_name, proc, unused_errors in self._procs:
            with contextlib.suppress(OSError):
                proc.kill()
        for unused_name, proc, unused_errors in self._procs:
            proc.wait()
        if self._thread is not None:
            self._thread.join()
        self._close_errors()


def _failure(name, identity_file, label, proc, errors):
    """One line for a reading process that failed, or None when it did not."""
    if proc.returncode in (0, None, -signal.SIGPIPE):
        return None
    if label == "age":
        reason = _age_message(errors) or "exit status %d" % proc.returncode
        if "no identity matched" in reason:
            return "the age identity %s cannot decrypt %s (age: %s): use the key of one of its recipients" % (identity_file, name, reason)
        return DAMAGED % (name, reason)
    errors.seek(0)
    lines = errors.read().decode("utf-8", "replace").strip().splitlines()
    return "%s is truncated or damaged: %s failed (%s); use another backup" % (
        name, label, lines[-1] if lines else "exit status %d" % proc.returncode)


# What tarfile raises on bytes it cannot parse: besides TarError, a damaged pax record or GNU sparse map
# surfaces as ValueError ("not enough values to unpack"), IndexError, struct.error or UnicodeDecodeError.
TAR_PARSE_ERRORS = (tarfile.TarError, EOFError, ValueError, LookupError, ArithmeticError, struct.error)


def damaged_archive(name, exc):
    """The one message for an archive whose tar stream cannot be parsed, whatever the parser raised."""
    return BackupError("archive %s is truncated or damaged (%s): use another backup" % (name, str(exc) or type(exc).__name__))


def _feed(source, target, digest):
    """Thread body: the archive's bytes into ``target``, each hashed on the way (hashlib and the I/O release the GIL).

    A reader that stops early (it reports why) or a failing read leaves the
    digest short, so it cannot match the metadata.
    """
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    fd = target.fileno()
    try:
        for size in iter(lambda: source.readinto(buffer), 0):
            digest.update(view[:size])
            done = 0
            while done < size:
                done += os.write(fd, view[done:size])
    except (OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(OSError):
            target.close()


@contextlib.contextmanager
def archive_stream(path, identity_file=None, partial=False, digest=None):
    """The plaintext tar stream of an archive: the file, through ``age -d`` and the decompressor its name calls for.

    Popen, because restores read the archive while it is decrypted and
    decompressed; nothing is staged.  The file goes straight into the first
    process: its sha256 was checked by ``resolve_source`` (or is taken on the
    way, below), and what a reader
    takes from the stream is checked against the metadata's per-member
    digests, so a file swapped in between is caught there without hashing the
    archive twice.  At the end the rest of the stream is read and
    every exit status checked: age authenticates each chunk and the end of the
    stream, so truncation fails here even when the tar looked complete.
    ``partial`` is for readers that stop early on purpose: the pipeline is then
    stopped, not checked (what was read was authenticated chunk by chunk).
    ``digest`` (a hashlib object) receives the file's bytes as a thread feeds
    them in: a restore compares its sha256 after the pass instead of reading
    the archive twice.
    """
    name = os.path.basename(path)
    commands = []
    if is_encrypted(name):
        if not identity_file:
            raise BackupError("%s is encrypted with age: pass age_identity_file with the private key of one of its recipients" % name)
        commands.append(("age", ["age", "-d", "-i", identity_file]))
    command = decompressor_command(compression_of(name))
    if command is not None:
        commands.append((command[0], command))
    try:
        source = open(path, "rb")
    except (OSError, IOError) as exc:
        raise BackupError("cannot read %s: %s" % (path, exc.strerror or exc))
    procs = []
    feeder = None
    stream = None
    try:
        upstream = source
        if digest is not None and not commands:
            read_end, write_end = os.pipe()
            stream = open(read_end, "rb")
            feeder = threading.Thread(target=_feed, args=(source, open(write_end, "wb"), digest))
            feeder.start()
        for label, command in commands:
            errors = tempfile.TemporaryFile()
            try:
                proc = _start(command, stdin=subprocess.PIPE if digest is not None and not procs else upstream,
                              stdout=subprocess.PIPE, stderr=errors)
            except BaseException:
                errors.close()
                raise
            if procs:
                procs[-1][1].stdout.close()
            else:
                if digest is not None:
                    feeder = threading.Thread(target=_feed, args=(source, proc.stdin, digest))
                    feeder.start()
            procs.append((label, proc, errors))
            upstream = proc.stdout
        stream = procs[-1][1].stdout if procs else (stream or source)
        try:
            yield stream
        except BaseException:
            # A process that died on its own (wrong key, truncated data) is why the reader failed: say so.
            for label, proc, errors in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.2)
                message = _failure(name, identity_file, label, proc, errors)
                if message:
                    raise BackupError(message)
            raise
        if not partial:
            for unused in iter(lambda: stream.read(CHUNK), b""):
                pass
            for label, proc, errors in procs:
                proc.wait()
    finally:
        for label, proc, errors in procs:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            proc.stdout.close()
        if feeder is not None:
            if not procs:
                stream.close()
            feeder.join()
        source.close()
        failures = [] if partial else [_failure(name, identity_file, *entry) for entry in procs]
        for label, proc, errors in procs:
            errors.close()
    failures = [message for message in failures if message]
    if failures:
        raise BackupError(failures[0])
