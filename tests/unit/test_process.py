"""_process with real children: stderr kept apart from the data, errors in one line, nothing left running or unreaped."""
import fcntl
import os

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._process import DEVNULL, PIPE, Pipeline, Process, run, widen_pipe


def state(pid):
    """The /proc state letter of pid (Z: zombie), or None once it is gone (reaped)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def children():
    """(pid, command name) of this process's children, zombies included (a zombie keeps its name and parent)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    stat = handle.read()
            except FileNotFoundError:
                continue
            name, rest = stat.split("(", 1)[1].rsplit(")", 1)
            if int(rest.split()[1]) == os.getpid():
                found.append((int(entry), name))
    return found


def assert_reaped(pid):
    assert state(pid) is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_run_keeps_stderr_apart_from_stdout_and_passes_stdin_and_env():
    rc, out, err = run(["sh", "-c", 'cat; printf "%s" "$X"; echo oops >&2; exit 3'], data="in-", env={"X": "env"})
    assert (rc, out, err) == (3, "in-env", "oops\n")
    rc, out, err = run(["sh", "-c", "printf '\\377'"], binary=True)
    assert (rc, out, err) == (0, b"\xff", "")


def test_env_wins_over_the_inherited_environment(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "inherited")
    assert run(["sh", "-c", 'printf "%s" "$PGPASSWORD"'], env={"PGPASSWORD": "given"})[1] == "given"


def test_a_missing_program_is_one_line_naming_the_fix():
    with pytest.raises(BackupError) as info:
        run(["minimarket-no-such-tool", "x"])
    assert str(info.value).startswith("cannot run minimarket-no-such-tool (")
    assert str(info.value).endswith("install it on this host (apt install minimarket-no-such-tool)")


@pytest.mark.parametrize("program, package", [
    ("/nonexistent/bin/docker", "docker.io"),
    ("/nonexistent/usr/lib/postgresql/16/bin/pg_dump", "postgresql-client"),
    ("/nonexistent/bin/igzip", "isal"),
    ("/nonexistent/bin/zstd", "zstd"),
])
def test_a_missing_program_names_the_debian_package_that_installs_it(program, package):
    with pytest.raises(BackupError) as info:
        run([program, "--version"])
    assert str(info.value) == "cannot run %s (No such file or directory): install it on this host (apt install %s)" % (program, package)


def test_reason_is_the_last_stderr_line_else_the_exit_status():
    with Process(["sh", "-c", "echo first >&2; echo 'tar: disk full' >&2; exit 3"], stdin=DEVNULL) as proc:
        assert proc.wait() == 3
        assert proc.reason() == "tar: disk full"
        assert proc.stderr() == "first\ntar: disk full\n"
    with Process(["sh", "-c", "exit 4"], stdin=DEVNULL) as proc:
        proc.wait()
        assert proc.reason() == "exit status 4"


def test_a_chatty_child_does_not_block_and_its_stderr_is_not_lost():
    """More stderr than a pipe holds (64 KiB), while the data is read: a file, not a pipe, takes it."""
    script = "i=0; while [ $i -lt 4000 ]; do echo line-$i-of-noise-on-stderr >&2; i=$((i+1)); done; echo data"
    with Process(["sh", "-c", script], stdin=DEVNULL, stdout=PIPE) as proc:
        assert proc.stdout.read() == b"data\n"
        assert proc.wait() == 0
        lines = proc.stderr().splitlines()
    assert len(lines) == 4000 and lines[-1] == "line-3999-of-noise-on-stderr"


def test_an_error_in_the_block_kills_and_reaps_the_child():
    with pytest.raises(RuntimeError):
        with Process(["sleep", "60"], stdin=DEVNULL) as proc:
            pid = proc.pid
            assert (pid, "sleep") in children() and state(pid) not in (None, "Z")  # alive: running, sleeping or in a disk wait (D)
            raise RuntimeError("the reader failed")
    assert proc.returncode == -9
    assert_reaped(pid)


def test_exited_waits_at_most_the_timeout():
    with Process(["sleep", "60"], stdin=DEVNULL) as proc:
        assert proc.exited(0.1) is None
    with Process(["true"], stdin=DEVNULL) as proc:
        assert proc.exited(10) == 0


def test_pipeline_streams_through_every_process():
    with Pipeline([("gzip", ["gzip", "-c"]), ("gunzip", ["gzip", "-dc"])], stdin=PIPE) as pipeline:
        pipeline.stdin.write(b"inventario " * 10000)
        pipeline.stdin.close()
        assert pipeline.stdout.read() == b"inventario " * 10000
        assert pipeline.wait() == [0, 0]


def test_when_the_second_process_fails_the_first_is_killed_and_both_are_reaped():
    with pytest.raises(BackupError, match="checker failed: bad header"):
        with Pipeline([("producer", ["sleep", "60"]),
                       ("checker", ["sh", "-c", "echo 'bad header' >&2; exit 3"])], stdin=DEVNULL) as pipeline:
            producer, checker = pipeline.procs
            pids = [producer.pid, checker.pid]
            assert checker.wait() == 3
            assert producer.poll() is None
            raise BackupError("checker failed: %s" % checker.reason())
    assert producer.returncode == -9 and checker.returncode == 3
    for pid in pids:
        assert_reaped(pid)


def test_a_pipeline_that_cannot_start_leaves_nothing_running():
    before = children()
    with pytest.raises(BackupError, match="cannot run minimarket-no-such-tool"):
        Pipeline([("sleeper", ["sleep", "60"]), ("missing", ["minimarket-no-such-tool"])], stdin=DEVNULL)
    assert children() == before


def test_a_dead_reader_makes_the_writer_fail_instead_of_blocking():
    """The pipeline closes our copy of the middle pipe: the first process gets SIGPIPE when the second one dies."""
    with Pipeline([("yes", ["yes"]), ("head", ["head", "-c", "10"])], stdin=DEVNULL) as pipeline:
        assert pipeline.stdout.read() == b"y\ny\ny\ny\ny\n"
        assert pipeline.wait() == [-13, 0]


def test_every_pipe_a_pipeline_creates_is_1_mib():
    """A compressor writes up to 1 MiB ahead of the Python thread reading it (which may be waiting for the GIL)."""
    size = getattr(fcntl, "F_GETPIPE_SZ", 1032)
    with Pipeline([("first", ["cat"]), ("second", ["cat"])], stdin=PIPE, stdout=PIPE) as pipeline:
        first, second = pipeline.procs
        assert fcntl.fcntl(first.stdin.fileno(), size) == 1024 * 1024
        assert fcntl.fcntl(second.stdout.fileno(), size) == 1024 * 1024
        middle = os.readlink("/proc/%d/fd/1" % first.pid)
        assert os.readlink("/proc/%d/fd/0" % second.pid) == middle and middle.startswith("pipe:")
        with open("/proc/%d/fd/0" % second.pid, "rb") as middle_pipe:
            assert fcntl.fcntl(middle_pipe.fileno(), size) == 1024 * 1024
        block = os.urandom(512 * 1024 + 17)
        pipeline.stdin.write(block)
        pipeline.stdin.close()
        assert pipeline.stdout.read() == block
        assert pipeline.wait() == [0, 0]


def test_widen_pipe_makes_a_pipe_1_mib_and_leaves_other_descriptors_alone(tmp_path):
    read_end, write_end = os.pipe()
    try:
        widen_pipe(write_end)
        assert fcntl.fcntl(read_end, getattr(fcntl, "F_GETPIPE_SZ", 1032)) == 1024 * 1024
    finally:
        os.close(read_end)
        os.close(write_end)
    with open(tmp_path / "not-a-pipe", "wb") as handle:
        widen_pipe(handle.fileno())
        handle.write(b"still writable")
    assert (tmp_path / "not-a-pipe").read_bytes() == b"still writable"
