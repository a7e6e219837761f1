"""Drone capacity, simulated on the real DAG: slots per drone, core sharing, memory-aware placement.

The 896-package KDE graph (gates as the queue computes them, cycles broken the same way) is
scheduled the way the swarm does: a drone with a free slot takes the ready job with the longest
critical-path chain whose memory need fits what the drone has free (the rule of scripts.CLAIM:
offered memory less what its running builds reserve, less drone.memory_margin_mb).

Parallel model (stated, not measured: the durations data has no core counts). A package's
recorded duration T was taken on C_REF = 4 cores. Its parallel fraction grows with its size,
p(T) = 0.95 * T / (T + 300) (a 10 s package is configure-bound, p = 0.03; a one-hour one, p = 0.88).
It runs a serial part (1 core) of T * (1 - p) seconds, then a parallel part of T * p * C_REF
core-seconds, as fast as the cores it gets allow.

How concurrent builds on one drone share its C cores:
- ``share``: a fixed MAKEOPTS=-j(C/S) per build: a build gets at most C/S cores, idle shares stay
  idle;
- ``pool``: every build may use every idle core (MAKEOPTS=-jC -lC, what a drone without
  drone.cpu_cgroup does; or portage's jobserver): the cores are water-filled evenly among the
  running builds (a serial phase takes one);
- ``strict``: the longest chain's build takes all it can use, then the next (for comparison);
- ``chain``: the drone's policy with drone.cpu_cgroup (swarmctl/drone/cpu_shares.py, the same
  ``core_shares`` function): the longest chain is entitled to C - (n - 1) cores, every other build
  to one, water-filled in proportion to those shares as the kernel does with CPU weights.

Fleets with 64 cores in all: 4 drones x 16 cores x 1, 2, 4 or 8 slots, and 16 x 4 cores x 1 slot.
Lower bound for a fleet: max(critical path with every job on the largest drone alone, total
core-seconds at one core each / total cores). Target: multi-slot within 1.10x of it.

Heterogeneous: drones of 4, 8 and 32 GB (4, 8, 16 cores, 2 slots each, chain shares), the longest packages
needing 12 GB and the rest 0.3-3 GB by size; placements are counted as out-of-memory when a
drone's running builds need more than it has (memory-aware: none; blind, for comparison: some).

    python bench/capacity.py [--out bench/results/capacity.json]

Pure simulation (no processes): 15-45 s on a 2-CPU machine.
Needs ../shared/data (or SWARM_SHARED_DATA); exits 0 with SKIP when absent.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import require_data
from swarmctl.config import load_config
from swarmctl.dag import load_dag
from swarmctl.drone.cpu_shares import core_shares
from swarmctl.graph import break_cycles, critical_path, gates_of

C_REF = 4
HEAVY_MB = 12 * 1024
DT = 1.0  # simulated seconds per step


def parallel_fraction(seconds: float) -> float:
    return 0.95 * seconds / (seconds + 300.0)


@dataclass
class Job:
    cpv: str
    seconds: float
    serial: float      # seconds at one core
    parallel: float    # core-seconds
    memory_mb: int = 0


@dataclass
class Build:
    job: Job
    serial_left: float
    parallel_left: float
    rank: float = 0.0  # its critical-path chain (the job's queue priority)


@dataclass
class Drone:
    name: str
    cores: int
    slots: int
    memory_mb: int = 1 << 30
    running: list[Build] = field(default_factory=list)

    def free_mb(self, margin: int) -> int:
        return self.memory_mb - sum(b.job.memory_mb for b in self.running) - margin


@dataclass
class Result:
    fleet: str
    sharing: str
    drones: int
    cores: int
    slots: int
    makespan_h: float
    lower_bound_h: float
    ratio: float
    utilisation: float
    oom_placements: int = 0


def make_jobs(seconds: dict[str, float], memory: dict[str, int] | None = None) -> dict[str, Job]:
    jobs = {}
    for cpv, t in seconds.items():
        p = parallel_fraction(t)
        jobs[cpv] = Job(cpv, t, t * (1 - p), t * p * C_REF, (memory or {}).get(cpv, 0))
    return jobs


def speeds(drone: Drone, sharing: str) -> list[float]:
    """Cores each running build gets now."""
    demands = [1.0 if b.serial_left > 0 else float(drone.cores) for b in drone.running]
    if sharing == "share":
        cap = max(1.0, drone.cores / drone.slots)
        return [min(d, cap) for d in demands]
    if sharing == "strict":  # the longest chain first takes what it can use, the next the rest, ...
        left, alloc = float(drone.cores), [0.0] * len(demands)
        for i in sorted(range(len(demands)), key=lambda i: -drone.running[i].rank):
            alloc[i] = min(demands[i], left)
            left -= alloc[i]
        return alloc
    if sharing == "chain":  # the drone's policy (drone/cpu_shares.py), the kernel's weighted sharing
        return water_fill(drone.cores, demands, core_shares([b.rank for b in drone.running], drone.cores))
    return water_fill(drone.cores, demands, [1] * len(demands))  # pool: even weights


def water_fill(cores: int, demands: list[float], shares: list[int]) -> list[float]:
    """The kernel's weighted fair sharing: cores in proportion to the shares, what a build cannot
    use passed on to the others in the same proportion."""
    alloc = [0.0] * len(demands)
    open_ = [i for i, d in enumerate(demands) if d > 0]
    while open_:
        left = cores - sum(alloc)
        if left <= 1e-9:
            break
        total = sum(shares[i] for i in open_)
        still = []
        for i in open_:
            alloc[i] = min(demands[i], alloc[i] + left * shares[i] / total)
            if demands[i] - alloc[i] > 1e-9:
                still.append(i)
        if len(still) == len(open_):
            break
        open_ = still
    return alloc


def simulate(jobs: dict[str, Job], gates: dict[str, dict[str, str]], drones: list[Drone], sharing: str,
             priority: dict[str, float], memory_aware: bool = True, margin: int = 0) -> tuple[float, float, int]:
    """(makespan s, core utilisation, out-of-memory placements)."""
    waiting = {c: set(g) & set(jobs) for c, g in gates.items() if c in jobs}
    dependents: dict[str, list[str]] = {c: [] for c in jobs}
    for c, g in waiting.items():
        for gate in g:
            dependents[gate].append(c)
    ready = [(-priority[c], c) for c, g in waiting.items() if not g]
    heapq.heapify(ready)
    done, now, busy, oom = 0, 0.0, 0.0, 0
    total_cores = sum(d.cores for d in drones)
    while done < len(jobs):
        # Claims: the best ready job that fits, while a slot is free; the least busy drone claims
        # first (the idle drone polls first), so the longest chains land where cores are idle.
        for drone in sorted(drones, key=lambda d: (len(d.running) / d.slots, -d.cores)):
            skipped = []
            while ready and len(drone.running) < drone.slots:
                _, cpv = heapq.heappop(ready)
                job = jobs[cpv]
                if memory_aware and job.memory_mb > drone.free_mb(margin):
                    skipped.append((-priority[cpv], cpv))
                    continue
                drone.running.append(Build(job, job.serial, job.parallel, priority[cpv]))
                if sum(b.job.memory_mb for b in drone.running) > drone.memory_mb:
                    oom += 1
            for item in skipped:
                heapq.heappush(ready, item)
        if not any(d.running for d in drones):
            raise RuntimeError("nothing runs and nothing fits: a job no drone can take")
        finished = []
        for drone in drones:
            for build, cores in zip(list(drone.running), speeds(drone, sharing), strict=True):
                busy += cores * DT
                if build.serial_left > 0:
                    build.serial_left -= DT * min(1.0, cores)
                else:
                    build.parallel_left -= DT * cores
                if build.serial_left <= 1e-9 and build.parallel_left <= 1e-9:
                    drone.running.remove(build)
                    finished.append(build.job.cpv)
        now += DT
        for cpv in finished:
            done += 1
            for dep in dependents[cpv]:
                waiting[dep].discard(cpv)
                if not waiting[dep]:
                    heapq.heappush(ready, (-priority[dep], dep))
    return now, busy / (total_cores * now), oom


def lower_bound(jobs: dict[str, Job], gates: dict[str, dict[str, str]], drones: list[Drone]) -> float:
    biggest = max(d.cores for d in drones)
    fastest = {c: j.serial + j.parallel / biggest for c, j in jobs.items()}
    path = max(critical_path({c: list(g) for c, g in gates.items() if c in jobs}, fastest).values())
    work = sum(j.serial + j.parallel for j in jobs.values()) / sum(d.cores for d in drones)
    bound = max(path, work)
    heavy = [j for j in jobs.values() if j.memory_mb > 0]
    if heavy:  # each job can run only on drones with room for it
        for need in sorted({j.memory_mb for j in heavy}):
            able = sum(d.cores for d in drones if d.memory_mb >= need)
            bound = max(bound, sum(j.serial + j.parallel for j in heavy if j.memory_mb >= need) / able)
    return bound


def fleet(count: int, cores: int, slots: int, memory_gb: int = 1 << 20, prefix: str = "d") -> list[Drone]:
    return [Drone(f"{prefix}{i}", cores, slots, memory_gb * 1024) for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heavy", type=int, default=6, help="How many of the longest packages need 12 GB.")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "capacity.json"))
    args = parser.parse_args()
    (dag_path,) = require_data("gentoo-kde-2014.dag.json")
    default = load_config(environ={}).queue.default_estimate
    dag = load_dag(dag_path)
    seconds = {c: float(s) if s is not None else default for c, s in dag.seconds.items()}
    gates = gates_of({s.cpv: s for s in dag.specs})
    break_cycles(gates)
    plain = {c: list(g) for c, g in gates.items()}
    started = time.monotonic()
    results: list[Result] = []

    jobs = make_jobs(seconds)
    priority = critical_path(plain, {c: j.seconds for c, j in jobs.items()})
    print(f"graph: {len(jobs)} packages; work {sum(seconds.values()) / 3600:.1f} h at {C_REF} cores; "
          f"parallel model p(T) = 0.95 T / (T + 300)", flush=True)
    fleets = (("4x4", 4, 16, 4), ("4x2", 4, 16, 2), ("4x8", 4, 16, 8), ("4x1", 4, 16, 1), ("16x1", 16, 4, 1))
    for label, count, cores, slots in fleets:
        for sharing in (("share", "pool", "strict", "chain") if slots > 1 else ("share",)):
            drones = fleet(count, cores, slots)
            makespan, used, _ = simulate(make_jobs(seconds), gates, drones, sharing, priority)
            bound = lower_bound(jobs, gates, drones)
            results.append(Result(label, sharing, count, cores, slots, round(makespan / 3600, 3),
                                  round(bound / 3600, 3), round(makespan / bound, 3), round(used, 3)))
            r = results[-1]
            print(f"{label:>5} ({count} drones x {cores} cores x {slots} slot(s), {sharing:>5}): makespan "
                  f"{r.makespan_h:6.2f} h, lower bound {r.lower_bound_h:6.2f} h, ratio {r.ratio:.3f}, "
                  f"utilisation {r.utilisation:.1%}", flush=True)

    # Heterogeneous fleet: the longest packages need 12 GB; the rest 0.3-3 GB by size.
    heavy = sorted(seconds, key=lambda c: -seconds[c])[:args.heavy]
    memory = {c: HEAVY_MB if c in heavy else int(300 + min(2700, seconds[c])) for c in seconds}
    mixed = [*fleet(2, 4, 2, 4, "small"), *fleet(2, 8, 2, 8, "mid"), *fleet(2, 16, 2, 32, "big")]
    for aware in (True, False):
        drones = [Drone(d.name, d.cores, d.slots, d.memory_mb) for d in mixed]
        hjobs = make_jobs(seconds, memory)
        makespan, used, oom = simulate(hjobs, gates, drones, "chain", priority, memory_aware=aware)
        bound = lower_bound(hjobs, gates, drones)
        results.append(Result("4/8/32 GB" + ("" if aware else " (memory-blind)"), "chain", len(drones),
                              sum(d.cores for d in drones), 2, round(makespan / 3600, 3), round(bound / 3600, 3),
                              round(makespan / bound, 3), round(used, 3), oom))
        r = results[-1]
        print(f"{r.fleet:>26}: makespan {r.makespan_h:6.2f} h, lower bound {r.lower_bound_h:6.2f} h, "
              f"ratio {r.ratio:.3f}, out-of-memory placements {oom}", flush=True)
    out = {"c_ref": C_REF, "parallel_model": "p(T) = 0.95 T / (T + 300)", "heavy_packages": heavy,
           "heavy_mb": HEAVY_MB, "seconds": round(time.monotonic() - started, 1),
           "results": [asdict(r) for r in results]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"results written to {args.out} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
