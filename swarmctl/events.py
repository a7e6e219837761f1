"""The event stream: every state change, with time, job, drone and reason."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import redis

from swarmctl import keys
from swarmctl.scripts import EMIT


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

    def __init__(self, client: redis.Redis, max_len: int | None = None) -> None:
        """``max_len`` is the configured ``queue.events_max``; without it the stream is read-only here."""
        self.redis = client
        self.max_len = max_len
        self._emit = client.register_script(EMIT)

    def emit(self, kind: str, job: str = "", drone: str = "", reason: str = "",
             pipeline: redis.client.Pipeline | None = None) -> None:
        """Append an event from Python, stamped with Redis's clock (scripts append theirs themselves).

        With ``pipeline`` the append is queued there and sent when the caller executes it.
        """
        if self.max_len is None:  # a writer that forgot the setting would let the stream grow unbounded
            raise ValueError("Events opened without queue.events_max cannot append")
        self._emit(keys=[keys.EVENTS], args=[self.max_len, kind, job, drone, reason],
                   client=pipeline if pipeline is not None else self.redis)

    def tail(self, count: int = 20) -> list[Event]:
        """The newest ``count`` events, oldest first."""
        entries = self.redis.xrevrange(keys.EVENTS, count=count)
        return [_event(i, f) for i, f in reversed(entries)]

    def since(self, last_id: str = "0-0", count: int | None = None) -> list[Event]:
        return [_event(i, f) for i, f in self.redis.xrange(keys.EVENTS, min=f"({last_id}", count=count)]

    def between(self, start: float | None = None, end: float | None = None, chunk: int = 10_000) -> Iterator[Event]:
        """Every event from ``start`` to ``end`` (epoch seconds, Redis clock; None: open), oldest first.

        Read in chunks so a long night never costs one huge reply.
        """
        low = f"{int(start * 1000)}-0" if start is not None else "-"
        high = f"{int(end * 1000)}-18446744073709551615" if end is not None else "+"
        while True:
            entries = self.redis.xrange(keys.EVENTS, min=low, max=high, count=chunk)
            for entry_id, fields in entries:
                yield _event(entry_id, fields)
            if len(entries) < chunk:
                return
            low = f"({entries[-1][0]}"

    def follow(self, last_id: str = "$", block_ms: int = 1000) -> Iterator[Event]:
        """Yield new events as they arrive (forever)."""
        while True:
            reply = self.redis.xread({keys.EVENTS: last_id}, block=block_ms, count=100)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    yield _event(entry_id, fields)
