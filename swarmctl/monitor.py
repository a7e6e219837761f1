"""``swarmctl monitor``'s data: one :class:`Snapshot` of the swarm per frame.

:func:`gather` reads everything a frame shows in two pipelined round trips
(counts, drones' ids, the event tail, meta, the leader and the clock; then every
drone hash and every delegated job), whatever the size of the swarm.
swarmctl.cli.views.monitor renders a snapshot; swarmctl.cli.live refreshes it.

The build rate comes from a :class:`BuiltRate` kept between frames: the first
frame reads the window's events from the stream, later frames only the new
ones.

A farm with several build targets also gets each target's line (jobs, coverage,
drones: swarmctl.target_status, as ``swarmctl status`` shows them); counting jobs
per target scans the state sets, so that frame takes a few more round trips.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.events import Event, _event
from swarmctl.facts import SwarmFacts
from swarmctl.queue import queue_counts, read_counts
from swarmctl.registry import DroneInfo, DroneRegistry
from swarmctl.target_status import TargetStatus, gather_targets
from swarmctl.targets import several

#: Event kinds too frequent to be worth a line in the tail.
QUIET_EVENTS = frozenset({"added", "claimed"})
#: Shortest span a rate is extrapolated from (a young swarm's first build is not "60/hr").
MIN_RATE_SPAN = 300.0
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
    #: Each target's status when the farm has several (empty with one: the totals say it all).
    targets: list[TargetStatus] = field(default_factory=list)

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
        n = queue_counts(pipe, config.targets)
        pipe.smembers(keys.DRONES)
        pipe.smembers(keys.state_set("delegated"))
        pipe.xrevrange(keys.EVENTS, count=max(TAIL_SCAN, tail * 4))
        pipe.hgetall(keys.FACTS)
        pipe.get(keys.LEADER)
        n_rate = rate.queue_reads(pipe, time.time())
        for target in config.targets:  # each target's best ready job: the longest chain is the best of them
            pipe.zrevrange(keys.ready(target), 0, 0, withscores=True)
        replies = pipe.execute()
    seconds, micros = replies[0]
    now = seconds + micros / 1e6
    counts = read_counts(replies[1:1 + n])
    names, delegated, recent, meta, leader = replies[1 + n:6 + n]
    rate.absorb(replies[6 + n:6 + n + n_rate], now)
    top: list[tuple[str, float]] = max((best for best in replies[6 + n + n_rate:] if best),
                                       key=lambda b: b[0][1], default=[])

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
    targets = gather_targets(client, config, counts, drones) if several(config.targets) else []
    return Snapshot(now=now, counts=counts, drones=drones, events=events, rate_per_hour=rate.per_hour(now),
                    critical_path=chain, meta=SwarmFacts.from_hash(meta), running=running, leader=leader,
                    targets=targets)
