"""The event stream and every time written to Redis: Redis's clock, and the configured length."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.connection import server_time
from swarmctl.events import Events
from swarmctl.facts import FactStore
from swarmctl.graph import JobSpec
from swarmctl.healing import Healer
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry

#: What this host's clock says during the skew tests: a day behind Redis.
SKEW = -86400.0


@pytest.fixture
def skewed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's wall clock a day off, as on a host whose NTP died; Redis's clock is untouched."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + SKEW)


def _near_redis(client: redis.Redis, stamp_seconds: float) -> bool:
    return abs(server_time(client) - stamp_seconds) < 5.0


def test_python_events_carry_redis_time(redis_client: redis.Redis, config: Config, skewed_host: None) -> None:
    Events(redis_client, config.queue.events_max).emit("restarted", drone="tarn", reason="level 2")
    event = Events(redis_client).tail(1)[0]
    assert (event.kind, event.drone, event.reason) == ("restarted", "tarn", "level 2")
    assert _near_redis(redis_client, event.ts)


def test_cycle_events_enrollment_and_facts_carry_redis_time(redis_client: redis.Redis, config: Config,
                                                           skewed_host: None) -> None:
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    report = queue.add([JobSpec("app-misc/a-1", build=["app-misc/b-1"]),
                        JobSpec("app-misc/b-1", build=["app-misc/a-1"])])
    assert report.broken
    cycles = [e for e in Events(redis_client).since() if e.kind == "cycle"]
    assert cycles and all(_near_redis(redis_client, e.ts) for e in cycles)

    registry.enroll("tarn")
    assert _near_redis(redis_client, int(redis_client.hget(keys.drone("tarn"), "enrolled_at")) / 1000.0)

    facts = FactStore(redis_client)
    facts.set_sync_time()
    assert _near_redis(redis_client, facts.read().sync_time)
    assert _near_redis(redis_client, facts.record_nightly("STARTED").time)
    assert _near_redis(redis_client, facts.record_cron_verify(True).time)


def test_healing_records_carry_redis_time(redis_client: redis.Redis, config: Config, tmp_path: Path,
                                         skewed_host: None) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    cfg = config.with_overrides(healing__inventory=str(inventory))
    DroneRegistry(redis_client, cfg).enroll("tarn")

    def executor(*_args: object, **_kwargs: object) -> object:
        return type("Result", (), {"ok": True, "summary": "restarted"})()

    Healer(redis_client, cfg, executor).act("tarn", "restart", operator=True)
    record = json.loads(redis_client.hget(keys.HEALING, "tarn"))
    assert _near_redis(redis_client, record["last_action"])


def test_every_writer_keeps_the_stream_near_its_configured_length(redis_client: redis.Redis,
                                                                  config: Config) -> None:
    """The registry's operator events and heartbeats, the queue's cycle events and emit() all trim.

    Trimming is approximate (whole stream nodes of 100 entries), so the bound is loose; without
    trimming the stream would hold every one of the 1,200 events.
    """
    cfg = config.with_overrides(queue__events_max=10)
    queue, registry = Queue(redis_client, cfg), DroneRegistry(redis_client, cfg)
    for i in range(200):
        registry.enroll(f"d{i}")  # "enrolled"
        registry.release(f"d{i}")  # "released"
    for i in range(200):
        queue.add([JobSpec(f"app-misc/a{i}-1", build=[f"app-misc/b{i}-1"]),
                   JobSpec(f"app-misc/b{i}-1", build=[f"app-misc/a{i}-1"])])  # "added" x2, "cycle"
    for i in range(200):
        Events(redis_client, cfg.queue.events_max).emit("note", reason=str(i))
    assert redis_client.xlen(keys.EVENTS) < 250


def test_a_reader_cannot_append_without_the_setting(redis_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="events_max"):
        Events(redis_client).emit("note")
    assert redis_client.xlen(keys.EVENTS) == 0
