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
   must equal the job's CPV; an upload that already carries a signature is refused
   (only the binhost signs: a foreign signature is never published);
4. the binhost signs the verified temp file with its key (portage's own
   ``update_signature``, :mod:`swarmctl.binhost.signing`); the index entry then
   describes the signed bytes. No usable key: refused as ``no_signing_key`` (the
   drone retries later; nothing unsigned is published);
5. in a group commit under the index lock (:meth:`IndexStore.commit`): the BUILD_ID
   must not be published already, the caller's last-moment check (still the job's
   owner?) must pass, then the file is hard-linked into
   ``PKGDIR/<category>/<pn>/<PF>-<BUILD_ID>.gpkg.tar`` (a link never replaces an
   existing file); the index, with every change of the group, is then written
   atomically (a failed write unlinks the group's files again). A crash leaves at
   worst a package file the index does not list yet, never an entry without its file.

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
from swarmctl.binhost.index import UPLOAD_SHA256_KEY, FileDigests, IndexStore, PackagesIndex, make_entry
from swarmctl.binhost.signing import KeyInfo, Keyring, SigningError, sign_gpkg, signature_present
from swarmctl.exceptions import InvalidAtom, SwarmError

logger = logging.getLogger("swarmctl.binhost.publish")

#: Directory (inside PKGDIR, hidden from clients) where uploads are received.
TMP_DIR_NAME = ".swarm-tmp"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 256 * 1024
#: Seconds a looked-up signing key is reused before gpg is asked again.
_KEY_CACHE_SECONDS = 5.0


class PublishRefused(SwarmError):
    """An upload was refused; ``code`` is a stable machine-readable reason.

    Codes: ``bad_request``, ``too_large``, ``truncated``,
    ``checksum_mismatch``, ``bad_package``, ``cpv_mismatch``, ``duplicate``,
    ``not_owner``, ``timeout``, ``io_error``, ``no_signing_key``.
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
        sha256: SHA256 of the file as served (signed).
        size: File size in bytes (signed).
        signed_by: Fingerprint of the signing key, None when published unsigned.
    """

    cpv: str
    build_id: int | None
    rel_path: str
    sha256: str
    size: int
    signed_by: str | None = None

    def as_artifact(self) -> dict[str, object]:
        """The artifact record given to ``Queue.complete``."""
        return {"path": self.rel_path, "sha256": self.sha256, "size": self.size,
                "build_id": self.build_id}


class Publisher:
    """Verifies and publishes uploads into one PKGDIR (thread- and process-safe)."""

    def __init__(self, pkgdir: Path, max_bytes: int = 4 * 1024**3,
                 store: IndexStore | None = None, keyring: Keyring | None = None) -> None:
        """Args:
            pkgdir: The binhost directory (created if missing).
            max_bytes: Largest package accepted.
            store: Shared index store (one per PKGDIR per process); made if None.
            keyring: The binhost's signing keyring; every package is signed with its
                current key. None publishes unsigned (tools and tests only: the
                binhost server always passes one).
        """
        self.pkgdir = Path(pkgdir).absolute()
        self.max_bytes = max_bytes
        self.store = store if store is not None else IndexStore(self.pkgdir)
        self.keyring = keyring
        self.tmp_dir = self.pkgdir / TMP_DIR_NAME
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._key: tuple[float, KeyInfo] | None = None

    def signing_key(self) -> KeyInfo | None:
        """The key that signs the next package (None when publishing unsigned).

        Raises:
            PublishRefused: ``no_signing_key`` -- none is usable; nothing may be published.
        """
        if self.keyring is None:
            return None
        cached = self._key
        now = time.monotonic()
        if cached is not None and now - cached[0] < _KEY_CACHE_SECONDS and cached[1].usable():
            return cached[1]
        try:
            key = self.keyring.signing_key()
        except SigningError as exc:
            self._key = None
            raise PublishRefused("no_signing_key", f"binhost cannot sign: {exc}") from None
        self._key = (now, key)
        return key

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
            if signature_present(temp):
                raise PublishRefused("bad_package", "upload already carries a signature: only the binhost "
                                     "signs packages (drones must not set FEATURES=binpkg-signing)")
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
            signed_by, served = self._sign(temp, digests)
            return self._commit(temp, info, served, commit_check, upload_sha256=digests.sha256,
                                signed_by=signed_by)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def publish_file(self, path: Path, cpv: str, *, sha256: str | None = None) -> Published:
        """Publish a local file (e.g. from ``quickpkg``); same checks as an upload."""
        digests = FileDigests.of(Path(path))
        with open(path, "rb") as body:
            return self.receive(body, cpv, sha256 or digests.sha256, digests.size)

    def _sign(self, temp: Path, digests: FileDigests) -> tuple[str | None, FileDigests]:
        """Sign the verified temp file in place; the digests of what will be served."""
        key = self.signing_key()
        if key is None or self.keyring is None:
            return None, digests
        try:
            sign_gpkg(temp, self.keyring, key)
        except SigningError as exc:
            self._key = None  # look the key up again next time (expired? revoked?)
            raise PublishRefused("no_signing_key", f"binhost cannot sign: {exc}") from None
        return key.fingerprint, FileDigests.of(temp)

    def _commit(self, temp: Path, info: GpkgInfo, digests: FileDigests,
                commit_check: Callable[[], str | None] | None, *, upload_sha256: str,
                signed_by: str | None) -> Published:
        category, pn, _ = split_cpv(info.cpv)
        rel_path = f"{category}/{pn}/{info.pf}-{info.build_id}{GPKG_SUFFIX}"
        dest = self.pkgdir / rel_path

        def apply(index: PackagesIndex) -> Callable[[], None]:
            """Runs in a group commit, under the index lock: link the file, add its entry."""
            # The path is made of CPV and BUILD_ID: one lookup, whatever the size of the index.
            if rel_path in index.entries or dest.exists():
                existing = index.entries.get(rel_path, {})
                raise PublishRefused("duplicate", f"{info.cpv} build {info.build_id} is already published",
                                     same_content=upload_sha256 in (existing.get("SHA256"),
                                                                    existing.get(UPLOAD_SHA256_KEY)))
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

            def unlink() -> None:
                with contextlib.suppress(OSError):
                    dest.unlink()

            try:
                os.chmod(dest, 0o644)
                entry = make_entry(info, rel_path, digests, int(os.stat(dest).st_mtime))
                if upload_sha256 != digests.sha256:
                    entry[UPLOAD_SHA256_KEY] = upload_sha256  # recognizes a replayed upload
                index.add(entry)
            except BaseException:
                unlink()
                raise
            return unlink

        self.store.commit(apply)
        logger.info("published %s (%d bytes%s)", rel_path, digests.size,
                    f", signed by {signed_by}" if signed_by else ", unsigned")
        return Published(cpv=info.cpv, build_id=info.build_id, rel_path=rel_path, sha256=digests.sha256,
                         size=digests.size, signed_by=signed_by)


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
