# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bytes of an archive: compressed and encrypted while written, decrypted and decompressed while read.

Nothing is staged on disk: the data streams through the compressor (and
``age``) as it is produced, and through ``age -d`` and the decompressor as it
is restored (every process started by ``_process``). An archive encrypted with
``age`` ends in ``.age``; its size and sha256 are those of the encrypted bytes,
so completeness and checksums are checked without the private key.
"""

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import struct
import tarfile
import threading

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._process import DEVNULL, PIPE, Pipeline, Process

CHUNK = 1024 * 1024
EXTENSIONS = {"gzip": ".tar.gz", "zstd": ".tar.zst", "none": ".tar"}
AGE_SUFFIX = ".age"
AGE_RECIPIENT_RE = re.compile(r"^age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}$")
SSH_RECIPIENT_RE = re.compile(r"^ssh-(?:ed25519|rsa) [A-Za-z0-9+/]+={0,2}(?: [^\n]*)?$")
DAMAGED = "decrypting %s failed (age: %s): the archive is damaged or truncated; use another backup"


def is_encrypted(name):
    return name.endswith(AGE_SUFFIX)


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


def age_message(stderr):
    """age's own error line from its stderr ("no identity matched any of the recipients"), or None."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
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


def recipients_of(backup):
    return ((backup.metadata or {}).get("encryption") or {}).get("recipients") or []


def check_identity(backup, identity_file):
    """Prove ``identity_file`` opens the encrypted backup by decrypting its header; returns warnings.

    Streamed, not run to the end: only the first plaintext byte is read, then
    age is stopped instead of decrypting the whole archive.
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
    with Process(["age", "-d", "-i", identity_file, backup.path], stdin=DEVNULL, stdout=PIPE) as proc:
        opened = proc.stdout.read(1)
        proc.kill()
        if not opened:
            reason = age_message(proc.stderr()) or "exit status %d" % proc.returncode
            recipients = ", ".join(recipients_of(backup)) or "its recipients"
            if "no identity matched" in reason:
                raise BackupError("the age identity %s cannot decrypt %s (age: %s): use the key of one of %s"
                                  % (identity_file, backup.name, reason, recipients))
            if "payload" in reason:
                raise BackupError(DAMAGED % (backup.name, reason))
            raise BackupError("decrypting %s with the age identity %s failed (age: %s): age_identity_file must be the "
                              "age-keygen file (or unencrypted SSH key) of one of %s" % (backup.name, identity_file, reason, recipients))
    return warnings


class CompressedSink(object):
    """A writable stream: bytes go through the compressor (and ``age``) into ``target`` while size and sha256 are counted.

    A pipeline, not a command run to the end, because the data is produced
    while it is compressed and encrypted; nothing is staged on disk.  With
    ``recipients`` the compressor's output goes through ``age -r ...``: size
    and sha256 are those of the encrypted bytes, the ones on disk.
    """

    def __init__(self, target, compression, recipients=None, level=None):
        self.target = target
        self.where = target.name if isinstance(getattr(target, "name", None), str) else "the archive"
        self.digest = hashlib.sha256()
        self.size = 0
        self._error = None
        self._pipeline = None
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
        if commands:
            self._pipeline = Pipeline(commands, stdin=PIPE, stdout=PIPE)
            self._thread = threading.Thread(target=self._pump)
            self._thread.daemon = True
            self._thread.start()

    def _emit(self, block):
        self.digest.update(block)
        self.size += len(block)
        self.target.write(block)

    def _pump(self):
        try:
            for block in iter(lambda: self._pipeline.stdout.read(CHUNK), b""):
                self._emit(block)
        except Exception as exc:  # the writer thread reports, close() raises
            self._error = exc
            # Unblock write(): a pipeline nobody reads would stall it forever.
            self._pipeline.kill()

    def _stopped(self):
        """Why the pipeline stopped taking data: the message of the process that died, from the target end."""
        if self._error is not None:
            return self._write_failed(self._error)
        for proc in reversed(self._pipeline.procs):
            if proc.poll():
                return "%s stopped before the end of the stream (%s)" % (proc.label, age_message(proc.stderr()) or "exit status %d" % proc.returncode)
        return "%s stopped before the end of the stream" % self._pipeline.procs[0].label

    def _write_failed(self, exc):
        """One line with the file and the fix: a full disk is not a damaged archive."""
        reason = getattr(exc, "strerror", None) or str(exc)
        if getattr(exc, "errno", None) == errno.ENOSPC:
            return "writing %s failed: %s -- free space on the destination or choose another backup_dir" % (self.where, reason)
        return "writing %s failed: %s -- check the destination (space, permissions, disk) or choose another backup_dir" % (self.where, reason)

    def write(self, data):
        if self._pipeline is None:
            try:
                self._emit(bytes(data))
            except OSError as exc:
                raise BackupError(self._write_failed(exc))
        else:
            try:
                self._pipeline.stdin.write(data)
            except BrokenPipeError:
                raise BackupError(self._stopped())
        return len(data)

    def tee_fd(self):
        """The compressor's stdin, a pipe the kernel can copy GNU tar's stream into (PipeReader); None without one."""
        return self._pipeline.stdin.fileno() if self._pipeline is not None else None

    def broken(self):
        """The error for a pipeline that stopped taking data, as write() raises it."""
        return BackupError(self._stopped())

    def close(self):
        """Finish the stream; returns (size, sha256 hex) of what reached the target."""
        if self._pipeline is not None:
            try:
                try:
                    self._pipeline.stdin.close()
                except BrokenPipeError:
                    raise BackupError(self._stopped())
                self._pipeline.wait()
                self._thread.join()
                if self._error is not None:
                    raise BackupError(self._write_failed(self._error))
                # From the target end: a dead age makes the compressor die of SIGPIPE, age's status says why.
                for proc in reversed(self._pipeline.procs):
                    if proc.returncode != 0:
                        detail = age_message(proc.stderr())
                        raise BackupError("%s exited with status %d%s" % (proc.label, proc.returncode, ": %s" % detail if detail else ""))
            finally:
                self.abort()
        return self.size, self.digest.hexdigest()

    def abort(self):
        """Kill and reap the pipeline, then let the writer thread end; safe to call more than once."""
        if self._pipeline is not None:
            self._pipeline.kill()
            self._thread.join()
            self._pipeline.close()


def _failure(name, identity_file, proc):
    """One line for a reading process that failed, or None when it did not."""
    if proc.returncode in (0, None, -signal.SIGPIPE):
        return None
    if proc.label == "age":
        reason = age_message(proc.stderr()) or "exit status %d" % proc.returncode
        if "no identity matched" in reason:
            return "the age identity %s cannot decrypt %s (age: %s): use the key of one of its recipients" % (identity_file, name, reason)
        return DAMAGED % (name, reason)
    return "%s is truncated or damaged: %s failed (%s); use another backup" % (name, proc.label, proc.reason())


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

    A pipeline, because restores read the archive while it is decrypted and
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
    pipeline = None
    feeder = None
    stream = source
    failures = []
    try:
        if commands:
            pipeline = Pipeline(commands, stdin=PIPE if digest is not None else source, stdout=PIPE)
            stream = pipeline.stdout
            if digest is not None:
                feeder = threading.Thread(target=_feed, args=(source, pipeline.stdin, digest))
                feeder.start()
        elif digest is not None:
            read_end, write_end = os.pipe()
            stream = open(read_end, "rb")
            feeder = threading.Thread(target=_feed, args=(source, open(write_end, "wb"), digest))
            feeder.start()
        try:
            yield stream
        except BaseException:
            # A process that died on its own (wrong key, truncated data) is why the reader failed: say so.
            for proc in pipeline.procs if pipeline is not None else []:
                proc.exited(0.2)
                message = _failure(name, identity_file, proc)
                if message:
                    raise BackupError(message)
            raise
        if not partial:
            for unused in iter(lambda: stream.read(CHUNK), b""):
                pass
            if pipeline is not None:
                pipeline.wait()
    finally:
        if pipeline is not None:
            pipeline.kill()
            if not partial:
                failures = [_failure(name, identity_file, proc) for proc in pipeline.procs]
        elif feeder is not None:
            stream.close()
        if feeder is not None:
            feeder.join()
        if pipeline is not None:
            pipeline.close()
        source.close()
    failures = [message for message in failures if message]
    if failures:
        raise BackupError(failures[0])
