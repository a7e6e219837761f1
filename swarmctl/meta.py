"""Facts about the swarm that are not queue state: sync time, world size, binhost coverage.

They live in one Redis hash (``swarmctl.keys.META``) written by whoever learns
them -- the nightly playbook (sync time, STARTED/FINISHED/FAILED), the resolver
(world size, binhost coverage), the cron verification (is the job scheduled?)
-- and read by ``swarmctl status``, ``monitor``, ``doctor`` and the metrics
exporter. Reads are tolerant: a missing or malformed field reads as unknown,
never as an error, because a status command must work on a half-set-up swarm.

The nightly playbook also appends to a status file (``nightly.status_file``),
one JSON object a line: ``{"event": "STARTED", "time": 1769133600}``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from swarmctl import keys
from swarmctl.config import Config

log = logging.getLogger("swarmctl.meta")

SYNC_TIME = "sync_time"
WORLD_SIZE = "world_size"
BINHOST_TOTAL = "binhost_total"
BINHOST_AVAILABLE = "binhost_available"
NIGHTLY_LAST = "nightly_last"
CRON_VERIFY = "cron_verify"
FIELDS = (SYNC_TIME, WORLD_SIZE, BINHOST_TOTAL, BINHOST_AVAILABLE, NIGHTLY_LAST, CRON_VERIFY)

NIGHTLY_EVENTS = ("STARTED", "FINISHED", "FAILED")
#: Where the nightly status file lives when ``nightly.status_file`` is empty.
DEFAULT_NIGHTLY_STATUS = "/var/lib/build-swarm/nightly.status"
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


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _json(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


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


@dataclass(frozen=True)
class CronCheck:
    """The last verification that the nightly cron job is really scheduled."""

    ok: bool
    time: float
    detail: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CronCheck | None:
        if not data or "ok" not in data:
            return None
        when = parse_time(data.get("time"))
        if when is None:
            return None
        return cls(bool(data["ok"]), when, str(data.get("detail", "") or ""))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SwarmMeta:
    """Everything in the META hash, parsed; None means "nobody has recorded it yet"."""

    sync_time: float | None = None
    world_size: int | None = None
    binhost_total: int | None = None
    binhost_available: int | None = None
    nightly_last: NightlyMark | None = None
    cron_verify: CronCheck | None = None

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> SwarmMeta:
        return cls(
            sync_time=parse_time(data.get(SYNC_TIME)),
            world_size=_int(data.get(WORLD_SIZE)),
            binhost_total=_int(data.get(BINHOST_TOTAL)),
            binhost_available=_int(data.get(BINHOST_AVAILABLE)),
            nightly_last=NightlyMark.from_dict(_json(data.get(NIGHTLY_LAST))),
            cron_verify=CronCheck.from_dict(_json(data.get(CRON_VERIFY))),
        )

    @property
    def binhost_percent(self) -> float | None:
        """Share of the needed packages the binhost has, in percent."""
        if self.binhost_total is None or self.binhost_available is None:
            return None
        if self.binhost_total <= 0:
            return 100.0
        return 100.0 * self.binhost_available / self.binhost_total


class Meta:
    """Typed getters and setters over the META hash."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def read(self) -> SwarmMeta:
        return SwarmMeta.from_hash(self.redis.hgetall(keys.META))

    def _set(self, mapping: dict[str, Any], pipeline: redis.client.Pipeline | None) -> None:
        target = pipeline if pipeline is not None else self.redis
        target.hset(keys.META, mapping=mapping)

    def set_sync_time(self, when: float | None = None, pipeline: redis.client.Pipeline | None = None) -> None:
        """Record a successful ``emerge --sync`` (now, unless ``when`` is given)."""
        self._set({SYNC_TIME: f"{time.time() if when is None else when:.3f}"}, pipeline)

    def set_world_size(self, packages: int, pipeline: redis.client.Pipeline | None = None) -> None:
        """How many packages @world resolves to."""
        if packages < 0:
            raise ValueError("world size cannot be negative")
        self._set({WORLD_SIZE: int(packages)}, pipeline)

    def set_binhost(self, available: int, total: int, pipeline: redis.client.Pipeline | None = None) -> None:
        """How many of the ``total`` packages world needs the binhost already has."""
        if available < 0 or total < 0 or available > total:
            raise ValueError(f"binhost coverage {available}/{total} is impossible")
        self._set({BINHOST_AVAILABLE: int(available), BINHOST_TOTAL: int(total)}, pipeline)

    def record_nightly(self, event: str, when: float | None = None, detail: str = "",
                       pipeline: redis.client.Pipeline | None = None) -> NightlyMark:
        """Record the nightly run's STARTED, FINISHED or FAILED."""
        event = event.upper()
        if event not in NIGHTLY_EVENTS:
            raise ValueError(f"nightly event must be one of {', '.join(NIGHTLY_EVENTS)}")
        mark = NightlyMark(event, time.time() if when is None else when, detail)
        self._set({NIGHTLY_LAST: json.dumps(mark.as_dict(), sort_keys=True)}, pipeline)
        return mark

    def record_cron_verify(self, ok: bool, detail: str = "", when: float | None = None,
                           pipeline: redis.client.Pipeline | None = None) -> CronCheck:
        """Record the result of checking that the nightly cron job is scheduled."""
        check = CronCheck(bool(ok), time.time() if when is None else when, detail)
        self._set({CRON_VERIFY: json.dumps(check.as_dict(), sort_keys=True)}, pipeline)
        return check


def nightly_status_path(config: Config) -> Path:
    """The nightly status file this host would read."""
    return Path(config.nightly.status_file or DEFAULT_NIGHTLY_STATUS)


def read_nightly_file(path: Path) -> list[NightlyMark]:
    """The marks in a nightly status file, oldest first (unreadable lines skipped).

    Only the file's last 64 KiB are read: it grows by a few lines a night.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - _STATUS_TAIL_BYTES))
            raw = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = raw.splitlines()
    if len(raw.encode()) >= _STATUS_TAIL_BYTES and lines:
        lines = lines[1:]  # the first line may be cut
    marks = []
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            continue
        mark = NightlyMark.from_dict(data) if isinstance(data, dict) else None
        if mark is not None:
            marks.append(mark)
    return marks


def last_nightly(meta: SwarmMeta, file_marks: list[NightlyMark]) -> NightlyMark | None:
    """The newest nightly mark from Redis or the status file."""
    candidates = [m for m in (meta.nightly_last, file_marks[-1] if file_marks else None) if m]
    return max(candidates, key=lambda m: m.time, default=None)


def last_started(meta: SwarmMeta, file_marks: list[NightlyMark]) -> float | None:
    """When the nightly run last started.

    The status file has every STARTED; Redis keeps only the last event, and a
    FINISHED or FAILED there proves a start shortly before it.
    """
    times = [m.time for m in file_marks if m.event == "STARTED"]
    if meta.nightly_last is not None:
        times.append(meta.nightly_last.time)
    return max(times, default=None)
