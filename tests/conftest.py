"""Shared fixtures: a private real Redis server per test session, subprocess spawning.

CI sets SWARM_REQUIRE_ALL=1: then a test that would skip (no root, a missing
system package) fails instead, so CI always runs everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from swarmctl.config import Config, load_config
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import REPO, RedisProcess, Spawner, isolated_env

REQUIRE_ALL = os.environ.get("SWARM_REQUIRE_ALL", "") not in ("", "0")

pytest_plugins = ["tests.testbed.fixtures"] if (REPO / "tests" / "testbed" / "fixtures.py").exists() else []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"SWARM_REQUIRE_ALL is set, so this skip is a failure: {reason}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisProcess) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def swarm_env(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> dict[str, str]:
    """Environment for swarmctl subprocesses: the test Redis (emptied), private XDG dirs."""
    return isolated_env(tmp_path, redis_url)


@pytest.fixture
def config(redis_url: str, swarm_env: dict[str, str]) -> Config:
    return load_config(environ=swarm_env)


@pytest.fixture
def queue(redis_client: redis.Redis, config: Config) -> Queue:
    """The queue on the test Redis (emptied for each test)."""
    return Queue(redis_client, config)


@pytest.fixture
def registry(redis_client: redis.Redis, config: Config) -> DroneRegistry:
    """The drone registry on the test Redis."""
    return DroneRegistry(redis_client, config)


@pytest.fixture
def spawn(swarm_env: dict[str, str], tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(swarm_env, tmp_path)
    yield spawner
    spawner.stop_all()


