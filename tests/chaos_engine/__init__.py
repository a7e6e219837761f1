"""The chaos engine: a real swarm on test-bed hosts, random faults, and the checks after them.

One home for the harness used by the short CI run (tests/chaos) and the soak (bench/soak.py):
it imports the test bed (tests.testbed) and the product; nothing here imports from bench/ or
from the tests that use it.
"""

from tests.chaos_engine.harness import (
    KINDS,
    ChaosRun,
    Planned,
    asdict_plan,
    ci_plan,
    format_report,
    skip_reason,
    soak_plan,
)
from tests.chaos_engine.proxy import ReplyDropper

__all__ = ["KINDS", "ChaosRun", "Planned", "ReplyDropper", "asdict_plan", "ci_plan", "format_report",
           "skip_reason", "soak_plan"]
