"""A TCP proxy between one client (a drone) and Redis that can lose Redis's replies.

Every connection accepted on the listening address gets its own connection to Redis; bytes pass
both ways unchanged until the proxy is armed. Armed with a pattern (e.g. the CLAIM script's SHA),
the next client->Redis chunk holding it starts a window in which every Redis->client chunk, on
every connection of that client, is read and thrown away: the command ran in Redis, its reply
never arrives, the connection stays up, and the client times out, exactly as when a network drops
the reply. Chunks are dropped whole, so a reply is lost entirely or delivered entirely.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class ReplyDropper:
    """A reply-dropping TCP proxy (see the module doc); ``start()``, then ``close()``."""

    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0),
                 connect_timeout: float = 5.0) -> None:
        self.target = target
        self.connect_timeout = connect_timeout
        self._server = socket.create_server(listen, reuse_port=False)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pattern: bytes | None = None
        self._window = 0.0
        self._drop_until = 0.0
        self._triggered = threading.Event()
        self.triggered_at: float | None = None  # wall clock, when the armed pattern went by
        self.dropped_chunks = 0
        self.dropped_bytes = 0
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="reply-dropper", daemon=True)

    def start(self) -> ReplyDropper:
        self._thread.start()
        return self

    def __enter__(self) -> ReplyDropper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)
        self._thread.join(timeout=5)

    # -- the fault ---------------------------------------------------------------------------
    def arm(self, pattern: bytes, seconds: float) -> None:
        """Drop replies for ``seconds`` from the moment ``pattern`` next goes client->Redis."""
        with self._lock:
            self._pattern, self._window = pattern, seconds
            self._triggered.clear()
            self.triggered_at = None

    def disarm(self) -> None:
        with self._lock:
            self._pattern = None

    def wait_triggered(self, timeout: float) -> float | None:
        """When the armed pattern went by (wall clock), or None after ``timeout``."""
        self._triggered.wait(timeout)
        return self.triggered_at

    @property
    def dropping(self) -> bool:
        return time.monotonic() < self._drop_until

    # -- plumbing ----------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            _shut(client)  # as a client connecting directly would see: no connection
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets |= {client, upstream}
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if replies:
                    if self.dropping:
                        with self._lock:
                            self.dropped_chunks += 1
                            self.dropped_bytes += len(chunk)
                        continue
                else:
                    self._watch(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _shut(sock)
            with self._lock:
                self._sockets -= {src, dst}

    def _watch(self, chunk: bytes) -> None:
        with self._lock:
            if self._pattern is None or self._pattern not in chunk:
                return
            self._pattern = None
            self._drop_until = time.monotonic() + self._window
            self.triggered_at = time.time()
        self._triggered.set()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
