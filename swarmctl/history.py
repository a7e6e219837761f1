"""Recorded build durations, and the estimates the scheduler derives from them."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

import redis

from swarmctl import keys
from swarmctl.atoms import cp_of

KEEP = 20  # recent builds kept per package


@dataclass(frozen=True)
class BuildRecord:
    cpv: str
    seconds: float
    parallel: bool = False  # measured under emerge --jobs (wall time inflated)
    source: str = "swarm"

    def as_json(self) -> str:
        return json.dumps({"cpv": self.cpv, "seconds": self.seconds, "parallel": self.parallel,
                           "source": self.source})


class History:
    """Per-package build durations in Redis (newest first, capped)."""

    def __init__(self, client: redis.Redis, default_estimate: float = 600.0) -> None:
        self.redis = client
        self.default = default_estimate

    def record(self, record: BuildRecord, pipeline: redis.client.Pipeline | None = None) -> None:
        target = pipeline if pipeline is not None else self.redis
        key = keys.history(cp_of(record.cpv))
        target.lpush(key, record.as_json())
        target.ltrim(key, 0, KEEP - 1)

    def records(self, cp: str) -> list[BuildRecord]:
        return [BuildRecord(**json.loads(raw)) for raw in self.redis.lrange(keys.history(cp), 0, -1)]

    def estimate(self, cpv: str, records: list[BuildRecord] | None = None) -> float:
        """Median of recent builds: same version first, then the package, then the default.

        Serial measurements are preferred over ones taken under ``--jobs``.
        """
        if records is None:
            records = self.records(cp_of(cpv))
        for pool in ([r for r in records if r.cpv == cpv], records):
            serial = [r.seconds for r in pool if not r.parallel]
            sample = serial or [r.seconds for r in pool]
            if sample:
                return float(statistics.median(sample))
        return self.default

    def estimates(self, cpvs: list[str]) -> dict[str, float]:
        """Estimates for many packages with one round trip."""
        cps = sorted({cp_of(c) for c in cpvs})
        with self.redis.pipeline(transaction=False) as pipe:
            for cp in cps:
                pipe.lrange(keys.history(cp), 0, -1)
            replies = pipe.execute()
        by_cp = {cp: [BuildRecord(**json.loads(r)) for r in raw] for cp, raw in zip(cps, replies, strict=True)}
        return {cpv: self.estimate(cpv, by_cp[cp_of(cpv)]) for cpv in cpvs}
