"""The playbooks as an operator runs them: syntax, inventories, and refusals that must not touch anything.

These need neither the stack nor backups: every refusal happens before the first change.
"""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
PLAYBOOKS = sorted(name for name in os.listdir(os.path.join(ROOT, "playbooks")) if name.endswith(".yml"))
ENVIRONMENTS = ["development", "staging", "production"]
# Destructive playbook -> the extra variable naming the backup it restores.
DESTRUCTIVE = {
    "restore_database.yml": "backup_file",
    "restore_volumes.yml": "backup_file",
    "recover_database.yml": "backup_file",
    "recover_full.yml": "volumes_backup_file",
}


def ansible(tool, *args, env=None, stdin=subprocess.DEVNULL):
    environ = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    environ.pop("MINIMARKET_DB_PASSWORD", None)
    environ.update(env or {})
    return subprocess.run(
        [os.path.join(BIN, tool)] + list(args), cwd=ROOT, env=environ, stdin=stdin,
        capture_output=True, text=True, timeout=300, check=False,
    )


def local_inventory(tmp_path, environment, **hostvars):
    """An inventory file for this machine as the one backup host of ``environment``, backups under ``tmp_path``."""
    path = tmp_path / "hosts.yml"
    host = dict(ansible_connection="local", ansible_python_interpreter="{{ ansible_playbook_python }}",
                minimarket_environment=environment, minimarket_backup_root=str(tmp_path / "backups"))
    host.update(hostvars)
    path.write_text(yaml.safe_dump({"backup_hosts": {"hosts": {"localhost": host}}}))
    return str(path)


def test_every_documented_procedure_has_a_playbook():
    assert set(PLAYBOOKS) >= {
        "backup_database.yml", "backup_volumes.yml", "restore_database.yml", "restore_volumes.yml",
        "recover_database.yml", "recover_full.yml", "verify_backups.yml", "schedule.yml",
    }


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_playbooks_pass_syntax_check(environment):
    proc = ansible("ansible-playbook", "--syntax-check", "-i", "inventories/%s" % environment,
                   *["playbooks/%s" % name for name in PLAYBOOKS])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_inventory_describes_the_environment_without_a_secret(environment):
    proc = ansible("ansible-inventory", "-i", "inventories/%s" % environment, "--list",
                   env={"MINIMARKET_DB_PASSWORD": "s3cr3t-from-env"})
    assert proc.returncode == 0, proc.stderr
    inventory = json.loads(proc.stdout)
    hosts = inventory["backup_hosts"]["hosts"]
    assert len(hosts) == 1
    hostvars = inventory["_meta"]["hostvars"][hosts[0]]
    assert hostvars["minimarket_environment"] == environment
    assert hostvars["minimarket_compose_project"] == "inventario-retail"
    assert hostvars["minimarket_compose_file"].endswith("docker-compose.%s.yml" % environment)
    assert hostvars["minimarket_volumes"] == [
        "inventario-retail_postgres-data", "inventario-retail_grafana-data", "inventario-retail_prometheus-data",
        "inventario-retail_loki-data", "inventario-retail_redis-data",
    ]
    assert hostvars["minimarket_services_to_stop"] == ["agente_deposito", "agente_negocio", "dashboard"]
    assert hostvars["minimarket_critical_tables"]["productos"] >= 1
    assert hostvars["minimarket_verify_queries"]
    # The password is a reference (vault or environment lookup), never a literal in the inventory.
    assert "lookup('ansible.builtin.env', 'MINIMARKET_DB_PASSWORD')" in hostvars["minimarket_db_password"]
    source = open(os.path.join(ROOT, "inventories", environment, "group_vars", "backup_hosts", "main.yml")).read()
    assert "s3cr3t" not in source


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_password_comes_from_the_environment_when_there_is_no_vault(environment):
    proc = ansible("ansible", "backup_hosts", "-i", "inventories/%s" % environment, "-c", "local",
                   "-m", "ansible.builtin.debug", "-a", "msg={{ minimarket_db_password | length }}",
                   env={"MINIMARKET_DB_PASSWORD": "s3cr3t-from-env"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"msg": 15' in proc.stdout
    assert "s3cr3t-from-env" not in proc.stdout


@pytest.mark.parametrize("playbook", sorted(DESTRUCTIVE))
def test_destructive_playbook_with_a_missing_backup_fails_before_asking(playbook, tmp_path):
    """The backup is resolved first: a file that does not exist is named before any question, and nothing changes."""
    kind = "volumes" if DESTRUCTIVE[playbook] == "volumes_backup_file" or "volumes" in playbook else "database"
    missing = str(tmp_path / ("%s_development_20250101_020000.tar.gz" % kind))
    proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/%s" % playbook,
                   "-e", "%s=%s" % (DESTRUCTIVE[playbook], missing), "-e", "minimarket_backup_root=%s" % tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    fatal = [line for line in out.splitlines() if line.startswith("fatal:")]
    assert len(fatal) == 1, out
    message = json.loads(fatal[0].split("=> ", 1)[1])["msg"]
    assert message == "backup file %s does not exist: check the path or use src=latest" % missing
    assert "will overwrite" not in out and "Type yes" not in out and "Confirm" not in out
    assert "changed=0" in out


NO_INVENTORY_FIX = "pass -i with the inventory of the environment to work on, e.g. -i inventories/production"


@pytest.mark.parametrize("playbook", PLAYBOOKS)
@pytest.mark.parametrize("inventory", [None, "inventories/prodution"], ids=["no-inventory", "mistyped-inventory"])
def test_a_run_without_an_environments_inventory_fails_with_one_line(playbook, inventory):
    """ansible.cfg names no inventory; a forgotten or mistyped -i stops in the first play instead of 'no hosts matched', exit 0."""
    proc = ansible("ansible-playbook", *(["-i", inventory] if inventory else []), "playbooks/%s" % playbook, "-e", "confirm=yes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    fatal = [line for line in out.splitlines() if line.startswith("fatal:")]
    assert len(fatal) == 1, out
    message = json.loads(fatal[0].split("=> ", 1)[1])["msg"]
    assert "\n" not in message
    assert message.startswith("no host in group backup_hosts of inventory %s: " % (
        os.path.join(ROOT, inventory) if inventory else "/etc/ansible/hosts")), message
    assert NO_INVENTORY_FIX in message
    assert "ok=1 " in out and "changed=0" in out


def test_ansible_cfg_names_no_default_inventory():
    proc = ansible("ansible-config", "dump", "--only-changed")
    assert proc.returncode == 0, proc.stderr
    assert "DEFAULT_HOST_LIST" not in proc.stdout, proc.stdout


def test_a_backup_host_without_an_environment_is_refused(tmp_path):
    hosts = tmp_path / "hosts.yml"
    hosts.write_text("backup_hosts:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    proc = ansible("ansible-playbook", "-i", str(hosts), "playbooks/backup_database.yml")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "host localhost of group backup_hosts has no minimarket_environment: pass -i with one of this collection's" in out
    assert "changed=0" in out


def test_no_inventory_source_holds_a_vault_example():
    """Every file under inventories/ is read as an inventory source: only hosts and group_vars live there."""
    for environment in ENVIRONMENTS:
        directory = os.path.join(ROOT, "inventories", environment)
        assert sorted(os.listdir(directory)) == ["group_vars", "hosts.yml"], environment
        proc = ansible("ansible-inventory", "-i", "inventories/%s" % environment, "--graph")
        assert proc.returncode == 0, proc.stderr
        assert "WARNING" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("playbook", ["restore_database.yml", "restore_volumes.yml"])
def test_restore_without_backup_file_names_the_fix(playbook):
    proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/%s" % playbook, "-e", "confirm=yes")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "pass -e backup_file=/path/to/" in out
    assert "changed=0" in out


def test_schedule_check_mode_shows_the_jobs_and_writes_nothing(tmp_path):
    cron_file = "minimarket_backup_check_%d" % os.getpid()
    proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/schedule.yml", "--check", "--diff",
                   "-e", "backup_schedule_cron_file=%s" % cron_file,
                   "-e", "minimarket_backup_root=%s" % (tmp_path / "root"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert not os.path.exists("/etc/cron.d/%s" % cron_file)
    assert not (tmp_path / "root").exists()
    for schedule, playbook in (("0 2 * * *", "backup_database.yml"), ("0 3 * * 0", "backup_volumes.yml"),
                               ("0 5 * * 0", "verify_backups.yml")):
        assert any(schedule in line and "playbooks/" + playbook in line and "flock" in line for line in out.splitlines()), out


GUIDE = "docs/guia-backup.es.md"
DOCUMENTED = (GUIDE, "docs/awx.md", "README.md")
# Where the docs keep the secrets of a shop (docs/examples/secrets.yml): a command naming them runs here with a
# Vault-encrypted copy of the example and its own password file instead.
SECRETS_DIR = "/etc/minimarket-backup/"
# The shop's guide's sections in its order, plus ours: the operator finds everything where it used to be.
GUIDE_SECTIONS = [
    "Índice", "Introducción", "Estructura de Directorios", "Playbooks disponibles", "Procedimiento de Backup",
    "Backup de Base de Datos", "Backup de Volúmenes Docker", "Procedimiento de Restauración",
    "Restauración de Base de Datos", "Restauración de Volúmenes Docker", "Automatización", "Políticas de Retención",
    "Verificación de Backups", "Escenarios de Recuperación", "Escenario 1: Recuperación de la base de datos",
    "Escenario 2: Recuperación completa del sistema", "Qué cambió respecto de la guía anterior y por qué",
    "Preguntas Frecuentes", "Información Adicional",
]


def shell_commands(doc):
    """The commands of a doc's bash blocks as an operator pastes them (backslash continuations joined)."""
    commands, in_shell, pending = [], False, ""
    for line in open(os.path.join(ROOT, doc), encoding="utf-8"):
        if line.startswith("```"):
            in_shell, pending = line.strip() == "```bash", ""
        elif in_shell:
            text = line.strip()
            if text.endswith("\\"):
                pending += text[:-1].strip() + " "
                continue
            command, pending = (pending + text).strip(), ""
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def documented_commands():
    return [(doc, command) for doc in DOCUMENTED for command in shell_commands(doc) if command.startswith("ansible-playbook ")]


def documented_adhoc_commands():
    return [(doc, command) for doc in DOCUMENTED for command in shell_commands(doc) if command.startswith("ansible ")]


def module_docs(name):
    """The module's documentation as ansible-doc parses it from DOCUMENTATION ({} when there is no such module)."""
    proc = ansible("ansible-doc", "--json", name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout or "{}").get(name, {}).get("doc", {})


def headings(text):
    """Markdown headings outside code blocks."""
    found, in_code = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif line.startswith("#") and not in_code:
            found.append(line.lstrip("#").strip())
    return found


def test_the_guide_follows_the_shops_guide():
    titles = headings(open(os.path.join(ROOT, GUIDE), encoding="utf-8").read())
    missing = [section for section in GUIDE_SECTIONS if section not in titles]
    assert not missing, missing
    positions = [titles.index(section) for section in GUIDE_SECTIONS]
    assert positions == sorted(positions), titles


@pytest.mark.parametrize("doc", [GUIDE, "docs/README.md", "docs/awx.md", "README.md"])
def test_the_guide_links_resolve(doc):
    """Relative links name existing files; the guide's own #anchors name its headings (GitHub slugs)."""
    text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
    slugs = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings(text)}
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if link.startswith("#"):
            assert link[1:] in slugs, link
        else:
            assert os.path.exists(os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), link.split("#")[0]))), link


def test_the_guide_documents_every_playbook():
    documented = " ".join(command for doc, command in documented_commands() if doc == GUIDE)
    for name in PLAYBOOKS:
        assert "playbooks/%s" % name in documented, name


def test_the_guide_checks_a_backup_with_each_module_by_hand():
    documented = " ".join(command for doc, command in documented_adhoc_commands() if doc == GUIDE)
    for name in ("pg_split_dump", "docker_volume_archive", "backup_prune"):
        assert "-m minimarket.backup.%s " % name in documented, name


@pytest.mark.parametrize("doc,command", documented_adhoc_commands())
def test_documented_adhoc_command_uses_documented_options(doc, command):
    """An ad-hoc command names an existing module, its required options, and only documented options and choices."""
    args = shlex.split(command)
    module = args[args.index("-m") + 1]
    docs = module_docs(module)
    assert docs, "%s: %s: no module %s (ansible-doc)" % (doc, command, module)
    spec = {}
    for option, option_spec in docs.get("options", {}).items():
        for name in [option] + option_spec.get("aliases", []):
            spec[name] = option_spec
    given = set()
    for token in shlex.split(args[args.index("-a") + 1]) if "-a" in args else []:
        key, sep, value = token.partition("=")
        assert sep, "%s: %s: %r is not key=value" % (doc, command, token)
        assert key in spec, "%s: %s: %s is not an option of %s (options: %s)" % (doc, command, key, module, sorted(spec))
        choices = spec[key].get("choices")
        assert not choices or value in [str(choice) for choice in choices], "%s: %s: %s=%s not in %s" % (doc, command, key, value, choices)
        given.add(key)
    missing = [option for option, option_spec in docs.get("options", {}).items() if option_spec.get("required") and option not in given]
    assert not missing, "%s: %s: required option(s) %s missing" % (doc, command, missing)


def shop_secrets(tmp_path):
    """/etc/minimarket-backup/{vault-password,secrets.yml} as the docs make them: the example, Vault-encrypted."""
    directory = tmp_path / "etc-minimarket-backup"
    directory.mkdir()
    (directory / "vault-password").write_text("test-vault-password\n")
    (directory / "secrets.yml").write_text(open(os.path.join(ROOT, "docs", "examples", "secrets.yml")).read())
    proc = ansible("ansible-vault", "encrypt", "--vault-password-file", str(directory / "vault-password"), str(directory / "secrets.yml"))
    assert proc.returncode == 0, proc.stderr
    return str(directory) + "/"


@pytest.mark.parametrize("doc,command", documented_commands())
def test_documented_command_runs_as_written(doc, command, tmp_path):
    """Every copy-pasteable command parses, names an existing inventory and playbook, and passes syntax-check."""
    if SECRETS_DIR in command:
        command = command.replace(SECRETS_DIR, shop_secrets(tmp_path))
    args = shlex.split(command)
    playbook = [a for a in args if a.startswith(("playbooks/", "awx/"))]
    assert len(playbook) == 1 and os.path.isfile(os.path.join(ROOT, playbook[0])), command
    # The procedures name their environment's inventory; awx/configure.yml runs on localhost against AWX's API.
    if playbook[0].startswith("playbooks/") or "-i" in args:
        assert os.path.isdir(os.path.join(ROOT, args[args.index("-i") + 1])), command
    proc = ansible("ansible-playbook", "--syntax-check", *args[1:])
    assert proc.returncode == 0, "%s: %s\n%s" % (doc, command, proc.stdout + proc.stderr)
    # A misspelt extra variable passes syntax-check and is silently ignored: each one must be read somewhere.
    sources = [os.path.join(ROOT, playbook[0])] + [os.path.join(ROOT, "roles", role, "defaults", "main.yml")
                                                   for role in os.listdir(os.path.join(ROOT, "roles"))]
    read = "".join(open(path, encoding="utf-8").read() for path in sources if os.path.isfile(path))
    for flag, value in zip(args, args[1:]):
        if flag in ("-e", "--extra-vars") and not value.startswith("@"):
            for name in json.loads(value) if value.startswith("{") else [value.partition("=")[0]]:
                assert re.search(r"\{\{[^}]*\b%s\b" % re.escape(name), read), "%s: %s: -e %s is read by no playbook or role" % (doc, command, name)


FAKE_DOCKER = """#!/bin/sh
# Records how it was called; answers 'compose version' as a v2 plugin only when FAKE_V2=1.
echo "$(basename "$0") $*" >> "$FAKE_LOG"
if [ "$(basename "$0")" = docker ] && [ "$1" = compose ] && [ "$2" = version ]; then
  [ "$FAKE_V2" = 1 ] && { echo 2.29.7; exit 0; }
  echo "docker: 'compose' is not a docker command." >&2; exit 1
fi
exit 0
"""


@pytest.mark.parametrize("v2", [True, False], ids=["docker-compose-v2-plugin", "docker-compose-v1"])
def test_compose_command_is_detected(tmp_path, v2):
    """The role drives whichever compose exists, with the environment's project and file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("docker", "docker-compose"):
        (bindir / name).write_text(FAKE_DOCKER)
        (bindir / name).chmod(0o755)
    playbook = tmp_path / "stop.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: minimarket.backup.compose_services\n"
        "      vars:\n        compose_services_action: stop\n        compose_services_names: [dashboard]\n"
        "        compose_services_file: /opt/inventario-retail/docker-compose.production.yml\n"
    )
    log = tmp_path / "calls.log"
    proc = ansible("ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook), env={
        "PATH": "%s:/usr/bin:/bin" % bindir, "FAKE_LOG": str(log), "FAKE_V2": "1" if v2 else "0",
    })
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = log.read_text().splitlines()
    expected = ("docker compose" if v2 else "docker-compose") + \
        " --project-name inventario-retail --file /opt/inventario-retail/docker-compose.production.yml stop dashboard"
    assert calls[-1] == expected, calls
    assert ("docker-compose version --short" in calls) is not v2


def test_schedule_refuses_when_the_jobs_could_not_run(tmp_path):
    cron_file = "minimarket_backup_missing_%d" % os.getpid()
    proc = ansible("ansible-playbook", "-i", "inventories/development", "playbooks/schedule.yml",
                   "-e", "backup_schedule_cron_file=%s" % cron_file,
                   "-e", "minimarket_backup_root=%s" % (tmp_path / "root"), "-e", "minimarket_project_dir=/nonexistent/checkout")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "/nonexistent/checkout/playbooks/backup_database.yml not found on localhost: the cron jobs need" in out
    assert not os.path.exists("/etc/cron.d/%s" % cron_file)
