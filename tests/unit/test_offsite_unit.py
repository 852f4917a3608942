"""The off-site logic that needs no server: remote paths, the environment-only configuration, remote judgements."""
import json

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from ansible_collections.minimarket.backup.plugins.module_utils._offsite import (
    Rclone,
    RemoteBackup,
    last_error,
    metadata_name,
    secret_values,
)
from ansible_collections.minimarket.backup.plugins.module_utils._process import run

NAME = "database_production_20251007_020000.tar.gz"


class Recorder(object):
    """A run() that records what rclone would get; stands in for rclone only where the logic is pure."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv, data=None, env=None, binary=False):
        self.calls.append((argv, dict(env), data))
        return 0, b"OBSCURED\n", ""


@pytest.mark.parametrize("remote", ["", "no-colon/path", ":sftp,host=example.org,pass=x:backups", "my remote:x"])
def test_remote_must_be_a_named_remote_path(remote):
    with pytest.raises(BackupError, match="is not <name>:<path>"):
        Rclone("rclone", remote, Recorder())


def test_remote_config_goes_to_the_environment_and_passwords_are_obscured_through_stdin():
    run = Recorder()
    rclone = Rclone("rclone", "offsite:minimarket/db", run, remote_config=dict(
        type="sftp", host="backup.example.org", port=2222, user="mm", set_modtime=False, **{"pass": "hunter2"}))
    env = rclone.env
    assert env["RCLONE_CONFIG_OFFSITE_TYPE"] == "sftp"
    assert env["RCLONE_CONFIG_OFFSITE_PORT"] == "2222"
    assert env["RCLONE_CONFIG_OFFSITE_SET_MODTIME"] == "false"
    assert env["RCLONE_CONFIG_OFFSITE_PASS"] == "OBSCURED"
    assert "hunter2" not in json.dumps(env)
    (argv, _env, data), = run.calls
    assert argv[1:3] == ["obscure", "-"] and data == b"hunter2"
    assert all("hunter2" not in arg for arg in argv)


def test_real_obscure_is_revealed_by_rclone_to_the_same_password():
    rclone = Rclone("rclone", "offsite:x", remote_config={"type": "sftp", "pass": "p4ss w0rd!"})
    obscured = rclone.env["RCLONE_CONFIG_OFFSITE_PASS"]
    assert obscured != "p4ss w0rd!"
    rc, out, _err = run(["rclone", "reveal", "--", obscured])
    assert rc == 0 and out.strip() == "p4ss w0rd!"


@pytest.mark.parametrize("config, message", [
    (dict(host="h"), "has no 'type'"),
    ({"type": "sftp", "bad-key": "x"}, "not an rclone option name"),
])
def test_bad_remote_config_names_the_fix(config, message):
    with pytest.raises(BackupError, match=message):
        Rclone("rclone", "offsite:x", Recorder(), remote_config=config)


def test_missing_rclone_config_file(tmp_path):
    with pytest.raises(BackupError, match="rclone_config .* does not exist"):
        Rclone("rclone", "offsite:x", Recorder(), rclone_config=str(tmp_path / "nope.conf"))


@pytest.mark.parametrize("remote, expected", [
    ("offsite:", "offsite:" + NAME),
    ("offsite:bucket/db", "offsite:bucket/db/" + NAME),
    ("offsite:bucket/db/", "offsite:bucket/db/" + NAME),
])
def test_remote_paths(remote, expected):
    assert Rclone("rclone", remote, Recorder()).path(NAME) == expected


def test_last_error_is_the_last_line_without_its_time_stamp():
    stderr = ('2026/11/27 23:33:27 NOTICE: Config file "/root/.config/rclone/rclone.conf" not found - using defaults\n'
              "2026/11/27 23:33:27 Failed to copyto: dial tcp 127.0.0.1:1: connect: connection refused\n")
    assert last_error(stderr) == "Failed to copyto: dial tcp 127.0.0.1:1: connect: connection refused"
    assert last_error("") == "no error output"


def metadata(**fields):
    data = dict(archive=NAME, size=10, sha256="ab" * 32)
    data.update(fields)
    return json.dumps(data).encode()


@pytest.mark.parametrize("raw, size, problem", [
    (None, 10, "metadata file database_production_20251007_020000_metadata.json is missing"),
    (b"{not json", 10, "is not valid JSON"),
    (b"[]", 10, "is not a JSON object"),
    (metadata(archive="other.tar.gz"), 10, "metadata names 'other.tar.gz'"),
    (metadata(), 11, "archive is 11 bytes but metadata records 10"),
    (metadata(sha256=None), 10, "records no sha256"),
])
def test_remote_pair_judged_like_a_local_one(raw, size, problem):
    backup = RemoteBackup(NAME, size, "database_production_20251007_020000_metadata.json", raw)
    assert not backup.complete
    assert problem in backup.problem
    assert backup.as_dict()["complete"] is False


def test_complete_remote_pair():
    backup = RemoteBackup(NAME, 10, "database_production_20251007_020000_metadata.json", metadata())
    assert backup.complete and backup.as_dict()["sha256"] == "ab" * 32


def test_only_secret_settings_are_masked():
    config = dict(type="s3", provider="Other", endpoint="http://127.0.0.1:22", region="us-east-1", port=22,
                  access_key_id="AKIA1", secret_access_key="s3cr3t", session_token="tok", env_auth=False,
                  key_file="/etc/minimarket/id_ed25519", key_file_pass="kp", **{"pass": "pw"})
    assert sorted(secret_values(config)) == ["AKIA1", "kp", "pw", "s3cr3t", "tok"]


def test_encrypted_archives_pair_with_the_same_metadata_name():
    name = "database_production_20251007_120000.tar.gz.age"
    assert metadata_name(name) == "database_production_20251007_120000_metadata.json"
    backup = RemoteBackup(name, 10, metadata_name(name), metadata(archive=name))
    assert backup.complete and backup.extension == ".tar.gz.age"
