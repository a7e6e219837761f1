"""Tests with real portage: their fixtures live in tests/portage/fixtures.py (tests/security uses them too)."""

from tests.portage.fixtures import drone, pkgdir, sample_repo, serve  # noqa: F401 - fixtures
