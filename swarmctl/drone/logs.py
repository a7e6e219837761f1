"""Per-job build logs on disk, rotated by count and total size.

Build output goes straight from the build process to a file; the daemon only
ever reads a bounded tail of it (swarmctl.logtail), so nothing accumulates in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path


class BuildLogs:
    """A directory of ``<time>-<category>--<pf>.log`` files."""

    def __init__(self, directory: Path, keep_jobs: int, max_bytes: int) -> None:
        self.dir = directory
        self.keep_jobs = max(1, keep_jobs)
        self.max_bytes = max_bytes
        self.dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, cpv: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return self.dir / f"{stamp}-{time.time_ns() % 1_000_000:06d}-{cpv.replace('/', '--')}.log"

    def files(self) -> list[Path]:
        """Logs, oldest first (one deleted meanwhile, by a concurrent rotation, is left out)."""
        dated = []
        for path in self.dir.glob("*.log"):
            try:
                dated.append((path.stat().st_mtime, path.name, path))
            except OSError:
                continue
        return [path for *_, path in sorted(dated)]

    def rotate(self, keep: Path | Iterable[Path] | None = None) -> list[Path]:
        """Delete the oldest logs beyond the count and size limits (never those in ``keep``:
        the logs of builds still running)."""
        kept = {keep} if isinstance(keep, Path) else set(keep or ())
        logs = self.files()
        removed: list[Path] = []
        excess = len(logs) - self.keep_jobs
        total = sum(_size(p) for p in logs)
        for path in logs:
            if path in kept:
                continue
            if excess <= 0 and total <= self.max_bytes:
                break
            size = _size(path)
            path.unlink(missing_ok=True)
            removed.append(path)
            excess -= 1
            total -= size
        return removed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
