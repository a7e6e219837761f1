"""The build queue: needed -> delegated -> built | failed | blocked, in Redis.

Every state change is one Lua script (swarmctl.scripts): claims are atomic,
and completions, failures and releases carry the lease token of the claim, so
a report from a drone that no longer owns the job is refused and recorded as
stale, never applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from swarmctl import keys
from swarmctl.atoms import cp_of, validate_cpv
from swarmctl.config import Config
from swarmctl.exceptions import NoSuchJob, SwarmError
from swarmctl.graph import KIND_STRENGTH, BrokenEdge, JobSpec, break_cycles, critical_path, gates_of
from swarmctl.history import KEEP as HISTORY_KEEP
from swarmctl.history import History
from swarmctl.scripts import Scripts, decode

log = logging.getLogger("swarmctl.queue")

#: Fault classes a drone reports with a failure.
FAULTS = ("build", "drone", "dependency", "hung")
#: Edge kind of gates already stored in Redis.
_EXISTING = "existing"


def token_sha(token: str) -> str:
    """Tokens are stored and compared only as SHA-256 digests."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_session() -> str:
    """A claim session: one drone process's claims. It starts with the process's start time in ms
    (the drone's clock; a drone's processes run on one host) so a newer process's heartbeats
    order after an older one's, then a random part."""
    return f"{int(time.time() * 1000)}-{secrets.token_hex(4)}"


@dataclass
class Job:
    """A job as stored, for listing and JSON output."""

    cpv: str
    state: str
    drone: str | None
    attempts: int
    after: list[str]
    run: list[str] = field(default_factory=list)
    post: list[str] = field(default_factory=list)
    pending: int = 0
    estimate: float = 0.0
    priority: float = 0.0
    reason: str = ""
    built_by: str | None = None
    duration: float | None = None
    claimed_at: float | None = None
    failed_on: list[str] = field(default_factory=list)

    @classmethod
    def from_hash(cls, data: dict[str, str], failed_on: list[str] | None = None) -> Job:
        def num(name: str) -> float | None:
            value = data.get(name)
            return float(value) if value not in (None, "") else None

        claimed = num("claimed_at")
        return cls(
            cpv=data["cpv"], state=data.get("state", "needed"), drone=data.get("drone") or None,
            attempts=int(data.get("attempts") or 0), after=json.loads(data.get("after") or "[]"),
            run=json.loads(data.get("run") or "[]"), post=json.loads(data.get("post") or "[]"),
            pending=int(data.get("pending") or 0), estimate=num("estimate") or 0.0,
            priority=num("priority") or 0.0, reason=data.get("reason", ""),
            built_by=data.get("built_by") or None, duration=num("duration"),
            claimed_at=claimed / 1000.0 if claimed else None, failed_on=sorted(failed_on or []),
        )

    @property
    def ready(self) -> bool:
        return self.state == "needed" and self.pending <= 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Claim:
    """A job handed to a drone, with the lease that proves it owns it."""

    cpv: str
    lease: str
    estimate: float
    attempts: int


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    broken: list[BrokenEdge] = field(default_factory=list)


class Grounded(SwarmError):
    """The drone is grounded by its circuit breaker until ``until`` (epoch seconds)."""

    def __init__(self, until: float) -> None:
        super().__init__(f"grounded until {until:.0f}")
        self.until = until

    def __reduce__(self) -> tuple[type[Grounded], tuple[float]]:
        return Grounded, (self.until,)  # picklable across processes


class Unauthorized(SwarmError):
    """Unknown drone, wrong token or revoked."""


class Queue:
    """The swarm's job queue on one Redis connection."""

    def __init__(self, client: redis.Redis, config: Config) -> None:
        self.redis = client
        self.config = config
        self.scripts = Scripts(client)
        self.history = History(client, config.queue.default_estimate)
        self._max_events = config.queue.events_max

    def _run(self, script: Any, *args: object) -> list[str]:
        return decode(script(keys=list(keys.QUEUE_KEYS), args=[str(a) for a in args]))

    # -- adding -------------------------------------------------------------------------------

    def add(self, specs: Iterable[JobSpec]) -> AddReport:
        """Queue jobs with their edges; jobs already queued are left as they are.

        Cycles are broken before anything is written (weakest gates first, see
        swarmctl.graph.break_cycles) and reported. Each new job is written with
        its critical-path priority already computed, best first (a topological
        order: a job's gates score higher than the job), so a drone claiming
        while a large batch is still being added takes the right job.
        """
        batch: dict[str, JobSpec] = {}
        for spec in specs:
            cpv = validate_cpv(spec.cpv)
            batch[cpv] = JobSpec(cpv, [validate_cpv(d) for d in spec.build],
                                 [validate_cpv(d) for d in spec.run],
                                 [validate_cpv(d) for d in spec.post], spec.estimate)
        known = self._load_specs(batch)
        gates = gates_of(known)
        for spec in batch.values():  # a named build dependency gates even before it is queued
            for dep in spec.build:
                if dep != spec.cpv:
                    gates[spec.cpv].setdefault(dep, "build")
        graph = {cpv: (gates[cpv] if cpv in batch else dict.fromkeys(self._gates(cpv), _EXISTING))
                 for cpv in known}
        # Gates already stored in Redis are never the ones dropped to break a new cycle.
        report = AddReport(broken=break_cycles(graph, {**KIND_STRENGTH, _EXISTING: len(KIND_STRENGTH)}))
        need_estimate = [c for c, s in batch.items() if s.estimate is None]
        estimates = self.history.estimates(need_estimate) if need_estimate else {}
        estimates.update({c: s.estimate for c, s in batch.items() if s.estimate is not None})
        fifo = self.config.queue.policy == "fifo"
        chain: dict[str, float] = {}
        if not fifo:
            earlier = sorted(known.keys() - batch.keys())
            with self.redis.pipeline(transaction=False) as pipe:
                for cpv in earlier:
                    pipe.hget(keys.job(cpv), "estimate")
                stored = {c: float(v or 0) for c, v in zip(earlier, pipe.execute(), strict=True)}
            chain = critical_path(graph, {**stored, **estimates})
        order = sorted(batch, key=lambda c: -chain.get(c, 0.0)) if not fifo else list(batch)
        # One MULTI/EXEC: a batch (a nightly sync, an import) lands whole or not at all.
        with self.redis.pipeline(transaction=True) as pipe:
            for cpv in order:
                spec = batch[cpv]
                self.scripts.add(keys=list(keys.QUEUE_KEYS), client=pipe, args=[
                    cpv, estimates[cpv], "" if fifo else chain.get(cpv, estimates[cpv]), json.dumps(spec.build),
                    json.dumps(spec.run), json.dumps(sorted(graph[cpv])), self._max_events,
                    json.dumps(spec.post)])
            replies = pipe.execute()
        added = {cpv for cpv, reply in zip(order, replies, strict=True) if decode(reply)[0] == "added"}
        for cpv in batch:
            (report.added if cpv in added else report.existing).append(cpv)
        report.broken = [e for e in report.broken if e.job in added]  # a queued job keeps its gates
        shown = 20  # broken gates logged one by one; the rest summed up (all go to the event stream)
        for edge in report.broken[:shown]:
            log.warning("dependency cycle: %s no longer waits for %s (%s edge)", edge.job, edge.gate, edge.kind)
        if len(report.broken) > shown:
            log.warning("dependency cycles: %d more gates dropped (see the event stream)",
                        len(report.broken) - shown)
        with self.redis.pipeline(transaction=False) as pipe:  # plain commands: no script, no MULTI needed
            for edge in report.broken:
                pipe.xadd(keys.EVENTS, {"ts": int(time.time() * 1000), "kind": "cycle", "job": edge.job, "drone": "",
                                        "reason": f"stopped waiting for {edge.gate} ({edge.kind} edge) "
                                                  "to break a dependency cycle"},
                          maxlen=self._max_events, approximate=True)
            pipe.execute()
        # Jobs queued earlier may now have longer chains (new jobs wait for them): rescore all.
        if report.added and not fifo:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.scard(keys.state_set("needed"))
                pipe.scard(keys.state_set("delegated"))
                open_jobs = sum(pipe.execute())
            if open_jobs > len(report.added):
                self.reprioritize()
        return report

    def _gates(self, cpv: str) -> set[str]:
        return set(self.redis.smembers(keys.job_gates(cpv)))

    def _load_specs(self, batch: dict[str, JobSpec]) -> dict[str, JobSpec]:
        """The batch plus every queued job its edges reach (their run/post edges matter)."""
        known = dict(batch)
        frontier = {d for s in batch.values() for d in s.build + s.run + s.post} - known.keys()
        while frontier:
            names = sorted(frontier)
            with self.redis.pipeline(transaction=False) as pipe:
                for cpv in names:
                    pipe.hmget(keys.job(cpv), "after", "run", "post")
                rows = pipe.execute()
            frontier = set()
            for cpv, (after, run, post) in zip(names, rows, strict=True):
                if after is None:
                    continue  # not queued: taken as available
                spec = JobSpec(cpv, json.loads(after), json.loads(run or "[]"), json.loads(post or "[]"))
                known[cpv] = spec
                frontier |= set(spec.build + spec.run + spec.post) - known.keys()
        return known

    def reprioritize(self) -> int:
        """Recompute every open job's critical-path score; returns how many were scored."""
        open_jobs = sorted(self.redis.sunion(keys.state_set("needed"), keys.state_set("delegated")))
        if not open_jobs:
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            for cpv in open_jobs:
                pipe.smembers(keys.job_gates(cpv))
                pipe.hget(keys.job(cpv), "estimate")
            replies = pipe.execute()
        gates = {cpv: set(replies[2 * i]) for i, cpv in enumerate(open_jobs)}
        estimates = {cpv: float(replies[2 * i + 1] or 0) for i, cpv in enumerate(open_jobs)}
        chain = critical_path(gates, estimates)
        with self.redis.pipeline(transaction=False) as pipe:
            for cpv in open_jobs:
                score = chain.get(cpv, estimates[cpv])
                pipe.hset(keys.job(cpv), "priority", score)
                pipe.zadd(keys.READY, {cpv: score}, xx=True)
            pipe.execute()
        return len(open_jobs)

    # -- the drone's side ---------------------------------------------------------------------

    def claim(self, drone: str, token: str, session: str | None = None, seq: int = 1) -> Claim | None:
        """Atomically take the best ready job; None when nothing is ready for this drone.

        Request ``seq`` of claim ``session`` (see new_session) is idempotent: calling again with
        the same pair after a lost reply (a timeout; redis-py's own retries too) returns the job
        that request already holds, never a second one.
        """
        reply = self._run(self.scripts.claim, drone, token_sha(token), secrets.token_hex(16),
                          self.config.queue.claim_scan, int(self.config.orchestrator.offline_after * 1000),
                          self._max_events, session or new_session(), int(seq))
        if reply[0] == "ok":
            return Claim(cpv=reply[1], lease=reply[2], estimate=float(reply[3]), attempts=int(reply[4]))
        if reply[0] == "grounded":
            raise Grounded(int(reply[1]) / 1000.0)
        if reply[0] == "unauthorized":
            raise Unauthorized(f"drone {drone!r} is not enrolled, revoked, or its token is wrong")
        return None

    def complete(self, cpv: str, drone: str, token: str, lease: str, duration: float,
                 artifact: dict[str, Any] | None = None) -> str:
        """Mark built if ``drone`` still owns the job: "ok", "stale" or "unauthorized"."""
        # The build's duration joins the package's history in the same script.
        reply = self.scripts.complete(keys=[*keys.QUEUE_KEYS, keys.history(cp_of(cpv))], args=[
            cpv, drone, token_sha(token), lease, round(duration, 3), json.dumps(artifact or {}),
            self._max_events, HISTORY_KEEP])
        return decode(reply)[0]

    def fail(self, cpv: str, drone: str, token: str, lease: str, fault: str, reason: str,
             log_tail: str = "") -> tuple[str, float]:
        """Report a failure: (requeued|failed|blocked|stale|unauthorized, grounded_until)."""
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}")
        breaker = self.config.breaker
        reply = self._run(self.scripts.fail, cpv, drone, token_sha(token), lease, fault, reason[:500],
                          log_tail, self.config.queue.block_after_drones, self.config.queue.max_attempts,
                          breaker.failures, int(breaker.ground_seconds * 1000), breaker.backoff_factor,
                          int(breaker.ground_max_seconds * 1000), self._max_events)
        return reply[0], (int(reply[1]) / 1000.0 if len(reply) > 1 else 0.0)

    def release(self, cpv: str, drone: str, token: str, lease: str, reason: str) -> str:
        """Give a job back unbuilt without counting a failure: "ok", "stale" or "unauthorized"."""
        return self._run(self.scripts.release, cpv, drone, token_sha(token), lease, reason,
                         self._max_events)[0]

    # -- the orchestrator's and operator's side -------------------------------------------------

    def reclaim(self, drone: str, offline_after: float | None, reason: str) -> list[str]:
        """Return a drone's jobs to the queue (only if still offline, unless offline_after is None)."""
        threshold = 0 if offline_after is None else max(1, int(offline_after * 1000))
        return self._run(self.scripts.reclaim, drone, threshold, reason, self._max_events)

    def reconcile(self, drone: str) -> list[str]:
        """Give back the jobs delegated to ``drone`` that its heartbeats prove it does not hold."""
        return self._run(self.scripts.reconcile, drone, self._max_events)

    def owner_of(self, cpv: str) -> tuple[str | None, str | None]:
        """(drone, lease) while the job is delegated, else (None, None)."""
        state, drone, lease = self.redis.hmget(keys.job(cpv), "state", "drone", "lease")
        if state != "delegated" or not drone:
            return None, None
        return drone, lease

    def _reset(self, cpv: str, allowed: str, kind: str) -> None:
        cpv = validate_cpv(cpv)
        reply = self._run(self.scripts.reset, cpv, allowed, kind, self._max_events)
        if reply[0] == "missing":
            raise NoSuchJob(f"no job {cpv} in the queue")
        if reply[0] == "state":
            raise SwarmError(f"{cpv} is {reply[1]}, not {' or '.join(allowed.split())}")

    def unblock(self, cpv: str) -> None:
        """Release a blocked package for another round of attempts."""
        self._reset(cpv, "blocked", "unblocked")

    def retry(self, cpv: str) -> None:
        """Queue a failed or blocked job again."""
        self._reset(cpv, "failed blocked", "retried")

    def clear(self) -> int:
        """Delete every job (gated behind --yes in the CLI); returns how many."""
        cpvs = set()
        for state in keys.STATES:
            cpvs |= self.redis.smembers(keys.state_set(state))
        with self.redis.pipeline(transaction=True) as pipe:
            for cpv in cpvs:
                pipe.delete(*keys.job_keys(cpv))
            pipe.delete(keys.READY, *(keys.state_set(s) for s in keys.STATES))
            for name in self.redis.smembers(keys.DRONES):
                pipe.delete(keys.drone_jobs(name))
            pipe.execute()
        return len(cpvs)

    # -- reading ------------------------------------------------------------------------------

    def get(self, cpv: str) -> Job:
        data = self.redis.hgetall(keys.job(validate_cpv(cpv)))
        if not data:
            raise NoSuchJob(f"no job {cpv} in the queue")
        return Job.from_hash(data, list(self.redis.smembers(keys.job_avoid(cpv))))

    def tails(self, cpv: str) -> dict[str, str]:
        """The failed builds' log tails, by drone."""
        return self.redis.hgetall(keys.job_tails(cpv))

    def jobs(self, state: str | None = None) -> list[Job]:
        """Every job (or those in one state), best priority first."""
        states = [state] if state else list(keys.STATES)
        cpvs = sorted(set().union(*(self.redis.smembers(keys.state_set(s)) for s in states)))
        with self.redis.pipeline(transaction=False) as pipe:
            for cpv in cpvs:
                pipe.hgetall(keys.job(cpv))
                pipe.smembers(keys.job_avoid(cpv))
            replies = pipe.execute()
        jobs = [Job.from_hash(replies[2 * i], list(replies[2 * i + 1]))
                for i in range(len(cpvs)) if replies[2 * i]]
        return sorted(jobs, key=lambda j: (-j.priority, j.cpv))

    def counts(self) -> dict[str, int]:
        """Jobs per state, plus ``ready`` (claimable now) and ``waiting`` (needed, gated)."""
        with self.redis.pipeline(transaction=False) as pipe:
            queue_counts(pipe)
            return read_counts(pipe.execute())


#: Replies queue_counts() adds to a pipeline.
COUNT_REPLIES = len(keys.STATES) + 1


def queue_counts(pipe: redis.client.Pipeline) -> int:
    """Queue the reads behind counts() on a pipeline shared with other reads; returns COUNT_REPLIES."""
    for state in keys.STATES:
        pipe.scard(keys.state_set(state))
    pipe.zcard(keys.READY)
    return COUNT_REPLIES


def read_counts(replies: list[Any]) -> dict[str, int]:
    """Counts from the COUNT_REPLIES replies of queue_counts()."""
    counts = dict(zip(keys.STATES, replies[:len(keys.STATES)], strict=True))
    counts["ready"] = replies[len(keys.STATES)]
    counts["waiting"] = counts["needed"] - counts["ready"]
    return counts

