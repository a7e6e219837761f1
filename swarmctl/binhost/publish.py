"""Accept one uploaded package into a PKGDIR: verify everything, then publish atomically.

Order of checks, cheapest first; nothing reaches the published tree or the index
unless all of them pass:

1. the declared CPV is a valid CPV, the declared SHA256 is 64 hex digits, the
   declared size is positive and within the limit;
2. the body is streamed (never held in memory) into a temp file under
   ``PKGDIR/.swarm-tmp`` -- same file system, so the final rename is atomic -- and
   must be exactly the declared size (short: truncated; the stream is never read
   past the declared size) with exactly the declared SHA256;
3. portage verifies the gpkg's internal Manifest, and the CPV inside the package
   must equal the job's CPV;
4. the content policy (:mod:`swarmctl.binhost.policy`) passes: metadata values and
   every image member, streamed with caps on the unpacked sizes;
5. under the index lock: the BUILD_ID must not be published already, the caller's
   last-moment check (still the job's owner?) must pass, then the file is hard-linked
   into ``PKGDIR/<category>/<pn>/<PF>-<BUILD_ID>.gpkg.tar`` (a link never replaces an
   existing file) and the index is rewritten atomically.

The temp file is removed on every path out. While an upload is received its temp
file is ``flock``-ed, so :mod:`swarmctl.binhost.recovery` can tell a live upload from
the leftover of a killed server. A publish interrupted after the link (kill -9, power
cut) is completed by the recovery at the next start, and a retry of the same upload
is then accepted (the same file under the same name is the same publish). A full disk
(or any other I/O error) is refused as ``io_error``: the drone keeps the job and
retries, nothing half-written stays behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path
from typing import IO, BinaryIO

from swarmctl.atoms import split_cpv, validate_cpv
from swarmctl.binhost.gpkg import GPKG_SUFFIX, GpkgError, GpkgInfo, PolicyViolation, inspect_gpkg
from swarmctl.binhost.index import FileDigests, IndexStore, make_entry
from swarmctl.binhost.policy import ContentPolicy
from swarmctl.exceptions import InvalidAtom, SwarmError

logger = logging.getLogger("swarmctl.binhost.publish")

#: Directory (inside PKGDIR, hidden from clients) where uploads are received.
TMP_DIR_NAME = ".swarm-tmp"
#: Test hook: ``linked`` or ``indexed`` makes a publish stop there (kill -9 tests).
PAUSE_ENV = "SWARM_TEST_BINHOST_PAUSE"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 256 * 1024


class PublishRefused(SwarmError):
    """An upload was refused; ``code`` is a stable machine-readable reason.

    Codes: ``bad_request``, ``too_large``, ``truncated``,
    ``checksum_mismatch``, ``bad_package``, ``cpv_mismatch``, ``policy`` (the content
    policy refused it), ``duplicate``, ``not_owner``, ``timeout``, ``io_error``.
    """

    def __init__(self, code: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class Published:
    """A package that is now on the binhost and in its index.

    Attributes:
        cpv: Package version.
        build_id: Its BUILD_ID.
        rel_path: Path relative to PKGDIR (the index's ``PATH``).
        sha256: SHA256 of the file.
        size: File size in bytes.
    """

    cpv: str
    build_id: int | None
    rel_path: str
    sha256: str
    size: int

    def as_artifact(self) -> dict[str, object]:
        """The artifact record given to ``Queue.complete``."""
        return {"path": self.rel_path, "sha256": self.sha256, "size": self.size,
                "build_id": self.build_id}


class Publisher:
    """Verifies and publishes uploads into one PKGDIR (thread- and process-safe)."""

    def __init__(self, pkgdir: Path, max_bytes: int = 4 * 1024**3,
                 store: IndexStore | None = None, policy: ContentPolicy | None = None) -> None:
        """Args:
            pkgdir: The binhost directory (created if missing).
            max_bytes: Largest package accepted.
            store: Shared index store (one per PKGDIR per process); made if None.
            policy: The content policy (default: the documented defaults).
        """
        self.pkgdir = Path(pkgdir).absolute()
        self.max_bytes = max_bytes
        self.store = store if store is not None else IndexStore(self.pkgdir)
        self.policy = policy if policy is not None else ContentPolicy.default()
        self.tmp_dir = self.pkgdir / TMP_DIR_NAME
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def check_declaration(self, cpv: str, sha256: str, size: int) -> str:
        """Validate what an uploader declares, before any body is read.

        Returns:
            The normalized CPV.

        Raises:
            PublishRefused: ``bad_request`` or ``too_large``.
        """
        try:
            cpv = validate_cpv(cpv)
        except InvalidAtom as exc:
            raise PublishRefused("bad_request", str(exc)) from None
        if not _SHA256_RE.match(sha256 or ""):
            raise PublishRefused("bad_request", "declared sha256 must be 64 lowercase hex digits")
        if size <= 0:
            raise PublishRefused("bad_request", f"declared size must be positive, got {size}")
        if size > self.max_bytes:
            raise PublishRefused("too_large", f"package of {size} bytes exceeds the limit of "
                                 f"{self.max_bytes} bytes")
        return cpv

    def receive(
        self,
        body: IO[bytes] | BufferedIOBase,
        cpv: str,
        sha256: str,
        size: int,
        *,
        deadline: float | None = None,
        commit_check: Callable[[], str | None] | None = None,
    ) -> Published:
        """Stream, verify and publish one package.

        Args:
            body: Readable stream positioned at the package's first byte; exactly
                ``size`` bytes are read from it.
            cpv: The job's CPV (the package must be this CPV).
            sha256: Declared SHA256 (lowercase hex).
            size: Declared size.
            deadline: ``time.monotonic()`` value after which reading gives up.
            commit_check: Called under the index lock just before publishing; a
                returned string refuses the upload as ``not_owner`` with that message.

        Returns:
            What was published.

        Raises:
            PublishRefused: Any check failed; PKGDIR and the index are unchanged.
        """
        cpv = self.check_declaration(cpv, sha256, size)
        fd, temp, lock_fd = self._temp_file()
        try:
            with os.fdopen(fd, "wb") as sink:
                digests = _copy_exact(body, sink, size, deadline)
                try:
                    sink.flush()
                    os.fsync(sink.fileno())
                except OSError as exc:
                    raise _io_refusal("cannot store the upload", exc) from None
            if digests.sha256 != sha256:
                raise PublishRefused("checksum_mismatch",
                                     f"body sha256 {digests.sha256} != declared {sha256}")
            try:
                info = inspect_gpkg(temp, limits=self.policy.limits)
                if info.cpv != cpv:
                    raise PublishRefused("cpv_mismatch", f"package is {info.cpv}, the job is {cpv}")
                if info.build_id is None:
                    raise PublishRefused("bad_package", f"{cpv} has no BUILD_ID "
                                         "(the drone needs FEATURES=binpkg-multi-instance)")
                self.policy.check(temp, info)
            except PolicyViolation as exc:
                detail = str(exc).replace(temp.name, "upload")
                raise PublishRefused("policy", f"refused by the binhost's content policy: {detail}") from None
            except GpkgError as exc:
                detail = str(exc).replace(temp.name, "upload")
                raise PublishRefused("bad_package", f"gpkg verification failed: {detail}") from None
            return self._commit(temp, info, digests, commit_check)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            os.close(lock_fd)

    def _temp_file(self) -> tuple[int, Path, int]:
        """A new locked temp file: (write fd, path, lock fd); the lock marks it as live."""
        try:
            with tmp_dir_lock(self.tmp_dir):
                fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.tmp_dir)
                lock_fd = os.open(name, os.O_RDONLY)
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise _io_refusal("cannot store the upload", exc) from None
        return fd, Path(name), lock_fd

    def publish_file(self, path: Path, cpv: str, *, sha256: str | None = None) -> Published:
        """Publish a local file (e.g. from ``quickpkg``); same checks as an upload."""
        digests = FileDigests.of(Path(path))
        with open(path, "rb") as body:
            return self.receive(body, cpv, sha256 or digests.sha256, digests.size)

    def _commit(self, temp: Path, info: GpkgInfo, digests: FileDigests,
                commit_check: Callable[[], str | None] | None) -> Published:
        category, pn, _ = split_cpv(info.cpv)
        rel_path = f"{category}/{pn}/{info.pf}-{info.build_id}{GPKG_SUFFIX}"
        dest = self.pkgdir / rel_path
        published = Published(cpv=info.cpv, build_id=info.build_id, rel_path=rel_path, sha256=digests.sha256,
                              size=digests.size)
        with self.store.locked() as index:
            existing = index.entries.get(rel_path)
            if existing is not None and existing.get("SHA256") == digests.sha256:
                # This very file is published (a retry after a reply, or the queue's completion,
                # was lost to a crash): the publish is done; the caller completes the job.
                if commit_check is not None and (problem := commit_check()):
                    raise PublishRefused("not_owner", problem)
                logger.info("%s was already published (retry of an interrupted publish)", rel_path)
                return published
            if info.build_id in index.build_ids(info.cpv) or existing is not None:
                raise PublishRefused("duplicate", f"{info.cpv} build {info.build_id} is already published",
                                     same_content=False)
            if commit_check is not None:
                problem = commit_check()
                if problem:
                    raise PublishRefused("not_owner", problem)
            self._link(temp, dest, rel_path, digests)
            _test_pause("linked")
            try:
                os.chmod(dest, 0o644)
                mtime = int(os.stat(dest).st_mtime)
                index.add(make_entry(info, rel_path, digests, mtime))
                self.store.save(index)
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    dest.unlink()
                    for directory in (dest.parent, dest.parent.parent):  # only if now empty
                        directory.rmdir()
                if isinstance(exc, OSError):
                    raise _io_refusal(f"cannot index {rel_path}", exc) from None
                raise
            _test_pause("indexed")
        logger.info("published %s (%d bytes)", rel_path, digests.size)
        return published

    def _link(self, temp: Path, dest: Path, rel_path: str, digests: FileDigests) -> None:
        """Hard-link the verified upload into place (under the index lock).

        A file already at ``dest`` while the index does not list it is the leftover of a
        publish killed between link and index: the same bytes are simply adopted; other
        bytes never reached any client (nothing indexed them) and are replaced.
        """
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                if FileDigests.of(dest).sha256 == digests.sha256:
                    logger.warning("%s: adopting the file an interrupted publish left", rel_path)
                    return
                logger.warning("%s: replacing an unindexed leftover with other content", rel_path)
                dest.unlink()
            os.link(temp, dest)
        except FileExistsError:
            raise PublishRefused("duplicate", f"{rel_path} already exists") from None
        except OSError as exc:
            raise _io_refusal(f"cannot publish {rel_path}", exc) from None


def _copy_exact(body: IO[bytes] | BufferedIOBase, sink: BinaryIO, size: int, deadline: float | None) -> FileDigests:
    md5, sha1 = hashlib.md5(usedforsecurity=False), hashlib.sha1(usedforsecurity=False)
    sha256 = hashlib.sha256()
    remaining = size
    while remaining > 0:
        if deadline is not None and time.monotonic() > deadline:
            raise PublishRefused("timeout", f"upload too slow: {size - remaining} of {size} bytes "
                                 "arrived before the deadline")
        try:
            chunk = body.read(min(_CHUNK, remaining))
        except TimeoutError:
            raise PublishRefused("timeout", f"upload stalled after {size - remaining} of {size} bytes") \
                from None
        except OSError as exc:
            raise PublishRefused("truncated", f"upload broke off after {size - remaining} of {size} bytes: "
                                 f"{exc.strerror or exc}") from None
        if not chunk:
            raise PublishRefused("truncated", f"body ended after {size - remaining} of {size} declared bytes")
        for digest in (md5, sha1, sha256):
            digest.update(chunk)
        try:
            sink.write(chunk)
        except OSError as exc:
            raise _io_refusal("cannot store the upload", exc) from None
        remaining -= len(chunk)
    return FileDigests(size=size, md5=md5.hexdigest(), sha1=sha1.hexdigest(), sha256=sha256.hexdigest())


@contextlib.contextmanager
def tmp_dir_lock(tmp_dir: Path) -> Iterator[None]:
    """Held while a temp file is created and locked, so recovery never sees one unlocked."""
    fd = os.open(tmp_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _io_refusal(what: str, exc: OSError) -> PublishRefused:
    """An I/O failure as a retryable refusal (ENOSPC: the binhost's disk is full)."""
    full = " (the binhost's disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    logger.error("%s: %s%s", what, exc.strerror or exc, full)
    return PublishRefused("io_error", f"{what}: {exc.strerror or exc}{full}")


def _test_pause(point: str) -> None:
    """Test hook: with ``SWARM_TEST_BINHOST_PAUSE=<point>`` stop here for a kill -9."""
    if os.environ.get(PAUSE_ENV) == point:
        logger.warning("%s=%s: pausing", PAUSE_ENV, point)
        print(f"paused at {point}", file=sys.stderr, flush=True)
        time.sleep(3600)
