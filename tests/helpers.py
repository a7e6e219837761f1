"""Helpers the tests (and the benchmarks) share: a private redis-server, subprocess swarmctl, polling.

Fixtures live in conftest.py files; everything a test imports by name lives here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

from swarmctl import keys
from swarmctl.embedded import START_TIMEOUT, redis_server_binary
from swarmctl.events import Event
from swarmctl.exceptions import BackendUnavailable
from swarmctl.queue import Queue

REPO = Path(__file__).resolve().parent.parent
SWARMCTL = [sys.executable, "-m", "swarmctl"]

T = TypeVar("T")


def isolated_env(home: Path, redis_url: str | None = None) -> dict[str, str]:
    """Environment for a swarmctl process with its own XDG dirs under ``home`` (tests, benches).

    The caller's SWARM_* settings are dropped so nothing leaks in from the shell.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env.update({"XDG_CONFIG_HOME": str(home / "xdg-config"), "XDG_DATA_HOME": str(home / "xdg-data"),
                "XDG_STATE_HOME": str(home / "xdg-state"), "XDG_CACHE_HOME": str(home / "xdg-cache"),
                "PYTHONUNBUFFERED": "1", "LC_ALL": "C.UTF-8"})
    if redis_url:
        env["SWARM_REDIS_URL"] = redis_url
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A private foreground redis-server on a TCP port (tests and benchmarks)."""

    def __init__(self, directory: Path, port: int | None = None, appendonly: bool = False,
                 bind: str = "127.0.0.1", password: str | None = None) -> None:
        self.dir = directory
        self.bind = bind
        self.port = port or free_port(bind)
        self.appendonly = appendonly
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.bind}:{self.port}/0"

    def start(self) -> RedisProcess:
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", self.bind, "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--daemonize", "no"]
        if self.password:
            # From stdin ("-"), not argv: every local user can read a process's command line.
            argv.insert(1, "-")
        else:
            argv += ["--protected-mode", "no"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"requirepass {self.password}\n".encode() if self.password else b"")
        self.proc.stdin.close()
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                client.ping()
                return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BackendUnavailable(f"redis-server on {self.bind}:{self.port} did not start") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


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
        self._logs: dict[int, Path] = {}  # pid -> its output file

    def __call__(self, args: list[str], env: dict[str, str] | None = None,
                 name: str = "proc") -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}-{len(self.procs)}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen([*SWARMCTL, *args], env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
        self._logs[proc.pid] = Path(log.name)
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return self._logs[proc.pid].read_text(errors="replace")

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
        """SIGTERM one process and wait for it (SIGKILL when it does not stop in time)."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(timeout=10)


def wait_until(predicate: Callable[[], T], timeout: float, step: float = 0.1) -> T:
    """Poll until predicate() is truthy; return its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, step: float = 0.2) -> T:
    """Like :func:`wait_until`, but a timeout is an AssertionError naming ``what``."""
    value = wait_until(predicate, timeout, step)
    if not value:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
    return value


def synthetic_night(jobs: int, drones: int, start: float = 1_000_000.0) -> list[Event]:
    """A dense night's events for pure tests and benches: each drone builds its share back to back.

    One job in fifty fails once first; job i waits for job i - drones (so chains run down each drone).
    """
    events, clock = [], [start] * drones
    for i in range(jobs):
        d = i % drones
        name, job = f"drone-{d:02d}", f"app-misc/p{i}-1"
        if i % 50 == 0:
            events.append(Event("", clock[d], "claimed", job, name, ""))
            clock[d] += 30
            events.append(Event("", clock[d], "requeued", job, name, "build: command exited 1"))
        events.append(Event("", clock[d], "claimed", job, name, ""))
        seconds = 60 + i % 7 * 20
        clock[d] += seconds
        events.append(Event("", clock[d], "built", job, name, str(seconds)))
    return sorted(events, key=lambda e: e.ts)


def ready(queue: Queue) -> set[str]:
    """The jobs a drone could claim now."""
    return set(queue.redis.zrange(keys.READY, 0, -1))


def build(queue: Queue, token: str, cpv: str, drone: str = "izar") -> None:
    """Claim until ``cpv`` comes up (it must be ready), complete it, give the others back."""
    taken = []
    while (claim := queue.claim(drone, token)) is not None and claim.cpv != cpv:
        taken.append(claim)
    assert claim is not None, f"{cpv} is not ready"
    assert queue.complete(cpv, drone, token, claim.lease, 1.0) == "ok"
    for other in taken:
        queue.release(other.cpv, drone, token, other.lease, "test")
