"""Disk that never fills silently: a real drone on a tiny filesystem, drone file retention, Redis memory."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.exposition import generate_latest

from swarmctl import metrics
from swarmctl.config import Config
from swarmctl.drone.disk import DroneDisk
from swarmctl.events import Events
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import Spawner, run_cli, wait_for
from tests.test_drone_process import start_drone
from tests.test_metrics import parse

MIB = 1024 * 1024


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted under the test's temp dir (unmounted at teardown)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], check=False)


def fill(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.write(b"\0" * size)


def test_a_drone_short_of_disk_stops_claiming_shows_low_disk_and_resumes(
        tiny_fs: Path, spawn: Spawner, queue: Queue, registry: DroneRegistry, swarm_env: dict[str, str],
        config: Config) -> None:
    ballast = tiny_fs / "ballast"
    fill(ballast, 12 * MIB)  # 4 MiB left, 8 MiB needed
    queue.add([JobSpec("app-misc/hello-1")])
    start_drone(spawn, registry, "izar", "true", SWARM_DRONE_STATE_DIR=str(tiny_fs / "izar"),
                SWARM_DRONE_MIN_FREE_GB=str(8 / 1024))

    drone = wait_for(lambda: next((d for d in registry.list() if d.status == "low-disk"), None), 15, "low-disk")
    assert drone.disk_free_build is not None and drone.disk_free_build < 8 * MIB
    assert "build" in (drone.problem or "") and "free" in (drone.problem or "")
    job = queue.get("app-misc/hello-1")
    assert (job.state, job.attempts, drone.failures, drone.grounded_until) == ("needed", 0, 0, None)
    listed = json.loads(run_cli(["drones", "--json"], swarm_env).stdout)
    assert [(d["status"], d["disk_free_build"] < 8 * MIB) for d in listed] == [("low-disk", True)]
    status = run_cli(["status", "--json"], swarm_env, check=False)
    codes = {a["code"]: a["message"] for a in json.loads(status.stdout)["attention"]}
    assert "izar low on disk" in codes["low_disk"] and status.returncode >= 1
    samples = parse(generate_latest(metrics.make_registry(queue.redis, config)).decode())
    assert samples[("swarm_drones", (("status", "low-disk"),))] == 1
    assert samples[("swarm_drone_disk_free_bytes", (("dir", "build"), ("drone", "izar")))] < 8 * MIB

    ballast.unlink()
    wait_for(lambda: queue.get("app-misc/hello-1").state == "built", 15, "the build after space returned")
    izar = registry.list()[0]
    assert izar.status in ("idle", "building") and izar.problem is None and izar.failures == 0
    assert izar.disk_free_build is not None and izar.disk_free_build > 8 * MIB
    kinds = [e.kind for e in Events(queue.redis).since() if e.drone == "izar"]
    assert "low-disk" in kinds and "disk-ok" in kinds


def test_drone_files_stay_within_their_limits_oldest_first(tmp_path: Path) -> None:
    pkgdir, distdir = tmp_path / "pkgdir", tmp_path / "distfiles"
    names = ["app-misc/a/a-1-1.gpkg.tar", "app-misc/b/b-1-1.gpkg.tar", "app-misc/c/c-1-1.gpkg.tar"]
    for age, name in enumerate(reversed(names)):  # a is the oldest
        (pkgdir / name).parent.mkdir(parents=True, exist_ok=True)
        fill(pkgdir / name, MIB)
        os.utime(pkgdir / name, (1_000_000 - age * 100, 1_000_000 - age * 100))
    fill(pkgdir / "Packages", 3 * MIB)  # the index is no package: never deleted
    distdir.mkdir()
    for age, name in enumerate(["new.tar.gz", "old.tar.gz"]):
        fill(distdir / name, 2 * MIB)
        os.utime(distdir / name, (1_000_000 - age * 100, 1_000_000 - age * 100))
    (distdir / ".locks").mkdir()
    fill(distdir / ".locks" / "held", 2 * MIB)  # portage's: hidden, left alone

    disk = DroneDisk({"build": tmp_path, "pkgdir": pkgdir, "distdir": distdir}, 0,
                     pkgdir_max_bytes=2 * MIB, distfiles_max_bytes=3 * MIB)
    removed = disk.tidy()

    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == [
        "distfiles/old.tar.gz", "pkgdir/app-misc/a/a-1-1.gpkg.tar"]
    assert (pkgdir / "Packages").exists() and (distdir / ".locks" / "held").exists()
    assert disk.tidy() == []  # within limits now
    unlimited = DroneDisk({"pkgdir": pkgdir, "distdir": distdir}, 0)
    assert unlimited.tidy() == []


@pytest.fixture
def maxmemory(redis_client: redis.Redis) -> Iterator[int]:
    """Give the test Redis a maxmemory four times its use (reset to none afterwards)."""
    limit = int(redis_client.info("memory")["used_memory"]) * 4
    redis_client.config_set("maxmemory", limit)
    try:
        yield limit
    finally:
        redis_client.config_set("maxmemory", 0)


def test_status_and_doctor_warn_when_redis_nears_maxmemory(
        maxmemory: int, redis_client: redis.Redis, swarm_env: dict[str, str]) -> None:
    def verdicts(warn: str, critical: str) -> tuple[str | None, str | None]:
        env = {**swarm_env, "SWARM_REDIS_MEMORY_WARN": warn, "SWARM_REDIS_MEMORY_CRITICAL": critical}
        status = json.loads(run_cli(["status", "--json"], env, check=False).stdout)
        doctor = json.loads(run_cli(["doctor", "--json"], env, check=False).stdout)
        found = [a for a in status["attention"] if a["code"] == "redis_memory"]
        checked = [c for c in doctor["checks"] if c["name"] == "redis memory"]
        return (found[0]["severity"] if found else None), (checked[0]["state"] if checked else None)

    assert verdicts("0.1", "0.95") == ("warning", "warn")  # a quarter used
    assert verdicts("0.1", "0.2") == ("critical", "fail")
    redis_client.config_set("maxmemory", 0)
    assert verdicts("0.1", "0.2") == (None, None)  # no limit: nothing to say
