"""Point-in-time recovery with Barman on a real stack (own compose project, module scope).

schedule.yml with PITR on sets up streaming and the first base backup; recover_database.yml with
target_time recovers under continuous writes to a moment; bad targets are refused before anything
stops; a recovery that fails its checks leaves the live database as it was; PITR off removes it all.
The stack names its containers the Compose v2 way and no container name is given: everything goes
through the compose labels (minimarket_compose_project, minimarket_db_service).
"""
import datetime
import json
import os
import random
import re
import subprocess
import threading
import time
import uuid

import psycopg
import pytest

from test_playbooks import ansible
from testenv.pgserver import free_port
from testenv.stack import ComposeStack

BRANCHES, TELLERS, ACCOUNTS = 2, 10, 1000


class Pitr(object):
    def __init__(self, stack, base):
        self.stack = stack
        self.base = base
        self.root = os.path.join(base, "backups")
        self.etc = os.path.join(base, "etc")
        self.cron_file = "mmtest_pitr_%s" % stack.project.split("-")[-1]
        self.settings = {
            "minimarket_pitr_enabled": True,
            "minimarket_compose_project": stack.project,
            "minimarket_pitr_db_port": stack.port,
            "minimarket_backup_root": self.root,
            "pitr_config_dir": self.etc,
            "pitr_cron_file": self.cron_file,
            "pitr_log": os.path.join(base, "barman.log"),
            "pitr_install_packages": False,
            "backup_schedule_cron_file": self.cron_file + "_jobs",
            "backup_schedule_install_packages": False,
        }
        self.env = {"MINIMARKET_PROJECT": stack.project, "MINIMARKET_PG_PORT": str(stack.port),
                    "MINIMARKET_DB_PASSWORD": stack.password, "MINIMARKET_NAME_SEPARATOR": stack.env["MINIMARKET_NAME_SEPARATOR"]}

    def play(self, playbook, *extra, **settings):
        values = dict(self.settings, **settings)
        proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/%s" % playbook,
                       "-e", json.dumps(values), *extra, env=self.env)
        return proc.returncode, proc.stdout + proc.stderr

    def connect(self, dbname="minimarket"):
        return psycopg.connect(self.stack.conninfo(dbname), autocommit=True)

    def sql(self, query, dbname="minimarket"):
        with self.connect(dbname) as conn:
            cursor = conn.execute(query)
            return cursor.fetchall() if cursor.description else None

    def started_at(self, service):
        return subprocess.run(["docker", "inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", self.stack.containers[service]],
                              capture_output=True, text=True, check=True).stdout.strip()

    def barman(self, *args):
        config = os.path.join(self.etc, "barman-development.conf")
        return subprocess.run(["barman", "-c", config] + list(args), capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def pitr(tmp_path_factory):
    stack = ComposeStack("mmtest-%s" % uuid.uuid4().hex[:8], free_port(), "pw-" + uuid.uuid4().hex[:12], seed_rows=300,
                         naming="v2")
    handle = Pitr(stack, str(tmp_path_factory.mktemp("pitr")))
    try:
        stack.up()
        with handle.connect() as conn:
            conn.execute("CREATE TABLE pgb_branches (bid int PRIMARY KEY, bbalance bigint NOT NULL DEFAULT 0);"
                         "CREATE TABLE pgb_tellers (tid int PRIMARY KEY, bid int NOT NULL, tbalance bigint NOT NULL DEFAULT 0);"
                         "CREATE TABLE pgb_accounts (aid int PRIMARY KEY, bid int NOT NULL, abalance bigint NOT NULL DEFAULT 0);"
                         "CREATE TABLE pgb_history (tid int, bid int, aid int, delta int, mtime timestamptz);"
                         "CREATE TABLE ticks (writer int, seq int, at timestamptz NOT NULL DEFAULT clock_timestamp(),"
                         " PRIMARY KEY (writer, seq));")
            conn.execute("INSERT INTO pgb_branches (bid) SELECT g FROM generate_series(1, %d) g" % BRANCHES)
            conn.execute("INSERT INTO pgb_tellers (tid, bid) SELECT g, 1 + g %% %d FROM generate_series(1, %d) g" % (BRANCHES, TELLERS))
            conn.execute("INSERT INTO pgb_accounts (aid, bid) SELECT g, 1 + g %% %d FROM generate_series(1, %d) g" % (BRANCHES, ACCOUNTS))
        rc, out = handle.play("schedule.yml")
        assert rc == 0, out
        yield handle
    finally:
        handle.play("schedule.yml", minimarket_pitr_enabled=False)
        for name in (handle.cron_file, handle.cron_file + "_jobs"):
            if os.path.exists("/etc/cron.d/" + name):
                os.unlink("/etc/cron.d/" + name)
        stack.down()


class Writers(object):
    """pgbench-style transfers, each with a ticks row, from two connections; client-side begin/commit times per row."""

    def __init__(self, pitr, count=2):
        self.pitr = pitr
        self.stop = threading.Event()
        self.done = []
        self.errors = []
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(count)]

    def run(self, writer):
        rng = random.Random(writer)
        try:
            with psycopg.connect(self.pitr.stack.conninfo()) as conn:
                seq = 0
                while not self.stop.is_set():
                    seq += 1
                    aid, tid = rng.randint(1, ACCOUNTS), rng.randint(1, TELLERS)
                    bid, delta = 1 + tid % BRANCHES, rng.randint(-5000, 5000)
                    with conn.cursor() as cur:
                        cur.execute("UPDATE pgb_accounts SET abalance = abalance + %s WHERE aid = %s", (delta, aid))
                        cur.execute("UPDATE pgb_tellers SET tbalance = tbalance + %s WHERE tid = %s", (delta, tid))
                        cur.execute("UPDATE pgb_branches SET bbalance = bbalance + %s WHERE bid = %s", (delta, bid))
                        cur.execute("INSERT INTO pgb_history VALUES (%s, %s, %s, %s, clock_timestamp())", (tid, bid, aid, delta))
                        cur.execute("INSERT INTO ticks (writer, seq) VALUES (%s, %s)", (writer, seq))
                    before = time.time()
                    conn.commit()
                    self.done.append((writer, seq, before, time.time()))
                    time.sleep(0.005)
        except Exception as exc:  # the assertion on self.errors reports it
            self.errors.append(repr(exc))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def utc_text(epoch):
    return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(epoch))


def invariants(pitr):
    return pitr.sql("SELECT (SELECT sum(abalance) FROM pgb_accounts), (SELECT sum(tbalance) FROM pgb_tellers),"
                    " (SELECT sum(bbalance) FROM pgb_branches), (SELECT coalesce(sum(delta), 0) FROM pgb_history)")[0]


def test_schedule_streams_wal_and_took_the_first_base_backup(pitr):
    backups = json.loads(pitr.barman("-f", "json", "list-backup", "minimarket-development").stdout)["minimarket-development"]
    assert [b["status"] for b in backups] == ["DONE"]
    check = pitr.barman("check", "minimarket-development").stdout
    assert "receive-wal running: OK" in check and "replication slot: OK" in check, check
    slot = pitr.sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'barman_minimarket'", "postgres")
    assert slot == [(True,)]
    config = os.path.join(pitr.etc, "barman-development.conf")
    assert oct(os.stat(config).st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.join(pitr.etc, "pitr-development.pgpass")).st_mode & 0o777) == "0o600"
    cron = open("/etc/cron.d/" + pitr.cron_file).read()
    assert "-q cron" in cron and "-q backup minimarket-development" in cron


def test_pitr_status_writes_the_health_for_prometheus(pitr, tmp_path):
    pitr.sql("INSERT INTO ticks (writer, seq) VALUES (98, 1)")
    rc, out = pitr.play("pitr_status.yml", minimarket_metrics_enabled=True, minimarket_metrics_textfile_dir=str(tmp_path))
    assert rc == 0, out
    path = tmp_path / "minimarket_backup_pitr_development.prom"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    text = path.read_text()
    values = dict(line.split("{", 1)[0:1] + [float(line.rsplit(" ", 1)[1])] for line in text.splitlines() if not line.startswith("#"))
    assert values["minimarket_backup_pitr_streaming_up"] == 1 and values["minimarket_backup_pitr_check_ok"] == 1, text
    assert values["minimarket_backup_pitr_last_base_backup_timestamp_seconds"] > time.time() - 3600, text
    rpo, received = values["minimarket_backup_pitr_rpo_seconds"], values["minimarket_backup_pitr_last_wal_received_timestamp_seconds"]
    lag = values["minimarket_backup_pitr_status_timestamp_seconds"] - received
    assert received > 0 and (rpo == 0 or abs(rpo - lag) < 0.002), text  # each value is rounded to the millisecond
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    rc, out = pitr.play("schedule.yml", minimarket_metrics_enabled=True, minimarket_metrics_textfile_dir=str(tmp_path))
    assert rc == 0, out
    jobs = [line for line in open("/etc/cron.d/" + pitr.cron_file).read().splitlines() if "pitr_status.yml" in line]
    assert len(jobs) == 1 and jobs[0].startswith("* * * * * root cd ") and "flock --nonblock" in jobs[0], jobs
    assert re.search(r"Take the first base backup at once\] \*+\nskipping", out), out  # idempotent: no second one


def newest_report(pitr):
    reports = os.path.join(pitr.root, "reports")
    with open(os.path.join(reports, sorted(os.listdir(reports))[-1])) as handle:
        return json.load(handle)


def drill_metrics(textfile_dir):
    path = os.path.join(textfile_dir, "minimarket_backup_development.prom")
    with open(path, "rb") as handle:
        proc = subprocess.run(["promtool", "check", "metrics"], stdin=handle, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stdout + proc.stderr, proc.stdout + proc.stderr
    samples = {}
    for line in open(path).read().splitlines():
        match = re.match(r'^minimarket_backup_(\w+)\{(?:kind="verify",)?environment="development"\} (\S+)$', line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def test_verify_backups_recovers_a_scratch_copy_and_leaves_the_live_cluster_alone(pitr, tmp_path):
    before = pitr.started_at("postgres")
    helpers = ["docker", "ps", "-aq", "--filter", "label=minimarket.backup.helper=1", "--filter", "ancestor=minimarket/postgres:15"]
    existing = subprocess.run(helpers, capture_output=True, text=True, check=True).stdout.split()
    skip_dumps = ["-e", "backup_verify_database=false", "-e", "backup_verify_volumes=false", "-e", "pitr_verify_minutes=0"]
    metrics = {"minimarket_metrics_enabled": True, "minimarket_metrics_textfile_dir": str(tmp_path)}
    started = time.time()
    rc, out = pitr.play("verify_backups.yml", *skip_dumps, **metrics)
    assert rc == 0, out
    assert "point-in-time recovery verified: " in out and "8 checks passed" in out, out
    report = newest_report(pitr)
    drill = report["pitr"]
    assert report["ok"] is True and drill["ok"] is True and report["services"] == {"skipped": True}, report
    assert started - 1 < datetime.datetime.fromisoformat(drill["target_time"]).timestamp() < time.time()
    assert [check["ok"] for check in drill["checks"]] == [True] * 8 and drill["backup_id"] and "msg" not in drill, drill
    samples = drill_metrics(str(tmp_path))
    assert samples["pitr_verification_ok"] == 1 and samples["last_verification_ok"] == 1, samples
    assert samples["pitr_verification_timestamp_seconds"] == samples["last_success_timestamp_seconds"] > started, samples

    rc, out = pitr.play("verify_backups.yml", *skip_dumps, minimarket_verify_queries=["SELECT count(*) < 0 FROM productos"], **metrics)
    assert rc == 2, out
    failure = [line for line in out.splitlines() if line.startswith("fatal:")][-1]
    drill = newest_report(pitr)["pitr"]
    assert ("point-in-time drill: point-in-time recovery to %s (base backup %s) failed verification: query "
            "'SELECT count(*) < 0 FROM productos' returned 'f', not true" % (drill["target_time"], drill["backup_id"])) in failure, out
    assert drill["ok"] is False and drill["failed"] is True and drill["msg"] in failure, drill
    assert [(check["check"], check["ok"]) for check in drill["checks"]][-1] == ("SELECT count(*) < 0 FROM productos", False)
    assert datetime.datetime.fromisoformat(drill["target_time"]).timestamp() > samples["pitr_verification_timestamp_seconds"]
    failed = drill_metrics(str(tmp_path))
    assert failed["pitr_verification_ok"] == 0 and failed["last_verification_ok"] == 0, failed
    assert failed["pitr_verification_timestamp_seconds"] == failed["last_failure_timestamp_seconds"] > samples["last_success_timestamp_seconds"]
    assert pitr.started_at("postgres") == before
    assert subprocess.run(helpers, capture_output=True, text=True, check=True).stdout.split() == existing
    assert sorted(n for n in os.listdir(os.path.join(pitr.root, "pitr")) if not n.startswith(".")) == ["minimarket-development"]


@pytest.mark.parametrize("target, message", [
    ("yesterday at five", "target_time 'yesterday at five' is not a time: write YYYY-MM-DD HH:MM:SS[+TZ]"),
    ("2999-01-01 00:00:00+00", "target_time 2999-01-01 00:00:00+00:00 is in the future"),
    ("2001-01-01 00:00:00+00", "target_time 2001-01-01 00:00:00+00:00 is before the oldest base backup, which finished at"),
])
def test_a_bad_target_is_refused_before_anything_stops(pitr, target, message):
    before = {service: pitr.started_at(service) for service in ("postgres", "dashboard")}
    rc, out = pitr.play("recover_database.yml", "-e", "confirm=yes", "-e", json.dumps({"target_time": target}))
    assert rc == 2, out
    failures = [line for line in out.splitlines() if line.startswith("fatal:")]
    assert len(failures) == 1 and message in failures[0], out
    assert "Stop services" not in out
    assert {service: pitr.started_at(service) for service in before} == before


def test_recover_to_a_moment_under_continuous_writes(pitr):
    ventas = pitr.sql("SELECT count(*) FROM ventas")[0][0]
    with Writers(pitr) as writers:
        time.sleep(2)
        target = float(int(time.time()) + 1)
        while time.time() < target + 2:
            time.sleep(0.1)
    assert not writers.errors, writers.errors
    pitr.sql("DROP TABLE ventas CASCADE")
    assert any(end < target for _w, _s, _b, end in writers.done) and any(begin > target for _w, _s, begin, _e in writers.done)

    rc, out = pitr.play("recover_database.yml", "-e", "confirm=yes", "-e", json.dumps({"target_time": utc_text(target)}))
    assert rc == 0, out
    assert "recovered to %s" % time.strftime("%Y-%m-%d %H:%M:%S+00:00", time.gmtime(target)) in out

    present = set(pitr.sql("SELECT writer, seq FROM ticks"))
    committed_before = {(w, s) for w, s, _b, end in writers.done if end < target}
    begun_after = {(w, s) for w, s, begin, _e in writers.done if begin > target}
    assert committed_before <= present, sorted(committed_before - present)[:5]
    assert not present & begun_after, sorted(present & begun_after)[:5]
    assert pitr.sql("SELECT count(*) FROM ticks WHERE at > to_timestamp(%d)" % target) == [(0,)]
    sums = invariants(pitr)
    assert len(set(sums)) == 1, sums
    assert pitr.sql("SELECT count(*) FROM ventas")[0][0] == ventas
    assert pitr.started_at("dashboard").startswith("true")
    backups = json.loads(pitr.barman("-f", "json", "list-backup", "minimarket-development").stdout)["minimarket-development"]
    assert len(backups) == 2, backups  # a base backup of the recovered cluster, so later moments can be reached
    check = pitr.barman("check", "minimarket-development").stdout
    assert "receive-wal running: OK" in check, check


def wal_on_disk(home, name, offset):
    """Whether the WAL bytes just before ``offset`` of segment ``name`` reached Barman (archived or streaming)."""
    if os.path.exists(os.path.join(home, "wals", name[:16], name)):
        return True
    try:
        with open(os.path.join(home, "streaming", name + ".partial"), "rb") as handle:
            handle.seek(max(0, offset - 16))
            return any(handle.read(min(16, offset)))
    except FileNotFoundError:
        return False


def test_latest_with_the_server_gone_keeps_what_streaming_received(pitr):
    pitr.sql("CREATE TABLE last_words AS SELECT 'sold at 17:59'::text AS what")
    name, offset = pitr.sql("SELECT file_name, file_offset FROM pg_walfile_name_offset(pg_current_wal_lsn())")[0]
    home = os.path.join(pitr.root, "pitr", "minimarket-development")
    for _attempt in range(600):
        if wal_on_disk(home, name, offset):
            break
        time.sleep(0.1)
    assert wal_on_disk(home, name, offset)
    subprocess.run(["docker", "stop", pitr.stack.containers["postgres"]], check=True, capture_output=True)

    rc, out = pitr.play("recover_database.yml", "-e", "confirm=yes", "-e", "target_time=latest")
    assert rc == 0, out
    assert "recovering with the WAL received so far (including the unfinished segment %s)" % name in out, out
    assert pitr.sql("SELECT what FROM last_words") == [("sold at 17:59",)]


class MinuteCron(object):
    """The production ``barman cron`` tick (this machine runs no cron daemon): receive-wal died with PostgreSQL.

    Once the repair is done (journal gone) and PostgreSQL is back, tick until receive-wal streams again, then
    stop, so no tick races the recovery's own streaming reset afterwards.
    """

    def __init__(self, pitr, journal):
        self.pitr = pitr
        self.journal = journal
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self):
        while not self.stop.wait(2):
            if os.path.exists(self.journal) or not self.pitr.started_at("postgres").startswith("true"):
                continue
            self.pitr.barman("-q", "cron")
            if "receive-wal running: OK" in self.pitr.barman("check", "minimarket-development").stdout:
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=60)


def test_a_recovery_killed_in_the_swap_is_repaired_by_the_next_run_which_finds_the_stopped_container(pitr):
    """What SIGKILL between the swap's two renames leaves: PostgreSQL stopped, _data moved aside, staging, the journal.

    The next run finds the stopped container by its Compose v2 labels, puts the data back, then recovers.
    """
    pitr.sql("CREATE TABLE before_the_kill AS SELECT 'kept'::text AS what")
    volume = pitr.stack.volumes["postgres-data"]
    data = subprocess.run(["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", volume],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = os.path.dirname(data)
    subprocess.run(["docker", "stop", pitr.stack.containers["postgres"]], check=True, capture_output=True)
    os.mkdir(os.path.join(parent, "_data.pitr-staging"))
    with open(os.path.join(parent, "pitr-swap.json"), "w") as handle:
        json.dump({"state": "swapping", "at": time.time()}, handle)
    os.rename(data, os.path.join(parent, "_data.pitr-previous"))

    with MinuteCron(pitr, os.path.join(parent, "pitr-swap.json")):
        rc, out = pitr.play("recover_database.yml", "-e", "confirm=yes", "-e", "target_time=latest")
    assert rc == 0, out
    assert pitr.stack.containers["postgres"] == pitr.stack.project + "-postgres-1"
    assert ("put the data from before an unfinished recovery back into place; removed a leftover staging directory "
            "(left by an interrupted run); database minimarket in container %s recovered to latest"
            % pitr.stack.containers["postgres"]) in out, out
    assert pitr.sql("SELECT what FROM before_the_kill") == [("kept",)]
    assert sorted(os.listdir(parent)) == ["_data"]
    assert pitr.started_at("postgres").startswith("true")


def test_a_recovery_that_fails_its_checks_leaves_the_live_database_as_it_was(pitr):
    target = float(int(time.time()) + 1)
    while time.time() < target + 1:
        time.sleep(0.1)
    pitr.sql("CREATE TABLE after_target AS SELECT g FROM generate_series(1, 5) g")
    pitr.sql("INSERT INTO ticks (writer, seq) VALUES (99, 1)")
    ticks = pitr.sql("SELECT count(*) FROM ticks")[0][0]

    rc, out = pitr.play("recover_database.yml", "-e", "confirm=yes", "-e", json.dumps({"target_time": utc_text(target)}),
                        minimarket_verify_queries=["SELECT count(*) < 0 FROM ventas"])
    assert rc == 2, out
    failure = [line for line in out.splitlines() if line.startswith("fatal:")][0]
    assert "recovered database failed verification: query 'SELECT count(*) < 0 FROM ventas' returned 'f', not true" in failure
    assert "the database is back as it was before the recovery" in failure
    assert pitr.sql("SELECT count(*) FROM after_target") == [(5,)]
    assert pitr.sql("SELECT count(*) FROM ticks")[0][0] == ticks
    assert pitr.started_at("postgres").startswith("true") and pitr.started_at("dashboard").startswith("true")


def test_schedule_with_pitr_off_removes_it(pitr):
    rc, out = pitr.play("schedule.yml", minimarket_pitr_enabled=False)
    assert rc == 0, out
    assert not os.path.exists("/etc/cron.d/" + pitr.cron_file)
    assert not os.path.exists(os.path.join(pitr.etc, "barman-development.conf"))
    assert pitr.sql("SELECT count(*) FROM pg_replication_slots", "postgres") == [(0,)]
    assert pitr.sql("SELECT count(*) FROM pg_roles WHERE rolname = 'barman_minimarket'", "postgres") == [(0,)]
    assert pitr.sql("SELECT count(*) FROM pg_hba_file_rules WHERE 'replication' = ANY(database)"
                    " AND 'barman_minimarket' = ANY(user_name)", "postgres") == [(0,)]
