"""A drone's disk: the free space it reports, the low-disk gate, and the retention of its files.

A drone below ``drone.min_free_gb`` in its build dir or PKGDIR claims nothing and shows
``low-disk`` (not a failure: no job is failed, the breaker is untouched) until space returns.
Between builds it keeps its PKGDIR and DISTDIR within their limits, oldest files first; build
logs have their own limits (swarmctl.drone.logs). Nothing here runs during a build.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from swarmctl.humanize import size

log = logging.getLogger("swarmctl.drone")

GIB = 1024**3
#: The directories whose free space a drone reports (and the low-disk gate watches).
WATCHED = ("build", "pkgdir")
#: Package files in a PKGDIR (gpkg, and the older xpak formats); the Packages index is never one.
PACKAGE_SUFFIXES = (".gpkg.tar", ".tbz2", ".xpak")


def free_bytes(path: Path) -> int | None:
    """Free bytes (for an unprivileged user) on the filesystem holding ``path``, or its nearest
    existing parent; None when that cannot be read."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def oldest_first(directory: Path, suffixes: tuple[str, ...] | None = None) -> list[tuple[Path, int, float]]:
    """(path, size, mtime) of the regular files under ``directory``, oldest first; hidden files and
    directories (locks, partial downloads, the binhost's temp dir) are left out."""
    found = []
    for path in directory.rglob("*"):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if suffixes is not None and not path.name.endswith(suffixes):
            continue
        try:
            st = path.lstat()
        except OSError:
            continue
        if path.is_file() and not path.is_symlink():
            found.append((path, st.st_size, st.st_mtime))
    return sorted(found, key=lambda item: (item[2], item[0].name))


def prune(files: Iterable[tuple[Path, int, float]], max_bytes: int | None, max_count: int | None = None,
          keep: Iterable[Path] = ()) -> list[Path]:
    """Delete the oldest of ``files`` (oldest first) until at most ``max_count`` files and
    ``max_bytes`` remain (None: no such limit), never a path in ``keep``. Returns what was deleted."""
    entries = list(files)
    spared = set(keep)
    total = sum(entry[1] for entry in entries)
    excess = len(entries) - max_count if max_count is not None else 0
    removed: list[Path] = []
    for path, bytes_, _ in entries:
        if excess <= 0 and (max_bytes is None or total <= max_bytes):
            break
        if path in spared:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot delete %s: %s", path, exc.strerror or exc)
            continue
        removed.append(path)
        excess -= 1
        total -= bytes_
    return removed


@dataclass(frozen=True)
class DiskState:
    """Free bytes per watched directory (None: unknown) and why the drone is low on disk, if it is."""

    free: dict[str, int | None]
    low: str | None = None


class DroneDisk:
    """The directories of one drone: ``build`` (where builds run), ``pkgdir``, ``distdir``.

    ``dirs`` names those this drone has (a command builder has no PKGDIR); limits of 0 mean none.
    """

    def __init__(self, dirs: Mapping[str, Path], min_free_bytes: int, pkgdir_max_bytes: int = 0,
                 distfiles_max_bytes: int = 0) -> None:
        self.dirs = dict(dirs)
        self.min_free_bytes = min_free_bytes
        self.pkgdir_max_bytes = pkgdir_max_bytes
        self.distfiles_max_bytes = distfiles_max_bytes

    def check(self) -> DiskState:
        free = {role: free_bytes(self.dirs[role]) if role in self.dirs else None for role in WATCHED}
        short = [f"{role} {self.dirs[role]}: {size(value)} free" for role, value in free.items()
                 if value is not None and value < self.min_free_bytes]
        low = f"{'; '.join(short)} ({size(self.min_free_bytes)} needed)" if short else None
        return DiskState(free, low)

    def tidy(self) -> list[Path]:
        """Keep PKGDIR and DISTDIR within their limits, oldest files first; returns what went.

        Called only between builds (the daemon builds one job at a time), so no file of a build
        in progress is ever deleted.

        A deleted package leaves its entry in the local Packages index; portage drops entries
        whose file is gone when it reads the index, and rewrites the index with the next build.
        """
        removed: list[Path] = []
        for role, limit, suffixes in (("pkgdir", self.pkgdir_max_bytes, PACKAGE_SUFFIXES),
                                      ("distdir", self.distfiles_max_bytes, None)):
            directory = self.dirs.get(role)
            if not limit or directory is None or not directory.is_dir():
                continue
            try:
                gone = prune(oldest_first(directory, suffixes), limit)
            except OSError as exc:  # an unreadable tree must not stop the drone: say so, build on
                log.warning("cannot keep %s %s within %s: %s", role, directory, size(limit), exc.strerror or exc)
                continue
            if gone:
                log.info("%s over %s: deleted the %d oldest file(s)", role, size(limit), len(gone))
            removed += gone
        return removed

    @staticmethod
    def drop(paths: Iterable[Path]) -> None:
        """Delete files the binhost has accepted (their local copies are no longer needed)."""
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot delete the uploaded %s: %s", path, exc.strerror or exc)
