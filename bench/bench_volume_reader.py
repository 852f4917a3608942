"""The archive path of docker_volume_archive without Ansible or the Engine, against ``tar | compressor``, in one run.

    .venv/bin/python bench/bench_volume_reader.py [--size-mb 512] [--rounds 7] [--compression zstd] [--compare DIR]

What a volume archive costs beyond GNU tar and the compressor is the module's
reader: ``read_host`` parses and digests GNU tar's stream while the kernel
copies it into the compressor, and ``CompressedSink`` sizes, hashes and writes
the compressor's output.  This bench runs exactly that, in a child process
(``--compare DIR``: also the same code from another checkout, e.g. the one
before a change), interleaved with the baseline, the module's own GNU tar
command piped into the same compressor.  The tree (``fill`` of
bench_docker_volume_archive.py) and every output are on tmpfs, so disk flushes
do not decide the rounds.  Printed: medians of wall and CPU seconds (our
side split into the reader's Python and its children, without the child's
start-up), the ratios, and the CPU bound: our CPU spread over every core,
over the baseline's wall time, the least ratio this machine allows.
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
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, ".collections")]

from ansible_collections.minimarket.backup.plugins.module_utils._volume_archive import host_create_command  # noqa: E402
from bench.bench_docker_volume_archive import fill  # noqa: E402

TMPFS = "/dev/shm"
COMPRESSORS = {"zstd": ["zstd", "-q", "-T0", "-3"], "gzip": ["igzip", "-3"]}
CHILD = r"""
import json, resource, sys, time
sys.path[:0] = [sys.argv[1] + "/.collections"]
from ansible_collections.minimarket.backup.plugins.module_utils import _volume_archive as va
from ansible_collections.minimarket.backup.plugins.module_utils._pipeline import CompressedSink
def cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
startup = cpu(resource.RUSAGE_SELF)
started = time.monotonic()
with open(sys.argv[4], "wb") as target:
    sink = CompressedSink(target, sys.argv[5])
    va.read_host(va.host_create_command([(sys.argv[2], sys.argv[3])], transform=False), sink, [sys.argv[3]])
    sink.close()
print(json.dumps({"seconds": time.monotonic() - started, "python": cpu(resource.RUSAGE_SELF) - startup,
                  "children": cpu(resource.RUSAGE_CHILDREN), "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
"""


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def baseline(root, volume, compression, target):
    """The module's own GNU tar command into the compressor, nothing read by Python."""
    before = _children_cpu()
    started = time.monotonic()
    with open(target, "wb") as out:
        producer = subprocess.Popen(host_create_command([(root, volume)], transform=False), stdout=subprocess.PIPE)
        consumer = subprocess.run(COMPRESSORS[compression], stdin=producer.stdout, stdout=out, check=False)
        producer.stdout.close()
        if producer.wait() != 0 or consumer.returncode != 0:
            raise RuntimeError("the baseline failed")
    return {"seconds": time.monotonic() - started, "cpu": _children_cpu() - before}


def ours(checkout, root, volume, compression, target):
    out = subprocess.run([sys.executable, "-c", CHILD, checkout, root, volume, target, compression],
                         stdout=subprocess.PIPE, check=True).stdout
    found = json.loads(out.decode().strip().splitlines()[-1])
    found["cpu"] = found["python"] + found["children"]
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compression", choices=sorted(COMPRESSORS), default="zstd")
    parser.add_argument("--compare", help="another checkout whose reader runs in the same rounds")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="mm-bench-reader-", dir=TMPFS)
    try:
        fill(os.path.join(work, "vol"), args.size_mb * 1024 * 1024, 1)
        steps = [("baseline", None), ("this", REPO)] + ([("compare", os.path.abspath(args.compare))] if args.compare else [])
        results = dict((name, []) for name, unused in steps)
        target = os.path.join(work, "out")
        for unused_round in range(args.rounds):
            for name, checkout in steps:
                if checkout is None:
                    results[name].append(baseline(work, "vol", args.compression, target))
                else:
                    results[name].append(ours(checkout, work, "vol", args.compression, target))
                os.unlink(target)
        base = statistics.median(run["seconds"] for run in results["baseline"])
        cores = os.cpu_count()
        print("%s, %d MB, %d rounds, %d cores" % (args.compression, args.size_mb, args.rounds, cores))
        for name, runs in results.items():
            seconds = statistics.median(run["seconds"] for run in runs)
            cpu = statistics.median(run["cpu"] for run in runs)
            line = "%-8s %.2f s (%s)  %.2fx  cpu %.2f s" % (name, seconds, " ".join("%.2f" % run["seconds"] for run in runs), seconds / base, cpu)
            if name != "baseline":
                line += " (python %.2f + children %.2f), bound %.2fx, rss %.0f MB" % (
                    statistics.median(run["python"] for run in runs), statistics.median(run["children"] for run in runs),
                    cpu / cores / base, max(run["rss_mb"] for run in runs))
            print(line)
        os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
        with open(os.path.join(REPO, "bench", "results", "volume_reader-%s.json" % time.strftime("%Y%m%dT%H%M%S")), "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
