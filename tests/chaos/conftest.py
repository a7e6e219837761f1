"""The ``chaos`` marker: select the chaos tests with ``-m chaos`` (or leave them out with ``-m 'not chaos'``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: random faults on a real swarm on test-bed hosts (needs root)")
