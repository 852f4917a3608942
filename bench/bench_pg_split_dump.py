"""Benchmark pg_split_dump against the documented procedure and raw pg_dump, in one run.

Run manually (``make bench`` or)::

    .venv/bin/python bench/bench_pg_split_dump.py --rows 1800000   # ~1 GB seed database
    .venv/bin/python bench/bench_pg_split_dump.py --rows 200000    # quick, ~120 MB

Prints every figure (the median of ``--repeat`` interleaved rounds) as a ratio to a
baseline measured in the same run (no absolute thresholds), plus the module process's
peak RSS and the peak bytes in the backup directory during the dump (the metadata
file aside), and writes the figures to ``bench/results/``.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, ".collections")]

from testenv.pgserver import PgServer  # noqa: E402
from testenv.seed.minimarket_seed import seed  # noqa: E402

MODULE = os.path.join(REPO, "plugins", "modules", "pg_split_dump.py")
DB = "minimarket"


def timed_s(func):
    start = time.monotonic()
    func()
    return time.monotonic() - start


def shell(command, env, cwd=None):
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, env=env, cwd=cwd)


def dir_bytes(path):
    total = 0
    for name in os.listdir(path):
        if name.endswith("_metadata.json"):
            continue
        try:
            total += os.stat(os.path.join(path, name)).st_size
        except OSError:
            pass
    return total


def run_module(args):
    """The real module entry point; samples its own VmHWM and the destination's size while it runs."""
    handle, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(handle, "w") as out:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, out)
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, ".collections"))
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, MODULE, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak = {"rss_kb": 0, "dest_bytes": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                with open("/proc/%d/status" % proc.pid) as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peak["rss_kb"] = max(peak["rss_kb"], int(line.split()[1]))
            except OSError:
                pass
            if args.get("dest"):
                peak["dest_bytes"] = max(peak["dest_bytes"], dir_bytes(args["dest"]))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate()
    elapsed = time.monotonic() - start
    done.set()
    sampler.join()
    os.unlink(path)
    result = json.loads(out.decode().strip().splitlines()[-1])
    if proc.returncode != 0:
        raise SystemExit("module failed: %s %s" % (result.get("msg"), err.decode()))
    return elapsed, result, peak


def machine():
    cpu = ""
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        mem = int(info.readline().split()[1]) // 1024
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mb": mem, "kernel": platform.release(),
            "python": platform.python_version()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1800000, help="seed scale (1800000 is about 1 GB)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the median")
    parser.add_argument("--workdir", default=None, help="where archives go (default: a temp dir)")
    opts = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-pgsd-", dir=opts.workdir)
    figures = {"rows": opts.rows, "jobs": opts.jobs, "machine": machine()}
    try:
        with PgServer() as server:
            server.create_database(DB)
            with server.connect(DB) as conn:
                seed_s = timed_s(lambda: seed(conn, rows=opts.rows))
            figures["db_bytes"] = server.execute("SELECT pg_database_size(%s)", params=(DB,))[0][0]
            figures["seed_s"] = round(seed_s, 1)
            env = dict(os.environ, PGPASSWORD=server.password, PGHOST=server.host, PGPORT=str(server.port), PGUSER=server.user)
            bindir = server.bindir
            dump = os.path.join(bindir, "pg_dump")
            psql = os.path.join(bindir, "psql")
            doc_dir = os.path.join(work, "documented")
            os.mkdir(doc_dir)
            samples = {}

            def record(key, seconds):
                samples.setdefault(key, []).append(seconds)

            conn_args = dict(login_host=server.host, login_port=server.port, login_user=server.user,
                             login_password=server.password, bin_dir=bindir, db=DB, jobs=opts.jobs)

            def documented_restore():
                server.drop_database("replay")
                server.create_database("replay")
                shell("tar xzf documented.tar.gz && %s -X -q -o /dev/null -v ON_ERROR_STOP=1 -d replay -f schema.sql && "
                      "%s -X -q -o /dev/null -v ON_ERROR_STOP=1 -d replay -f data.sql" % (psql, psql), env, doc_dir)

            # Rounds interleave every variant so that load from other work on the machine hits them alike.
            for _round in range(opts.repeat):
                record("documented_dump", timed_s(lambda: shell(
                    "rm -f documented.tar.gz && %s --schema-only -d %s > schema.sql && %s --data-only -d %s > data.sql && "
                    "tar czf documented.tar.gz schema.sql data.sql && rm -f schema.sql data.sql" % (dump, DB, dump, DB), env, doc_dir)))
                figures["documented_archive_bytes"] = os.path.getsize(os.path.join(doc_dir, "documented.tar.gz"))
                record("pg_dump_Fc_devnull", timed_s(lambda: shell("%s -Fc -d %s > /dev/null" % (dump, DB), env)))
                record("pg_dump_Fc_Z0_devnull", timed_s(lambda: shell("%s -Fc -Z0 -d %s > /dev/null" % (dump, DB), env)))
                for compression, level in (("gzip", None), ("zstd", None), ("gzip", 6)):
                    key = compression + ("%d" % level if level else "")
                    dest = os.path.join(work, key)
                    shutil.rmtree(dest, ignore_errors=True)
                    os.mkdir(dest)
                    elapsed, result, peak = run_module(dict(conn_args, state="dump", dest=dest, environment="bench",
                                                            compression=compression, compression_level=level))
                    record("module_dump_" + key, elapsed)
                    figures["module_%s_archive_bytes" % key] = result["size"]
                    figures["module_%s_peak_rss_mb" % key] = max(
                        figures.get("module_%s_peak_rss_mb" % key, 0), round(peak["rss_kb"] / 1024.0, 1))
                    figures["module_%s_peak_dest_bytes" % key] = max(
                        figures.get("module_%s_peak_dest_bytes" % key, 0), peak["dest_bytes"])
                    figures["module_%s_archive" % key] = result["archive"]
                record("documented_restore", timed_s(documented_restore))
                elapsed, result, peak = run_module(dict(conn_args, state="restore", db="restored", src=figures["module_zstd_archive"],
                                                        environment="bench", keep_previous=False))
                record("module_restore_zstd", elapsed)
                restore_rss = round(peak["rss_kb"] / 1024.0, 1)
                figures["module_restore_peak_rss_mb"] = max(figures.get("module_restore_peak_rss_mb", 0), restore_rss)
            t = dict((key, statistics.median(values)) for key, values in samples.items())
            figures["samples"] = dict((key, [round(v, 2) for v in values]) for key, values in samples.items())
            figures["seconds"] = dict((k, round(v, 2)) for k, v in t.items())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    s = figures["seconds"]
    ratios = {
        "dump gzip speed-up vs documented (target >= 2)": s["documented_dump"] / s["module_dump_gzip"],
        "dump zstd speed-up vs documented (target >= 3)": s["documented_dump"] / s["module_dump_zstd"],
        "dump gzip compression_level=6 (pigz) speed-up vs documented": s["documented_dump"] / s["module_dump_gzip6"],
        "archive size, default gzip / documented": figures["module_gzip_archive_bytes"] / float(figures["documented_archive_bytes"]),
        "archive size, gzip level 6 / documented": figures["module_gzip6_archive_bytes"] / float(figures["documented_archive_bytes"]),
        "dump zstd time / pg_dump -Fc to /dev/null (target <= 1.3)": s["module_dump_zstd"] / s["pg_dump_Fc_devnull"],
        "dump zstd time / pg_dump -Fc -Z0 to /dev/null": s["module_dump_zstd"] / s["pg_dump_Fc_Z0_devnull"],
        "restore speed-up vs psql replay (target >= 2)": s["documented_restore"] / s["module_restore_zstd"],
        "peak dest bytes / final archive, zstd (target <= 1)":
            figures["module_zstd_peak_dest_bytes"] / float(figures["module_zstd_archive_bytes"]),
    }
    figures["ratios"] = dict((k, round(v, 2)) for k, v in ratios.items())
    os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
    out = os.path.join(REPO, "bench", "results", "pg_split_dump-%s.json" % time.strftime("%Y%m%d_%H%M%S", time.gmtime()))
    with open(out, "w") as handle:
        json.dump(figures, handle, indent=2)
    for key, value in sorted(s.items()):
        sys.stdout.write("%-28s %8.2f s\n" % (key, value))
    for key, value in figures["ratios"].items():
        sys.stdout.write("%-60s %6.2f\n" % (key, value))
    sys.stdout.write("peak RSS of the module process: dump gzip %s MB, dump zstd %s MB, restore %s MB (target < 200)\n"
                     % (figures["module_gzip_peak_rss_mb"], figures["module_zstd_peak_rss_mb"], figures["module_restore_peak_rss_mb"]))
    sys.stdout.write("database %d MB at rows=%d; figures in %s\n" % (figures["db_bytes"] // 2 ** 20, opts.rows, out))


if __name__ == "__main__":
    main()
