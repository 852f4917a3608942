"""Benchmark pg_split_dump against the standard tools, in one run, with CPU accounting.

Run manually (``make bench`` or)::

    .venv/bin/python bench/bench_pg_split_dump.py --rows 1800000   # ~900 MB seed database
    .venv/bin/python bench/bench_pg_split_dump.py --rows 200000    # quick, ~120 MB

Each round runs, interleaved so that load from other work hits them alike:

* baselines (issue 16): raw ``pg_dump > /dev/null``, ``pg_dump -Fp | zstd -T0 -3 > file``, and
  ``pg_restore -j 2`` (database created first) of a ``pg_dump -Fd -j 2`` dump of the same database;
* the module (real entry point): dump with the default gzip and with zstd, and a verified restore
  (``strategy: swap`` into a new database: ANALYZE and the per-table row-count check included) of
  the zstd archive; and the module's fixed start-up (Python, imports, argument parsing, stopped by
  ``jobs: 0``), which the ratios "start-up subtracted" take off, as issue 16 measured;
* with ``--compare DIR``: the same module steps from another checkout (e.g. the main branch), so
  that before and after are measured in the same minutes;
* with ``--documented``: the documented procedure (2 x ``pg_dump`` + ``tar czf``) and its psql replay;
* with ``--container``: the server in a throwaway ``minimarket/postgres:15`` container and every client
  tool run through ``docker exec`` (the module's ``container`` option), as in the shop's compose setup.

Every figure is the median of ``--repeat`` rounds, printed as a ratio to a baseline of the same run
(no absolute thresholds), with CPU seconds: client = user+sys of the step's process tree (the module
and its pg_dump/psql/compressor children, or the shell pipeline), server = the backends the
postmaster reaped during the step (autovacuum is off in this throwaway cluster so that it does not
land in another step's figure). In container mode client also counts the container's cgroup CPU less
the postgres processes' (the tools ``docker exec`` ran), and ``daemons_cpu`` is what dockerd, containerd and
the container's shim spent. Also the load average at each step, the module's peak RSS (its own
process and its largest child), the peak bytes in the backup directory during a dump over the final
archive, and the figures as JSON in ``bench/results/``.
"""
import argparse
import json
import os
import platform
import resource
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
from tests.pg_fixtures import PgContainer  # noqa: E402

DB = "minimarket"
TICK = os.sysconf("SC_CLK_TCK")


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


def descendants(pid):
    """Every live process under ``pid`` (from /proc/*/task/*/children)."""
    found = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir("/proc/%d/task" % parent)
        except OSError:
            continue
        for task in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (parent, task)) as handle:
                    children = [int(child) for child in handle.read().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def stat_fields(pid):
    """/proc/<pid>/stat after the command name (which may hold spaces): the state is [0], the parent [1]."""
    with open("/proc/%d/stat" % pid) as handle:
        return handle.read().rsplit(")", 1)[1].split()


def stat_cpu(pid, reaped=False):
    """CPU seconds of ``pid``: utime + stime, or with ``reaped`` its reaped children's cutime + cstime."""
    fields = stat_fields(pid)
    first = 13 if reaped else 11
    return (int(fields[first]) + int(fields[first + 1])) / float(TICK)


def live_cpu(pids):
    """utime + stime summed over ``pids``; one that has exited since it was listed counts 0."""
    total = 0.0
    for pid in pids:
        try:
            total += stat_cpu(pid)
        except OSError:
            pass
    return total


def vm_hwm_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server(object):
    """CPU seconds of the backends the postmaster has reaped (its cutime + cstime)."""

    def __init__(self, server, pid):
        self.pid = pid
        self.idle = len(descendants(pid))
        self.server = server

    def checkpoint(self):
        """Every step starts with no WAL or dirty buffers of the step before: a restore that follows another must not pay its checkpoint."""
        self.server.execute("CHECKPOINT")

    def reaped_cpu(self):
        return stat_cpu(self.pid, reaped=True)

    def tree_cpu(self):
        """Every postgres process's CPU: the postmaster, its background processes and its backends, live or reaped."""
        return stat_cpu(self.pid) + self.reaped_cpu() + live_cpu(descendants(self.pid))

    def settle(self):
        """Wait until the step's backends have exited and been reaped (their CPU lands in the postmaster's then)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(descendants(self.pid)) > self.idle:
            time.sleep(0.05)
        time.sleep(0.1)


def host_counters(server):
    """Cumulative CPU seconds: client = this process's reaped children, server = the reaped backends."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"client_cpu": children.ru_utime + children.ru_stime, "server_cpu": server.reaped_cpu()}


class Native(object):
    """The server (testenv PgServer) and the client tools on this host."""

    name = "native"

    def __init__(self, pg, work):
        with open(os.path.join(pg.datadir, "postmaster.pid")) as handle:
            self.server = Server(pg, int(handle.readline()))
        self.bindir = pg.bindir
        self.env = dict(os.environ, PGPASSWORD=pg.password, PGHOST=pg.host, PGPORT=str(pg.port), PGUSER=pg.user)
        self.conn_args = dict(login_host=pg.host, login_port=pg.port, login_user=pg.user, login_password=pg.password,
                              bin_dir=pg.bindir)
        self.fd_dir = os.path.join(work, "fd")

    def tool(self, name):
        return os.path.join(self.bindir, name)

    def clear_fd(self):
        shutil.rmtree(self.fd_dir, ignore_errors=True)

    def counters(self):
        return host_counters(self.server)


class Container(object):
    """The server in a container (tests' PgContainer); every client tool runs in it through ``docker exec``.

    The tools' CPU is not this process's children's: it is in the container's cgroup, beside the
    server's. Each ``docker exec`` also costs the daemons CPU, which neither side shows.
    """

    name = "container"

    def __init__(self, pg, _work):
        self.pg = pg
        pid, cid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}} {{.Id}}", pg.name], check=True,
                                  capture_output=True, text=True).stdout.split()
        self.server = Server(pg, int(pid))
        # PGPASSWORD by name only: docker copies it from our environment, it never shows in argv.
        self.env = dict(os.environ, PGPASSWORD=pg.password)
        self.prefix = "docker exec -i -e PGPASSWORD -e PGHOST=127.0.0.1 -e PGUSER=%s %s " % (pg.user, pg.name)
        self.conn_args = dict(container=pg.name, login_host="127.0.0.1", login_password=pg.password)
        self.fd_dir = "/tmp/fd"
        self.cgroup = self.find_cgroup(cid)
        self.daemons = self.find_daemons(self.server.pid)

    @staticmethod
    def find_cgroup(cid):
        for path in ("/sys/fs/cgroup/cpuacct/docker/%s/cpuacct.usage" % cid,
                     "/sys/fs/cgroup/system.slice/docker-%s.scope/cpu.stat" % cid,
                     "/sys/fs/cgroup/docker/%s/cpu.stat" % cid):
            if os.path.exists(path):
                return path
        raise SystemExit("no CPU accounting found for container %s (cgroup v1 cpuacct or v2 cpu.stat)" % cid)

    @staticmethod
    def find_daemons(postmaster):
        """dockerd, containerd and this container's shim (the postmaster's parent): not the shims of other people's containers."""
        daemons = [int(stat_fields(postmaster)[1])]
        for entry in os.listdir("/proc"):
            try:
                with open("/proc/%s/comm" % entry) as handle:
                    if handle.read().strip() in ("dockerd", "containerd"):
                        daemons.append(int(entry))
            except (OSError, ValueError):
                continue
        if len(daemons) < 3:
            raise SystemExit("dockerd or containerd is not visible in /proc here: daemons_cpu cannot be measured")
        return daemons

    def cgroup_cpu(self):
        with open(self.cgroup) as handle:
            text = handle.read()
        if self.cgroup.endswith("cpuacct.usage"):
            return int(text) / 1e9
        return int(dict(line.split() for line in text.splitlines())["usage_usec"]) / 1e6

    def tool(self, name):
        return self.prefix + name

    def clear_fd(self):
        subprocess.run(["docker", "exec", self.pg.name, "rm", "-rf", self.fd_dir], check=True)

    def counters(self):
        """client adds the container's CPU less every postgres process's: the tools ``docker exec`` ran there."""
        counts = host_counters(self.server)
        counts["client_cpu"] += self.cgroup_cpu() - self.server.tree_cpu()
        counts["daemons_cpu"] = live_cpu(self.daemons)
        return counts


def measure(mode, func):
    """(wall s, the mode's CPU counters over the step, load average) of one step."""
    server = mode.server
    server.checkpoint()
    server.settle()
    load = os.getloadavg()[0]
    before = mode.counters()
    start = time.monotonic()
    extra = func()
    wall = time.monotonic() - start
    server.settle()
    after = mode.counters()
    cpu = dict((key, round(after[key] - before[key], 6)) for key in after)
    return dict(wall=wall, load=load, **cpu, **(extra or {}))


def shell(command, env, cwd=None):
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, env=env, cwd=cwd, stdin=subprocess.DEVNULL)


def run_module(repo, args):
    """The real module entry point of checkout ``repo``; samples peak RSS (its own and its largest child's) and dest's size."""
    handle, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(handle, "w") as out:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, out)
    env = dict(os.environ, PYTHONPATH=os.path.join(repo, ".collections"))
    proc = subprocess.Popen([sys.executable, os.path.join(repo, "plugins", "modules", "pg_split_dump.py"), path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak = {"rss_kb": 0, "child_rss_kb": 0, "dest_bytes": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["rss_kb"] = max(peak["rss_kb"], vm_hwm_kb(proc.pid))
            for child in descendants(proc.pid):
                peak["child_rss_kb"] = max(peak["child_rss_kb"], vm_hwm_kb(child))
            if args.get("dest"):
                peak["dest_bytes"] = max(peak["dest_bytes"], dir_bytes(args["dest"]))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    os.unlink(path)
    result = json.loads(out.decode().strip().splitlines()[-1])
    if proc.returncode != 0:
        raise SystemExit("module failed: %s %s" % (result.get("msg"), err.decode()))
    return result, peak


def module_startup(repo):
    """The module's fixed cost: start Python, import it and its module_utils, parse the arguments (refused: ``jobs: 0``)."""
    handle, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(handle, "w") as out:
        json.dump({"ANSIBLE_MODULE_ARGS": {"state": "dump", "jobs": 0, "db": DB}}, out)
    env = dict(os.environ, PYTHONPATH=os.path.join(repo, ".collections"))
    proc = subprocess.run([sys.executable, os.path.join(repo, "plugins", "modules", "pg_split_dump.py"), path],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, check=False)
    os.unlink(path)
    if "set jobs to 1 or more" not in proc.stdout.decode():
        raise SystemExit("the start-up step did not stop where expected: %s" % proc.stdout.decode())


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
    parser.add_argument("--rows", type=int, default=1800000, help="seed scale (1800000 is about 900 MB)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the median")
    parser.add_argument("--workdir", default=None, help="where archives go (default: a temp dir)")
    parser.add_argument("--compare", default=None, help="another checkout whose module is measured too (before/after)")
    parser.add_argument("--documented", action="store_true", help="also the documented pg_dump + tar czf and its psql replay")
    parser.add_argument("--container", action="store_true",
                        help="the server in a throwaway container, every client tool through docker exec")
    opts = parser.parse_args()
    if opts.container and opts.documented:
        parser.error("--documented replays files of this host with host tools: it cannot run with --container")
    mode_class = Container if opts.container else Native
    work = tempfile.mkdtemp(prefix="bench-pgsd-", dir=opts.workdir)
    figures = {"rows": opts.rows, "jobs": opts.jobs, "machine": machine(), "compare": opts.compare, "mode": mode_class.name}
    samples = {}
    try:
        with (PgContainer() if opts.container else PgServer()) as pg:
            pg.execute("ALTER SYSTEM SET autovacuum = off")
            pg.execute("SELECT pg_reload_conf()")
            pg.create_database(DB)
            with pg.connect(DB) as conn:
                start = time.monotonic()
                seed(conn, rows=opts.rows)
                figures["seed_s"] = round(time.monotonic() - start, 1)
            pg.execute("VACUUM ANALYZE", DB)
            figures["db_bytes"] = pg.execute("SELECT pg_database_size(%s)", params=(DB,))[0][0]
            mode = mode_class(pg, work)
            env = mode.env
            dump = mode.tool("pg_dump")
            psql = mode.tool("psql")
            conn_args = dict(mode.conn_args, db=DB, jobs=opts.jobs)
            checkouts = [("module", REPO)] + ([("compare", os.path.abspath(opts.compare))] if opts.compare else [])

            def record(key, step):
                samples.setdefault(key, []).append(step)

            def module_dump(label, repo, compression):
                dest = os.path.join(work, "%s_%s" % (label, compression))
                shutil.rmtree(dest, ignore_errors=True)
                os.mkdir(dest)
                found = {}

                def step():
                    # dest, not backup_dir: the alias every version knows, so that --compare runs older checkouts too.
                    result, peak = run_module(repo, dict(conn_args, state="dump", dest=dest, environment="bench",
                                                         compression=compression))
                    found.update(result=result)
                    return dict(archive_bytes=result["size"], peak_rss_mb=round(peak["rss_kb"] / 1024.0, 1),
                                peak_child_rss_mb=round(peak["child_rss_kb"] / 1024.0, 1),
                                dest_over_archive=round(peak["dest_bytes"] / float(result["size"]), 3))
                record("%s_dump_%s" % (label, compression), measure(mode, step))
                return found["result"]

            def module_restore(label, repo, archive):
                pg.drop_database("restored")

                def step():
                    result, peak = run_module(repo, dict(conn_args, state="restore", db="restored", restore_as="restored",
                                                         src=archive, environment="bench"))
                    assert all(entry["ok"] for entry in result["tables"].values()), result["tables"]
                    return dict(peak_rss_mb=round(peak["rss_kb"] / 1024.0, 1),
                                peak_child_rss_mb=round(peak["child_rss_kb"] / 1024.0, 1))
                record("%s_restore_zstd" % label, measure(mode, step))

            def pg_restore_baseline():
                pg.drop_database("pgrestored")
                record("pg_restore_j2", measure(mode, lambda: shell(
                    "%s -X -q -d postgres -c 'CREATE DATABASE pgrestored' && %s -j 2 -d pgrestored %s"
                    % (psql, mode.tool("pg_restore"), mode.fd_dir), env)))

            for _round in range(opts.repeat):
                record("module_startup", measure(mode, lambda: module_startup(REPO)))
                record("pg_dump_devnull", measure(mode, lambda: shell("%s -d %s > /dev/null" % (dump, DB), env)))
                record("pg_dump_zstd", measure(mode, lambda: shell(
                    "%s -Fp -d %s | zstd -q -T0 -3 > %s/plain.sql.zst" % (dump, DB, work), env)))
                mode.clear_fd()
                record("pg_dump_Fd_j2", measure(mode, lambda: shell("%s -Fd -j 2 -d %s -f %s" % (dump, DB, mode.fd_dir), env)))
                archives = {}
                for label, repo in checkouts:
                    for compression in ("gzip", "zstd"):
                        result = module_dump(label, repo, compression)
                        archives[(label, compression)] = result["archive"]
                        figures["%s_tables" % label] = result["tables"]
                pg_restore_baseline()
                for label, repo in checkouts:
                    module_restore(label, repo, archives[(label, "zstd")])
                if opts.documented:
                    doc = os.path.join(work, "documented")
                    os.makedirs(doc, exist_ok=True)
                    record("documented_dump", measure(mode, lambda: shell(
                        "rm -f documented.tar.gz && %s --schema-only -d %s > schema.sql && %s --data-only -d %s > data.sql && "
                        "tar czf documented.tar.gz schema.sql data.sql && rm -f schema.sql data.sql" % (dump, DB, dump, DB), env, doc)))
                    pg.drop_database("replay")
                    pg.create_database("replay")
                    record("documented_restore", measure(mode, lambda: shell(
                        "tar xzf documented.tar.gz && %s -X -q -o /dev/null -v ON_ERROR_STOP=1 -d replay -f schema.sql && "
                        "%s -X -q -o /dev/null -v ON_ERROR_STOP=1 -d replay -f data.sql" % (psql, psql), env, doc)))
            figures["plain_zstd_bytes"] = os.path.getsize(os.path.join(work, "plain.sql.zst"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["samples"] = samples
    med = {}
    for key, steps in samples.items():
        med[key] = dict((field, statistics.median(step[field] for step in steps)) for field in steps[0])
    figures["medians"] = med

    def total(key):
        return med[key]["client_cpu"] + med[key]["server_cpu"]

    ratios = {}
    for label in [label for label in ("module", "compare") if "%s_dump_zstd" % label in med]:
        for compression in ("zstd", "gzip"):
            key = "%s_dump_%s" % (label, compression)
            ratios["%s dump %s / pg_dump | zstd (target <= 1.2)" % (label, compression)] = med[key]["wall"] / med["pg_dump_zstd"]["wall"]
            ratios["%s dump %s / raw pg_dump (target <= 1.5)" % (label, compression)] = med[key]["wall"] / med["pg_dump_devnull"]["wall"]
            ratios["%s dump %s CPU / pg_dump | zstd CPU" % (label, compression)] = total(key) / total("pg_dump_zstd")
            ratios["%s dump %s / pg_dump | zstd, start-up subtracted" % (label, compression)] = (
                (med[key]["wall"] - med["module_startup"]["wall"]) / med["pg_dump_zstd"]["wall"])
            ratios["%s dump %s / raw pg_dump, start-up subtracted" % (label, compression)] = (
                (med[key]["wall"] - med["module_startup"]["wall"]) / med["pg_dump_devnull"]["wall"])
        key = "%s_restore_zstd" % label
        ratios["%s restore (verified) / pg_restore -j 2 (target <= 1.2)" % label] = med[key]["wall"] / med["pg_restore_j2"]["wall"]
        ratios["%s restore / pg_restore -j 2, start-up subtracted" % label] = (
            (med[key]["wall"] - med["module_startup"]["wall"]) / med["pg_restore_j2"]["wall"])
        ratios["%s restore CPU / pg_restore -j 2 CPU" % label] = total(key) / total("pg_restore_j2")
    if opts.documented:
        ratios["documented dump / module dump gzip (speed-up)"] = med["documented_dump"]["wall"] / med["module_dump_gzip"]["wall"]
        ratios["documented restore / module restore (speed-up)"] = med["documented_restore"]["wall"] / med["module_restore_zstd"]["wall"]
    figures["ratios"] = dict((k, round(v, 2)) for k, v in ratios.items())
    os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
    out = os.path.join(REPO, "bench", "results", "pg_split_dump-%s%s.json" % (
        time.strftime("%Y%m%d_%H%M%S", time.gmtime()), "-container" if opts.container else ""))
    with open(out, "w") as handle:
        json.dump(figures, handle, indent=2)
    sys.stdout.write("%-22s %8s %22s %9s %9s %6s  %s\n" % ("step", "median s", "rounds s", "client s", "server s", "load", "other"))
    for key in sorted(med):
        m = med[key]
        rounds = " / ".join("%.2f" % step["wall"] for step in samples[key])
        other = ", ".join("%s %s" % (k, v) for k, v in sorted(m.items()) if k not in ("wall", "client_cpu", "server_cpu", "load"))
        sys.stdout.write("%-22s %8.2f %22s %9.2f %9.2f %6.1f  %s\n" % (key, m["wall"], rounds, m["client_cpu"], m["server_cpu"], m["load"], other))
    for key, value in figures["ratios"].items():
        sys.stdout.write("%-66s %6.2f\n" % (key, value))
    sys.stdout.write("database %d MB at rows=%d; figures in %s\n" % (figures["db_bytes"] // 2 ** 20, opts.rows, out))


if __name__ == "__main__":
    main()
