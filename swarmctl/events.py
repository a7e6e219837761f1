"""The event stream: every state change, with time, job, drone and reason."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import redis

from swarmctl import keys


@dataclass(frozen=True)
class Event:
    id: str
    ts: float  # seconds since the epoch (Redis clock)
    kind: str
    job: str
    drone: str
    reason: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _event(entry_id: str, fields: dict[str, str]) -> Event:
    return Event(id=entry_id, ts=int(fields.get("ts", "0")) / 1000.0, kind=fields.get("kind", ""),
                 job=fields.get("job", ""), drone=fields.get("drone", ""), reason=fields.get("reason", ""))


class Events:
    """Read and append the capped Redis stream of swarm events."""

    def __init__(self, client: redis.Redis, max_len: int = 10000) -> None:
        self.redis = client
        self.max_len = max_len

    def emit(self, kind: str, job: str = "", drone: str = "", reason: str = "") -> None:
        """Append an event from Python (scripts append theirs themselves)."""
        ts = int(time.time() * 1000)
        self.redis.xadd(keys.EVENTS, {"ts": ts, "kind": kind, "job": job, "drone": drone, "reason": reason},
                        maxlen=self.max_len, approximate=True)

    def tail(self, count: int = 20) -> list[Event]:
        """The newest ``count`` events, oldest first."""
        entries = self.redis.xrevrange(keys.EVENTS, count=count)
        return [_event(i, f) for i, f in reversed(entries)]

    def since(self, last_id: str = "0-0", count: int | None = None) -> list[Event]:
        return [_event(i, f) for i, f in self.redis.xrange(keys.EVENTS, min=f"({last_id}", count=count)]

    def follow(self, last_id: str = "$", block_ms: int = 1000) -> Iterator[Event]:
        """Yield new events as they arrive (forever)."""
        while True:
            reply = self.redis.xread({keys.EVENTS: last_id}, block=block_ms, count=100)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    yield _event(entry_id, fields)
