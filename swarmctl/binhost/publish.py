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
4. the content policy (:mod:`swarmctl.binhost.policy`) passes: metadata values and
   every image member, streamed with caps on the unpacked sizes;
5. the binhost signs the verified temp file with its key (portage's own
   ``update_signature``, :mod:`swarmctl.binhost.signing`); the index entry then
   describes the signed bytes (and keeps the upload's SHA256 as ``UPLOAD_SHA256``).
   No usable key: refused as ``no_signing_key`` (the drone retries later; nothing
   unsigned is published);
6. in a group commit under the index lock (:meth:`IndexStore.commit`): the BUILD_ID
   must not be published already, the caller's last-moment check (still the job's
   owner?) must pass, then the file is hard-linked into
   ``PKGDIR/<category>/<pn>/<PF>-<BUILD_ID>.gpkg.tar`` (a link never replaces an
   indexed file); the index, with every change of the group, is then written
   atomically (a failed write unlinks the group's files again). A crash leaves at
   worst a package file the index does not list yet, never an entry without its file.

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
import glob
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
from swarmctl.binhost.gpkg import GPKG_SUFFIX, GpkgError, GpkgInfo, PolicyViolation, inspect_gpkg, manifest_content
from swarmctl.binhost.index import UPLOAD_SHA256_KEY, FileDigests, IndexStore, PackagesIndex, make_entry
from swarmctl.binhost.policy import ContentPolicy
from swarmctl.binhost.signing import KeyInfo, Keyring, SigningError, sign_gpkg, signature_present
from swarmctl.exceptions import InvalidAtom, SwarmError

logger = logging.getLogger("swarmctl.binhost.publish")

#: Directory (inside PKGDIR, hidden from clients) where uploads are received.
TMP_DIR_NAME = ".swarm-tmp"
#: Test hook: ``linked`` or ``indexed`` makes a publish stop there (kill -9 tests).
PAUSE_ENV = "SWARM_TEST_BINHOST_PAUSE"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 256 * 1024
#: Seconds a looked-up signing key is reused before gpg is asked again.
_KEY_CACHE_SECONDS = 5.0


class PublishRefused(SwarmError):
    """An upload was refused; ``code`` is a stable machine-readable reason.

    Codes: ``bad_request``, ``too_large``, ``truncated``,
    ``checksum_mismatch``, ``bad_package``, ``cpv_mismatch``, ``policy`` (the content
    policy refused it), ``duplicate``, ``not_owner``, ``timeout``, ``io_error``,
    ``no_signing_key``.
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
                 store: IndexStore | None = None, keyring: Keyring | None = None,
                 policy: ContentPolicy | None = None) -> None:
        """Args:
            pkgdir: The binhost directory (created if missing).
            max_bytes: Largest package accepted.
            store: Shared index store (one per PKGDIR per process); made if None.
            keyring: The binhost's signing keyring; every package is signed with its
                current key. None publishes unsigned (tools and tests only: the
                binhost server always passes one).
            policy: The content policy (default: the documented defaults).
        """
        self.pkgdir = Path(pkgdir).absolute()
        self.max_bytes = max_bytes
        self.store = store if store is not None else IndexStore(self.pkgdir)
        self.keyring = keyring
        self.policy = policy if policy is not None else ContentPolicy.default()
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
        fd, temp, lock_fd = self._temp_file(sha256)
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
            if signature_present(temp):
                raise PublishRefused("bad_package", "upload already carries a signature: only the binhost "
                                     "signs packages (drones must not set FEATURES=binpkg-signing)")
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
            retried = self._accept_retry(info, digests.sha256, commit_check, temp)
            if retried is not None:
                return retried
            signed_by, served = self._sign(temp, digests)
            # Signing replaced the temp file: lock the new one, so recovery sees it as live.
            lock_fd = _relock(temp, lock_fd)
            return self._commit(temp, info, served, commit_check, upload_sha256=digests.sha256,
                                signed_by=signed_by)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            os.close(lock_fd)

    def _temp_file(self, sha256: str) -> tuple[int, Path, int]:
        """A new locked temp file: (write fd, path, lock fd); the lock marks it as live.

        Its name carries the declared sha256: after a crash between link and index,
        recovery reads the upload's digest from it (the signed file is the same inode).
        """
        try:
            with tmp_dir_lock(self.tmp_dir):
                fd, name = tempfile.mkstemp(prefix=f"upload-{sha256}-", suffix=".part", dir=self.tmp_dir)
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

    def _sign(self, temp: Path, digests: FileDigests) -> tuple[str | None, FileDigests]:
        """Sign the verified temp file in place; the digests of what will be served."""
        key = self.signing_key()
        if key is None or self.keyring is None:
            return None, digests
        try:
            sign_gpkg(temp, self.keyring, key)
            return key.fingerprint, FileDigests.of(temp)
        except OSError as exc:
            raise _io_refusal("cannot sign the upload", exc) from None
        except SigningError as exc:
            self._key = None  # look the key up again next time (expired? revoked?)
            raise PublishRefused("no_signing_key", f"binhost cannot sign: {exc}") from None
        finally:  # portage's own temp copy (``<temp>.<pid>...``) when signing failed
            for leftover in temp.parent.glob(glob.escape(temp.name) + ".*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def _commit(self, temp: Path, info: GpkgInfo, digests: FileDigests,
                commit_check: Callable[[], str | None] | None, *, upload_sha256: str,
                signed_by: str | None) -> Published:
        rel_path = _rel_path(info)
        dest = self.pkgdir / rel_path
        retried: list[Published] = []

        def apply(index: PackagesIndex) -> Callable[[], None] | None:
            """Runs in a group commit, under the index lock: link the file, add its entry."""
            # The path is made of CPV and BUILD_ID: one lookup, whatever the size of the index.
            existing = self._published_entry(index, rel_path, upload_sha256)
            if existing is not None:  # the same upload, published meanwhile by a concurrent retry
                if commit_check is not None and (problem := commit_check()):
                    raise PublishRefused("not_owner", problem)
                logger.info("%s was already published (retry of an interrupted publish)", rel_path)
                retried.append(Published(cpv=info.cpv, build_id=info.build_id, rel_path=rel_path,
                                         sha256=existing.get("SHA256", upload_sha256),
                                         size=int(existing.get("SIZE", 0))))
                return None
            if rel_path in index.entries or info.build_id in index.build_ids(info.cpv):
                raise PublishRefused("duplicate", f"{info.cpv} build {info.build_id} is already published",
                                     same_content=False)
            if commit_check is not None:
                problem = commit_check()
                if problem:
                    raise PublishRefused("not_owner", problem)
            self._link(temp, dest, rel_path, digests)
            _test_pause("linked")

            def unlink() -> None:
                with contextlib.suppress(OSError):
                    dest.unlink()
                    for directory in (dest.parent, dest.parent.parent):  # only if now empty
                        directory.rmdir()

            try:
                os.chmod(dest, 0o644)
                entry = make_entry(info, rel_path, digests, int(os.stat(dest).st_mtime))
                if upload_sha256 != digests.sha256:
                    entry[UPLOAD_SHA256_KEY] = upload_sha256  # recognizes a replayed upload
                index.add(entry)
            except BaseException as exc:
                unlink()
                if isinstance(exc, OSError):
                    raise _io_refusal(f"cannot index {rel_path}", exc) from None
                raise
            return unlink

        try:
            self.store.commit(apply)
        except OSError as exc:  # the index write failed (a full disk): the group's files are unlinked
            raise _io_refusal(f"cannot index {rel_path}", exc) from None
        if retried:
            return retried[0]
        _test_pause("indexed")
        logger.info("published %s (%d bytes%s)", rel_path, digests.size,
                    f", signed by {signed_by}" if signed_by else ", unsigned")
        return Published(cpv=info.cpv, build_id=info.build_id, rel_path=rel_path, sha256=digests.sha256,
                         size=digests.size, signed_by=signed_by)

    def _accept_retry(self, info: GpkgInfo, upload_sha256: str,
                      commit_check: Callable[[], str | None] | None, upload: Path) -> Published | None:
        """This very upload if it is published already, else None.

        A retry after a reply, or the queue's completion, was lost to a crash: the
        publish is done (nothing is signed or written again); the caller completes the job.
        """
        rel_path = _rel_path(info)
        if self._this_upload(self.store.snapshot(), rel_path, upload_sha256, upload) is None:
            return None
        with self.store.locked() as index:
            existing = self._this_upload(index, rel_path, upload_sha256, upload)
            if existing is None:
                return None
            if commit_check is not None and (problem := commit_check()):
                raise PublishRefused("not_owner", problem)
        logger.info("%s was already published (retry of an interrupted publish)", rel_path)
        return Published(cpv=info.cpv, build_id=info.build_id, rel_path=rel_path,
                         sha256=existing.get("SHA256", upload_sha256), size=int(existing.get("SIZE", 0)))

    def _this_upload(self, index: PackagesIndex, rel_path: str, upload_sha256: str,
                     upload: Path) -> dict[str, str] | None:
        """The entry at ``rel_path`` if it is the publish of this (verified) upload, else None.

        Known by the upload's SHA256. A signing binhost whose recovery indexed the file
        after a power cut took the upload's temp file (and with it the upload's SHA256:
        the entry has no UPLOAD_SHA256) knows it by content instead: the published file's
        members are the upload's, with the binhost's signatures added.
        """
        entry = self._published_entry(index, rel_path, upload_sha256)
        if (entry is None and self.keyring is not None and rel_path in index.entries
                and UPLOAD_SHA256_KEY not in index.entries[rel_path]):
            content = manifest_content(upload)
            if content and content == manifest_content(self.pkgdir / rel_path):
                return index.entries[rel_path]
        return entry

    @staticmethod
    def _published_entry(index: PackagesIndex, rel_path: str, upload_sha256: str) -> dict[str, str] | None:
        """The index entry at ``rel_path`` if it is this very upload (signed or not), else None."""
        entry = index.entries.get(rel_path)
        if entry is not None and upload_sha256 in (entry.get("SHA256"), entry.get(UPLOAD_SHA256_KEY)):
            return entry
        return None

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


def _rel_path(info: GpkgInfo) -> str:
    """Where a package is published, relative to PKGDIR."""
    category, pn, _ = split_cpv(info.cpv)
    return f"{category}/{pn}/{info.pf}-{info.build_id}{GPKG_SUFFIX}"


def _relock(temp: Path, lock_fd: int) -> int:
    """Move the live-upload ``flock`` to the file now at ``temp``; the new lock fd."""
    try:
        if os.stat(temp).st_ino == os.fstat(lock_fd).st_ino:
            return lock_fd  # not replaced (unsigned): already locked
        new_fd = os.open(temp, os.O_RDONLY)
    except OSError as exc:
        raise _io_refusal("cannot store the upload", exc) from None
    fcntl.flock(new_fd, fcntl.LOCK_EX)  # another inode: no conflict with our old lock
    os.close(lock_fd)
    return new_fd


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
