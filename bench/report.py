#!/usr/bin/env python3
"""What ``swarmctl report`` costs for a night of 20,000 jobs on 40 drones.

Fills a private redis-server with the night's events (the stream sized to hold them,
as docs/operator-guide.md advises), each job's gate on the one before it on its drone
and the build history, then times gathering (reading Redis and analysing), drawing the
HTML page, and, when Debian's chromium is installed, a browser rendering the page to a
PNG. Prints the figures and writes bench/results/report.json.

    .venv/bin/python bench/report.py [--jobs 20000] [--drones 40] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import private_redis  # noqa: E402
from swarmctl import keys  # noqa: E402
from swarmctl.cli.views.report import render_html, render_svg  # noqa: E402
from swarmctl.history import BuildRecord, History  # noqa: E402
from swarmctl.report import gather_night  # noqa: E402
from tests.browser import CHROMIUM_FLAGS  # noqa: E402
from tests.helpers import synthetic_night  # noqa: E402


def fill(client: redis.Redis, jobs: int, drones: int) -> tuple[float, float]:
    """The night's events into the stream (ids from their times), gates and history; returns its window."""
    start = time.time() - 3 * 86400
    events = synthetic_night(jobs, drones, start=start)
    with client.pipeline(transaction=False) as pipe:
        last = 0
        for event in events:
            ms = max(int(event.ts * 1000), last + 1)  # stream ids must grow
            last = ms
            pipe.xadd(keys.EVENTS, {"ts": ms, "kind": event.kind, "job": event.job, "drone": event.drone,
                                    "reason": event.reason}, id=f"{ms}-0")
        for i in range(drones, jobs):
            pipe.sadd(keys.job_gates(f"app-misc/p{i}-1"), f"app-misc/p{i - drones}-1")
        for name in {e.drone for e in events}:
            pipe.sadd(keys.DRONES, name)
        pipe.execute()
    history = History(client)
    with client.pipeline(transaction=False) as pipe:
        for e in events:
            if e.kind == "built":
                history.record(BuildRecord(e.job, float(e.reason)), pipeline=pipe)
        pipe.execute()
    return events[0].ts - 1, events[-1].ts + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--drones", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp, private_redis(Path(tmp)) as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        since, until = fill(client, args.jobs, args.drones)
        gather, draw = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            night = gather_night(client, since, until)
            t1 = time.perf_counter()
            page = render_html(night)
            svg = render_svg(night)
            draw.append(time.perf_counter() - t1)
            gather.append(t1 - t0)
        html_file = Path(tmp) / "night.html"
        html_file.write_text(page)
        bars = page.count('class="bar ')
        browser = None
        chromium = shutil.which("chromium")
        if chromium:
            with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
                t0 = time.perf_counter()
                subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                f"--screenshot={tmp}/night.png", "--window-size=1280,1600", html_file.as_uri()],
                               capture_output=True, timeout=300, check=False)
                browser = time.perf_counter() - t0
        client.close()
    result = {
        "jobs": args.jobs, "drones": args.drones, "attempts": night.figures.attempts, "repeat": args.repeat,
        "gather_seconds_median": statistics.median(gather), "draw_seconds_median": statistics.median(draw),
        "html_bytes": len(page.encode()), "svg_bytes": len(svg.encode()), "bars_drawn": bars,
        "chromium_screenshot_seconds": browser, "python": platform.python_version(),
    }
    for key, value in result.items():
        print(f"{key:>28}: {value:.3f}" if isinstance(value, float) else f"{key:>28}: {value}")
    out = REPO / "bench" / "results" / "report.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
