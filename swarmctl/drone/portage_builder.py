"""Build one job with real portage: ``emerge --buildpkg`` and find the gpkg it wrote.

The job's dependencies come from the binhost as binary packages (``--usepkg
--getbinpkg``); the target itself is always built from source, because
``--usepkg-exclude CATEGORY/PN`` keeps emerge from picking up an already built
binary of it (from the binhost or from this drone's own PKGDIR).

All of emerge's output goes to the job's log file, never into memory; failures are
classified from the exit status and the last part of the log only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from swarmctl.atoms import split_build_id, split_cpv, validate_cpv
from swarmctl.binhost.gpkg import GPKG_SUFFIX
from swarmctl.build_env import BuildUser, as_user, build_environment
from swarmctl.drone.build_root import BuildRoot
from swarmctl.drone.builders import BuildResult, Usage, Watchdog, artifact_for, run_supervised
from swarmctl.drone.preflight import PortagePreflight, PreflightResult
from swarmctl.logtail import tail
from swarmctl.portage_env.prefix import PortagePrefix

logger = logging.getLogger("swarmctl.drone.portage_builder")

#: Bytes read from the end of a failed build's log to classify the failure.
LOG_TAIL_BYTES = 256 * 1024

# Patterns over the tail of emerge's output. Order matters: the first match wins.
# The drone's environment: whatever package it builds fails the same way (never the package's blame).
# A template names the cause from the match's groups; None quotes the matching line.
_DRONE_PATTERNS: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"!!! Your current profile is invalid"), None),
    (re.compile(r"!!! Parse error in '([^']*)'"), None),
    (re.compile(r"make\.conf\", line \d+: .*"), None),  # portage's shlex on a broken make.conf
    (re.compile(r"!!! ARCH is not set"), None),
    (re.compile(r"!!! Repository '[^']*' is missing masters"), None),
    (re.compile(r"No space left on device"), None),
    (re.compile(r"!!! Permission denied"), None),
    (re.compile(r"!!! Invalid PORTAGE_TMPDIR"), None),
    (re.compile(r"BINPKG_COMPRESS unsupported (\S+?)\.? Missing package: (\S+)"),
     "compressor {1} not found (BINPKG_COMPRESS={1}; install {2})"),
    (re.compile(r"CompressorNotFound: (\S+)"), "compressor {1} not found"),
    (re.compile(r"(?:^|[\s:/])((?:[\w.+]+-)*(?:gcc|cc|g\+\+|c\+\+|clang|clang\+\+|make|gmake|ld|ar|as)"
                r"(?:-[\d.]+)?): (?:command )?not found", re.MULTILINE), "{1} not found (toolchain)"),
    (re.compile(r"Failed to create binpkg file"), "portage could not write the binary package"),
)
_DEPENDENCY_PATTERNS = (
    re.compile(r"Failed on (?:SHA1|MD5|SIZE|SHA256|BLAKE2B) verification"),
    re.compile(r"binhost's Packages index lacks"),
    re.compile(r"!!! Couldn't download '([^']*)'"),
    re.compile(r"!!! Fetch failed for ([^,\s]+)"),
    re.compile(r"emerge: there are no binary packages to satisfy \"([^\"]+)\""),
)
_NO_EBUILD = re.compile(r"emerge: there are no (?:ebuilds|binary packages) to satisfy \"([^\"]+)\"")
_MASKED = re.compile(r"!!! All ebuilds that could satisfy \"([^\"]+)\" have been masked")
_PHASE_ERROR = re.compile(r"ERROR: (\S+?)(?:::\S+)? failed \(([a-z_]+) phase\):")
_DIE_MESSAGE = re.compile(r"^\s*\*\s{2,}(\S.*)$")
_PRETEND_LINE = re.compile(r"^\[(ebuild|binary)\s+([^\]]*)\]\s+(\S+?)(?:::(\S+))?(?:\s|$)")


@dataclass(frozen=True)
class PlannedMerge:
    """One line of ``emerge --pretend``: what would be merged and how.

    Attributes:
        cpv: Package version.
        kind: ``ebuild`` (built from source) or ``binary`` (from a binary package).
        flags: The flag letters between the brackets (``N``, ``R``, ``U``...).
        build_id: For a binary, the BUILD_ID portage picked (None otherwise).
    """

    cpv: str
    kind: str
    flags: str
    build_id: int | None = None


class PortageBuilder:
    """Builds a CPV with emerge in a prefix, in a build root (a chroot), or on the host's own portage."""

    name = "portage"

    def __init__(
        self,
        prefix: PortagePrefix | None = None,
        binhost_url: str | None = None,
        *,
        extra_args: Sequence[str] = (),
        watchdog: Watchdog | None = None,
        poll_interval: float = 0.5,
        allow_env: Sequence[str] = (),
        user: BuildUser | None = None,
        min_free_bytes: int = 256 * 1024 * 1024,
        build_root: BuildRoot | None = None,
    ) -> None:
        """Set up the builder.

        Args:
            prefix: The prefix to build in; ``None`` uses the host's portage (emerge from
                PATH, /etc/portage, PKGDIR from ``portageq envvar PKGDIR``).
            binhost_url: Where dependencies come from. With a prefix it defaults to the
                prefix's binrepos.conf URL; on the host it is passed as PORTAGE_BINHOST
                (the host's binrepos.conf must then allow unsigned packages).
            extra_args: Extra emerge arguments appended before the target (e.g.
                ``["--jobs=2"]``).
            watchdog: When a build without output or CPU counts as hung (and is killed).
            poll_interval: How often the abort event and progress are checked.
            allow_env: Variables passed to emerge beyond the allowlist (``drone.build_env``).
            user: Run emerge as this user (the prefix must be handed to it, see
                :func:`swarmctl.portage_env.prefix.hand_over`); prefix builds only.
            min_free_bytes: Free space PKGDIR, PORTAGE_TMPDIR and DISTDIR need to pass preflight.
            build_root: Build in this chroot (swarmctl.drone.build_root) with its own portage
                configuration (its binrepos.conf names the binhost); not with a prefix.
        """
        if build_root is not None and (prefix is not None or user is not None):
            raise ValueError("a build root is used on its own: no prefix, no build user (its FEATURES decide)")
        if user is not None and prefix is None:
            raise ValueError("builds run as another user only in a prefix (the host's portage uses FEATURES=userpriv)")
        if prefix is not None and binhost_url is not None and prefix.binhost_url not in (None, binhost_url):
            raise ValueError("binhost_url differs from the prefix's binrepos.conf; make the prefix with it")
        self.prefix = prefix
        if binhost_url is None and prefix is not None:
            binhost_url = prefix.binhost_url
        self.binhost_url = binhost_url
        self.extra_args = list(extra_args)
        self.watchdog = watchdog
        self.poll_interval = poll_interval
        self.allow_env = list(allow_env)
        self.user = user
        self.min_free_bytes = min_free_bytes
        self.build_root = build_root
        self._pkgdir: Path | None = prefix.pkgdir if prefix is not None else None
        #: MAKEOPTS for each build, set by a drone running several at once (drone/slots.py).
        self.makeopts: str | None = None

    # -- public API ---------------------------------------------------------

    def emerge_argv(self, cpv: str, *, pretend: bool = False) -> list[str]:
        """The emerge command line that builds ``cpv`` (validated first).

        Raises:
            InvalidAtom: ``cpv`` is not a valid CPV.
        """
        cpv = validate_cpv(cpv)
        category, pn, _ = split_cpv(cpv)
        argv = [self._tool("emerge"), "--oneshot", "--color=n", "--nospinner", "--ask=n",
                "--verbose", "--quiet-build=n", "--usepkg", f"--usepkg-exclude={category}/{pn}"]
        if self.binhost_url:
            argv.append("--getbinpkg")
        argv.append("--pretend" if pretend else "--buildpkg")
        argv.extend(self.extra_args)
        argv.append(f"={cpv}")
        return argv

    def env(self) -> dict[str, str]:
        """Environment emerge runs with: the allowlist only (no secret ever reaches a build)."""
        if self.prefix is not None:
            env = self.prefix.env(allow=self.allow_env, user=self.user)
        elif self.build_root is not None:
            env = build_environment(None, self.allow_env)
            env["LC_ALL"] = "C.UTF-8"
            # The root's own configuration: "/" inside (portage from PyPI would take its venv).
            env["PORTAGE_OVERRIDE_EPREFIX"] = "/"
        else:
            env = build_environment(None, self.allow_env)
            env["LC_ALL"] = "C.UTF-8"
            if self.binhost_url:
                env["PORTAGE_BINHOST"] = self.binhost_url
        env["NOCOLOR"] = "true"
        if self.makeopts and "MAKEOPTS" not in env:
            env["MAKEOPTS"] = self.makeopts
        return env

    def plan(self, cpv: str, timeout: float = 300.0) -> list[PlannedMerge]:
        """What building ``cpv`` would merge, in order, without building anything.

        Raises:
            InvalidAtom: ``cpv`` is not a valid CPV.
            RuntimeError: emerge --pretend failed (its last output line is the message).
        """
        argv = self.command(self.emerge_argv(cpv, pretend=True))
        done = subprocess.run(argv, env=self.env(), capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL, cwd=self._cwd(),
                              **as_user(self.user))
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise RuntimeError(lines[-1].strip() if lines else f"emerge --pretend exited {done.returncode}")
        merges = []
        for line in done.stdout.splitlines():
            match = _PRETEND_LINE.match(line.strip())
            if match:
                cpv_text, build_id = split_build_id(match[3]) if match[1] == "binary" else (match[3], None)
                merges.append(PlannedMerge(cpv=cpv_text, kind=match[1], flags=match[2].strip(),
                                           build_id=build_id))
        return merges

    def build(self, cpv: str, log_path: Path, abort: threading.Event) -> BuildResult:
        """Build ``cpv``; see the module docstring. Never raises for build problems.

        Args:
            cpv: The job.
            log_path: emerge's stdout and stderr go here (created or truncated).
            abort: When set, emerge's whole process group is killed (TERM, then KILL)
                and the result is ``aborted`` (fault ``none``: nobody's fault).

        Returns:
            ``ok`` with the gpkg(s) written for exactly this CPV, or the fault; a build
            the watchdog finds without progress is killed and reported as ``hung``.
        """
        try:
            cpv = validate_cpv(cpv)
        except ValueError as exc:
            return BuildResult(ok=False, fault="build", reason=str(exc), artifacts=[])
        try:
            pkgdir = self.pkgdir()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            return BuildResult(ok=False, fault="drone", reason=f"cannot find PKGDIR: {exc}", artifacts=[])
        before = self._candidates(pkgdir, cpv)
        argv = self.command(self.emerge_argv(cpv))
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            log.write(f">>> build-swarm: {' '.join(argv)}\n".encode())
        started = time.monotonic()
        usage = Usage()
        # The build's own directory under PORTAGE_TMPDIR is its disk use (concurrent builds each have theirs).
        workdir = self.prefix.tmpdir / "portage" / cpv if self.prefix is not None else None
        code, problem = run_supervised(argv, log_path, abort, env=self.env(), watchdog=self.watchdog,
                                       poll=self.poll_interval, user=self.user, cwd=self._cwd(), usage=usage,
                                       disk_dir=workdir)
        elapsed = time.monotonic() - started
        with open(log_path, "ab") as log:
            log.write(f"\n>>> build-swarm: {problem or f'exit {code}'} after {elapsed:.1f}s\n".encode())
        if problem == "aborted":
            return BuildResult(ok=False, fault="none", reason=f"build of {cpv} aborted", artifacts=[],
                               aborted=True, usage=usage)
        if problem == "hung":
            return BuildResult(ok=False, fault="hung",
                               reason=f"build of {cpv} made no progress; process group killed", artifacts=[],
                               usage=usage)
        if problem:
            return BuildResult(ok=False, fault="drone", reason=problem, artifacts=[], usage=usage)
        if code != 0:
            fault, reason = classify_failure(cpv, code or 0, tail(log_path, max_bytes=LOG_TAIL_BYTES))
            return BuildResult(ok=False, fault=fault, reason=reason, artifacts=[], usage=usage)
        new = sorted(self._candidates(pkgdir, cpv) - before)
        if not new:
            return BuildResult(ok=False, fault="drone",
                               reason=f"emerge succeeded but wrote no binary package for {cpv} in {pkgdir} "
                               "(is --buildpkg honoured, BINPKG_FORMAT=gpkg?)", artifacts=[], usage=usage)
        return BuildResult(ok=True, fault="none", reason="", artifacts=[artifact_for(p, cpv) for p in new],
                           usage=usage)

    @property
    def build_dir(self) -> Path | None:
        """Where builds take their disk (PORTAGE_TMPDIR), when known."""
        return self.prefix.tmpdir if self.prefix is not None else None

    def preflight(self) -> PreflightResult:
        """Portage, the compressor, a compiler, writable dirs, the repositories (drone/preflight.py)."""
        return PortagePreflight(self, self.min_free_bytes).check()

    def disk_dirs(self) -> dict[str, Path]:
        """Where builds run (PORTAGE_TMPDIR), PKGDIR and DISTDIR: what the drone watches and prunes."""
        if self.prefix is not None:
            return {"build": self.prefix.tmpdir, "pkgdir": self.pkgdir(), "distdir": self.prefix.distdir}
        values = PortagePreflight(self, self.min_free_bytes).portage_vars()
        names = {"build": "PORTAGE_TMPDIR", "pkgdir": "PKGDIR", "distdir": "DISTDIR"}
        return {role: self.host_path(values[var]) for role, var in names.items() if values.get(var)}

    def pkgdir(self) -> Path:
        """The PKGDIR emerge writes to, on this host (asks ``portageq`` without prefix)."""
        if self._pkgdir is None:
            done = subprocess.run(self.command([self._tool("portageq"), "envvar", "PKGDIR"]), env=self.env(),
                                  capture_output=True, text=True, timeout=60, check=False)
            value = done.stdout.strip()
            if done.returncode != 0 or not value:
                raise RuntimeError(f"portageq envvar PKGDIR failed: {done.stderr.strip()[-200:]}")
            self._pkgdir = self.host_path(value)
        return self._pkgdir

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` as it runs: inside the build root when there is one."""
        return self.build_root.wrap(argv) if self.build_root is not None else argv

    def host_path(self, path: str | Path) -> Path:
        """Where a path portage names is on this host (inside the build root when there is one)."""
        return self.build_root.host_path(path) if self.build_root is not None else Path(path)

    # -- helpers -------------------------------------------------------------

    def _cwd(self) -> Path | None:
        # Another user may not be able to enter the drone's working directory.
        return self.prefix.tmpdir if self.user is not None and self.prefix is not None else None

    def _tool(self, name: str) -> str:
        if self.build_root is not None:
            return self.build_root.tool(name)
        return self.prefix.tool(name) if self.prefix is not None else name

    @staticmethod
    def _candidates(pkgdir: Path, cpv: str) -> set[Path]:
        category, pn, pv = split_cpv(cpv)
        directory = pkgdir / category / pn
        pf = f"{pn}-{pv}"
        found = set()
        with contextlib.suppress(FileNotFoundError):
            for entry in directory.iterdir():
                if entry.name.endswith(GPKG_SUFFIX) and split_build_id(entry.name[:-len(GPKG_SUFFIX)])[0] == pf:
                    found.add(entry)
        return found


def classify_failure(cpv: str, returncode: int, tail: str) -> tuple[str, str]:
    """Whose fault a failed emerge is, from its exit code and the end of its log.

    Args:
        cpv: The job's CPV.
        returncode: emerge's exit status (non-zero).
        tail: The end of the log.

    Returns:
        ``(fault, reason)``: fault is ``build`` (the target failed; the breakers decide
        whether drone or package is to blame), ``dependency`` (a dependency could not be
        fetched or built) or ``drone`` (this drone's environment: portage misconfigured, a
        compressor or compiler missing, PKGDIR unwritable; it fails every package alike).
    """
    for pattern, template in _DRONE_PATTERNS:
        match = pattern.search(tail)
        if match:
            cause = template.format(*[match[0], *match.groups()]) if template else _line_of(tail, match)
            return "drone", f"portage misconfigured on this drone: {cause}"
    phase = _last(_PHASE_ERROR, tail)
    if phase is not None:
        failed = phase[1]
        detail = _die_message(tail, phase.end())
        where = f"{phase[2]} phase" + (f": {detail}" if detail else "")
        if failed == cpv:
            return "build", f"{cpv} failed in {where}"
        return "dependency", f"dependency {failed} failed to build ({where})"
    for pattern in _DEPENDENCY_PATTERNS:
        match = pattern.search(tail)
        if match:
            return "dependency", f"dependency could not be fetched: {_line_of(tail, match)}"
    for pattern in (_NO_EBUILD, _MASKED):
        match = pattern.search(tail)
        if match:
            atom = match[1].lstrip("=")
            if atom == cpv:
                return "build", f"{cpv} cannot be built here: {_line_of(tail, match)}"
            return "dependency", f"unsatisfiable dependency: {_line_of(tail, match)}"
    if returncode < 0:
        return "build", f"emerge killed by signal {-returncode}"
    lines = [line.strip() for line in tail.splitlines()
             if line.strip() and not line.startswith(">>> build-swarm:")]
    last = lines[-1] if lines else "no output"
    return "build", f"emerge exited {returncode}: {last[:200]}"


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    match = None
    for match in pattern.finditer(text):  # noqa: B007 - keep the last one
        pass
    return match


def _line_of(text: str, match: re.Match[str]) -> str:
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    return text[start:end if end >= 0 else len(text)].strip().lstrip("!* ").strip()[:200]


def _die_message(text: str, offset: int) -> str:
    for line in text[offset:].splitlines()[1:4]:
        match = _DIE_MESSAGE.match(line)
        if match and not match[1].startswith(("Call stack", "If you need support")):
            return match[1].strip()[:160]
    return ""
