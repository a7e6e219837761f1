"""``swarmctl monitor``: one snapshot of the swarm per frame, rendered by a pure function.

:func:`gather` reads everything a frame shows in two pipelined round trips
(counts, drones' ids, the event tail, meta, the leader and the clock; then every
drone hash and every delegated job), whatever the size of the swarm.
:func:`render_frame` turns a :class:`Snapshot` into a rich renderable for a
given width and height with no I/O, so frames can be compared in tests and
timed in bench/monitor.py.

The build rate comes from a :class:`BuiltRate` kept between frames: the first
frame reads the window's events from the stream, later frames only the new
ones.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import redis
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from swarmctl import keys
from swarmctl.cli import terminal
from swarmctl.config import Config
from swarmctl.connection import TRANSIENT
from swarmctl.events import Event, _event
from swarmctl.facts import SwarmFacts
from swarmctl.queue import queue_counts, read_counts
from swarmctl.registry import DroneInfo, DroneRegistry

log = logging.getLogger("swarmctl.monitor")

#: Event kinds too frequent to be worth a line in the tail.
QUIET_EVENTS = frozenset({"added", "claimed"})
#: Shortest span a rate is extrapolated from (a young swarm's first build is not "60/hr").
MIN_RATE_SPAN = 300.0
#: Order of drones in the table: trouble first, then work, then the rest.
STATUS_ORDER = {"grounded": 0, "building": 1, "stopping": 2, "idle": 3, "offline": 4}
#: How many raw events are read to find the tail's interesting ones.
TAIL_SCAN = 200


def _stream_seconds(entry_id: str) -> float:
    return int(entry_id.split("-", 1)[0]) / 1000.0


class BuiltRate:
    """Packages built per hour over a sliding window, read incrementally from the event stream."""

    def __init__(self, window: float = 3600.0) -> None:
        self.window = window
        self._times: deque[float] = deque()
        self._last_id: str | None = None
        self._origin: float | None = None  # from when the tracker has seen every event

    def queue_reads(self, pipe: redis.client.Pipeline, now_hint: float) -> int:
        """Add this frame's stream reads to ``pipe``; returns how many replies they make."""
        if self._last_id is None:
            start_ms = max(0, int((now_hint - self.window) * 1000))
            pipe.xrange(keys.EVENTS, min=str(start_ms), max="+")
            pipe.xrange(keys.EVENTS, min="-", max="+", count=1)
            return 2
        pipe.xrange(keys.EVENTS, min=f"({self._last_id}", max="+")
        return 1

    def absorb(self, replies: list[Any], now: float) -> None:
        """Take the replies of :meth:`queue_reads` (in order)."""
        entries = replies[0] or []
        if self._last_id is None:
            oldest = replies[1]
            window_start = now - self.window
            first = _stream_seconds(oldest[0][0]) if oldest else now
            self._origin = max(window_start, first)
        for entry_id, fields in entries:
            if fields.get("kind") == "built":
                self._times.append(_stream_seconds(entry_id))
        if entries:
            self._last_id = entries[-1][0]
        elif self._last_id is None:
            self._last_id = f"{int(now * 1000)}-0"

    def per_hour(self, now: float) -> float:
        cutoff = now - self.window
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
        origin = self._origin if self._origin is not None else now
        span = min(self.window, max(now - origin, MIN_RATE_SPAN))
        return len(self._times) * 3600.0 / span


@dataclass(frozen=True)
class Eta:
    """Time to an empty queue; ``lower_bound`` when no recent builds give a rate."""

    seconds: float
    lower_bound: bool = False


@dataclass(frozen=True)
class RunningJob:
    """A delegated job: who has it, since when (Redis clock), and its chain."""

    cpv: str
    drone: str
    claimed_at: float | None
    estimate: float
    priority: float


@dataclass
class Snapshot:
    """Everything one frame shows, read at one moment (Redis clock)."""

    now: float
    counts: dict[str, int]
    drones: list[DroneInfo]
    events: list[Event]
    rate_per_hour: float
    critical_path: float | None
    meta: SwarmFacts = field(default_factory=SwarmFacts)
    running: dict[str, RunningJob] = field(default_factory=dict)
    leader: str | None = None
    interval: float = 2.0

    @property
    def open_jobs(self) -> int:
        return self.counts.get("needed", 0) + self.counts.get("delegated", 0)

    @property
    def online(self) -> int:
        return sum(1 for d in self.drones if d.status != "offline")

    @property
    def eta(self) -> Eta | None:
        return estimate_eta(self.open_jobs, self.rate_per_hour, self.critical_path)

    def elapsed(self, drone: DroneInfo) -> float | None:
        """Seconds on the current task: the claim time (Redis clock), else the drone's own."""
        job = self.running.get(drone.task or "")
        if job is not None and job.drone == drone.name and job.claimed_at:
            return max(0.0, self.now - job.claimed_at)
        if drone.task and drone.task_started:
            return max(0.0, self.now - drone.task_started)
        return None


def estimate_eta(open_jobs: int, rate_per_hour: float, critical_path: float | None) -> Eta | None:
    """The later of "the longest remaining chain" and "the backlog at the current rate"."""
    if open_jobs <= 0:
        return Eta(0.0)
    chain = max(0.0, critical_path) if critical_path is not None else None
    if rate_per_hour > 0:
        backlog = open_jobs / rate_per_hour * 3600.0
        return Eta(max(backlog, chain or 0.0))
    return Eta(chain, lower_bound=True) if chain else None


def remaining_chain(top_ready: float | None, running: Iterable[RunningJob], now: float) -> float | None:
    """Seconds of the longest remaining dependency chain (scores are chain seconds).

    A running job's chain shrinks by the time it has already built, up to its estimate.
    """
    chains = [top_ready] if top_ready is not None else []
    for job in running:
        done = min(job.estimate, max(0.0, now - job.claimed_at)) if job.claimed_at else 0.0
        chains.append(job.priority - done)
    return max(chains) if chains else None


def gather(client: redis.Redis, config: Config, rate: BuiltRate | None = None, tail: int = 8) -> Snapshot:
    """Read one frame's worth of swarm state in two pipelined round trips.

    Args:
        client: Redis client (decode_responses=True).
        config: Resolved config (offline threshold, queue policy).
        rate: The tracker kept across frames; a fresh one reads the whole window.
        tail: How many recent events to keep.

    Returns:
        The snapshot; its clock is Redis's, like every time stored in Redis.
    """
    rate = rate or BuiltRate()
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        n = queue_counts(pipe)
        pipe.zrevrange(keys.READY, 0, 0, withscores=True)
        pipe.smembers(keys.DRONES)
        pipe.smembers(keys.state_set("delegated"))
        pipe.xrevrange(keys.EVENTS, count=max(TAIL_SCAN, tail * 4))
        pipe.hgetall(keys.FACTS)
        pipe.get(keys.LEADER)
        n_rate = rate.queue_reads(pipe, time.time())
        replies = pipe.execute()
    seconds, micros = replies[0]
    now = seconds + micros / 1e6
    counts = read_counts(replies[1:1 + n])
    top, names, delegated, recent, meta, leader = replies[1 + n:7 + n]
    rate.absorb(replies[7 + n:7 + n + n_rate], now)

    names = sorted(names)
    delegated = sorted(delegated)
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(keys.drone(name))
        for cpv in delegated:
            pipe.hmget(keys.job(cpv), "drone", "claimed_at", "estimate", "priority")
        rows = pipe.execute()
    offline_after = config.orchestrator.offline_after
    drones = [DroneRegistry._info(name, row, now, offline_after)
              for name, row in zip(names, rows[:len(names)], strict=True)]
    running = {}
    for cpv, (drone, claimed, estimate, priority) in zip(delegated, rows[len(names):], strict=True):
        running[cpv] = RunningJob(cpv, drone or "", int(claimed) / 1000.0 if claimed else None,
                                  float(estimate or 0), float(priority or 0))
    chain = None
    if config.queue.policy != "fifo":  # fifo scores are arrival order, not chain seconds
        chain = remaining_chain(top[0][1] if top else None, running.values(), now)
    events = [_event(i, f) for i, f in reversed(recent) if f.get("kind") not in QUIET_EVENTS][-tail:]
    return Snapshot(now=now, counts=counts, drones=drones, events=events, rate_per_hour=rate.per_hour(now),
                    critical_path=chain, meta=SwarmFacts.from_hash(meta), running=running, leader=leader)


# -- rendering ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Column:
    name: str
    width: int
    justify: str = "left"


#: Optional columns, most useful first; dropped from the end when the terminal is narrow.
_OPTIONAL = (_Column("TIME", 6, "right"), _Column("CPU", 4, "right"), _Column("RAM", 4, "right"),
             _Column("SEEN", 5, "right"))
_STATUS_WIDTH = 11  # "GROUNDED 4m"
_TASK_MIN = 14
_DRONE_MIN, _DRONE_MAX = 8, 22
_GAP = 3  # cells between two columns: padding either side plus the box's divider


def _columns(inner: int, longest_name: int) -> tuple[int, list[_Column]]:
    """The drone column's width and the optional columns that fit in ``inner`` cells."""
    drone = max(_DRONE_MIN, min(_DRONE_MAX, longest_name, inner // 4))
    used = drone + _STATUS_WIDTH + _TASK_MIN + 2 * _GAP
    chosen = []
    for column in _OPTIONAL:
        if used + column.width + _GAP <= inner:
            chosen.append(column)
            used += column.width + _GAP
    return drone, chosen


def _status_cell(drone: DroneInfo, now: float) -> Text:
    if drone.status == "grounded" and drone.grounded_until:
        return Text(f"GROUNDED {terminal.ago(drone.grounded_until - now)}",
                    style=terminal.STATUS_STYLE["grounded"])
    if drone.status == "building" and drone.hung:
        return Text("HUNG", style=terminal.HUNG_STYLE)
    return terminal.styled(drone.status, terminal.STATUS_STYLE)


def _cell(snapshot: Snapshot, drone: DroneInfo, column: str) -> str:
    if column == "TIME":
        return terminal.duration(snapshot.elapsed(drone)) if drone.task else "-"
    if column == "CPU":
        return terminal.percent(drone.cpu) if drone.status != "offline" else "-"
    if column == "RAM":
        return terminal.percent(drone.mem) if drone.status != "offline" else "-"
    return terminal.ago(drone.heartbeat_age)


def drone_table(snapshot: Snapshot, inner: int, rows: int | None = None) -> Table:
    """The fleet, one line per drone; ``rows`` caps the lines (a summary line says what is hidden)."""
    fleet = sorted(snapshot.drones, key=lambda d: (STATUS_ORDER.get(d.status, 9), d.name))
    drone_w, optional = _columns(inner, max((len(d.name) for d in fleet), default=5))
    table = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False, pad_edge=False, padding=(0, 1))
    table.add_column("DRONE", width=drone_w, no_wrap=True, overflow="ellipsis")
    table.add_column("STATUS", width=_STATUS_WIDTH, no_wrap=True, overflow="ellipsis")
    table.add_column("TASK", min_width=_TASK_MIN, ratio=1, no_wrap=True, overflow="ellipsis")
    for column in optional:
        table.add_column(column.name, width=column.width, justify=column.justify, no_wrap=True)  # type: ignore[arg-type]
    shown = fleet
    if rows is not None and len(fleet) > rows:
        shown = fleet[:max(0, rows - 1)]
    for drone in shown:
        style = terminal.OFFLINE_ROW_STYLE if drone.status == "offline" else None
        # Text, not str: a drone-written value is never parsed as rich markup.
        cells: list[Any] = [Text(drone.name), _status_cell(drone, snapshot.now), Text(drone.task or "-")]
        cells += [_cell(snapshot, drone, c.name) for c in optional]
        table.add_row(*cells, style=style)
    hidden = fleet[len(shown):]
    if hidden:
        by_status: dict[str, int] = {}
        for drone in hidden:
            by_status[drone.status] = by_status.get(drone.status, 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items(), key=lambda i: STATUS_ORDER.get(i[0], 9)))
        table.add_row(f"+{len(hidden)} more", "", Text(detail, style="dim"), *([""] * len(optional)))
    if not fleet:
        table.add_row("-", "", Text("no drones enrolled: swarmctl drone enroll NAME", style="dim"),
                      *([""] * len(optional)))
    return table


def _eta_text(eta: Eta | None) -> str:
    if eta is None:
        return "-"
    if eta.seconds <= 0:
        return "done"
    return ("≥" if eta.lower_bound else "") + terminal.duration(eta.seconds)


def header_lines(snapshot: Snapshot, inner: int) -> list[Text]:
    """Queue counts, rate and ETA, then the slower-moving facts, packed to the width."""
    c = snapshot.counts
    trouble = terminal.COUNT_STYLE
    items = [
        terminal.labelled("Needed", f"{c.get('needed', 0)}", trouble["needed"]),
        terminal.labelled("Building", f"{c.get('delegated', 0)}", trouble["building"]),
        terminal.labelled("Built", f"{c.get('built', 0)}", trouble["built"]),
        terminal.labelled("Failed/Blocked", f"{c.get('failed', 0)}/{c.get('blocked', 0)}",
                          trouble["blocked"] if c.get("failed", 0) + c.get("blocked", 0) else ""),
        terminal.labelled("Rate", f"{snapshot.rate_per_hour:.0f}/hr"),
        terminal.labelled("ETA", _eta_text(snapshot.eta)),
    ]
    meta = snapshot.meta
    sync_age = snapshot.now - meta.sync_time if meta.sync_time else None
    facts = [
        terminal.labelled("Drones", f"{snapshot.online}/{len(snapshot.drones)} online"),
        terminal.labelled("Ready", f"{c.get('ready', 0)}"),
        terminal.labelled("Waiting", f"{c.get('waiting', 0)}"),
        terminal.labelled("Sync", f"{terminal.ago(sync_age)} ago" if sync_age is not None else "unknown"),
    ]
    if meta.binhost_percent is not None:
        facts.append(terminal.labelled("Binary", f"{meta.binhost_percent:.1f}%"))
    facts.append(terminal.labelled("Leader", snapshot.leader or "none",
                                   "" if snapshot.leader else terminal.SEVERITY_STYLE["critical"]))
    return terminal.pack_line(items, inner, sep="   ") + [
        Text.assemble(*_dim(line)) for line in terminal.pack_line(facts, inner, sep="   ")]


def _dim(line: Text) -> tuple[Text]:
    line.stylize("dim")
    return (line,)


def render_frame(snapshot: Snapshot, width: int, height: int | None = None, tail: int = 8) -> RenderableType:
    """The whole frame for a terminal ``width`` x ``height`` (None: as tall as needed).

    Long names never break a column: cells are cut with an ellipsis and every
    drone takes exactly one line; narrow terminals lose optional columns
    (SEEN, RAM, CPU, TIME, in that order) before the task is squeezed.
    """
    width = max(width, 30)
    inner = width - 4  # panel border and padding
    header = header_lines(snapshot, inner)
    event_lines = [terminal.fit(line, inner) for line in terminal.events_lines(snapshot.events)]
    rows: int | None = None
    if height is not None:
        # panel 2 + header + blank + table head 2 + rule 1 + events
        budget = max(4, height - 2 - len(header) - 1 - 2 - 1)
        keep_events = min(len(event_lines), tail, max(1, budget // 3))
        event_lines = event_lines[-keep_events:] if keep_events else []
        rows = max(1, budget - max(1, len(event_lines)))
    parts: list[RenderableType] = [*header, Text(""), drone_table(snapshot, inner, rows),
                                   Rule("recent events", style="dim", characters="─")]
    parts += event_lines or [Text("no events yet", style="dim")]
    subtitle = f"q quits · every {snapshot.interval:g}s"
    if width >= 60:
        subtitle += f" · {terminal.stamp(snapshot.now)}"
    return Panel(Group(*parts), title=Text(terminal.MONITOR_TITLE, style="bold"), title_align="left",
                 subtitle=Text(subtitle, style="dim"), subtitle_align="right", border_style=terminal.MONITOR_BORDER,
                 width=width, height=height, padding=(0, 1))


def error_frame(message: str, width: int, interval: float) -> RenderableType:
    """What the live view shows while Redis cannot be read (it keeps retrying)."""
    body = Text(f"cannot read the swarm: {message}\nretrying every {interval:g}s; q quits",
                style=terminal.SEVERITY_STYLE["critical"])
    return Panel(body, title=terminal.MONITOR_TITLE, title_align="left", width=max(30, width),
                 border_style=terminal.SEVERITY_STYLE["critical"])


# -- the live view ------------------------------------------------------------------------------

class KeyReader:
    """Single key presses from a terminal's stdin (cbreak mode), or none when stdin is not one."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def wait(self, timeout: float) -> str | None:
        """The key pressed within ``timeout`` seconds, else None."""
        if self.fd is None:
            time.sleep(timeout)
            return None
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return None
        data = os.read(self.fd, 32)
        if not data:  # stdin closed: nobody can press q any more, so stop reading it
            self.fd = None
            return None
        return data.decode(errors="replace")[:1]


@contextmanager
def keyboard() -> Iterator[KeyReader]:
    """Keys from stdin in cbreak mode (echo off, no line buffering), restored on exit."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if fd is None:
        yield KeyReader(None)
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield KeyReader(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_live(read: Callable[[BuiltRate], Snapshot], console: Console, interval: float,
             screen: bool = True, window: float = 3600.0) -> None:
    """Refresh the frame in place every ``interval`` seconds until q (or Ctrl-C).

    The frame follows the terminal's size on every refresh; a Redis outage shows
    an error frame and is retried, it does not end the view.
    """
    rate = BuiltRate(window)
    with keyboard() as keys_in, Live(console=console, screen=screen, auto_refresh=False,
                                     redirect_stdout=False, redirect_stderr=False) as live, \
            suppress(KeyboardInterrupt):
        while True:
            width, height = console.size
            try:
                snapshot = read(rate)
                snapshot.interval = interval
                frame = render_frame(snapshot, width, height if screen else None)
            except TRANSIENT as exc:
                log.debug("frame failed: %s", exc)
                frame = error_frame(str(exc) or type(exc).__name__, width, interval)
            live.update(frame, refresh=True)
            key = keys_in.wait(interval)
            if key in ("q", "Q"):
                return
