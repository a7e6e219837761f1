"""Recorded build durations, and the estimates the scheduler derives from them."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from swarmctl import keys
from swarmctl.atoms import cp_of, validate_cpv
from swarmctl.exceptions import InvalidAtom
from swarmctl.targets import DEFAULT_TARGET, cpv_of, split_job

if TYPE_CHECKING:
    from swarmctl.emergelog import Merge

KEEP = 20  # recent builds kept per package


@dataclass(frozen=True)
class BuildRecord:
    cpv: str
    seconds: float
    parallel: bool = False  # measured under emerge --jobs (wall time inflated)
    source: str = "swarm"
    #: Peak resident memory of the build's process tree, and its build disk, in bytes (None: not measured).
    peak_rss: int | None = None
    disk: int | None = None
    target: str = DEFAULT_TARGET  # the build target it was built for (older records: the default)

    def as_json(self) -> str:
        record: dict[str, object] = {"cpv": self.cpv, "seconds": self.seconds, "parallel": self.parallel,
                                     "source": self.source, "target": self.target}
        record.update({k: v for k, v in (("peak_rss", self.peak_rss), ("disk", self.disk)) if v})
        return json.dumps(record)


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

    def import_merges(self, merges: Sequence[tuple[Merge, str]]) -> int:
        """Record merges read from emerge.log files (with the file each came from); returns the repeats.

        A merge is known by what and when it built, so importing a log again records nothing twice.
        """
        with self.redis.pipeline(transaction=False) as pipe:
            for merge, _path in merges:
                pipe.sadd(keys.HISTORY_SEEN, f"{merge.cpv}@{merge.start}-{merge.end}")
            new = pipe.execute()
        with self.redis.pipeline(transaction=False) as pipe:
            for (merge, path), fresh in zip(merges, new, strict=True):
                if fresh:
                    self.record(merge.record(source=f"emerge.log:{path}"), pipeline=pipe)
            pipe.execute()
        return int(len(new) - sum(new))

    def estimate(self, atom: str, records: list[BuildRecord] | None = None) -> float:
        """Median of recent builds: same version first, then the package, then the default.

        ``atom`` is a CPV, or a ``category/package`` for the package as a whole (every version's
        builds). Serial measurements are preferred over ones taken under ``--jobs``.
        """
        if records is None:
            try:
                records = self.records(cp_of(validate_cpv(atom)))
            except InvalidAtom:
                records = self.records(atom)
        for pool in ([r for r in records if r.cpv == atom], records):
            serial = [r.seconds for r in pool if not r.parallel]
            sample = serial or [r.seconds for r in pool]
            if sample:
                return float(statistics.median(sample))
        return self.default

    def peaks(self, cpvs: list[str]) -> dict[str, tuple[int, int]]:
        """(peak RSS, disk) in bytes each recent build of ``cpvs`` needed at most: the same version's
        builds when any measured it, else the package's. Packages never measured are left out."""
        by_cp = self._by_package(cpvs)
        found: dict[str, tuple[int, int]] = {}
        for cpv in cpvs:  # job names (CPV@TARGET) too: a package's peaks are alike across targets
            records = by_cp[cp_of(cpv_of(cpv))]
            for pool in ([r for r in records if r.cpv == cpv_of(cpv)], records):
                rss = max((r.peak_rss or 0 for r in pool), default=0)
                disk = max((r.disk or 0 for r in pool), default=0)
                if rss or disk:
                    found[cpv] = (rss, disk)
                    break
        return found

    def _by_package(self, cpvs: list[str]) -> dict[str, list[BuildRecord]]:
        cps = sorted({cp_of(cpv_of(c)) for c in cpvs})
        with self.redis.pipeline(transaction=False) as pipe:
            for cp in cps:
                pipe.lrange(keys.history(cp), 0, -1)
            replies = pipe.execute()
        return {cp: [BuildRecord(**json.loads(r)) for r in raw] for cp, raw in zip(cps, replies, strict=True)}

    def estimates(self, cpvs: list[str]) -> dict[str, float]:
        """Estimates for many packages with one round trip."""
        by_cp = self._by_package(cpvs)
        return {cpv: self.estimate(cpv, by_cp[cp_of(cpv)]) for cpv in cpvs}

    def target_estimates(self, jobs: list[str]) -> dict[str, tuple[float, str]]:
        """(estimate, note) for many jobs (``CPV`` or ``CPV@TARGET``, swarmctl.targets), one round trip.

        A job's own target's builds first; a target with none borrows every target's builds,
        and the note says so ('' when the estimate is the target's own or the default).
        """
        split = {job: split_job(job) for job in jobs}
        by_cp = self._by_package([cpv for cpv, _ in split.values()])
        out: dict[str, tuple[float, str]] = {}
        for job, (cpv, target) in split.items():
            records = by_cp[cp_of(cpv)]
            own = [r for r in records if r.target == target]
            if own or not records:
                out[job] = (self.estimate(cpv, own), "")
            else:
                lent = sorted({r.target for r in records})
                out[job] = (self.estimate(cpv, records), f"borrowed from target {', '.join(lent)}")
        return out
