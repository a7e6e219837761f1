"""The build queue: needed -> delegated -> built | failed | blocked, in Redis.

Every state change is one Lua script (swarmctl.scripts): claims are atomic,
and completions, failures and releases carry the lease token of the claim, so
a report from a drone that no longer owns the job is refused and recorded as
stale, never applied.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import redis

from swarmctl import keys
from swarmctl.atoms import cp_of
from swarmctl.capacity import Need, load_constraints, needs_for
from swarmctl.config import Config
from swarmctl.events import Events
from swarmctl.exceptions import ConfigError, Grounded, NoSuchJob, NotEnrolled, SwarmError
from swarmctl.graph import BrokenEdge, JobSpec, Plan, Stored, chains, plan_batch
from swarmctl.history import KEEP as HISTORY_KEEP
from swarmctl.history import History
from swarmctl.scripts import Scripts, decode
from swarmctl.targets import DEFAULT_TARGET, cpv_of, job_name, split_job, target_of, validate_job
from swarmctl.tokens import token_sha

log = logging.getLogger("swarmctl.queue")

#: Fault classes a drone reports with a failure.
FAULTS = ("build", "drone", "dependency", "hung")
#: Longest a slice of a large add may keep Redis busy (one MULTI/EXEC); slices adapt to it.
WRITE_SLICE_SECONDS = 0.03
#: Most jobs in one slice, whatever the pace.
MAX_SLICE = 2000
#: Reads per pipeline round trip when walking many jobs.
READ_PAGE = 5000
#: Jobs read per call of the read-only PEEK script (PRIORITIES takes four times as many).
PEEK_PAGE = 500
#: A state filter over more jobs than this walks the listing index instead of reading them all.
INDEX_WALK_MIN = 20000
#: Jobs deleted per MULTI/EXEC by clear().
CLEAR_SLICE = 500


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
    target: str = DEFAULT_TARGET
    tree: str = ""            # revision of the tree it was planned from ('' unknown)
    estimate_note: str = ""   # where its estimate came from, when not its own target's history

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
            target=target_of(data["cpv"]), tree=data.get("tree", ""), estimate_note=data.get("estimate_note", ""),
        )

    @property
    def ready(self) -> bool:
        return self.state == "needed" and self.pending <= 0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: far cheaper than asdict


@dataclass(frozen=True)
class Claim:
    """A job handed to a drone, with the lease that proves it owns it.

    ``cpv`` is the job's name in the queue (``CPV`` or ``CPV@TARGET``, see swarmctl.targets);
    ``package`` and ``target`` split it; ``tree`` is the revision it was planned from.
    """

    cpv: str
    lease: str
    estimate: float
    attempts: int
    tree: str = ""
    #: Its queue priority: the critical-path chain in seconds from it (negative: FIFO order).
    priority: float = 0.0

    @property
    def package(self) -> str:
        return cpv_of(self.cpv)

    @property
    def target(self) -> str:
        return target_of(self.cpv)


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    broken: list[BrokenEdge] = field(default_factory=list)


@dataclass
class RetreeReport:
    """What a sync's new tree revision did to the jobs planned at another one (Queue.retree)."""

    retired: list[str] = field(default_factory=list)
    restamped: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)


class InvalidArgument(SwarmError):
    """A script refused its arguments before writing anything."""


class PartialAdd(SwarmError):
    """Adding a batch failed partway: says how many jobs were queued before it did."""

    def __init__(self, done: int, total: int, piece: list[str], cause: BaseException,
                 found: set[str] | None) -> None:
        if found is None:
            counted = f"{done} to {done + len(piece)}"
        else:
            done += len(found)
            counted = str(done)
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(f"queued {counted} of {total} new job(s), then failed: {reason}; "
                         "adding the same jobs again queues the rest")
        self.done = done
        self.total = total


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _slices(order: list[str], group: dict[str, str], size: Callable[[], int]) -> Iterator[list[str]]:
    """Consecutive slices of ``order`` of about size() jobs; a settle group never split."""
    piece: list[str] = []
    for i, cpv in enumerate(order):
        piece.append(cpv)
        name = group.get(cpv)
        if len(piece) >= size() and (name is None or i + 1 == len(order) or group.get(order[i + 1]) != name):
            yield piece
            piece = []
    if piece:
        yield piece


class Queue:
    """The swarm's job queue on one Redis connection."""

    def __init__(self, client: redis.Redis, config: Config) -> None:
        self.redis = client
        self.config = config
        self.scripts = Scripts(client)
        self.history = History(client, config.queue.default_estimate)
        check_settings(config)
        self._max_events = config.queue.events_max
        self.events = Events(client, self._max_events)
        self.targets = list(config.targets)

    def _run(self, script: Any, *args: object) -> list[str]:
        return refused(decode(script(keys=list(keys.QUEUE_KEYS), args=[str(a) for a in args])))

    # -- adding -------------------------------------------------------------------------------

    def add(self, specs: Iterable[JobSpec], progress: Callable[[int, int], None] | None = None,
            tree: str = "") -> AddReport:
        """Queue jobs with their edges; jobs already queued are left as they are.

        Cycles are broken before anything is written (weakest edges first, see
        swarmctl.graph.plan_batch) and reported. Jobs are written in slices of one
        MULTI/EXEC each, sized so that none keeps Redis busy for more than about
        WRITE_SLICE_SECONDS, each job after everything it waits for, best first:
        a drone claiming while a large batch is still being added takes the right
        job, and a job is never claimable before its gates exist. ``progress``
        hears (written, total) after each slice. If writing fails partway,
        PartialAdd says how many jobs were queued (adding the same batch again
        queues the rest).

        Job names carry their target (swarmctl.targets: ``CPV@T``, see for_target); ``tree`` is the
        revision of the tree the batch was planned from, recorded on every new job.
        """
        batch: dict[str, JobSpec] = {}
        for spec in specs:
            cpv = self._known_target(validate_job(spec.cpv))
            if spec.estimate is not None and not (math.isfinite(spec.estimate) and spec.estimate >= 0):
                raise SwarmError(f"{cpv}: the estimate must be a finite number of seconds >= 0")
            batch[cpv] = JobSpec(cpv, [validate_job(d) for d in spec.build],
                                 [validate_job(d) for d in spec.run],
                                 [validate_job(d) for d in spec.post], spec.estimate, spec.reason)
        stored = self._load_stored(batch)
        new = {c: s for c, s in batch.items() if c not in stored}
        need_estimate = [c for c, s in new.items() if s.estimate is None]
        noted = self.history.target_estimates(need_estimate) if need_estimate else {}
        estimates = {c: seconds for c, (seconds, _) in noted.items()}
        notes = {c: note for c, (_, note) in noted.items() if note}
        estimates.update({c: s.estimate for c, s in new.items() if s.estimate is not None})
        fifo = self.config.queue.policy == "fifo"
        if not fifo:
            estimates.update(self._stored_estimates(stored.keys()))
        needs = needs_for(new, self.history, load_constraints(self.config.queue.constraints_file)) if new else {}
        plan = plan_batch(new, stored, estimates, fifo)
        report = AddReport(existing=[c for c in batch if c in stored])
        added = self._write(plan, new, estimates, fifo, report, progress, notes, tree, needs)
        report.broken = [e for e in plan.broken if e.job in added]
        self._report_broken(report.broken)
        # Jobs queued earlier may now have longer chains (new jobs wait for them): rescore all.
        if report.added and not fifo:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.scard(keys.state_set("needed"))
                pipe.scard(keys.state_set("delegated"))
                open_jobs = sum(pipe.execute())
            if open_jobs > len(report.added):
                self.reprioritize()
        return report

    def _known_target(self, name: str) -> str:
        """``name`` if its target is one of the farm's, else a one-line SwarmError."""
        target = target_of(name)
        if target not in self.targets:
            raise SwarmError(f"{cpv_of(name)}: no target {target!r} in the config (known: {', '.join(self.targets)})")
        return name

    def _write(self, plan: Plan, new: dict[str, JobSpec], estimates: dict[str, float], fifo: bool,
               report: AddReport, progress: Callable[[int, int], None] | None, notes: dict[str, str],
               tree: str, needs: dict[str, Need] | None = None) -> set[str]:
        """ADD every planned job, slice by slice; returns the CPVs added (existing ones go to report)."""
        added: set[str] = set()
        size = 50
        slices = _slices(plan.order, plan.group, lambda: size)
        for piece in slices:
            try:
                with self.redis.pipeline(transaction=True) as pipe:
                    for cpv in piece:
                        spec = new[cpv]
                        group = plan.group.get(cpv, "")
                        self.scripts.add(keys=[*keys.QUEUE_KEYS, keys.LISTING, keys.NEEDS, keys.NEEDS_DISK],
                                         client=pipe, args=[
                            cpv, estimates[cpv], "" if fifo else plan.chain[cpv], json.dumps(spec.build),
                            json.dumps(spec.run), json.dumps(plan.gates[cpv]), self._max_events,
                            json.dumps(spec.post), group, json.dumps(plan.needs.get(group or cpv, [])),
                            spec.reason, (needs or {}).get(cpv, Need()).arg(), notes.get(cpv, ""), tree])
                    started = time.monotonic()
                    replies = [decode(r) for r in pipe.execute()]
                    took = time.monotonic() - started
            except (redis.RedisError, OSError) as exc:
                raise PartialAdd(len(added), len(new), piece, exc, self._queued(piece)) from exc
            # The next slice as large as fits the budget at this slice's pace (at most twice as large).
            size = max(10, min(2 * size, MAX_SLICE, int(WRITE_SLICE_SECONDS * len(piece) / max(took, 1e-4))))
            for cpv, reply in zip(piece, replies, strict=True):
                if reply[0] == "invalid":  # checked in Python first: a bug, nothing of this job written
                    raise PartialAdd(len(added), len(new), [], SwarmError(f"{cpv}: {reply[1]}"), set())
                if reply[0] == "added":
                    added.add(cpv)
                    report.added.append(cpv)
                else:
                    report.existing.append(cpv)  # queued by someone else meanwhile
            if progress is not None:
                progress(len(added) + len(report.existing), len(new) + len(report.existing))
        return added

    def rebuild(self, specs: Iterable[JobSpec], gates: dict[str, list[str]] | None = None) -> list[str]:
        """Queue built jobs again because their binaries are stale (``spec.reason`` says why).

        Each job takes the spec's edges and waits for ``gates[cpv]`` (default: its build
        dependencies), so a rebuild waits for the dependencies rebuilt with it. Jobs not
        built (still open, failed or blocked, or not queued) are left as they are.

        Returns:
            The CPVs queued again.
        """
        done: list[str] = []
        for spec in specs:
            cpv = validate_job(spec.cpv)
            gate_list = (gates or {}).get(cpv, spec.build)
            reply = self._run(self.scripts.rebuild, cpv, spec.reason or "stale binary", self._max_events,
                              json.dumps([validate_job(d) for d in spec.build]),
                              json.dumps([validate_job(d) for d in spec.run]),
                              json.dumps([validate_job(d) for d in spec.post]),
                              json.dumps([validate_job(d) for d in gate_list]))
            if reply[0] == "ok":
                done.append(cpv)
        if done and self.config.queue.policy != "fifo":
            self.reprioritize()
        return done

    def retree(self, target: str, revision: str, present: Callable[[str], bool],
               gates: dict[str, list[str]] | None = None) -> RetreeReport:
        """Bring ``target``'s jobs planned at another tree revision to ``revision``, the one a sync
        just resolved from (see scripts.RETREE): a waiting job whose CPV the new tree no longer has
        (``present(cpv)`` is False) is retired with the reason; one still there takes the new
        revision and, when ``gates`` names it, its edges in the new tree; a retired job whose CPV
        is back is needed again. Running jobs keep theirs. One atomic call per job: a drone's
        claim meanwhile gets either the job as it was or as it is now, never a retired one.
        """
        report = RetreeReport()
        if not revision:
            return report
        names = sorted(c for c in self.redis.sunion(keys.state_set("needed"), keys.state_set("retired"))
                       if target_of(c) == target)
        for start in range(0, len(names), READ_PAGE):
            page = names[start:start + READ_PAGE]
            with self.redis.pipeline(transaction=False) as pipe:
                for cpv in page:
                    pipe.hget(keys.job(cpv), "tree")
                planned = pipe.execute()
            moved = [c for c, tree in zip(page, planned, strict=True) if tree and tree != revision]
            if not moved:
                continue
            with self.redis.pipeline(transaction=False) as pipe:  # each call atomic on its own
                for cpv in moved:
                    edges = (gates or {}).get(cpv)
                    self.scripts.retree(keys=list(keys.QUEUE_KEYS), client=pipe, args=[
                        cpv, revision, "present" if present(cpv_of(cpv)) else "gone", self._max_events,
                        "" if edges is None else json.dumps([validate_job(d) for d in edges])])
                replies = [refused(decode(r)) for r in pipe.execute()]
            for cpv, reply in zip(moved, replies, strict=True):
                found = {"retired": report.retired, "restamped": report.restamped, "restored": report.restored}
                if reply[0] in found:
                    found[reply[0]].append(cpv)
        if gates and (report.restamped or report.restored) and self.config.queue.policy != "fifo":
            self.reprioritize()  # new edges, new critical paths
        return report

    def _queued(self, cpvs: list[str]) -> set[str] | None:
        """Which of ``cpvs`` are queued now; None when Redis cannot say."""
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for cpv in cpvs:
                    pipe.hexists(keys.job(cpv), "state")
                return {c for c, there in zip(cpvs, pipe.execute(), strict=True) if there}
        except (redis.RedisError, OSError):
            return None

    def _report_broken(self, broken: list[BrokenEdge]) -> None:
        shown = 20  # broken gates logged one by one; the rest summed up (all go to the event stream)
        for edge in broken[:shown]:
            log.warning("dependency cycle: %s no longer waits for %s (%s edge)", edge.job, edge.gate, edge.kind)
        if len(broken) > shown:
            log.warning("dependency cycles: %d more gates dropped (see the event stream)", len(broken) - shown)
        for start in range(0, len(broken), READ_PAGE):
            with self.redis.pipeline(transaction=False) as pipe:  # one script call each, no MULTI needed
                for edge in broken[start:start + READ_PAGE]:
                    self.events.emit("cycle", job=edge.job, reason=f"stopped waiting for {edge.gate} "
                                     f"({edge.kind} edge) to break a dependency cycle", pipeline=pipe)
                pipe.execute()

    def _stored_estimates(self, cpvs: Iterable[str]) -> dict[str, float]:
        names = sorted(cpvs)
        found: dict[str, float] = {}
        for start in range(0, len(names), READ_PAGE):
            page = names[start:start + READ_PAGE]
            with self.redis.pipeline(transaction=False) as pipe:
                for cpv in page:
                    pipe.hget(keys.job(cpv), "estimate")
                found.update({c: float(v or 0) for c, v in zip(page, pipe.execute(), strict=True)})
        return found

    def _load_stored(self, batch: dict[str, JobSpec]) -> dict[str, Stored]:
        """Every queued job in the batch or reached from it, through edges and settle groups."""
        stored: dict[str, Stored] = {}
        seen: set[str] = set()
        frontier = set(batch) | {d for s in batch.values() for d in s.build + s.run + s.post}
        while frontier:
            seen |= frontier
            names = sorted(frontier)
            frontier = set()
            for start in range(0, len(names), READ_PAGE):
                page = names[start:start + READ_PAGE]
                with self.redis.pipeline(transaction=False) as pipe:
                    for cpv in page:
                        pipe.hmget(keys.job(cpv), "state", "group")
                    found = [(c, g) for c, (state, g) in zip(page, pipe.execute(), strict=True) if state is not None]
                with self.redis.pipeline(transaction=False) as pipe:  # the edges of the queued ones only
                    for cpv, _ in found:
                        pipe.smembers(keys.job_gates(cpv))
                        pipe.smembers(keys.job_needs(cpv))
                        pipe.smembers(keys.job_members(cpv))
                    rows = pipe.execute()
                for i, (cpv, group) in enumerate(found):
                    gates, needs, members = rows[3 * i:3 * i + 3]
                    job = Stored(group or cpv, set(gates), set(needs), set(members))
                    stored[cpv] = job
                    frontier |= (job.gates | job.needs | job.members | {job.group}) - seen
        return stored

    def reprioritize(self) -> int:
        """Recompute every open job's critical-path score; returns how many were scored."""
        open_jobs = sorted(self.redis.sunion(keys.state_set("needed"), keys.state_set("delegated")))
        if not open_jobs:
            return 0
        gates: dict[str, set[str]] = {}
        group: dict[str, str] = {}
        needs: dict[str, set[str]] = {}
        estimates: dict[str, float] = {}
        for start in range(0, len(open_jobs), READ_PAGE):
            page = open_jobs[start:start + READ_PAGE]
            with self.redis.pipeline(transaction=False) as pipe:
                for cpv in page:
                    pipe.smembers(keys.job_gates(cpv))
                    pipe.hmget(keys.job(cpv), "estimate", "group")
                    pipe.smembers(keys.job_needs(cpv))
                replies = pipe.execute()
            for i, cpv in enumerate(page):
                mine, (estimate, name), theirs = replies[3 * i:3 * i + 3]
                gates[cpv] = set(mine)
                estimates[cpv] = float(estimate or 0)
                group[cpv] = name or cpv
                if theirs:
                    needs[cpv] = set(theirs)
        chain = chains(gates, group, needs, estimates)
        for start in range(0, len(open_jobs), READ_PAGE):
            with self.redis.pipeline(transaction=False) as pipe:
                for cpv in open_jobs[start:start + READ_PAGE]:
                    score = chain.get(cpv, estimates[cpv])
                    pipe.hset(keys.job(cpv), "priority", score)
                    pipe.zadd(keys.ready(target_of(cpv)), {cpv: score}, xx=True)
                    pipe.zadd(keys.LISTING, {cpv: -score})
                pipe.execute()
        return len(open_jobs)

    # -- the drone's side ---------------------------------------------------------------------

    def claim(self, drone: str, token: str, session: str | None = None, seq: int = 1,
              free_mb: tuple[int, int] | None = None, speed: float | None = None,
              targets: Iterable[str] = (DEFAULT_TARGET,)) -> Claim | None:
        """Atomically take the best ready job; None when nothing is ready for this drone.

        ``free_mb`` is the (memory, build disk) the drone can give a new build now: a job needing
        more waits for another drone, or for this one to have room (swarmctl.capacity). With its
        ``speed``, a drone leaves the longest chain to a faster drone that is idle.

        Request ``seq`` of claim ``session`` (see new_session) is idempotent: calling again with
        the same pair after a lost reply (a timeout; redis-py's own retries too) returns the job
        that request already holds, never a second one. Only jobs of ``targets`` are handed out.
        """
        reply = self._run(self.scripts.claim, drone, token_sha(token), secrets.token_hex(16),
                          self.config.queue.claim_scan, int(self.config.orchestrator.offline_after * 1000),
                          self._max_events, session or new_session(), int(seq),
                          *(free_mb or ("", "")), "" if speed is None else speed, " ".join(targets))
        if reply[0] == "ok":
            return Claim(cpv=reply[1], lease=reply[2], estimate=float(reply[3]), attempts=int(reply[4]),
                         tree=reply[5] if len(reply) > 5 else "", priority=float(reply[6]) if len(reply) > 6 else 0.0)
        if reply[0] == "grounded":
            raise Grounded(int(reply[1]) / 1000.0)
        if reply[0] == "unauthorized":
            raise NotEnrolled(f"drone {drone!r} is not enrolled, revoked, or its token is wrong")
        return None

    def complete(self, cpv: str, drone: str, token: str, lease: str, duration: float,
                 artifact: dict[str, Any] | None = None, usage: tuple[int, int] = (0, 0)) -> str:
        """Mark built if ``drone`` still owns the job: "ok", "stale" or "unauthorized".

        ``usage`` is the build's (peak RSS, disk) in bytes, kept in the history (0: not measured).

        Raises InvalidArgument for a duration that is not a finite number of seconds >= 0 (and an
        artifact JSON cannot carry): nothing is written then.
        """
        if not isinstance(duration, int | float) or not math.isfinite(duration) or duration < 0:
            raise InvalidArgument(f"duration must be a finite number of seconds >= 0, got {duration!r}")
        try:
            artifact_json = json.dumps(artifact or {}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"artifact is not plain JSON: {exc}") from None
        # The build's duration joins the package's history in the same script.
        reply = self.scripts.complete(keys=[*keys.QUEUE_KEYS, keys.history(cp_of(cpv_of(cpv)))], args=[
            cpv, drone, token_sha(token), lease, round(duration, 3), artifact_json,
            self._max_events, HISTORY_KEEP, f"{max(0, int(usage[0]))} {max(0, int(usage[1]))}"])
        return refused(decode(reply))[0]

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

    def release(self, cpv: str, drone: str, token: str, lease: str, reason: str, cannot: str = "") -> str:
        """Give a job back unbuilt without counting a failure: "ok", "stale" or "unauthorized".

        ``cannot`` (e.g. "tree-mismatch") says this drone cannot build the job as planned: it is
        not handed it again while another drone could take it, and the kind is counted in the stats.
        """
        return self._run(self.scripts.release, cpv, drone, token_sha(token), lease, reason,
                         self._max_events, cannot)[0]

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
        cpv = validate_job(cpv)
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
        """Delete every job (gated behind --yes in the CLI); returns how many.

        Job by job in slices (each one MULTI/EXEC that takes the jobs out of every state set and
        deletes their keys, so Redis never stalls and no set names a deleted job); then the keys
        left under the job prefix that no queued job uses any more (the dependents set of a CPV
        that was named but never queued, an emptied settle group).
        """
        cpvs: set[str] = set()
        for state in keys.STATES:
            cpvs |= self.redis.smembers(keys.state_set(state))
        with self.redis.pipeline(transaction=True) as pipe:
            for name in self.redis.smembers(keys.DRONES):
                pipe.delete(keys.drone_jobs(name))
            pipe.execute()
        names = sorted(cpvs)
        for start in range(0, len(names), CLEAR_SLICE):
            page = names[start:start + CLEAR_SLICE]
            with self.redis.pipeline(transaction=True) as pipe:
                for target in {target_of(c) for c in page}:
                    pipe.zrem(keys.ready(target), *[c for c in page if target_of(c) == target])
                pipe.zrem(keys.LISTING, *page)
                pipe.zrem(keys.NEEDS, *page)
                pipe.zrem(keys.NEEDS_DISK, *page)
                for state in keys.STATES:
                    pipe.srem(keys.state_set(state), *page)
                for cpv in page:
                    pipe.unlink(*keys.job_keys(cpv))
                pipe.execute()
        self.redis.delete(keys.LISTING)  # anything left names no job
        self._drop_leftovers()
        return len(cpvs)

    def _drop_leftovers(self) -> None:
        """Delete per-job keys whose job is not queued and that no queued job refers to."""
        suffixes = (keys.JOB_GATES, keys.JOB_DEPENDENTS, keys.JOB_NEEDS, keys.JOB_HOLDERS, keys.JOB_MEMBERS,
                    keys.JOB_BLAME, keys.JOB_AVOID, keys.JOB_TAILS)
        for found in _chunks(self.redis.scan_iter(match=keys.JOB_PREFIX + "*", count=1000), 1000):
            owners = []
            for key in found:
                rest = key[len(keys.JOB_PREFIX):]
                owners.append(next((rest[:-len(x)] for x in suffixes if rest.endswith(x)), rest))
            with self.redis.pipeline(transaction=False) as pipe:
                for owner in owners:
                    pipe.hexists(keys.job(owner), "state")
                queued = pipe.execute()
            orphans = [k for k, o, q in zip(found, owners, queued, strict=True) if not q]
            # A set that names a queued job (a named, unqueued dependency's waiters) stays.
            with self.redis.pipeline(transaction=False) as pipe:
                for key in orphans:
                    pipe.type(key)
                types = pipe.execute()
            drop = []
            for key, kind in zip(orphans, types, strict=True):
                if kind == "set" and any(self.redis.hexists(keys.job(m), "state")
                                         for m in self.redis.sscan_iter(key, count=1000)):
                    continue
                drop.append(key)
            if drop:
                self.redis.unlink(*drop)

    # -- reading ------------------------------------------------------------------------------

    def get(self, cpv: str) -> Job:
        data = self.redis.hgetall(keys.job(validate_job(cpv)))
        if not data:
            raise NoSuchJob(f"no job {cpv} in the queue")
        return Job.from_hash(data, list(self.redis.smembers(keys.job_avoid(cpv))))

    def tails(self, cpv: str) -> dict[str, str]:
        """The failed builds' log tails, by drone."""
        tails: dict[str, str] = self.redis.hgetall(keys.job_tails(cpv))
        return tails

    def job_order(self, state: str | None = None) -> list[str]:
        """The CPVs of every job (or of those in one state), best priority first, then by name."""
        states = [state] if state else list(keys.STATES)
        with self.redis.pipeline(transaction=False) as pipe:
            for name in states:
                pipe.smembers(keys.state_set(name))
            cpvs = sorted(set().union(*pipe.execute()))
        priority: dict[str, float] = {}
        for start in range(0, len(cpvs), PEEK_PAGE * 4):  # a few ms of Redis per call
            page = cpvs[start:start + PEEK_PAGE * 4]
            found = self.scripts.priorities(keys=[], args=page)
            priority.update((c, float(p or 0)) for c, p in zip(page, found, strict=True))
        return sorted(cpvs, key=lambda c: -priority[c])  # stable: ties stay in name order

    def load(self, cpvs: list[str]) -> list[Job]:
        """The jobs of ``cpvs`` in that order (any no longer queued left out)."""
        jobs: list[Job] = []
        for start in range(0, len(cpvs), PEEK_PAGE):
            for flat, avoid in self.scripts.peek(keys=[], args=cpvs[start:start + PEEK_PAGE]):
                data = dict(zip(flat[::2], flat[1::2], strict=True))
                if data.get("cpv"):
                    jobs.append(Job.from_hash(data, avoid))
        return jobs

    def page(self, state: str | None = None, offset: int = 0, limit: int | None = None,
             target: str | None = None) -> tuple[list[str], int]:
        """The CPVs of one page of jobs (or of those in one state, of one target), best first, and how
        many in all.

        Read from the listing index in O(page) when it holds every job (jobs queued before it
        existed, or a state filter over a small set, take job_order()).
        """
        if target is not None and (len(self.targets) > 1 or target != DEFAULT_TARGET):
            order = [c for c in self.job_order(state) if target_of(c) == target]
            return (order[offset:] if limit is None else order[offset:offset + limit]), len(order)
        with self.redis.pipeline(transaction=False) as pipe:
            for name in keys.STATES:
                pipe.scard(keys.state_set(name))
            pipe.zcard(keys.LISTING)
            *cards, indexed = pipe.execute()
        counts = dict(zip(keys.STATES, cards, strict=True))
        total = counts[state] if state else sum(cards)
        if limit == 0 or offset >= total:
            return [], total
        if indexed != sum(cards) or (state and total <= INDEX_WALK_MIN):
            order = self.job_order(state)
            return (order[offset:] if limit is None else order[offset:offset + limit]), len(order)
        if not state:
            return self.redis.zrange(keys.LISTING, offset, -1 if limit is None else offset + limit - 1), total
        want = total - offset if limit is None else min(limit, total - offset)
        found: list[str] = []
        skip, start = offset, 0
        while len(found) < want and start < indexed:  # walk the index, keep the state's members
            chunk = self.redis.zrange(keys.LISTING, start, start + READ_PAGE - 1)
            start += READ_PAGE
            for cpv, member in zip(chunk, self.redis.smismember(keys.state_set(state), chunk), strict=True):
                if member and skip:
                    skip -= 1
                elif member:
                    found.append(cpv)
        return found[:want], total

    def jobs(self, state: str | None = None, limit: int | None = None, offset: int = 0,
             target: str | None = None) -> list[Job]:
        """Every job (or those in one state, of one target), best priority first; ``limit``/``offset`` page it."""
        return self.load(self.page(state, offset, limit, target)[0])

    def counts(self) -> dict[str, int]:
        """Jobs per state, plus ``ready`` (claimable now) and ``waiting`` (needed, gated)."""
        with self.redis.pipeline(transaction=False) as pipe:
            queue_counts(pipe, self.targets)
            return read_counts(pipe.execute())


def for_target(specs: Iterable[JobSpec], target: str) -> list[JobSpec]:
    """``specs`` (bare CPVs, as the resolver gives them) as jobs of ``target``: the same CPV queued
    for two targets is two jobs, each gated on its own target's jobs."""
    def name(cpv: str) -> str:
        return job_name(split_job(cpv)[0], target)

    return [JobSpec(name(s.cpv), [name(d) for d in s.build], [name(d) for d in s.run], [name(d) for d in s.post],
                    s.estimate, s.reason) for s in specs]


def refused(reply: list[str]) -> list[str]:
    """A script's reply, or InvalidArgument when it refused its arguments (having written nothing)."""
    if reply and reply[0] == "invalid":
        raise InvalidArgument(f"the queue refused: {reply[1]}")
    return reply


def check_settings(config: Config) -> None:
    """The settings the queue's scripts take, checked before any script runs with them.

    Raises:
        ConfigError: one line naming the setting.
    """
    q, b, o = config.queue, config.breaker, config.orchestrator
    for name, value, lowest, whole in (
            ("queue.events_max", q.events_max, 1, True), ("queue.claim_scan", q.claim_scan, 1, True),
            ("queue.max_attempts", q.max_attempts, 1, True),
            ("queue.block_after_drones", q.block_after_drones, 1, True),
            ("breaker.failures", b.failures, 1, True), ("breaker.ground_seconds", b.ground_seconds, 0, False),
            ("breaker.backoff_factor", b.backoff_factor, 1, False),
            ("breaker.ground_max_seconds", b.ground_max_seconds, 0, False),
            ("orchestrator.offline_after", o.offline_after, 0.001, False),
            ("orchestrator.leader_ttl", o.leader_ttl, 0.001, False),
            ("orchestrator.integrity_interval", o.integrity_interval, 0, False)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or value < lowest or (whole and value != int(value)):
            kind = "an integer" if whole else "a finite number"
            raise ConfigError(f"{name} must be {kind} >= {lowest}, got {value!r}")


def queue_counts(pipe: redis.client.Pipeline, targets: Iterable[str] = (DEFAULT_TARGET,)) -> int:
    """Queue the reads behind counts() on a pipeline shared with other reads (every target's ready
    set counted); returns how many replies they add."""
    for state in keys.STATES:
        pipe.scard(keys.state_set(state))
    names = list(targets)
    for target in names:
        pipe.zcard(keys.ready(target))
    return len(keys.STATES) + len(names)


def read_counts(replies: list[Any]) -> dict[str, int]:
    """Counts from the replies of queue_counts() (exactly those)."""
    counts = dict(zip(keys.STATES, replies[:len(keys.STATES)], strict=True))
    counts["ready"] = sum(replies[len(keys.STATES):])
    counts["waiting"] = counts["needed"] - counts["ready"]
    return counts

