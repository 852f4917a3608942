"""The table of docs/modules/README.md stays true: one name per concept in every module's argument_spec and docs.

Each module's ``argument_spec`` is taken from the ``AnsibleModule`` its ``main()`` builds (stopped right there),
its documented options from ``DOCUMENTATION`` with its doc fragments merged as Ansible merges them. A row of the
table says: every module listed has the option under this name, with no alias the row does not list; no other
module has it; and no module uses one of the row's aliases as an option's own name (``*`` marks an old name that
stays a separate option, mutually exclusive with the concept's option, in the listed modules only).
"""

import importlib
import os
import re

import pytest
import yaml

from tests.pg_fixtures import run_module

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLE = os.path.join(ROOT, "docs", "modules", "README.md")
MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, "plugins", "modules")) if name.endswith(".py"))
PACKAGE = "ansible_collections.minimarket.backup.plugins"


class Built(Exception):
    """Raised by the stand-in AnsibleModule once main() has built the module's interface."""

    def __init__(self, kwargs):
        super().__init__("built")
        self.kwargs = kwargs


def interface(name, monkeypatch):
    """The keyword arguments ``main()`` gives AnsibleModule (argument_spec, mutually_exclusive, ...)."""
    module = importlib.import_module("%s.modules.%s" % (PACKAGE, name))

    def stand_in(**kwargs):
        raise Built(kwargs)
    monkeypatch.setattr(module, "AnsibleModule", stand_in)
    with pytest.raises(Built) as built:
        module.main()
    return built.value.kwargs


def documented(name):
    """{option: doc} of DOCUMENTATION with its fragments (the module's own option wins, as in Ansible)."""
    module = importlib.import_module("%s.modules.%s" % (PACKAGE, name))
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = {}
    for fragment in doc.get("extends_documentation_fragment") or []:
        parts = fragment.split(".")
        assert parts[:2] == ["minimarket", "backup"], fragment
        holder = importlib.import_module("%s.doc_fragments.%s" % (PACKAGE, parts[2])).ModuleDocFragment
        options.update(yaml.safe_load(getattr(holder, parts[3] if len(parts) > 3 else "DOCUMENTATION")).get("options") or {})
    options.update(doc.get("options") or {})
    return options


def names(cell):
    """The backquoted names of a cell, each with whether it is starred (an old name kept as its own option)."""
    return [(match.group(1), bool(match.group(2))) for match in re.finditer(r"`([^`]+)`(\*)?", cell)]


def table():
    """The rows of the vocabulary table: (concept, options, aliases, modules)."""
    with open(TABLE, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    start = lines.index("| Concept | Option name | Aliases | Modules |")
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        concept, option, aliases, modules = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append((concept, [n for n, unused in names(option)], names(aliases),
                     [m.strip() for m in modules.split(",") if m.strip()]))
    return rows


ROWS = table()
OPTION_ROWS = [row for row in ROWS if not row[1][0].startswith("state: ")]
STATE_ROWS = [row for row in ROWS if row[1][0].startswith("state: ")]


@pytest.fixture(scope="module")
def modules():
    with pytest.MonkeyPatch.context() as monkeypatch:
        return dict((name, (interface(name, monkeypatch), documented(name))) for name in MODULES)


def test_the_table_is_there_and_names_only_real_modules():
    assert len(OPTION_ROWS) >= 10 and STATE_ROWS
    for concept, unused, unused_aliases, listed in ROWS:
        assert listed, "row %r lists no module" % concept
        assert set(listed) <= set(MODULES), "row %r names modules that do not exist: %s" % (concept, set(listed) - set(MODULES))


@pytest.mark.parametrize("row", OPTION_ROWS, ids=[row[0] for row in OPTION_ROWS])
def test_each_concept_has_one_name_in_every_module(row, modules):
    concept, options, aliases, listed = row
    allowed = set(name for name, starred in aliases if not starred)
    for name in MODULES:
        spec, docs = modules[name][0]["argument_spec"], modules[name][1]
        for option in options:
            if name not in listed:
                assert option not in spec, "%s has %s (%s) but the table does not list it: add it to the row" % (name, option, concept)
                continue
            assert option in spec, "%s has no option %s (%s): name it so, or fix the table" % (name, option, concept)
            assert option in docs, "%s does not document %s" % (name, option)
            spec_aliases = set(spec[option].get("aliases") or [])
            assert spec_aliases <= allowed, "%s: %s has aliases %s the table does not list" % (name, option, spec_aliases - allowed)
            assert spec_aliases == set(docs[option].get("aliases") or []), "%s: %s's documented aliases differ" % (name, option)


@pytest.mark.parametrize("row", OPTION_ROWS, ids=[row[0] for row in OPTION_ROWS])
def test_no_module_uses_an_old_name_as_an_option(row, modules):
    concept, options, aliases, listed = row
    for name in MODULES:
        kwargs = modules[name][0]
        for alias, starred in aliases:
            if alias not in kwargs["argument_spec"]:
                continue
            assert starred and name in listed, (
                "%s names %s %r: the table's name is %s (keep %r as an alias)" % (name, concept, alias, options[0], alias))
            exclusive = [set(group) for group in kwargs.get("mutually_exclusive") or []]
            assert all(set([alias, option]) in exclusive for option in options), (
                "%s keeps the old %r beside %s: make them mutually exclusive" % (name, alias, options))


@pytest.mark.parametrize("row", STATE_ROWS, ids=[row[0] for row in STATE_ROWS])
def test_states_have_one_name(row, modules):
    concept, options, aliases, listed = row
    value = options[0].split(": ", 1)[1]
    old = set(name.split(": ", 1)[1] for name, unused in aliases)
    for name in MODULES:
        choices = modules[name][0]["argument_spec"].get("state", {}).get("choices") or []
        if name in listed:
            assert value in choices, "%s has no state %s (%s)" % (name, value, concept)
        else:
            assert value not in choices and not old & set(choices), "%s: %s is not in the table's row %r" % (name, choices, concept)


def test_every_alias_of_every_module_is_in_the_table(modules):
    """An alias no row lists is a second name nobody wrote down."""
    listed = set()
    for unused, unused_options, aliases, unused_modules in OPTION_ROWS:
        listed.update(name for name, starred in aliases if not starred)
    for name in MODULES:
        for option, spec in modules[name][0]["argument_spec"].items():
            unknown = set(spec.get("aliases") or []) - listed
            assert not unknown, "%s: %s has aliases %s that docs/modules/README.md does not list" % (name, option, unknown)


FIX = "set backup_dir and environment (the inventory's minimarket_environment, for example production)"
MISSING = [
    ("pg_split_dump", dict(state="dump", db="shop", backup_dir="/nonexistent/database"),
     "environment not set: state=dump writes database_<environment>_<YYYYMMDD_HHMMSS> files into backup_dir; " + FIX),
    ("pg_split_dump", dict(state="restore", db="shop", src="latest", environment="production"),
     "backup_dir not set: src=latest picks the newest complete database backup of an environment in backup_dir; "
     "set backup_dir and environment, or give src the path of a backup"),
    ("docker_volume_archive", dict(state="archive", volumes=["v"], environment="production"),
     "backup_dir not set: state=dump writes volumes_<environment>_<YYYYMMDD_HHMMSS> files into backup_dir; " + FIX),
    ("service_check", dict(state="live", compose_project="shop", checks=[], src="latest"),
     "backup_dir and environment not set: src=latest picks the newest complete volumes backup of an environment in "
     "backup_dir; set backup_dir and environment, or give src the path of a backup"),
    ("pitr", dict(state="status", config="/nonexistent/barman.conf", server="pg", textfile_dir="/nonexistent/textfile"),
     "environment not set: state=status writes minimarket_backup_pitr_<environment>.prom into textfile_dir; "
     "set environment (the inventory's minimarket_environment, for example production)"),
    ("backup_prune", dict(path="/nonexistent/database"),
     "kind and environment not set: backup_prune prunes one set; set kind and environment"),
]


@pytest.mark.parametrize("name, args, message", MISSING, ids=["%s %s" % (m[0], sorted(m[1])) for m in MISSING])
def test_a_missing_option_fails_in_one_line_naming_it_before_anything_runs(name, args, message):
    """No silent default: the module stops first thing, naming what is missing and the fix."""
    result = run_module(args, module=os.path.join(ROOT, "plugins", "modules", name + ".py"))
    assert result["_rc"] == 1 and result["msg"] == message, result


def action_groups_table():
    """{group: (modules, options)} from the README's table of the action groups."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    start = lines.index("| group | modules | options they share |")
    groups = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        group, listed, options = [cell.strip() for cell in line.strip("|").split("|")]
        groups[names(group)[0][0].split(".")[-1]] = (set(n for n, unused in names(listed)), set(n for n, unused in names(options)))
    return groups


def test_each_action_group_holds_exactly_the_modules_that_take_its_options(modules):
    """ansible-core hands every option of a group's module_defaults to every module of the group, and a module fails on
    an option it does not take; a module that takes them all but is left out silently gets none of them."""
    with open(os.path.join(ROOT, "meta", "runtime.yml"), encoding="utf-8") as handle:
        runtime = yaml.safe_load(handle)["action_groups"]
    documented_groups = action_groups_table()
    assert set(runtime) == set(documented_groups), "README's table of action groups and meta/runtime.yml differ"
    for group, members in runtime.items():
        listed, options = documented_groups[group]
        assert set(members) == listed, "group %s: meta/runtime.yml has %s, README lists %s" % (group, sorted(members), sorted(listed))
        takers = set(name for name in MODULES if options <= set(modules[name][0]["argument_spec"]))
        assert set(members) == takers, "group %s (%s): the modules taking all of them are %s, the group holds %s" % (
            group, ", ".join(sorted(options)), sorted(takers), sorted(members))
