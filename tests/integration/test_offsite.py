"""backup_offsite against real second locations on loopback: an OpenSSH sftp server and a moto S3 server."""
import datetime
import hashlib
import json
import os

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _backup_info, _offsite
from ansible_collections.minimarket.backup.plugins.module_utils._backup_set import metadata_path, utc_now
from ansible_collections.minimarket.backup.plugins.module_utils._retention import Policy, plan
from tests import pg_fixtures
from tests.offsite_fixtures import S3_SECRET_KEY
from tests.retention_fixtures import BackupDir

pytest_plugins = ["tests.offsite_fixtures"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULE = os.path.join(ROOT, "plugins", "modules", "backup_offsite.py")
UTC = datetime.timezone.utc
T0 = datetime.datetime(2025, 1, 1, 2, 0, tzinfo=UTC)


def run_module(args, check_mode=False, diff=False):
    """The real module entry point; the S3 secret must never come back in its output."""
    result = pg_fixtures.run_module(args, check_mode=check_mode, timeout=300, module=MODULE, diff=diff)
    assert S3_SECRET_KEY not in json.dumps(result)
    return result


def offsite_args(server, **extra):
    args = dict(remote=server.remote, remote_config=server.remote_config, kind="database", environment="production")
    args.update(extra)
    return args


def rclone_for(server, **kwargs):
    return _offsite.Rclone("rclone", server.remote, remote_config=server.remote_config, **kwargs)


def remote_files(server):
    proc = server.rclone("lsjson", "--files-only", server.remote)
    if proc.returncode == 3:
        return {}
    assert proc.returncode == 0, proc.stderr
    return dict((entry["Name"], entry["Size"]) for entry in json.loads(proc.stdout))


def remote_bytes(server, name):
    proc = server.rclone("cat", server.remote + "/" + name)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def snapshot(directory):
    """Name -> (bytes sha256, mode, mtime) of every file: what 'untouched' means."""
    result = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        info = os.stat(path)
        with open(path, "rb") as handle:
            result[name] = (hashlib.sha256(handle.read()).hexdigest(), info.st_mode, info.st_mtime_ns)
    return result


def files(directory):
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


@pytest.fixture
def local_set(tmp_path):
    """Two complete backups, one without metadata, one whose archive is shorter than its metadata says."""
    directory = tmp_path / "local"
    directory.mkdir()
    backups = BackupDir(directory)
    complete = [backups.complete(T0 + datetime.timedelta(days=day), os.urandom(150000 + day)) for day in (0, 1)]
    backups.archive(T0 + datetime.timedelta(days=2), os.urandom(1000))
    short = backups.complete(T0 + datetime.timedelta(days=3), os.urandom(5000))
    with open(short, "r+b") as handle:
        handle.truncate(100)
    return str(directory), complete


def test_push_copies_complete_pairs_only_verifies_them_and_is_idempotent(offsite_server, local_set):
    src, complete = local_set
    before = snapshot(src)
    first = run_module(offsite_args(offsite_server, state="push", src_dir=src))
    assert first["_rc"] == 0, first
    assert first["changed"] is True
    assert first["pushed"] == [os.path.basename(p) for p in reversed(complete)]
    assert sorted(i["name"] for i in first["incomplete"]) == [
        "database_production_20250103_020000.tar.gz", "database_production_20250104_020000.tar.gz"]
    assert first["failed"] == [] and first["bytes"] == sum(os.path.getsize(p) for p in complete)
    expected = sorted([os.path.basename(p) for p in complete] + [os.path.basename(metadata_path(p)) for p in complete])
    assert sorted(remote_files(offsite_server)) == expected
    for path in complete:
        for local in (path, metadata_path(path)):
            with open(local, "rb") as handle:
                assert remote_bytes(offsite_server, os.path.basename(local)) == handle.read()
    assert snapshot(src) == before
    assert S3_SECRET_KEY not in json.dumps(first)
    if offsite_server.backend == "s3":
        assert first["invocation"]["module_args"]["remote_config"]["secret_access_key"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    else:
        assert first["invocation"]["module_args"]["remote_config"]["port"] == offsite_server.port

    second = run_module(offsite_args(offsite_server, state="push", backup_dir=src))
    assert second["_rc"] == 0 and second["changed"] is False, second
    assert second["pushed"] == [] and sorted(second["already_remote"]) == sorted(first["pushed"])
    assert "skipped" not in second  # a non-empty skipped makes Ansible show the task as skipping


def test_metadata_is_uploaded_last_and_no_secret_is_in_argv(offsite_server, local_set):
    src, complete = local_set
    rclone = rclone_for(offsite_server)
    result = _offsite.push(rclone, src, "database", "production", Policy(), utc_now())
    assert result["failed"] == [] and len(result["pushed"]) == 2
    for path in complete:
        name, meta = os.path.basename(path), os.path.basename(metadata_path(path))
        touching = [(argv[1], argv[-7].rsplit("/", 1)[1]) for argv in rclone.commands
                    if argv[-7].endswith("/" + name) or argv[-7].endswith("/" + meta)]
        # archive up, its size listed, its bytes read back, and only then the metadata up (and read back)
        assert touching == [("copyto", name), ("lsjson", name), ("cat", name), ("copyto", meta), ("cat", meta)]
    secrets = [str(v) for k, v in offsite_server.remote_config.items() if k in ("secret_access_key", "access_key_id")]
    for argv in rclone.commands:
        for secret in secrets:
            assert all(secret not in arg for arg in argv)


def test_check_mode_lists_what_would_be_pushed_and_uploads_nothing(sftp_server, local_set):
    src, complete = local_set
    result = run_module(offsite_args(sftp_server, state="push", src_dir=src), check_mode=True)
    assert result["_rc"] == 0 and result["changed"] is True
    assert result["pushed"] == [os.path.basename(p) for p in reversed(complete)]
    assert remote_files(sftp_server) == {}


def test_push_with_a_stranger_key_fails_cleanly(sftp_server, local_set):
    src, _complete = local_set
    before = snapshot(src)
    config = dict(sftp_server.remote_config, key_file=os.path.join(sftp_server.tmp, "stranger_ed25519"))
    result = run_module(dict(offsite_args(sftp_server, state="push", src_dir=src), remote_config=config))
    assert result["_rc"] == 1
    assert "\n" not in result["msg"]
    assert result["msg"].startswith("cannot list %s:" % sftp_server.remote)
    assert "unable to authenticate" in result["msg"] or "handshake failed" in result["msg"]
    assert snapshot(src) == before
    assert remote_files(sftp_server) == {}


def test_push_to_a_stopped_server_fails_names_the_backup_and_leaves_nothing_complete(sftp_server, local_set):
    src, complete = local_set
    before = snapshot(src)
    rclone = rclone_for(sftp_server)
    real_upload = rclone.upload
    uploads = []

    def upload_then_stop(local_path, name):
        """The server goes away after the first pair is up: the second archive's upload is the failed transfer."""
        uploads.append(name)
        if len(uploads) == 3:
            sftp_server.stop()
        real_upload(local_path, name)
    rclone.upload = upload_then_stop
    result = _offsite.push(rclone, src, "database", "production", Policy(), utc_now())
    newest, older = os.path.basename(complete[1]), os.path.basename(complete[0])
    assert result["pushed"] == [newest]
    assert [f["name"] for f in result["failed"]] == [older]
    message = _offsite.push_failure_message(result, sftp_server.remote)
    assert "\n" not in message
    assert message.startswith("off-site push to %s failed for %s: uploading %s" % (sftp_server.remote, older, older))
    assert "pushed before the failure: %s" % newest in message
    assert snapshot(src) == before
    sftp_server.start()
    listing = _backup_info.remote(rclone_for(sftp_server), "database", "production", utc_now())
    assert [b["name"] for b in listing["backups"] if b["complete"]] == [newest]


def test_module_failure_is_one_line_when_the_server_is_down(offsite_server, local_set):
    src, _complete = local_set
    before = snapshot(src)
    offsite_server.stop()
    result = run_module(offsite_args(offsite_server, state="push", src_dir=src))
    assert result["_rc"] == 1 and "\n" not in result["msg"]
    assert result["msg"].startswith("cannot list %s:" % offsite_server.remote)
    assert "connection refused" in result["msg"].lower() or "connect" in result["msg"].lower()
    assert snapshot(src) == before


def test_an_archive_that_reads_back_wrong_is_deleted_from_the_remote(offsite_server, local_set):
    src, _complete = local_set
    before = snapshot(src)

    def corrupting(argv, env, consume):
        """Flips a bit of every block read back (overwriting with a constant left blocks that already ended in it intact)."""
        return _offsite.stream_output(argv, env, lambda block: consume(block[:-1] + bytes([block[-1] ^ 1])))
    rclone = _offsite.Rclone("rclone", offsite_server.remote, stream=corrupting,
                             remote_config=offsite_server.remote_config)
    result = _offsite.push(rclone, src, "database", "production", Policy(), utc_now())
    assert result["pushed"] == [] and len(result["failed"]) == 1
    assert "reads back as" in result["failed"][0]["reason"] and "the bad remote copy was deleted" in result["failed"][0]["reason"]
    assert remote_files(offsite_server) == {}
    assert snapshot(src) == before


def test_a_tampered_remote_archive_is_reported_and_never_fetched(sftp_server, local_set, tmp_path):
    src, complete = local_set
    assert run_module(offsite_args(sftp_server, state="push", src_dir=src))["_rc"] == 0
    flipped, grown = (os.path.basename(p) for p in complete)
    with open(sftp_server.local_path(flipped), "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with open(sftp_server.local_path(grown), "ab") as handle:
        handle.write(b"junk")

    quick = {b["name"]: b for b in run_module(offsite_args(sftp_server, state="report"))["backups"]}
    assert quick[grown]["complete"] is False and "but metadata records" in quick[grown]["problem"]
    thorough = run_module(offsite_args(sftp_server, state="report", checksum=True))
    listed = {b["name"]: b for b in thorough["backups"]}
    assert listed[flipped]["complete"] is False and "does not match metadata" in listed[flipped]["problem"]
    assert thorough["latest"] is None

    dest = str(tmp_path / "fetched")
    refused = run_module(offsite_args(sftp_server, state="fetch", backup=flipped, dest=dest))
    assert refused["_rc"] == 1 and "\n" not in refused["msg"]
    assert "is damaged" in refused["msg"] and "nothing was written" in refused["msg"]
    assert files(dest) == []
    # latest is the newest pair that looks complete (the flipped one): it is refused too, never restored from
    latest = run_module(offsite_args(sftp_server, state="fetch", backup="latest", dest=dest))
    assert latest["_rc"] == 1 and latest["msg"].startswith(flipped + " at ") and "is damaged" in latest["msg"]
    assert files(dest) == []


def test_fetch_latest_into_an_empty_directory(offsite_server, local_set, tmp_path):
    src, complete = local_set
    assert run_module(offsite_args(offsite_server, state="push", src_dir=src))["_rc"] == 0
    dest = str(tmp_path / "restore" / "database")
    check = run_module(offsite_args(offsite_server, state="fetch", dest=dest), check_mode=True)
    assert check["_rc"] == 0 and check["changed"] is True and not os.path.exists(dest)
    fetched = run_module(offsite_args(offsite_server, state="fetch", dest=dest))
    assert fetched["_rc"] == 0 and fetched["changed"] is True, fetched
    newest = complete[-1]
    assert fetched["path"] == os.path.join(dest, os.path.basename(newest))
    assert files(dest) == sorted([os.path.basename(newest), os.path.basename(metadata_path(newest))])
    for local, copy in ((newest, fetched["path"]), (metadata_path(newest), fetched["metadata"])):
        with open(local, "rb") as a, open(copy, "rb") as b:
            assert a.read() == b.read()
        assert os.stat(copy).st_mode & 0o777 == 0o600
    assert os.stat(dest).st_mode & 0o777 == 0o700
    again = run_module(offsite_args(offsite_server, state="fetch", dest=dest))
    assert again["_rc"] == 0 and again["changed"] is False
    older = run_module(offsite_args(offsite_server, state="fetch", dest=dest, backup=complete[0]))
    assert older["_rc"] == 0 and older["changed"] is True and len(files(dest)) == 4


def test_fetch_refuses_to_overwrite_a_damaged_local_copy(sftp_server, local_set, tmp_path):
    src, complete = local_set
    assert run_module(offsite_args(sftp_server, state="push", src_dir=src))["_rc"] == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    damaged = dest / os.path.basename(complete[-1])
    damaged.write_bytes(b"half a file")
    result = run_module(offsite_args(sftp_server, state="fetch", dest=str(dest)))
    assert result["_rc"] == 1 and "exists but is not usable" in result["msg"] and "move it out of" in result["msg"]
    assert damaged.read_bytes() == b"half a file" and files(str(dest)) == [damaged.name]


def upload_history(server, tmp_path, days):
    """Small fake pairs (real names and metadata) with old timestamps, copied to the remote as they are."""
    directory = tmp_path / "history"
    directory.mkdir()
    backups = BackupDir(directory)
    for day in days:
        backups.complete(T0 + datetime.timedelta(days=day))
    backups.archive(T0 - datetime.timedelta(days=30))
    backups.archive(T0 + datetime.timedelta(days=max(days) + 1))
    proc = server.rclone("copy", str(directory), server.remote)
    assert proc.returncode == 0, proc.stderr
    return str(directory)


@pytest.mark.parametrize("policy", [
    dict(retention_days=0, keep_last=2, keep_weekly=2),
    dict(retention_days=0, keep_last=0, partial_max_age="1h"),
])
def test_remote_prune_applies_backup_prunes_policy(offsite_server, tmp_path, policy):
    directory = upload_history(offsite_server, tmp_path, range(0, 40, 3))
    local_plan = plan(directory, "database_production_", Policy(**policy), utc_now())
    before = remote_files(offsite_server)

    check = run_module(offsite_args(offsite_server, state="prune", **policy), check_mode=True, diff=True)
    assert check["_rc"] == 0, check
    assert remote_files(offsite_server) == before
    assert check["diff"]["before"] == "".join(name + "\n" for name in sorted(before))

    result = run_module(offsite_args(offsite_server, state="prune", **policy))
    assert result["_rc"] == 0 and result["changed"] is True, result
    assert [d["name"] for d in result["deleted"]] == [d["name"] for d in local_plan["deleted"]]
    assert [k["name"] for k in result["kept"]] == [k["name"] for k in local_plan["kept"]]
    assert sorted(remote_files(offsite_server)) == sorted(local_plan["files_after"])
    newest = "database_production_20250209_020000.tar.gz"
    assert newest in remote_files(offsite_server) and newest in [k["name"] for k in result["kept"]]
    assert result["bytes_freed"] == sum(before[name] for name in before if name not in local_plan["files_after"])

    again = run_module(offsite_args(offsite_server, state="prune", **policy))
    assert again["_rc"] == 0 and again["changed"] is False


def test_push_leaves_out_what_the_remote_retention_would_delete(sftp_server, local_set):
    src, complete = local_set
    args = offsite_args(sftp_server, state="push", src_dir=src, retention_days=0, keep_last=1)
    result = run_module(args)
    assert result["_rc"] == 0, result
    assert result["pushed"] == [os.path.basename(complete[1])] and result["expired"] == [os.path.basename(complete[0])]
    pruned = run_module(dict(args, state="prune"))
    assert pruned["_rc"] == 0 and pruned["changed"] is False
    again = run_module(args)
    assert again["changed"] is False and again["expired"] == [os.path.basename(complete[0])]
