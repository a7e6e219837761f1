"""swarmctl.monitor: gathering a snapshot from a real Redis, and frames compared on content."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
import redis
from rich.console import Console

from swarmctl import keys, monitor
from swarmctl.cli.live import run_live
from swarmctl.cli.views.monitor import render_frame
from swarmctl.config import Config, load_config
from swarmctl.events import Event
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue, for_target
from swarmctl.registry import DroneInfo, DroneRegistry
from swarmctl.target_status import record_sync
from tests.helpers import run_cli

LONG_CPV = "dev-python/an-extraordinarily-long-package-name-that-never-fits-any-column-1.2.3_pre20240101-r7"
LONG_DRONE = "drone-with-a-name-much-longer-than-the-column-allows"


def text_of(renderable: object, width: int, color: bool = False) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system="truecolor" if color else None,
                      legacy_windows=False, force_terminal=color)
    console.print(renderable)
    return console.export_text()


def lines_of(renderable: object, width: int) -> list[str]:
    return text_of(renderable, width).rstrip("\n").split("\n")


def table_rows(lines: list[str]) -> list[str]:
    """The drone rows: between the column header and the events rule."""
    start = next(i for i, line in enumerate(lines) if "DRONE" in line and "STATUS" in line)
    end = next(i for i, line in enumerate(lines) if "recent events" in line)
    return [line for line in lines[start + 2:end] if line.strip("│ ")]


def beat(registry: DroneRegistry, name: str, token: str, **fields: object) -> None:
    registry.heartbeat(name, token, {"status": "idle", "cpu": 3.0, "mem": 10.0, **fields})


@pytest.fixture
def busy(redis_client: redis.Redis, config: Config) -> dict[str, str]:
    """Four drones (two building, one idle, one grounded), one silent, a chain of jobs."""
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    queue.add([JobSpec("sys-devel/llvm-19.1.7", estimate=28800), JobSpec("dev-qt/qtbase-6.8.2", estimate=3600),
               JobSpec("www-client/firefox-128.0", build=["sys-devel/llvm-19.1.7"], estimate=2700),
               JobSpec(LONG_CPV, estimate=60)])
    tokens = {name: registry.enroll(name) for name in
              ("drone-Izar", "drone-Tarn", "drone-Tau-Beta", "drone-Meridian", LONG_DRONE)}
    for name in ("drone-Izar", LONG_DRONE, "drone-Tarn"):
        claim = queue.claim(name, tokens[name])
        assert claim is not None
        registry.heartbeat(name, tokens[name], {"status": "building", "task": claim.cpv, "cpu": 87.3,
                                                "mem": 45.2, "task_started": time.time()}, claim.cpv, claim.lease)
    beat(registry, "drone-Tau-Beta", tokens["drone-Tau-Beta"], cpu=2, mem=12)
    registry.ground("drone-Tarn", 240, queue)
    return tokens


def test_empty_swarm(redis_client: redis.Redis, config: Config) -> None:
    snap = monitor.gather(redis_client, config)
    assert snap.counts["needed"] == 0 and snap.drones == [] and snap.events == []
    text = text_of(render_frame(snap, 80), 80)
    assert "Build Swarm Monitor" in text
    for expected in ("Needed: 0", "Building: 0", "Built: 0", "Failed/Blocked: 0/0", "Rate: 0/hr", "ETA: done",
                     "no drones enrolled", "no events yet", "Leader: none"):
        assert expected in text, expected


def test_busy_swarm(redis_client: redis.Redis, config: Config, busy: dict[str, str]) -> None:
    snap = monitor.gather(redis_client, config)
    assert snap.counts["delegated"] == 2 and snap.counts["needed"] == 2
    lines = lines_of(render_frame(snap, 120), 120)
    text = "\n".join(lines)
    assert "Needed: 2" in text and "Building: 2" in text and "Drones: 4/5 online" in text
    rows = table_rows(lines)
    assert len(rows) == 5
    row = {name: [line for line in rows if name in line] for name in ("drone-Izar", "drone-Tau-Beta",
                                                                       "drone-Tarn", "drone-Meridian")}
    izar = [line for line in row["drone-Izar"] if "BUILDING" in line]
    assert izar and "sys-devel/llvm-19.1.7" in izar[0] and "87%" in izar[0] and "45%" in izar[0]
    assert any("IDLE" in line and "2%" in line and "12%" in line for line in row["drone-Tau-Beta"])
    assert any("GROUNDED 4m" in line or "GROUNDED 3m" in line for line in row["drone-Tarn"])
    assert any("OFFLINE" in line and "never" in line for line in row["drone-Meridian"])
    # grounded first, then building, idle, offline
    statuses = [row.split()[2] for row in rows]
    assert statuses == ["GROUNDED", "BUILDING", "BUILDING", "IDLE", "OFFLINE"]
    # the event tail shows the grounding and the reclaim, not the claims
    assert "grounded" in text and "reclaimed" in text and " claimed " not in text


def test_status_colours(redis_client: redis.Redis, config: Config, busy: dict[str, str]) -> None:
    snap = monitor.gather(redis_client, config)
    console = Console(width=120, file=io.StringIO(), color_system="truecolor", force_terminal=True)
    seen: dict[str, str] = {}
    for segment in console.render(render_frame(snap, 120)):
        word = segment.text.strip().split(" ")[0]
        if word in ("BUILDING", "IDLE", "GROUNDED", "OFFLINE") and segment.style and segment.style.color:
            seen.setdefault(word, segment.style.color.name)
    assert seen == {"BUILDING": "green", "IDLE": "yellow", "GROUNDED": "red", "OFFLINE": "grey50"}


def test_long_names_never_break_columns(redis_client: redis.Redis, config: Config, busy: dict[str, str]) -> None:
    snap = monitor.gather(redis_client, config)
    for width in (40, 60, 80, 100, 160):
        lines = lines_of(render_frame(snap, width), width)
        assert all(len(line) <= width for line in lines), width
        # every drone is exactly one line, cut with an ellipsis rather than wrapped
        long_rows = [line for line in table_rows(lines) if "drone-w" in line]
        assert len(long_rows) == 1, (width, long_rows)
        assert "…" in long_rows[0]
        assert "BUILDING" in long_rows[0]
        assert LONG_CPV not in "\n".join(table_rows(lines))  # too long for the task column at these widths


def test_narrow_terminals_drop_columns(redis_client: redis.Redis, config: Config, busy: dict[str, str]) -> None:
    snap = monitor.gather(redis_client, config)
    head = {w: next(line for line in lines_of(render_frame(snap, w), w) if "DRONE" in line)
            for w in (40, 62, 80, 120)}
    assert "TASK" in head[40] and "CPU" not in head[40] and "TIME" not in head[40]
    assert "TIME" in head[62] and "SEEN" not in head[62]
    assert all(col in head[120] for col in ("TIME", "CPU", "RAM", "SEEN"))
    # the header packs whole items onto more lines instead of splitting one
    narrow = "\n".join(lines_of(render_frame(snap, 40), 40))
    assert "Failed/Blocked: 0/0" in narrow and "Rate: 0/hr" in narrow


def test_height_limits_rows(redis_client: redis.Redis, config: Config) -> None:
    registry = DroneRegistry(redis_client, config)
    for i in range(60):
        beat(registry, f"d{i:02d}", registry.enroll(f"d{i:02d}"))
    snap = monitor.gather(redis_client, config)
    lines = lines_of(render_frame(snap, 100, height=24), 100)
    assert len(lines) == 24
    more = [line for line in lines if "more" in line]
    assert more and "idle" in more[0]
    shown = sum(1 for line in table_rows(lines) if line.startswith("│ d"))
    assert 8 <= shown < 24
    assert int(more[0].split("+")[1].split()[0]) == 60 - shown


def test_elapsed_uses_the_claim_time(redis_client: redis.Redis, config: Config) -> None:
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    queue.add([JobSpec("app-misc/hello-1", estimate=100)])
    token = registry.enroll("skewed")
    claim = queue.claim("skewed", token)
    assert claim is not None
    redis_client.hset(keys.job(claim.cpv), "claimed_at", int((time.time() - 125) * 1000))
    # the drone's own clock is an hour off: the monitor must not believe it
    registry.heartbeat("skewed", token, {"status": "building", "task": claim.cpv,
                                         "task_started": time.time() - 3600}, claim.cpv, claim.lease)
    snap = monitor.gather(redis_client, config)
    elapsed = snap.elapsed(snap.drones[0])
    assert elapsed is not None and 120 < elapsed < 140
    assert "2m0" in text_of(render_frame(snap, 100), 100)


def test_rate_and_eta_from_real_builds(redis_client: redis.Redis, config: Config) -> None:
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    queue.add([JobSpec(f"app-misc/pkg{i}-1", estimate=600) for i in range(6)])
    token = registry.enroll("worker")
    rate = monitor.BuiltRate(3600)
    first = monitor.gather(redis_client, config, rate)
    assert first.rate_per_hour == 0
    assert first.eta is not None and first.eta.lower_bound and first.eta.seconds == 600
    for _ in range(3):
        claim = queue.claim("worker", token)
        assert claim is not None
        assert queue.complete(claim.cpv, "worker", token, claim.lease, 1.0) == "ok"
    later = monitor.gather(redis_client, config, rate)  # incremental: reads only the new events
    # three builds within the minimum span of five minutes: 3 * 3600 / 300
    assert later.rate_per_hour == pytest.approx(36.0)
    assert later.counts["built"] == 3
    eta = later.eta
    assert eta is not None and not eta.lower_bound
    assert eta.seconds == pytest.approx(600)  # the 600 s chain outlasts the backlog (3 jobs at 36/hr: 300 s)
    text = text_of(render_frame(later, 100), 100)
    assert "Rate: 36/hr" in text and "ETA: 10m00s" in text and "Built: 3" in text
    # a fresh tracker reading the window from the stream agrees
    assert monitor.gather(redis_client, config).rate_per_hour == pytest.approx(36.0)


def test_rate_window_slides() -> None:
    rate = monitor.BuiltRate(window=600)
    now = 1_000_000.0
    built = [(f"{int((now - age) * 1000)}-0", {"kind": "built"}) for age in (900, 500, 100, 50)]
    claimed = [(f"{int((now - 10) * 1000)}-0", {"kind": "claimed"})]
    rate.absorb([built + claimed, [built[0]]], now)  # the stream goes back further than the window
    assert rate.per_hour(now) == pytest.approx(3 * 3600 / 600)  # the 900 s old one is outside
    assert rate.per_hour(now + 460) == pytest.approx(2 * 3600 / 600)  # 500 s one slid out


def test_eta_rules() -> None:
    assert monitor.estimate_eta(0, 0, None) == monitor.Eta(0.0)
    assert monitor.estimate_eta(10, 0, None) is None
    assert monitor.estimate_eta(10, 0, 7200) == monitor.Eta(7200, lower_bound=True)
    assert monitor.estimate_eta(10, 20, 600) == monitor.Eta(1800)  # backlog dominates
    assert monitor.estimate_eta(2, 20, 28800) == monitor.Eta(28800)  # the llvm chain dominates
    running = [monitor.RunningJob("a/b-1", "d", claimed_at=1000.0, estimate=600, priority=900)]
    assert monitor.remaining_chain(None, running, now=1300.0) == 600
    assert monitor.remaining_chain(100, running, now=5000.0) == 300  # overdue: own part counts as done


def test_gather_is_two_round_trips(redis_client: redis.Redis, config: Config, busy: dict[str, str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    rate = monitor.BuiltRate()
    monitor.gather(redis_client, config, rate)
    calls = {"pipelines": 0, "commands": 0}
    original_execute = redis.client.Pipeline.execute
    original_command = redis.Redis.execute_command

    def execute(self: redis.client.Pipeline, *args: object, **kwargs: object) -> object:
        calls["pipelines"] += 1
        return original_execute(self, *args, **kwargs)

    def command(self: redis.Redis, *args: object, **kwargs: object) -> object:
        if not isinstance(self, redis.client.Pipeline):
            calls["commands"] += 1
        return original_command(self, *args, **kwargs)

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    monkeypatch.setattr(redis.Redis, "execute_command", command)
    monitor.gather(redis_client, config, rate)
    assert calls == {"pipelines": 2, "commands": 0}


def test_render_is_pure() -> None:
    """A frame from hand-made data: no Redis, no clock, no terminal."""
    drone = DroneInfo(name="drone-Izar", status="building", task="sys-devel/llvm-19.1.7", task_started=None,
                      cpu=87.0, mem=45.0, last_heartbeat=999.0, heartbeat_age=1.0, failures=0, grounded_until=None,
                      built=3, revoked=False, hung=True, machine_id=None, host=None)
    snap = monitor.Snapshot(now=1000.0, counts={"needed": 45, "delegated": 1, "built": 312, "failed": 0,
                                                "blocked": 1, "ready": 40, "waiting": 5},
                            drones=[drone], events=[Event("1-0", 990.0, "built", "app-misc/x-1", "drone-Izar", "42")],
                            rate_per_hour=8.0, critical_path=None,
                            running={"sys-devel/llvm-19.1.7": monitor.RunningJob(
                                "sys-devel/llvm-19.1.7", "drone-Izar", 400.0, 28800, 28800)})
    text = text_of(render_frame(snap, 90), 90)
    assert "Needed: 45" in text and "Built: 312" in text and "Rate: 8/hr" in text and "Failed/Blocked: 0/1" in text
    assert "ETA: 5h45m" in text  # 46 open at 8/hr
    assert "HUNG" in text and "10m00s" in text
    assert "built" in text and "app-misc/x-1" in text


def test_cli_once(swarm_env: dict[str, str], redis_client: redis.Redis, config: Config,
                  busy: dict[str, str]) -> None:
    out = run_cli(["monitor", "--once", "--width", "100"], swarm_env).stdout
    lines = out.rstrip("\n").split("\n")
    assert all(len(line) <= 100 for line in lines)
    assert "drone-Izar" in out and "BUILDING" in out and "GROUNDED" in out
    assert "\x1b[" not in out  # not a terminal: no colour codes in scripts' output


def test_live_view_rides_out_a_redis_outage() -> None:
    """run_live keeps refreshing through a failed read and shows why; q (here: Ctrl-C) ends it quietly."""
    frames = iter([redis.ConnectionError("Connection refused"), "snapshot", KeyboardInterrupt()])
    snap = monitor.Snapshot(now=1000.0, counts={"needed": 7}, drones=[], events=[], rate_per_hour=0.0,
                            critical_path=None)

    def read(rate: monitor.BuiltRate) -> monitor.Snapshot:
        item = next(frames)
        if isinstance(item, BaseException):
            raise item
        return snap

    out = io.StringIO()
    console = Console(width=80, height=30, file=out, color_system=None, force_terminal=True)
    run_live(read, console, interval=0.01, screen=False)
    text = out.getvalue()
    assert "cannot read the swarm: Connection refused" in text
    assert "Needed: 7" in text


@pytest.mark.parametrize(("status", "label", "colour", "reason"), [
    ("misconfigured", "MISCONFIG", "red", "zstd not found (BINPKG_COMPRESS=zstd)"),
    ("low-disk", "LOW-DISK", "yellow", "pkgdir /pkg: 1.2 GiB free"),
])
def test_a_drone_that_cannot_build_shows_why(status: str, label: str, colour: str, reason: str) -> None:
    drone = DroneInfo(name="drone-Vega", status=status, task=None, task_started=None, cpu=1.0, mem=5.0,
                      last_heartbeat=999.0, heartbeat_age=1.0, failures=0, grounded_until=None, built=0,
                      revoked=False, hung=False, machine_id=None, host=None, problem=reason)
    snap = monitor.Snapshot(now=1000.0, counts={"needed": 3, "delegated": 0, "built": 0, "failed": 0,
                                                "blocked": 0, "retired": 0, "ready": 3, "waiting": 0},
                            drones=[drone], events=[], rate_per_hour=0.0, critical_path=None, running={})
    console = Console(width=100, file=io.StringIO(), color_system="truecolor", force_terminal=True)
    segments = list(console.render(render_frame(snap, 100)))
    cell = next(s for s in segments if s.text.strip() == label)
    assert cell.style is not None and cell.style.color is not None and cell.style.color.name == colour
    assert reason in text_of(render_frame(snap, 100), 100)


def test_several_targets_get_a_line_each(redis_client: redis.Redis, config: Config, swarm_env: dict[str, str],
                                         tmp_path: Path) -> None:
    path = tmp_path / "swarm.yml"
    path.write_text("targets:\n  desktop:\n    make_conf: {USE: X}\n  server:\n    make_conf: {USE: -X}\n")
    farm = load_config(environ={**swarm_env, "SWARM_CONFIG": str(path)})
    queue, registry = Queue(redis_client, farm), DroneRegistry(redis_client, farm)
    queue.add(for_target([JobSpec("app-misc/a-1"), JobSpec("app-misc/b-1")], "desktop")
              + for_target([JobSpec("app-misc/a-1")], "server"))
    record_sync(redis_client, "desktop", 4, 2, "rev-a")
    registry.heartbeat("dsk", registry.enroll("dsk"), {"status": "idle", "targets": "desktop"})
    text = text_of(render_frame(monitor.gather(redis_client, farm), 140), 140)
    assert "Needed: 3" in text  # the totals as before, then a line per target as in swarmctl status
    assert ("Target desktop: 2 needed, 0 building, 0 built, 0 failed/blocked; 50.0% available (2/4); "
            "1/1 drone(s) available") in text
    assert "Target server: 1 needed, 0 building, 0 built, 0 failed/blocked; coverage unknown; 0/0 drone(s)" in text
    single = monitor.gather(redis_client, config)  # one target: the view is unchanged
    assert single.targets == [] and "Target " not in text_of(render_frame(single, 140), 140)
