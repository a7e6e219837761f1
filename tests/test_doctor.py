"""swarmctl doctor: each check against a real Redis (and a real PKGDIR), and the command's exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rich.console import Console

from swarmctl import doctor, keys
from swarmctl.cli.views.doctor import render_checks
from swarmctl.config import Config
from swarmctl.facts import FactStore
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import run_cli


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def aof(redis_client: redis.Redis) -> Iterator[None]:
    """The session server runs without persistence; switch AOF on for one test."""
    redis_client.config_set("appendonly", "yes")
    yield
    redis_client.config_set("appendonly", "no")


def test_redis_without_persistence_fails(redis_client: redis.Redis, config: Config) -> None:
    check = doctor.check_redis(redis_client, config)
    assert check.state == "fail" and "no persistence" in check.summary and "appendonly" in check.hint
    redis_client.config_set("save", "3600 1")
    try:
        assert doctor.check_redis(redis_client, config).state == "warn"
    finally:
        redis_client.config_set("save", "")


def test_redis_with_aof_is_ok(redis_client: redis.Redis, config: Config, aof: None) -> None:
    deadline = time.monotonic() + 10
    while redis_client.info("persistence").get("aof_enabled") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert doctor.check_redis(redis_client, config).state == "ok"


def test_unreachable_redis(config: Config, tmp_path: Path) -> None:
    bad = config.with_overrides(redis__url=f"redis://127.0.0.1:{closed_port()}/0", redis__socket_timeout=1)

    def connect() -> redis.Redis:
        return redis.Redis.from_url(bad.redis.url, socket_timeout=1, socket_connect_timeout=1)

    checks = by_name(doctor.run_checks(bad, connect))
    assert checks["redis"].state == "fail" and "cannot reach" in checks["redis"].summary
    assert checks["orchestrator"].state == checks["drones"].state == checks["clock"].state == "skip"
    assert doctor.exit_code(list(checks.values())) == 2


def test_leader(redis_client: redis.Redis) -> None:
    assert doctor.check_leader(redis_client).state == "fail"
    redis_client.set(keys.LEADER, "host:42:abc", px=6000)
    check = doctor.check_leader(redis_client)
    assert check.state == "ok" and "host:42:abc" in check.summary


def test_drones(redis_client: redis.Redis, config: Config) -> None:
    assert doctor.check_drones(redis_client, config).state == "fail"
    registry = DroneRegistry(redis_client, config)
    tokens = {name: registry.enroll(name) for name in ("drone-Izar", "drone-Tarn")}
    assert doctor.check_drones(redis_client, config).state == "fail"  # enrolled, none heartbeating
    registry.heartbeat("drone-Izar", tokens["drone-Izar"], {"status": "idle"})
    check = doctor.check_drones(redis_client, config)
    assert check.state == "warn" and "1/2" in check.summary and "drone-Tarn (never)" in check.summary
    registry.heartbeat("drone-Tarn", tokens["drone-Tarn"], {"status": "idle"})
    assert doctor.check_drones(redis_client, config).state == "ok"
    registry.ground("drone-Tarn", 60, Queue(redis_client, config))
    check = doctor.check_drones(redis_client, config)
    assert check.state == "warn" and "grounded: drone-Tarn" in check.summary
    registry.revoke("drone-Tarn", Queue(redis_client, config))
    assert doctor.check_drones(redis_client, config).summary == "1/1 enrolled drones heartbeating"


def test_cron(redis_client: redis.Redis) -> None:
    meta = FactStore(redis_client)
    now = time.time()
    assert doctor.check_cron(meta, now).state == "warn"
    meta.record_cron_verify(True, "0 2 * * * found in root's crontab (cronie)", when=now - 3600)
    check = doctor.check_cron(meta, now)
    assert check.state == "ok" and "cronie" in check.summary
    meta.record_cron_verify(False, "crond is dcron: entry not loaded", when=now - 60)
    check = doctor.check_cron(meta, now)
    assert check.state == "fail" and "dcron" in check.summary and "cronie" in check.hint
    meta.record_cron_verify(True, when=now - 30 * 86400)
    assert doctor.check_cron(meta, now).state == "warn"


def test_nightly(redis_client: redis.Redis, config: Config, tmp_path: Path) -> None:
    meta = FactStore(redis_client)
    now = time.time()
    cfg = config.with_overrides(nightly__status_file=str(tmp_path / "nightly.status"))
    assert doctor.check_nightly(meta, cfg, now).state == "fail"  # never started
    meta.record_nightly("FINISHED", now - 3600)
    assert doctor.check_nightly(meta, cfg, now).state == "ok"
    meta.record_nightly("FINISHED", now - 30 * 3600)
    check = doctor.check_nightly(meta, cfg, now)
    assert check.state == "fail" and "STARTED" in check.summary
    meta.record_nightly("STARTED", now - 8 * 3600)
    check = doctor.check_nightly(meta, cfg, now)
    assert check.state == "warn" and "never finished" in check.summary
    meta.record_nightly("FAILED", now - 600, "emerge-webrsync: mirror timeout")
    check = doctor.check_nightly(meta, cfg, now)
    assert check.state == "fail" and "mirror timeout" in check.summary
    # the status file alone (no Redis) is enough
    (tmp_path / "nightly.status").write_text(json.dumps({"event": "STARTED", "time": now - 7200}) + "\n" +
                                             json.dumps({"event": "FINISHED", "time": now - 7000}) + "\n")
    assert doctor.check_nightly(None, cfg, now).state == "ok"


def write_binhost(pkgdir: Path, files: dict[str, bytes], indexed: dict[str, int]) -> None:
    blocks = ["ARCH: amd64\nVERSION: 0\n"]
    for rel, data in files.items():
        path = pkgdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel, size in indexed.items():
        cpv = rel.rsplit("/", 1)[0].split("/", 1)[0] + "/" + Path(rel).name.removesuffix(".gpkg.tar")
        blocks.append(f"CPV: {cpv}\nPATH: {rel}\nSIZE: {size}\nMD5: {hashlib.md5(b'').hexdigest()}\n"
                      f"SHA1: {hashlib.sha1(b'').hexdigest()}\n")
    (pkgdir / "Packages").write_text("\n".join(blocks))


def test_binhost_index(config: Config, tmp_path: Path) -> None:
    assert doctor.check_binhost_index(config, deep=False).state == "skip"
    pkgdir = tmp_path / "pkgdir"
    cfg = config.with_overrides(binhost__dir=str(pkgdir))
    assert doctor.check_binhost_index(cfg, deep=False).state == "fail"  # not a directory
    hello = "app-misc/hello/hello-1-1.gpkg.tar"
    write_binhost(pkgdir, {hello: b"x" * 100}, {hello: 100})
    check = doctor.check_binhost_index(cfg, deep=False)
    assert check.state == "ok" and "1 entries" in check.summary
    write_binhost(pkgdir, {hello: b"x" * 90}, {hello: 100})  # truncated upload
    check = doctor.check_binhost_index(cfg, deep=False)
    assert check.state == "fail" and "size 90, index says 100" in check.summary and "emaint" in check.hint
    stray = "app-misc/banner/banner-1-1.gpkg.tar"
    write_binhost(pkgdir, {hello: b"x" * 100, stray: b"y"}, {hello: 100, "app-misc/gone/gone-1-1.gpkg.tar": 5})
    summary = doctor.check_binhost_index(cfg, deep=False).summary
    assert "gone-1-1.gpkg.tar: in the index, file missing" in summary
    assert "banner-1-1.gpkg.tar: package file not in the index" in summary


def test_clock_skew(redis_client: redis.Redis, config: Config) -> None:
    registry = DroneRegistry(redis_client, config)
    good, fast = registry.enroll("good"), registry.enroll("fast")
    registry.heartbeat("good", good, {"status": "idle", "clock": time.time()})
    check = doctor.check_clock(redis_client, config, max_skew=2.0)
    assert check.state == "ok" and "1 drone(s) checked" in check.summary
    registry.heartbeat("fast", fast, {"status": "idle", "clock": time.time() + 120})
    check = doctor.check_clock(redis_client, config, max_skew=2.0)
    assert check.state == "fail" and "fast" in check.summary and "+120" in check.summary


def test_clock_skew_from_claim_times(redis_client: redis.Redis, config: Config) -> None:
    """A drone that does not report its clock is judged by when it says it started a claimed job."""
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    queue.add([JobSpec("app-misc/hello-1")])
    token = registry.enroll("slow")
    claim = queue.claim("slow", token)
    assert claim is not None
    registry.heartbeat("slow", token, {"status": "building", "task": claim.cpv, "task_started": time.time() - 10},
                       claim.cpv, claim.lease)
    skews = doctor.drone_skews(redis_client, config)
    assert skews["slow"] == pytest.approx(-10, abs=1)
    assert doctor.check_clock(redis_client, config, max_skew=2.0).state == "warn"


def test_render_and_exit_codes() -> None:
    checks = [doctor.Check("redis", "ok", "reachable"), doctor.Check("cron", "warn", "never verified", "converge"),
              doctor.Check("binhost index", "skip", "not here")]
    console = Console(width=100, file=io.StringIO(), record=True, color_system=None)
    console.print(render_checks(checks))
    text = console.export_text()
    assert "[ ok ] redis" in text and "[WARN] cron" in text and "fix: converge" in text and "[skip]" in text
    assert doctor.exit_code(checks) == 1
    assert doctor.exit_code([*checks, doctor.Check("clock", "fail", "off")]) == 2
    assert doctor.exit_code(checks[:1]) == 0


def test_cli(redis_client: redis.Redis, config: Config, swarm_env: dict[str, str]) -> None:
    proc = run_cli(["doctor", "--json"], swarm_env, check=False)
    data = json.loads(proc.stdout)
    names = [c["name"] for c in data["checks"]]
    assert names == ["redis", "orchestrator", "drones", "cron", "nightly", "binhost index", "signing", "clock",
                     "playbooks", "preflight"]
    assert proc.returncode == data["exit_code"] == 2
    text = run_cli(["doctor"], swarm_env, check=False).stdout
    assert "[FAIL] orchestrator" in text and "fix: start one" in text
    env = {**swarm_env, "SWARM_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0", "SWARM_REDIS_SOCKET_TIMEOUT": "1"}
    proc = run_cli(["doctor"], env, check=False)
    assert proc.returncode == 2 and "cannot reach" in proc.stdout and "[skip] drones" in proc.stdout


def test_playbooks_are_found_in_the_package_or_where_the_config_says(config: Config, tmp_path: Path) -> None:
    found = doctor.check_playbooks(config)
    assert found.state == "ok" and "(package)" in found.summary
    assert (Path(found.summary.split(" in ")[1].split(" (")[0]) / "playbooks" / "drone-restart.yml").is_file()
    # A playbook_dir without the healing playbooks: a failure while healing is on, a warning otherwise.
    empty = config.with_overrides(healing__playbook_dir=str(tmp_path))
    assert doctor.check_playbooks(empty).state == "warn"
    broken = empty.with_overrides(healing__enabled=True)
    check = doctor.check_playbooks(broken)
    assert check.state == "fail" and "drone-restart.yml" in check.summary
    (tmp_path / "drone-restart.yml").write_text("---\n")
    (tmp_path / "drone-reboot.yml").write_text("---\n")
    assert doctor.check_playbooks(broken).state == "ok"
