"""swarmctl.drone.portage_builder: real emerge builds, artifacts, failure classes, abort."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from swarmctl.drone.portage_builder import PortageBuilder, classify_failure
from swarmctl.overlay import BROKEN_CPV
from swarmctl.portage_env.prefix import PortagePrefix, make_prefix
from tests.portage.helpers import copy_overlay_with

pytestmark = pytest.mark.portage

SLEEPER = """EAPI=8
DESCRIPTION="Hangs in compile (test only)"
HOMEPAGE="https://example.invalid"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"
src_compile() { sleep 3600 swarm-sleeper-marker; }
"""


def test_artifacts_are_exactly_the_target(drone) -> None:
    result = drone.results["app-misc/greeter-1"]
    assert [a.cpv for a in result.artifacts] == ["app-misc/greeter-1"]
    assert result.artifacts[0].path.parent == drone.prefix.pkgdir / "app-misc/greeter"
    # the dependencies were built too (no binhost here) but are not this job's artifacts
    assert drone.gpkg("dev-libs/libgreet-1").is_file()
    log = (drone.logs / "app-misc_greeter-1.log").read_text()
    assert log.startswith(">>> build-swarm: ") and "--usepkg-exclude=app-misc/greeter" in log


def test_emerge_argv_is_a_list_and_validates(drone) -> None:
    argv = PortageBuilder(drone.prefix, None).emerge_argv("app-misc/hello-1")
    assert argv[0].endswith("/emerge") and argv[-1] == "=app-misc/hello-1"
    assert "--buildpkg" in argv and "--usepkg" in argv and "--getbinpkg" not in argv
    with pytest.raises(ValueError):
        PortageBuilder(drone.prefix).emerge_argv("app-misc/hello-1; rm -rf /")


def test_broken_package_is_a_build_fault(drone, tmp_path: Path) -> None:
    result = drone.builder.build(BROKEN_CPV, tmp_path / "broken.log", threading.Event())
    assert not result.ok and result.fault == "build" and not result.artifacts
    assert result.reason == "app-broken/broken-1 failed in compile phase: broken on purpose"
    assert "broken on purpose" in (tmp_path / "broken.log").read_text()


def test_unknown_package_is_a_build_fault(drone, tmp_path: Path) -> None:
    result = drone.builder.build("app-misc/nothere-1", tmp_path / "n.log", threading.Event())
    assert (result.ok, result.fault) == (False, "build")
    assert "app-misc/nothere-1" in result.reason


def test_drone_without_portage_is_a_drone_fault(drone, tmp_path: Path) -> None:
    broken = PortagePrefix(root=drone.prefix.root, repo=drone.prefix.repo, repo_name="swarm-sample",
                           venv=tmp_path / "no-venv")
    result = PortageBuilder(broken).build("app-misc/hello-1", tmp_path / "x.log", threading.Event())
    assert (result.ok, result.fault) == (False, "drone") and "emerge" in result.reason


def test_abort_kills_the_whole_process_group(sample_repo: Path, tmp_path: Path) -> None:
    repo = copy_overlay_with(sample_repo, tmp_path / "repo", {"app-broken/sleeper/sleeper-1.ebuild": SLEEPER})
    builder = PortageBuilder(make_prefix(tmp_path / "e", repo), poll_interval=0.1)
    abort = threading.Event()
    threading.Timer(2.0, abort.set).start()
    started = time.monotonic()
    result = builder.build("app-broken/sleeper-1", tmp_path / "sleep.log", abort)
    assert result.aborted and not result.ok and time.monotonic() - started < 20
    left = subprocess.run(["pgrep", "-f", "swarm-sleeper-marker"], capture_output=True, text=True).stdout
    assert left == ""


def test_plan_reports_what_would_be_built(drone) -> None:
    plan = drone.builder.plan("app-misc/hello-extras-1")
    assert [(p.cpv, p.kind) for p in plan][-1] == ("app-misc/hello-extras-1", "ebuild")


@pytest.mark.parametrize(("tail", "fault", "needle"), [
    ("!!! Couldn't download 'app-misc/hello/hello-1-1.gpkg.tar'. Aborting.\n", "dependency", "download"),
    (">>> Emerging binary (1 of 2) dev-libs/libgreet-1\n!!! Failed on SHA1 verification\n", "dependency",
     "SHA1"),
    ("!!! Your current profile is invalid.\n", "drone", "profile"),
    ("!!! Parse error in '/p/etc/portage/make.conf': line 3\n", "drone", "make.conf"),
    (" * ERROR: dev-libs/libgreet-1::swarm-sample failed (compile phase):\n *   compile failed\n",
     "dependency", "dev-libs/libgreet-1"),
    (" * ERROR: app-misc/greeter-1::swarm-sample failed (install phase):\n *   boom\n", "build", "install"),
    ('emerge: there are no ebuilds to satisfy "dev-libs/missing".\n', "dependency", "dev-libs/missing"),
    ("something odd\n", "build", "exited 1"),
])
def test_classify_failure(tail: str, fault: str, needle: str) -> None:
    got_fault, reason = classify_failure("app-misc/greeter-1", 1, tail)
    assert got_fault == fault and needle in reason and "\n" not in reason
