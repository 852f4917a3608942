"""Backup health reporting as operators get it: the playbooks write the textfile-collector metrics and
POST the webhook, a failure is recorded AND still fails the play with its own error, and a webhook that
cannot be delivered never changes the outcome.

The webhook receiver is a real HTTP server on 127.0.0.1 in a thread of this test process; it stops when
the test ends and answers nothing after ``MAX_REQUESTS`` requests or ``TIMEOUT`` seconds.
"""
import http.server
import json
import os
import re
import subprocess
import sys
import threading

import pytest

from test_playbooks import ansible

TOKEN = "s3cr3t-hook-token"
SERVER_TIMEOUT = 120
PAYLOAD_KEYS = {"kind", "environment", "status", "message", "host", "timestamp"}


class Receiver(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer):
        self.answer = answer
        self.received = []
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self):
        return "http://127.0.0.1:%d/hook?token=%s" % (self.server_address[1], TOKEN)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.received.append((self.path, self.headers.get("Content-Type"), json.loads(body)))
        self.send_response(self.server.answer)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        return


@pytest.fixture
def receiver():
    servers = []

    def start(answer=200):
        server = Receiver(answer)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        thread.start()
        timer = threading.Timer(SERVER_TIMEOUT, server.shutdown)
        timer.daemon = True
        timer.start()
        servers.append((server, timer))
        return server

    yield start
    for server, timer in servers:
        timer.cancel()
        server.shutdown()
        server.server_close()


def run(playbook, tmp_path, *extra, env=None):
    (tmp_path / "prom").mkdir(exist_ok=True)
    proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/%s" % playbook,
                   "-e", "minimarket_backup_root=%s" % (tmp_path / "root"),
                   "-e", "minimarket_metrics_enabled=true", "-e", "minimarket_metrics_textfile_dir=%s" % (tmp_path / "prom"),
                   *extra, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def last_fatal_message(out):
    fatal = [line for line in out.splitlines() if line.startswith("fatal:")]
    assert fatal, out
    return json.loads(fatal[-1].split("=> ", 1)[1])["msg"]


def metrics(tmp_path):
    path = tmp_path / "prom" / "minimarket_backup_development.prom"
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    with open(path, "rb") as handle:
        check = subprocess.run(["promtool", "check", "metrics"], stdin=handle, capture_output=True, text=True, check=False, timeout=60)
    assert check.returncode == 0 and not check.stdout + check.stderr, check.stdout + check.stderr
    samples = {}
    for line in path.read_text().splitlines():
        match = re.match(r'^minimarket_backup_(\w+)\{(kind|service)="(\w+)",environment="development"\} (\S+)$', line)
        if match:
            samples[(match.group(3), match.group(1))] = float(match.group(4))
    return samples


def newest_report(tmp_path):
    reports = tmp_path / "root" / "reports"
    return json.loads((reports / sorted(os.listdir(reports))[-1]).read_text())


def test_failed_backup_is_recorded_notified_and_still_fails_with_its_own_error(tmp_path, receiver):
    hook = receiver(200)
    rc, out = run("backup_database.yml", tmp_path, "-e", "minimarket_db_service=mm_no_such_service",
                  env={"MINIMARKET_NOTIFY_WEBHOOK_URL": hook.url})
    assert rc == 2, out
    message = last_fatal_message(out)
    assert ("no container with labels com.docker.compose.project=inventario-retail and "
            "com.docker.compose.service=mm_no_such_service on this host" in message), message
    assert "rescued=1" in out and "failed=1" in out
    assert TOKEN not in out

    assert len(hook.received) == 1, hook.received
    path, content_type, payload = hook.received[0]
    assert path == "/hook?token=%s" % TOKEN
    assert content_type == "application/json"
    assert PAYLOAD_KEYS <= set(payload)
    assert (payload["kind"], payload["environment"], payload["status"], payload["host"]) == \
        ("database", "development", "failure", "localhost")
    assert payload["message"] == message
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", payload["timestamp"])

    samples = metrics(tmp_path)
    assert samples[("database", "last_success_timestamp_seconds")] == 0
    assert samples[("database", "last_failure_timestamp_seconds")] > 1.7e9
    assert samples[("database", "last_duration_seconds")] > 0
    assert ("database", "last_size_bytes") not in samples
    assert not os.listdir(tmp_path / "root" / "database")


@pytest.mark.parametrize("answer", [500, None], ids=["webhook-answers-500", "webhook-unreachable"])
def test_undeliverable_webhook_does_not_mask_the_failure(tmp_path, receiver, answer):
    if answer is None:
        url = "http://127.0.0.1:9/hook?token=%s" % TOKEN
    else:
        hook = receiver(answer)
        url = hook.url
    rc, out = run("backup_volumes.yml", tmp_path, "-e", "minimarket_volumes=['mm-no-such-volume-%d']" % os.getpid(),
                  env={"MINIMARKET_NOTIFY_WEBHOOK_URL": url})
    assert rc == 2, out
    message = last_fatal_message(out)
    assert "mm-no-such-volume" in message
    assert "notification was NOT delivered" in out
    assert TOKEN not in out
    if answer is not None:
        assert [payload["status"] for _path, _type, payload in hook.received] == ["failure"]
    samples = metrics(tmp_path)
    assert samples[("volumes", "last_failure_timestamp_seconds")] > 1.7e9


def test_successful_backup_records_size_and_keeps_the_failure_history(tmp_path, receiver, pg_server, seed_database):
    db = seed_database(rows=50)
    db_vars = ["-e", "minimarket_db_tools_in_container=false", "-e", "minimarket_db_host=%s" % pg_server.host,
               "-e", "minimarket_db_port=%d" % pg_server.port, "-e", "minimarket_db_user=%s" % pg_server.user,
               "-e", "minimarket_db_name=%s" % db]
    rc, out = run("backup_database.yml", tmp_path, *db_vars, "-e", "minimarket_db_port=1",
                  env={"MINIMARKET_DB_PASSWORD": pg_server.password})
    assert rc == 2, out
    failed_at = metrics(tmp_path)[("database", "last_failure_timestamp_seconds")]

    hook = receiver(503)
    rc, out = run("backup_database.yml", tmp_path, *db_vars, "-e", "minimarket_notify_on_success=true",
                  env={"MINIMARKET_DB_PASSWORD": pg_server.password, "MINIMARKET_NOTIFY_WEBHOOK_URL": hook.url})
    assert rc == 0, out
    assert "notification was NOT delivered" in out
    assert pg_server.password not in out and TOKEN not in out
    archives = [name for name in os.listdir(tmp_path / "root" / "database") if name.endswith(".tar.gz")]
    assert len(archives) == 1
    size = os.path.getsize(tmp_path / "root" / "database" / archives[0])

    samples = metrics(tmp_path)
    assert samples[("database", "last_failure_timestamp_seconds")] == failed_at
    assert samples[("database", "last_success_timestamp_seconds")] > failed_at
    assert samples[("database", "last_size_bytes")] == size
    assert samples[("database", "last_duration_seconds")] > 0
    [(_path, _type, payload)] = hook.received
    assert (payload["status"], payload["kind"]) == ("success", "database")
    assert payload["archive"].endswith(archives[0])


def test_failed_verification_sets_verification_ok_to_zero(tmp_path, receiver):
    hook = receiver(200)
    rc, out = run("verify_backups.yml", tmp_path, env={"MINIMARKET_NOTIFY_WEBHOOK_URL": hook.url})
    assert rc == 2, out
    message = last_fatal_message(out)
    assert message.startswith("backup verification FAILED for development:")
    [(_path, _type, payload)] = hook.received
    assert (payload["kind"], payload["status"], payload["message"]) == ("verify", "failure", message)
    samples = metrics(tmp_path)
    assert samples[("verify", "last_verification_ok")] == 0
    assert samples[("verify", "last_success_timestamp_seconds")] == 0
    # No volume archive: the scratch project never started, so no service counts as verified.
    failed_at = samples[("verify", "last_failure_timestamp_seconds")]
    for service in ("redis", "prometheus", "grafana", "loki"):
        assert samples[(service, "service_check_ok")] == 0, service
        assert samples[(service, "service_check_timestamp_seconds")] == failed_at, service
    report = newest_report(tmp_path)
    assert report["ok"] is False and report["pitr"] == {"skipped": True}
    assert [(s["service"], s["ok"]) for s in report["services"]["services"]] == [
        ("redis", False), ("prometheus", False), ("grafana", False), ("loki", False)]
    assert report["services"]["services"][0]["msg"].startswith("redis was not asked: no complete volumes backup for environment")


def test_module_check_mode_shows_the_diff_and_writes_nothing(tmp_path):
    proc = ansible("ansible", "localhost", "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable, "--check", "--diff",
                   "-m", "minimarket.backup.backup_metrics",
                   "-a", "textfile_dir=%s kind=volumes environment=staging status=success size=7 duration=1.5" % tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert '+minimarket_backup_last_size_bytes{kind="volumes",environment="staging"} 7' in out
    assert os.listdir(tmp_path) == []


def test_module_refuses_a_bad_environment_in_one_line(tmp_path):
    proc = ansible("ansible", "localhost", "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
                   "-m", "minimarket.backup.backup_metrics",
                   "-a", "textfile_dir=%s kind=database environment=prod_eu status=failure" % tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "environment 'prod_eu' is not a valid name: use letters, digits and '-' only" in out
    assert os.listdir(tmp_path) == []


def test_passed_verification_sets_verification_ok_to_one_after_a_failure(tmp_path):
    rc, out = run("verify_backups.yml", tmp_path)
    assert rc == 2, out
    # Nothing to check is a pass of the report step: the success path of the playbook, without the stack.
    failed = metrics(tmp_path)
    rc, out = run("verify_backups.yml", tmp_path, "-e", "backup_verify_database=false", "-e", "backup_verify_volumes=false")
    assert rc == 0, out
    samples = metrics(tmp_path)
    assert samples[("verify", "last_verification_ok")] == 1
    assert samples[("verify", "last_success_timestamp_seconds")] > samples[("verify", "last_failure_timestamp_seconds")] > 0
    # This run checked no service: the services keep what the failed run found.
    assert dict((key, value) for key, value in samples.items() if key[0] == "redis") == {
        ("redis", "service_check_ok"): 0, ("redis", "service_check_timestamp_seconds"): failed[("verify", "last_failure_timestamp_seconds")]}
    assert newest_report(tmp_path)["ok"] is True
