"""Shared fixtures: a private real Redis server per test session, CLI helpers.

CI sets SWARM_REQUIRE_ALL=1: then a test that would skip (no root, a missing
system package) fails instead, so CI always runs everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from swarmctl.config import Config, load_config
from swarmctl.embedded import RedisProcess
from swarmctl.paths import isolated_env
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry

REPO = Path(__file__).resolve().parent.parent
SWARMCTL = [sys.executable, "-m", "swarmctl"]
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


#: Tests and benchmarks share the package's private-server helper.
RedisServer = RedisProcess


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
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


def run_cli(args: list[str], env: dict[str, str], check: bool = True,
            timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``swarmctl ARGS`` as a user would, in a subprocess (``input`` on its stdin)."""
    proc = subprocess.run([*SWARMCTL, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=tempfile.gettempdir(), input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"swarmctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


class Spawner:
    """Starts swarmctl subprocesses and always stops them at teardown."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, args: list[str], env: dict[str, str] | None = None,
                 name: str = "proc") -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen([*SWARMCTL, *args], env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(timeout=10)


@pytest.fixture
def spawn(swarm_env: dict[str, str], tmp_path: Path) -> Iterator[Spawner]:
    spawner = Spawner(swarm_env, tmp_path)
    yield spawner
    spawner.stop_all()


def wait_until(predicate, timeout: float, step: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)
