"""docker_volume_archive with age encryption at rest: real Docker volumes and containers, real age."""
import json
import os
import subprocess

import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _volume_archive as va
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError
from tests.volume_fixtures import populate, read_metadata, snapshot
from tests.age_keys import make_key

pytest_plugins = ["tests.volume_fixtures"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = b"MARCA-CIFRADO-grafana-91d2c7"


def leftovers(mountpoint):
    return [name for name in os.listdir(os.path.dirname(mountpoint)) if name != "_data"]


def started_at(engine, container_id):
    state = engine.api.inspect_container(container_id)["State"]
    return state["Running"], state["StartedAt"]


def test_encrypted_archive_round_trip_and_refused_keys(engine, mm_docker, helper_image, tmp_path):
    (identity, public), (wrong, unused) = make_key(tmp_path, "right.txt"), make_key(tmp_path, "wrong.txt")
    data = mm_docker.volume("data")
    spare = mm_docker.volume("spare")
    populate(mm_docker.mountpoint(data), sparse_size=1024 * 1024, extended=True)
    with open(os.path.join(mm_docker.mountpoint(spare), "secreto.txt"), "wb") as handle:
        handle.write(MARKER * 100)
    before = snapshot(mm_docker.mountpoint(data))
    spare_before = snapshot(mm_docker.mountpoint(spare))
    dest = str(tmp_path / "b")

    planned = va.archive(engine, va.ArchiveOptions([data, spare], dest, "test", "none", mode="host", recipients=[public]), check_mode=True)
    assert planned["encrypted"] is True and planned["msg"].endswith(".tar.age") and not os.path.exists(dest)
    result = va.archive(engine, va.ArchiveOptions([data, spare], dest, "test", "none", mode="host", recipients=[public]))
    assert result["archive"].endswith(".tar.age") and result["encrypted"] is True and result["recipients"] == [public]
    with open(result["archive"], "rb") as handle:
        raw = handle.read()
    assert raw.startswith(b"age-encryption.org/v1\n") and MARKER not in raw and b"ustar" not in raw
    meta = read_metadata(result["archive"])
    assert meta["encryption"] == {"method": "age", "recipients": [public]}
    assert meta["size"] == len(raw) == os.path.getsize(result["archive"]) and meta["sha256"] == result["sha256"]
    assert [v["name"] for v in meta["volumes"]] == [data, spare]

    with pytest.raises(BackupError, match="is encrypted with age: pass age_identity_file with the private key"):
        va.verify("latest", dest, "test")
    checked = va.verify("latest", dest, "test", identity_file=identity)
    assert [v["sha256"] for v in checked["volumes"]] == [v["sha256"] for v in meta["volumes"]]
    assert va.verify("latest", dest, "test", engine=engine, mode="host", identity_file=identity)["mode"] == "host"

    # a running container uses the volume; a stray file and a removed volume show whether anything was touched
    user = mm_docker.container("user", [data], helper_image)
    running = started_at(engine, user)
    with open(os.path.join(mm_docker.mountpoint(data), "stray"), "w") as handle:
        handle.write("still here")
    changed = snapshot(mm_docker.mountpoint(data))
    engine.remove_volume(spare)
    for key, message in ((None, "is encrypted with age: pass age_identity_file"),
                         (wrong, "cannot decrypt .*no identity matched any of the recipients.*use the key of one of %s" % public)):
        with pytest.raises(BackupError, match=message):
            va.restore(engine, va.RestoreOptions("latest", dest, "test", mode="host", stop_containers=True, identity_file=key))
        assert started_at(engine, user) == running  # never stopped, so never restarted
        assert snapshot(mm_docker.mountpoint(data)) == changed
        assert leftovers(mm_docker.mountpoint(data)) == []
        assert engine.volume(spare) is None  # not created either

    restored = va.restore(engine, va.RestoreOptions(result["archive"], dest, "test", mode="host", stop_containers=True, identity_file=identity))
    assert sorted(v["action"] for v in restored["volumes"]) == ["created", "replaced"]
    assert [c["name"] for c in restored["stopped_containers"]] == ["%s-user" % mm_docker.prefix]
    assert snapshot(mm_docker.mountpoint(data)) == before
    assert snapshot(mm_docker.mountpoint(spare)) == spare_before
    assert started_at(engine, user)[0] is True and leftovers(mm_docker.mountpoint(data)) == []


def test_api_mode_reads_encrypted_archives(engine, mm_docker, helper_image, tmp_path):
    identity, public = make_key(tmp_path, "key.txt")
    vol = mm_docker.volume("api")
    populate(mm_docker.mountpoint(vol), sparse_size=64 * 1024, extended=False)
    before = snapshot(mm_docker.mountpoint(vol))
    dest = str(tmp_path / "b")
    result = va.archive(engine, va.ArchiveOptions([vol], dest, "test", "zstd", mode="api", helper_image=helper_image, recipients=[public]))
    assert result["archive"].endswith(".tar.zst.age")
    engine.remove_volume(vol)
    va.restore(engine, va.RestoreOptions("latest", dest, "test", mode="api", helper_image=helper_image, identity_file=identity))
    assert snapshot(mm_docker.mountpoint(vol)) == before


def test_module_entry_point_with_encryption(mm_docker, tmp_path):
    identity, public = make_key(tmp_path, "key.txt")
    vol = mm_docker.volume("cli")
    populate(mm_docker.mountpoint(vol), sparse_size=64 * 1024, extended=False)
    before = snapshot(mm_docker.mountpoint(vol))
    dest = str(tmp_path / "b")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1")

    def run(args, *extra):
        proc = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible"), "localhost", "-m",
                               "minimarket.backup.docker_volume_archive", "-a", json.dumps(args)] + list(extra),
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
        return proc.returncode, json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]

    base = {"dest": dest, "environment": "test"}
    rc, res = run(dict(base, state="archive", volumes=[vol], compression="gzip", age_recipients=[public]), "--check")
    assert rc == 0 and res["msg"].endswith(".tar.gz.age") and res["encrypted"] is True and not os.path.exists(dest)
    rc, res = run(dict(base, state="archive", volumes=[vol], age_recipients=["AGE-SECRET-KEY-1NOTREALLY"]))
    assert rc != 0 and res["msg"].startswith("age_recipients[0] is a private key") and "NOTREALLY" not in res["msg"]
    rc, res = run(dict(base, state="archive", volumes=[vol], age_recipients=[public]))
    assert rc == 0 and res["archive"].endswith(".tar.gz.age") and res["recipients"] == [public]
    rc, res = run(dict(base, state="verify"))
    assert rc != 0 and res["failed"] and res["msg"].endswith("pass age_identity_file with the private key of one of its recipients")
    os.chmod(identity, 0o640)
    rc, res = run(dict(base, state="verify", age_identity_file=identity))
    assert rc == 0 and res["volumes"][0]["name"] == vol
    assert res["warnings"] == ["age identity file %s has mode 0640: it holds a private key, chmod 600 it" % identity]
    with open(os.path.join(mm_docker.mountpoint(vol), "stray"), "w") as handle:
        handle.write("x")
    rc, res = run(dict(base, state="restore", age_identity_file=identity))
    assert rc == 0 and res["volumes"][0]["action"] == "replaced"
    assert snapshot(mm_docker.mountpoint(vol)) == before
    with open(identity) as handle:
        assert handle.read().split("AGE-SECRET-KEY-")[1][:16] not in json.dumps(res)
