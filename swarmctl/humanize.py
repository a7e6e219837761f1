"""Times, durations and percentages as short plain text, for messages and views alike.

No styling here (that is swarmctl.cli.terminal's): the doctor's check summaries
use these as much as the terminal views do.
"""

from __future__ import annotations

import time


def ago(seconds: float | None) -> str:
    """Coarse age: 42s, 12m, 3.5h, 4d; 'never' when unknown."""
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"


def duration(seconds: float | None) -> str:
    """Compact elapsed time: 42s, 12m05s, 3h07m, 2d04h; '-' when unknown."""
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def stamp(epoch: float | None) -> str:
    """Local wall-clock time of an epoch, minutes precision."""
    return "never" if epoch is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def seconds(value: float | None) -> str:
    """A duration that always carries its units: 8.0 s, 2 min 10 s, 3 h 07 min, 2 d 4 h; 'unknown' when None."""
    if value is None:
        return "unknown"
    value = max(0.0, float(value))
    if value < 60:
        return f"{value:.1f} s"
    total = round(value)
    if total < 3600:
        return f"{total // 60} min {total % 60} s" if total % 60 else f"{total // 60} min"
    if total < 86400:
        return f"{total // 3600} h {total % 3600 // 60:02d} min"
    return f"{total // 86400} d {total % 86400 // 3600} h"


def size(value: float | None) -> str:
    """Bytes with binary units: 512 B, 3.2 KiB, 1.4 GiB; 'unknown' when None."""
    if value is None:
        return "unknown"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(amount) < 1024 or unit == "TiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"  # unreachable; keeps mypy content
