"""The queue's state machine against a real Redis server."""

from __future__ import annotations

import pytest
import redis

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.exceptions import Grounded, InvalidAtom, NotEnrolled, SwarmError
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry


def enroll(registry: DroneRegistry, *names: str) -> dict[str, str]:
    tokens = {name: registry.enroll(name) for name in names}
    for name, token in tokens.items():
        registry.heartbeat(name, token, {"status": "idle"})
    return tokens


def test_claim_complete_unlocks_dependents(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    queue.add([JobSpec("sys-libs/zlib-1.3"), JobSpec("dev-libs/libxml2-2.13", build=["sys-libs/zlib-1.3"])])
    assert queue.counts()["ready"] == 1
    first = queue.claim("izar", tokens["izar"])
    assert first is not None and first.cpv == "sys-libs/zlib-1.3"
    assert queue.claim("izar", tokens["izar"]) is None  # libxml2 waits for zlib
    assert queue.complete(first.cpv, "izar", tokens["izar"], first.lease, 3.0) == "ok"
    second = queue.claim("izar", tokens["izar"])
    assert second is not None and second.cpv == "dev-libs/libxml2-2.13"
    assert queue.get("sys-libs/zlib-1.3").state == "built"
    assert [r.seconds for r in queue.history.records("sys-libs/zlib")] == [3.0]  # recorded with the completion
    assert queue.history.estimate("sys-libs/zlib-1.3") == 3.0


def test_dependency_queued_later_still_gates(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    queue.add([JobSpec("app-misc/top-1", build=["app-misc/base-1"])])
    queue.add([JobSpec("app-misc/base-1")])
    claim = queue.claim("izar", tokens["izar"])
    assert claim is not None and claim.cpv == "app-misc/base-1"
    assert queue.claim("izar", tokens["izar"]) is None


def test_unknown_or_revoked_drone_gets_no_work(queue: Queue, registry: DroneRegistry) -> None:
    queue.add([JobSpec("app-misc/a-1")])
    with pytest.raises(NotEnrolled):
        queue.claim("ghost", "made-up-token")
    token = registry.enroll("tarn")
    with pytest.raises(NotEnrolled):
        queue.claim("tarn", "wrong" + token)
    registry.revoke("tarn", queue)
    with pytest.raises(NotEnrolled):
        queue.claim("tarn", token)
    assert queue.counts()["ready"] == 1


def test_stale_completion_is_refused_and_recorded(queue: Queue, registry: DroneRegistry,
                                                  redis_client: redis.Redis) -> None:
    tokens = enroll(registry, "izar", "tarn")
    queue.add([JobSpec("app-misc/a-1")])
    old = queue.claim("izar", tokens["izar"])
    assert old is not None
    assert queue.reclaim("izar", None, "test") == ["app-misc/a-1"]
    new = queue.claim("tarn", tokens["tarn"])
    assert new is not None and new.cpv == old.cpv
    assert queue.complete(old.cpv, "izar", tokens["izar"], old.lease, 1.0) == "stale"
    assert queue.fail(old.cpv, "izar", tokens["izar"], old.lease, "build", "x")[0] == "stale"
    job = queue.get(old.cpv)
    assert job.state == "delegated" and job.drone == "tarn"
    assert redis_client.hget(keys.STATS, "stale") == "2"
    assert queue.complete(new.cpv, "tarn", tokens["tarn"], new.lease, 1.0) == "ok"


def test_same_drone_with_old_lease_is_stale(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    queue.add([JobSpec("app-misc/a-1")])
    first = queue.claim("izar", tokens["izar"])
    assert first is not None
    queue.reclaim("izar", None, "test")
    again = queue.claim("izar", tokens["izar"])
    assert again is not None and again.lease != first.lease
    assert queue.complete(first.cpv, "izar", tokens["izar"], first.lease, 1.0) == "stale"


def test_package_failing_on_two_drones_is_blocked_with_both_tails(queue: Queue,
                                                                  registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar", "tarn")
    queue.add([JobSpec("app-misc/broken-1")])
    a = queue.claim("izar", tokens["izar"])
    assert a is not None
    assert queue.fail(a.cpv, "izar", tokens["izar"], a.lease, "build", "exit 1", "izar tail")[0] == "requeued"
    # izar is not handed the package it just failed while tarn can take it.
    assert queue.claim("izar", tokens["izar"]) is None
    b = queue.claim("tarn", tokens["tarn"])
    assert b is not None
    assert queue.fail(b.cpv, "tarn", tokens["tarn"], b.lease, "build", "exit 1", "tarn tail")[0] == "blocked"
    assert queue.get("app-misc/broken-1").state == "blocked"
    assert queue.tails("app-misc/broken-1") == {"izar": "izar tail", "tarn": "tarn tail"}
    # The package's fault: neither drone's breaker counts it.
    assert all(d.failures == 0 for d in registry.list())
    queue.unblock("app-misc/broken-1")
    assert queue.get("app-misc/broken-1").state == "needed"
    assert queue.claim("izar", tokens["izar"]) is not None


def test_lone_drone_may_retry_what_it_failed(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    queue.add([JobSpec("app-misc/flaky-1")])
    a = queue.claim("izar", tokens["izar"])
    assert a is not None
    queue.fail(a.cpv, "izar", tokens["izar"], a.lease, "build", "flaky")
    again = queue.claim("izar", tokens["izar"])
    assert again is not None and again.cpv == a.cpv


def test_five_failures_ground_the_drone_and_reclaim(queue: Queue, registry: DroneRegistry,
                                                   config: Config) -> None:
    tokens = enroll(registry, "tarn", "izar")
    queue.add([JobSpec(f"app-misc/p{i}-1") for i in range(8)])
    for _ in range(4):
        c = queue.claim("tarn", tokens["tarn"])
        assert c is not None
        assert queue.fail(c.cpv, "tarn", tokens["tarn"], c.lease, "drone", "misconfigured")[1] == 0.0
    held = queue.claim("tarn", tokens["tarn"])
    fifth = queue.claim("tarn", tokens["tarn"])
    assert held is not None and fifth is not None
    outcome, grounded_until = queue.fail(fifth.cpv, "tarn", tokens["tarn"], fifth.lease, "drone", "misconfigured")
    assert outcome == "requeued"
    assert grounded_until > registry.server_time() + config.breaker.ground_seconds - 5
    assert queue.get(held.cpv).state == "needed"  # its other work went straight back
    with pytest.raises(Grounded):
        queue.claim("tarn", tokens["tarn"])
    assert queue.claim("izar", tokens["izar"]) is not None
    status = {d.name: d.status for d in registry.list()}
    assert status["tarn"] == "grounded"
    registry.release("tarn")
    assert queue.claim("tarn", tokens["tarn"]) is not None


def test_repeated_grounding_backs_off(redis_client: redis.Redis, config: Config,
                                      registry: DroneRegistry) -> None:
    cfg = config.with_overrides(breaker__failures=1, breaker__backoff_factor=3, breaker__ground_seconds=60)
    queue = Queue(redis_client, cfg)
    tokens = enroll(registry, "tarn")
    queue.add([JobSpec(f"app-misc/p{i}-1") for i in range(3)])
    spans = []
    for _ in range(2):
        c = queue.claim("tarn", tokens["tarn"])
        assert c is not None
        now = registry.server_time()
        spans.append(queue.fail(c.cpv, "tarn", tokens["tarn"], c.lease, "drone", "x")[1] - now)
        registry.release("tarn")
        redis_client.hset(keys.drone("tarn"), "groundings", len(spans))
    assert 55 < spans[0] < 65 and 170 < spans[1] < 190


def test_success_resets_failure_count(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    queue.add([JobSpec(f"app-misc/p{i}-1") for i in range(6)])
    for i in range(6):
        c = queue.claim("izar", tokens["izar"])
        assert c is not None
        if i == 3:
            queue.complete(c.cpv, "izar", tokens["izar"], c.lease, 1)
        else:
            queue.fail(c.cpv, "izar", tokens["izar"], c.lease, "drone", "x")
    assert registry.list()[0].failures == 2


def test_release_does_not_count_an_attempt(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    queue.add([JobSpec("app-misc/a-1")])
    c = queue.claim("izar", tokens["izar"])
    assert c is not None
    assert queue.release(c.cpv, "izar", tokens["izar"], c.lease, "shutdown") == "ok"
    job = queue.get(c.cpv)
    assert (job.state, job.attempts, job.drone) == ("needed", 0, None)


def test_reclaim_spares_a_drone_that_heartbeats(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    queue.add([JobSpec("app-misc/a-1")])
    assert queue.claim("izar", tokens["izar"]) is not None
    assert queue.reclaim("izar", 10.0, "offline") == []
    assert queue.get("app-misc/a-1").state == "delegated"


def test_drone_back_from_blip_keeps_unclaimed_job(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    queue.add([JobSpec("app-misc/a-1")])
    c = queue.claim("izar", tokens["izar"])
    assert c is not None
    queue.reclaim("izar", None, "offline")
    reply = registry.heartbeat("izar", tokens["izar"], {"status": "building"}, c.cpv, c.lease)
    assert reply.owns_current
    assert queue.complete(c.cpv, "izar", tokens["izar"], c.lease, 1.0) == "ok"


def test_critical_path_goes_first(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    chain = [f"dev-lang/chain{i}-1" for i in range(3)]
    specs = [JobSpec(chain[0], estimate=100)] + [
        JobSpec(chain[i], build=[chain[i - 1]], estimate=100) for i in (1, 2)]
    specs += [JobSpec(f"app-misc/short{i}-1", estimate=150) for i in range(5)]
    queue.add(specs)
    first = queue.claim("izar", tokens["izar"])
    assert first is not None and first.cpv == chain[0]  # 300 s of chain beats 150 s jobs


def test_fifo_policy_goes_in_order(redis_client: redis.Redis, config: Config, registry: DroneRegistry) -> None:
    queue = Queue(redis_client, config.with_overrides(queue__policy="fifo"))
    tokens = enroll(registry, "izar")
    queue.add([JobSpec("app-misc/z-1", estimate=1), JobSpec("app-misc/a-1", estimate=999)])
    first = queue.claim("izar", tokens["izar"])
    assert first is not None and first.cpv == "app-misc/z-1"


def test_cycle_is_broken_not_dropped(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    report = queue.add([JobSpec("sys-libs/glibc-2.40", build=["sys-devel/gcc-14"]),
                        JobSpec("sys-devel/gcc-14", build=["sys-libs/glibc-2.40"])])
    assert len(report.broken) == 1 and len(report.added) == 2
    built = []
    while (c := queue.claim("izar", tokens["izar"])) is not None:
        queue.complete(c.cpv, "izar", tokens["izar"], c.lease, 1)
        built.append(c.cpv)
    assert sorted(built) == ["sys-devel/gcc-14", "sys-libs/glibc-2.40"]


def test_invalid_atoms_are_refused_and_nothing_is_added(queue: Queue) -> None:
    with pytest.raises(InvalidAtom):
        queue.add([JobSpec("app-misc/ok-1"), JobSpec("app-misc/x-1; rm -rf /")])
    assert queue.counts()["needed"] == 0


def test_retry_needs_failed_or_blocked(queue: Queue) -> None:
    queue.add([JobSpec("app-misc/a-1")])
    with pytest.raises(SwarmError, match="is needed"):
        queue.retry("app-misc/a-1")


def test_add_is_idempotent(queue: Queue) -> None:
    assert queue.add([JobSpec("app-misc/a-1")]).added == ["app-misc/a-1"]
    assert queue.add([JobSpec("app-misc/a-1")]).existing == ["app-misc/a-1"]
    assert queue.counts()["needed"] == 1


def test_events_record_every_change(queue: Queue, registry: DroneRegistry) -> None:
    from swarmctl.events import Events

    tokens = enroll(registry, "izar")
    queue.add([JobSpec("app-misc/a-1")])
    c = queue.claim("izar", tokens["izar"])
    assert c is not None
    queue.complete(c.cpv, "izar", tokens["izar"], c.lease, 2)
    kinds = [(e.kind, e.job, e.drone) for e in Events(queue.redis).tail(10) if e.job]
    assert kinds == [("added", c.cpv, ""), ("claimed", c.cpv, "izar"), ("built", c.cpv, "izar")]


def test_a_stale_binary_is_built_again_after_what_it_is_built_against(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    lib, app, user = "dev-libs/libgreet-1", "app-misc/greeter-1", "app-misc/user-1"
    queue.add([JobSpec(lib), JobSpec(app, build=[lib]), JobSpec(user, build=[app])])
    while (claim := queue.claim("izar", tokens["izar"])) is not None:
        queue.complete(claim.cpv, "izar", tokens["izar"], claim.lease, 1.0)
    assert {j.state for j in queue.jobs()} == {"built"}
    new_lib = "dev-libs/libgreet-1-r1"
    report = queue.add([JobSpec(new_lib, reason="not on the binhost")])
    assert report.added == [new_lib] and queue.get(new_lib).reason == "not on the binhost"
    again = queue.rebuild([JobSpec(app, build=[new_lib], reason="dev-libs/libgreet sub-slot 0/1 -> 0/2"),
                           JobSpec("app-misc/never-queued-1", reason="x")])
    assert again == [app]
    job = queue.get(app)
    assert (job.state, job.attempts, job.after, job.reason) == ("needed", 0, [new_lib],
                                                                 "dev-libs/libgreet sub-slot 0/1 -> 0/2")
    assert queue.rebuild([JobSpec(app, reason="twice")]) == []  # already open: left as it is
    order = []
    while (claim := queue.claim("izar", tokens["izar"])) is not None:
        order.append(claim.cpv)
        queue.complete(claim.cpv, "izar", tokens["izar"], claim.lease, 1.0)
    assert order == [new_lib, app]  # the rebuild waited for the new sub-slot; its dependent stays built
    assert queue.get(user).state == "built" and queue.get(user).pending == 0
    kinds = [(e.kind, e.job, e.reason) for e in queue.events.since() if e.kind in ("added", "rebuild")]
    assert ("rebuild", app, "dev-libs/libgreet sub-slot 0/1 -> 0/2") in kinds
    assert ("added", new_lib, "not on the binhost") in kinds


def test_a_rebuild_holds_back_open_jobs_gated_on_it(queue: Queue, registry: DroneRegistry) -> None:
    tokens = enroll(registry, "izar")
    queue.add([JobSpec("dev-libs/base-1")])
    claim = queue.claim("izar", tokens["izar"])
    assert claim is not None
    queue.complete(claim.cpv, "izar", tokens["izar"], claim.lease, 1.0)
    queue.add([JobSpec("app-misc/top-1", build=["dev-libs/base-1"])])
    assert queue.get("app-misc/top-1").ready
    assert queue.rebuild([JobSpec("dev-libs/base-1", reason="USE changed: +loud")]) == ["dev-libs/base-1"]
    assert not queue.get("app-misc/top-1").ready  # waits for the rebuilt base again
    claim = queue.claim("izar", tokens["izar"])
    assert claim is not None and claim.cpv == "dev-libs/base-1"
    queue.complete(claim.cpv, "izar", tokens["izar"], claim.lease, 1.0)
    assert queue.get("app-misc/top-1").ready
