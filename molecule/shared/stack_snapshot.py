"""What a recovery must bring back, as JSON: every table's row count and content checksum and
every sequence's position in the live database, and every file of the volumes at rest.

Redis, Prometheus and Grafana's grafana.db keep changing while they run, so their state after the
recovery is the backup's, not the one seen here before the disaster: recover_full.yml proves them by
asking each service for what the archive's metadata recorded (canary key, series, dashboard count).

Used by the recovery scenarios and `make demo`: a snapshot taken before the disaster must equal
the one taken after the recovery.  Usage: stack_snapshot.py save FILE | compare FILE
"""
import functools
import hashlib
import json
import os
import stat
import subprocess
import sys

PROJECT = os.environ.get("MINIMARKET_PROJECT", "inventario-retail")
DATABASE = "minimarket"
# postgres-data is compared through SQL: a running server rewrites its files. Files that a running service
# keeps writing are left out (see above).
VOLUMES = ["grafana-data", "loki-data"]
BUSY = ("grafana.db", "grafana.db-wal", "grafana.db-shm")

TABLES_SQL = (
    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
)
SEQUENCES_SQL = "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences ORDER BY 1"


@functools.lru_cache(maxsize=None)
def container(service="postgres"):
    """Found by compose labels, so Compose v1 and v2 container names both work."""
    found = subprocess.run(
        ["docker", "ps", "--quiet", "--filter", "label=com.docker.compose.project=%s" % PROJECT,
         "--filter", "label=com.docker.compose.service=%s" % service], capture_output=True, text=True, check=False,
    ).stdout.split()
    if len(found) != 1:
        raise SystemExit("expected one running %s container in project %s, found %d" % (service, PROJECT, len(found)))
    return found[0]


def psql(sql):
    name = container()
    proc = subprocess.run(
        ["docker", "exec", "-i", name, "psql", "--username", "postgres", "--dbname", DATABASE, "--no-psqlrc",
         "--tuples-only", "--no-align", "--field-separator", "|", "--set", "ON_ERROR_STOP=1",
         "--command", "SET TimeZone = 'UTC'", "--command", sql],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit("psql failed on %s: %s" % (name, proc.stderr.strip()))
    return [line for line in proc.stdout.splitlines() if line and line != "SET"]


def database():
    tables = {}
    for table in psql(TABLES_SQL):
        row = psql("SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') FROM %s t" % table)
        count, digest = row[0].split("|")
        tables[table] = {"rows": int(count), "md5": digest}
    sequences = dict(line.split("|", 1) for line in psql(SEQUENCES_SQL))
    return {"tables": tables, "sequences": sequences}


def volume(name):
    mountpoint = json.loads(subprocess.run(
        ["docker", "volume", "inspect", "%s_%s" % (PROJECT, name)], capture_output=True, text=True, check=True,
    ).stdout)[0]["Mountpoint"]
    entries = {}
    for root, dirs, files in os.walk(mountpoint):
        for entry in dirs + files:
            path = os.path.join(root, entry)
            if os.path.relpath(path, mountpoint) in BUSY:
                continue
            info = os.lstat(path)
            record = [stat.filemode(info.st_mode), info.st_uid, info.st_gid]
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    record += [info.st_size, hashlib.sha256(handle.read()).hexdigest()]
            elif stat.S_ISLNK(info.st_mode):
                record.append(os.readlink(path))
            entries[os.path.relpath(path, mountpoint)] = record
    return entries


def snapshot():
    return {"database": database(), "volumes": {name: volume(name) for name in VOLUMES}}


def main(argv):
    if len(argv) != 3 or argv[1] not in ("save", "compare"):
        raise SystemExit("usage: stack_snapshot.py save FILE | compare FILE")
    now = snapshot()
    if argv[1] == "save":
        with open(argv[2], "w") as handle:
            json.dump(now, handle, indent=1, sort_keys=True)
        print("saved %d tables, %d volumes to %s" % (len(now["database"]["tables"]), len(now["volumes"]), argv[2]))
        return 0
    with open(argv[2]) as handle:
        before = json.load(handle)
    problems = []
    for table, expected in sorted(before["database"]["tables"].items()):
        actual = now["database"]["tables"].get(table)
        if actual != expected:
            problems.append("table %s: before %s, after %s" % (table, expected, actual))
    if before["database"]["sequences"] != now["database"]["sequences"]:
        problems.append("sequences differ: before %s, after %s" % (before["database"]["sequences"], now["database"]["sequences"]))
    for name, entries in sorted(before["volumes"].items()):
        after = now["volumes"].get(name, {})
        for path in sorted(set(entries) | set(after)):
            if entries.get(path) != after.get(path):
                problems.append("volume %s: %s before %s, after %s" % (name, path, entries.get(path), after.get(path)))
    for line in problems:
        print("DIFFERENT " + line)
    tables = before["database"]["tables"]
    print("compared %d tables (%d rows), %d sequences, %d volumes (%d entries): %s" % (
        len(tables), sum(t["rows"] for t in tables.values()), len(before["database"]["sequences"]), len(before["volumes"]),
        sum(len(v) for v in before["volumes"].values()), "IDENTICAL" if not problems else "%d DIFFERENCES" % len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
