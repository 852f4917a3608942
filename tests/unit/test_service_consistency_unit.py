"""Pure logic of the consistency modes and the scratch project (no Docker, no service)."""
import pytest

from ansible_collections.minimarket.backup.plugins.module_utils import _service_check as sc
from ansible_collections.minimarket.backup.plugins.module_utils import _volume_consistency as vc
from ansible_collections.minimarket.backup.plugins.module_utils._errors import BackupError

VOLUMES = ["p_redis-data", "p_grafana-data", "p_loki-data"]


def test_plan_defaults_to_stop_and_refuses_unknown_modes_and_volumes():
    assert vc.plan(VOLUMES, {"p_redis-data": "redis"}) == {"p_redis-data": "redis", "p_grafana-data": "stop", "p_loki-data": "stop"}
    with pytest.raises(BackupError, match=r"^consistency of p_loki-data is 'rsync': use one of stop, redis, prometheus, sqlite$"):
        vc.plan(VOLUMES, {"p_loki-data": "rsync"})
    with pytest.raises(BackupError, match="names volume\\(s\\) p_other that are not archived"):
        vc.plan(VOLUMES, {"p_other": "redis"})


def test_tar_command_reads_a_snapshot_as_the_volume_and_binds_copies_in_a_private_namespace():
    info = {"Name": "p_prometheus-data"}
    snap = vc.Volume(info, "/var/lib/docker/volumes/p_prometheus-data/_data", "prometheus")
    snap.parent, snap.member, snap.transform = "/v/p_prometheus-data/_data/snapshots", "20261202T1-ab", "s,^20261202T1-ab,p_prometheus-data,S"
    db = vc.Volume({"Name": "p_grafana-data"}, "/var/lib/docker/volumes/p_grafana-data/_data", "sqlite")
    db.exclude("grafana.db-wal")
    db.exclude("odd*name.db-wal")
    db.binds.append(("/backups/.mm-sqlite-x/0.db", "/var/lib/docker/volumes/p_grafana-data/_data/grafana.db"))
    command = vc.tar_command({"a": snap, "b": db}, ["tar", "--create"])
    assert command[:9] == ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", vc.BIND_SCRIPT, "sh"]
    assert command[9:12] == ["/backups/.mm-sqlite-x/0.db", "/var/lib/docker/volumes/p_grafana-data/_data/grafana.db", "--"]
    assert command[12:] == [
        "tar", "--create", "--transform=s,^20261202T1-ab,p_prometheus-data,S", "--anchored", "--wildcards",
        "--exclude=p_grafana-data/_data/grafana.db-wal", "--exclude=p_grafana-data/_data/odd\\*name.db-wal",
        "-C", "/v/p_prometheus-data/_data/snapshots", "20261202T1-ab", "-C", "/var/lib/docker/volumes", "p_grafana-data/_data"]


def test_check_specs_need_what_each_kind_asks():
    specs = sc.check_specs([{"service": "redis", "kind": "redis"}, {"service": "loki", "kind": "http", "port": 3100}])
    assert specs[0]["port"] == 6379 and specs[1]["path"] == "/"
    for bad, message in (
            ({"service": "x", "kind": "mysql"}, "needs service and kind"),
            ({"service": "grafana", "kind": "sqlite", "database": "grafana.db"}, "absolute path inside the container"),
            ({"service": "loki", "kind": "http"}, "needs port")):
        with pytest.raises(BackupError, match=message):
            sc.check_specs([bad])
    with pytest.raises(BackupError, match="name a service twice"):
        sc.check_specs([{"service": "r", "kind": "redis"}, {"service": "r", "kind": "redis"}])


def test_services_that_could_not_be_asked_all_count_as_failed():
    specs = sc.check_specs([{"service": "redis", "kind": "redis"}, {"service": "loki", "kind": "http", "port": 3100}])
    assert sc.not_asked(specs, "docker compose up failed in the scratch project mmverify-1: no space left") == [
        {"service": "redis", "kind": "redis", "ok": False, "checks": [],
         "msg": "redis was not asked: docker compose up failed in the scratch project mmverify-1: no space left"},
        {"service": "loki", "kind": "http", "ok": False, "checks": [],
         "msg": "loki was not asked: docker compose up failed in the scratch project mmverify-1: no space left"},
    ]


CONFIG = {
    "services": {
        "redis": {"image": "redis", "container_name": "live_redis_1", "ports": ["6379:6379"], "depends_on": ["x"],
                  "restart": "always", "command": ["redis-server"], "user": "999:999", "networks": ["front"],
                  "volumes": ["redis-data:/data:rw", "/etc/shop/redis.conf:/etc/redis.conf:rw"]},
        "grafana": {"image": "grafana", "volumes": [{"type": "volume", "source": "grafana-data", "target": "/var/lib/grafana"},
                                                    {"type": "bind", "source": "/srv/prov", "target": "/etc/grafana/provisioning"}]},
    },
    "volumes": {"redis-data": {}, "grafana-data": {"name": "shop-grafana"}},
}


def test_scratch_definition_publishes_nothing_shares_no_name_and_binds_read_only():
    definition, keys = sc.scratch_definition(CONFIG, "live", "mmverify-1", ["redis", "grafana"], {"live_redis-data", "shop-grafana"})
    redis = definition["services"]["redis"]
    assert sorted(redis) == ["command", "image", "labels", "user", "volumes"]
    assert redis["volumes"] == ["redis-data:/data", "/etc/shop/redis.conf:/etc/redis.conf:ro"]
    assert definition["services"]["grafana"]["volumes"] == ["grafana-data:/var/lib/grafana", "/srv/prov:/etc/grafana/provisioning:ro"]
    assert definition["volumes"] == {"redis-data": {"external": True, "name": "mmverify-1_redis-data"},
                                     "grafana-data": {"external": True, "name": "mmverify-1_grafana-data"}}
    assert definition["networks"] == {"default": {"labels": {sc.SCRATCH_LABEL: "live"}}}
    assert keys == {"live_redis-data": "redis-data", "shop-grafana": "grafana-data"}
    with pytest.raises(BackupError, match="service redis uses volume live_redis-data, which the archive does not hold"):
        sc.scratch_definition(CONFIG, "live", "mmverify-1", ["redis"], {"shop-grafana"})
    with pytest.raises(BackupError, match="service loki is not in the compose file"):
        sc.scratch_definition(CONFIG, "live", "mmverify-1", ["loki"], set())
