"""Builders: how a drone turns a CPV into a built package.

A builder writes all build output to the job's log file, honours the abort
event (killing its whole process group), and reports a BuildResult whose
``fault`` tells the breaker whose fault a failure is.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import psutil

from swarmctl.atoms import split_cpv
from swarmctl.build_env import BuildUser, as_user, build_environment
from swarmctl.drone.preflight import CommandPreflight, PreflightResult
from swarmctl.exceptions import ConfigError, InvalidAtom
from swarmctl.targets import DEFAULT_TARGET

#: ok / the build failed / a dependency could not be fetched / drone misconfigured / hung.
FAULTS = ("none", "build", "dependency", "drone", "hung")


@dataclass(frozen=True)
class Artifact:
    """A file a build produced, with what the binhost will check."""

    path: Path
    cpv: str
    sha256: str
    size: int


@dataclass
class Usage:
    """What a build used: its process tree's resident memory (now, and the peak) and build disk."""

    rss: int = 0
    peak_rss: int = 0
    peak_disk: int = 0

    def as_dict(self) -> dict[str, int]:
        """The history's fields (only what was measured)."""
        return {k: v for k, v in (("peak_rss", self.peak_rss), ("disk", self.peak_disk)) if v}


#: The usage of the build each thread supervises now (a drone runs several; see drone/slots.py).
_LIVE: dict[int, Usage] = {}
#: Called with the pid of each build process a thread starts (the drone's CPU groups, cpu_shares.py).
_ON_START: dict[int, Callable[[int], None]] = {}


@contextmanager
def on_process_start(hook: Callable[[int], None] | None) -> Iterator[None]:
    """Within this block, ``hook(pid)`` is called for each build process this thread starts."""
    if hook is None:
        yield
        return
    _ON_START[threading.get_ident()] = hook
    try:
        yield
    finally:
        _ON_START.pop(threading.get_ident(), None)


def live_usage(thread: threading.Thread | None) -> Usage | None:
    """The usage so far of the build ``thread`` supervises, if any."""
    return _LIVE.get(thread.ident or 0) if thread is not None else None


@dataclass
class BuildResult:
    ok: bool
    fault: str = "none"
    reason: str = ""
    artifacts: list[Artifact] = field(default_factory=list)
    aborted: bool = False
    usage: Usage = field(default_factory=Usage)


class Builder(Protocol):
    def build(self, cpv: str, log_path: Path, abort: threading.Event) -> BuildResult: ...

    def preflight(self) -> PreflightResult:
        """Whether this drone can build at all (checked before it claims; see drone/preflight.py)."""
        ...


def sha256_file(path: Path, chunk: int = 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def artifact_for(path: Path, cpv: str) -> Artifact:
    return Artifact(path=path, cpv=cpv, sha256=sha256_file(path), size=path.stat().st_size)


@dataclass
class Watchdog:
    """When a build counts as hung: no log output and no CPU for ``idle`` seconds.

    ``on_hung(True)`` is called when that starts, ``on_hung(False)`` if it recovers;
    past ``kill`` seconds of no progress the build is killed.
    """

    idle: float = 1800.0
    kill: float = 3600.0
    on_hung: Callable[[bool], None] | None = None


def _dies_with_parent(argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    """Have the build killed when the drone dies (SIGKILL, crash), instead of living on unseen.

    util-linux's setpriv sets the parent-death signal and execs the build in place (no shell,
    no preexec_fn, which is unsafe beside the heartbeat thread). Without setpriv, unchanged.
    A program that cannot be found raises FileNotFoundError here, as Popen would.
    """
    path = (env or os.environ).get("PATH", os.defpath)
    program = shutil.which(argv[0], path=path)
    if program is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", argv[0])
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", program, *argv[1:]] if setpriv else [program, *argv[1:]]


def _tree_cpu(proc: psutil.Process) -> float:
    total = 0.0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            times = p.cpu_times()
            total += times.user + times.system
    except psutil.Error:
        pass
    return total


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue  # exited between listing and reading
    except psutil.Error:
        pass
    return total


def dir_size(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it is not there); files vanishing meanwhile are skipped."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_supervised(argv: Sequence[str], log_path: Path, abort: threading.Event,
                   env: Mapping[str, str] | None = None, cwd: Path | None = None,
                   watchdog: Watchdog | None = None, poll: float = 0.5,
                   user: BuildUser | None = None, usage: Usage | None = None,
                   disk_dir: Path | None = None, disk_every: float = 10.0) -> tuple[int | None, str]:
    """Run argv (never a shell) with output to log_path, watching abort and progress.

    ``env`` is the build's whole environment (default: the allowlisted part of this
    process's, see :mod:`swarmctl.build_env`); ``user`` runs it as another user.
    ``usage`` is filled with the process tree's memory (sampled every poll) and the size of
    ``disk_dir`` (every ``disk_every`` seconds), the build's working space.

    Returns (exit code, "") when it finished, (None, "aborted"), (None, "hung") or
    (None, "cannot start: ...").
    """
    watchdog = watchdog or Watchdog()
    env = build_environment() if env is None else env
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(_dies_with_parent(argv, env), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                                    start_new_session=True, **as_user(user))
        except OSError as exc:
            log.write(f"swarmctl: cannot start {argv[0]}: {exc.strerror or exc}\n".encode())
            return None, f"cannot start {argv[0]}: {exc.strerror or exc}"
        hook = _ON_START.get(threading.get_ident())
        if hook is not None:
            hook(proc.pid)
        try:
            ps = psutil.Process(proc.pid)
        except psutil.Error:
            ps = None
        usage = usage if usage is not None else Usage()
        _LIVE[threading.get_ident()] = usage
        try:
            return _supervise(proc, ps, log, log_path, abort, watchdog, poll, usage, disk_dir, disk_every)
        finally:
            _LIVE.pop(threading.get_ident(), None)


def _supervise(proc: subprocess.Popen[bytes], ps: psutil.Process | None, log: BinaryIO, log_path: Path,
               abort: threading.Event, watchdog: Watchdog, poll: float, usage: Usage, disk_dir: Path | None,
               disk_every: float) -> tuple[int | None, str]:
    last_size, last_cpu, last_progress, hung = -1, -1.0, time.monotonic(), False
    disk_due = time.monotonic()
    while True:
        try:
            code = proc.wait(timeout=poll)
            return code, ""
        except subprocess.TimeoutExpired:
            pass
        if ps is not None:
            usage.rss = _tree_rss(ps)
            usage.peak_rss = max(usage.peak_rss, usage.rss)
        if disk_dir is not None and time.monotonic() >= disk_due:
            usage.peak_disk = max(usage.peak_disk, dir_size(disk_dir))
            disk_due = time.monotonic() + disk_every
        if abort.is_set():
            _kill_group(proc)
            return None, "aborted"
        size = log_path.stat().st_size
        cpu = _tree_cpu(ps) if ps else 0.0
        now = time.monotonic()
        if size != last_size or cpu > last_cpu + 0.05:
            last_size, last_cpu, last_progress = size, cpu, now
            if hung:
                hung = False
                if watchdog.on_hung:
                    watchdog.on_hung(False)
        idle = now - last_progress
        if not hung and idle >= watchdog.idle:
            hung = True
            if watchdog.on_hung:
                watchdog.on_hung(True)
        if idle >= watchdog.kill:
            log.write(f"\nswarmctl: no progress for {idle:.0f} s; killing the build\n".encode())
            log.flush()
            _kill_group(proc)
            return None, "hung"


def substitute(template: Sequence[str], cpv: str, target: str = DEFAULT_TARGET) -> list[str]:
    """Fill {cpv} {category} {pn} {pv} {target} into each argv item (plain replacement, no format())."""
    category, pn, pv = split_cpv(cpv)
    values = {"{cpv}": cpv, "{category}": category, "{pn}": pn, "{pv}": pv, "{target}": target}
    argv = []
    for item in template:
        for placeholder, value in values.items():
            item = item.replace(placeholder, value)
        argv.append(item)
    return argv


class CommandBuilder:
    """Runs a configured argv template per job; a non-zero exit fails the job."""

    def __init__(self, template: Sequence[str], watchdog: Watchdog | None = None,
                 allow_env: Sequence[str] = (), target: str = DEFAULT_TARGET) -> None:
        if not template:
            raise ConfigError("drone.command: the command builder needs an argv template")
        self.template = list(template)
        self.target = target  # the build target this builder builds for ({target} in the template)
        self.watchdog = watchdog
        self.allow_env = list(allow_env)
        #: MAKEOPTS for each build, set by a drone running several at once (drone/slots.py).
        self.makeopts: str | None = None
        #: Where each build gets a fresh working directory (its cwd, measured as its build disk and
        #: removed afterwards); None: the drone's own cwd, unmeasured. The drone sets its state dir's.
        self.work_dir: Path | None = None

    @property
    def build_dir(self) -> Path | None:
        """Where builds take their disk (the working directories), when set."""
        return self.work_dir

    def preflight(self) -> PreflightResult:
        return CommandPreflight(self.template, build_environment(None, self.allow_env)).check()

    def build(self, cpv: str, log_path: Path, abort: threading.Event) -> BuildResult:
        try:
            argv = substitute(self.template, cpv, self.target)
        except InvalidAtom as exc:  # the job's fault (as with the portage builder), never the drone's
            return BuildResult(ok=False, fault="build", reason=str(exc))
        env = build_environment(None, self.allow_env)
        if self.makeopts and "MAKEOPTS" not in env:
            env["MAKEOPTS"] = self.makeopts
        usage = Usage()
        cwd = self._fresh_dir(cpv)
        try:
            code, problem = run_supervised(argv, log_path, abort, env=env, watchdog=self.watchdog, usage=usage,
                                           cwd=cwd, disk_dir=cwd)
            if cwd is not None:  # its size at the end counts too (a build shorter than one sample)
                usage.peak_disk = max(usage.peak_disk, dir_size(cwd))
        finally:
            if cwd is not None:
                shutil.rmtree(cwd, ignore_errors=True)
        if problem == "aborted":
            return BuildResult(ok=False, fault="none", reason="aborted", aborted=True, usage=usage)
        if problem == "hung":
            return BuildResult(ok=False, fault="hung", reason="no progress; killed", usage=usage)
        if problem:
            return BuildResult(ok=False, fault="drone", reason=problem, usage=usage)
        if code != 0:
            return BuildResult(ok=False, fault="build", reason=f"command exited {code}", usage=usage)
        return BuildResult(ok=True, usage=usage)

    def _fresh_dir(self, cpv: str) -> Path | None:
        """An empty working directory for one build of ``cpv`` (several may run at once)."""
        if self.work_dir is None:
            return None
        path = self.work_dir / f"{cpv.replace('/', '_')}.{threading.get_ident()}"
        shutil.rmtree(path, ignore_errors=True)  # left by a build the drone died in
        path.mkdir(parents=True)
        return path
