"""A default documented in a role's meta/argument_specs.yml is the value the role really starts with.

Ansible takes a role variable's value from defaults/main.yml; argument_specs' `default` is only what
`ansible-doc` and the role READMEs show an operator. Here each defaults/main.yml is rendered as an inventory that
sets nothing would render it (the `minimarket_*` variables undefined, backup_set's defaults visible to the roles
that depend on it), and every documented default must equal the rendered value. A value that depends on the play
(the playbook or inventory directory, the kind a role is called for) cannot be rendered here: its documented
default must then be a description, such as `C(backup_set_root)/C(backup_offsite_kind)`, not a concrete value
that holds for one case only.
"""

import os
import posixpath
import re

import jinja2
import jinja2.nativetypes
import pytest

from tests.role_files import ROLES, ROLES_DIR, load_yaml, walk_tasks

# A description names variables or placeholders (C(name), <environment>) or is a sentence.
DESCRIPTIVE = re.compile(r"C\(|<[a-z_]+>| ")


def dependencies(role):
    meta = load_yaml(os.path.join(ROLES_DIR, role, "meta", "main.yml"), optional=True)
    return [dep["role"] if isinstance(dep, dict) else dep for dep in meta.get("dependencies") or []]


class Undefined(jinja2.ChainableUndefined, jinja2.StrictUndefined):
    """As Ansible's: `undefined.attribute | default(x)` gives x, anything else done with an undefined fails."""


def environment():
    env = jinja2.nativetypes.NativeEnvironment(undefined=Undefined)
    env.filters["bool"] = lambda value: value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    env.filters["regex_replace"] = lambda value, pattern, replacement="": re.sub(pattern, replacement, value)
    env.filters["dirname"] = posixpath.dirname
    return env


def rendered_defaults(role):
    """{name: value} for every default of the role that renders without the play; unrenderable ones are left out."""
    raw = {}
    for dep in dependencies(role):
        raw.update(load_yaml(os.path.join(ROLES_DIR, dep.split(".")[-1], "defaults", "main.yml"), optional=True))
    own = load_yaml(os.path.join(ROLES_DIR, role, "defaults", "main.yml"), optional=True)
    raw.update(own)
    env = environment()
    values, pending = {}, dict(raw)
    while pending:
        progress = False
        for name, value in list(pending.items()):
            if not isinstance(value, str) or "{{" not in value:
                values[name] = value
            else:
                try:
                    result = env.from_string(value).render(values)
                except (jinja2.UndefinedError, TypeError):
                    # TypeError: a filter such as dirname was given an undefined play variable.
                    continue
                if isinstance(result, jinja2.Undefined):
                    # default() of an undefined play variable (inventory_dir...) renders to the undefined itself.
                    continue
                values[name] = result
            del pending[name]
            progress = True
        if not progress:
            break
    return dict((name, values[name]) for name in own if name in values), set(own) - set(values)


def documented_defaults(role):
    specs = load_yaml(os.path.join(ROLES_DIR, role, "meta", "argument_specs.yml"))["argument_specs"]
    for entry_point, spec in specs.items():
        for name, option in (spec.get("options") or {}).items():
            if "default" in option:
                yield entry_point, name, option["default"]


@pytest.mark.parametrize("role", ROLES)
def test_documented_defaults_are_the_real_ones(role):
    values, unrenderable = rendered_defaults(role)
    wrong = []
    for entry_point, name, documented in documented_defaults(role):
        if name in values:
            if documented != values[name]:
                wrong.append("%s (%s): documented %r, defaults/main.yml gives %r" % (name, entry_point, documented, values[name]))
        elif name in unrenderable and not (isinstance(documented, str) and DESCRIPTIVE.search(documented)):
            wrong.append("%s (%s): documented %r, but its value depends on the play: describe it (C(variable)...)"
                         % (name, entry_point, documented))
    assert not wrong, "roles/%s/meta/argument_specs.yml: %s" % (role, "; ".join(wrong))


def test_the_check_renders_defaults():
    """The rendering above must see through the backup_set dependency, or every check would pass vacuously."""
    values = rendered_defaults("database_backup")[0]
    assert values["database_backup_dest"] == "/var/backups/minimarket/database"
    assert values["database_backup_retention"] == {"days": 30, "keep_last": 3}
    assert values["database_backup_login_port"] == 5432


def test_each_inventory_setting_is_defaulted_in_one_place():
    """An inventory variable's fallback is written once (usually in backup_set); other roles read the role variable."""
    where = {}
    for role in ROLES:
        path = os.path.join(ROLES_DIR, role, "defaults", "main.yml")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                for name in set(re.findall(r"\b(minimarket_[a-z0-9_]+)(?:\.[a-z_]+)? \| default\(", handle.read())):
                    where.setdefault(name, []).append(role)
    twice = ["%s (%s)" % (name, ", ".join(roles)) for name, roles in sorted(where.items()) if len(roles) > 1]
    assert not twice, "inventory settings defaulted in more than one role: %s; give each one backup_set_* variable" % "; ".join(twice)


def included_roles(tasks):
    for task in walk_tasks(tasks):
        for module in ("ansible.builtin.include_role", "ansible.builtin.import_role"):
            if isinstance(task.get(module), dict):
                yield task[module]["name"].split(".")[-1]


def test_roles_included_by_roles_see_the_shared_defaults():
    """A role included from another role resolves the variables it is given with its own dependencies' defaults only.

    pitr passes `pitr_db_name` (= `backup_set_db`) to destructive_confirm: without backup_set among
    destructive_confirm's dependencies that is `'backup_set_db' is undefined` at the confirmation of a recovery.
    """
    missing = set()
    for role in ROLES:
        directory = os.path.join(ROLES_DIR, role, "tasks")
        for file_name in sorted(os.listdir(directory)):
            for included in included_roles(load_yaml(os.path.join(directory, file_name))):
                if included != "backup_set" and "minimarket.backup.backup_set" not in dependencies(included):
                    missing.add("%s (included by %s/tasks/%s)" % (included, role, file_name))
    assert not missing, "roles without backup_set in meta/main.yml dependencies: %s" % "; ".join(sorted(missing))
