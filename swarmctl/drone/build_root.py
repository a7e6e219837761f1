"""A drone's build root: a chroot the portage builder runs emerge in, never the live system.

A build root is a directory holding a Gentoo system of its own (unpacked from a stage3
tarball, or copied from the drone's system): emerge merges every package it builds
there, so a night of builds never merges a compiler or a C library into the drone
itself. Each command runs in a private mount namespace (``unshare --mount``) that

* mounts ``/proc`` and binds ``/dev`` and ``/sys`` into the root,
* binds the configured host directories (the ebuild trees, DISTDIR, ...) at the same
  path inside, so the root's ``repos.conf`` and ``make.conf`` name the host's paths,
* then ``chroot``\\s into the root and ``exec``\\s the command.

The mounts live only as long as that namespace (the command's process): nothing is left
mounted on the host after a build, an abort or a crash, and the host never sees them.
The root's own portage configuration (``/etc/portage`` inside) names the swarm's binhost
as its binrepo: docs/deploy-gentoo.md says how to make and refresh one, and the
swarm_drone role does it from a stage3 (roles/swarm_drone/tasks/build_root.yml).

Run as a module, this is the helper that does the mounts inside the namespace:
``unshare --mount --propagation private python -m swarmctl.drone.build_root ROOT
[--bind DIR]... -- COMMAND...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from swarmctl.exceptions import ConfigError

#: Kernel file systems every build root gets: (what, where inside, mount arguments).
SYSTEM_MOUNTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("proc", "proc", ("-t", "proc")),
    ("/dev", "dev", ("--rbind",)),
    ("/sys", "sys", ("--rbind",)),
)
#: Files a root needs to resolve names and users as its host does (copied in when missing).
_HOST_FILES = ("etc/resolv.conf",)


@dataclass(frozen=True)
class BuildRoot:
    """A chroot to build in.

    Attributes:
        path: The root directory on the host.
        binds: Host directories bound at the same path inside (trees, DISTDIR...).
        tool_dir: Where portage's launchers are inside the root; None: the root's PATH.
    """

    path: Path
    binds: tuple[Path, ...] = ()
    tool_dir: Path | None = None
    python: str = field(default=sys.executable)

    def check(self) -> None:
        """Raise ConfigError (one line) when the root or a bound directory is not there."""
        if not (self.path / "etc").is_dir():
            raise ConfigError(f"drone.build_root: {self.path} is not a system root (no etc/); make it from a "
                              "stage3 (docs/deploy-gentoo.md, 'Build roots')")
        for source in self.binds:
            if not source.is_absolute() or not source.is_dir():
                raise ConfigError(f"drone.build_root_binds: {source} is not an absolute path to a directory")
        for tool in ("unshare", "mount", "chroot"):
            if shutil.which(tool) is None:
                raise ConfigError(f"drone.build_root: {tool} not found (util-linux and coreutils are needed)")

    def tool(self, name: str) -> str:
        """A portage launcher as the command inside the root names it."""
        return str(self.tool_dir / name) if self.tool_dir is not None else name

    def host_path(self, inside: Path | str) -> Path:
        """Where a path inside the root is on the host (bound directories are where they are)."""
        inside = Path(inside)
        if any(inside == b or b in inside.parents for b in self.binds):
            return inside
        return self.path / inside.relative_to(inside.anchor)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the root, in a mount namespace of its own (see the module docstring)."""
        binds = [arg for source in self.binds for arg in ("--bind", str(source))]
        return [shutil.which("unshare") or "unshare", "--mount", "--propagation", "private", self.python,
                "-m", "swarmctl.drone.build_root", str(self.path), *binds, "--", *argv]


def enter(root: Path, binds: Sequence[Path], argv: Sequence[str]) -> None:  # pragma: no cover - in the namespace
    """Mount the system file systems and ``binds`` into ``root``, chroot there, exec ``argv``.

    Runs inside a private mount namespace: the mounts vanish with it.
    """
    for what, inside, how in SYSTEM_MOUNTS:
        (root / inside).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *how, what, str(root / inside)], check=True)
    for source in binds:
        target = root / source.relative_to("/")
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    for relative in _HOST_FILES:
        with_host = Path("/") / relative
        if with_host.is_file() and not (root / relative).exists():
            shutil.copyfile(with_host, root / relative)
    os.chroot(root)
    os.chdir("/")
    os.execvp(argv[0], list(argv))


def main(args: Sequence[str] | None = None) -> int:  # pragma: no cover - in the namespace
    parser = argparse.ArgumentParser(prog="python -m swarmctl.drone.build_root",
                                     description="Run a command in a build root (inside `unshare --mount`).")
    parser.add_argument("root", type=Path)
    parser.add_argument("--bind", type=Path, action="append", default=[])
    parser.add_argument("command", nargs="+")
    ns = parser.parse_args(args)
    try:
        enter(ns.root.absolute(), ns.bind, ns.command)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"build root {ns.root}: {exc}", file=sys.stderr)
        return 125
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
