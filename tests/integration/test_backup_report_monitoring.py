"""The monitoring pieces shipped in monitoring/: alert rules (promtool check + unit tests), the Grafana dashboard,
and that both speak about exactly the metrics minimarket.backup.backup_metrics writes."""
import json
import os
import re
import subprocess

import yaml

from ansible_collections.minimarket.backup.plugins.module_utils._metrics import NAMES, PREFIX
from ansible_collections.minimarket.backup.plugins.module_utils._pitr import METRICS as PITR_METRICS, METRICS_PREFIX as PITR_PREFIX

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMETHEUS = os.path.join(ROOT, "monitoring", "prometheus")
DASHBOARD = os.path.join(ROOT, "monitoring", "grafana", "minimarket_backup.json")
OURS = {PREFIX + name for name in NAMES} | {PITR_PREFIX + name for name, _help in PITR_METRICS}


def promtool(*args, cwd=PROMETHEUS):
    proc = subprocess.run(["promtool"] + list(args), cwd=cwd, capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def metric_names(expr):
    return set(re.findall(r"\bminimarket_backup_\w+", expr))


def test_rules_are_valid_and_cover_the_nine_alerts():
    out = promtool("check", "rules", "minimarket_backup_rules.yml")
    assert "SUCCESS: 9 rules found" in out
    with open(os.path.join(PROMETHEUS, "minimarket_backup_rules.yml")) as handle:
        rules = {rule["alert"]: rule for group in yaml.safe_load(handle)["groups"] for rule in group["rules"]}
    assert set(rules) == {"MinimarketDatabaseBackupMissing", "MinimarketVolumeBackupMissing", "MinimarketBackupVerificationFailed",
                          "MinimarketServiceCheckFailed", "MinimarketServiceCheckMissing", "MinimarketPitrVerificationFailed",
                          "MinimarketPitrVerificationMissing", "MinimarketPitrRpoHigh", "MinimarketPitrStreamingStopped"}
    assert "> 300" in rules["MinimarketPitrRpoHigh"]["expr"]
    assert "26 * 3600" in rules["MinimarketDatabaseBackupMissing"]["expr"]
    assert "8 * 86400" in rules["MinimarketVolumeBackupMissing"]["expr"]
    assert rules["MinimarketServiceCheckFailed"]["expr"] == PREFIX + "service_check_ok == 0"
    assert rules["MinimarketPitrVerificationFailed"]["expr"] == PREFIX + "pitr_verification_ok == 0"
    assert "8 * 86400" in rules["MinimarketServiceCheckMissing"]["expr"] and "8 * 86400" in rules["MinimarketPitrVerificationMissing"]["expr"]
    for rule in rules.values():
        assert metric_names(rule["expr"]) <= OURS, rule["expr"]


def test_rule_unit_tests_pass():
    out = promtool("test", "rules", "minimarket_backup_rules_test.yml")
    assert "SUCCESS" in out


def test_dashboard_shows_age_size_verification_and_drills_of_our_metrics(tmp_path):
    with open(DASHBOARD, encoding="utf-8") as handle:
        dashboard = json.load(handle)
    assert dashboard["uid"] == "minimarket-backup"
    panels = {panel["title"]: panel for panel in dashboard["panels"]}
    assert {"Age of the last successful backup", "Backup age over time", "Backup size over time", "Last verification",
            "PITR: live RPO", "PITR: age of the last base backup", "PITR: streaming and barman check",
            "Verification drills: services and PITR", "Age of the last verification drills"} <= set(panels)
    queries = {title: [target["expr"] for target in panel["targets"]] for title, panel in panels.items()}
    assert all(queries.values())
    used = set()
    for exprs in queries.values():
        for expr in exprs:
            used |= metric_names(expr)
    assert used <= OURS and {PREFIX + "last_success_timestamp_seconds", PREFIX + "last_size_bytes",
                             PREFIX + "last_verification_ok"} <= used
    assert "time() - " in queries["Age of the last successful backup"][0]
    assert PREFIX + "last_size_bytes" in queries["Backup size over time"][0]
    assert PREFIX + "last_verification_ok" in queries["Last verification"][0]
    assert PITR_PREFIX + "rpo_seconds" in queries["PITR: live RPO"][0]
    assert "time() - " in queries["PITR: age of the last base backup"][0]
    assert [PITR_PREFIX + "streaming_up" in queries["PITR: streaming and barman check"][0],
            PITR_PREFIX + "check_ok" in queries["PITR: streaming and barman check"][1]] == [True, True]
    drills, ages = queries["Verification drills: services and PITR"], queries["Age of the last verification drills"]
    assert [metric_names(expr) for expr in drills] == [{PREFIX + "service_check_ok"}, {PREFIX + "pitr_verification_ok"}]
    assert [metric_names(expr) for expr in ages] == [{PREFIX + "service_check_timestamp_seconds"},
                                                     {PREFIX + "pitr_verification_timestamp_seconds"}]
    assert all(expr.startswith("time() - ") for expr in ages) and "by (environment, service)" in drills[0]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # promtool parses every query (as a recording rule, with the dashboard variable filled in).
    recording = {"groups": [{"name": "dashboard", "rules": [
        {"record": "dashboard:q%d" % number, "expr": expr.replace("$environment", ".*")}
        for number, expr in enumerate(expr for exprs in queries.values() for expr in exprs)]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(recording))
    assert "SUCCESS" in promtool("check", "rules", "dashboard_rules.yml", cwd=str(tmp_path))
