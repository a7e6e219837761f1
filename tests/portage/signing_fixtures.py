"""Fixtures for signed binhosts: a signing keyring in a short, private directory.

GnuPG puts its agent's socket in the home; pytest's tmp paths can be too long for a
Unix socket name, so homes live in a short ``mkdtemp`` directory. Every agent started
for a home is stopped at teardown.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmctl.binhost.signing import Keyring

UID = "swarm test <binhost@test.invalid>"


class Keyrings:
    """Makes signing keyrings and cleans every one up."""

    def __init__(self) -> None:
        self.made: list[tuple[Path, Keyring]] = []

    def __call__(self, with_key: bool = True, days: int = 365) -> Keyring:
        base = Path(tempfile.mkdtemp(prefix="swk-", dir="/tmp"))
        keyring = Keyring(base / "home")
        self.made.append((base, keyring))
        if with_key:
            keyring.init(UID, days)
        return keyring

    def cleanup(self) -> None:
        for base, keyring in self.made:
            keyring.stop_agent()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def keyrings() -> Iterator[Keyrings]:
    made = Keyrings()
    yield made
    made.cleanup()


@pytest.fixture
def keyring(keyrings: Keyrings) -> Keyring:
    return keyrings()


def world_traversable_dir(prefix: str) -> Path:
    """A directory nobody can reach (portage's verification drops to nobody as root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path
