"""The lost claim reply: a real TCP proxy drops Redis's reply to a real claim.

The claim runs in Redis, the drone never hears of it. A retry of the same request must get that
job back (idempotent claims), and a job a live drone provably does not hold goes back to the
queue (the orchestrator's reconciliation), never staying delegated to an idle drone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.events import Events
from swarmctl.graph import JobSpec
from swarmctl.orchestrator import Orchestrator
from swarmctl.queue import Queue, new_session
from swarmctl.registry import DroneRegistry
from swarmctl.scripts import CLAIM
from tests.chaos_engine.harness import CLAIM_SHA
from tests.chaos_engine.proxy import ReplyDropper
from tests.helpers import Spawner, wait_until
from tests.test_drone_process import FAST, start_drone

DROP = 1.0  # seconds replies are dropped; the proxied clients time out after TIMEOUT
TIMEOUT = 1.5


@pytest.fixture
def proxy(redis_url: str, redis_client: redis.Redis) -> Iterator[ReplyDropper]:
    parts = urlsplit(redis_url)
    redis_client.script_load(CLAIM)  # a running swarm has it loaded: the claim's EVALSHA runs at once
    with ReplyDropper((parts.hostname or "127.0.0.1", parts.port or 6379)) as dropper:
        yield dropper


def _proxied_url(redis_url: str, proxy: ReplyDropper) -> str:
    host, port = proxy.address
    return redis_url.replace(urlsplit(redis_url).netloc, f"{host}:{port}")


def _proxied_queue(redis_url: str, proxy: ReplyDropper, config: Config, retries: int) -> Queue:
    client = redis.Redis.from_url(_proxied_url(redis_url, proxy), decode_responses=True, socket_timeout=TIMEOUT,
                                  retry=Retry(NoBackoff(), retries))
    return Queue(client, config)


def _delegated(client: redis.Redis) -> set[str]:
    return set(client.smembers(keys.state_set("delegated")))


def test_a_retried_claim_gets_the_job_its_lost_reply_held(proxy: ReplyDropper, redis_url: str,
                                                          redis_client: redis.Redis, queue: Queue,
                                                          registry: DroneRegistry, config: Config) -> None:
    queue.add([JobSpec(f"app-misc/p{i}-1", estimate=1) for i in range(3)])
    token = registry.enroll("izar")
    drone_queue = _proxied_queue(redis_url, proxy, config, retries=0)
    session = new_session()
    proxy.arm(CLAIM_SHA, DROP)
    with pytest.raises(redis.TimeoutError):
        drone_queue.claim("izar", token, session, 1)
    assert proxy.dropped_chunks >= 1
    ran = _delegated(redis_client)
    assert len(ran) == 1  # the claim ran in Redis although its reply was lost
    time.sleep(DROP)
    claim = drone_queue.claim("izar", token, session, 1)  # the retry of the same request
    assert claim is not None and {claim.cpv} == ran
    assert claim.lease == queue.owner_of(claim.cpv)[1]
    assert _delegated(redis_client) == ran  # no second job taken
    replayed = [e for e in Events(redis_client).since() if e.kind == "claim_replayed"]
    assert [e.job for e in replayed] == [claim.cpv]
    nxt = drone_queue.claim("izar", token, session, 2)  # the next request is a new claim
    assert nxt is not None and nxt.cpv != claim.cpv


def test_redis_py_own_retry_after_a_lost_reply_takes_one_job_not_two(
        proxy: ReplyDropper, redis_url: str, redis_client: redis.Redis, queue: Queue, registry: DroneRegistry,
        config: Config) -> None:
    """The issue's wedge: the client library re-sent the claim after the timeout and a second job
    was taken, the first left delegated to a drone that never knew of it."""
    queue.add([JobSpec(f"app-misc/p{i}-1", estimate=1) for i in range(3)])
    token = registry.enroll("izar")
    drone_queue = _proxied_queue(redis_url, proxy, config, retries=3)
    proxy.arm(CLAIM_SHA, DROP)
    claim = drone_queue.claim("izar", token, new_session(), 1)
    assert proxy.dropped_chunks >= 1
    assert claim is not None
    assert _delegated(redis_client) == {claim.cpv}


def test_a_real_drone_builds_exactly_the_job_whose_claim_reply_was_lost(
        proxy: ReplyDropper, redis_url: str, redis_client: redis.Redis, queue: Queue, registry: DroneRegistry,
        spawn: Spawner) -> None:
    spawn(["orchestrator", "run"], env=FAST, name="orch")
    proxy.arm(CLAIM_SHA, DROP)
    start_drone(spawn, registry, "izar", "true", SWARM_REDIS_URL=_proxied_url(redis_url, proxy),
                SWARM_REDIS_SOCKET_TIMEOUT=str(TIMEOUT))
    time.sleep(1.0)  # the drone is up and idle, polling an empty queue
    queue.add([JobSpec("app-misc/only-1", estimate=1)])
    assert proxy.wait_triggered(15) is not None
    assert wait_until(lambda: queue.get("app-misc/only-1").state == "built", 30, 0.1)
    assert proxy.dropped_chunks >= 1
    events = Events(redis_client).since()
    kinds = [(e.kind, e.drone) for e in events if e.job == "app-misc/only-1"]
    assert kinds.count(("claimed", "izar")) == 1
    assert ("built", "izar") in kinds
    assert not [e for e in events if e.kind == "reclaimed"]  # the retry got it; nothing to take back


def _claim_lost(queue: Queue, name: str, token: str, session: str, seq: int) -> str:
    claim = queue.claim(name, token, session, seq)
    assert claim is not None
    return claim.cpv


def test_the_orchestrator_gives_back_a_job_a_live_drone_proves_it_does_not_hold(
        redis_client: redis.Redis, queue: Queue, registry: DroneRegistry, config: Config) -> None:
    queue.add([JobSpec(f"app-misc/p{i}-1", estimate=1) for i in range(3)])
    token = registry.enroll("izar")
    orchestrator = Orchestrator(redis_client, config)
    session = new_session()
    lost = _claim_lost(queue, "izar", token, session, 1)  # its reply never reached the drone
    # A heartbeat taken while the claim was in flight (settled 0) proves nothing: kept.
    registry.heartbeat("izar", token, {"status": "idle"}, held=[], session=session, settled=0)
    assert orchestrator.sweep().reconciled == {}
    assert queue.get(lost).state == "delegated"
    # Once the drone has handled request 1 and does not list the job, it goes back.
    registry.heartbeat("izar", token, {"status": "idle"}, held=[], session=session, settled=1)
    assert orchestrator.sweep().reconciled == {"izar": [lost]}
    job = queue.get(lost)
    assert job.state == "needed" and job.drone is None
    event = [e for e in Events(redis_client).since() if e.kind == "reclaimed"][-1]
    assert event.job == lost and event.drone == "izar" and "does not hold it" in event.reason


def test_a_held_job_and_a_claim_in_flight_are_never_taken_back(
        redis_client: redis.Redis, queue: Queue, registry: DroneRegistry, config: Config) -> None:
    queue.add([JobSpec(f"app-misc/p{i}-1", estimate=1) for i in range(3)])
    token = registry.enroll("izar")
    orchestrator = Orchestrator(redis_client, config)
    session = new_session()
    building = queue.claim("izar", token, session, 1)
    assert building is not None
    in_flight = _claim_lost(queue, "izar", token, session, 2)
    registry.heartbeat("izar", token, {"status": "building"}, held=[(building.cpv, building.lease)],
                       session=session, settled=1)
    assert orchestrator.sweep().reconciled == {}
    assert {queue.get(building.cpv).state, queue.get(in_flight).state} == {"delegated"}


def test_a_previous_process_claim_is_given_back_once_the_new_process_heartbeats(
        redis_client: redis.Redis, queue: Queue, registry: DroneRegistry, config: Config) -> None:
    queue.add([JobSpec(f"app-misc/p{i}-1", estimate=1) for i in range(2)])
    token = registry.enroll("izar")
    orchestrator = Orchestrator(redis_client, config)
    old, new = f"{int(time.time() * 1000) - 5000}-aaaa", new_session()
    orphan = _claim_lost(queue, "izar", token, old, 7)  # sent by a process killed mid-claim
    registry.heartbeat("izar", token, {"status": "idle"}, held=[], session=new, settled=0)
    # A late heartbeat of the dead process does not hide the new one's report.
    registry.heartbeat("izar", token, {"status": "idle"}, held=[(orphan, "x")], session=old, settled=6)
    assert redis_client.hget(keys.drone("izar"), "held_session") == new
    assert orchestrator.sweep().reconciled == {"izar": [orphan]}
