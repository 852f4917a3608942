"""Benchmark docker_volume_archive against the bare tools, in one run (ratios, not thresholds).

    .venv/bin/python bench/bench_docker_volume_archive.py [--size-mb 2000] [--rounds 3] [--helper]

Five volumes share the size: each gets many small files (2-64 KiB) plus a few
large ones, half text-like (compressible), half random.  Each round measures,
on the same data (``sync`` before every step):

* archive: GNU tar with the module's own options piped into ``zstd -T0 -3``
  and into ``igzip -3`` (the baselines), then the module (host mode) with zstd
  and with gzip;
* restore: the unchecked ``zstd -dc | tar -x`` of the module's zstd archive
  into an empty volume (the floor), then the module's restore of the same
  archive into new volumes, every check on.

Our side runs in a child process so its peak RSS (Python + tar/compressor
children) and CPU seconds can be reported; the baselines' CPU seconds are
their children's rusage.  ``--helper`` adds the helper-container recipe
(``docker run ... busybox tar czf`` / ``tar xzf``).  Medians over the rounds
and their ratios are printed.  Everything is named mmtest-bench-* and removed
at the end.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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


def quiet(seconds):
    subprocess.run(["sync"], check=True)
    time.sleep(seconds)


def _cpu(usage):
    return usage.ru_utime + usage.ru_stime


def timed(func):
    """Wall seconds and the CPU seconds of the children it waited for; dirty pages are flushed first."""
    subprocess.run(["sync"], check=True)
    before = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN))
    started = time.monotonic()
    value = func()
    seconds = time.monotonic() - started
    return {"seconds": seconds, "cpu": _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - before, "value": value}


def _phase_timer(phases, module, name):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.monotonic() - started
    setattr(module, name, wrapper)


def _disk_sampler(directory, peak, stop):
    """Largest number of bytes in ``directory`` (metadata files aside) while the archive is written."""
    while not stop.wait(0.05):
        total = 0
        for name in os.listdir(directory):
            if "_metadata" not in name:
                try:
                    total += os.path.getsize(os.path.join(directory, name))
                except OSError:
                    pass
        peak[0] = max(peak[0], total)


def child(args):
    """Run one of our operations and report its duration, phases, peak RSS, CPU and disk as JSON."""
    phases = {}
    for name in ("scan_archive", "read_host", "_stage"):
        _phase_timer(phases, va, name)
    _phase_timer(phases, va.bs, "resolve_source")
    _phase_timer(phases, va.shutil, "rmtree")
    engine = Engine()
    names = args.volumes.split(",")
    extra = {}
    startup = _cpu(resource.getrusage(resource.RUSAGE_SELF))  # Python, the imports, the Engine: not the operation's
    if args.child == "archive":
        before = set(os.listdir(args.dest))
        peak, stop = [0], threading.Event()
        sampler = threading.Thread(target=_disk_sampler, args=(args.dest, peak, stop))
        sampler.start()
        try:
            run = timed(lambda: va.archive(engine, va.ArchiveOptions(names, args.dest, args.env, args.compression, mode="host")))
        finally:
            stop.set()
            sampler.join()
        old = sum(os.path.getsize(os.path.join(args.dest, n)) for n in before if "_metadata" not in n)
        extra = {"size": run["value"]["size"], "archive": run["value"]["archive"], "extra_disk": (peak[0] - old) / float(run["value"]["size"])}
    else:
        run = timed(lambda: va.restore(engine, va.RestoreOptions(args.src, args.dest, args.env, names, mode="host",
                                                                 check_restored=args.check_restored == "yes")))
    usage_self = resource.getrusage(resource.RUSAGE_SELF)
    usage_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps(dict(extra, seconds=run["seconds"], rss_mb=usage_self.ru_maxrss / 1024.0,
                          child_rss_mb=usage_children.ru_maxrss / 1024.0,
                          cpu_python=round(_cpu(usage_self) - startup, 2), cpu_startup=round(startup, 2),
                          cpu_children=round(_cpu(usage_children), 2),
                          phases=dict((k, round(v, 2)) for k, v in phases.items()))))


def run_child(*argv):
    out = subprocess.run([sys.executable, os.path.abspath(__file__)] + list(argv), check=True, stdout=subprocess.PIPE).stdout
    mine = json.loads(out.decode().strip().splitlines()[-1])
    mine["cpu"] = mine["cpu_python"] + mine["cpu_children"]
    return mine


def docker_tar(volume, backup_dir, command):
    subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", "%s:/data" % volume, "-v", "%s:/backup" % backup_dir,
                    IMAGE, "sh", "-c", command], check=True)


def pipeline(first, second, stdin=None, stdout=None):
    """``first | second``, both checked."""
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as source, \
            open(stdout, "wb") if stdout else open(os.devnull, "wb") as target:
        producer = subprocess.Popen(first, stdin=source, stdout=subprocess.PIPE)
        consumer = subprocess.run(second, stdin=producer.stdout, stdout=target, check=False)
        producer.stdout.close()
        if producer.wait() != 0 or consumer.returncode != 0:
            raise RuntimeError("%s | %s failed" % (first[0], second[0]))


def tar_baseline(mountpoints, compressor, target):
    """What the module's archive does with no checks: its own GNU tar command into the compressor."""
    command = va.host_create_command([(os.path.dirname(os.path.dirname(m)), os.path.basename(os.path.dirname(m)) + "/_data")
                                      for m in mountpoints])
    pipeline(command, compressor, stdout=target)


def host_floor(archive, target):
    """The bare work of a restore: ``zstd -dc | GNU tar -x`` on the host, no checks, no staging, no swap."""
    pipeline(["zstd", "-dc", archive], va.TAR_EXTRACT + ["-C", target])


def median(values):
    return statistics.median(values)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=int(os.environ.get("MM_BENCH_VOLUME_MB", "2000")))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quiet-s", type=int, default=QUIET_S)
    parser.add_argument("--helper", action="store_true", help="also time the helper-container recipe")
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
    floor_name = "%s-floor" % tag
    results = {}

    def record(key, value):
        results.setdefault(key, []).append(value)

    try:
        files = 0
        for number, name in enumerate(names):
            engine.api.create_volume(name)
            files += fill(engine.volume(name)["Mountpoint"], args.size_mb * 1024 * 1024 // len(names), number)
        subprocess.run(["sync"], check=True)
        print("data: %d MB in %d files over %d volumes; machine: %d cores, %s; load %.1f" % (
            args.size_mb, files, len(names), os.cpu_count(), os.uname().release, os.getloadavg()[0]), flush=True)
        for compression in ("gzip", "zstd"):
            os.mkdir(os.path.join(work, compression))
        for round_number in range(args.rounds):
            mountpoints = [engine.volume(name)["Mountpoint"] for name in names]
            for compression, compressor in (("zstd", ["zstd", "-q", "-T0", "-3", "-c"]), ("gzip", ["igzip", "-c", "-3"])):
                target = os.path.join(work, "baseline.tar")
                record("base archive " + compression, timed(lambda: tar_baseline(mountpoints, compressor, target)))
                os.unlink(target)
                record("ours archive " + compression, run_child(
                    "--child", "archive", "--volumes", ",".join(names), "--dest", os.path.join(work, compression),
                    "--compression", compression))
            zst = results["ours archive zstd"][-1]["archive"]
            engine.api.create_volume(floor_name)
            for name in names:  # ours restores into new volumes, the floor into an empty one
                engine.remove_volume(name)
            quiet(args.quiet_s)  # one quiet period after the deletions serves both (extracting deletes nothing)
            record("base restore zstd", timed(lambda: host_floor(zst, engine.volume(floor_name)["Mountpoint"])))
            record("ours restore zstd", run_child("--child", "restore", "--volumes", ",".join(names), "--dest",
                                                  os.path.join(work, "zstd"), "--src", zst))
            engine.remove_volume(floor_name)
            if args.helper:
                record("helper archive gzip", timed(lambda: [docker_tar(name, work, "tar czf /backup/%s.tar.gz -C /data ." % name)
                                                             for name in names]))
                restored = ["%s-r" % name for name in names]
                for target in restored:
                    engine.api.create_volume(target)
                quiet(args.quiet_s)
                record("helper restore gzip", timed(lambda: [docker_tar(target, work, "tar xzf /backup/%s.tar.gz -C /data" % name)
                                                             for name, target in zip(names, restored)]))
                for target in restored:
                    engine.remove_volume(target)
            print("round %d: %s" % (round_number + 1, ", ".join("%s %.2f s" % (key, values[-1]["seconds"])
                                                                for key, values in sorted(results.items()))), flush=True)
        print("%-22s %9s %9s %11s %9s %13s %10s %12s" % (
            "operation", "base s", "ours s", "ours/base", "target", "CPU s base", "CPU s ours", "py/child RSS"))
        for what, target in (("archive zstd", 1.3), ("archive gzip", 1.3), ("restore zstd", 1.6)):
            base, ours = results["base " + what], results["ours " + what]
            ratios = [o["seconds"] / b["seconds"] for b, o in zip(base, ours)]
            print("%-22s %9.2f %9.2f %10.2fx %8.1fx %13.2f %4.2f+%5.2f %5.0f/%4.0f MB   rounds: %s" % (
                what, median(b["seconds"] for b in base), median(o["seconds"] for o in ours),
                median(o["seconds"] for o in ours) / median(b["seconds"] for b in base), target,
                median(b["cpu"] for b in base), median(o["cpu_python"] for o in ours), median(o["cpu_children"] for o in ours),
                max(o["rss_mb"] for o in ours), max(o["child_rss_mb"] for o in ours), " / ".join("%.2fx" % r for r in ratios)))
        # The least ratio this many cores allow: our CPU spread evenly over every core, over the baseline's wall time.
        print("CPU bound on %d cores (ours/base at best): %s; Python start-up CPU (left out above): %.2f s" % (
            os.cpu_count(), ", ".join("%s %.2fx" % (what, median(o["cpu"] for o in results["ours " + what]) / os.cpu_count()
                                      / median(b["seconds"] for b in results["base " + what]))
                                      for what in ("archive zstd", "archive gzip", "restore zstd")),
            median(o["cpu_startup"] for key in ("ours archive zstd", "ours archive gzip", "ours restore zstd") for o in results[key])))
        for what in ("archive zstd", "archive gzip", "restore zstd"):
            print("  ours %s phases (s, median): %s" % (what, ", ".join(
                "%s %.2f" % (key, median(o["phases"].get(key, 0.0) for o in results["ours " + what]))
                for key in sorted(results["ours " + what][0]["phases"]))))
        print("extra disk during an archive / archive size: %s" % ", ".join(
            "%.2f" % o["extra_disk"] for key in ("ours archive zstd", "ours archive gzip") for o in results[key]))
        print("archive sizes: ours gzip %d MB, ours zstd %d MB" % (
            results["ours archive gzip"][-1]["size"] // 2 ** 20, results["ours archive zstd"][-1]["size"] // 2 ** 20))
        if args.helper:
            for what in ("archive gzip", "restore gzip"):
                print("helper %s: median %.2f s, CPU %.2f s (docker client only)" % (
                    what, median(h["seconds"] for h in results["helper " + what]), median(h["cpu"] for h in results["helper " + what])))
    finally:
        for name in names + ["%s-r" % n for n in names] + [floor_name]:
            engine.remove_volume(name)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
