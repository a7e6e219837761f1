"""Scheduling on a real workload: the 896-package KDE graph through the real swarm.

For each policy (critical-path, fifo) and drone count (4, 8, 16) this starts a
fresh private redis-server, imports build history with ``swarmctl history
import`` (an emerge.log written from the shared durations data), starts real
drone processes (``swarmctl drone run`` with the command builder, whose
command sleeps each package's *true* duration, scaled down), queues the graph
with ``swarmctl queue import``, and waits until everything is built.

The scheduler sees only estimates from history, never the true durations:
where the data has several samples of a package, the true duration is the
graph node's duration times a seeded log-normal factor (sigma 0.3); packages
without any duration take the scheduler's default both ways.

Reported per run: makespan (first claim to last completion, wall seconds),
the lower bound max(critical path over gating edges, total work / drones) in
the same scaled seconds, their ratio, drone utilisation (time drones held a
job / drones x makespan) and efficiency (true work / drones x makespan).

    python bench/schedule.py [--drones 4 8 16] [--hour 7] [--out bench/results/schedule.json]
    python bench/schedule.py --two-targets [--drones 8]   # two build targets sharing the drones

With ``--two-targets`` the graph is queued for two build targets at once (every CPV twice, each
gated on its own target's jobs) on drones that build both: reported are each target's makespan
against its own lower bound, and the pair's against theirs (max(critical path, 2 x work / drones))
and against running them one after the other (twice a one-target run's makespan).

One full run (six configurations) takes about 13 minutes on a 2-CPU machine.

Needs ../shared/data (or SWARM_SHARED_DATA); exits 0 with SKIP when absent.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import private_redis, require_data, spawn_drone, stop, swarm_env
from swarmctl import keys
from swarmctl.config import load_config
from swarmctl.dag import load_dag
from swarmctl.graph import break_cycles, critical_path, gates_of
from swarmctl.registry import DroneRegistry
from swarmctl.targets import job_name

#: The build targets of --two-targets.
TWO_TARGETS = ("desktop", "server")

JITTER_SIGMA = 0.3
LOG_EPOCH = 1_500_000_000


@dataclass
class Run:
    policy: str
    drones: int
    makespan: float
    lower_bound: float
    critical_path: float
    work_per_drone: float
    ratio: float
    utilisation: float
    efficiency: float
    mean_overhead: float
    jobs: int
    built: int
    failed: int
    import_seconds: float
    estimate_error: float  # median |estimate / true - 1| over packages with real durations
    #: With several targets: each one's makespan (from the first claim) and its ratio to its lower bound.
    targets: dict[str, dict[str, float]] = field(default_factory=dict)


def write_history_log(durations: list[dict], path: Path) -> int:
    """An emerge.log in real format with one serial merge per recorded version median."""
    ts, n, lines = LOG_EPOCH, 0, []
    entries = [(cpv, int(seconds)) for e in durations for cpv, seconds in sorted(e["per_cpv_median"].items())]
    lines.append(f"{ts}: Started emerge on: Jul 14, 2017 02:40:00")
    lines.append(f"{ts}:  *** emerge --oneshot --usepkg=n (history for the schedule bench)")
    for i, (cpv, seconds) in enumerate(entries, start=1):
        lines.append(f"{ts}:  >>> emerge ({i} of {len(entries)}) {cpv} to /")
        ts += max(1, seconds)
        lines.append(f"{ts}:  ::: completed emerge ({i} of {len(entries)}) {cpv} to /")
        ts += 1
        n += 1
    lines.append(f"{ts}:  *** exiting successfully.")
    path.write_text("\n".join(lines) + "\n")
    return n


def true_durations(dag_seconds: dict[str, float | None], samples: dict[str, int], cp_of: dict[str, str],
                   default: float, seed: int) -> dict[str, float]:
    """What each build really takes: the node's duration, jittered where the data has several samples."""
    rng = random.Random(seed)
    out: dict[str, float] = {}
    for cpv in sorted(dag_seconds):
        seconds = dag_seconds[cpv]
        if seconds is None:
            out[cpv] = default
        elif samples.get(cp_of[cpv], 1) > 1:
            out[cpv] = max(1.0, seconds * math.exp(rng.gauss(0.0, JITTER_SIGMA)))
        else:
            out[cpv] = float(seconds)
    return out


def write_sleepers(truth: dict[str, float], scale: float, directory: Path) -> None:
    """One tiny script per CPV (DIR/category/pn-pv) that sleeps its scaled true duration."""
    for cpv, seconds in truth.items():
        path = directory / cpv
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"exec sleep {seconds * scale:.4f}\n")


def cli(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "swarmctl", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode:
        raise RuntimeError(f"swarmctl {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def run_once(url: str, home: Path, policy: str, drones: int, dag_path: Path, log_path: Path,
             truth: dict[str, float], measured: set[str], scale: float, sleepers: Path,
             bound: tuple[float, float], timeout: float, targets: tuple[str, ...] = ()) -> Run:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    extra = {}
    if targets:  # a config naming the targets; every drone builds all of them
        config_path = home / "targets.yml"
        config_path.write_text("targets:\n" + "".join(f"  {t}: {{}}\n" for t in targets))
        extra = {"SWARM_CONFIG": str(config_path), "SWARM_DRONE_TARGETS": " ".join(targets)}
    env = swarm_env(url, home, SWARM_QUEUE_POLICY=policy, SWARM_DRONE_POLL_INTERVAL="0.05",
                    SWARM_DRONE_HEARTBEAT_INTERVAL="1", **extra)
    cli(["history", "import", str(log_path)], env)
    registry = DroneRegistry(client, load_config(environ=env))
    names = [f"d{i:02d}" for i in range(drones)]
    tokens = {name: registry.enroll(name) for name in names}
    procs = [spawn_drone(name, tokens[name], f"sh {sleepers}/{{cpv}}", env, home / "drones" / f"{policy}-{drones}")
             for name in names]
    try:
        deadline = time.monotonic() + 60
        while client.zcard(keys.HEARTBEATS) < drones:
            if time.monotonic() > deadline:
                raise RuntimeError("drones did not come up within 60 s")
            time.sleep(0.1)
        started = time.monotonic()
        cli(["queue", "import", str(dag_path), *[f"--target={t}" for t in targets]], env)
        import_seconds = time.monotonic() - started
        deadline = time.monotonic() + timeout
        jobs = {job_name(c, t): c for t in targets for c in truth} if targets else {c: c for c in truth}
        total = len(jobs)
        while True:
            built, failed, blocked = (client.scard(keys.state_set(s)) for s in ("built", "failed", "blocked"))
            if built + failed + blocked >= total or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        stop(procs)
    rows = {}
    with client.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.hmget(keys.job(job), "claimed_at", "finished_at", "state", "estimate")
        for job, row in zip(jobs, pipe.execute(), strict=True):
            rows[job] = row
    done = {c: (int(r[0]) / 1000.0, int(r[1]) / 1000.0) for c, r in rows.items() if r[2] == "built"}
    start = min(s for s, _ in done.values())
    makespan = max(e for _, e in done.values()) - start
    busy = sum(e - s for s, e in done.values())
    work = sum(truth[jobs[c]] * scale for c in done)
    overhead = statistics.mean((e - s) - truth[jobs[c]] * scale for c, (s, e) in done.items())
    errors = [abs(float(r[3]) / truth[jobs[c]] - 1) for c, r in rows.items() if r[3] and jobs[c] in measured]
    cp, per_drone = bound[0] * scale, bound[1] * scale * max(1, len(targets)) / drones
    lower = max(cp, per_drone)
    alone = max(cp, bound[1] * scale / drones)  # one target's own lower bound with every drone
    per_target = {}
    for target in targets:
        ends = [e for c, (_, e) in done.items() if c == job_name(jobs[c], target)]
        if ends:
            span = max(ends) - start
            per_target[target] = {"makespan": round(span, 2), "lower_bound": round(alone, 2),
                                  "ratio": round(span / alone, 3)}
    client.close()
    return Run(policy=policy, drones=drones, makespan=round(makespan, 2), lower_bound=round(lower, 2),
               critical_path=round(cp, 2), work_per_drone=round(per_drone, 2), ratio=round(makespan / lower, 3),
               utilisation=round(busy / (drones * makespan), 3), efficiency=round(work / (drones * makespan), 3),
               mean_overhead=round(overhead, 4), jobs=total, built=len(done),
               failed=sum(1 for r in rows.values() if r[2] in ("failed", "blocked")),
               import_seconds=round(import_seconds, 2),
               estimate_error=round(statistics.median(errors), 3) if errors else 0.0, targets=per_target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drones", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--policies", nargs="+", default=["critical-path", "fifo"])
    parser.add_argument("--hour", type=float, default=7.0, help="Wall seconds one real build hour takes.")
    parser.add_argument("--seed", type=int, default=2014)
    parser.add_argument("--two-targets", action="store_true",
                        help="Two build targets sharing the drones (critical-path; default 8 drones).")
    parser.add_argument("--timeout", type=float, default=600.0, help="Longest one run may take (s).")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "schedule.json"),
                        help="Where the JSON results go (default: bench/results/schedule.json).")
    args = parser.parse_args()
    if args.two_targets:
        args.policies = ["critical-path"]
        args.drones = args.drones if args.drones != [4, 8, 16] else [8]
        if args.out.endswith("schedule.json"):
            args.out = args.out[:-len("schedule.json")] + "schedule-targets.json"

    durations_path, dag_path = require_data("gentoo-build-durations.json", "gentoo-kde-2014.dag.json")
    durations = json.loads(durations_path.read_text())
    default = load_config(environ={}).queue.default_estimate
    dag = load_dag(dag_path)
    raw = json.loads(dag_path.read_text())
    cp_of = {n["cpv"]: n["cp"] for n in raw["nodes"]}
    samples = {e["cp"]: int(e["n_samples"]) for e in durations}
    truth = true_durations(dag.seconds, samples, cp_of, default, args.seed)
    measured = {cpv for cpv, seconds in dag.seconds.items() if seconds is not None}
    gates = gates_of({s.cpv: s for s in dag.specs})
    break_cycles(gates)
    bound = (max(critical_path(gates, truth).values()), sum(truth.values()))
    scale = args.hour / 3600.0

    with tempfile.TemporaryDirectory(prefix="swarm-schedule-") as tmp:
        home = Path(tmp)
        log_path = home / "emerge.log"
        merges = write_history_log(durations, log_path)
        write_sleepers(truth, scale, home / "sleep")
        print(f"graph: {len(truth)} packages, {dag.edges} edges; history: {merges} merges; "
              f"true work {bound[1] / 3600:.1f} h, critical path {bound[0] / 3600:.1f} h; "
              f"1 h -> {args.hour:g} s; default estimate {default:g} s", flush=True)
        runs: list[Run] = []
        with private_redis(home / "redis") as url:
            for policy in args.policies:
                for drones in args.drones:
                    run = run_once(url, home, policy, drones, dag_path, log_path, truth, measured, scale,
                                   home / "sleep", bound, args.timeout)
                    runs.append(run)
                    print(f"{policy:>13} {drones:>2} drones: makespan {run.makespan:7.1f} s, lower bound "
                          f"{run.lower_bound:7.1f} s, ratio {run.ratio:.3f}, utilisation {run.utilisation:.1%}, "
                          f"efficiency {run.efficiency:.1%}, overhead/job {run.mean_overhead * 1000:.0f} ms, "
                          f"estimate error {run.estimate_error:.0%}, built {run.built}/{run.jobs}", flush=True)
                    if args.two_targets:
                        pair = run_once(url, home, policy, drones, dag_path, log_path, truth, measured, scale,
                                        home / "sleep", bound, args.timeout * 2, TWO_TARGETS)
                        runs.append(pair)
                        for target, figures in pair.targets.items():
                            print(f"  target {target}: makespan {figures['makespan']:7.1f} s, its lower bound "
                                  f"{figures['lower_bound']:7.1f} s, ratio {figures['ratio']:.3f}", flush=True)
                        print(f"  both targets: makespan {pair.makespan:7.1f} s, lower bound {pair.lower_bound:7.1f} s "
                              f"(ratio {pair.ratio:.3f}); one after the other {2 * run.makespan:7.1f} s "
                              f"(together / sequential {pair.makespan / (2 * run.makespan):.3f}), "
                              f"built {pair.built}/{pair.jobs}", flush=True)
    result = {"hour_seconds": args.hour, "seed": args.seed, "jitter_sigma": JITTER_SIGMA,
              "default_estimate": default, "true_work_hours": round(bound[1] / 3600, 2),
              "critical_path_hours": round(bound[0] / 3600, 2), "runs": [asdict(r) for r in runs]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
