"""How a multi-slot drone shares its cores among its builds: the longest chain first, one core each.

Policy (``core_shares``, the one function both the drone and bench/capacity.py run): when every
running build is busy, the build with the longest critical-path chain (the job's queue priority)
is entitled to ``C - (n - 1)`` of the drone's C cores and each of the n - 1 others to one. A build
that uses less (a configure step, one core) leaves the rest to the others in proportion to their
shares, so no core idles while any build could use it. Every build keeps progressing (its one
core), and the chain that bounds the makespan gets the rest. On the KDE graph this is 1.05x the
lower bound at 4 drones x 16 cores x 4 slots against 1.21x for an even pool (docs/benchmarks.md):
an even pool slows the long builds on the critical path; strict ranking (the top build takes
every core) starves the small builds' serial steps, which then all run at once with the cores idle.

Mechanism: the shares are CPU weights of one cgroup per build (cgroup v2 ``cpu.weight``, v1
``cpu.shares``), rewritten whenever a build starts or ends. The kernel's weighted fair sharing is
exactly "in proportion to the shares, unused share passed on". Every build still gets
``MAKEOPTS=-jC -lC`` (drone/slots.py) so it can use any idle core. It needs a cgroup directory the
drone may write (``drone.cpu_cgroup``); without one the cores are pooled evenly (the kernel's
default), which the bench reports as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("swarmctl.drone")

#: Weight per share: cgroup v2's default cpu.weight is 100 (range 1-10000), v1's cpu.shares 1024.
WEIGHT_UNIT = {"v2": 100, "v1": 1024}
WEIGHT_MAX = {"v2": 10_000, "v1": 262_144}


def core_shares(chains: Sequence[float], cores: int) -> list[int]:
    """Each running build's entitlement in cores, given their critical-path chains (same order).

    The longest chain (the first of equals) gets ``cores - (n - 1)``, every other build 1; with
    more builds than cores, every build gets 1.
    """
    n = len(chains)
    if n == 0:
        return []
    top = max(range(n), key=lambda i: (chains[i], -i))
    return [max(1, cores - (n - 1)) if i == top else 1 for i in range(n)]


def weights(shares: Sequence[int], version: str) -> list[int]:
    """The shares as cgroup CPU weights of ``version`` ('v1' or 'v2'), within the kernel's range."""
    return [max(1, min(WEIGHT_MAX[version], share * WEIGHT_UNIT[version])) for share in shares]


class CpuGroups:
    """One CPU cgroup per build under a directory the drone manages (``drone.cpu_cgroup``).

    ``root`` is a cgroup v2 directory whose ``cgroup.subtree_control`` can enable ``cpu``, or a
    cgroup v1 directory of the ``cpu`` controller. Anything that cannot be written is logged once
    and the builds run in the drone's own group (pooled evenly): never a failed build.
    """

    def __init__(self, root: str | Path, drone: str) -> None:
        self.dir = Path(root) / f"swarm-{drone}"
        self.version = "v2" if (Path(root) / "cgroup.controllers").exists() else "v1"
        self._lock = threading.Lock()
        self._groups: dict[str, Path] = {}
        self._ok = True
        try:
            self.dir.mkdir(exist_ok=True)
            if self.version == "v2":
                (Path(root) / "cgroup.subtree_control").write_text("+cpu")
                (self.dir / "cgroup.subtree_control").write_text("+cpu")
        except OSError as exc:
            self._fail(f"cannot set up {self.dir}: {exc}")

    @property
    def weight_file(self) -> str:
        return "cpu.weight" if self.version == "v2" else "cpu.shares"

    def _fail(self, why: str) -> None:
        if self._ok:
            log.warning("CPU shares by chain are off (cores pooled evenly): %s", why)
        self._ok = False

    @property
    def active(self) -> bool:
        return self._ok

    def join(self, key: str, pid: int) -> None:
        """Move the build's first process into its own group (its children are born there).

        Called right after the process starts: emerge (or the command) forks its build steps
        only later, and any process forked before the move stays pooled, which costs nothing.
        """
        if not self._ok:
            return
        group = self.dir / f"build-{pid}"
        try:
            group.mkdir(exist_ok=True)
            (group / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            self._fail(f"cannot use {group}: {exc}")
            return
        with self._lock:
            self._groups[key] = group

    def leave(self, key: str) -> None:
        """Drop a finished build's group (empty once its processes exited)."""
        with self._lock:
            group = self._groups.pop(key, None)
        if group is not None:
            with contextlib.suppress(OSError):  # a straggler still in it: the empty-to-be group is harmless
                group.rmdir()

    def apply(self, chains: dict[str, float], cores: int) -> dict[str, int]:
        """Write the weights of ``core_shares`` for the running builds (key: chain); returns them."""
        with self._lock:
            keys = [k for k in chains if k in self._groups]
            shares = core_shares([chains[k] for k in keys], cores)
            written = dict(zip(keys, weights(shares, self.version), strict=True))
            for key, weight in written.items():
                try:
                    (self._groups[key] / self.weight_file).write_text(str(weight))
                except OSError as exc:
                    self._fail(f"cannot write {self._groups[key] / self.weight_file}: {exc}")
        return written

    def close(self) -> None:
        for key in list(self._groups):
            self.leave(key)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)
