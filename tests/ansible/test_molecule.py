"""Each role's molecule scenario (no driver: test-bed hosts), run as `molecule test`.

The scenarios that run swarmctl daemons (their molecule.yml reads SWARM_MOLECULE_WHEEL) install it
from a wheel of this checkout, built once per session (the ``swarm_wheel`` fixture).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.testbed.fixtures import require_testbed

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
#: The wheel and its dependencies' wheels (a tar), for the scenarios' swarm_wheel/swarm_wheelhouse.
WHEEL_ENV, WHEELHOUSE_ENV = "SWARM_MOLECULE_WHEEL", "SWARM_MOLECULE_WHEELHOUSE"
#: A scenario waits for other test beds on the subnet before its own run (up to 10 minutes).
SCENARIO_TIMEOUT = 900

pytestmark = [pytest.mark.root, pytest.mark.molecule, pytest.mark.slow]


def test_every_role_has_a_scenario() -> None:
    roles = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())
    assert roles and set(roles) <= set(SCENARIOS)


@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, request: pytest.FixtureRequest) -> None:
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
    if WHEEL_ENV in (ROOT / "molecule" / scenario / "molecule.yml").read_text():
        wheel, wheelhouse = request.getfixturevalue("swarm_wheel")
        env.update({WHEEL_ENV: str(wheel), WHEELHOUSE_ENV: str(wheelhouse)})
    molecule = os.path.join(bindir, "molecule")
    code, output = _run([molecule, "test", "-s", scenario], env, SCENARIO_TIMEOUT)
    if code is None:  # timed out: its whole process group is gone; tear its bed down too
        _run([molecule, "destroy", "-s", scenario], env, 120)
    assert code == 0, f"molecule test -s {scenario} failed ({code}):\n{output[-6000:]}"


def _run(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run molecule in a session of its own; on timeout kill all of it (exit code None).

    Killing molecule alone would leave its ansible-playbook and the test bed it is starting.
    """
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output
    except subprocess.TimeoutExpired as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = exc.output or ""
        return None, partial if isinstance(partial, str) else partial.decode(errors="replace")
