"""The nightly run's record: its STARTED / FINISHED / FAILED marks and the status file.

The nightly playbook appends to a status file (``nightly.status_file``), one JSON
object a line: ``{"event": "STARTED", "time": 1769133600}``, and reports the same
marks to Redis through ``swarmctl nightly mark`` (kept in the swarm facts,
swarmctl.facts). Reads are tolerant: an unreadable line is skipped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarmctl.logtail import tail

if TYPE_CHECKING:
    from swarmctl.config import Config
    from swarmctl.facts import SwarmFacts

NIGHTLY_EVENTS = ("STARTED", "FINISHED", "FAILED")
#: Where the nightly status file lives when ``nightly.status_file`` is empty.
DEFAULT_NIGHTLY_STATUS = "/var/lib/build-swarm/nightly.status"
#: The world file the nightly resolves when ``nightly.world_file`` is empty (Portage's own).
DEFAULT_WORLD_FILE = "/var/lib/portage/world"
#: The report's file name, in the status file's directory (playbooks/nightly.yml writes it).
NIGHTLY_REPORT = "nightly-report.html"
#: Bytes read from the end of the status file (it grows by one line a night).
_STATUS_TAIL_BYTES = 64 * 1024



def parse_time(value: Any) -> float | None:
    """Epoch seconds from a number, a numeric string or an ISO 8601 string; None if unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class NightlyMark:
    """One line of the nightly run's log: STARTED, FINISHED or FAILED at ``time``."""

    event: str
    time: float
    detail: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> NightlyMark | None:
        if not data:
            return None
        event = str(data.get("event", "")).upper()
        when = parse_time(data.get("time"))
        if event not in NIGHTLY_EVENTS or when is None:
            return None
        # The nightly playbook's FAILED line says what broke in "error" (and "task").
        detail = data.get("detail") or data.get("error") or ""
        if data.get("task") and not data.get("detail"):
            detail = f"{data['task']}: {detail}" if detail else str(data["task"])
        return cls(event, when, str(detail))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def nightly_status_path(config: Config) -> Path:
    """The nightly status file this host would read."""
    return Path(config.nightly.status_file or DEFAULT_NIGHTLY_STATUS)


def nightly_world_path(config: Config) -> Path:
    """The world file the nightly run (``queue sync`` without ``--world``) resolves."""
    return Path(config.nightly.world_file or DEFAULT_WORLD_FILE)


def nightly_report_path(config: Config) -> Path:
    """Where the nightly playbook writes the report of the night's builds: beside the status file."""
    return nightly_status_path(config).with_name(NIGHTLY_REPORT)


def read_nightly_file(path: Path) -> list[NightlyMark]:
    """The marks in a nightly status file, oldest first (unreadable lines skipped).

    Only the file's last 64 KiB are read: it grows by a few lines a night.
    """
    marks = []
    for line in tail(path, max_bytes=_STATUS_TAIL_BYTES).splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        mark = NightlyMark.from_dict(data) if isinstance(data, dict) else None
        if mark is not None:
            marks.append(mark)
    return marks


def last_nightly(facts: SwarmFacts, file_marks: list[NightlyMark]) -> NightlyMark | None:
    """The newest nightly mark from Redis or the status file."""
    candidates = [m for m in (facts.nightly_last, file_marks[-1] if file_marks else None) if m]
    return max(candidates, key=lambda m: m.time, default=None)


def last_started(facts: SwarmFacts, file_marks: list[NightlyMark]) -> float | None:
    """When the nightly run last started.

    The status file has every STARTED; Redis keeps only the last event, and a
    FINISHED or FAILED there proves a start shortly before it.
    """
    times = [m.time for m in file_marks if m.event == "STARTED"]
    if facts.nightly_last is not None:
        times.append(facts.nightly_last.time)
    return max(times, default=None)
