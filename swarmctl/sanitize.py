"""Text from untrusted writers (drones) made safe to show: no control characters, bounded length.

The HEARTBEAT script already cleans and caps what a drone writes; readers clean again, so a
value written by an older version, or straight into Redis, still cannot drive a terminal
(escape sequences, C1 controls, bidi overrides) or flood it.
"""

from __future__ import annotations

import unicodedata

#: Characters shown at most for one drone-written value.
DEFAULT_LIMIT = 256


def printable(text: str | None, limit: int = DEFAULT_LIMIT) -> str | None:
    """``text`` without control or format characters (Unicode Cc, Cf), cut to ``limit``; None stays None."""
    if text is None:
        return None
    clean = "".join(ch for ch in text[:limit * 4] if unicodedata.category(ch) not in ("Cc", "Cf"))
    return clean[:limit - 1] + "…" if len(clean) > limit else clean
