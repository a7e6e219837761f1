"""Soak: random faults on a continuous workload for an hour (or --minutes N), same checks as CI.

The harness is tests/chaos_engine (shared with tests/chaos/test_chaos.py): drones on test-bed hosts
(real processes, real SSH daemons, their own init), Redis in its own host with AOF, a leader and a
standby orchestrator, an external witness counting every finished build. Faults arrive as a
Poisson process (mean gap --mean-gap s, every kind in the first arrivals), each kind with random
durations; the workload keeps --open jobs queued (batches with dependencies) until the faults
stop, then a final batch is built and everything is checked.

Targets: zero lost or duplicated builds (every job built and published exactly once), median
recovery <= 15 s. Needs root (the test bed). Prints the report and writes bench/results/soak.json
(exit 1 when a check failed or a target was missed).

    sudo .venv/bin/python bench/soak.py --minutes 5
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from swarmctl.config import load_config
from tests.chaos_engine import ChaosRun, asdict_plan, format_report, skip_reason, soak_plan

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MEDIAN_RECOVERY = 15.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="How long faults are injected (default 60).")
    parser.add_argument("--seed", type=int, default=None, help="RNG seed (default: from the clock, printed).")
    parser.add_argument("--drones", type=int, default=4, help="Drone hosts (default 4).")
    parser.add_argument("--mean-gap", type=float, default=12.0, help="Mean seconds between faults (default 12).")
    parser.add_argument("--open", type=int, default=60, help="Jobs kept queued while faults run (default 60).")
    parser.add_argument("--build-ms", default="200-800", help="Build duration range in ms (default 200-800).")
    parser.add_argument("--keep", help="Keep logs, witness and Redis data in this dir (default: a temp dir).")
    parser.add_argument("--prefix", default="soak", help="Test bed name prefix (default soak).")
    parser.add_argument("--output", default=str(RESULTS / "soak.json"), help="Where the figures go.")
    args = parser.parse_args(argv)
    reason = skip_reason()
    if reason:
        print(f"SKIP: the soak {reason}", file=sys.stderr)
        return 0
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    lo, hi = (int(x) for x in args.build_ms.split("-"))
    offline_after = load_config(environ={}).orchestrator.offline_after
    plan = soak_plan(random.Random(seed), args.minutes * 60, offline_after, args.mean_gap)
    print(f"soak: {args.minutes:g} min, seed {seed}, {len(plan)} faults planned, {args.drones} drones", flush=True)
    rundir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="swarm-soak-"))
    run = ChaosRun(rundir, plan, drones=args.drones, seed=seed, min_jobs=200, open_target=args.open,
                   final_jobs=40, build_ms=(lo, hi), prefix=args.prefix, log=lambda line: print(line, flush=True))
    report = run.execute()
    report["minutes"] = args.minutes
    report["plan"] = asdict_plan(plan)
    report["rundir"] = str(rundir)
    lost = [p for p in report["problems"] if "built events" in p or "never saw" in p or "not fully built" in p]
    queue = report["queue"]
    multi = [p for p in report["problems"] if "built events (want exactly 1)" in p and ": 0 built" not in p]
    report["targets"] = {
        "lost_or_duplicated_builds": len(lost),
        "lost_jobs": sum(1 for p in report["problems"] if ": 0 built events" in p or "never saw it built" in p),
        "duplicated_beyond_attributed": report["unattributed_extra_builds"] + len(multi),
        "stuck": queue["needed"] + queue["delegated"] + queue["failed"] + queue["blocked"],
        "faults_by_kind": {k: v["count"] for k, v in sorted(report["by_kind"].items())},
        "median_recover_s": report["median_recover_s"],
        "median_recover_target_s": TARGET_MEDIAN_RECOVERY,
        "met": not report["problems"] and (report["median_recover_s"] or 0) <= TARGET_MEDIAN_RECOVERY,
    }
    print(format_report(report))
    print(json.dumps(report["targets"]))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"figures written to {out}; logs in {rundir}")
    return 0 if report["targets"]["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
