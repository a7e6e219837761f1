"""Times, durations and percentages as short plain text, for messages and views alike.

No styling here (that is swarmctl.cli.terminal's): the doctor's check summaries
use these as much as the terminal views do.
"""

from __future__ import annotations

import math
import time

#: (below this many seconds, count in this unit, suffix, format) for :func:`ago`.
_AGO = ((90, 1, "s", ".0f"), (5400, 60, "m", ".0f"), (172800, 3600, "h", ".1f"), (math.inf, 86400, "d", ".0f"))
#: (below this many seconds, unit, suffix, sub-unit, its suffix) for :func:`duration`.
_DURATION = ((60, 1, "s", 0, ""), (3600, 60, "m", 1, "s"), (86400, 3600, "h", 60, "m"),
             (math.inf, 86400, "d", 3600, "h"))


def ago(seconds: float | None) -> str:
    """Coarse age: 42s, 12m, 3.5h, 4d; 'never' when unknown."""
    if seconds is None:
        return "never"
    _limit, unit, suffix, fmt = next(row for row in _AGO if seconds < row[0])
    return f"{seconds / unit:{fmt}}{suffix}"


def duration(seconds: float | None) -> str:
    """Compact elapsed time: 42s, 12m05s, 3h07m, 2d04h; '-' when unknown."""
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    _limit, unit, suffix, sub, sub_suffix = next(row for row in _DURATION if total < row[0])
    head = f"{total // unit}{suffix}"
    return f"{head}{total % unit // sub:02d}{sub_suffix}" if sub else head


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
