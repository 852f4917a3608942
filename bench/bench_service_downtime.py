"""How long each service stops answering during the weekly volume backup, in stop mode and in online mode.

    .venv/bin/python bench/bench_service_downtime.py [--redis-keys 200000] [--rounds 2]

Brings up the development stack under a unique project (mmtest-bench-<hex>, removed at the end),
fills Redis with ``--redis-keys`` keys (Prometheus and the Grafana stand-in fill themselves while it
runs), then archives the five volumes with docker_volume_archive twice per round: every volume in
``stop`` mode (the old behaviour), and with the inventory's online modes (redis, prometheus, sqlite).
Meanwhile one prober per service asks every 50 ms -- Redis ``PING`` + ``GET``, Prometheus
``/-/ready``, Grafana ``/api/health`` -- and the time during which a service did not answer is its
unavailability.  Figures, not thresholds: the archive's own duration is printed beside them.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, ".collections")]

from ansible_collections.minimarket.backup.plugins.module_utils import _services as sv  # noqa: E402
from ansible_collections.minimarket.backup.plugins.module_utils import _volume_archive as va  # noqa: E402
from ansible_collections.minimarket.backup.plugins.module_utils._docker import Engine  # noqa: E402
from testenv.pgserver import free_port  # noqa: E402
from testenv.stack import ComposeStack  # noqa: E402

PERIOD = 0.05


class Prober(threading.Thread):
    """Asks one service every PERIOD; sums the time from a failed answer to the next good one."""

    def __init__(self, name, ask):
        super().__init__(daemon=True)
        self.name, self.ask = name, ask
        self.stop = threading.Event()
        self.down_since = None
        self.down = 0.0

    def run(self):
        while not self.stop.is_set():
            now = time.time()
            try:
                self.ask()
                if self.down_since is not None:
                    self.down += now - self.down_since
                    self.down_since = None
            except Exception:
                if self.down_since is None:
                    self.down_since = now
            time.sleep(PERIOD)
        if self.down_since is not None:
            self.down += time.time() - self.down_since


def address(engine, container):
    return sv.container_address(engine.api.inspect_container(container))


def probers(engine, stack):
    def redis():
        with sv.redis(address(engine, stack.containers["redis"]), timeout=1) as client:
            if client.command("PING") != "PONG" or client.command("GET", "ventas:contador") is None:
                raise RuntimeError("redis")

    def http(service, port, path):
        def ask():
            status, unused = sv.http("GET", "http://%s:%d%s" % (address(engine, stack.containers[service]), port, path), timeout=1)
            if status != 200:
                raise RuntimeError(service)
        return ask
    return [Prober("redis", redis), Prober("prometheus", http("prometheus", 9090, "/-/ready")),
            Prober("grafana", http("grafana", 3000, "/api/health"))]


def fill_redis(engine, stack, keys):
    with sv.redis(address(engine, stack.containers["redis"])) as client:
        batch = 1000
        for start in range(0, keys, batch):
            payload = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$64\r\n%s\r\n" % (len(k), k, b"x" * 64)
                               for k in (b"bench:%08d" % n for n in range(start, min(keys, start + batch))))
            client.sock.sendall(payload)
            for unused in range(min(keys, start + batch) - start):
                client._reply()
        return client.command("DBSIZE")


def run_once(engine, stack, names, consistency, dest):
    watchers = probers(engine, stack)
    for watcher in watchers:
        watcher.start()
    time.sleep(1)
    started = time.time()
    result = va.archive(engine, va.ArchiveOptions(names, dest, "benchmark", stop_containers=True, consistency=consistency))
    duration = time.time() - started
    time.sleep(3)  # a restarted service needs a moment before it answers again; that counts as down time
    for watcher in watchers:
        watcher.stop.set()
    for watcher in watchers:
        watcher.join()
    for name in (result["archive"], result["metadata"]):
        os.unlink(name)
    return duration, dict((w.name, w.down) for w in watchers), result["warnings"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-keys", type=int, default=int(os.environ.get("MM_BENCH_REDIS_KEYS", "200000")))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    stack = ComposeStack("mmtest-bench-%s" % uuid.uuid4().hex[:8], free_port(), "pw-" + uuid.uuid4().hex[:12], seed_rows=200)
    engine = Engine()
    dest = tempfile.mkdtemp(prefix="mm-bench-downtime-")
    try:
        stack.up()
        time.sleep(10)  # Prometheus scrapes, the Grafana stand-in writes
        keys = fill_redis(engine, stack, args.redis_keys)
        names = [stack.volumes[v] for v in ("postgres-data", "grafana-data", "prometheus-data", "loki-data", "redis-data")]
        online = {stack.volumes["redis-data"]: "redis", stack.volumes["prometheus-data"]: "prometheus",
                  stack.volumes["grafana-data"]: "sqlite"}
        sizes = subprocess.run(["du", "-sb"] + [engine.volume(n)["Mountpoint"] for n in names],
                               capture_output=True, text=True, check=True).stdout.split()[::2]
        print("stack %s: redis %d keys; volume bytes %s" % (stack.project, keys, dict(zip(names, map(int, sizes)))))
        rows = []
        for number in range(args.rounds):
            for label, consistency in (("stop", {}), ("online", online)):
                duration, down, warnings = run_once(engine, stack, names, consistency, dest)
                rows.append({"round": number + 1, "mode": label, "archive_s": round(duration, 2),
                             "unavailable_s": dict((k, round(v, 2)) for k, v in down.items()), "warnings": warnings})
                print(json.dumps(rows[-1]))
        print("| mode | archive (s) | redis down (s) | prometheus down (s) | grafana down (s) |")
        print("|---|---|---|---|---|")
        for row in rows:
            print("| %s (round %d) | %.2f | %.2f | %.2f | %.2f |" % (row["mode"], row["round"], row["archive_s"],
                  row["unavailable_s"]["redis"], row["unavailable_s"]["prometheus"], row["unavailable_s"]["grafana"]))
    finally:
        stack.down()
        subprocess.run(["rm", "-rf", dest], check=False)


if __name__ == "__main__":
    main()
