"""The roles' files as the role tests read them: the role list, their YAML, every task of a task list (helpers, no fixtures)."""
import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLES_DIR = os.path.join(ROOT, "roles")
ROLES = sorted(name for name in os.listdir(ROLES_DIR) if os.path.isdir(os.path.join(ROLES_DIR, name)))
TASK_BLOCKS = ("block", "rescue", "always")


def load_yaml(path, optional=False):
    """A YAML file's data, {} when it is empty; with ``optional`` also when it does not exist (a role may have no defaults)."""
    if optional and not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def walk_tasks(tasks):
    """Every task of a task list, the tasks inside block, rescue and always included: a check must not miss a nested one."""
    for task in tasks or []:
        yield task
        for key in TASK_BLOCKS:
            yield from walk_tasks(task.get(key))
