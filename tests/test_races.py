"""Every atomic queue script raced from several real processes against one Redis."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from swarmctl import keys
from swarmctl.config import load_config
from swarmctl.events import Events
from swarmctl.exceptions import SwarmError
from swarmctl.graph import JobSpec
from swarmctl.orchestrator import Orchestrator
from swarmctl.queue import Queue, new_session
from swarmctl.registry import DroneRegistry

WORKERS = 8
# Fresh interpreters, not fork(): earlier tests in the session may have left threads holding
# locks, and a forked child inherits those locks held forever.
CTX = mp.get_context("spawn")


@contextmanager
def start_line(parties: int) -> Iterator[Any]:
    """A barrier every worker waits at, so the race starts at once (its manager is shut down)."""
    with CTX.Manager() as manager:
        yield manager.Barrier(parties)


def _queue(url: str, **overrides: object) -> Queue:
    config = load_config(environ={"SWARM_REDIS_URL": url}).with_overrides(**overrides)
    return Queue(redis.Redis.from_url(url, decode_responses=True), config)


def _claim_and_complete(url: str, name: str, token: str, start: mp.Barrier) -> list[str]:
    queue = _queue(url)
    start.wait()
    built = []
    while (claim := queue.claim(name, token)) is not None:
        if queue.complete(claim.cpv, name, token, claim.lease, 0.0) == "ok":
            built.append(claim.cpv)
    return built


def _enroll_all(client: redis.Redis, n: int) -> dict[str, str]:
    registry = DroneRegistry(client, load_config(environ={}))
    tokens = {f"d{i}": registry.enroll(f"d{i}") for i in range(n)}
    for name, token in tokens.items():
        registry.heartbeat(name, token, {"status": "idle"})
    return tokens


def _run(target, args_list):
    with CTX.Pool(len(args_list)) as pool:
        return pool.starmap(target, args_list)


def test_eight_processes_claim_1000_jobs_each_built_exactly_once(redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url)
    cpvs = [f"app-misc/pkg{i}-1" for i in range(1000)]
    queue.add([JobSpec(c, estimate=1) for c in cpvs])
    tokens = _enroll_all(redis_client, WORKERS)
    with start_line(WORKERS) as barrier:
        results = _run(_claim_and_complete, [(redis_url, n, t, barrier) for n, t in tokens.items()])
    built = [c for r in results for c in r]
    assert sorted(built) == sorted(cpvs)  # every job once, none twice
    assert sum(1 for r in results if r) >= 2  # the work really was shared
    assert queue.counts()["built"] == 1000
    claimed = [e for e in Events(redis_client, 100000).since() if e.kind == "claimed"]
    assert len(claimed) == 1000


def _complete_late(url: str, name: str, token: str, start: mp.Barrier) -> tuple[int, int]:
    """Claim, sleep a little, then complete: races the reclaimer below."""
    queue = _queue(url)
    start.wait()
    ok = stale = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        claim = queue.claim(name, token)
        if claim is None:
            if queue.counts()["built"] == 300:
                break
            time.sleep(0.005)
            continue
        time.sleep(random.random() / 500)
        outcome = queue.complete(claim.cpv, name, token, claim.lease, 0.0)
        ok += outcome == "ok"
        stale += outcome == "stale"
    return ok, stale


def _reclaimer(url: str, names: list[str], start: mp.Barrier, until_built: int) -> int:
    """Reclaim random drones' jobs until ``until_built`` jobs are built."""
    queue = _queue(url)
    start.wait()
    taken = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and queue.counts()["built"] < until_built:
        taken += len(queue.reclaim(random.choice(names), None, "race"))
    return taken


def test_reclaim_racing_completions_never_double_builds(redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url)
    queue.add([JobSpec(f"app-misc/r{i}-1", estimate=1) for i in range(300)])
    tokens = _enroll_all(redis_client, 6)
    with start_line(8) as barrier, CTX.Pool(8) as pool:
        args = [(redis_url, n, t, barrier) for n, t in tokens.items()]
        reclaimers = [pool.apply_async(_reclaimer, (redis_url, list(tokens), barrier, 300)) for _ in range(2)]
        builders = pool.starmap(_complete_late, args)
        taken = sum(r.get() for r in reclaimers)
    ok = sum(b[0] for b in builders)
    stale = sum(b[1] for b in builders)
    assert ok == 300  # each job applied once
    assert queue.counts()["built"] == 300
    assert int(redis_client.hget(keys.STATS, "stale") or 0) == stale
    assert taken > 0  # the race really happened


def _add_overlapping(url: str, offset: int, start: mp.Barrier) -> int:
    queue = _queue(url)
    start.wait()
    specs = [JobSpec(f"app-misc/o{i}-1", build=[f"app-misc/o{i - 1}-1"] if i else []) for i in range(offset, 200)]
    return len(queue.add(specs).added)


def test_concurrent_adds_add_each_job_once(redis_client: redis.Redis, redis_url: str) -> None:
    with start_line(WORKERS) as barrier:
        added = _run(_add_overlapping, [(redis_url, i * 10, barrier) for i in range(WORKERS)])
    assert sum(added) == 200
    queue = _queue(redis_url)
    assert queue.counts() | {"ready": 1} == {"needed": 200, "delegated": 0, "built": 0, "failed": 0,
                                             "blocked": 0, "retired": 0, "ready": 1, "waiting": 199}
    assert queue.counts()["ready"] == 1  # only the chain's head is claimable


def _fail_everything(url: str, name: str, token: str, start: mp.Barrier) -> list[str]:
    queue = _queue(url, breaker__failures=1000)  # every drone fails everything (<= 100 each): no grounding
    start.wait()
    outcomes = []
    deadline = time.monotonic() + 30
    # A job this drone failed waits for another drone, so keep polling until all are blocked.
    registry = DroneRegistry(queue.redis, queue.config)
    while queue.counts()["blocked"] < 100 and time.monotonic() < deadline:
        registry.heartbeat(name, token, {"status": "building"})  # stay healthy, as a real drone does
        claim = queue.claim(name, token)
        if claim is None:
            time.sleep(0.005)
            continue
        outcomes.append(queue.fail(claim.cpv, name, token, claim.lease, "build", "boom", "tail")[0])
    return outcomes


def test_concurrent_failures_block_each_package_once(redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url, breaker__failures=1000)
    queue.add([JobSpec(f"app-misc/b{i}-1") for i in range(100)])
    tokens = _enroll_all(redis_client, 4)
    with start_line(4) as barrier:
        runs = _run(_fail_everything, [(redis_url, n, t, barrier) for n, t in tokens.items()])
    outcomes = [o for r in runs for o in r]
    assert outcomes.count("blocked") == 100
    assert queue.counts()["blocked"] == 100
    for job in queue.jobs("blocked"):
        assert len(queue.tails(job.cpv)) == 2


def _contend_for_lead(url: str, ident: str, start: mp.Barrier) -> list[tuple[float, float, str]]:
    """Record the intervals in which this process believed it led."""
    config = load_config(environ={"SWARM_REDIS_URL": url}).with_overrides(orchestrator__leader_ttl=0.3)
    orch = Orchestrator(redis.Redis.from_url(url, decode_responses=True), config, ident=ident)
    start.wait()
    held: list[tuple[float, float, str]] = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if orch.hold_lease():
            began = time.time()
            time.sleep(random.random() / 20)  # well inside the 0.3 s lease
            held.append((began, time.time(), ident))
            if random.random() < 0.3:
                orch.resign()
        time.sleep(random.random() / 50)
    return held


def test_leader_lease_has_one_holder_at_a_time(redis_client: redis.Redis, redis_url: str) -> None:
    with start_line(4) as barrier:
        runs = _run(_contend_for_lead, [(redis_url, f"o{i}", barrier) for i in range(4)])
    spans = sorted(s for r in runs for s in r)
    assert len({ident for _, _, ident in spans}) >= 2  # the lead really changed hands
    latest_end: dict[str, float] = {}
    for began, ended, ident in spans:
        others = [end for who, end in latest_end.items() if who != ident]
        assert not others or began >= max(others), "two orchestrators led at once"
        latest_end[ident] = max(ended, latest_end.get(ident, 0.0))


def _reattach(url: str, name: str, token: str, held: list[tuple[str, str]], start: mp.Barrier) -> list[str]:
    """A drone back from a blip heartbeats each job it was building (reattaching it if free)."""
    registry = DroneRegistry(redis.Redis.from_url(url, decode_responses=True), load_config(environ={}))
    start.wait()
    return [cpv for cpv, lease in held
            if registry.heartbeat(name, token, {"status": "building"}, cpv, lease).owns_current]


def _claim_all(url: str, name: str, token: str, start: mp.Barrier) -> list[str]:
    queue = _queue(url)
    start.wait()
    taken = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and queue.counts()["needed"]:
        claim = queue.claim(name, token)
        if claim is not None:
            taken.append(claim.cpv)
    return taken


def test_reattach_racing_claims_gives_each_job_one_owner(redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url)
    cpvs = [f"app-misc/blip{i}-1" for i in range(300)]
    queue.add([JobSpec(c, estimate=1) for c in cpvs])
    tokens = _enroll_all(redis_client, 3)
    held = []
    while (claim := queue.claim("d0", tokens["d0"])) is not None:
        held.append((claim.cpv, claim.lease))
    queue.reclaim("d0", None, "blip")  # declared offline while it kept building
    with start_line(3) as barrier, CTX.Pool(3) as pool:
        # The returning drone walks its jobs from the other end, so the two sides meet midway.
        back = pool.apply_async(_reattach, (redis_url, "d0", tokens["d0"], held[::-1], barrier))
        others = pool.starmap(_claim_all, [(redis_url, n, tokens[n], barrier) for n in ("d1", "d2")])
        kept = back.get()
    taken = [c for o in others for c in o]
    assert sorted(kept + taken) == sorted(cpvs)  # every job exactly one owner
    assert kept and taken  # both sides won some
    owners = {j.cpv: j.drone for j in queue.jobs()}
    assert all(owners[c] == "d0" for c in kept)
    assert all(owners[c] in ("d1", "d2") for c in taken)


def _release_or_complete(url: str, name: str, token: str, start: mp.Barrier) -> tuple[int, int]:
    """Claim, then give back or complete at random, racing the reclaimer."""
    queue = _queue(url)
    rng = random.Random(name)
    start.wait()
    released = completed = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and queue.counts()["built"] < 200:
        claim = queue.claim(name, token)
        if claim is None:
            time.sleep(0.002)
            continue
        if rng.random() < 0.3:  # half of them as a drone whose tree cannot reach the job's revision
            cannot = "tree-mismatch" if rng.random() < 0.5 else ""
            released += queue.release(claim.cpv, name, token, claim.lease, "race", cannot) == "ok"
        else:
            completed += queue.complete(claim.cpv, name, token, claim.lease, 0.0) == "ok"
    return released, completed


def test_release_racing_reclaim_loses_no_job(redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url)
    queue.add([JobSpec(f"app-misc/rel{i}-1", estimate=1) for i in range(200)])
    tokens = _enroll_all(redis_client, 5)
    with start_line(7) as barrier, CTX.Pool(7) as pool:
        reclaimers = [pool.apply_async(_reclaimer, (redis_url, list(tokens), barrier, 200)) for _ in range(2)]
        results = pool.starmap(_release_or_complete, [(redis_url, n, t, barrier) for n, t in tokens.items()])
        for r in reclaimers:
            r.get()
    assert sum(r[1] for r in results) == 200 and sum(r[0] for r in results) > 0
    counts = queue.counts()
    assert counts["built"] == 200 and counts["needed"] == counts["delegated"] == 0
    # A release gives its attempt back, a reclaim does not: each job counts its completing claim
    # plus one per time it was taken back. (The stream holds every event: far under its cap.)
    assert redis_client.xlen(keys.EVENTS) < queue.config.queue.events_max
    reclaims = Counter(e.job for e in Events(redis_client).since() if e.kind == "reclaimed")
    assert {j.cpv: j.attempts for j in queue.jobs()} == {j.cpv: 1 + reclaims[j.cpv] for j in queue.jobs()}
    mismatches = [e for e in Events(redis_client).since() if e.kind == "tree-mismatch"]
    assert mismatches and int(redis_client.hget(keys.STATS, "tree-mismatch")) == len(mismatches)
    assert all(e.drone in queue.get(e.job).failed_on for e in mismatches)  # not handed it again


def _retry(url: str, cpv: str, start: mp.Barrier) -> bool:
    queue = _queue(url)
    start.wait()
    try:
        queue.retry(cpv)
        return True
    except SwarmError:
        return False


def test_concurrent_retries_requeue_a_blocked_job_once(redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url)
    queue.add([JobSpec("app-misc/broken-1")])
    tokens = _enroll_all(redis_client, 2)
    for name in ("d0", "d1"):
        claim = queue.claim(name, tokens[name])
        assert claim is not None
        queue.fail(claim.cpv, name, tokens[name], claim.lease, "build", "boom")
    assert queue.get("app-misc/broken-1").state == "blocked"
    with start_line(WORKERS) as barrier:
        wins = _run(_retry, [(redis_url, "app-misc/broken-1", barrier)] * WORKERS)
    assert wins.count(True) == 1
    assert queue.get("app-misc/broken-1").state == "needed" and queue.counts()["ready"] == 1
    retried = [e for e in Events(redis_client).since() if e.kind == "retried"]
    assert len(retried) == 1


def _rebuild(url: str, cpv: str, start: mp.Barrier) -> list[str]:
    queue = _queue(url)
    start.wait()
    return queue.rebuild([JobSpec(cpv, reason="USE changed: +loud")])


def test_concurrent_rebuilds_requeue_a_built_job_once(redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url)
    queue.add([JobSpec("dev-libs/base-1"), JobSpec("app-misc/top-1", build=["dev-libs/base-1"])])
    tokens = _enroll_all(redis_client, 1)
    while (claim := queue.claim("d0", tokens["d0"])) is not None:
        queue.complete(claim.cpv, "d0", tokens["d0"], claim.lease, 0.0)
    with start_line(WORKERS) as barrier:
        wins = _run(_rebuild, [(redis_url, "dev-libs/base-1", barrier)] * WORKERS)
    assert sum(len(w) for w in wins) == 1
    assert queue.get("dev-libs/base-1").state == "needed" and queue.counts()["ready"] == 1
    assert queue.get("app-misc/top-1").pending == 1  # held back exactly once
    assert len([e for e in Events(redis_client).since() if e.kind == "rebuild"]) == 1


def _retry_one_request(url: str, name: str, token: str, session: str, start: mp.Barrier) -> set[tuple[str, str]]:
    """Send the same claim request again and again, as a drone whose replies keep getting lost."""
    queue = _queue(url)
    start.wait()
    got = set()
    for _ in range(25):
        claim = queue.claim(name, token, session, 1)
        assert claim is not None
        got.add((claim.cpv, claim.lease))
    return got


def test_processes_retrying_one_claim_request_all_get_the_one_job_it_took(
        redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url)
    queue.add([JobSpec(f"app-misc/i{i}-1", estimate=1) for i in range(50)])
    tokens = _enroll_all(redis_client, 1)
    session = new_session()
    with start_line(WORKERS) as barrier:
        runs = _run(_retry_one_request, [(redis_url, "d0", tokens["d0"], session, barrier)] * WORKERS)
    answers = set().union(*runs)
    assert len(answers) == 1  # every retry, in every process: the same job, the same lease
    (cpv, lease), = answers
    assert redis_client.smembers(keys.state_set("delegated")) == {cpv}
    assert queue.owner_of(cpv) == ("d0", lease)
    assert queue.get(cpv).attempts == 1


def _drone_until_built(url: str, name: str, token: str, total: int, start: mp.Barrier) -> int:
    """A real drone daemon (heartbeating very often) until ``total`` jobs are built."""
    import tempfile
    import threading
    from pathlib import Path

    from swarmctl.drone.builders import CommandBuilder
    from swarmctl.drone.daemon import DroneDaemon

    config = load_config(environ={"SWARM_REDIS_URL": url}).with_overrides(
        drone__heartbeat_interval=0.05, drone__poll_interval=0.05)
    client = redis.Redis.from_url(url, decode_responses=True)
    with tempfile.TemporaryDirectory() as state:
        daemon = DroneDaemon(client, config, name, token, CommandBuilder(["true"]), Path(state))
        queue = Queue(client, config)

        def watch() -> None:
            deadline = time.monotonic() + 60
            while queue.counts()["built"] < total and time.monotonic() < deadline:
                time.sleep(0.05)
            daemon.stopping.set()

        start.wait()
        threading.Thread(target=watch, daemon=True).start()
        daemon.run()
        return daemon.builds


def _reconcile_until_built(url: str, names: list[str], total: int, start: mp.Barrier, seconds: float = 60) -> int:
    """The orchestrator's reconciliation in a tight loop over every drone (until ``total`` jobs are
    built, or for ``seconds`` when ``total`` is 0)."""
    queue = _queue(url)
    start.wait()
    taken = sweeps = 0
    deadline = time.monotonic() + seconds
    while (not total or queue.counts()["built"] < total) and time.monotonic() < deadline:
        for name in names:
            taken += len(queue.reconcile(name))
        sweeps += 1
    assert sweeps > 10
    return taken


def test_reconciliation_racing_real_drones_takes_back_nothing_they_hold(
        redis_client: redis.Redis, redis_url: str) -> None:
    """Claims, their replies, heartbeats and reconciliation interleave every way they can: a job
    is only taken back on proof, so none is, and each is built once."""
    total = 200
    queue = _queue(redis_url)
    queue.add([JobSpec(f"app-misc/c{i}-1", estimate=1) for i in range(total)])
    tokens = _enroll_all(redis_client, 4)
    with start_line(6) as barrier, CTX.Pool(6) as pool:
        reconcilers = [pool.apply_async(_reconcile_until_built, (redis_url, list(tokens), total, barrier))
                       for _ in range(2)]
        builds = pool.starmap(_drone_until_built, [(redis_url, n, t, total, barrier) for n, t in tokens.items()])
        taken = sum(r.get() for r in reconcilers)
    assert taken == 0
    assert sum(builds) == total and queue.counts()["built"] == total
    events = Events(redis_client, 100000).since()
    assert not [e for e in events if e.kind == "reclaimed"]
    assert sum(1 for e in events if e.kind == "built") == total
    # The drones really did report what they held, from one session each.
    assert all(redis_client.hget(keys.drone(n), "held_session") for n in tokens)


def _claim_then_vanish(url: str, name: str, token: str, start: mp.Barrier) -> str | None:
    """A drone process whose claim ran but which never took the job (its reply was lost, then it
    moved on): it claims once under request 1 and heartbeats request 1 as settled, holding nothing."""
    queue = _queue(url)
    registry = DroneRegistry(queue.redis, queue.config)
    session = new_session()
    start.wait()
    claim = queue.claim(name, token, session, 1)
    registry.heartbeat(name, token, {"status": "idle"}, held=[], session=session, settled=1)
    return claim.cpv if claim else None


def test_reconciliation_gives_back_every_job_whose_claim_reply_was_lost(
        redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url)
    queue.add([JobSpec(f"app-misc/l{i}-1", estimate=1) for i in range(20)])
    tokens = _enroll_all(redis_client, 6)
    with start_line(8) as barrier, CTX.Pool(8) as pool:
        reconcilers = [pool.apply_async(_reconcile_until_built, (redis_url, list(tokens), 0, barrier, 2.0))
                       for _ in range(2)]
        lost = pool.starmap(_claim_then_vanish, [(redis_url, n, t, barrier) for n, t in tokens.items()])
        [r.get() for r in reconcilers]
    assert all(lost)
    for name in tokens:
        queue.reconcile(name)
    assert queue.counts()["delegated"] == 0 and queue.counts()["ready"] == 20
    reclaimed = sorted(e.job for e in Events(redis_client, 100000).since() if e.kind == "reclaimed")
    assert reclaimed == sorted(lost)  # each lost job given back once


def _claim_targets(url: str, config_path: str, name: str, token: str, targets: list[str],
                   start: mp.Barrier) -> list[str]:
    config = load_config(config_path, environ={"SWARM_REDIS_URL": url})
    queue = Queue(redis.Redis.from_url(url, decode_responses=True), config)
    start.wait()
    built = []
    while (claim := queue.claim(name, token, targets=targets)) is not None:
        if queue.complete(claim.cpv, name, token, claim.lease, 0.0) == "ok":
            built.append(claim.cpv)
    return built


def _claim_within(url: str, name: str, token: str, free_mb: tuple[int, int], constraints: str,
                  start: mp.Barrier) -> list[str]:
    queue = _queue(url, queue__constraints_file=constraints)
    start.wait()
    built = []
    while (claim := queue.claim(name, token, free_mb=free_mb)) is not None:
        if queue.complete(claim.cpv, name, token, claim.lease, 0.0) == "ok":
            built.append(claim.cpv)
    return built


def test_claims_of_drones_with_different_targets_race_each_job_to_one_declaring_drone(
        redis_client: redis.Redis, redis_url: str, tmp_path: Any) -> None:
    from swarmctl.queue import for_target

    path = tmp_path / "swarm.yml"
    path.write_text("targets:\n  desktop: {}\n  server: {}\n")
    config = load_config(path, environ={"SWARM_REDIS_URL": redis_url})
    queue = Queue(redis_client, config)
    specs = [JobSpec(f"app-misc/pkg{i}-1", estimate=1) for i in range(300)]
    queue.add(for_target(specs, "desktop") + for_target(specs, "server"))
    tokens = _enroll_all(redis_client, WORKERS)
    declared = {name: [["desktop"], ["server"], ["desktop", "server"]][i % 3] for i, name in enumerate(tokens)}
    with start_line(WORKERS) as barrier:
        results = _run(_claim_targets, [(redis_url, str(path), n, t, declared[n], barrier) for n, t in tokens.items()])
    built = [c for r in results for c in r]
    assert len(built) == len(set(built)) == 600  # every job of both targets once
    for name, jobs in zip(tokens, results, strict=True):
        assert {c.rpartition("@")[2] for c in jobs} <= set(declared[name]), name


def test_claims_racing_with_memory_limits_hand_each_job_once_and_only_where_it_fits(
        redis_client: redis.Redis, redis_url: str, tmp_path) -> None:
    """Drones with 500 MiB and 4000 MiB free claim at once: each job is built once, and no
    1000 MiB job (its need stated in the constraints file) lands on a small drone."""
    constraints = tmp_path / "constraints.yaml"
    constraints.write_text("".join(f"app-misc/big{i}: {{memory_mb: 1000}}\n" for i in range(40)))
    queue = _queue(redis_url, queue__constraints_file=str(constraints))
    big = [f"app-misc/big{i}-1" for i in range(40)]
    small = [f"app-misc/small{i}-1" for i in range(120)]
    queue.add([JobSpec(c, estimate=1) for c in big + small])
    tokens = _enroll_all(redis_client, WORKERS)
    sizes = {name: (500 if i % 2 else 4000, 10**6) for i, name in enumerate(tokens)}
    with start_line(WORKERS) as barrier:
        results = _run(_claim_within, [(redis_url, n, t, sizes[n], str(constraints), barrier)
                                       for n, t in tokens.items()])
    by_drone = dict(zip(tokens, results, strict=True))
    assert sorted(c for r in results for c in r) == sorted(big + small)  # every job once
    assert not [c for n, r in by_drone.items() if sizes[n][0] < 1000 for c in r if c in big]
    assert sum(1 for n, r in by_drone.items() if sizes[n][0] < 1000 and r) >= 2  # small drones did work too


def _retree_once(url: str, gone: list[str], start: mp.Barrier) -> tuple[list[str], list[str]]:
    queue = _queue(url)
    start.wait()
    report = queue.retree("default", "rev-b", lambda cpv: cpv not in gone)
    return report.retired, report.restamped


def _claim_noting_tree(url: str, name: str, token: str, start: mp.Barrier) -> list[tuple[str, str]]:
    queue = _queue(url)
    start.wait()
    taken = []
    while len(taken) < 100 and (claim := queue.claim(name, token)) is not None:  # leaves 100 jobs at least
        taken.append((claim.cpv, claim.tree))
    return taken


def test_a_tree_sync_racing_claims_never_hands_out_a_retired_job(redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url)
    cpvs = [f"app-misc/t{i}-1" for i in range(400)]
    gone = cpvs[1::2]
    queue.add([JobSpec(c, estimate=1) for c in cpvs], tree="rev-a")
    tokens = _enroll_all(redis_client, 3)
    with start_line(5) as barrier, CTX.Pool(5) as pool:
        syncs = [pool.apply_async(_retree_once, (redis_url, gone, barrier)) for _ in range(2)]
        claims = pool.starmap(_claim_noting_tree, [(redis_url, n, t, barrier) for n, t in tokens.items()])
        outcomes = [s.get() for s in syncs]
    taken = dict(c for drone in claims for c in drone)
    retired = [c for r, _ in outcomes for c in r]
    assert len(taken) == sum(map(len, claims))  # each job handed out once
    assert sorted(retired) == sorted(set(retired)) == sorted(set(gone) - set(taken))  # each retired once
    assert taken and retired  # both sides won some
    jobs = {j.cpv: j for j in queue.jobs()}
    # A claimed job carries the revision it has in the queue; a gone one only the one it was planned at.
    assert all(jobs[c].state == "delegated" and jobs[c].tree == tree for c, tree in taken.items())
    assert all(taken[c] == "rev-a" for c in gone if c in taken)
    assert all(jobs[c].state == "retired" and jobs[c].tree == "rev-a" for c in retired)
    assert all((jobs[c].state, jobs[c].tree) == ("needed", "rev-b") for c in set(cpvs) - set(gone) - set(taken))
    assert int(redis_client.hget(keys.STATS, "retired")) == len(retired) == len(
        [e for e in Events(redis_client).since() if e.kind == "retired"])
