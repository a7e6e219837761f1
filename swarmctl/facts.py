"""Facts about the swarm that are not queue state: sync time, world size, binhost coverage.

They live in one Redis hash (``swarmctl.keys.FACTS``) written by whoever learns
them -- the nightly playbook (sync time, STARTED/FINISHED/FAILED), the resolver
(world size, binhost coverage), the cron verification (is the job scheduled?), the
drift check (``swarmctl drift``: which hosts are no longer what the playbooks made them)
-- and read by ``swarmctl status``, ``monitor``, ``doctor`` and the metrics
exporter. Reads are tolerant: a missing or malformed field reads as unknown,
never as an error, because a status command must work on a half-set-up swarm.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import redis

from swarmctl import keys
from swarmctl.connection import server_time
from swarmctl.nightly import NIGHTLY_EVENTS, NightlyMark, parse_time

log = logging.getLogger("swarmctl.facts")

SYNC_TIME = "sync_time"
WORLD_SIZE = "world_size"
BINHOST_TOTAL = "binhost_total"
BINHOST_AVAILABLE = "binhost_available"
NIGHTLY_LAST = "nightly_last"
CRON_VERIFY = "cron_verify"
DRIFT_LAST = "drift_last"
FIELDS = (SYNC_TIME, WORLD_SIZE, BINHOST_TOTAL, BINHOST_AVAILABLE, NIGHTLY_LAST, CRON_VERIFY, DRIFT_LAST)


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
class DriftCheck:
    """The last ``swarmctl drift``: when, which hosts would change (and how), which could not be checked."""

    time: float
    drifted: dict[str, list[str]]
    failed: dict[str, str]
    current: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DriftCheck | None:
        when = parse_time((data or {}).get("time"))
        if data is None or when is None:
            return None
        drifted, failed = data.get("drifted"), data.get("failed")
        return cls(when,
                   {str(h): [str(t) for t in tasks] for h, tasks in drifted.items() if isinstance(tasks, list)}
                   if isinstance(drifted, dict) else {},
                   {str(h): str(why) for h, why in failed.items()} if isinstance(failed, dict) else {},
                   _int(str(data.get("current", 0))) or 0)

    @property
    def clean(self) -> bool:
        return not self.drifted and not self.failed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SwarmFacts:
    """Everything in the facts hash, parsed; None means "nobody has recorded it yet"."""

    sync_time: float | None = None
    world_size: int | None = None
    binhost_total: int | None = None
    binhost_available: int | None = None
    nightly_last: NightlyMark | None = None
    cron_verify: CronCheck | None = None
    drift: DriftCheck | None = None

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> SwarmFacts:
        return cls(
            sync_time=parse_time(data.get(SYNC_TIME)),
            world_size=_int(data.get(WORLD_SIZE)),
            binhost_total=_int(data.get(BINHOST_TOTAL)),
            binhost_available=_int(data.get(BINHOST_AVAILABLE)),
            nightly_last=NightlyMark.from_dict(_json(data.get(NIGHTLY_LAST))),
            cron_verify=CronCheck.from_dict(_json(data.get(CRON_VERIFY))),
            drift=DriftCheck.from_dict(_json(data.get(DRIFT_LAST))),
        )

    @property
    def binhost_percent(self) -> float | None:
        """Share of the needed packages the binhost has, in percent."""
        if self.binhost_total is None or self.binhost_available is None:
            return None
        if self.binhost_total <= 0:
            return 100.0
        return 100.0 * self.binhost_available / self.binhost_total


class FactStore:
    """Typed getters and setters over the facts hash."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def read(self) -> SwarmFacts:
        return SwarmFacts.from_hash(self.redis.hgetall(keys.FACTS))

    def _now(self) -> float:
        """Facts are compared with Redis's clock (status, doctor), so they are stamped with it."""
        return server_time(self.redis)

    def _set(self, mapping: dict[str, Any], pipeline: redis.client.Pipeline | None) -> None:
        target = pipeline if pipeline is not None else self.redis
        target.hset(keys.FACTS, mapping=mapping)

    def set_sync_time(self, when: float | None = None, pipeline: redis.client.Pipeline | None = None) -> None:
        """Record a successful ``emerge --sync`` (now, unless ``when`` is given)."""
        self._set({SYNC_TIME: f"{self._now() if when is None else when:.3f}"}, pipeline)

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
        mark = NightlyMark(event, self._now() if when is None else when, detail)
        self._set({NIGHTLY_LAST: json.dumps(mark.as_dict(), sort_keys=True)}, pipeline)
        return mark

    def record_cron_verify(self, ok: bool, detail: str = "", when: float | None = None,
                           pipeline: redis.client.Pipeline | None = None) -> CronCheck:
        """Record the result of checking that the nightly cron job is scheduled."""
        check = CronCheck(bool(ok), self._now() if when is None else when, detail)
        self._set({CRON_VERIFY: json.dumps(check.as_dict(), sort_keys=True)}, pipeline)
        return check

    def record_drift(self, drifted: dict[str, list[str]], failed: dict[str, str], current: int,
                     when: float | None = None, pipeline: redis.client.Pipeline | None = None) -> DriftCheck:
        """Record a drift check: the tasks that would change each drifted host, the hosts not checked."""
        check = DriftCheck(self._now() if when is None else when, drifted, failed, current)
        self._set({DRIFT_LAST: json.dumps(check.as_dict(), sort_keys=True)}, pipeline)
        return check
