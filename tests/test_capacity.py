"""Drone capacity: several builds at once per drone (real drone processes, real Redis), and claims
that respect what a job needs (memory, disk) against what a drone has free."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import redis
from prometheus_client import generate_latest

from swarmctl import keys, metrics
from swarmctl.capacity import load_constraints, unfit_jobs
from swarmctl.config import Config, load_config
from swarmctl.drone.cpu_shares import core_shares, weights
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


def test_core_shares_give_the_longest_chain_all_but_one_core_per_other_build() -> None:
    assert core_shares([], 16) == []
    assert core_shares([300.0], 16) == [16]
    assert core_shares([50.0, 9000.0, 120.0, 9000.0], 16) == [1, 13, 1, 1]  # the first of equal chains
    assert core_shares([5.0, 6.0, 7.0], 2) == [1, 1, 1]  # more builds than cores: one each
    assert weights(core_shares([1.0, 2.0], 16), "v2") == [100, 1500]
    assert weights([13, 1], "v1") == [13 * 1024, 1024]


def test_unfit_judges_memory_and_disk_on_the_same_drone(
        redis_client: redis.Redis, registry: DroneRegistry, swarm_env: dict[str, str], tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.yaml"
    constraints.write_text("app-misc/wide: {disk_mb: 9000}\napp-misc/both: {memory_mb: 3000, disk_mb: 3000}\n"
                           "app-misc/fits: {memory_mb: 3000, disk_mb: 900}\n")
    queue = Queue(redis_client, load_config(environ={**swarm_env, "SWARM_QUEUE_CONSTRAINTS_FILE": str(constraints)}))
    queue.add([JobSpec(c) for c in ("app-misc/wide-1", "app-misc/both-1", "app-misc/fits-1")])
    # A big-memory drone with little disk, and a big-disk one with little memory.
    for name, mem, disk in (("izar", 4000, 1000), ("tarn", 1000, 4000)):
        registry.heartbeat(name, registry.enroll(name), {"status": "idle", "mem_total": mem, "disk_total": disk})
    found = {u.cpv: u.reason for u in unfit_jobs(redis_client, registry.list())}
    assert found == {
        "app-misc/wide-1": "needs 9000 MiB of build disk; the largest enrolled drone has 4000 MiB",
        "app-misc/both-1": "needs 3000 MiB of memory and 3000 MiB of build disk; no enrolled drone has both "
                           "(the largest: 4000 MiB, 4000 MiB of disk)"}


def _cpu_cgroup_root() -> Path | None:
    """A CPU cgroup directory this test may manage: v2 with the cpu controller, else v1's."""
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.controllers"
    root = v2 if controllers.exists() and "cpu" in controllers.read_text().split() else v2 / "cpu"
    return root if (root / "cgroup.procs").exists() and os.access(root, os.W_OK) else None


def test_cores_shared_by_chain_in_cpu_groups_and_command_builds_record_their_disk(
        spawn: Spawner, queue: Queue, registry: DroneRegistry, redis_client: redis.Redis, tmp_path: Path) -> None:
    root = _cpu_cgroup_root()
    if root is None:
        pytest.skip("needs a writable CPU cgroup (root, cgroup v1 cpu or v2 with the cpu controller)")
    queue.add([JobSpec("app-misc/long-1", estimate=600), JobSpec("app-misc/short-1", estimate=10)])
    command = "sh -c 'head -c 3000000 /dev/zero > blob; sleep 4' {pn}"
    drone, _ = start_drone(spawn, registry, "izar", command, 2, SWARM_DRONE_CPU_CGROUP=str(root),
                           SWARM_DRONE_CORES="8", SWARM_DRONE_STATE_DIR=str(tmp_path / "izar"))
    mine = root / "swarm-izar"
    weight = "cpu.weight" if (root / "cgroup.controllers").exists() else "cpu.shares"
    unit = 100 if weight == "cpu.weight" else 1024

    def shares() -> dict[str, int]:
        """Each running build's package -> its group's weight."""
        found = {}
        for group in mine.glob("build-*"):
            try:
                pids = (group / "cgroup.procs").read_text().split()
                value = int((group / weight).read_text())
                names = {Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2].decode() for pid in pids}
            except (OSError, IndexError, ValueError):
                continue
            found.update({n: value for n in names if n in ("long", "short")})
        return found

    # The longest chain is entitled to 8 - 1 cores, the other build to one.
    wait_for(lambda: shares() == {"long": 7 * unit, "short": unit}, 20, "each build in its CPU group, by chain")
    # Each command build's working directory is its build disk, recorded beside its peak memory.
    assert wait_until(lambda: queue.counts()["built"] == 2, 30)
    (record,) = History(redis_client).records("app-misc/long")
    assert record.disk is not None and record.disk >= 3_000_000 and record.peak_rss
    drone.send_signal(signal.SIGTERM)
    assert drone.wait(timeout=20) == 0
    assert not mine.exists()  # its groups are gone with it
    assert not list((tmp_path / "izar" / "work").iterdir())  # and the working directories
    (izar,) = registry.list()
    assert izar.cores == 8 and izar.disk_total and izar.disk_total > 0
