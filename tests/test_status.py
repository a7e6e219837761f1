"""swarmctl status: the at-a-glance view, its --json schema, and an exit code per attention case."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from rich.console import Console

from swarmctl import keys
from swarmctl.cli.views.status import drift_line, render_status
from swarmctl.config import Config, load_config
from swarmctl.facts import FactStore, SwarmFacts
from swarmctl.graph import JobSpec
from swarmctl.humanize import stamp
from swarmctl.nightly import parse_time, read_nightly_file
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from swarmctl.status import JSON_SCHEMA, as_json, exit_code, gather_status
from tests.helpers import run_cli

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the --json schema (pip install jsonschema)")


def text_of(renderable: object, width: int = 120) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def healthy(client: redis.Redis, config: Config) -> str:
    """A swarm with nothing to worry about: fresh sync, a leader, one idle drone, nothing queued."""
    meta = FactStore(client)
    meta.set_sync_time(time.time() - 12 * 3600)
    meta.set_world_size(264)
    meta.set_binhost(4637, 4722)
    meta.record_nightly("FINISHED", time.time() - 11 * 3600)
    client.set(keys.LEADER, "orch-1", px=60_000)
    registry = DroneRegistry(client, config)
    token = registry.enroll("drone-Izar")
    registry.heartbeat("drone-Izar", token, {"status": "idle", "cpu": 2, "mem": 10})
    return token


def status_json(env: dict[str, str], expect: int) -> dict[str, Any]:
    proc = run_cli(["status", "--json"], env, check=False)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    jsonschema.validate(data, JSON_SCHEMA)
    assert data["exit_code"] == expect
    return data


def codes(data: dict[str, object]) -> list[str]:
    return [item["code"] for item in data["attention"]]


def test_schema_is_a_valid_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(JSON_SCHEMA)


def test_empty_swarm(redis_client: redis.Redis, config: Config) -> None:
    report = gather_status(redis_client, config)
    text = text_of(render_status(report))
    for expected in ("Sync: never recorded", "World: unknown", "Binary: unknown",
                     "Swarm: 0/0 drones online, 0 packages building",
                     "Queue: 0 needed (0 ready, 0 waiting), 0 building, 0 built, 0 failed, 0 blocked",
                     "WARNING sync_unknown"):
        assert expected in text, expected
    assert [a.code for a in report.attention] == ["sync_unknown"]
    assert exit_code(report.attention) == 1
    jsonschema.validate(as_json(report), JSON_SCHEMA)


def test_healthy_swarm_like_the_story(redis_client: redis.Redis, config: Config, swarm_env: dict[str, str]) -> None:
    healthy(redis_client, config)
    report = gather_status(redis_client, config)
    text = text_of(render_status(report))
    assert "(12.0h ago)" in text
    assert "World: 264 packages" in text
    assert "Binary: 98.2% available (4,637/4,722)" in text
    assert "Swarm: 1/1 drones online, 0 packages building" in text
    assert "all well" in text
    data = status_json(swarm_env, 0)
    assert data["binary"] == {"available": 4637, "total": 4722, "percent": 98.2}
    assert data["world"] == {"packages": 264}
    assert data["sync"]["ok"] is True and data["sync"]["nightly"]["event"] == "FINISHED"
    out = run_cli(["status"], swarm_env).stdout
    assert "Binary: 98.2% available" in out and "\x1b[" not in out


def test_sync_stale_is_critical(redis_client: redis.Redis, config: Config, swarm_env: dict[str, str]) -> None:
    healthy(redis_client, config)
    FactStore(redis_client).set_sync_time(time.time() - 30 * 3600)
    assert codes(status_json(swarm_env, 2)) == ["sync_stale"]
    # a looser limit makes it fine
    assert run_cli(["status", "--max-sync-age", "48"], swarm_env, check=False).returncode == 0


def test_sync_unknown_is_a_warning(redis_client: redis.Redis, config: Config, swarm_env: dict[str, str]) -> None:
    healthy(redis_client, config)
    redis_client.hdel(keys.FACTS, "sync_time")
    assert codes(status_json(swarm_env, 1)) == ["sync_unknown"]


def test_nightly_failed_is_critical(redis_client: redis.Redis, config: Config, swarm_env: dict[str, str]) -> None:
    healthy(redis_client, config)
    FactStore(redis_client).record_nightly("FAILED", detail="emerge --sync and emerge-webrsync both failed")
    data = status_json(swarm_env, 2)
    assert codes(data) == ["nightly_failed"]
    assert "webrsync" in data["attention"][0]["message"]
    assert data["sync"]["ok"] is False
    report = gather_status(redis_client, config)
    assert "nightly FAILED" in text_of(render_status(report))


def test_nightly_failed_from_the_status_file(redis_client: redis.Redis, config: Config, swarm_env: dict[str, str],
                                             tmp_path: Path) -> None:
    healthy(redis_client, config)
    status_file = tmp_path / "nightly.status"
    now = time.time()
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 30))
    # what playbooks/nightly.yml writes: ISO times, and "task"/"error" on FAILED
    status_file.write_text(json.dumps({"event": "STARTED", "time": now - 60}) + "\nnot json\n"
                           + json.dumps({"event": "FAILED", "time": iso, "host": "binhost",
                                         "task": "Sync the Portage tree", "error": "mirror timeout"}) + "\n")
    env = {**swarm_env, "SWARM_NIGHTLY_STATUS_FILE": str(status_file)}
    data = status_json(env, 2)
    assert codes(data) == ["nightly_failed"]
    assert data["attention"][0]["message"].endswith("Sync the Portage tree: mirror timeout")


def test_no_drone_online_with_work_queued(redis_client: redis.Redis, config: Config,
                                         swarm_env: dict[str, str]) -> None:
    healthy(redis_client, config)
    Queue(redis_client, config).add([JobSpec("app-misc/hello-1")])
    assert status_json(swarm_env, 0)["queue"]["needed"] == 1
    redis_client.hset(keys.drone("drone-Izar"), "last_seen", int((time.time() - 3600) * 1000))  # silent
    data = status_json(swarm_env, 2)
    assert codes(data) == ["no_drone_online"]
    assert data["swarm"]["drones_online"] == 0


def test_grounded_drones_cannot_take_work(redis_client: redis.Redis, config: Config,
                                          swarm_env: dict[str, str]) -> None:
    healthy(redis_client, config)
    queue = Queue(redis_client, config)
    queue.add([JobSpec("app-misc/hello-1")])
    DroneRegistry(redis_client, config).ground("drone-Izar", 600, queue)
    data = status_json(swarm_env, 2)
    assert codes(data) == ["no_drone_online"]
    assert data["swarm"]["drones_grounded"] == 1 and data["swarm"]["drones_online"] == 1


def test_no_orchestrator_is_a_warning(redis_client: redis.Redis, config: Config, swarm_env: dict[str, str]) -> None:
    healthy(redis_client, config)
    Queue(redis_client, config).add([JobSpec("app-misc/hello-1")])
    redis_client.delete(keys.LEADER)
    assert codes(status_json(swarm_env, 1)) == ["no_orchestrator"]


def test_blocked_and_failed_are_warnings(redis_client: redis.Redis, config: Config, swarm_env: dict[str, str]) -> None:
    token = healthy(redis_client, config)
    registry = DroneRegistry(redis_client, config)
    other = registry.enroll("drone-Tarn")
    queue = Queue(redis_client, config)
    queue.add([JobSpec("app-broken/broken-1")])
    for name, tok in (("drone-Izar", token), ("drone-Tarn", other)):
        claim = queue.claim(name, tok)
        assert claim is not None
        queue.fail(claim.cpv, name, tok, claim.lease, "build", "compile error")
    assert queue.get("app-broken/broken-1").state == "blocked"
    assert codes(status_json(swarm_env, 1)) == ["blocked"]
    once = Queue(redis_client, config.with_overrides(queue__max_attempts=1))
    once.add([JobSpec("app-misc/flaky-1")])
    claim = once.claim("drone-Izar", token)
    assert claim is not None
    assert once.fail(claim.cpv, "drone-Izar", token, claim.lease, "hung", "no output")[0] == "failed"
    data = status_json(swarm_env, 1)
    assert codes(data) == ["blocked", "failed"]
    text = text_of(render_status(gather_status(redis_client, config)))
    assert "1 failed, 1 blocked" in text


def test_critical_outranks_warnings(redis_client: redis.Redis, config: Config) -> None:
    healthy(redis_client, config)
    FactStore(redis_client).set_sync_time(time.time() - 3 * 86400)
    Queue(redis_client, config).add([JobSpec("app-misc/hello-1")])
    redis_client.delete(keys.LEADER)
    report = gather_status(redis_client, config)
    assert [a.code for a in report.attention] == ["sync_stale", "no_orchestrator"]
    assert exit_code(report.attention) == 2


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_redis_exits_2(swarm_env: dict[str, str]) -> None:
    env = {**swarm_env, "SWARM_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0", "SWARM_REDIS_SOCKET_TIMEOUT": "1"}
    proc = run_cli(["status"], env, check=False)
    assert proc.returncode == 2 and "cannot reach" in proc.stderr


def test_meta_reads_are_tolerant(redis_client: redis.Redis) -> None:
    redis_client.hset(keys.FACTS, mapping={"sync_time": "yesterday", "world_size": "many", "nightly_last": "{",
                                          "cron_verify": json.dumps({"ok": True}),
                                          "drift_last": json.dumps({"drifted": {"h1": ["x"]}})})
    assert FactStore(redis_client).read() == SwarmFacts()
    assert parse_time("2026-01-23T02:00:00Z") == pytest.approx(1769133600.0)
    assert parse_time(" 12.5 ") == 12.5 and parse_time(True) is None
    with pytest.raises(ValueError):
        FactStore(redis_client).set_binhost(5, 4)
    with pytest.raises(ValueError):
        FactStore(redis_client).record_nightly("MAYBE")


def test_nightly_file_tail(tmp_path: Path) -> None:
    path = tmp_path / "nightly.status"
    lines = [json.dumps({"event": "STARTED", "time": 1000 + i}) for i in range(3000)]
    path.write_text("\n".join(lines) + "\n" + json.dumps({"event": "finished", "time": "1970-01-01T02:00:00Z"}))
    marks = read_nightly_file(path)
    assert marks[-1].event == "FINISHED" and marks[-1].time == 7200
    # Only the last 64 KiB are read, whole lines only: a run of the newest STARTED marks, not all 3000.
    started = [m.time for m in marks[:-1]]
    assert all(m.event == "STARTED" for m in marks[:-1]) and started == list(range(int(started[0]), 4000))
    assert started[0] > 1000 and len(started) * len(lines[-1]) < 64 * 1024
    assert read_nightly_file(tmp_path / "missing") == []


def test_nightly_marks_reach_status(swarm_env: dict[str, str]) -> None:
    import json

    from tests.helpers import run_cli

    run_cli(["nightly", "mark", "STARTED"], swarm_env)
    run_cli(["nightly", "mark", "SYNCED"], swarm_env)
    run_cli(["nightly", "mark", "FAILED", "--detail", "emerge-webrsync failed"], swarm_env)
    run_cli(["nightly", "cron-check", "--ok", "--detail", "next run in 5 h"], swarm_env)
    report = json.loads(run_cli(["status", "--json"], swarm_env, check=False).stdout)
    text = json.dumps(report)
    assert "FAILED" in text and "emerge-webrsync failed" in text
    assert report["sync"]["time"] is not None


def test_status_names_the_nightly_report(redis_client: redis.Redis, swarm_env: dict[str, str],
                                        tmp_path: Path) -> None:
    """The nightly playbook draws the night beside its status file; status says where to look."""
    healthy(redis_client, load_config(environ=swarm_env))
    env = {**swarm_env, "SWARM_NIGHTLY_STATUS_FILE": str(tmp_path / "nightly.status")}
    assert status_json(env, 0)["report"] is None
    run_cli(["report", "--html", str(tmp_path / "nightly-report.html")], env)
    data = status_json(env, 0)
    assert data["report"]["path"] == str(tmp_path / "nightly-report.html")  # type: ignore[index]
    shown = run_cli(["status"], env).stdout
    assert f"Report: {tmp_path / 'nightly-report.html'}" in shown


def test_a_binhost_below_its_free_space_floor_is_red(config: Config, tmp_path: Path) -> None:
    """Where uploads are refused with 507 (binhost.min_free_mb), status says so, critical."""
    from swarmctl.status import binhost_attention

    config.binhost.dir = str(tmp_path)
    config.binhost.min_free_mb = 2**30  # more than any test machine has
    attention = binhost_attention(config)
    assert [(a.code, a.severity) for a in attention] == [("binhost_low_disk", "critical")]
    assert "MiB free" in attention[0].message and "507" in attention[0].message
    config.binhost.min_free_mb = 0
    assert binhost_attention(config) == []


def test_drift_shows_only_when_the_last_check_found_some(redis_client: redis.Redis, config: Config,
                                                          swarm_env: dict[str, str]) -> None:
    healthy(redis_client, config)
    meta = FactStore(redis_client)
    assert drift_line(None) is None
    clean = meta.record_drift({}, {}, 3)
    assert drift_line(clean) is None
    assert "Drift" not in text_of(render_status(gather_status(redis_client, config)))
    assert status_json(swarm_env, 0)["drift"] == {"time": clean.time, "drifted": {}, "failed": {}, "current": 3}

    when = time.time() - 3600
    meta.record_drift({"h3": ["Write the drone's config file.", "Ensure the service is started.", "a", "b"],
                       "h4": ["Install the service definition."]}, {"h5": "unreachable ok=0"}, 1, when=when)
    text = text_of(render_status(gather_status(redis_client, config)), width=400)
    assert (f"Drift: 2 host(s) drifted since {stamp(when)} (h3: Write the drone's config file.; "
            "Ensure the service is started.; a; ..., h4: Install the service definition.); "
            f"1 host(s) not checked at {stamp(when)} (h5)") in text
    data = status_json(swarm_env, 0)  # drift is shown, it does not change status's exit code
    assert data["drift"]["drifted"]["h4"] == ["Install the service definition."]
    assert data["drift"]["failed"] == {"h5": "unreachable ok=0"} and data["drift"]["time"] == when
