"""Which compose the scratch check drives: found on PATH and probed through _process, like every other child."""
import os

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _service_check as sc
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._process import run

# Records how it was called; 'docker compose version' works only when the v2 plugin is there (FAKE_V2=1).
PROGRAM = """#!/bin/sh
echo "${0##*/} $*" >> "$FAKE_LOG"
if [ "${0##*/}" = docker ] && [ "$1" = compose ]; then
  [ "$FAKE_V2" = 1 ] && { echo 2.29.7; exit 0; }
  echo "docker: unknown command: docker compose" >&2; exit 1
fi
exit 0
"""


def path_with(tmp_path, monkeypatch, programs, v2):
    """A PATH holding only ``programs`` (each the recording script above); returns the log of their calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in programs:
        (bindir / name).write_text(PROGRAM)
        (bindir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("PATH", str(bindir))
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_V2", "1" if v2 else "0")
    return bindir, log


def test_this_hosts_compose_is_found_and_runs():
    """On the real PATH the command found answers ``version`` (v2 plugin, else docker-compose v1)."""
    command = sc.compose_command()
    assert command[1:] == ["compose"] or (len(command) == 1 and os.path.basename(command[0]) == "docker-compose"), command
    rc, out, err = run(command + ["version"])
    assert rc == 0 and out.strip(), err


def test_the_v2_plugin_wins_when_it_answers(tmp_path, monkeypatch):
    bindir, log = path_with(tmp_path, monkeypatch, ["docker", "docker-compose"], v2=True)
    assert sc.compose_command() == [str(bindir / "docker"), "compose"]
    assert log.read_text().splitlines() == ["docker compose version"]


def test_docker_compose_v1_when_docker_has_no_compose_plugin(tmp_path, monkeypatch):
    bindir, log = path_with(tmp_path, monkeypatch, ["docker", "docker-compose"], v2=False)
    assert sc.compose_command() == [str(bindir / "docker-compose")]
    assert log.read_text().splitlines() == ["docker compose version"]


def test_docker_compose_v1_alone(tmp_path, monkeypatch):
    bindir, unused_log = path_with(tmp_path, monkeypatch, ["docker-compose"], v2=False)
    assert sc.compose_command() == [str(bindir / "docker-compose")]


def test_no_compose_fails_in_one_line_naming_the_fix(tmp_path, monkeypatch):
    path_with(tmp_path, monkeypatch, ["docker"], v2=False)
    with pytest.raises(BackupError) as error:
        sc.compose_command()
    assert str(error.value) == ("neither 'docker compose' nor 'docker-compose' works on this host: "
                                "install the docker compose plugin or docker-compose")
