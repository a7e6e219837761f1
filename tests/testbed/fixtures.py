"""pytest fixtures for the multi-host test bed.

Use from a conftest.py: ``from tests.testbed.fixtures import testbed, testbed_factory  # noqa: F401``.

``testbed`` is a fresh 3-host :class:`~tests.testbed.TestBed`; ``testbed_factory(n, prefix=...)``
makes beds of other sizes (all torn down at the end of the test). Where the bed cannot run
(not root, ``ip``/``sshd``/``unshare`` missing) the test is skipped with the reason, unless
``SWARM_REQUIRE_ALL=1`` (CI), where it fails instead: CI must never pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from . import TestBed, missing_requirements


def require_testbed() -> None:
    """Skip (or, with SWARM_REQUIRE_ALL=1, fail) the current test when no bed can run here."""
    reason = missing_requirements()
    if reason is None:
        return
    if os.environ.get("SWARM_REQUIRE_ALL") == "1":
        pytest.fail(f"SWARM_REQUIRE_ALL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def testbed_factory() -> Iterator[Callable[..., TestBed]]:
    """Make started test beds: ``testbed_factory(n_hosts, prefix="sw", **options)``."""
    require_testbed()
    beds: list[TestBed] = []

    def make(n_hosts: int = 3, prefix: str = "sw", **options: object) -> TestBed:
        bed = TestBed(n_hosts, prefix, **options)  # type: ignore[arg-type]
        beds.append(bed)
        return bed.start()

    try:
        yield make
    finally:
        for bed in reversed(beds):
            bed.close()


@pytest.fixture
def testbed(testbed_factory: Callable[..., TestBed]) -> TestBed:
    """A started 3-host test bed (h1..h3 at 10.77.0.11-13), torn down after the test."""
    return testbed_factory(3)
