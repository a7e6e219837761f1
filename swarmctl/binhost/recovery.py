"""Put a PKGDIR right after a crash: run once when the binhost starts.

A publish links the verified file into place and then rewrites the index, both under
the index lock. Killed between the two (kill -9, power cut), it leaves a package file
the index does not list, and its upload's ``.part`` temp file. Left alone, the file
blocks the drone's retry and the temp file stays forever. At start, under the same
lock:

- every package file missing from the index is checked again as a client would
  (Manifest, and the binhost's signature when it signs), then the content policy
  and a path that matches what the package says it is: a file that passes is
  indexed -- the interrupted publish is finished; one that does not is moved to
  ``.swarm-quarantine/`` (hidden from clients, kept for a person to look at). The
  upload's own SHA256 (the drone's retry declares it; signing changed the bytes) is
  read from the name of the upload's leftover temp file, which is the same inode
  (a power cut may take that file: the retry is then known by its content);
- every ``.part`` upload file nobody holds locked (its receiver is gone: a live
  upload holds an ``flock`` on its temp file) is removed, with the copy portage's
  signing was writing next to it (``<upload>.part.<pid>...``), as are temp index files
  (``.Packages.*.tmp``) an interrupted index write left.

The drone's retry of the interrupted upload then finds its own file published and is
accepted (:meth:`swarmctl.binhost.publish.Publisher.receive`), which completes the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmctl.atoms import split_cpv
from swarmctl.binhost.gpkg import GPKG_SUFFIX, GpkgError, GpkgInfo, inspect_gpkg
from swarmctl.binhost.index import INDEX_NAME, STAGING_DIR, UPLOAD_SHA256_KEY, FileDigests, _package_files, make_entry
from swarmctl.binhost.publish import Publisher, tmp_dir_lock
from swarmctl.binhost.signing import VerifyKeyring

logger = logging.getLogger("swarmctl.binhost.recovery")

#: Where files that failed the check are moved (hidden: never served).
QUARANTINE_DIR = ".swarm-quarantine"
_PART_SHA256 = re.compile(r"^upload-([0-9a-f]{64})-")


@dataclass
class RecoveryReport:
    """What :func:`recover` did (paths relative to PKGDIR)."""

    indexed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    temp_removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.indexed or self.quarantined or self.temp_removed)

    def summary(self) -> str:
        return (f"{len(self.indexed)} unindexed package(s) indexed, {len(self.quarantined)} quarantined, "
                f"{len(self.temp_removed)} stale temp file(s) removed")


def recover(publisher: Publisher) -> RecoveryReport:
    """Finish or undo what a crashed publisher left in its PKGDIR (see the module doc)."""
    report = RecoveryReport()
    pkgdir = publisher.pkgdir
    with publisher.store.locked() as index, contextlib.ExitStack() as stack:
        settings: Any = None
        uploads: dict[tuple[int, int], str] | None = None
        for path in sorted(_package_files(pkgdir)):
            rel_path = path.relative_to(pkgdir).as_posix()
            if rel_path in index.entries:
                continue
            if uploads is None:  # first unindexed file: what checking needs
                uploads = dict(_upload_digests(publisher.tmp_dir))
                if publisher.keyring is not None:
                    settings = stack.enter_context(
                        VerifyKeyring(publisher.keyring.export(), publisher.keyring.gpg)).settings()
            info, problem = _check(publisher, path, rel_path, settings)
            if info is not None:
                digests = FileDigests.of(path)
                entry = make_entry(info, rel_path, digests, int(path.stat().st_mtime))
                stat = path.stat()
                upload_sha256 = uploads.get((stat.st_dev, stat.st_ino))
                if upload_sha256 and upload_sha256 != digests.sha256:
                    entry[UPLOAD_SHA256_KEY] = upload_sha256  # the drone's retry is recognized
                index.add(entry)
                report.indexed.append(rel_path)
                logger.warning("recovery: indexed %s (published, but the index write was interrupted)", rel_path)
            else:
                _quarantine(pkgdir, path, rel_path)
                report.quarantined.append(rel_path)
                logger.warning("recovery: moved unindexed %s to %s/: %s", rel_path, QUARANTINE_DIR, problem)
        if report.indexed:
            publisher.store.save(index)
        for directory in (pkgdir, pkgdir / STAGING_DIR):  # the published index's and staging's
            for temp in sorted(directory.glob(f".{INDEX_NAME}.*.tmp")):
                temp.unlink(missing_ok=True)
                report.temp_removed.append(temp.name)
    report.temp_removed += _remove_stale_parts(publisher.tmp_dir)
    if report.changed:
        logger.warning("binhost recovery in %s: %s", pkgdir, report.summary())
    return report


def _check(publisher: Publisher, path: Path, rel_path: str, settings: Any) -> tuple[GpkgInfo | None, str]:
    """``(info, "")`` if ``path`` is a package the binhost would publish at ``rel_path``,
    else ``(None, why not)``. ``settings`` (a verify keyring's) also require its signature."""
    try:
        info = inspect_gpkg(path, settings, limits=publisher.policy.limits)
        if info.build_id is None:
            return None, "no BUILD_ID"
        category, pn, _ = split_cpv(info.cpv)
        expected = f"{category}/{pn}/{info.pf}-{info.build_id}{GPKG_SUFFIX}"
        if rel_path != expected:
            return None, f"the package is {info.cpv} build {info.build_id}, which belongs at {expected}"
        publisher.policy.check(path, info)
    except GpkgError as exc:  # PolicyViolation included
        return None, str(exc)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    return info, ""


def _upload_digests(tmp_dir: Path) -> Iterator[tuple[tuple[int, int], str]]:
    """``((st_dev, st_ino), declared sha256)`` of every upload temp file (named for its sha256)."""
    for part in tmp_dir.glob("upload-*.part") if tmp_dir.is_dir() else ():
        match = _PART_SHA256.match(part.name)
        with contextlib.suppress(OSError):
            if match:
                stat = part.stat()
                yield (stat.st_dev, stat.st_ino), match.group(1)


def _quarantine(pkgdir: Path, path: Path, rel_path: str) -> None:
    dest = pkgdir / QUARANTINE_DIR / rel_path
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)


def _remove_stale_parts(tmp_dir: Path) -> list[str]:
    """Remove upload temp files whose receiver is gone (nobody holds their flock)."""
    removed: list[str] = []
    if not tmp_dir.is_dir():
        return removed
    # Under the temp-dir lock no receiver is between creating and locking its file.
    with tmp_dir_lock(tmp_dir):
        for part in sorted(tmp_dir.glob("*.part")) + sorted(tmp_dir.glob("*.part.*")):
            if not part.name.endswith(".part"):  # a signing copy: live while its upload is
                upload = part.with_name(part.name[:part.name.index(".part") + len(".part")])
                if upload.exists():
                    continue  # judged with its upload: removed below with it if stale
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                removed.append(f"{tmp_dir.name}/{part.name}")
                continue
            try:
                fd = os.open(part, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live upload
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                removed.append(f"{tmp_dir.name}/{part.name}")
            finally:
                os.close(fd)
    return removed
