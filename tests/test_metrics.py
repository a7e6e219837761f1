"""Prometheus metrics scraped over HTTP and parsed with prometheus-client's parser; structured logs."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from swarmctl import keys, metrics
from swarmctl.config import Config, load_config
from swarmctl.events import Events
from swarmctl.facts import FactStore
from swarmctl.graph import JobSpec
from swarmctl.logging_setup import JsonFormatter, setup_logging
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def served(redis_client: redis.Redis, config: Config) -> Iterator[str]:
    server = metrics.serve_metrics(redis_client, config, "127.0.0.1", free_port())
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        return parse(reply.read().decode())


def test_empty_swarm(served: str) -> None:
    samples = scrape(served)
    assert samples[("swarm_up", ())] == 1
    assert samples[("swarm_queue_jobs", (("state", "needed"),))] == 0
    assert samples[("swarm_drones", (("status", "building"),))] == 0
    assert samples[("swarm_builds_total", ())] == 0
    assert samples[("swarm_build_duration_seconds_count", ())] == 0
    assert samples[("swarm_orchestrator_leader", ())] == 0


def test_busy_swarm(redis_client: redis.Redis, config: Config, served: str) -> None:
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    queue.add([JobSpec(f"app-misc/pkg{i}-1", estimate=60) for i in range(5)])
    izar, tarn = registry.enroll("drone-Izar"), registry.enroll("drone-Tarn")
    for seconds in (42.0, 700.0):
        claim = queue.claim("drone-Izar", izar)
        assert claim is not None
        assert queue.complete(claim.cpv, "drone-Izar", izar, claim.lease, seconds) == "ok"
    claim = queue.claim("drone-Tarn", tarn)
    assert claim is not None
    assert queue.fail(claim.cpv, "drone-Tarn", tarn, claim.lease, "drone", "out of disk")[0] == "requeued"
    claim = queue.claim("drone-Tarn", tarn)
    assert claim is not None
    registry.heartbeat("drone-Tarn", tarn, {"status": "building", "task": claim.cpv, "cpu": 91.5, "mem": 40},
                       claim.cpv, claim.lease)
    registry.heartbeat("drone-Izar", izar, {"status": "idle", "cpu": 1.0, "mem": 5})
    taken = queue.reclaim("drone-Tarn", None, "test")
    assert taken == [claim.cpv]
    registry.ground("drone-Tarn", 60, queue)
    events = Events(redis_client, config.queue.events_max)
    events.emit("restarted", drone="drone-Tarn", reason="level 2")
    events.emit("heal-refused", drone="drone-Tarn", reason="protected host")
    metrics.record_upload_rejection(redis_client, "sha256-mismatch")
    metrics.record_upload_rejection(redis_client, "sha256-mismatch")
    metrics.record_upload_rejection(redis_client, "not-owner")
    FactStore(redis_client).set_sync_time(time.time() - 100)
    FactStore(redis_client).set_binhost(90, 100)
    FactStore(redis_client).record_nightly("FINISHED", 1234.0)
    redis_client.set(keys.LEADER, "orch-1", px=10_000)

    s = scrape(served)
    assert s[("swarm_queue_jobs", (("state", "built"),))] == 2
    assert s[("swarm_queue_jobs", (("state", "needed"),))] == 3
    assert s[("swarm_queue_jobs", (("state", "ready"),))] == 3
    assert s[("swarm_drones", (("status", "idle"),))] == 1
    assert s[("swarm_drones", (("status", "grounded"),))] == 1
    assert s[("swarm_drone_builds_total", (("drone", "drone-Izar"),))] == 2
    assert s[("swarm_drone_cpu_percent", (("drone", "drone-Tarn"),))] == 91.5
    assert s[("swarm_drone_failures_total", (("drone", "drone-Tarn"), ("outcome", "requeued")))] == 1
    assert s[("swarm_builds_total", ())] == 2
    assert s[("swarm_build_failures_total", ())] == 1
    assert s[("swarm_reclaims_total", ())] == 1  # taken back by hand; the grounding found nothing left
    assert s[("swarm_groundings_total", ())] == 0  # operator groundings are not the breaker's
    assert s[("swarm_heal_actions_total", (("action", "restart"), ("drone", "drone-Tarn")))] == 1
    assert s[("swarm_heal_actions_total", (("action", "refused"), ("drone", "drone-Tarn")))] == 1
    assert s[("swarm_upload_rejections_total", (("reason", "sha256-mismatch"),))] == 2
    assert s[("swarm_upload_rejections_total", (("reason", "not-owner"),))] == 1
    assert s[("swarm_build_duration_seconds_count", ())] == 2
    assert s[("swarm_build_duration_seconds_sum", ())] == 742
    assert s[("swarm_build_duration_seconds_bucket", (("le", "60.0"),))] == 1
    assert s[("swarm_build_duration_seconds_bucket", (("le", "1200.0"),))] == 2
    assert s[("swarm_build_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    assert s[("swarm_orchestrator_leader", ())] == 1
    assert 99 <= s[("swarm_sync_age_seconds", ())] < 160
    assert s[("swarm_binhost_packages", (("kind", "available"),))] == 90
    assert s[("swarm_nightly_last_timestamp_seconds", (("event", "FINISHED"),))] == 1234
    # event counters only grow: a second scrape sees nothing new
    again = scrape(served)
    assert again[("swarm_build_duration_seconds_count", ())] == 2
    assert again[("swarm_drone_failures_total", (("drone", "drone-Tarn"), ("outcome", "requeued")))] == 1


def test_event_counters_start_with_the_exporter(redis_client: redis.Redis, config: Config) -> None:
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    queue.add([JobSpec("app-misc/a-1"), JobSpec("app-misc/b-1")])
    token = registry.enroll("d")
    claim = queue.claim("d", token)
    assert claim is not None
    queue.complete(claim.cpv, "d", token, claim.lease, 5.0)
    registry_ = metrics.make_registry(redis_client, config)  # built after the first build
    claim = queue.claim("d", token)
    assert claim is not None
    queue.complete(claim.cpv, "d", token, claim.lease, 7.0)
    s = parse(generate_latest(registry_).decode())
    assert s[("swarm_build_duration_seconds_count", ())] == 1 and s[("swarm_build_duration_seconds_sum", ())] == 7
    assert s[("swarm_builds_total", ())] == 2  # the Redis total covers all time


def test_redis_down_answers_up_zero(config: Config) -> None:
    client = redis.Redis(port=free_port(), socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True,
                         retry=Retry(NoBackoff(), 0))
    s = parse(generate_latest(metrics.make_registry(client, config)).decode())
    assert s == {("swarm_up", ()): 0}


def test_tally_pages_through_many_events(redis_client: redis.Redis) -> None:
    tally = metrics.EventTally(redis_client)
    with redis_client.pipeline(transaction=False) as pipe:
        for i in range(2500):
            pipe.xadd(keys.EVENTS, {"ts": 0, "kind": "built", "job": f"a/b-{i}", "drone": "d", "reason": "10"})
        pipe.execute()
    assert tally.update() == 2500
    assert tally.duration_count == 2500 and tally.update() == 0


# -- logs -----------------------------------------------------------------------------------------

@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_json_lines(tmp_path: Path, restore_logging: None) -> None:
    import io

    stream = io.StringIO()
    setup_logging(verbosity=1, json_lines=True, stream=stream)
    log = logging.getLogger("swarmctl.test")
    log.info("reclaimed %d job(s) from %s", 3, "drone-Tarn", extra={"drone": "drone-Tarn", "jobs": 3})
    log.debug("hidden at -v")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("sweep failed")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(records) == 2
    first = records[0]
    assert first["msg"] == "reclaimed 3 job(s) from drone-Tarn" and first["level"] == "info"
    assert first["logger"] == "swarmctl.test" and first["drone"] == "drone-Tarn" and first["jobs"] == 3
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert "RuntimeError: boom" in records[1]["exc"]


def test_rotation_and_env(tmp_path: Path, restore_logging: None) -> None:
    import io

    path = tmp_path / "logs" / "orchestrator.log"
    env = {"SWARM_LOG_JSON": "1", "SWARM_LOG_FILE": str(path), "SWARM_LOG_MAX_BYTES": "2000",
           "SWARM_LOG_BACKUPS": "2"}
    log = load_config(environ=env).log
    for _ in range(2):  # again: handlers replaced, not doubled
        setup_logging(verbosity=1, json_lines=log.json, log_file=log.file, max_bytes=log.max_bytes,
                      backups=log.backups, stream=io.StringIO())
    assert sum(1 for h in logging.getLogger().handlers if getattr(h, "_swarmctl_handler", False)) == 2
    log = logging.getLogger("swarmctl.test")
    for i in range(200):
        log.warning("line %d with some padding to fill the file quickly", i)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["orchestrator.log", "orchestrator.log.1", "orchestrator.log.2"]
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())
    last = path.read_text().splitlines()[-1]
    assert json.loads(last)["msg"].startswith("line 199")


def test_formatter_is_plain_json() -> None:
    record = logging.LogRecord("swarmctl.x", logging.WARNING, __file__, 1, "odd \"quote\" %s", ("é",), None)
    data = json.loads(JsonFormatter().format(record))
    assert data["msg"] == 'odd "quote" é' and data["level"] == "warning"
