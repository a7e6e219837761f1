"""The drone daemon: heartbeat, claim, build, report; graceful on SIGTERM.

- Heartbeats run in their own thread, so a long build never looks offline.
- It runs up to ``drone.slots`` builds at once (drone/slots.py), each with its own lease, log
  and heartbeat entry; it claims only jobs whose expected peak memory fits what it has free.
- First SIGTERM/SIGINT: stop claiming, finish the current builds, report, exit 0.
  Second: abort every build, give the jobs back to the queue, exit.
- Reports (built/failed/released) are retried through Redis outages; the lease
  they carry makes a late one harmless (refused as stale).
- Preflight: the builder's prerequisites are checked at start and every few minutes;
  a drone that fails them claims nothing and reports ``misconfigured`` until they pass.
- Disk: a drone below ``drone.min_free_gb`` in its build dir or PKGDIR claims nothing and reports
  ``low-disk`` (no failure, no grounding) until space returns; between builds it deletes what the
  binhost accepted and keeps PKGDIR, DISTDIR and its logs within their limits (drone/disk.py).
- A claim whose reply is lost is retried as the same request and gets the same job;
  heartbeats list the jobs held and the last settled claim request, so the orchestrator
  can give back a job this drone provably never received (docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import psutil
import redis

from swarmctl import __version__, keys
from swarmctl.backoff import delays
from swarmctl.config import Config
from swarmctl.connection import TRANSIENT
from swarmctl.drone.builders import Builder, BuildResult, on_process_start
from swarmctl.drone.cpu_shares import CpuGroups
from swarmctl.drone.disk import GIB, DroneDisk
from swarmctl.drone.logs import BuildLogs
from swarmctl.drone.slots import Current, Slots, cores, makeopts
from swarmctl.events import Events
from swarmctl.exceptions import Grounded, NotEnrolled
from swarmctl.logtail import tail
from swarmctl.queue import Claim, Queue, new_session
from swarmctl.registry import DroneRegistry
from swarmctl.targets import drone_targets
from swarmctl.tree import TreeGate, tree_revision

log = logging.getLogger("swarmctl.drone")

#: Free bytes in the drone's state dir below which its disk counts as full.
LOW_DISK_BYTES = 1024 * 1024


class Publisher(Protocol):
    """Delivers a successful build (e.g. uploads it to the binhost, which marks it built).

    Returns "ok" (built), "stale" (the job is no longer ours), "retry-later" (give the
    job back unbuilt: the upload failed, which is not the package's fault) or "failed"
    (the binhost refused the package for good: a failed build on this drone).
    """

    def publish(self, claim: Claim, result: BuildResult, duration: float) -> str: ...


def machine_id() -> str | None:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return Path(path).read_text().strip() or None
        except OSError:
            continue
    return None


def _fs_total_mb(path: Path) -> int:
    """Size in MiB of the file system holding ``path`` (its nearest existing parent); 0: unknown."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).total // (1024 * 1024)
        except OSError:
            continue
    return 0


class DroneDaemon:
    """One build machine's worker loop."""

    def __init__(self, client: redis.Redis, config: Config, name: str, token: str, builder: Builder,
                 state_dir: Path, publisher: Publisher | None = None,
                 builders: Mapping[str, Builder] | None = None) -> None:
        """``builders`` maps each build target this drone builds to its builder (swarmctl.targets);
        without it, ``builder`` builds the targets drone.targets declares (else the farm's only one)."""
        self.redis = client
        self.config = config
        self.name = name
        self.token = token
        self.builder = builder
        self.builders: dict[str, Builder] = dict(builders) if builders else {
            t: builder for t in drone_targets(config.targets, config.drone.targets)}
        self.targets = list(self.builders)
        self.publisher = publisher
        self.queue = Queue(client, config)
        self.registry = DroneRegistry(client, config)
        cfg = config.drone
        self.state_dir = state_dir
        self.logs = BuildLogs(state_dir / "logs", cfg.log_keep_jobs, cfg.log_max_bytes)
        self.stopping = threading.Event()
        self.aborting = threading.Event()
        self.finished = threading.Event()
        # What it declares (drone.cores, memory_mb, build_disk_gb; else what the host has) is what
        # its heartbeat reports and its claims are fitted to.
        self.cores = cfg.cores or cores()
        slots = cfg.slots or max(1, self.cores // 4)
        self.slots = Slots(slots)
        #: Its builds' shared repositories: one checkout at a time, never under a running build.
        self.trees = TreeGate()
        if slots > 1 and hasattr(builder, "makeopts"):
            builder.makeopts = makeopts(self.cores)
        #: One CPU group per build, weighted by chain (drone/cpu_shares.py); None: pooled evenly.
        self.cpu_groups = CpuGroups(cfg.cpu_cgroup, name) if cfg.cpu_cgroup and slots > 1 else None
        if hasattr(builder, "work_dir") and getattr(builder, "work_dir", None) is None:
            builder.work_dir = state_dir / "work"  # the command builder's per-build directories
            builder.work_dir.mkdir(parents=True, exist_ok=True)
        # Claims are numbered within this process's session, one in flight at a time; a retry
        # after a lost reply sends the same number again (idempotent). ``settled`` is the last
        # number whose reply has been handled: its job, if any, is in a slot (or already
        # reported). Both change under ``_held_lock``, so a heartbeat never reports them torn apart.
        self.session = new_session()
        self.claim_seq = 0
        self.settled = 0
        self._held_lock = self.slots.lock
        self.grounded_until = 0.0
        self.started_builds = 0
        self.mem_total = cfg.memory_mb or psutil.virtual_memory().total // (1024 * 1024)
        self.speed = cfg.speed or float(self.cores)
        # Where builds take their disk: the builder's build directory, else this drone's state.
        self.build_dir = Path(getattr(builder, "build_dir", None) or state_dir)
        self.disk_total = int(cfg.build_disk_gb * 1024) or _fs_total_mb(self.build_dir)
        self.machine_id = machine_id()
        self.builds = 0
        #: Why this drone cannot build (its builder's preflight failed), or None.
        self.problem: str | None = None
        self._preflight_due = 0.0
        #: Why this drone is short of disk space (it claims nothing meanwhile), or None.
        self.low_disk: str | None = None
        self._space_problem: str | None = None  # the preflight's, when only space is short
        self._disk: DroneDisk | None = None
        psutil.cpu_percent(None)  # prime the counter: the first call always says 0.0
        for each in {id(b): b for b in [builder, *self.builders.values()]}.values():
            watchdog = getattr(each, "watchdog", None)
            if watchdog is not None:
                watchdog.on_hung = self.set_hung

    # -- signals ---------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping.is_set():
            log.info("signal %d: finishing the current build(s), then exiting", signum)
            self.stopping.set()
            return
        log.warning("second signal %d: aborting every build and giving the jobs back", signum)
        self.aborting.set()
        self.slots.abort_all()

    # -- heartbeat -------------------------------------------------------------------------

    def status(self) -> str:
        if self.finished.is_set():
            return "offline"
        if self.stopping.is_set():
            return "stopping"
        if self.problem:
            return "misconfigured"
        if self.low_disk:
            return "low-disk"
        if self.grounded_until > time.time():
            return "grounded"
        return "building" if self.slots.running() else "idle"

    @property
    def hung(self) -> bool:
        return any(c.hung for c in self.slots.running())

    def _take(self, current: Current | None, seq: int) -> None:
        """Claim ``seq`` is handled: its job (if any) is now in a slot."""
        with self._held_lock:
            if current is not None:
                self.slots.add(current)
            self.settled = max(self.settled, seq)

    def heartbeat_once(self) -> None:
        with self._held_lock:
            running, settled = sorted(self.slots.running(), key=lambda c: c.started), self.settled
        first = running[0] if running else None
        memory = psutil.virtual_memory()
        fields: dict[str, Any] = {
            "status": self.status(),
            "task": first.claim.cpv if first else "",
            "task_started": f"{first.started:.3f}" if first else "",
            "tasks": self.slots.tasks_json(),
            "slots": self.slots.size,
            "mem_total": self.mem_total,
            "cores": self.cores,
            "disk_total": self.disk_total,
            "speed": f"{self.speed:g}",
            "cpu": f"{psutil.cpu_percent(None):.1f}",
            "mem": f"{memory.percent:.1f}",
            "hung": 1 if self.hung else 0,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "machine_id_seen": self.machine_id or "",
            "clock": f"{time.time():.3f}",  # lets doctor measure this drone's clock skew
            "problem": self.problem or self.low_disk or "",
            "targets": " ".join(self.targets),
            "tree": tree_revision(self.tree_repo(self.targets[0])),
        }
        if self._disk is not None:
            free = self._disk.check().free
            fields.update(disk_free_build=free["build"], disk_free_pkgdir=free["pkgdir"])
        held = [(c.claim.cpv, c.claim.lease) for c in running]
        reply = self.registry.heartbeat(self.name, self.token, fields, held=held, session=self.session,
                                        settled=settled)
        self.grounded_until = reply.grounded_until
        for current in running:
            if not reply.owned.get(current.claim.cpv, True) and not current.lost:
                # Reclaimed while we were unreachable and taken by another drone: stop wasting time.
                log.warning("%s was reclaimed and re-delegated; abandoning the build", current.claim.cpv)
                current.lost = True
                current.abort.set()

    def _heartbeat_loop(self) -> None:
        waits = None
        interval = self.config.drone.heartbeat_interval
        while not self.finished.is_set():
            try:
                self.heartbeat_once()
                waits = None
                self.finished.wait(interval)
            except TRANSIENT as exc:
                # Capped at the interval: after an outage every drone is back within one interval,
                # well inside the grace the orchestrator gives before judging anyone offline.
                waits = waits or delays(base=0.5, cap=max(interval, 0.5))
                wait = next(waits)
                log.warning("heartbeat failed (%s); retrying in %.1f s", exc, wait)
                self.finished.wait(wait)
            except NotEnrolled as exc:
                log.error("%s; stopping", exc)
                self.stopping.set()
                self.finished.wait(interval)

    def set_hung(self, hung: bool) -> None:
        """The builder's watchdog says the build it watches (in this thread) stopped, or resumed,
        making progress."""
        current = self.slots.mine()
        if current is None:
            return
        current.hung = hung
        if hung:
            log.warning("%s shows no progress (no output, no CPU)", current.claim.cpv)

    # -- preflight -------------------------------------------------------------------------

    def preflight_gate(self) -> bool:
        """May this drone claim work? Runs the builder's preflight when it is due.

        Checked every ``drone.preflight_interval`` while it passes, every ``drone.preflight_retry``
        while it fails: the drone resumes by itself once the cause is fixed, and no package is
        ever handed to a drone that would fail it for its own reasons.
        """
        now = time.monotonic()
        if now < self._preflight_due:
            return self.problem is None
        problem: str | None = None
        fixes: list[str] = []
        space: str | None = None
        # Every target's builder (one prefix each) must pass; the first that does not is the reason.
        for builder in {id(b): b for b in [self.builder, *self.builders.values()]}.values():
            check = getattr(builder, "preflight", None)
            if check is None:
                continue
            try:
                result = check()
                problem = None if result.ok else result.reason
                fixes = [p.fix for p in result.problems]
                if problem and all(p.space for p in result.problems):
                    problem, space = None, result.reason  # only space is short: low-disk, not misconfigured
            except Exception as exc:  # a preflight bug must not stop the drone: report it instead
                log.exception("preflight crashed")
                problem = f"preflight error: {exc}"
            if problem or space:
                break
        cfg = self.config.drone
        self._space_problem = space
        ok = problem is None and space is None
        self._preflight_due = now + (cfg.preflight_interval if ok else cfg.preflight_retry)
        if problem != self.problem:
            if problem:
                log.error("misconfigured: %s; claiming nothing until this is fixed (checked again every "
                          "%g s); fix: %s", problem, cfg.preflight_retry, "; ".join(fixes) or "see swarmctl doctor")
            else:
                log.info("preflight passed; claiming work again")
            self.problem = problem
            self._tell("misconfigured" if problem else "preflight-ok", problem or "")
        return problem is None

    # -- disk ------------------------------------------------------------------------------

    def disk(self) -> DroneDisk:
        """The drone's directories (its builder's PORTAGE_TMPDIR, PKGDIR, DISTDIR; else its state dir)."""
        if self._disk is not None:
            return self._disk
        cfg = self.config.drone
        dirs: dict[str, Path] = {}
        find = getattr(self.builder, "disk_dirs", None)
        known = True
        if find is not None:
            try:
                dirs = dict(find())
            except Exception as exc:  # portage not working: the preflight reports it; ask again later
                log.warning("cannot find the builder's directories (%s); watching %s meanwhile", exc, self.state_dir)
                known = False
        dirs.setdefault("build", self.state_dir)
        disk = DroneDisk(dirs, int(cfg.min_free_gb * GIB), int(cfg.pkgdir_max_gb * GIB),
                         int(cfg.distfiles_max_gb * GIB))
        if known:
            self._disk = disk
        return disk

    def disk_gate(self) -> bool:
        """May this drone claim work, as far as its disk goes?

        Below ``drone.min_free_gb`` (or the preflight's minimum) it first applies its retention
        limits; still short, it claims nothing and reports ``low-disk`` until space returns. No job
        is failed and the breaker is not touched: nothing was tried.
        """
        disk = self.disk()
        low = disk.check().low or self._space_problem
        # Tidying deletes dependencies and sources: never under another slot's running build.
        if low and not self.low_disk and not self.slots.running() and disk.tidy():
            low = disk.check().low or self._space_problem
        if bool(low) != bool(self.low_disk):
            if low:
                log.error("low on disk: %s; claiming nothing until space returns", low)
            else:
                log.info("disk space is back; claiming work again")
            self.low_disk = low
            self._tell("low-disk" if low else "disk-ok", low or "")
        self.low_disk = low
        return low is None

    def _tell(self, kind: str, reason: str) -> None:
        """An event and an early heartbeat, so the fleet view shows the change now (best effort)."""
        try:
            Events(self.redis, self.config.queue.events_max).emit(kind, drone=self.name, reason=reason)
            self.heartbeat_once()
        except (NotEnrolled, *TRANSIENT) as exc:
            log.warning("could not report %s (%s); the next heartbeat will", kind, exc)

    # -- the work loop ---------------------------------------------------------------------

    def _with_redis(self, what: str, call: Callable[[], Any], unreported: Any = None) -> Any:
        """Retry a Redis call through outages, until it works or a second signal says abort.

        On abort (or a stop with no build in hand) ``unreported`` comes back: a job stays with
        this drone's name, and the next daemon start (or the orchestrator, once the heartbeats
        stop) gives it back.
        """
        waits = delays(base=0.5, cap=15.0)
        while True:
            try:
                return call()
            except TRANSIENT as exc:
                # Told to abort, or stopping with no build to report: no reason to wait on.
                if self.aborting.is_set() or (self.stopping.is_set() and not self.slots.running()):
                    log.error("%s: Redis unavailable (%s); giving up, stopping", what, exc)
                    return unreported
                wait = next(waits)
                log.warning("%s: Redis unavailable (%s); retrying in %.1f s", what, exc, wait)
                self.aborting.wait(wait)

    def run(self, max_builds: int | None = None) -> int:
        """Work until stopped; returns the process exit code."""
        # A fresh process holds no job: whatever is still delegated to this name was orphaned by a
        # previous process that died (crash, power cut). When it came back before offline_after,
        # the orchestrator never saw it offline and would never reclaim those jobs.
        orphans = self._with_redis("reclaim", lambda: self.queue.reclaim(
            self.name, None, "drone restarted; its previous process's job(s) go back to the queue"))
        if orphans:
            log.warning("gave back %d job(s) orphaned by a previous process: %s", len(orphans), " ".join(orphans))
        self.preflight_gate()
        self.disk()
        beat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        waits = None
        request: int | None = None  # a claim whose reply has not arrived: retried as is
        try:
            while not self.stopping.is_set():
                if max_builds is not None and self.started_builds >= max_builds:
                    break
                # A request whose reply was lost holds its place; otherwise wait for a free slot.
                if request is None and not self.slots.wait_free(self.stopping):
                    continue
                # A request whose reply was lost is retried first (it may hold a job); only
                # then does a failing preflight stop new claims.
                if request is None and not self.preflight_gate():
                    self.stopping.wait(max(0.1, self._preflight_due - time.monotonic()))
                    continue
                if request is None and not self.disk_gate():
                    self.stopping.wait(self.config.drone.poll_interval)
                    continue
                if request is None:
                    self.claim_seq += 1
                    request = self.claim_seq
                try:
                    claim = self.queue.claim(self.name, self.token, self.session, request, self._free_mb(),
                                             self.speed, self.targets)
                    waits = None
                except Grounded as grounded:
                    self._take(None, request)
                    request = None
                    self.grounded_until = grounded.until
                    self.stopping.wait(min(5.0, max(0.5, grounded.until - time.time())))
                    continue
                except NotEnrolled as exc:
                    log.error("%s", exc)
                    return 3
                except TRANSIENT as exc:
                    waits = waits or delays(base=0.5, cap=15.0)
                    wait = next(waits)
                    log.warning("claim failed: Redis unavailable (%s); retrying in %.1f s", exc, wait)
                    self.stopping.wait(wait)
                    continue
                seq, request = request, None
                if claim is None:
                    self._take(None, seq)
                    self.stopping.wait(self.config.drone.poll_interval)
                    continue
                self._start_build(claim, seq)
            self.slots.join()  # stopping: every current build finishes and is reported
            return 0
        finally:
            # Stopping: a claim whose reply never came gives this process nothing; the last
            # heartbeat says so, and the orchestrator takes such a job back at once.
            self._take(None, self.claim_seq)
            self.slots.abort_all()  # only builds left by an error on the way out
            self.slots.join()
            if self.cpu_groups is not None:
                self.cpu_groups.close()
            self.finished.set()
            beat.join(timeout=5)
            self._sign_off()

    def _sign_off(self) -> None:
        """Say we are gone, so the fleet view does not show a stopped drone as building."""
        try:
            self.registry.heartbeat(self.name, self.token, {"status": "offline", "task": "", "tasks": "[]",
                                                            "cpu": "", "mem": "", "hung": 0},
                                    held=[], session=self.session, settled=self.settled)
        except (NotEnrolled, *TRANSIENT):
            pass

    def _free_mb(self) -> tuple[int, int]:
        """What a new build may have: a claim gets only a job whose needs fit (swarmctl.capacity)."""
        cfg = self.config.drone
        return self.slots.free_mb(self.mem_total, cfg.memory_margin_mb, self.build_dir, cfg.preflight_min_free_mb,
                                  self.disk_total)

    def _share_cores(self, current: Current, pid: int) -> None:
        """A build's process started: into its own CPU group, and every build's share rewritten."""
        if self.cpu_groups is not None:
            self.cpu_groups.join(current.claim.cpv, pid)
            self._reweigh()

    def _reweigh(self) -> None:
        if self.cpu_groups is not None:
            self.cpu_groups.apply({c.claim.cpv: c.claim.priority for c in self.slots.running()}, self.cores)

    def _needs(self, cpv: str) -> tuple[int, int]:
        """The job's expected (memory, disk) in bytes, reserved while it builds (0: unknown)."""
        try:
            mem, disk = self.redis.hmget(keys.job(cpv), "mem", "disk")
        except TRANSIENT:
            return 0, 0
        return int(mem or 0) * 1024 * 1024, int(disk or 0) * 1024 * 1024

    def _start_build(self, claim: Claim, seq: int = 0) -> None:
        """Put the claimed job in a slot (before the next claim: it is held from now) and build it
        in the slot's own thread."""
        rss, disk = self._needs(claim.cpv)
        current = Current(claim=claim, started=time.time(), abort=threading.Event(), expected_rss=rss,
                          expected_disk=disk)
        if self.aborting.is_set():
            current.abort.set()
        self._take(current, seq)
        self.started_builds += 1
        self.slots.start(current, self._build)

    def _build(self, current: Current) -> None:
        claim = current.claim
        log_path = current.log_path = self.logs.path_for(claim.cpv)
        self.logs.rotate(keep=self.slots.logs())
        log.info("building %s (attempt %d)", claim.cpv, claim.attempts)
        builder = self.builders.get(claim.target)
        try:
            self._with_redis("heartbeat", self.heartbeat_once)
            if builder is None:
                result = BuildResult(ok=False, fault="none", aborted=True,
                                     reason=f"this drone does not build target {claim.target}")
            else:
                with self._at_planned_tree(current) as ready:
                    if not ready:
                        result = BuildResult(ok=False, fault="none", aborted=True, reason=current.cannot)
                    else:
                        with on_process_start(partial(self._share_cores, current) if self.cpu_groups else None):
                            result = builder.build(claim.package, log_path, current.abort)
        except Exception as exc:  # a builder bug is this drone's problem, never a lost job
            log.exception("builder crashed on %s", claim.cpv)
            result = BuildResult(ok=False, fault="drone", reason=f"builder error: {exc}")
        duration = time.time() - current.started
        current.hung = False
        if not result.ok and result.fault == "build" and self._out_of_space(log_path):
            result = BuildResult(ok=False, fault="drone", reason=f"no space left on the drone ({result.reason})")
        if result.fault == "drone":
            self._preflight_due = 0.0  # the drone's own fault: check it again before the next claim
        try:
            self._report(current, result, duration, log_path)
        finally:
            self.slots.remove(current)
            if self.cpu_groups is not None:
                self.cpu_groups.leave(claim.cpv)
                self._reweigh()
            with self._held_lock:
                self.builds += 1
                idle = not self.slots.running()
            self.logs.rotate(keep=self.slots.logs())
            if idle:  # tidy only with no build in progress (another slot's may need what it deletes)
                self.disk().tidy()

    def tree_repo(self, target: str) -> Path | None:
        """The ebuild repository ``target``'s builds read (its prefix's, else drone.repo)."""
        prefix = getattr(self.builders.get(target), "prefix", None)
        if prefix is not None:
            return Path(prefix.repo)
        return Path(self.config.drone.repo) if self.config.drone.repo else None

    @contextlib.contextmanager
    def _at_planned_tree(self, current: Current) -> Iterator[bool]:
        """Is this drone's tree at the revision the job was planned from? Brings it there when it
        can (a git tree no other build of this drone is using: swarmctl.tree.TreeGate) and holds
        it there for the build; when it cannot, ``current.cannot`` says why and the job goes back."""
        wanted = current.claim.tree
        repo = self.tree_repo(current.claim.target)
        if not wanted or repo is None:
            yield True  # planned before revisions were recorded, or no tree to compare
            return
        with self.trees.at(repo, wanted) as problem:
            if problem:
                current.cannot = (f"tree-mismatch: {current.claim.cpv} was planned at tree {wanted[:40]}, this "
                                  f"drone's {repo} {problem}")
                log.warning("%s; giving the job back", current.cannot)
            yield not problem

    def _out_of_space(self, log_path: Path) -> bool:
        """A build that failed on a full disk is this drone's fault, not the package's (no blame)."""
        try:
            if shutil.disk_usage(self.logs.dir).free < LOW_DISK_BYTES:
                return True
        except OSError:
            return False
        return "No space left on device" in tail(log_path, self.config.queue.log_tail_lines)

    def _report(self, current: Current, result: BuildResult, duration: float, log_path: Path) -> None:
        claim = current.claim
        q = self.queue
        if current.lost:
            log.info("%s: not reporting, the job belongs to another drone now", claim.cpv)
            return
        if result.aborted:
            cannot = "tree-mismatch" if current.cannot else ""
            reason = current.cannot or ("" if result.reason == "aborted" else result.reason)
            outcome = self._with_redis("release", lambda: q.release(
                claim.cpv, self.name, self.token, claim.lease, reason or "build aborted on shutdown", cannot))
            log.info("%s released back to the queue (%s)%s", claim.cpv, outcome, f": {reason}" if reason else "")
            if cannot:
                self.stopping.wait(self.config.drone.poll_interval)  # not straight back to the same job
            return
        if result.ok:
            result = self._deliver(claim, result, duration)
            if result.ok:
                return
        log_tail = tail(log_path, self.config.queue.log_tail_lines)
        outcome, grounded_until = self._with_redis("fail", unreported=("unreported", 0.0), call=lambda: q.fail(
            claim.cpv, self.name, self.token, claim.lease, result.fault, result.reason, log_tail))
        if grounded_until:
            self.grounded_until = grounded_until
        log.warning("%s failed (%s: %s) -> %s", claim.cpv, result.fault, result.reason, outcome)

    def _deliver(self, claim: Claim, result: BuildResult, duration: float) -> BuildResult:
        """Hand a good build over; a failed result comes back if the binhost refused it for good."""
        q = self.queue
        if self.publisher is None:
            usage = (result.usage.peak_rss, result.usage.peak_disk)
            outcome = self._with_redis("complete", lambda: q.complete(
                claim.cpv, self.name, self.token, claim.lease, duration, usage=usage))
        else:
            outcome = self.publisher.publish(claim, result, duration)
            if outcome == "ok" and not self.config.drone.keep_uploaded:
                DroneDisk.drop(a.path for a in result.artifacts if a.cpv == claim.cpv)  # the binhost has it
            if outcome == "failed":
                # The package's content refused by policy is the build's fault (two drones block
                # it); any other permanent refusal is this drone's.
                verdict = getattr(self.publisher, "last_verdict", None)
                return BuildResult(ok=False, fault=getattr(verdict, "fault", "drone"),
                                   reason=f"the binhost refused the package: {getattr(verdict, 'reason', '?')}")
            if outcome == "retry-later":
                outcome = self._with_redis("release", lambda: q.release(
                    claim.cpv, self.name, self.token, claim.lease, "upload failed; built again later"))
        log.info("%s built in %.1f s (%s)", claim.cpv, duration, outcome)
        return result
