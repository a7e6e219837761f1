"""``swarmctl report``: a real small swarm's night drawn as a page, looked at as a person would."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from swarmctl.cli.views.report import OUTCOME_COLOUR, render_svg
from swarmctl.events import Event
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from swarmctl.report import analyse
from tests.browser import Png, close, hex_colour, screenshot
from tests.helpers import Spawner, run_cli, synthetic_night, wait_until

SVG = "{http://www.w3.org/2000/svg}"
FAST = {"SWARM_DRONE_HEARTBEAT_INTERVAL": "0.5", "SWARM_DRONE_POLL_INTERVAL": "0.2"}
CHAIN = ["app-misc/chain-a-1", "app-misc/chain-b-1", "app-misc/chain-c-1"]
LOOSE = [f"app-misc/loose{i}-1" for i in range(5)]
BROKEN = "app-misc/broken-1"


@pytest.fixture
def night(spawn: Spawner, queue: Queue, registry: DroneRegistry, tmp_path: Path) -> dict[str, object]:
    """Two drones build a chain, five loose packages and one that fails everywhere (blocked)."""
    script = tmp_path / "build.sh"
    script.write_text('#!/bin/sh\ncase "$1" in broken*) sleep 0.3; exit 1;; chain*) sleep 1.2;; *) sleep 0.4;; esac\n')
    script.chmod(0o755)
    queue.add([JobSpec(CHAIN[0]), JobSpec(CHAIN[1], build=[CHAIN[0]]), JobSpec(CHAIN[2], build=[CHAIN[1]]),
               *(JobSpec(c) for c in LOOSE), JobSpec(BROKEN)])
    for name in ("tarn", "izar"):
        token = registry.enroll(name)
        spawn(["drone", "run", "--name", name, "--token", token, "--command", f"{script} {{pn}}"],
              env=FAST, name=name)
    assert wait_until(lambda: queue.counts()["built"] == len(CHAIN) + len(LOOSE)
                      and queue.counts()["blocked"] == 1, 60)
    return {}


def _rects(svg: ET.Element, cls: str) -> list[ET.Element]:
    return [r for r in svg.iter(f"{SVG}rect") if cls in (r.get("class") or "").split()]


def test_the_night_is_drawn_with_a_bar_per_build_and_its_figures(
        night: dict[str, object], swarm_env: dict[str, str], tmp_path: Path) -> None:
    html, svg_file = tmp_path / "night.html", tmp_path / "night.svg"
    run_cli(["report", "--since", "1h", "--html", str(html), "--svg", str(svg_file)], swarm_env)
    data = json.loads(run_cli(["report", "--since", "1h", "--json"], swarm_env).stdout)

    # The SVG, read as data: a bar per attempt with the right outcome, one row per drone.
    svg = ET.parse(svg_file).getroot()
    built = _rects(svg, "built")
    assert sorted(r.get("data-job") for r in built) == sorted(CHAIN + LOOSE)
    failed = _rects(svg, "failed")
    assert {r.get("data-job") for r in failed} == {BROKEN} and len(failed) == 2  # once on each drone
    rows = {g.get("data-drone") for g in svg.iter(f"{SVG}g") if g.get("class") == "drone"}
    assert rows == {"tarn", "izar"}
    assert {r.get("data-job") for r in _rects(svg, "critical")} == set(CHAIN)  # the chain is the longest
    assert data["critical"] == CHAIN

    # The figures, with units, above the timeline; the failure with its reason.
    page = html.read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for label in ("makespan", "lower bound", "makespan / lower bound", "builds per hour", "Slowest packages"):
        assert label in page
    figures = data["figures"]
    assert figures["built"] == len(CHAIN) + len(LOOSE) and figures["failed"] == 2
    assert figures["lower_bound"] >= figures["chain"] >= 3.6  # three chained builds of 1.2 s
    assert 1.0 <= figures["ratio"] < 3
    assert set(figures["utilisation"]) == {"tarn", "izar"}
    assert "command exited 1" in page and BROKEN in page

    # As a person sees it: Chromium draws every bar in its colour where the SVG puts it.
    png = Png(screenshot(svg_file, tmp_path / "night.png", int(svg.get("width") or 0), int(svg.get("height") or 0)))
    for rect in built + failed:
        x0, y0 = float(rect.get("x") or 0), float(rect.get("y") or 0)
        x1, y1 = x0 + float(rect.get("width") or 0), y0 + float(rect.get("height") or 0)
        inside = [png.pixel(x, y) for x in range(int(x0) + 2, int(x1) - 1) for y in range(int(y0) + 2, int(y1) - 1)]
        want = hex_colour(OUTCOME_COLOUR["failed" if rect in failed else "built"])
        share = sum(close(p, want, 40) for p in inside) / max(1, len(inside))
        assert share > 0.6, f"{rect.get('data-job')} at {x0:.0f},{y0:.0f}: {share:.0%} of it in its colour"
    # And the page as a whole shows the timeline below its figures.
    full = Png(screenshot(html, tmp_path / "page.png", 1280, 1000))
    assert full.count(hex_colour(OUTCOME_COLOUR["built"])) > 500
    assert full.count(hex_colour(OUTCOME_COLOUR["failed"])) > 50


def test_report_says_what_is_wrong_with_a_bad_time(swarm_env: dict[str, str], redis_client: object) -> None:
    proc = run_cli(["report", "--since", "yesterday-ish"], swarm_env, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "neither a time" in proc.stderr


def test_twenty_thousand_jobs_stay_a_readable_picture() -> None:
    events = synthetic_night(20_000, 40)
    night = analyse(events, events[0].ts, events[-1].ts)
    assert night.figures.built == 20_000 and night.figures.failed == 400
    svg = ET.fromstring(render_svg(night))
    bars = [r for r in svg.iter(f"{SVG}rect") if "bar" in (r.get("class") or "").split()]
    # Merged: far fewer bars than builds, yet every build is counted in one of them.
    assert len(bars) < 4000
    assert sum(int(r.get("data-count") or 1) for r in bars if "built" in r.get("class", "")) == 20_000
    assert len({r.get("data-drone") for r in bars}) == 40


def test_each_outcome_and_grounding_is_told_apart() -> None:
    """Event shapes as the Lua scripts and the orchestrator write them."""
    events = [
        Event("", 100, "claimed", "app-misc/a-1", "tarn", ""),
        Event("", 110, "hung", "app-misc/a-1", "tarn", "no log output and no CPU; killed if it stays so"),
        Event("", 130, "requeued", "app-misc/a-1", "tarn", "hung: no progress; killed"),
        Event("", 131, "claimed", "app-misc/b-1", "tarn", ""),
        Event("", 140, "requeued", "app-misc/b-1", "tarn", "build: command exited 1"),
        Event("", 141, "grounded", "", "tarn", "5 consecutive failures; grounded for 60 s"),
        Event("", 150, "claimed", "app-misc/c-1", "izar", ""),
        Event("", 160, "reclaimed", "app-misc/c-1", "izar", "drone silent for 30 s"),
        Event("", 161, "claimed", "app-misc/c-1", "vega", ""),
        Event("", 170, "released", "app-misc/c-1", "vega", "drone stopping"),
        Event("", 171, "released", "", "tarn", "grounding lifted by operator"),
        Event("", 172, "claimed", "app-misc/c-1", "tarn", ""),
        Event("", 190, "built", "app-misc/c-1", "tarn", "18.0"),
        Event("", 195, "built", "app-misc/d-1", "izar", "40"),  # claimed before the window
        Event("", 196, "claimed", "app-misc/e-1", "izar", ""),
    ]
    night = analyse(events, 90, 200)
    outcomes = [(b.job, b.drone, b.outcome) for b in night.bars]
    assert outcomes == [("app-misc/a-1", "tarn", "hung"), ("app-misc/b-1", "tarn", "failed"),
                        ("app-misc/c-1", "izar", "reclaimed"), ("app-misc/d-1", "izar", "built"),
                        ("app-misc/c-1", "vega", "released"), ("app-misc/c-1", "tarn", "built"),
                        ("app-misc/e-1", "izar", "running")]
    d = next(b for b in night.bars if b.job == "app-misc/d-1")
    assert (d.start, d.end) == (155, 195)  # its start from the duration the built event carries
    assert [(s.drone, s.start, s.end) for s in night.grounded] == [("tarn", 141, 171)]  # lifted early
    assert [f.reason for f in night.figures.failures] == ["hung: no progress; killed", "build: command exited 1"]
    assert night.drones == ["izar", "tarn", "vega"]
