"""Fixtures the Ansible tests share: swarmctl as a wheel, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ansible.helpers import build_wheel


@pytest.fixture(scope="session")
def swarm_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A wheel of this checkout and a tar of its dependencies' wheels (``swarm_wheel``, ``swarm_wheelhouse``)."""
    return build_wheel(tmp_path_factory.mktemp("wheel") / "dist")
