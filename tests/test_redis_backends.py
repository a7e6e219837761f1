"""The ways to point swarmctl at Redis: ACL users, passwords, Sentinel (real servers)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from swarmctl import keys
from swarmctl.embedded import redis_server_binary
from tests.helpers import RedisProcess, free_port, run_cli


@pytest.fixture
def protected_server(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "r", password="admin-secret").start()
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser("swarm", enabled=True, passwords=["+swarm-secret"], keys=[keys.NAMESPACE + "*"],
                      commands=["+@all"])
    yield server
    server.stop()


def test_acl_user_and_password(protected_server: RedisProcess, swarm_env: dict[str, str]) -> None:
    env = {**swarm_env, "SWARM_REDIS_URL": f"redis://127.0.0.1:{protected_server.port}/0",
           "SWARM_REDIS_USERNAME": "swarm", "SWARM_REDIS_PASSWORD": "swarm-secret"}
    run_cli(["queue", "add", "app-misc/a-1"], env)
    assert [j["cpv"] for j in json.loads(run_cli(["queue", "list", "--json"], env).stdout)] == ["app-misc/a-1"]
    bad = run_cli(["queue", "list"], {**env, "SWARM_REDIS_PASSWORD": "wrong"}, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "wrong" not in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisProcess, int]]:
    master = RedisProcess(tmp_path / "master").start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor build-swarm 127.0.0.1 {master.port} 1\n")
    proc = subprocess.Popen([redis_server_binary(), str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=port).sentinel_master("build-swarm"):
                    break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield master, port
    finally:
        proc.terminate()
        proc.wait(10)
        master.stop()


def test_sentinel_finds_the_master(sentinel: tuple[RedisProcess, int], swarm_env: dict[str, str]) -> None:
    master, port = sentinel
    env = {k: v for k, v in swarm_env.items() if k != "SWARM_REDIS_URL"}
    env.update({"SWARM_REDIS_SENTINELS": f"127.0.0.1:{port}", "SWARM_REDIS_SERVICE_NAME": "build-swarm"})
    run_cli(["queue", "add", "app-misc/via-sentinel-1"], env)
    direct = redis.Redis.from_url(master.url, decode_responses=True)
    assert direct.hget(keys.job("app-misc/via-sentinel-1"), "state") == "needed"
    bad = run_cli(["queue", "list"], {**env, "SWARM_REDIS_SERVICE_NAME": "nope"}, check=False)
    assert bad.returncode == 2 and "Sentinel service 'nope'" in bad.stderr and bad.stderr.count("\n") == 1
