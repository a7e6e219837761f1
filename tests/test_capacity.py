"""Drone capacity: several builds at once per drone (real drone processes, real Redis), and claims
that respect what a job needs (memory, disk) against what a drone has free."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest
import redis
from prometheus_client import generate_latest

from swarmctl import keys, metrics
from swarmctl.capacity import load_constraints
from swarmctl.config import Config
from swarmctl.events import Events
from swarmctl.exceptions import ConfigError
from swarmctl.graph import JobSpec
from swarmctl.history import History
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from swarmctl.status import JSON_SCHEMA
from tests.helpers import Spawner, run_cli, wait_for, wait_until
from tests.test_drone_process import FAST


def start_drone(spawn: Spawner, registry: DroneRegistry, name: str, command: str, slots: int, **env: str):
    token = registry.enroll(name)
    proc = spawn(["drone", "run", "--name", name, "--command", command, "--slots", str(slots)],
                 env={**FAST, "SWARM_DRONE_TOKEN": token, **env}, name=name)
    return proc, token


def tasks_of(registry: DroneRegistry, name: str) -> list[str]:
    return [t["cpv"] for d in registry.list() if d.name == name for t in d.tasks]


def built_events(redis_client: redis.Redis) -> Counter[str]:
    return Counter(e.job for e in Events(redis_client, 100000).since() if e.kind == "built")


def test_slots_run_builds_at_once_each_built_once(spawn: Spawner, queue: Queue, registry: DroneRegistry,
                                                  redis_client: redis.Redis, config: Config,
                                                  swarm_env: dict[str, str], tmp_path: Path) -> None:
    jobs = [f"app-misc/p{i}-1" for i in range(6)]
    queue.add([JobSpec(c, estimate=10) for c in jobs])
    start_drone(spawn, registry, "izar", "sh -c 'echo MAKEOPTS=$MAKEOPTS; sleep 3'", 3,
                SWARM_DRONE_STATE_DIR=str(tmp_path / "izar"))
    wait_for(lambda: len(tasks_of(registry, "izar")) == 3, 20, "three builds at once on a three-slot drone")
    listed = json.loads(run_cli(["drones", "--json"], swarm_env).stdout)
    (izar,) = listed
    assert izar["status"] == "building" and izar["slots"] == 3
    assert {t["cpv"] for t in izar["tasks"]} <= set(jobs) and len(izar["tasks"]) >= 2
    scraped = generate_latest(metrics.make_registry(redis_client, config)).decode()
    assert 'swarm_drone_slots{drone="izar"} 3.0' in scraped
    assert scraped.count('swarm_drone_task{cpv="app-misc/p') >= 2
    assert wait_until(lambda: queue.counts()["built"] == 6, 30)
    assert built_events(redis_client) == Counter(jobs)  # each built exactly once
    assert all(queue.get(c).attempts == 1 and queue.get(c).built_by == "izar" for c in jobs)
    # The cores are pooled: each build may use all, load-capped (drone/slots.py).
    logs = [p.read_text() for p in (tmp_path / "izar" / "logs").glob("*.log")]
    assert len(logs) == 6 and all("MAKEOPTS=-j" in text for text in logs)


def test_first_sigterm_finishes_every_build_second_gives_every_one_back(
        spawn: Spawner, queue: Queue, registry: DroneRegistry) -> None:
    queue.add([JobSpec(f"app-misc/short{i}-2", estimate=10) for i in range(3)])
    drone, _ = start_drone(spawn, registry, "izar", "sleep {pv}", 2)
    assert wait_until(lambda: len(tasks_of(registry, "izar")) == 2, 20)
    drone.send_signal(signal.SIGTERM)
    assert drone.wait(timeout=20) == 0
    assert queue.counts()["built"] == 2 and queue.counts()["needed"] == 1  # both finished, no new claim

    queue.add([JobSpec(f"app-misc/long{i}-60", estimate=10) for i in range(2)])
    drone, _ = start_drone(spawn, registry, "tarn", "sleep {pv}", 3)
    assert wait_until(lambda: len(tasks_of(registry, "tarn")) == 3, 20)
    drone.send_signal(signal.SIGTERM)
    wait_until(lambda: False, 0.3)
    drone.send_signal(signal.SIGTERM)
    drone.wait(timeout=20)
    given_back = queue.jobs(state="needed")
    assert len(given_back) == 3 and all(j.attempts == 0 and j.drone is None for j in given_back)


def test_one_slot_losing_its_lease_leaves_the_other_building(
        spawn: Spawner, queue: Queue, registry: DroneRegistry, redis_client: redis.Redis) -> None:
    queue.add([JobSpec("app-misc/a-30", estimate=10), JobSpec("app-misc/b-4", estimate=10)])
    _, token = start_drone(spawn, registry, "izar", "sleep {pv}", 2)
    assert wait_until(lambda: len(tasks_of(registry, "izar")) == 2, 20)
    owner, lease = queue.owner_of("app-misc/a-30")
    assert owner == "izar" and lease
    # a's lease ends (given back as when reclaimed) and another drone takes it at once (before
    # izar's next heartbeat could take it back as still its own).
    other = registry.enroll("tarn")
    assert queue.release("app-misc/a-30", "izar", token, lease, "test: one slot's lease ends") == "ok"
    taken = queue.claim("tarn", other)
    assert taken is not None and taken.cpv == "app-misc/a-30"
    assert wait_until(lambda: tasks_of(registry, "izar") == ["app-misc/b-4"], 10)  # a abandoned, b goes on
    assert queue.complete(taken.cpv, "tarn", other, taken.lease, 1.0) == "ok"
    assert wait_until(lambda: queue.get("app-misc/b-4").state == "built", 15)
    assert (queue.get("app-misc/a-30").built_by, queue.get("app-misc/b-4").built_by) == ("tarn", "izar")
    assert built_events(redis_client) == Counter(["app-misc/a-30", "app-misc/b-4"])
    assert not [e for e in Events(redis_client, 1000).since() if e.kind == "stale"]


ALLOCATE = "python3 -c 'import time; x = bytearray(60 * 2**20); x[::4096] = b\"x\" * len(x[::4096]); time.sleep({pv})'"


def test_claims_respect_memory_needs_and_unfit_jobs_are_reported(
        spawn: Spawner, queue: Queue, registry: DroneRegistry, redis_client: redis.Redis,
        swarm_env: dict[str, str], tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.yaml"
    constraints.write_text("app-misc/big: {memory_mb: 600}\napp-misc/huge-1: {memory_mb: 100000000}\n")
    env = {**swarm_env, "SWARM_QUEUE_CONSTRAINTS_FILE": str(constraints)}
    run_cli(["queue", "add", "app-misc/big-2", "app-misc/big-3", "app-misc/small-2", "app-misc/huge-1"], env)
    assert queue.get("app-misc/big-2").as_dict() and redis_client.hget(keys.job("app-misc/big-2"), "mem") == "600"
    # A drone offering 1000 MiB: one 600 MiB build at a time, a small one beside it, never the huge one.
    drone, _ = start_drone(spawn, registry, "izar", ALLOCATE, 2, SWARM_DRONE_MEMORY_MB="1000",
                           SWARM_DRONE_MEMORY_MARGIN_MB="0")
    seen: list[list[str]] = []

    def done() -> bool:
        seen.append(tasks_of(registry, "izar"))
        return queue.counts()["built"] == 3

    assert wait_until(done, 40, 0.1)
    assert not [t for t in seen if sum(c.startswith("app-misc/big") for c in t) > 1]  # never two bigs at once
    assert any(len(t) == 2 for t in seen)  # the small one ran beside a big one
    assert queue.get("app-misc/huge-1").state == "needed"
    status = json.loads(run_cli(["status", "--json"], env, check=False).stdout)
    pytest.importorskip("jsonschema").validate(status, JSON_SCHEMA)
    unfit = [a for a in status["attention"] if a["code"] == "unfit"]
    assert unfit and "app-misc/huge-1 needs 100000000 MiB" in unfit[0]["message"]
    # Each build's peak memory is in the history beside its duration, and a later version learns it.
    (record,) = History(redis_client).records("app-misc/small")
    assert record.peak_rss is not None and record.peak_rss >= 60 * 2**20 and record.seconds >= 2
    run_cli(["queue", "add", "app-misc/small-3"], env)
    assert int(redis_client.hget(keys.job("app-misc/small-3"), "mem")) >= 60
    drone.send_signal(signal.SIGTERM)
    assert drone.wait(timeout=20) == 0


@pytest.mark.parametrize("text", ["app-misc/big: 600\n", "app-misc/big: {memory_mb: -1}\n",
                                  "not an atom: {memory_mb: 1}\n", "app-misc/big: {memory: 1}\n", "[1, 2]\n"])
def test_bad_constraints_file_is_one_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "constraints.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"queue\.constraints_file"):
        load_constraints(path)


def test_a_slower_drone_leaves_the_longest_chain_to_a_faster_idle_one(queue: Queue, registry: DroneRegistry) -> None:
    tokens = {name: registry.enroll(name) for name in ("fast", "slow")}
    registry.heartbeat("fast", tokens["fast"], {"status": "idle", "speed": 32})
    queue.add([JobSpec("dev-qt/long-5", estimate=3000), JobSpec("app-misc/short-1", estimate=10),
               JobSpec("app-misc/other-1", estimate=5)])
    first = queue.claim("slow", tokens["slow"], speed=4)
    assert first is not None and first.cpv == "app-misc/short-1"  # the long one waits for the fast drone
    taken = queue.claim("fast", tokens["fast"], speed=32)
    assert taken is not None and taken.cpv == "dev-qt/long-5"
    # Once the fast drone is busy, nobody waits for it.
    queue.add([JobSpec("dev-qt/long2-5", estimate=3000)])
    registry.heartbeat("fast", tokens["fast"], {"status": "building", "speed": 32})
    second = queue.claim("slow", tokens["slow"], speed=4)
    assert second is not None and second.cpv == "dev-qt/long2-5"


def test_a_low_disk_drone_does_not_count_as_one_that_could_take_a_job(queue: Queue, registry: DroneRegistry) -> None:
    tokens = {name: registry.enroll(name) for name in ("izar", "tarn")}
    for name in tokens:
        registry.heartbeat(name, tokens[name], {"status": "idle"})
    queue.add([JobSpec("app-misc/flaky-1", estimate=10)])
    first = queue.claim("izar", tokens["izar"])
    assert first is not None and first.priority == 10.0  # the claim carries its chain (the drone's core shares)
    queue.fail(first.cpv, "izar", tokens["izar"], first.lease, "build", "flaky")
    assert queue.claim("izar", tokens["izar"]) is None  # left for tarn, which could take it
    # tarn is short of disk: it claims nothing, so izar may retry what it failed rather than wait.
    registry.heartbeat("tarn", tokens["tarn"], {"status": "low-disk", "problem": "build dir: 1 GiB free"})
    again = queue.claim("izar", tokens["izar"])
    assert again is not None and again.cpv == first.cpv
