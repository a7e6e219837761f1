"""Each role's molecule scenario (no driver: test-bed hosts), run as `molecule test`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testbed.fixtures import require_testbed

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))

pytestmark = [pytest.mark.root, pytest.mark.molecule, pytest.mark.slow]


def test_every_role_has_a_scenario() -> None:
    roles = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())
    assert roles and set(roles) <= set(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str) -> None:
    require_testbed()
    bindir = os.path.dirname(sys.executable)
    build = ROOT / "build"
    env = dict(
        os.environ,
        PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        LC_ALL="C.UTF-8",
        MOLECULE_EPHEMERAL_DIRECTORY=str(build / "molecule" / scenario),
        ANSIBLE_LOCAL_TEMP=str(build / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
    )
    proc = subprocess.run(
        [os.path.join(bindir, "molecule"), "test", "-s", scenario],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"molecule test -s {scenario} failed:\n{(proc.stdout + proc.stderr)[-6000:]}"
