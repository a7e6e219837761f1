"""Drone preflight: can this drone's builder build at all? Checked before it claims anything.

A drone without its compressor, its compiler or a writable PKGDIR fails every job it
touches, and each failure looks like the package's. The daemon runs its builder's
preflight at start and every few minutes; while it fails the drone claims nothing and
reports ``misconfigured`` with the reason, and ``swarmctl doctor`` on that host prints
the fix (each :class:`Problem` carries it).
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from swarmctl import prereqs
from swarmctl.build_env import BuildUser, as_user

if TYPE_CHECKING:
    from swarmctl.drone.portage_builder import PortageBuilder

#: BINPKG_COMPRESS value -> the program portage runs for it.
COMPRESSORS = {"zstd": "zstd", "xz": "xz", "bzip2": "bzip2", "gzip": "gzip", "lz4": "lz4", "lzip": "lzip",
               "lzop": "lzop", "brotli": "brotli"}
#: Variables the portage preflight reads from the drone's effective portage configuration.
PORTAGE_VARS = ("BINPKG_COMPRESS", "PKGDIR", "PORTAGE_TMPDIR", "DISTDIR", "CC")


@dataclass(frozen=True)
class Problem:
    """One reason this drone cannot build, and what fixes it."""

    what: str
    fix: str
    #: Only free space is short: the drone shows ``low-disk`` and waits, it is not misconfigured.
    space: bool = False


@dataclass(frozen=True)
class PreflightResult:
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def reason(self) -> str:
        """One line for the fleet view: every problem, most important first."""
        return "; ".join(p.what for p in self.problems)


def tool_problem(tool: str, path: str, why: str) -> Problem | None:
    """A Problem when ``tool`` is not on ``path`` (the builder's PATH)."""
    if shutil.which(tool, path=path):
        return None
    fix = (f"install it: {prereqs.install_command([tool])}" if tool in prereqs.PACKAGES
           else f"install {tool} or put it on the drone's PATH")
    return Problem(f"{tool} not found ({why})", fix)


def directory_problem(name: str, directory: Path, min_free_bytes: int,
                      user: BuildUser | None = None) -> Problem | None:
    """A Problem when ``directory`` cannot be created, written (by ``user``, else this process),
    or has less than ``min_free_bytes`` free."""
    who = user.name if user is not None else "the drone's user"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if user is None:
            # A real write: it fails on a read-only mount or a full disk like a build would.
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".swarm-preflight-"):
                pass
        elif subprocess.run(["test", "-w", str(directory)], cwd="/", env={"PATH": os.defpath}, check=False,
                            timeout=30, **as_user(user)).returncode != 0:
            raise PermissionError(13, "Permission denied")
    except (OSError, subprocess.SubprocessError) as exc:
        return Problem(f"{name} {directory} is not writable by {who} ({getattr(exc, 'strerror', None) or exc})",
                       f"make {directory} writable by {who}, or point {name} elsewhere in make.conf",
                       space=getattr(exc, "errno", None) == errno.ENOSPC)
    free = shutil.disk_usage(directory).free
    if free < min_free_bytes:
        return Problem(f"{name} {directory} is full ({free // (1024 * 1024)} MiB free, "
                       f"{min_free_bytes // (1024 * 1024)} MiB needed)",
                       f"free space on {directory} (e.g. eclean-pkg, or remove old build dirs)", space=True)
    return None


class CommandPreflight:
    """The command builder needs only its program."""

    def __init__(self, template: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.template = list(template)
        self.env = env

    def check(self) -> PreflightResult:
        path = (self.env or os.environ).get("PATH", os.defpath)
        problem = tool_problem(self.template[0], path, "the drone.command program") if self.template else None
        return PreflightResult([problem] if problem else [])


class PortagePreflight:
    """What a portage drone needs before it can build anything.

    portage itself (emerge, portageq, a configuration it can parse), the compressor its
    BINPKG_COMPRESS names, a C compiler, writable PKGDIR, PORTAGE_TMPDIR and DISTDIR with
    room to spare, and every configured repository on disk.
    """

    def __init__(self, builder: PortageBuilder, min_free_bytes: int, timeout: float = 120.0) -> None:
        self.builder = builder
        self.min_free_bytes = min_free_bytes
        self.timeout = timeout

    def check(self) -> PreflightResult:
        env = self.builder.env()
        path = env.get("PATH", os.defpath)
        problems: list[Problem] = []
        # In a build root the tools and directories are looked up inside it.
        path = os.pathsep.join(str(self.builder.host_path(p)) for p in path.split(os.pathsep) if p)
        for tool in ("emerge", "portageq"):
            program = self.builder._tool(tool)
            if shutil.which(str(self.builder.host_path(program)) if "/" in program else program, path=path) is None:
                problems.append(Problem(f"portage's {tool} not found ({program})",
                                        "install portage (pip install portage, or emerge sys-apps/portage)"))
        if problems:
            return PreflightResult(problems)
        values, problem = self._portage_vars(env)
        if problem is not None:
            return PreflightResult([problem])
        compress = (values.get("BINPKG_COMPRESS") or "zstd").split()[0]
        compressor = COMPRESSORS.get(compress)
        if compressor is None:
            problems.append(Problem(f"BINPKG_COMPRESS={compress} is not a compressor portage knows",
                                    f"set BINPKG_COMPRESS to one of {', '.join(COMPRESSORS)} in make.conf"))
        else:
            found = tool_problem(compressor, path, f"BINPKG_COMPRESS={compress}")
            if found:
                problems.append(found)
        compiler = shlex.split(values.get("CC") or "gcc")[0]
        found = tool_problem(compiler, path, "C compiler" + (" (CC)" if values.get("CC") else ""))
        if found:
            problems.append(found)
        for name in ("PKGDIR", "PORTAGE_TMPDIR", "DISTDIR"):
            if values.get(name):
                found = directory_problem(name, self.builder.host_path(values[name]), self.min_free_bytes,
                                          self.builder.user)
                if found:
                    problems.append(found)
        problems += self._repositories(env)
        return PreflightResult(problems)

    def portage_vars(self) -> dict[str, str]:
        """PORTAGE_VARS as the builds see them (empty when portage does not run)."""
        values, problem = self._portage_vars(self.builder.env())
        return {} if problem is not None else values

    def _portageq(self, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        # As the builds run: as the build user (when there is one), from a directory it can enter.
        return subprocess.run(self.builder.command([self.builder._tool("portageq"), *args]), env=dict(env),
                              capture_output=True, text=True, timeout=self.timeout, check=False,
                              stdin=subprocess.DEVNULL, cwd=self.builder._cwd(), **as_user(self.builder.user))

    def _portage_vars(self, env: Mapping[str, str]) -> tuple[dict[str, str], Problem | None]:
        try:
            done = self._portageq(env, "envvar", "-v", *PORTAGE_VARS)
        except (OSError, subprocess.SubprocessError) as exc:
            return {}, Problem(f"portage does not run: {exc}", "reinstall portage")
        values = {}
        for line in done.stdout.splitlines():
            name, sep, value = line.partition("=")
            if sep and name in PORTAGE_VARS:
                values[name] = " ".join(shlex.split(value)) if value else ""
        complaint = _complaint(done.stderr)
        # portageq exits 1 when any variable is empty (CC usually is): only no answer is a failure.
        if complaint or (done.returncode != 0 and not values):
            line = complaint or _last_line(done.stderr) or f"portageq exited {done.returncode}"
            return {}, Problem(f"portage does not work: {line}",
                               "fix the portage configuration it names (make.conf, repos.conf, make.profile); "
                               "emerge --info shows the same error")
        return values, None

    def _repositories(self, env: Mapping[str, str]) -> list[Problem]:
        root = env.get("PORTAGE_OVERRIDE_EPREFIX") or "/"
        try:
            done = self._portageq(env, "repos_config", root)
        except (OSError, subprocess.SubprocessError) as exc:
            return [Problem(f"portage does not run: {exc}", "reinstall portage")]
        problems = []
        locations = [line.partition("=")[2].strip() for line in done.stdout.splitlines()
                     if line.strip().startswith("location")]
        for location in locations:
            if not (self.builder.host_path(location) / "profiles").is_dir():
                problems.append(Problem(f"repository {location} is missing",
                                        "sync the repository (emaint sync -a) or fix its location in repos.conf"))
        if not locations:
            problems.append(Problem("no repository is configured", "configure one in repos.conf and sync it"))
        return problems


def _complaint(stderr: str) -> str:
    """portage's own first '!!!' line (a config it could not use), if any."""
    for line in stderr.splitlines():
        if line.startswith("!!!"):
            return line.lstrip("! ").strip()[:200]
    return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # A parse error's location line beats the traceback's last line.
    for line in lines:
        if "make.conf" in line or "make.defaults" in line or "repos.conf" in line:
            return line[:200]
    return lines[-1][:200] if lines else ""
