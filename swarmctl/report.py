"""A night's work as data: one bar per build attempt, grounded spans, the critical path, the figures.

Read only from what the swarm already keeps (the event stream, the jobs' gates and the
build history): nothing is added to the hot path for it. :func:`analyse` is pure (events
in, :class:`Night` out) so it is tested on real event streams and benchmarked on large ones;
:func:`gather_night` reads Redis. Drawing it is swarmctl.cli.views.report's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from swarmctl import keys
from swarmctl.events import Event, Events
from swarmctl.graph import critical_path
from swarmctl.history import History

#: Outcome of a build attempt, in the order the legend lists them.
OUTCOMES = ("built", "failed", "released", "reclaimed", "hung", "running")
#: Events that end an attempt, and the outcome each means.
ENDINGS = {"built": "built", "failed": "failed", "requeued": "failed", "blocked": "failed",
           "released": "released", "reclaimed": "reclaimed"}
_GROUNDED_FOR = re.compile(r"for (\d+(?:\.\d+)?) s")
SLOWEST = 10


@dataclass(frozen=True)
class Bar:
    """One build attempt of ``job`` on ``drone`` from ``start`` to ``end`` (Redis clock)."""

    drone: str
    job: str
    start: float
    end: float
    outcome: str
    reason: str = ""

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(frozen=True)
class Span:
    """A drone grounded (its breaker open, or an operator's grounding) from ``start`` to ``end``."""

    drone: str
    start: float
    end: float
    reason: str


@dataclass(frozen=True)
class Slow:
    job: str
    drone: str
    seconds: float
    usual: float | None  # median of the package's recorded builds (the build history)


@dataclass(frozen=True)
class Failure:
    job: str
    drone: str
    time: float
    outcome: str  # failed | hung
    reason: str


@dataclass
class Figures:
    jobs: int
    attempts: int
    built: int
    failed: int
    makespan: float
    lower_bound: float
    chain: float      # the critical path's length (actual durations)
    work: float       # built seconds summed
    builds_per_hour: float
    utilisation: dict[str, float]
    slowest: list[Slow] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """Makespan over the lower bound: 1.0 is as fast as the graph and the fleet allow."""
        return self.makespan / self.lower_bound if self.lower_bound > 0 else None


@dataclass
class Night:
    since: float
    until: float
    drones: list[str]
    bars: list[Bar]
    grounded: list[Span]
    critical: list[str]  # jobs on the critical path, first to last
    figures: Figures
    #: When the capped event stream starts, if it was trimmed after ``since`` (earlier builds are missing).
    trimmed_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["figures"]["ratio"] = self.figures.ratio
        return data


def _grounded_span(event: Event) -> float:
    match = _GROUNDED_FOR.search(event.reason)
    return float(match.group(1)) if match else 0.0


def attempts(events: Iterable[Event], until: float) -> tuple[list[Bar], list[Span]]:
    """Pair each claim with what ended it; spans of groundings, cut short when the drone builds again."""
    open_: dict[tuple[str, str], tuple[float, bool]] = {}  # (job, drone) -> (start, flagged hung)
    bars: list[Bar] = []
    grounded: dict[str, tuple[float, float, str]] = {}
    spans: list[Span] = []
    first: float | None = None

    def close_grounding(drone: str, at: float) -> None:
        if drone in grounded:
            start, end, reason = grounded.pop(drone)
            spans.append(Span(drone, start, min(end, at), reason))

    for event in events:
        first = event.ts if first is None else first
        key = (event.job, event.drone)
        if event.kind == "claimed" and event.job:
            close_grounding(event.drone, event.ts)
            open_[key] = (event.ts, False)
        elif event.kind == "hung" and key in open_:
            open_[key] = (open_[key][0], True)
        elif event.kind in ENDINGS and event.job and event.drone:
            start, hung = open_.pop(key, (None, False))
            if start is None:  # claimed before the window: a built event says how long it took
                seconds = _number(event.reason) if event.kind == "built" else None
                start = event.ts - seconds if seconds is not None else (first if first is not None else event.ts)
            outcome = ENDINGS[event.kind]
            if outcome == "failed" and (hung or event.reason.startswith("hung:")):
                outcome = "hung"
            reason = {"built": "", "blocked": f"blocked: {event.reason}"}.get(event.kind, event.reason)
            bars.append(Bar(event.drone, event.job, start, event.ts, outcome, reason))
        elif event.kind == "grounded" and event.drone:
            close_grounding(event.drone, event.ts)
            grounded[event.drone] = (event.ts, event.ts + _grounded_span(event), event.reason)
        elif event.kind == "released" and not event.job and event.drone:
            close_grounding(event.drone, event.ts)
    for (job, drone), (start, _hung) in open_.items():
        bars.append(Bar(drone, job, start, max(start, until), "running"))
    for drone in list(grounded):
        close_grounding(drone, until)
    bars.sort(key=lambda b: (b.start, b.drone))
    spans.sort(key=lambda s: (s.start, s.drone))
    return bars, spans


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _critical(built: Mapping[str, float], gates: Mapping[str, Iterable[str]]) -> tuple[list[str], float]:
    """The longest chain of built jobs through their gates, by actual duration."""
    among = {job: [g for g in gates.get(job, ()) if g in built] for job in built}
    chain = critical_path(among, built)
    if not chain:
        return [], 0.0
    dependents: dict[str, list[str]] = {job: [] for job in among}
    for job, mine in among.items():
        for gate in mine:
            dependents[gate].append(job)
    # Start at the longest chain; follow the dependent that carries it on.
    current = max(chain, key=lambda j: (chain[j], j))
    path = [current]
    while dependents[current]:
        current = max(dependents[current], key=lambda j: (chain.get(j, 0.0), j))
        path.append(current)
    return path, max(chain.values())


def analyse(events: Iterable[Event], since: float, until: float,
            gates: Mapping[str, Iterable[str]] | None = None,
            usual: Mapping[str, float] | None = None,
            drones: Iterable[str] = ()) -> Night:
    """The night between ``since`` and ``until`` from its events (oldest first).

    ``gates``: which jobs each job waited for (for the critical path); ``usual``: the build
    history's estimate per job (for the slowest packages); ``drones``: enrolled drones that
    should have a row even when they built nothing.
    """
    bars, spans = attempts(events, until)
    names = sorted({b.drone for b in bars} | {s.drone for s in spans} | set(drones))
    built: dict[str, float] = {}
    built_on: dict[str, Bar] = {}
    for bar in bars:
        if bar.outcome == "built":
            built[bar.job] = bar.seconds
            built_on[bar.job] = bar
    critical, chain = _critical(built, gates or {})
    begin = min((b.start for b in bars), default=since)
    end = max((b.end for b in bars), default=begin)
    makespan = max(0.0, end - begin)
    work = sum(built.values())
    busy: dict[str, float] = dict.fromkeys(names, 0.0)
    for bar in bars:
        busy[bar.drone] += bar.seconds
    # A drone can do no better than its share of the work, and no schedule beats the longest chain.
    lower = max(chain, work / len(names)) if names else 0.0
    slowest = sorted(built_on.values(), key=lambda b: -b.seconds)[:SLOWEST]
    figures = Figures(
        jobs=len({b.job for b in bars}), attempts=len(bars), built=len(built),
        failed=sum(1 for b in bars if b.outcome in ("failed", "hung")),
        makespan=makespan, lower_bound=lower, chain=chain, work=work,
        builds_per_hour=len(built) / (makespan / 3600) if makespan > 0 else 0.0,
        utilisation={d: (busy[d] / makespan if makespan > 0 else 0.0) for d in names},
        slowest=[Slow(b.job, b.drone, b.seconds, (usual or {}).get(b.job)) for b in slowest],
        failures=[Failure(b.job, b.drone, b.end, b.outcome, b.reason) for b in bars
                  if b.outcome in ("failed", "hung")])
    return Night(since=since, until=until, drones=names, bars=bars, grounded=spans, critical=critical,
                 figures=figures)


def _gates(client: redis.Redis, jobs: list[str]) -> dict[str, list[str]]:
    with client.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.smembers(keys.job_gates(job))
        replies = pipe.execute()
    return {job: sorted(reply) for job, reply in zip(jobs, replies, strict=True)}


def gather_night(client: redis.Redis, since: float | None, until: float | None,
                 default_estimate: float = 600.0, events_max: int | None = None) -> Night:
    """Read the window's events, the built jobs' gates and their history, then :func:`analyse`.

    ``events_max`` (``queue.events_max``) tells whether the stream was full, so a window
    that reaches back past its oldest event is reported as trimmed.
    """
    whole, micros = client.time()
    now = whole + micros / 1e6
    end = until if until is not None else now
    events = list(Events(client).between(since, end))
    start = since if since is not None else (events[0].ts if events else end)
    jobs = sorted({e.job for e in events if e.kind == "built" and e.job})
    usual = History(client, default_estimate).estimates(jobs) if jobs else {}
    drones = sorted(client.smembers(keys.DRONES))
    night = analyse(events, start, end, gates=_gates(client, jobs), usual=usual, drones=drones)
    oldest = client.xrange(keys.EVENTS, count=1)
    if oldest and events_max and client.xlen(keys.EVENTS) >= events_max:
        first = int(oldest[0][0].split("-")[0]) / 1000.0
        if since is None or first > since:
            night.trimmed_at = first
    return night
