# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Child processes, started one way: data streams through pipes, stderr is kept apart, nothing outlives an error.

stderr goes to a temporary file: a chatty child cannot block on a full pipe,
and nothing it says is lost or mixed into the data. On an error every child of
a pipeline is killed and reaped, so neither a zombie nor a stray process stays.
Children stay in our process group, so a kill of the whole run (systemd, the
crash tests) takes them too. Secrets reach a child through ``env`` or files,
never through argv.
"""

import contextlib
import ctypes
import fcntl
import os
import subprocess
import tempfile

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
# fcntl.F_SETPIPE_SZ (Linux) is only named in Python 3.10+.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1024 * 1024
# Debian packages of the programs the collection starts, where the package has another name than the program
# (tar, gzip, pigz, zstd, age, rclone and barman are packaged under their own names).
PACKAGES = {
    "docker": "docker.io",
    "igzip": "isal",
    "pg_dump": "postgresql-client",
    "pg_dumpall": "postgresql-client",
    "pg_restore": "postgresql-client",
    "psql": "postgresql-client",
}


def package_of(program):
    """The Debian package that installs ``program`` (a name or a path), so the fix a missing one names works as typed."""
    name = os.path.basename(program)
    return PACKAGES.get(name, name)


class Process(object):
    """One child with its stderr in a temporary file.

    ``env`` is added to this process's environment. A ``with`` block ends with
    the child reaped, killed first if it still runs (an error left it so).
    """

    def __init__(self, argv, stdin=None, stdout=None, env=None, label=None):
        self.label = label or argv[0]
        self._errors = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=self._errors,
                                         env=dict(os.environ, **env) if env else None)
        except OSError as exc:
            self._errors.close()
            raise BackupError("cannot run %s (%s): install it on this host (apt install %s)" % (argv[0], exc.strerror or exc, package_of(argv[0])))

    @property
    def stdin(self):
        return self.proc.stdin

    @property
    def stdout(self):
        return self.proc.stdout

    @property
    def pid(self):
        return self.proc.pid

    @property
    def returncode(self):
        return self.proc.returncode

    def poll(self):
        return self.proc.poll()

    def wait(self):
        return self.proc.wait()

    def exited(self, timeout):
        """The exit status, waiting at most ``timeout`` seconds; None while the child still runs."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(timeout)
        return None

    def stderr(self):
        """What the child wrote to stderr so far."""
        self._errors.seek(0)
        return self._errors.read().decode("utf-8", "replace")

    def reason(self):
        """The one line an error quotes: the child's last stderr line, else its exit status."""
        lines = [line.strip() for line in self.stderr().splitlines() if line.strip()]
        if lines:
            return lines[-1]
        return "exit status %s" % self.proc.returncode

    def kill(self):
        """Stop the child now and reap it; one that already exited is only reaped."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        self.proc.wait()

    def close(self):
        """Reap the child (killed if it still runs), close its pipes and the stderr file."""
        self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._errors.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False


class Pipeline(object):
    """Processes ``[(label, argv)]`` chained stdout to stdin; closing it kills and reaps every one still running.

    ``stdin`` feeds the first process (a pipe, a file or a descriptor),
    ``stdout`` is where the last one writes. Every pipe it creates is 1 MiB
    (``widen_pipe``): a compressor whose output waits for a Python thread
    (which must first get the GIL) then runs on instead of blocking at 64 KiB.
    """

    def __init__(self, commands, stdin=None, stdout=PIPE, env=None):
        self.procs = []
        try:
            upstream = stdin
            for index, (label, argv) in enumerate(commands):
                last = index == len(commands) - 1
                proc = Process(argv, stdin=upstream, stdout=stdout if last else PIPE, env=env, label=label)
                for pipe in (proc.stdin, proc.stdout):
                    if pipe is not None:
                        widen_pipe(pipe.fileno())
                if self.procs:
                    # The next process owns this output now: if it dies, the writer gets SIGPIPE instead of blocking.
                    self.procs[-1].stdout.close()
                self.procs.append(proc)
                upstream = proc.stdout
        except BaseException:
            self.close()
            raise

    @property
    def stdin(self):
        return self.procs[0].stdin

    @property
    def stdout(self):
        return self.procs[-1].stdout

    def wait(self):
        """Exit statuses, first process first."""
        return [proc.wait() for proc in self.procs]

    def kill(self):
        """Every process is signalled before any is waited for: one blocked on another must not stall the reaping."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.proc.kill()
        for proc in self.procs:
            proc.wait()

    def close(self):
        self.kill()
        for proc in self.procs:
            proc.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False


def widen_pipe(fd):
    """A 1 MiB pipe (64 KiB by default) makes producer and consumer switch 16 times less often."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass


def libc_function(name, argtypes=None, restype=ctypes.c_int):
    """A C library call ``os`` lacks (tee, renameat2, syncfs), setting errno; None where this C library has none."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):
        return None
    if argtypes is not None:
        function.argtypes = argtypes
    function.restype = restype
    return function


def run(argv, data=None, env=None, binary=False):
    """A short command: (exit status, stdout, stderr text); ``data`` is its stdin, stdout is text unless ``binary``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with Process(argv, stdin=DEVNULL if data is None else PIPE, stdout=PIPE, env=env) as proc:
        out = proc.proc.communicate(data)[0]
        return proc.returncode, out if binary else out.decode("utf-8", "replace"), proc.stderr()
