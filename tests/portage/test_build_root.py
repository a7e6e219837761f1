"""The portage builder in a build root (a chroot): builds, and the drone host's own system is untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmctl.config import load_config
from swarmctl.drone.build_root import BuildRoot
from swarmctl.drone.configured import builder_from_config
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.exceptions import ConfigError
from swarmctl.portage_env.prefix import make_prefix

pytestmark = pytest.mark.portage

#: What a host's system is judged by: a build root must change none of it.
HOST_DIRS = (Path("/usr/share"), Path("/usr/bin"), Path("/etc"), Path("/var/db"))


@pytest.fixture
def chroot(tmp_path: Path, sample_repo: Path) -> Iterator[BuildRoot]:
    """A small system root made from this host: its /usr an overlay (writes land in the test's
    directory), its own /etc and /var, portage configured for "/" inside, the venv, the Python
    it runs on and the sample tree bound at their own paths."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a build root needs root (mount namespaces, chroot) and util-linux's unshare")
    root = tmp_path / "root"
    upper, work = tmp_path / "usr-upper", tmp_path / "usr-work"
    for directory in (root / "usr", upper, work, root / "tmp", root / "var/tmp"):
        directory.mkdir(parents=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        if Path("/", name).is_symlink():
            (root / name).symlink_to(os.readlink(Path("/", name)))
    (root / "etc").mkdir()
    for name in ("passwd", "group", "hosts", "ld.so.cache"):
        if Path("/etc", name).is_file():
            shutil.copyfile(Path("/etc", name), root / "etc" / name)
    if Path("/etc/alternatives").is_dir():  # Debian's cc -> /etc/alternatives/cc
        shutil.copytree("/etc/alternatives", root / "etc/alternatives", symlinks=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir=/usr,upperdir={upper},workdir={work}", str(root / "usr")], check=True)
    try:
        venv = Path(sys.prefix)
        make_prefix(root, sample_repo, venv=venv, seen_as=Path("/"))
        yield BuildRoot(root, binds=(venv, Path(sys.base_prefix), sample_repo), tool_dir=venv / "bin")
    finally:
        subprocess.run(["umount", "-l", str(root / "usr")], check=False)


def _listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Names, modes and mtimes one level down (enough to see a merge: it adds files and directories)."""
    found = {}
    for entry in os.scandir(directory) if directory.is_dir() else ():
        st = entry.stat(follow_symlinks=False)
        found[entry.name] = (st.st_mode, int(st.st_mtime))
    return found


def test_builds_in_the_root_and_never_touch_the_host(chroot: BuildRoot, tmp_path: Path) -> None:
    before = {d: _listing(d) for d in HOST_DIRS}
    builder = PortageBuilder(build_root=chroot)
    assert builder.preflight().ok, builder.preflight().reason
    result = builder.build("app-misc/greeter-1", tmp_path / "greeter.log", threading.Event())
    assert result.ok, f"{result.fault}: {result.reason}\n{(tmp_path / 'greeter.log').read_text()[-3000:]}"
    assert [a.cpv for a in result.artifacts] == ["app-misc/greeter-1"]
    assert result.artifacts[0].path.is_relative_to(chroot.path / "var/cache/binpkgs")
    assert builder.disk_dirs()["pkgdir"] == chroot.path / "var/cache/binpkgs"  # what the drone prunes
    assert (chroot.path / "usr/bin/greeter").is_file()  # merged into the root...
    assert (chroot.path / "var/db/pkg/dev-libs/libgreet-1").is_dir()
    assert not Path("/usr/bin/greeter").exists() and not Path("/usr/share/greet").exists()  # ...not the host
    assert {d: _listing(d) for d in HOST_DIRS} == before
    mounts = Path("/proc/self/mountinfo").read_text()
    assert f"{chroot.path}/proc" not in mounts and f"{chroot.path}/dev" not in mounts  # none left behind


def test_the_live_system_only_when_asked(tmp_path: Path) -> None:
    config = load_config(environ={}).with_overrides(drone__builder="portage")
    with pytest.raises(ConfigError, match="live system") as refused:
        builder_from_config(config)
    assert "\n" not in str(refused.value)
    live = builder_from_config(config.with_overrides(drone__live_root=True))
    assert isinstance(live, PortageBuilder) and live.prefix is None and live.build_root is None
    with pytest.raises(ConfigError, match="not a system root"):
        builder_from_config(config.with_overrides(drone__build_root=str(tmp_path)))
