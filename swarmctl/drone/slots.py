"""A drone's slots: the builds it runs at once, and how they share its cores and memory.

One claim loop fills the slots; each build runs in its own thread with its own lease, log,
abort event and hung flag. The slots' lock is also the daemon's lock over what it holds, so a
heartbeat never sees a job between "claimed" and "held".

Cores: each build of a multi-slot drone gets ``MAKEOPTS=-jC -lC`` (C = the drone's declared
cores): any build may use every core the others leave idle, and make starts no new job while the
load is at C. Which build gets the contended cores is drone/cpu_shares.py's (the longest chain,
through CPU cgroups, with drone.cpu_cgroup; else evenly). A fixed share (-j(C/S)) leaves the cores
of a configure-bound build idle: on the KDE graph it doubled the makespan (bench/capacity.py,
docs/benchmarks.md). An operator with portage's jobserver sets MAKEOPTS in the drone's
environment (drone.build_env), which wins over this default.
Memory stays bounded by the claims: a build's needs are its recorded peaks under this setting.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from swarmctl.drone.builders import live_usage
from swarmctl.queue import Claim
from swarmctl.scripts import HEARTBEAT_FIELD_MAX

MB = 1024 * 1024
#: Longest ``tasks`` heartbeat field Redis keeps (scripts.HEARTBEAT_FIELD_MAX).
TASKS_MAX = HEARTBEAT_FIELD_MAX["tasks"]


@dataclass
class Current:
    """One build in a slot."""

    claim: Claim
    started: float
    abort: threading.Event
    lost: bool = False
    hung: bool = False
    #: The build's expected peak memory (bytes; 0: unknown), reserved while it runs.
    expected_rss: int = 0
    expected_disk: int = 0
    log_path: Path | None = None
    thread: threading.Thread | None = field(default=None, repr=False)
    #: Why this drone cannot build it as planned (its tree is elsewhere): given back, not failed.
    cannot: str = ""


def cores() -> int:
    """Cores this process may use (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def makeopts(ncores: int | None = None) -> str:
    """MAKEOPTS for each of several concurrent builds: every core, capped by the load (see above)."""
    ncores = ncores or cores()
    return f"-j{ncores} -l{ncores}"


class Slots:
    """Up to ``size`` builds at once; a build's thread is found by the thread it runs in."""

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self.lock = threading.Condition(threading.RLock())  # re-entered by the daemon
        self._running: dict[str, Current] = {}

    def running(self) -> list[Current]:
        with self.lock:
            return list(self._running.values())

    def add(self, current: Current) -> None:
        """Put a claimed build in a slot (caller holds ``lock``)."""
        self._running[current.claim.cpv] = current

    def remove(self, current: Current) -> None:
        with self.lock:
            if self._running.get(current.claim.cpv) is current:
                del self._running[current.claim.cpv]
            self.lock.notify_all()

    def wait_free(self, stop: threading.Event, timeout: float = 0.5) -> bool:
        """Wait (at most ``timeout``) until a slot is free; False when none is, or on ``stop``."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self._running) >= self.size and not stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.2))
        return not stop.is_set()

    def start(self, current: Current, work: Callable[[Current], None]) -> None:
        """Run ``work(current)`` in the build's own thread; the slot frees when it returns."""
        def body() -> None:
            try:
                work(current)
            finally:
                self.remove(current)

        current.thread = threading.Thread(target=body, name=f"build:{current.claim.cpv}", daemon=True)
        current.thread.start()

    def mine(self) -> Current | None:
        """The build running in the calling thread (the builder's watchdog calls from there)."""
        me = threading.current_thread()
        return next((c for c in self.running() if c.thread is me), None)

    def logs(self) -> list[Path]:
        """The logs of the builds running now (never rotated away)."""
        return [c.log_path for c in self.running() if c.log_path is not None]

    def abort_all(self) -> None:
        for current in self.running():
            current.abort.set()

    def join(self) -> None:
        """Wait for every build to finish (and be reported)."""
        for current in self.running():
            if current.thread is not None and current.thread is not threading.current_thread():
                current.thread.join()

    def tasks_json(self, limit: int = TASKS_MAX) -> str:
        """The heartbeat's ``tasks`` field: every current build, oldest first (as many as fit the
        field's limit, so it stays whole JSON)."""
        rows: list[dict[str, object]] = []
        text = "[]"
        for c in sorted(self.running(), key=lambda c: c.started):
            rows.append({"cpv": c.claim.cpv, "started": round(c.started, 3), "hung": c.hung})
            longer = json.dumps(rows, separators=(",", ":"))
            if len(longer) > limit:
                break
            text = longer
        return text

    def free_mb(self, total_mb: int, margin_mb: int, disk_dir: Path, disk_margin_mb: int,
                disk_total_mb: int = 0) -> tuple[int, int]:
        """(memory, build disk) in MiB a new build may use now.

        Memory: the least of what the drone offers (``total_mb``) less what its running builds
        are expected to peak at (or use now, if more), and what the host has available less
        what those builds are still expected to grow into; then the margin. Disk: the same with
        the build disk the drone offers (``disk_total_mb``, 0: no limit beyond the free space) and
        the free space of ``disk_dir``, less its margin.
        """
        offered, available = total_mb * MB, psutil.virtual_memory().available
        disk_offered = disk_total_mb * MB if disk_total_mb else None
        try:
            disk = shutil.disk_usage(disk_dir).free
        except OSError:
            disk = 0
        for current in self.running():
            now = live_usage(current.thread)
            rss, used_disk = (now.rss, now.peak_disk) if now else (0, 0)
            offered -= max(current.expected_rss, rss)
            available -= max(0, current.expected_rss - rss)
            disk -= max(0, current.expected_disk - used_disk)
            if disk_offered is not None:
                disk_offered -= max(current.expected_disk, used_disk)
        if disk_offered is not None:
            disk = min(disk, disk_offered)
        return (max(0, min(offered, available) // MB - margin_mb), max(0, disk // MB - disk_margin_mb))
