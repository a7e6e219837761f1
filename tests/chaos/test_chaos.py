"""The short chaos run CI does (about 2-3 minutes): every fault kind at least once, on a schedule
drawn from a seeded RNG, against a real swarm on test-bed hosts; then the checks of
tests/chaos_engine (every job built and published exactly once by the external witness's count,
nothing stuck, no stale completion applied, the rogue grounded and healed, churn 0), with every
other drone running two builds at once.

The seed is SWARM_CHAOS_SEED (default 7); the report is printed (``pytest -s`` shows it) and
written to the test's temp dir as report.json. The long form is ``bench/soak.py``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from swarmctl.config import load_config
from tests.chaos_engine import ChaosRun, ci_plan, format_report
from tests.testbed.fixtures import require_testbed

pytestmark = [pytest.mark.chaos, pytest.mark.root, pytest.mark.slow]


@pytest.mark.timeout(1200)  # a few minutes of chaos, plus waiting for another test bed to go away
def test_swarm_survives_random_faults(tmp_path: Path) -> None:
    require_testbed()
    seed = int(os.environ.get("SWARM_CHAOS_SEED", "7"))
    offline_after = load_config(environ={}).orchestrator.offline_after
    plan = ci_plan(random.Random(seed), offline_after)
    # Every other drone runs two builds at once (the one behind the reply-dropping proxy too).
    run = ChaosRun(tmp_path / "chaos", plan, drones=4, seed=seed, min_jobs=200, open_target=60,
                   final_jobs=40, build_ms=(200, 500), slots=(1, 2))
    report = run.execute()
    text = format_report(report)
    print(text)
    assert report["jobs"] >= 200
    assert not report["problems"], text
