"""The portage drone's preflight and failure classification, with real portage and real builds.

A tool is hidden from portage by giving it a PATH without that tool (tests/hidetools.py).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.portage_env.prefix import make_prefix
from tests.hidetools import path_without

pytestmark = pytest.mark.portage

#: What hides each tool: the names portage or the sample ebuilds could find it by.
HIDE = {"zstd": ("zstd",), "gcc": ("gcc", "cc")}


def test_a_working_drone_passes(drone) -> None:  # type: ignore[no-untyped-def]
    result = drone.builder.preflight()
    assert result.ok, result.reason


@pytest.mark.parametrize("tool", ["zstd", "gcc"])
def test_a_missing_tool_is_named_with_its_fix(drone, tool: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", path_without(HIDE[tool], tmp_path / "bin"))
    result = drone.builder.preflight()
    assert [p.what.split()[:3] for p in result.problems] == [[tool, "not", "found"]]
    assert tool in result.problems[0].fix and "install" in result.problems[0].fix


def test_broken_make_conf_missing_repository_and_full_disk(sample_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(sample_repo, repo)
    prefix = make_prefix(tmp_path / "e", repo)
    make_conf = prefix.config_dir / "make.conf"
    good = make_conf.read_text()
    make_conf.write_text(good + 'CFLAGS="-O2\n')
    broken = PortageBuilder(prefix).preflight()
    assert not broken.ok and "portage does not work" in broken.reason and "make.conf" in broken.reason

    make_conf.write_text(good)
    full = PortageBuilder(prefix, min_free_bytes=1 << 60).preflight()
    assert {p.what.split()[0] for p in full.problems} == {"PKGDIR", "PORTAGE_TMPDIR", "DISTDIR"}
    assert all("is full" in p.what for p in full.problems)

    shutil.rmtree(repo)
    gone = PortageBuilder(prefix).preflight()
    assert not gone.ok and str(repo) in gone.reason


def test_a_missing_compressor_is_the_drones_fault_not_the_packages(
        drone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", path_without(HIDE["zstd"], tmp_path / "bin"))
    result = drone.builder.build("app-misc/hello-1", tmp_path / "hello.log", threading.Event())
    assert "Failed to create binpkg file" in (tmp_path / "hello.log").read_text()
    assert (result.ok, result.fault) == (False, "drone")
    assert "compressor zstd not found" in result.reason


def test_a_missing_compiler_fails_no_dependency(sample_repo: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # greeter builds its dependency libgreet (C) in the same emerge: without gcc, libgreet's compile
    # phase fails, which used to read as "dependency dev-libs/libgreet-1 failed to build".
    builder = PortageBuilder(make_prefix(tmp_path / "e", sample_repo))
    monkeypatch.setenv("PATH", path_without(HIDE["gcc"], tmp_path / "bin"))
    result = builder.build("app-misc/greeter-1", tmp_path / "greeter.log", threading.Event())
    assert "dev-libs/libgreet-1::swarm-sample failed (compile phase)" in (tmp_path / "greeter.log").read_text()
    assert (result.ok, result.fault) == (False, "drone")
    assert "gcc not found" in result.reason
