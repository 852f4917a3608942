"""Point-in-time recovery: RPO under load, and the RTO of a PITR against the dump restore, in one run.

Run manually (never in ``make test``)::

    .venv/bin/python bench/bench_pitr.py --rows 1800000   # ~1 GB seed database
    .venv/bin/python bench/bench_pitr.py --rows 200000    # quick

Brings up its own development stack (project ``mmtest-bench-<hex>``), seeds it, runs
``schedule.yml`` with PITR on (Barman streaming, first base backup), then:

* RPO: under ``pgbench`` load on the stack, commits a marker row every 0.2 s and times how long until
  the WAL bytes up to that commit are in Barman's streaming file on the backup host (read back from
  ``streaming/<segment>.partial``; ``pg_stat_replication.write_lsn`` is only reported every 10 s);
* RTO: ``backup_database.yml`` (the nightly dump), then ``recover_database.yml`` from that dump and
  ``recover_database.yml -e target_time=latest``, each timed end to end (services stopped and started,
  checks); the ratio is dump / PITR.

Writes the figures to ``bench/results/``.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, ".collections")]

import psycopg  # noqa: E402

from testenv.pgserver import free_port  # noqa: E402
from testenv.stack import ComposeStack  # noqa: E402


def play(stack, settings, playbook, *extra):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), MINIMARKET_PROJECT=stack.project,
               MINIMARKET_PG_PORT=str(stack.port), MINIMARKET_DB_PASSWORD=stack.password)
    started = time.monotonic()
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "inventories/development",
                           "playbooks/" + playbook, "-e", json.dumps(settings)] + list(extra),
                          cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit("%s failed:\n%s" % (playbook, (proc.stdout + proc.stderr)[-3000:]))
    return time.monotonic() - started, proc.stdout


def wal_on_disk(streaming, wals, name, offset):
    """Whether the WAL bytes just before ``offset`` of segment ``name`` are written on the backup host."""
    archived = os.path.join(wals, name[:16], name)
    if os.path.exists(archived):
        return True
    try:
        with open(os.path.join(streaming, name + ".partial"), "rb") as handle:
            handle.seek(max(0, offset - 16))
            return any(handle.read(min(16, offset)))
    except FileNotFoundError:
        return False


def rpo_samples(stack, home, seconds):
    """Seconds from each marker commit until its WAL bytes are in Barman's streaming file, under pgbench load."""
    env = dict(os.environ, PGPASSWORD=stack.password)
    pgbench = ["pgbench", "-h", stack.host, "-p", str(stack.port), "-U", stack.user]
    subprocess.run(pgbench + ["-i", "-q", "-s", "5", stack.dbname], env=env, check=True, capture_output=True)
    load = subprocess.Popen(pgbench + ["-c", "4", "-j", "2", "-T", str(seconds + 5), stack.dbname], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    streaming, wals = os.path.join(home, "streaming"), os.path.join(home, "wals")
    samples = []
    try:
        with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS bench_marks (at timestamptz DEFAULT clock_timestamp())")
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                conn.execute("INSERT INTO bench_marks DEFAULT VALUES")
                committed = time.monotonic()
                name, offset = conn.execute("SELECT file_name, file_offset FROM pg_walfile_name_offset(pg_current_wal_lsn())").fetchone()
                while not wal_on_disk(streaming, wals, name, offset):
                    time.sleep(0.002)
                samples.append(time.monotonic() - committed)
                time.sleep(0.2)
    finally:
        load.wait()
    return samples


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--load-seconds", type=int, default=30)
    args = parser.parse_args()
    stack = ComposeStack("mmtest-bench-%s" % uuid.uuid4().hex[:8], free_port(), "pw-" + uuid.uuid4().hex[:12], seed_rows=args.rows)
    base = tempfile.mkdtemp(prefix="bench-pitr-")
    cron_file = "mmtest_bench_pitr_%d" % os.getpid()
    settings = {
        "minimarket_pitr_enabled": True, "minimarket_compose_project": stack.project,
        "minimarket_pitr_db_port": stack.port,
        "minimarket_backup_root": os.path.join(base, "backups"), "pitr_config_dir": os.path.join(base, "etc"),
        "pitr_cron_file": cron_file, "pitr_log": os.path.join(base, "barman.log"), "pitr_install_packages": False,
        "backup_schedule_cron_file": cron_file + "_jobs", "backup_schedule_install_packages": False,
    }
    results = {"rows": args.rows}
    try:
        started = time.monotonic()
        stack.up()
        results["seed_s"] = round(time.monotonic() - started, 1)
        with psycopg.connect(stack.conninfo(), autocommit=True) as conn:
            results["database_mb"] = round(conn.execute("SELECT pg_database_size('minimarket')").fetchone()[0] / 1e6, 1)
        results["schedule_with_first_base_backup_s"] = round(play(stack, settings, "schedule.yml")[0], 1)
        home = os.path.join(settings["minimarket_backup_root"], "pitr", "minimarket-development")
        samples = sorted(rpo_samples(stack, home, args.load_seconds))
        results["rpo_s"] = {"samples": len(samples), "median": round(statistics.median(samples), 4),
                            "p95": round(samples[int(len(samples) * 0.95) - 1], 4), "max": round(samples[-1], 4)}
        play(stack, settings, "backup_database.yml")
        results["rto_dump_s"] = round(play(stack, settings, "recover_database.yml", "-e", "confirm=yes")[0], 1)
        elapsed, out = play(stack, settings, "recover_database.yml", "-e", "confirm=yes", "-e", "target_time=latest")
        results["rto_pitr_latest_s"] = round(elapsed, 1)
        # the module's own time: staged recovery, swap, promotion and checks (the new base backup comes after)
        results["pitr_module_s"] = float(re.search(r"from base backup \S+ in ([0-9.]+) s", out).group(1))
        results["rto_ratio_dump_over_pitr"] = round(results["rto_dump_s"] / results["rto_pitr_latest_s"], 2)
    finally:
        play(stack, dict(settings, minimarket_pitr_enabled=False), "schedule.yml")
        for name in (cron_file, cron_file + "_jobs"):
            if os.path.exists("/etc/cron.d/" + name):
                os.unlink("/etc/cron.d/" + name)
        stack.down()
        subprocess.run(["rm", "-rf", base], check=False)
    os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
    with open(os.path.join(REPO, "bench", "results", "pitr_%d.json" % time.time()), "w") as out:
        json.dump(results, out, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
