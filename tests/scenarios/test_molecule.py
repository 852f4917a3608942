"""Molecule scenarios (delegated driver, this host, the real inventario-retail stack) as tests."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIOS = sorted(
    name for name in os.listdir(os.path.join(ROOT, "molecule")) if os.path.isfile(os.path.join(ROOT, "molecule", name, "molecule.yml"))
)


def test_the_default_scenario_exists():
    assert "default" in SCENARIOS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1", PY_COLORS="0")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "molecule"), "test", "-s", scenario],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, "molecule test -s %s exited %d\n%s\n%s" % (scenario, proc.returncode, proc.stdout[-30000:], proc.stderr[-5000:])
