"""Real drone and orchestrator processes: kill, stop, rogue, standby, hung, Redis restart."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import RedisProcess, Spawner, wait_until

FAST = {
    "SWARM_ORCHESTRATOR_OFFLINE_AFTER": "3",
    "SWARM_ORCHESTRATOR_INTERVAL": "0.5",
    "SWARM_ORCHESTRATOR_LEADER_TTL": "2",
    "SWARM_DRONE_HEARTBEAT_INTERVAL": "0.5",
    "SWARM_DRONE_POLL_INTERVAL": "0.2",
}


def start_drone(spawn: Spawner, registry: DroneRegistry, name: str, command: str, **env: str):
    token = registry.enroll(name)
    return spawn(["drone", "run", "--name", name, "--token", token, "--command", command],
                 env={**FAST, **env}, name=name)


def state(queue: Queue, cpv: str) -> str:
    return queue.get(cpv).state


def test_sigkill_mid_build_returns_the_job_within_the_offline_threshold(
        spawn: Spawner, queue: Queue, registry: DroneRegistry) -> None:
    queue.add([JobSpec("app-misc/long-1")])
    drone = start_drone(spawn, registry, "izar", "sleep 60")
    spawn(["orchestrator", "run"], env=FAST, name="orch")
    assert wait_until(lambda: state(queue, "app-misc/long-1") == "delegated", 15)
    drone.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert wait_until(lambda: state(queue, "app-misc/long-1") == "needed", 10, 0.05)
    elapsed = time.monotonic() - killed
    assert elapsed <= 3 + 0.5 + 1.5, f"reclaimed after {elapsed:.1f} s"
    start_drone(spawn, registry, "tarn", "true")
    assert wait_until(lambda: state(queue, "app-misc/long-1") == "built", 15)
    assert queue.get("app-misc/long-1").built_by == "tarn"


def test_sigterm_finishes_the_build_reports_it_and_exits(spawn: Spawner, queue: Queue,
                                                        registry: DroneRegistry) -> None:
    queue.add([JobSpec("app-misc/first-1", estimate=100), JobSpec("app-misc/second-1", estimate=1)])
    drone = start_drone(spawn, registry, "izar", "sleep 2")
    assert wait_until(lambda: state(queue, "app-misc/first-1") == "delegated", 15)
    drone.send_signal(signal.SIGTERM)
    assert drone.wait(timeout=15) == 0
    assert state(queue, "app-misc/first-1") == "built"
    assert state(queue, "app-misc/second-1") == "needed"  # stopped claiming
    assert {d.name: d.status for d in registry.list()}["izar"] == "offline"


def test_second_sigterm_aborts_and_releases_the_job(spawn: Spawner, queue: Queue,
                                                   registry: DroneRegistry) -> None:
    queue.add([JobSpec("app-misc/long-1")])
    drone = start_drone(spawn, registry, "izar", "sleep 60")
    assert wait_until(lambda: state(queue, "app-misc/long-1") == "delegated", 15)
    drone.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    drone.send_signal(signal.SIGTERM)
    drone.wait(timeout=15)
    job = queue.get("app-misc/long-1")
    assert (job.state, job.attempts, job.drone) == ("needed", 0, None)


def test_rogue_drone_is_grounded_and_the_healthy_one_builds_everything(
        spawn: Spawner, queue: Queue, registry: DroneRegistry) -> None:
    cpvs = [f"app-misc/p{i}-1" for i in range(12)]
    queue.add([JobSpec(c) for c in cpvs])
    start_drone(spawn, registry, "tarn", "false")  # fails every build at once
    assert wait_until(lambda: {d.name: d.status for d in registry.list()}.get("tarn") == "grounded", 20)
    failed = [e for e in spawn_events(queue) if e.kind == "requeued" and e.drone == "tarn"]
    assert len(failed) == 5  # grounded on the fifth, not a loop of death
    assert not any(j.drone == "tarn" for j in queue.jobs())
    start_drone(spawn, registry, "izar", "true")
    assert wait_until(lambda: queue.counts()["built"] == len(cpvs), 30)
    assert queue.counts()["blocked"] == 0  # the drone's fault, not the packages'


def spawn_events(queue: Queue):
    from swarmctl.events import Events

    return Events(queue.redis).since()


def test_standby_orchestrator_takes_over(spawn: Spawner, queue: Queue, registry: DroneRegistry,
                                         redis_client: redis.Redis) -> None:
    first = spawn(["orchestrator", "run"], env=FAST, name="orch-a")
    assert wait_until(lambda: redis_client.get(keys.LEADER), 10)
    second = spawn(["orchestrator", "run"], env=FAST, name="orch-b")
    time.sleep(1.5)
    leader = redis_client.get(keys.LEADER)
    leader_proc, standby = (first, second) if leader and f":{first.pid}:" in leader else (second, first)
    assert f":{leader_proc.pid}:" in leader
    leader_proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert wait_until(lambda: f":{standby.pid}:" in (redis_client.get(keys.LEADER) or ""), 10, 0.05)
    assert time.monotonic() - killed < 2 + 0.5 + 1.5
    # The new leader really sweeps: a killed drone's job comes back.
    queue.add([JobSpec("app-misc/long-1")])
    drone = start_drone(spawn, registry, "izar", "sleep 60")
    assert wait_until(lambda: state(queue, "app-misc/long-1") == "delegated", 15)
    drone.send_signal(signal.SIGKILL)
    assert wait_until(lambda: state(queue, "app-misc/long-1") == "needed", 10)


def test_hung_build_is_flagged_then_killed_and_requeued(spawn: Spawner, queue: Queue,
                                                       registry: DroneRegistry) -> None:
    queue.add([JobSpec("app-misc/stuck-1")])
    start_drone(spawn, registry, "izar", "sleep 600",
                SWARM_DRONE_HUNG_IDLE_SECONDS="1", SWARM_DRONE_HUNG_KILL_SECONDS="4")
    spawn(["orchestrator", "run"], env=FAST, name="orch")
    assert wait_until(lambda: any(d.hung for d in registry.list()), 15)
    assert wait_until(lambda: [e for e in spawn_events(queue) if e.kind == "hung" and e.drone == "izar"], 10)
    assert wait_until(lambda: [e for e in spawn_events(queue)
                               if e.kind == "requeued" and e.reason.startswith("hung")], 20)
    assert queue.get("app-misc/stuck-1").attempts >= 1


def test_build_logs_are_rotated(spawn: Spawner, queue: Queue, registry: DroneRegistry, tmp_path: Path) -> None:
    queue.add([JobSpec(f"app-misc/p{i}-1") for i in range(6)])
    drone = start_drone(spawn, registry, "izar", "echo building {cpv}",
                        SWARM_DRONE_LOG_KEEP_JOBS="3", SWARM_DRONE_STATE_DIR=str(tmp_path / "izar"))
    assert wait_until(lambda: queue.counts()["built"] == 6, 30)
    drone.send_signal(signal.SIGTERM)
    drone.wait(timeout=10)
    logs = sorted((tmp_path / "izar" / "logs").glob("*.log"))
    assert len(logs) == 3
    assert "building app-misc/p" in logs[-1].read_text()


class OwnRedis:
    """A Redis of this test's own (so it can be killed) with a queue, a registry and drones on it."""

    def __init__(self, spawn: Spawner, directory: Path, config: Config) -> None:
        self.spawn = spawn
        self.server = RedisProcess(directory, appendonly=True).start()
        client = redis.Redis.from_url(self.server.url, decode_responses=True)
        cfg = config.with_overrides(redis__url=self.server.url)
        self.queue, self.registry = Queue(client, cfg), DroneRegistry(client, cfg)

    def drone(self, name: str, command: str):
        token = self.registry.enroll(name)
        return self.spawn(["drone", "run", "--name", name, "--token", token, "--command", command],
                          env={**FAST, "SWARM_REDIS_URL": self.server.url}, name=name)


@pytest.fixture
def own_redis(spawn: Spawner, tmp_path: Path, config: Config):
    swarm = OwnRedis(spawn, tmp_path / "r", config)
    yield swarm
    swarm.server.stop()


def test_drone_rides_out_a_redis_restart(own_redis: OwnRedis) -> None:
    queue, server = own_redis.queue, own_redis.server
    queue.add([JobSpec("app-misc/before-1")])
    own_redis.drone("izar", "sleep 0.2")
    assert wait_until(lambda: queue.get("app-misc/before-1").state == "built", 15)
    time.sleep(1.2)  # let the AOF reach the disk (appendfsync everysec)
    server.kill()
    time.sleep(2)
    server.start()
    queue.add([JobSpec("app-misc/after-1")])
    assert wait_until(lambda: queue.get("app-misc/after-1").state == "built", 30)


def test_stopping_drone_does_not_hang_when_redis_is_gone(own_redis: OwnRedis) -> None:
    """SIGTERM with Redis down: the drone keeps trying to report; a second SIGTERM makes it exit."""
    queue = own_redis.queue
    queue.add([JobSpec("app-misc/a-1")])
    drone = own_redis.drone("izar", "sleep 1")
    assert wait_until(lambda: queue.get("app-misc/a-1").state == "delegated", 15)
    own_redis.server.kill()
    drone.send_signal(signal.SIGTERM)
    time.sleep(2.5)  # the build finished; its report cannot reach Redis
    assert drone.poll() is None, "it gave up on a finished build's report at the first signal"
    drone.send_signal(signal.SIGTERM)
    assert drone.wait(timeout=10) is not None
