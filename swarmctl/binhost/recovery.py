"""Put a PKGDIR right after a crash: run once when the binhost starts.

A publish links the verified file into place and then rewrites the index, both under
the index lock. Killed between the two (kill -9, power cut), it leaves a package file
the index does not list, and its upload's ``.part`` temp file. Left alone, the file
blocks the drone's retry and the temp file stays forever. At start, under the same
lock:

- every package file missing from the index is checked again (Manifest, content
  policy, and a path that matches what the package says it is): a file that passes
  is indexed -- the interrupted publish is finished; one that does not is moved to
  ``.swarm-quarantine/`` (hidden from clients, kept for a person to look at);
- every ``.part`` upload file nobody holds locked (its receiver is gone: a live
  upload holds an ``flock`` on its temp file) is removed, as are temp index files
  (``.Packages.*.tmp``) an interrupted index write left.

The drone's retry of the interrupted upload then finds its own file published and is
accepted (:meth:`swarmctl.binhost.publish.Publisher.receive`), which completes the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from swarmctl.atoms import split_cpv
from swarmctl.binhost.gpkg import GPKG_SUFFIX, GpkgError, GpkgInfo, inspect_gpkg
from swarmctl.binhost.index import INDEX_NAME, FileDigests, _package_files, make_entry
from swarmctl.binhost.publish import Publisher, tmp_dir_lock

logger = logging.getLogger("swarmctl.binhost.recovery")

#: Where files that failed the check are moved (hidden: never served).
QUARANTINE_DIR = ".swarm-quarantine"


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
    with publisher.store.locked() as index:
        for path in sorted(_package_files(pkgdir)):
            rel_path = path.relative_to(pkgdir).as_posix()
            if rel_path in index.entries:
                continue
            info, problem = _check(publisher, path, rel_path)
            if info is not None:
                index.add(make_entry(info, rel_path, FileDigests.of(path), int(path.stat().st_mtime)))
                report.indexed.append(rel_path)
                logger.warning("recovery: indexed %s (published, but the index write was interrupted)", rel_path)
            else:
                _quarantine(pkgdir, path, rel_path)
                report.quarantined.append(rel_path)
                logger.warning("recovery: moved unindexed %s to %s/: %s", rel_path, QUARANTINE_DIR, problem)
        if report.indexed:
            publisher.store.save(index)
        for temp in sorted(pkgdir.glob(f".{INDEX_NAME}.*.tmp")):
            temp.unlink(missing_ok=True)
            report.temp_removed.append(temp.name)
    report.temp_removed += _remove_stale_parts(publisher.tmp_dir)
    if report.changed:
        logger.warning("binhost recovery in %s: %s", pkgdir, report.summary())
    return report


def _check(publisher: Publisher, path: Path, rel_path: str) -> tuple[GpkgInfo | None, str]:
    """``(info, "")`` if ``path`` is a package the binhost would publish at ``rel_path``,
    else ``(None, why not)``."""
    try:
        info = inspect_gpkg(path, limits=publisher.policy.limits)
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
        for part in sorted(tmp_dir.glob("*.part")):
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
