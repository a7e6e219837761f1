"""The binhost's HTTP server: verified uploads in, read-only PKGDIR out.

``PUT /upload`` (``POST`` too) with these headers::

    X-Swarm-Drone     drone name            X-Swarm-Token   its enrollment token
    X-Swarm-Lease     the job's lease       X-Swarm-Cpv     the job's CPV
    X-Swarm-Sha256    declared checksum     Content-Length  declared size
    X-Swarm-Duration  build seconds (optional, passed to Queue.complete)

Everything that can be checked from the headers -- declaration, size limit, token
(``DroneRegistry.authenticate``) and ownership (``Queue.owner_of``) -- is checked
before a byte of the body is read; with ``Expect: 100-continue`` the refusal arrives
before the client sends the body at all. The body is then handed to
:class:`~swarmctl.binhost.publish.Publisher`, with a per-read socket timeout and an
overall deadline (size / minimum rate) against slow senders. Ownership is checked
once more under the index lock just before publishing; on success the job is
completed in the queue with the artifact.

Slow or idle clients cannot hold the server: every connection must deliver its request
line and headers within ``header_timeout`` seconds in total (the idle wait between
keep-alive requests counts too), an upload body must keep averaging ``min_upload_rate``
after a ``read_timeout`` grace (checked on every socket read, not only between chunks),
and at most ``max_connections`` connections (``max_connections_per_address`` from one
address) are served at once; the next one gets an immediate 503 and is closed, so a
flood of idle sockets costs no threads and cannot lock other hosts out.

Before it serves, the server finishes or undoes what a killed predecessor left in PKGDIR
(:func:`swarmctl.binhost.recovery.recover`). A package the content policy refuses is
answered ``policy`` (422) and shown as an ``upload-refused`` event; an I/O error such as a
full disk is ``io_error`` (500), which the drone retries.

Replies are one JSON object on one line: ``{"status": "accepted"|"refused",
"code": ..., "reason": ...}``.

Any other ``GET``/``HEAD`` serves files below PKGDIR for portage clients (``Packages``,
``Packages.gz``, ``KEYS.asc``, packages) with Last-Modified, and 304 Not Modified
when If-Modified-Since is not older than the file; hidden entries (the upload temp
dir, the lock), directories, symlinks leaving PKGDIR and ``..`` are refused.
``/staging/`` serves the staging index (``/staging/Packages``, ``/staging/Packages.gz``,
what drones build against: swarmctl.binhost.generations) the same way, and every
other path below it from PKGDIR (the files are shared); before the first promote the
staging index is ``PKGDIR/Packages``.

An upload that would leave less than ``min_free_bytes`` free on PKGDIR's file system is
refused before its body is read: 507 ``insufficient_storage`` with the free space in the
reason; the drone gives the job back to be built again later (not a failure).
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import json
import logging
import math
import os
import posixpath
import select
import shutil
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from swarmctl.binhost.generations import STAGING_URL_PATH, staging_index
from swarmctl.binhost.index import COMPRESSED_NAME, INDEX_NAME, UPLOAD_SHA256_KEY, IndexStore
from swarmctl.binhost.policy import ContentPolicy
from swarmctl.binhost.publish import Publisher, PublishRefused
from swarmctl.binhost.recovery import RecoveryReport, recover
from swarmctl.binhost.signing import Keyring
from swarmctl.exceptions import SwarmError
from swarmctl.targets import DEFAULT_TARGET, Target, job_name, several

if TYPE_CHECKING:  # the gate is handed both; importing them here would load the queue for every server
    from swarmctl.queue import Queue
    from swarmctl.registry import DroneRegistry

logger = logging.getLogger("swarmctl.binhost.server")

UPLOAD_PATH = "/upload"
_STATUS_OF_CODE = {
    "bad_request": HTTPStatus.BAD_REQUEST,
    "length_required": HTTPStatus.LENGTH_REQUIRED,
    "unauthorized": HTTPStatus.UNAUTHORIZED,
    "not_owner": HTTPStatus.CONFLICT,
    "duplicate": HTTPStatus.CONFLICT,
    "too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    "truncated": HTTPStatus.BAD_REQUEST,
    "timeout": HTTPStatus.REQUEST_TIMEOUT,
    "checksum_mismatch": HTTPStatus.UNPROCESSABLE_ENTITY,
    "bad_package": HTTPStatus.UNPROCESSABLE_ENTITY,
    "cpv_mismatch": HTTPStatus.UNPROCESSABLE_ENTITY,
    "policy": HTTPStatus.UNPROCESSABLE_ENTITY,
    "busy": HTTPStatus.SERVICE_UNAVAILABLE,
    "unavailable": HTTPStatus.SERVICE_UNAVAILABLE,
    "no_signing_key": HTTPStatus.SERVICE_UNAVAILABLE,
    "io_error": HTTPStatus.INTERNAL_SERVER_ERROR,
    "insufficient_storage": HTTPStatus.INSUFFICIENT_STORAGE,
}
_CONTENT_TYPES = {".tar": "application/x-tar", ".gz": "application/gzip", ".asc": "application/pgp-keys",
                  "": "text/plain; charset=utf-8"}
_LINGER_SECONDS = 2.0
#: Seconds an upload waits for a free slot (max_uploads) before it is answered busy.
_UPLOAD_SLOT_WAIT = 1.0
#: Refusals of what an authenticated owner uploaded that become events (the package is at fault).
_EVENT_CODES = frozenset({"policy", "bad_package", "cpv_mismatch"})
_LINGER_BYTES = 4 * 1024 * 1024


class Gate(Protocol):
    """Who may upload what: the queue and drone registry, or a stand-in in tests."""

    def authenticate(self, drone: str, token: str) -> bool: ...

    def owner_of(self, cpv: str) -> tuple[str | None, str | None]: ...

    def complete(self, cpv: str, drone: str, token: str, lease: str, duration: float,
                 artifact: dict[str, Any], usage: tuple[int, int] = (0, 0)) -> str: ...


class QueueGate:
    """The real :class:`Gate`: ``DroneRegistry`` for tokens, ``Queue`` for ownership."""

    def __init__(self, registry: DroneRegistry, queue: Queue) -> None:
        self.registry = registry
        self.queue = queue

    def authenticate(self, drone: str, token: str) -> bool:
        return bool(self.registry.authenticate(drone, token))

    def owner_of(self, cpv: str) -> tuple[str | None, str | None]:
        return self.queue.owner_of(cpv)

    def complete(self, cpv: str, drone: str, token: str, lease: str, duration: float,
                 artifact: dict[str, Any], usage: tuple[int, int] = (0, 0)) -> str:
        return str(self.queue.complete(cpv, drone, token, lease, duration, artifact, usage))

    def refused(self, code: str) -> None:
        """Count a refused upload for the metrics (best effort: Redis may be the problem)."""
        from swarmctl.metrics import record_upload_rejection

        with contextlib.suppress(Exception):
            record_upload_rejection(self.queue.redis, code)

    def package_refused(self, cpv: str, drone: str, code: str, reason: str) -> None:
        """An ``upload-refused`` event: the owner's package was refused for what it is."""
        from swarmctl.events import Events

        with contextlib.suppress(Exception):
            Events(self.queue.redis, self.queue.config.queue.events_max).emit(
                "upload-refused", job=cpv, drone=drone, reason=f"{code}: {reason}"[:500])


@dataclass(frozen=True)
class ServerSettings:
    """Tunables of the binhost server (see the ``binhost.*`` config settings).

    Attributes:
        max_upload_bytes: Largest package accepted (413 above it).
        read_timeout: Seconds a single socket read may stall.
        min_upload_rate: Bytes/second an upload must average (deadline =
            read_timeout + size / rate).
        max_uploads: Concurrent uploads; more get 503.
        header_timeout: Seconds a connection has to deliver a request line and all
            its headers (also the keep-alive idle limit between requests).
        max_connections: Connections served at once; more are answered 503 and closed.
        max_connections_per_address: Connections one client address may hold at once,
            so one host's idle sockets cannot take every slot.
        index_ttl: TTL written into the index header (clients skip refreshes within it).
        policy: The content policy packages must pass (default: the documented defaults).
        min_free_bytes: Free space PKGDIR's file system must keep after an upload; below
            it uploads are refused with 507 ``insufficient_storage`` (0: no check).
    """

    max_upload_bytes: int = 4 * 1024**3
    read_timeout: float = 30.0
    min_upload_rate: float = 64 * 1024
    max_uploads: int = 8
    header_timeout: float = 10.0
    max_connections: int = 64
    max_connections_per_address: int = 16
    index_ttl: int = 300
    policy: ContentPolicy | None = None
    min_free_bytes: int = 0


class _DeadlineReader(io.RawIOBase):
    """The socket as the handler reads it, with a deadline on every ``recv``.

    A plain socket timeout bounds one ``recv`` only: a client sending one byte just
    before each timeout keeps a ``readline`` (or a buffered ``read``) going forever.
    Here each ``recv`` gets at most the time left until ``deadline``, and in body mode
    the bytes received must keep up with ``min_rate`` after ``grace`` seconds.
    Falling behind raises :class:`TimeoutError`, which ends the request.
    """

    def __init__(self, sock: socket.socket, idle_timeout: float) -> None:
        super().__init__()
        self.sock = sock
        self.idle_timeout = idle_timeout
        self.deadline: float | None = None
        self.rate: tuple[float, float, float] | None = None  # (start, min bytes/s, grace s)
        self.received = 0

    def arm(self, seconds: float) -> None:
        """Everything read from now on must arrive within ``seconds``."""
        self.deadline, self.rate = time.monotonic() + seconds, None

    def body(self, deadline: float | None, min_rate: float, grace: float) -> None:
        """Body mode: an overall deadline plus a running minimum rate."""
        self.deadline, self.rate, self.received = deadline, (time.monotonic(), min_rate, grace), 0

    def disarm(self) -> None:
        self.deadline, self.rate = None, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        now = time.monotonic()
        timeout = self.idle_timeout
        if self.deadline is not None:
            left = self.deadline - now
            if left <= 0:
                raise TimeoutError("deadline passed")
            timeout = min(timeout, left)
        if self.rate is not None:
            start, min_rate, grace = self.rate
            if self.received < min_rate * (now - start - grace):
                raise TimeoutError(f"too slow: {self.received} bytes in {now - start:.1f} s")
        self.sock.settimeout(max(timeout, 0.001))
        count = self.sock.recv_into(buffer)
        self.received += count
        return count


class _Refusal(Exception):
    def __init__(self, code: str, reason: str, **details: Any) -> None:
        super().__init__(reason)
        self.code, self.reason, self.details = code, reason, details


class BinhostServer(ThreadingHTTPServer):
    """The server; one per PKGDIR."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog is 5: under a connection flood the kernel would drop
    # everyone's handshakes (legitimate clients included) instead of letting us answer 503.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], pkgdir: Path, gate: Gate,
                 settings: ServerSettings | None = None, keyring: Keyring | None = None,
                 targets: dict[str, Target] | None = None) -> None:
        """``targets``: the farm's build targets (swarmctl.targets). With several, target T's area is
        PKGDIR/T/ (served at /T/); with one (or None), the area is PKGDIR itself, as always."""
        self.pkgdir = Path(pkgdir).absolute()
        self.gate = gate
        self.settings = settings or ServerSettings()
        self.publishers = self._areas(targets or {DEFAULT_TARGET: Target(DEFAULT_TARGET)}, keyring)
        #: The only area's publisher with a single target; the first area's with several.
        self.publisher = next(iter(self.publishers.values()))
        # What a killed predecessor left: unindexed published files, stale upload temp files.
        self.recovery = RecoveryReport()
        for publisher in self.publishers.values():
            try:
                self.recovery = recover(publisher)
            except (OSError, SwarmError) as exc:  # e.g. a full disk: serve anyway, uploads get io_error
                logger.error("binhost recovery in %s did not finish: %s", publisher.pkgdir, exc)
        self.upload_slots = threading.BoundedSemaphore(self.settings.max_uploads)
        self._connections: dict[str, int] = {}
        self._connections_lock = threading.Lock()
        self._last_cap_warning = -10.0
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_close(self) -> None:
        super().server_close()
        for publisher in self.publishers.values():
            publisher.store.close()

    def _areas(self, targets: dict[str, Target], keyring: Keyring | None) -> dict[str, Publisher]:
        """One publisher per target area, its index header carrying the target's facts."""
        publishers = {}
        for name, target in targets.items():
            area = self.pkgdir / name if several(targets) else self.pkgdir
            publishers[name] = Publisher(area, self.settings.max_upload_bytes, keyring=keyring,
                                         store=IndexStore(area, ttl=self.settings.index_ttl,
                                                          facts=target.index_header() if len(targets) > 1 or
                                                          name != DEFAULT_TARGET else {}),
                                         policy=self.settings.policy)
        return publishers

    def publish_keys(self, keyring: Keyring) -> None:
        """KEYS.asc into every target's area too (beside PKGDIR's), so a client of a target finds
        the keys at its own binhost URL. Raises what Keyring.publish raises."""
        for publisher in self.publishers.values():
            if publisher.pkgdir != self.pkgdir:
                keyring.publish(publisher.pkgdir)

    def area(self, target: str) -> Publisher | None:
        """The publisher of ``target``'s area ('' is the only target's), or None for no such target."""
        if not target and len(self.publishers) == 1:
            return self.publisher
        return self.publishers.get(target or DEFAULT_TARGET)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread, or refuse it at once when at a cap."""
        if not self._take_slot(client_address[0]):
            _refuse_connection(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._give_slot(client_address[0])
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._give_slot(client_address[0])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-reply is routine, not a traceback on stderr."""
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            logger.debug("connection from %s dropped: %s", client_address[0], sys.exc_info()[1])
            return
        super().handle_error(request, client_address)

    def open_connections(self) -> int:
        """Connections being served right now."""
        with self._connections_lock:
            return sum(self._connections.values())

    def _take_slot(self, address: str) -> bool:
        settings = self.settings
        with self._connections_lock:
            held = self._connections.get(address, 0)
            if held >= max(1, settings.max_connections_per_address) or \
                    sum(self._connections.values()) >= max(1, settings.max_connections):
                now = time.monotonic()
                if now - self._last_cap_warning >= 10.0:  # at most one line per 10 s under a flood
                    self._last_cap_warning = now
                    logger.warning("refusing connections (from %s and maybe others): connection limit "
                                   "reached", address)
                return False
            self._connections[address] = held + 1
            return True

    def _give_slot(self, address: str) -> None:
        with self._connections_lock:
            held = self._connections.get(address, 0) - 1
            if held > 0:
                self._connections[address] = held
            else:
                self._connections.pop(address, None)

    @property
    def url(self) -> str:
        """Base URL clients use (``http://host:port``)."""
        host, port = self.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: BinhostServer
    protocol_version = "HTTP/1.1"
    server_version = "build-swarm-binhost"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.settings.read_timeout)
        self._reader = _DeadlineReader(self.connection, self.server.settings.read_timeout)
        self.rfile.close()  # the plain makefile() reader; ours replaces it
        self.rfile = io.BufferedReader(self._reader)
        self._preflight: tuple[str, str, str, str, int] | None = None

    def handle_one_request(self) -> None:
        # The request line and the headers (and the keep-alive idle wait) share one deadline.
        self._reader.arm(self.server.settings.header_timeout)
        self._preflight = None  # never carried over to the next request on a keep-alive connection
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._reader.disarm()
        self.connection.settimeout(self.server.settings.read_timeout)
        return ok

    # -- uploads -------------------------------------------------------------------

    def handle_expect_100(self) -> bool:
        if self._is_upload():
            try:
                self._preflight = self._check_headers()
            except _Refusal as refusal:
                self._reply_refusal(refusal, linger=False)
                return False
        return super().handle_expect_100()

    def do_PUT(self) -> None:
        if not self._is_upload():
            self._reply_json(HTTPStatus.NOT_FOUND, "refused", "not_found", f"no upload endpoint at {self.path}")
            return
        # A short wait: a client whose previous upload was just answered may be back before
        # that handler let go of its slot; a real excess of uploads is still refused.
        if not self.server.upload_slots.acquire(timeout=_UPLOAD_SLOT_WAIT):
            self._reply_refusal(_Refusal("busy", "too many uploads in progress; retry later"))
            return
        try:
            self._upload()
        finally:
            self.server.upload_slots.release()

    do_POST = do_PUT

    def _upload(self) -> None:
        try:
            cpv, drone, token, lease, size = self._preflight or self._check_headers()
        except _Refusal as refusal:
            self._reply_refusal(refusal)
            return
        publisher, job = self._area_of(cpv)
        sha256 = self.headers.get("X-Swarm-Sha256", "").strip().lower()
        duration = _float(self.headers.get("X-Swarm-Duration"))
        usage = _usage(self.headers.get("X-Swarm-Usage"))
        settings = self.server.settings
        deadline = time.monotonic() + settings.read_timeout + size / max(1.0, settings.min_upload_rate)
        # Checked on every recv: a trickling body cannot stretch one buffered read past it.
        self._reader.body(deadline, settings.min_upload_rate, settings.read_timeout)

        def still_owner() -> str | None:
            owner, current = self.server.gate.owner_of(job)
            if owner != drone or current != lease:
                return f"{drone} no longer owns {job} (lost it during the upload)"
            return None

        try:
            published = publisher.receive(self.rfile, cpv, sha256, size, deadline=deadline,
                                                      commit_check=still_owner)
        except PublishRefused as exc:
            # A refused body may be partly unread: close the connection after replying.
            unread = exc.code not in ("checksum_mismatch", "bad_package", "cpv_mismatch", "policy", "duplicate",
                                      "not_owner")
            if exc.code in _EVENT_CODES:
                report = getattr(self.server.gate, "package_refused", None)
                if report is not None:
                    report(job, drone, exc.code, str(exc))
            self._reply_refusal(_Refusal(exc.code, str(exc), **exc.details), linger=unread)
            return
        outcome = "unknown"
        try:
            outcome = self.server.gate.complete(job, drone, token, lease, duration, published.as_artifact(), usage)
        except Exception as exc:  # published is published; the drone can report again
            logger.warning("published %s but Queue.complete failed: %s", published.rel_path, exc)
            outcome = f"error: {_one_line(exc)}"
        logger.info("accepted %s from %s (queue: %s)", published.rel_path, drone, outcome)
        self._reply_json(HTTPStatus.CREATED, "accepted", "published", f"{cpv} published", path=published.rel_path,
                         build_id=published.build_id, sha256=published.sha256, size=published.size,
                         queue=outcome)

    def _check_headers(self) -> tuple[str, str, str, str, int]:
        headers = self.headers
        drone = headers.get("X-Swarm-Drone", "").strip()
        token = headers.get("X-Swarm-Token", "").strip()
        lease = headers.get("X-Swarm-Lease", "").strip()
        cpv = headers.get("X-Swarm-Cpv", "").strip()
        sha256 = headers.get("X-Swarm-Sha256", "").strip().lower()
        missing = [name for name, value in (("X-Swarm-Drone", drone), ("X-Swarm-Token", token),
                                            ("X-Swarm-Lease", lease), ("X-Swarm-Cpv", cpv),
                                            ("X-Swarm-Sha256", sha256)) if not value]
        if missing:
            raise _Refusal("bad_request", f"missing header(s): {', '.join(missing)}")
        if headers.get("Transfer-Encoding"):
            raise _Refusal("length_required", "chunked uploads are not accepted; send Content-Length")
        length = headers.get("Content-Length")
        if length is None:
            raise _Refusal("length_required", "Content-Length is required")
        try:
            size = int(length)
        except ValueError:
            raise _Refusal("bad_request", f"bad Content-Length {length!r}") from None
        target = headers.get("X-Swarm-Target", "").strip()
        publisher = self.server.area(target)
        if publisher is None:
            raise _Refusal("bad_request", f"this binhost has no area for target {target[:40]!r}")
        try:
            cpv = publisher.check_declaration(cpv, sha256, size)
            publisher.signing_key()  # no key: refuse before the body is sent
        except PublishRefused as exc:
            raise _Refusal(exc.code, str(exc)) from None
        _, job = self._area_of(cpv)
        try:
            if not self.server.gate.authenticate(drone, token):
                raise _Refusal("unauthorized", f"drone {drone!r} is not enrolled or its token is wrong")
            owner, current = self.server.gate.owner_of(job)
        except _Refusal:
            raise
        except Exception as exc:
            raise _Refusal("unavailable", f"queue unavailable: {_one_line(exc)}") from None
        if owner == drone and current == lease:
            self._check_space(size)
        if owner != drone or current != lease:
            if self._already_published(publisher, cpv, sha256):
                # A replay of an accepted upload whose reply was lost: say so, idempotently.
                raise _Refusal("duplicate", f"{cpv} with this sha256 is already published", same_content=True)
            if owner != drone:
                raise _Refusal("not_owner", f"{job} is not delegated to {drone}")
            raise _Refusal("not_owner", f"lease {lease!r} is not the current lease of {job}")
        return cpv, drone, token, lease, size

    def _area_of(self, cpv: str) -> tuple[Publisher, str]:
        """The upload's area (X-Swarm-Target; checked by _check_headers) and its job in the queue."""
        target = self.headers.get("X-Swarm-Target", "").strip()
        publisher = self.server.area(target)
        assert publisher is not None  # _check_headers refused an unknown target
        name = next(n for n, p in self.server.publishers.items() if p is publisher)
        return publisher, job_name(cpv, name)

    def _check_space(self, size: int) -> None:
        """Refuse (507) an upload that would leave less than ``min_free_bytes`` free."""
        floor = self.server.settings.min_free_bytes
        if floor <= 0:
            return
        try:
            free = shutil.disk_usage(self.server.pkgdir).free
        except OSError:
            return
        if free - size < floor:
            raise _Refusal("insufficient_storage",
                           f"binhost low on disk: {free // 2**20} MiB free in {self.server.pkgdir}, "
                           f"{size // 2**20} MiB upload would go below binhost.min_free_mb "
                           f"({floor // 2**20} MiB); retry later")

    def _already_published(self, publisher: Publisher, cpv: str, sha256: str) -> bool:
        index = publisher.store.snapshot()
        entries = [index.entries.get(path) or {} for path in index.paths_of(cpv)]
        return any(sha256 in (entry.get("SHA256"), entry.get(UPLOAD_SHA256_KEY)) for entry in entries)

    def _is_upload(self) -> bool:
        return self.command in ("PUT", "POST") and urllib.parse.urlsplit(self.path).path == UPLOAD_PATH

    # -- downloads -----------------------------------------------------------------

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        target = self._resolve(self.path)
        if target is None:
            self._reply_json(HTTPStatus.NOT_FOUND, "refused", "not_found", "no such file")
            return
        try:
            handle = open(target, "rb")  # noqa: SIM115 - closed below after sendfile
        except OSError:
            self._reply_json(HTTPStatus.NOT_FOUND, "refused", "not_found", "no such file")
            return
        with handle:
            st = os.fstat(handle.fileno())
            if _not_modified_since(self.headers.get("If-Modified-Since"), int(st.st_mtime)):
                # The index's mtime is its TIMESTAMP, which portage sends back: an unchanged
                # index costs one small reply.
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
                self.end_headers()
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", _CONTENT_TYPES.get(target.suffix, "application/octet-stream"))
            self.send_header("Content-Length", str(st.st_size))
            self.send_header("Last-Modified", self.date_time_string(int(st.st_mtime)))
            self.end_headers()
            if not head:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.flush()
                    self.connection.sendfile(handle)

    def _resolve(self, raw_path: str) -> Path | None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(raw_path).path)
        if "\x00" in path or "\\" in path:
            return None
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts or any(p == ".." or p.startswith(".") for p in parts):
            return None
        if posixpath.normpath("/" + "/".join(parts)) != "/" + "/".join(parts):
            return None
        base = self.server.pkgdir
        if len(self.server.publishers) > 1 and parts[0] in self.server.publishers and len(parts) > 1:
            base, parts = self.server.publishers[parts[0]].pkgdir, parts[1:]  # URL/T/...: target T's area
        if parts[0] == STAGING_URL_PATH and len(parts) > 1:
            # URL/staging/: the staging index (drones), over the same shared files.
            if parts[1:] in ([INDEX_NAME], [COMPRESSED_NAME]):
                return staging_index(base).with_name(parts[1])
            parts = parts[1:]
        root = base.resolve()
        candidate = (root / Path(*parts)).resolve()
        try:
            candidate.relative_to(root)
        except ValueError:
            return None
        return candidate if candidate.is_file() else None

    # -- replies -------------------------------------------------------------------

    def _reply_refusal(self, refusal: _Refusal, linger: bool = True) -> None:
        """Reply and close the connection (part of the body may still be on its way)."""
        status = _STATUS_OF_CODE.get(refusal.code, HTTPStatus.BAD_REQUEST)
        logger.info("refused upload from %s: %s (%s)", self.client_address[0], refusal.reason, refusal.code)
        count = getattr(self.server.gate, "refused", None)
        if count is not None:
            count(refusal.code)
        self._reply_json(status, "refused", refusal.code, refusal.reason, close=True, **refusal.details)
        if linger:
            self._linger()

    def _reply_json(self, status: HTTPStatus, verdict: str, code: str, reason: str, close: bool = False,
                    **extra: Any) -> None:
        payload = {"status": verdict, "code": code, "reason": _one_line(reason), **extra}
        body = (json.dumps(payload, sort_keys=True) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _linger(self) -> None:
        """Half-close and drain briefly so the client can read the refusal (no RST)."""
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_SECONDS
            drained = 0
            while drained < _LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.client_address[0], format % args)


def _refuse_connection(sock: socket.socket) -> None:
    """Answer 503 without reading the request (runs in the accept loop: never blocks long)."""
    body = (json.dumps({"code": "busy", "reason": "too many connections; retry later", "status": "refused"},
                       sort_keys=True) + "\n").encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        sock.settimeout(0.2)
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def parse_listen(text: str) -> tuple[str, int]:
    """``("127.0.0.1", 8770)`` from ``127.0.0.1:8770`` (``[::1]:8770`` for IPv6).

    Raises:
        ValueError: Not ``HOST:PORT`` with a port in 0..65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def make_server(pkgdir: Path, listen: str, gate: Gate, settings: ServerSettings | None = None,
                keyring: Keyring | None = None, targets: dict[str, Target] | None = None) -> BinhostServer:
    """Bind a :class:`BinhostServer` (port 0 picks a free port; see ``.url``).

    ``keyring`` signs every published package; None publishes unsigned (tests only). ``targets``:
    the farm's build targets (an area each when several).
    """
    host, port = parse_listen(listen)
    return BinhostServer((host, port), pkgdir, gate, settings, keyring, targets)


def _not_modified_since(header: str | None, mtime: int) -> bool:
    """Whether a file last modified at ``mtime`` is unchanged since the If-Modified-Since date."""
    if not header:
        return False
    try:
        since = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return False
    if since.tzinfo is None:
        return False
    return mtime <= since.timestamp()


def _float(text: str | None) -> float:
    try:
        value = float(text) if text else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value >= 0 else 0.0  # never inf/nan into the queue


def _usage(text: str | None) -> tuple[int, int]:
    """The drone's 'peak RSS, disk' header: two whole byte counts, else nothing measured."""
    parts = (text or "").split()
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 18 for p in parts):
        return 0, 0
    return int(parts[0]), int(parts[1])


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:500]
