"""The healing policy's decisions (the executor is recorded here; real playbooks run in tests/ansible)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.events import Events
from swarmctl.healing import Healer
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry


@dataclass
class Result:
    ok: bool
    summary: str


class RecordingExecutor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.ok = True

    def __call__(self, playbook: str, inventory: Path, limit: str, extra: dict[str, Any], data_root: Path,
                 **_: Any) -> Result:
        self.calls.append((playbook, limit, dict(extra)))
        return Result(self.ok, f"{playbook} [{limit}]: {'successful' if self.ok else 'failed'}")


@pytest.fixture
def setup(redis_client: redis.Redis, config: Config, tmp_path: Path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    cfg = config.with_overrides(healing__inventory=str(inventory), healing__cooldown_seconds=0,
                                healing__restarts_before_reboot=2)
    registry = DroneRegistry(redis_client, cfg)
    token = registry.enroll("tarn", machine_id="abc123abc123abc123abc123abc123ab")
    registry.heartbeat("tarn", token, {"status": "idle"})
    executor = RecordingExecutor()
    return cfg, registry, executor, Queue(redis_client, cfg)


def consider(healer: Healer, registry: DroneRegistry) -> None:
    healer.consider(registry.list())
    healer.wait(10)


def test_grounded_drone_is_restarted_then_reboot_needs_permission(setup, redis_client: redis.Redis) -> None:
    cfg, registry, executor, queue = setup
    healer = Healer(redis_client, cfg, executor)
    registry.ground("tarn", 300, queue)
    consider(healer, registry)
    assert executor.calls == [("drone-restart.yml", "tarn", {"target": "tarn"})]
    assert registry.list()[0].status != "grounded"  # released to prove itself after the restart
    for _ in range(2):  # it keeps failing: grounded again after each restart
        registry.ground("tarn", 300, queue)
        consider(healer, registry)
    assert [c[0] for c in executor.calls] == ["drone-restart.yml"] * 2
    kinds = [e.kind for e in Events(redis_client).since()]
    assert "heal-refused" in kinds and "rebooting" not in kinds
    refusal = [e for e in Events(redis_client).since() if e.kind == "heal-refused"][-1]
    assert "swarmctl heal tarn --reboot --yes" in refusal.reason


def test_reboot_with_permission_passes_the_recorded_identity(setup, redis_client: redis.Redis) -> None:
    cfg, registry, executor, queue = setup
    healer = Healer(redis_client, cfg.with_overrides(healing__allow_reboot=True), executor)
    for _ in range(3):
        registry.ground("tarn", 300, queue)
        consider(healer, registry)
    assert executor.calls[-1] == ("drone-reboot.yml", "tarn",
                                  {"target": "tarn", "expected_machine_id": "abc123abc123abc123abc123abc123ab"})
    assert healer.record("tarn").reboots == 1


def test_cooldown_prevents_restart_storms(setup, redis_client: redis.Redis) -> None:
    cfg, registry, executor, queue = setup
    healer = Healer(redis_client, cfg.with_overrides(healing__cooldown_seconds=600), executor)
    for _ in range(5):
        registry.ground("tarn", 300, queue)
        consider(healer, registry)
    assert len(executor.calls) == 1


def test_unidentified_host_is_never_rebooted(setup, redis_client: redis.Redis) -> None:
    cfg, _registry, executor, _queue = setup
    redis_client.hdel(keys.drone("tarn"), "machine_id")
    outcome = Healer(redis_client, cfg, executor).act("tarn", "reboot", operator=True)
    assert not outcome.ok and "no machine id" in outcome.summary and executor.calls == []


def test_recovered_drone_starts_over(setup, redis_client: redis.Redis) -> None:
    cfg, registry, executor, queue = setup
    healer = Healer(redis_client, cfg, executor)
    registry.ground("tarn", 300, queue)
    consider(healer, registry)
    assert healer.record("tarn").restarts == 1 and [c[0] for c in executor.calls] == ["drone-restart.yml"]
    redis_client.hincrby(keys.drone("tarn"), "built", 1)  # it built something since
    consider(healer, registry)
    assert healer.record("tarn").restarts == 0


def test_never_seen_or_healthy_drones_are_left_alone(setup, redis_client: redis.Redis) -> None:
    cfg, registry, executor, _queue = setup
    registry.enroll("spare")  # enrolled, never ran: nothing to restart
    consider(Healer(redis_client, cfg, executor), registry)
    assert executor.calls == []
