"""The AWX objects kept as code (awx/): what can be checked without an AWX server.

configure.yml passes syntax-check with the awx.awx modules; every job template names a playbook that exists and
every procedure has one; surveys pass AWX's own survey-spec rules and ask only what their playbook reads; schedules
are the cron jobs' times; the credential type injects what the inventories read; the execution environment builds
its context offline with controller-side needs only.
"""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from dateutil import rrule

from test_playbooks import PLAYBOOKS, ROOT, ansible

AWX = os.path.join(ROOT, "awx")
BUILDER = os.path.join(os.path.dirname(sys.executable), "ansible-builder")
OBJECTS = yaml.safe_load(open(os.path.join(AWX, "objects.yml")))
TEMPLATES = OBJECTS["awx_job_templates"]
SURVEYED = [t for t in TEMPLATES if "survey" in t]
# AWX's survey question types and the Python type of their default (awx/api/views, JobTemplateSurveySpec.ALLOWED_TYPES).
ALLOWED_TYPES = {"text": str, "textarea": str, "password": str, "multiplechoice": str, "multiselect": str,
                 "integer": int, "float": (float, int)}
DESTRUCTIVE = ("restore_database.yml", "restore_volumes.yml", "recover_database.yml", "recover_full.yml")


def survey_problems(spec):
    """AWX's validation of a survey spec (JobTemplateSurveySpec._validate_spec_data), as a list of problems."""
    problems = []
    for field, kind in (("name", str), ("description", str), ("spec", list)):
        if not isinstance(spec.get(field), kind):
            problems.append("field %r missing or not a %s" % (field, kind.__name__))
    if problems:
        return problems
    if not spec["spec"]:
        problems.append("'spec' doesn't contain any items")
    seen = set()
    for idx, item in enumerate(spec["spec"]):
        for field in ("type", "question_name", "variable", "required"):
            if field not in item or not isinstance(item[field], bool if field == "required" else str):
                problems.append("question %d: %r missing or of the wrong type" % (idx, field))
        if item.get("variable") in seen:
            problems.append("question %d: variable %r duplicated" % (idx, item.get("variable")))
        seen.add(item.get("variable"))
        kind = item.get("type")
        if kind not in ALLOWED_TYPES:
            problems.append("question %d: type %r not allowed" % (idx, kind))
            continue
        if item.get("default", "") != "" and not isinstance(item["default"], ALLOWED_TYPES[kind]):
            problems.append("question %d: default of the wrong type" % idx)
        for key in ("min", "max"):
            if item.get(key) is not None and not isinstance(item[key], int):
                problems.append("question %d: %s is not an integer" % (idx, key))
        if kind in ("multiplechoice", "multiselect"):
            choices = item.get("choices")
            if choices is None:
                problems.append("question %d: no choices" % idx)
                continue
            choices = choices.splitlines() if isinstance(choices, str) else choices
            defaults = item.get("default", "")
            defaults = [d for d in defaults.splitlines() if d.strip()] if isinstance(defaults, str) else defaults
            if kind == "multiplechoice" and len(defaults) > 1:
                problems.append("question %d: more than one default" % idx)
            if any(d not in choices for d in defaults):
                problems.append("question %d: default not among the choices" % idx)
        if isinstance(item.get("default"), str) and item["default"].startswith("$encrypted$"):
            problems.append("question %d: $encrypted$ is reserved" % idx)
    return problems


def survey(template):
    with open(os.path.join(AWX, template["survey"])) as handle:
        return json.load(handle)


def test_configure_playbook_passes_syntax_check():
    proc = ansible("ansible-playbook", "--syntax-check", "awx/configure.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_template_names_an_existing_playbook_and_every_procedure_has_one():
    named = [t["playbook"] for t in TEMPLATES]
    assert len(named) == len(set(named)) and len({t["name"] for t in TEMPLATES}) == len(TEMPLATES)
    for playbook in named:
        assert os.path.isfile(os.path.join(ROOT, playbook)), playbook
    assert sorted(named) == ["playbooks/%s" % name for name in PLAYBOOKS]


@pytest.mark.parametrize("template", SURVEYED, ids=[t["name"] for t in SURVEYED])
def test_survey_passes_awxs_rules_and_asks_only_what_its_playbook_reads(template):
    spec = survey(template)
    assert survey_problems(spec) == []
    # Read by the playbook or by a role's defaults (confirm -> destructive_confirm_answer), as test_playbooks checks -e.
    paths = [os.path.join(ROOT, template["playbook"])] + [os.path.join(ROOT, "roles", role, "defaults", "main.yml")
                                                          for role in os.listdir(os.path.join(ROOT, "roles"))]
    source = "".join(open(path, encoding="utf-8").read() for path in paths if os.path.isfile(path))
    for question in spec["spec"]:
        assert re.search(r"\{\{[^}]*\b%s\b" % question["variable"], source), "%s: %s is read by no task" % (
            template["playbook"], question["variable"])


def test_the_survey_check_rejects_what_awx_rejects():
    bad = {"name": "x", "description": "", "spec": [
        {"question_name": "q", "variable": "confirm", "type": "multiplechoice", "choices": ["no", "yes"], "default": "maybe",
         "required": True},
        {"question_name": "q", "variable": "confirm", "type": "dropdown", "required": "yes"},
    ]}
    assert len(survey_problems(bad)) == 4, survey_problems(bad)


@pytest.mark.parametrize("playbook", DESTRUCTIVE)
def test_destructive_templates_ask_for_confirmation_defaulting_to_no(playbook):
    template = [t for t in TEMPLATES if t["playbook"] == "playbooks/" + playbook][0]
    questions = dict((q["variable"], q) for q in survey(template)["spec"])
    assert questions["confirm"]["default"] == "no" and questions["confirm"]["required"] is True
    assert questions["confirm"]["choices"] == ["no", "yes"]


def cron_fields(cron):
    minute, hour, _day, _month, weekday = cron.split()
    return int(minute), int(hour), None if weekday == "*" else int(weekday)


@pytest.mark.parametrize("schedule", OBJECTS["awx_schedules"], ids=[s["name"] for s in OBJECTS["awx_schedules"]])
def test_schedule_runs_at_the_cron_jobs_time(schedule):
    assert schedule["job_template"] in [t["name"] for t in TEMPLATES]
    text = schedule["rrule"].replace("{{ awx_timezone }}", OBJECTS["awx_timezone"])
    assert re.fullmatch(r"DTSTART;TZID=[A-Za-z_/]+:\d{8}T\d{6} RRULE:\S+", text), text
    minute, hour, weekday = cron_fields(schedule["cron"])
    runs = list(rrule.rrulestr(text.replace(" RRULE", "\nRRULE"))[:10])
    assert str(runs[0].tzinfo).endswith(OBJECTS["awx_timezone"] + "')")
    for run in runs:
        assert (run.minute, run.hour) == (minute, hour), run
        # cron counts Sunday as 0, Python's isoweekday as 7
        assert weekday is None or run.isoweekday() % 7 == weekday, run
    gaps = {(later - earlier).days for earlier, later in zip(runs, runs[1:])}
    assert gaps == ({1} if weekday is None else {7}), gaps
    # The same times as the cron jobs that playbooks/schedule.yml installs.
    inventory = yaml.safe_load(open(os.path.join(ROOT, "inventories", "production", "group_vars", "backup_hosts", "main.yml")))
    kind = {"backup database": "database", "backup volumes": "volumes", "verify backups": "verify"}[schedule["job_template"]]
    cron = inventory["minimarket_schedule_" + kind]
    assert (int(cron["minute"]), int(cron["hour"]), None if cron["weekday"] == "*" else int(cron["weekday"])) == (minute, hour, weekday)


def test_credential_type_injects_the_variable_the_inventories_read():
    credential_type = yaml.safe_load(open(os.path.join(AWX, "credential_types", "minimarket_database.yml")))
    assert credential_type["kind"] == "cloud"
    fields = {field["id"]: field for field in credential_type["inputs"]["fields"]}
    assert fields["db_password"]["secret"] is True
    assert set(credential_type["inputs"]["required"]) <= set(fields)
    injected = credential_type["injectors"]["env"]
    assert injected == {"MINIMARKET_DB_PASSWORD": "{{ db_password }}"}
    for environment in ("staging", "production"):
        group_vars = open(os.path.join(ROOT, "inventories", environment, "group_vars", "backup_hosts", "main.yml")).read()
        assert "lookup('ansible.builtin.env', 'MINIMARKET_DB_PASSWORD')" in group_vars


def test_execution_environment_builds_its_context_offline_with_controller_needs_only(tmp_path):
    proc = subprocess.run([BUILDER, "create",
                           "--file", os.path.join(AWX, "execution-environment.yml"), "--context", str(tmp_path / "context")],
                          capture_output=True, text=True, check=False, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (tmp_path / "context" / "Dockerfile").read_text()
    core_pin = [line for line in open(os.path.join(ROOT, "requirements", "ansible.txt")) if line.startswith("ansible-core==")][0].strip()
    assert 'ANSIBLE_INSTALL_REFS="%s ansible-runner==' % core_pin in containerfile
    bindep = (tmp_path / "context" / "_build" / "bindep.txt").read_text()
    assert "openssh-client [platform:dpkg]" in bindep
    assert not re.search(r"docker|postgres|pigz|zstd", bindep + containerfile), "a backup-host need in the EE"
    # What ansible-builder takes from this collection when an EE includes it (its meta/execution-environment.yml).
    collections = tmp_path / "collections" / "ansible_collections" / "minimarket"
    collections.mkdir(parents=True)
    os.symlink(ROOT, str(collections / "backup"))
    proc = subprocess.run([BUILDER, "introspect",
                           str(tmp_path / "collections")], capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    introspected = yaml.safe_load(proc.stdout.split("\n", 1)[1])
    assert introspected == {"python": [], "system": ["openssh-clients [platform:rpm]  # from collection minimarket.backup",
                                                     "openssh-client [platform:dpkg]  # from collection minimarket.backup"]}
