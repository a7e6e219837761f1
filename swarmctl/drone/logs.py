"""Per-job build logs on disk, rotated by count and total size.

Build output goes straight from the build process to a file; the daemon only
ever reads a bounded tail of it (swarmctl.logtail), so nothing accumulates in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from swarmctl.drone.disk import oldest_first, prune


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
        """Logs, oldest first."""
        return [path for path, _, _ in oldest_first(self.dir, (".log",))]

    def rotate(self, keep: Path | Iterable[Path] | None = None) -> list[Path]:
        """Delete the oldest logs beyond the count and size limits (never those in ``keep``: the
        logs of builds still running; a log another build's rotation deleted meanwhile is skipped)."""
        return prune(oldest_first(self.dir, (".log",)), self.max_bytes, self.keep_jobs,
                     keep=[keep] if isinstance(keep, Path) else list(keep or ()))
