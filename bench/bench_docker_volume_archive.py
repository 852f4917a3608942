"""Benchmark docker_volume_archive against the helper-container recipe, in one run (ratios, not thresholds).

    .venv/bin/python bench/bench_docker_volume_archive.py [--size-mb 2000]   (or MM_BENCH_VOLUME_MB)

Five volumes share the size: each gets many small files (2-64 KiB) plus a few
large ones, half text-like (compressible), half random.  Baselines, on the same
data: ``docker run --rm -v VOL:/data:ro -v DEST:/backup minimarket/busybox tar czf``
per volume, and ``tar xzf`` through a helper container for restore.  Our side
runs in a child process so its peak RSS (Python + tar/compressor children)
can be reported.  Everything is named mmtest-bench-* and removed at the end.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, ".collections")]

from ansible_collections.minimarket.backup.plugins.module_utils import _volume_archive as va  # noqa: E402
from ansible_collections.minimarket.backup.plugins.module_utils._docker import Engine  # noqa: E402

IMAGE = "minimarket/busybox:latest"
# ext4 without a journal (this machine's /var/lib/docker) skips inodes freed in the last 30-55 s when it
# allocates new ones (fs/ext4/ialloc.c recently_deleted()): extracting 12 k files right after deleting
# 12 k took 7.7 s instead of 1.5 s.  Every restore step therefore waits this long after deletions.
QUIET_S = 60
WORDS = b" ".join(b"producto%d precio=%d.%02d stock=%d deposito-%d" % (i, i % 997, i % 100, i % 311, i % 7) for i in range(4000))


def fill(root, size, seed):
    """About ``size`` bytes: 40% in small files, 60% in four large files; half compressible."""
    rnd = __import__("random").Random(seed)
    small_budget = int(size * 0.4)
    written, index = 0, 0
    while written < small_budget:
        length = rnd.randint(2048, 65536)
        folder = os.path.join(root, "d%03d" % (index // 500))
        if index % 500 == 0:
            os.makedirs(folder, exist_ok=True)
        data = WORDS[:length] if index % 2 else os.urandom(length)
        with open(os.path.join(folder, "f%06d" % index), "wb") as handle:
            handle.write(data)
        written += length
        index += 1
    large = (size - written) // 4
    for number in range(4):
        with open(os.path.join(root, "large%d.bin" % number), "wb") as handle:
            left = large
            while left > 0:
                block = (WORDS * 8)[: min(left, 1 << 20)] if number % 2 else os.urandom(min(left, 1 << 20))
                handle.write(block)
                left -= len(block)
    return index + 4


def quiet():
    subprocess.run(["sync"], check=True)
    time.sleep(QUIET_S)


def timed(func):
    """Dirty pages from the previous step are flushed first, so no step pays for another's writeback."""
    subprocess.run(["sync"], check=True)
    started = time.monotonic()
    value = func()
    return time.monotonic() - started, value


def _phase_timer(phases, module, name):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.monotonic() - started
    setattr(module, name, wrapper)


def child(args):
    """Run one of our operations and report its duration, phases and peak RSS as JSON."""
    phases = {}
    for name in ("scan_archive", "read_host", "_stage"):
        _phase_timer(phases, va, name)
    _phase_timer(phases, va.bs, "resolve_source")
    _phase_timer(phases, va.shutil, "rmtree")
    engine = Engine()
    names = args.volumes.split(",")
    if args.child == "archive":
        seconds, result = timed(lambda: va.archive(engine, names, args.dest, args.env, args.compression, mode="host"))
        extra = {"size": result["size"]}
    else:
        seconds, result = timed(lambda: va.restore(engine, args.src, args.dest, args.env, names, mode="host",
                                                   check_restored=args.check_restored == "yes"))
        extra = {}
    usage_self = resource.getrusage(resource.RUSAGE_SELF)
    usage_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage_self.ru_utime + usage_self.ru_stime, usage_children.ru_utime + usage_children.ru_stime)
    print(json.dumps(dict(extra, seconds=seconds, rss_mb=usage_self.ru_maxrss / 1024.0, child_rss_mb=usage_children.ru_maxrss / 1024.0,
                          cpu_python=round(cpu[0], 2), cpu_children=round(cpu[1], 2),
                          phases=dict((k, round(v, 1)) for k, v in phases.items()))))


def run_child(*argv):
    out = subprocess.run([sys.executable, os.path.abspath(__file__)] + list(argv), check=True, stdout=subprocess.PIPE).stdout
    return json.loads(out.decode().strip().splitlines()[-1])


def docker_tar(volume, backup_dir, command):
    subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", "%s:/data" % volume, "-v", "%s:/backup" % backup_dir,
                    IMAGE, "sh", "-c", command], check=True)


def host_floor(archive, target):
    """The bare work of a restore: ``zstd -dc | GNU tar -x`` on the host, no checks, no staging, no swap."""
    unzstd = subprocess.Popen(["zstd", "-dc", archive], stdout=subprocess.PIPE)
    subprocess.run(va.TAR_EXTRACT + ["-C", target], stdin=unzstd.stdout, check=True)
    unzstd.stdout.close()
    if unzstd.wait() != 0:
        raise RuntimeError("zstd -dc %s failed" % archive)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=int(os.environ.get("MM_BENCH_VOLUME_MB", "2000")))
    parser.add_argument("--child")
    parser.add_argument("--volumes")
    parser.add_argument("--dest")
    parser.add_argument("--env", default="bench")
    parser.add_argument("--compression", default="gzip")
    parser.add_argument("--src")
    parser.add_argument("--check-restored", default="yes")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    engine = Engine()
    tag = "mmtest-bench-%s" % uuid.uuid4().hex[:6]
    names = ["%s-%s" % (tag, role) for role in ("postgres", "grafana", "prometheus", "loki", "redis")]
    work = tempfile.mkdtemp(prefix="mm-bench-", dir="/var/tmp")
    try:
        files = 0
        for number, name in enumerate(names):
            engine.api.create_volume(name)
            files += fill(engine.volume(name)["Mountpoint"], args.size_mb * 1024 * 1024 // len(names), number)
        subprocess.run(["sync"], check=True)
        print("data: %d MB in %d files over %d volumes; machine: %d cores, %s" % (
            args.size_mb, files, len(names), os.cpu_count(), os.uname().release))

        def baseline_archive():
            for name in names:
                docker_tar(name, work, "tar czf /backup/%s.tar.gz -C /data ." % name)

        base_arch, unused = timed(baseline_archive)
        ours = {}
        for compression in ("gzip", "zstd"):
            dest = os.path.join(work, compression)
            os.mkdir(dest)
            ours[compression] = run_child("--child", "archive", "--volumes", ",".join(names), "--dest", dest,
                                          "--compression", compression)
        restored = ["%s-r" % name for name in names]

        def baseline_restore():
            for name, target in zip(names, restored):
                engine.api.create_volume(target)
                docker_tar(target, work, "tar xzf /backup/%s.tar.gz -C /data" % name)

        quiet()
        base_rest, unused = timed(baseline_restore)
        for target in restored:
            engine.remove_volume(target)
        restore = {}
        for compression, check in (("gzip", "yes"), ("zstd", "yes"), ("zstd", "no")):
            for name in names:  # into new volumes, like the baseline
                engine.remove_volume(name)
            quiet()
            restore[compression, check] = run_child("--child", "restore", "--volumes", ",".join(names), "--dest",
                                                    os.path.join(work, compression), "--src", "latest", "--check-restored", check)

        engine.api.create_volume("%s-floor" % tag)  # same place as a restore: extracting into /var/tmp was 2.5x faster here
        floor_dir = engine.volume("%s-floor" % tag)["Mountpoint"]
        zst = [os.path.join(work, "zstd", n) for n in os.listdir(os.path.join(work, "zstd")) if n.endswith(".tar.zst")][0]
        floor, unused = timed(lambda: host_floor(zst, floor_dir))
        rows = [
            ("archive gzip", base_arch, ours["gzip"], 2.0),
            ("archive zstd", base_arch, ours["zstd"], 4.0),
            ("restore gzip archive", base_rest, restore["gzip", "yes"], 2.0),
            ("restore zstd archive", base_rest, restore["zstd", "yes"], 2.0),
            ("restore zstd, no check", base_rest, restore["zstd", "no"], 2.0),
        ]
        print("%-24s %10s %10s %8s %8s %10s %14s %12s" % (
            "operation", "helper s", "ours s", "ratio", "target", "py RSS MB", "child RSS MB", "CPU s py+ch"))
        for label, base, mine, target in rows:
            print("%-24s %10.1f %10.1f %7.1fx %7.1fx %10.0f %14.0f %5.1f+%5.1f" % (
                label, base, mine["seconds"], base / mine["seconds"], target, mine["rss_mb"], mine["child_rss_mb"],
                mine["cpu_python"], mine["cpu_children"]))
        for label, base, mine, target in rows:
            print("  %s phases (s): %s" % (label, ", ".join("%s %.1f" % item for item in sorted(mine["phases"].items()))))
        print("archive sizes: helper gzip %d MB, ours gzip %d MB, ours zstd %d MB" % (
            sum(os.path.getsize(os.path.join(work, n + ".tar.gz")) for n in names) // 2 ** 20,
            ours["gzip"]["size"] // 2 ** 20, ours["zstd"]["size"] // 2 ** 20))
        print("floor: zstd -dc | tar -x into a volume on the host, unchecked: %.1f s; helper restore / floor %.1fx; ours (zstd, checked) / floor %.1fx" % (
            floor, base_rest / floor, restore["zstd", "yes"]["seconds"] / floor))
    finally:
        for name in names + ["%s-r" % n for n in names] + ["%s-floor" % tag]:
            engine.remove_volume(name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
