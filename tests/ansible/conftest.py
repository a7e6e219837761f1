"""Fixtures for the Ansible tests: the multi-host test bed and the repo paths."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.testbed.fixtures import testbed, testbed_factory  # noqa: E402,F401
