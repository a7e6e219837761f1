"""The one way swarmctl reads the end of a log: bounded, lenient, never raising.

Build logs, the nightly status file and failure classification all need only
the last part of a file that may be large, still growing, or gone.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Default bytes read from the end of a file.
TAIL_BYTES = 64 * 1024


def tail(path: Path, lines: int | None = None, max_bytes: int = TAIL_BYTES) -> str:
    """The end of a file: at most ``max_bytes`` from its end, and the last ``lines`` lines if given.

    A line cut by the byte limit is dropped, so every line returned is whole.
    Undecodable bytes are replaced; a missing or unreadable file gives "".
    """
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read()
    except OSError:
        return ""
    if start > 0:
        data = data.partition(b"\n")[2]
    text = data.decode("utf-8", "replace")
    return text if lines is None else "\n".join(text.splitlines()[-lines:])
