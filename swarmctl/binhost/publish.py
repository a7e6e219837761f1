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
4. under the index lock: the BUILD_ID must not be published already, the caller's
   last-moment check (still the job's owner?) must pass, then the file is hard-linked
   into ``PKGDIR/<category>/<pn>/<PF>-<BUILD_ID>.gpkg.tar`` (a link never replaces an
   existing file) and the index is rewritten atomically.

The temp file is removed on every path out.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path
from typing import IO, BinaryIO

from swarmctl.atoms import split_cpv, validate_cpv
from swarmctl.binhost.gpkg import GPKG_SUFFIX, GpkgError, GpkgInfo, inspect_gpkg
from swarmctl.binhost.index import FileDigests, IndexStore, make_entry
from swarmctl.exceptions import InvalidAtom, SwarmError

logger = logging.getLogger("swarmctl.binhost.publish")

#: Directory (inside PKGDIR, hidden from clients) where uploads are received.
TMP_DIR_NAME = ".swarm-tmp"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 256 * 1024


class PublishRefused(SwarmError):
    """An upload was refused; ``code`` is a stable machine-readable reason.

    Codes: ``bad_request``, ``too_large``, ``truncated``,
    ``checksum_mismatch``, ``bad_package``, ``cpv_mismatch``, ``duplicate``,
    ``not_owner``, ``timeout``, ``io_error``.
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
                 store: IndexStore | None = None) -> None:
        """Args:
            pkgdir: The binhost directory (created if missing).
            max_bytes: Largest package accepted.
            store: Shared index store (one per PKGDIR per process); made if None.
        """
        self.pkgdir = Path(pkgdir).absolute()
        self.max_bytes = max_bytes
        self.store = store if store is not None else IndexStore(self.pkgdir)
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
        fd, temp_name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.tmp_dir)
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as sink:
                digests = _copy_exact(body, sink, size, deadline)
                sink.flush()
                os.fsync(sink.fileno())
            if digests.sha256 != sha256:
                raise PublishRefused("checksum_mismatch",
                                     f"body sha256 {digests.sha256} != declared {sha256}")
            try:
                info = inspect_gpkg(temp)
            except GpkgError as exc:
                detail = str(exc).replace(temp.name, "upload")
                raise PublishRefused("bad_package", f"gpkg verification failed: {detail}") from None
            if info.cpv != cpv:
                raise PublishRefused("cpv_mismatch", f"package is {info.cpv}, the job is {cpv}")
            if info.build_id is None:
                raise PublishRefused("bad_package", f"{cpv} has no BUILD_ID "
                                     "(the drone needs FEATURES=binpkg-multi-instance)")
            return self._commit(temp, info, digests, commit_check)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

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
        with self.store.locked() as index:
            if info.build_id in index.build_ids(info.cpv) or dest.exists():
                existing = index.entries.get(rel_path, {})
                raise PublishRefused("duplicate", f"{info.cpv} build {info.build_id} is already published",
                                     same_content=existing.get("SHA256") == digests.sha256)
            if commit_check is not None:
                problem = commit_check()
                if problem:
                    raise PublishRefused("not_owner", problem)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(temp, dest)
            except FileExistsError:
                raise PublishRefused("duplicate", f"{rel_path} already exists") from None
            except OSError as exc:
                raise PublishRefused("io_error", f"cannot publish {rel_path}: {exc.strerror}") from None
            try:
                os.chmod(dest, 0o644)
                mtime = int(os.stat(dest).st_mtime)
                index.add(make_entry(info, rel_path, digests, mtime))
                self.store.save(index)
            except BaseException:
                with contextlib.suppress(OSError):
                    dest.unlink()
                raise
        logger.info("published %s (%d bytes)", rel_path, digests.size)
        return Published(cpv=info.cpv, build_id=info.build_id, rel_path=rel_path, sha256=digests.sha256,
                         size=digests.size)


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
        sink.write(chunk)
        remaining -= len(chunk)
    return FileDigests(size=size, md5=md5.hexdigest(), sha1=sha1.hexdigest(), sha256=sha256.hexdigest())
