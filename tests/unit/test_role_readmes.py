"""Each role's README documents exactly the interface its meta/argument_specs.yml declares.

Ansible checks a role's variables against argument_specs when the role starts; the README is what an operator
reads. These tests keep the two from drifting apart: every option of every entry point is named in the README,
and no name with the role's prefix appears there that the role does not have. Only the role's own prefix is
checked in that direction: `minimarket_*` names in a README are inventory variables and metric names, which no
argument_specs lists.
"""

import os
import re

import pytest
import yaml

from tests.role_files import ROLES, ROLES_DIR, load_yaml, walk_tasks

SET_FACT = ("ansible.builtin.set_fact", "set_fact")


def readme(role):
    path = os.path.join(ROLES_DIR, role, "README.md")
    if not os.path.isfile(path):
        pytest.fail("roles/%s has no README.md: write one (what it changes, variables, an example), see roles/README.md" % role)
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def options(role):
    """Every option name of every entry point, as {name: [entry points]}."""
    specs = load_yaml(os.path.join(ROLES_DIR, role, "meta", "argument_specs.yml"))["argument_specs"]
    found = {}
    for entry_point, spec in specs.items():
        for name in spec.get("options") or {}:
            found.setdefault(name, []).append(entry_point)
    return found


def task_names(tasks):
    """Names a task list makes for its caller to read: registered results, set_fact facts, tags."""
    names = set()
    for task in walk_tasks(tasks):
        if isinstance(task.get("register"), str):
            names.add(task["register"])
        tags = task.get("tags") or []
        names.update([tags] if isinstance(tags, str) else tags)
        for module in SET_FACT:
            if isinstance(task.get(module), dict):
                names.update(key for key in task[module] if key != "cacheable")
    return names


def role_outputs(role):
    names = set()
    for sub in ("tasks", "handlers"):
        directory = os.path.join(ROLES_DIR, role, sub)
        if os.path.isdir(directory):
            for file_name in sorted(os.listdir(directory)):
                if file_name.endswith((".yml", ".yaml")):
                    names |= task_names(load_yaml(os.path.join(directory, file_name)))
    return names


@pytest.mark.parametrize("role", ROLES)
def test_every_option_is_documented(role):
    text = readme(role)
    missing = ["%s (%s)" % (name, ", ".join(entry_points)) for name, entry_points in options(role).items()
               if not re.search(r"\b%s\b" % re.escape(name), text)]
    assert not missing, "roles/%s/README.md does not mention %s: add them to its variables table" % (role, "; ".join(missing))


@pytest.mark.parametrize("role", ROLES)
def test_no_unknown_role_variable_is_documented(role):
    # A path or file name (playbooks/pitr_status.yml) is not a variable.
    mentioned = set(re.findall(r"(?<![\w/.-])(%s_\w+)(?![\w-]|\.\w)" % re.escape(role), readme(role)))
    unknown = sorted(mentioned - set(options(role)) - role_outputs(role))
    assert not unknown, (
        "roles/%s/README.md names %s, which is no option in meta/argument_specs.yml and nothing the role registers, "
        "sets or tags: fix the name or declare the option" % (role, ", ".join(unknown)))


@pytest.mark.parametrize("role", ROLES)
def test_relative_links_resolve(role):
    base = os.path.join(ROLES_DIR, role)
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme(role))
    broken = [t for t in targets if "://" not in t and not os.path.exists(os.path.normpath(os.path.join(base, t)))]
    assert not broken, "roles/%s/README.md links to missing files: %s" % (role, ", ".join(broken))


@pytest.mark.parametrize("role", ROLES)
def test_yaml_examples_parse(role):
    for block in re.findall(r"^```yaml\n(.*?)^```", readme(role), flags=re.M | re.S):
        try:
            yaml.safe_load(block)
        except yaml.YAMLError as exc:
            pytest.fail("roles/%s/README.md has an example that is not YAML: %s" % (role, exc))


@pytest.mark.parametrize("role", ROLES)
def test_roles_index_links_the_readme(role):
    with open(os.path.join(ROLES_DIR, "README.md"), encoding="utf-8") as handle:
        index = handle.read()
    assert "](%s/README.md)" % role in index, "roles/README.md does not link roles/%s/README.md: link it in the table" % role
