"""Drone side of an upload: send one package to the binhost, with retries.

:class:`BinhostClient.upload` streams the file with ``Expect: 100-continue`` (a
refusal -- wrong token, not the owner, too large -- arrives before the body is
sent), retries transient failures with exponential backoff and full jitter
(:mod:`swarmctl.backoff`), and always returns an :class:`UploadVerdict`: network,
DNS and HTTP problems become one-line messages, never exceptions.

:class:`BinhostPublisher` adapts it to the drone daemon's ``Publisher`` protocol.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import select
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmctl.backoff import delays
from swarmctl.binhost.server import UPLOAD_PATH
from swarmctl.targets import DEFAULT_TARGET, split_job

logger = logging.getLogger("swarmctl.binhost.client")

#: Refusal codes worth another attempt (the next try may well succeed).
RETRYABLE_CODES = frozenset({"busy", "unavailable", "timeout", "truncated", "io_error", "network",
                             "checksum_mismatch", "server_error", "no_signing_key"})
_CHUNK = 256 * 1024
_CONTINUE_WAIT = 3.0


@dataclass(frozen=True)
class UploadVerdict:
    """What the binhost (or the network) said about an upload.

    Attributes:
        accepted: The package is published.
        code: ``published`` or the refusal code (``unauthorized``, ``not_owner``,
            ``duplicate``, ``checksum_mismatch``, ``bad_package``, ``cpv_mismatch``,
            ``too_large``..., or ``network`` when no reply came).
        reason: One line for logs and users.
        status: HTTP status, None without a reply.
        attempts: Attempts made.
        payload: The binhost's JSON reply (``path``, ``build_id``, ``queue``...).
    """

    accepted: bool
    code: str
    reason: str
    status: int | None = None
    attempts: int = 1
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def retryable(self) -> bool:
        """Whether another attempt could succeed."""
        if self.code == "insufficient_storage":
            return False  # the binhost's disk does not free itself in seconds: the job is built again later
        return not self.accepted and (self.code in RETRYABLE_CODES or (self.status or 0) >= 500)

    @property
    def fault(self) -> str:
        """Whose fault a permanent refusal is: ``build`` when the package itself was refused
        (its content policy: every drone would build the same thing), else ``drone``."""
        return "build" if self.code in PACKAGE_REFUSALS else "drone"


class BinhostClient:
    """Uploads packages for one drone."""

    def __init__(self, url: str, drone: str, token: str, *, attempts: int = 5, base_delay: float = 0.5,
                 max_delay: float = 30.0, timeout: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """Args:
            url: Binhost base URL (``http://host:port``).
            drone: This drone's name.
            token: Its enrollment token.
            attempts: Tries per upload (transient failures only).
            base_delay: First backoff delay; doubles up to ``max_delay``, jittered.
            max_delay: Longest wait between tries.
            timeout: Socket timeout per connect/read/write.
            sleep: Injected for tests.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"binhost URL must be http(s)://host[:port], got {url!r}")
        self.url = url
        self._parts = parts
        self.drone = drone
        self.token = token
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.sleep = sleep

    def upload(self, path: Path, cpv: str, lease: str, *, sha256: str, size: int | None = None,
               duration: float = 0.0, usage: tuple[int, int] = (0, 0), target: str = "") -> UploadVerdict:
        """Upload ``path`` as the build of ``cpv`` for build ``target`` ('' the farm's only one) under
        ``lease``; retry transient failures. The binhost publishes it into that target's area.

        Returns:
            The final verdict (accepted, refused, or network failure after all attempts).
        """
        waits = delays(self.base_delay, self.max_delay)
        verdict = UploadVerdict(False, "network", "not attempted")
        for attempt in range(1, self.attempts + 1):
            verdict = self._attempt(Path(path), cpv, lease, sha256, size, duration, attempt, usage, target)
            if verdict.accepted or not verdict.retryable or attempt == self.attempts:
                break
            wait = next(waits)
            logger.warning("upload of %s failed (%s); retry %d/%d in %.1fs", cpv, verdict.reason, attempt,
                           self.attempts - 1, wait)
            self.sleep(wait)
        return verdict

    def _attempt(self, path: Path, cpv: str, lease: str, sha256: str, size: int | None, duration: float,
                 attempt: int, usage: tuple[int, int] = (0, 0), target: str = "") -> UploadVerdict:
        try:
            actual_size = os.stat(path).st_size
        except OSError as exc:
            return UploadVerdict(False, "local_error", f"cannot read {path}: {exc.strerror or exc}",
                                 attempts=attempt)
        declared = actual_size if size is None else size
        headers = {
            "X-Swarm-Drone": self.drone, "X-Swarm-Token": self.token, "X-Swarm-Lease": lease,
            "X-Swarm-Cpv": cpv, "X-Swarm-Sha256": sha256, "X-Swarm-Duration": f"{duration:.3f}",
            "X-Swarm-Usage": f"{int(usage[0])} {int(usage[1])}",  # peak RSS and disk bytes, for the history
            "Content-Length": str(declared), "Content-Type": "application/x-tar",
            "Expect": "100-continue",
        }
        if target:
            headers["X-Swarm-Target"] = target
        conn = self._connection()
        try:
            conn.putrequest("PUT", self._upload_target(), skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            if _wait_continue(conn):
                _send_file(conn, path, declared)
            response = conn.getresponse()
            return _verdict(response.status, response.read(64 * 1024), attempt)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The server may have refused and closed while we were still sending.
            try:
                response = conn.getresponse()
                return _verdict(response.status, response.read(64 * 1024), attempt)
            except (OSError, http.client.HTTPException):
                return UploadVerdict(False, "network", f"connection to {self.url} lost: {_describe(exc)}",
                                     attempts=attempt)
        except socket.gaierror as exc:
            return UploadVerdict(False, "network", f"cannot resolve {self._parts.hostname}: {_describe(exc)}",
                                 attempts=attempt)
        except (OSError, http.client.HTTPException) as exc:
            return UploadVerdict(False, "network", f"binhost {self.url} unreachable: {_describe(exc)}",
                                 attempts=attempt)
        finally:
            conn.close()

    def published(self, cpv: str, sha256: str) -> bool:
        """Whether the binhost's staging index (where uploads are published) already lists ``cpv``
        with this content: an upload of it would be answered ``duplicate`` (same content).

        Raises:
            OSError: The index could not be fetched (network, HTTP error other than 404).
            ValueError: The index does not parse.
        """
        from swarmctl.binhost.generations import staging_url
        from swarmctl.binhost.index import UPLOAD_SHA256_KEY, PackagesIndex

        try:
            with urllib.request.urlopen(staging_url(self.url) + "/Packages", timeout=self.timeout) as reply:
                text = reply.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:  # nothing published yet
                return False
            raise
        index = PackagesIndex.parse(text)
        return any(sha256 in (index.entries[path].get("SHA256"), index.entries[path].get(UPLOAD_SHA256_KEY))
                   for path in index.paths_of(cpv))

    def _connection(self) -> http.client.HTTPConnection:
        parts = self._parts
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return cls(parts.hostname or "", parts.port, timeout=self.timeout)

    def _upload_target(self) -> str:
        return self._parts.path.rstrip("/") + UPLOAD_PATH


class BinhostPublisher:
    """The drone daemon's ``Publisher``: upload the build, map the verdict to an outcome.

    Outcomes: ``ok`` (published; the binhost completed the job), ``stale`` (the job
    is no longer ours), ``retry-later`` (give the job back unbuilt). The last verdict
    is kept in ``last_verdict`` for logs.
    """

    def __init__(self, client: BinhostClient) -> None:
        self.client = client
        self.last_verdict: UploadVerdict | None = None

    def publish(self, claim: Any, result: Any, duration: float) -> str:
        package, target = split_job(claim.cpv)  # the job's name carries its build target
        artifacts = [a for a in result.artifacts if a.cpv == package]
        if not artifacts:
            self.last_verdict = UploadVerdict(False, "local_error", f"no artifact for {claim.cpv}")
            return "retry-later"
        outcome = "ok"
        for artifact in artifacts:
            verdict = self.client.upload(artifact.path, package, claim.lease, sha256=artifact.sha256,
                                         size=artifact.size, duration=duration,
                                         usage=(result.usage.peak_rss, result.usage.peak_disk),
                                         target="" if target == DEFAULT_TARGET else target)
            self.last_verdict = verdict
            outcome = outcome_of(verdict)
            if outcome != "ok":
                logger.warning("upload of %s: %s", claim.cpv, verdict.reason)
                return outcome
        return outcome


#: Refusals that sending the same file again cannot fix.
PERMANENT_REFUSALS = frozenset({"bad_package", "cpv_mismatch", "too_large", "duplicate", "bad_request", "policy"})
#: Refusals of the package for what it contains: a failed build (two drones block it).
PACKAGE_REFUSALS = frozenset({"policy"})


def outcome_of(verdict: UploadVerdict) -> str:
    """``ok``, ``stale``, ``failed`` or ``retry-later`` for the daemon."""
    if verdict.accepted:
        return "stale" if verdict.payload.get("queue") == "stale" else "ok"
    if verdict.code == "not_owner":
        return "stale"
    if verdict.code == "duplicate" and verdict.payload.get("same_content"):
        return "ok"  # an earlier attempt was published; its reply got lost
    if verdict.code in PERMANENT_REFUSALS:
        return "failed"  # sending the same file again cannot help: report a failed build
    return "retry-later"


def _wait_continue(conn: http.client.HTTPConnection) -> bool:
    """After the headers: True to send the body (100 Continue or no early reply)."""
    sock = conn.sock
    if sock is None:
        return True
    readable, _, _ = select.select([sock], [], [], _CONTINUE_WAIT)
    if not readable:
        return True  # server does not do 100-continue: send anyway (RFC 9110 10.1.1)
    head = sock.recv(64, socket.MSG_PEEK)
    if not head.startswith(b"HTTP/1.1 100") and not head.startswith(b"HTTP/1.0 100"):
        return False  # a final reply: the body is not wanted
    buffered = b""
    while b"\r\n\r\n" not in buffered:
        peek = sock.recv(4096, socket.MSG_PEEK)
        if not peek:
            return False
        end = peek.find(b"\r\n\r\n")
        take = end + 4 if end >= 0 else len(peek)
        buffered += sock.recv(take)
    return True


def _send_file(conn: http.client.HTTPConnection, path: Path, size: int) -> None:
    remaining = size
    with open(path, "rb") as handle:
        while remaining > 0:
            chunk = handle.read(min(_CHUNK, remaining))
            if not chunk:
                break  # file shorter than declared: the server reports it truncated
            conn.send(chunk)
            remaining -= len(chunk)


def _verdict(status: int, body: bytes, attempt: int) -> UploadVerdict:
    try:
        payload = json.loads(body.decode("utf-8", "replace") or "{}")
        if not isinstance(payload, dict):
            payload = {}
    except ValueError:
        payload = {}
    accepted = 200 <= status < 300 and payload.get("status") == "accepted"
    code = str(payload.get("code") or ("published" if accepted else
                                       "server_error" if status >= 500 else f"http_{status}"))
    reason = str(payload.get("reason") or f"HTTP {status}")
    return UploadVerdict(accepted, code, " ".join(reason.split())[:500], status=status, attempts=attempt,
                         payload=payload)


def _describe(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]
