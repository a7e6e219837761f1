"""Prometheus metrics, read from Redis on every scrape.

The orchestrator serves them (``orchestrator.metrics_port``) through
:func:`serve_metrics`. Two sources:

* state and totals kept in Redis (queue sizes, drone status and resources,
  builds per drone, the ``swarm:stats`` counters: builds, failures, reclaims,
  groundings, stale reports, upload rejections), which survive restarts of the
  exporter;
* the event stream, tallied from the moment the exporter starts, for what
  Redis keeps no counter of: failures by drone, build durations (histogram) and
  heal actions. Like any Prometheus counter these restart at zero with the
  process. An exporter that fell more than ``queue.events_max`` events behind
  between scrapes would miss the trimmed ones.

A scrape while Redis is unreachable answers ``swarm_up 0`` instead of failing.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.connection import TRANSIENT
from swarmctl.facts import SwarmFacts
from swarmctl.queue import queue_counts, read_counts
from swarmctl.registry import STATUSES, DroneRegistry
from swarmctl.target_status import TargetStatus, gather_targets

log = logging.getLogger("swarmctl.metrics")

#: Build duration buckets, seconds: a minute-long leaf package up to an llvm-sized build.
DURATION_BUCKETS = (30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
                    57600.0, math.inf)
#: Events that end a build attempt without a package, by the outcome label they get.
FAILURE_EVENTS = {"requeued": "requeued", "failed": "failed", "blocked": "blocked"}
#: Self-healing events, by the action label they get.
HEAL_EVENTS = {"restarted": "restart", "rebooted": "reboot", "heal-refused": "refused"}
#: ``swarm:stats`` fields counting binhost upload refusals, one per reason: ``upload_rejected:<reason>``.
UPLOAD_REJECTED_PREFIX = "upload_rejected:"
#: Swarm-wide totals in ``swarm:stats``: field -> (metric name, help).
STAT_COUNTERS = {
    "built": ("swarm_builds", "Packages built and accepted, swarm-wide."),
    "failures": ("swarm_build_failures", "Build failures reported by drones, swarm-wide."),
    "reclaimed": ("swarm_reclaims", "Jobs taken back from offline or grounded drones."),
    "groundings": ("swarm_groundings", "Drones grounded by the circuit breaker."),
    "stale": ("swarm_stale_reports", "Reports refused because the drone no longer owned the job."),
    "tree-mismatch": ("swarm_tree_mismatches",
                      "Jobs a drone gave back because its tree could not be brought to the job's revision."),
}
_PAGE = 1000


def record_upload_rejection(client: redis.Redis, reason: str) -> None:
    """Count one refused upload (for the binhost server to call); shows up as swarm_upload_rejections_total."""
    client.hincrby(keys.STATS, UPLOAD_REJECTED_PREFIX + (reason or "unknown"), 1)


class EventTally:
    """Counters built from the event stream, from the moment this tally was made."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        newest = client.xrevrange(keys.EVENTS, count=1)
        self.last_id = newest[0][0] if newest else "0-0"
        self.failures: Counter[tuple[str, str]] = Counter()  # (drone, outcome)
        self.heals: Counter[tuple[str, str]] = Counter()  # (drone, action)
        self.bucket_counts = [0] * len(DURATION_BUCKETS)
        self.duration_sum = 0.0
        self.duration_count = 0

    def update(self) -> int:
        """Read the events since the last update; returns how many."""
        seen = 0
        while True:
            entries = self.redis.xrange(keys.EVENTS, min=f"({self.last_id}", max="+", count=_PAGE)
            for entry_id, fields in entries:
                self._count(fields)
                self.last_id = entry_id
            seen += len(entries)
            if len(entries) < _PAGE:
                return seen

    def _count(self, fields: dict[str, str]) -> None:
        kind, drone = fields.get("kind", ""), fields.get("drone", "")
        if kind == "built":
            try:
                seconds = float(fields.get("reason") or "nan")  # a built event's reason is its duration
            except ValueError:
                return
            if math.isfinite(seconds) and seconds >= 0:
                self.observe(seconds)
        elif kind in FAILURE_EVENTS:
            self.failures[(drone, FAILURE_EVENTS[kind])] += 1
        elif kind in HEAL_EVENTS:
            self.heals[(drone, HEAL_EVENTS[kind])] += 1

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1
                break
        self.duration_sum += seconds
        self.duration_count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs as the exposition format wants them."""
        out, total = [], 0
        for bound, count in zip(DURATION_BUCKETS, self.bucket_counts, strict=True):
            total += count
            out.append((floatToGoString(bound), float(total)))
        return out


class SwarmCollector(Collector):
    """Reads the swarm's state from Redis on each collect (two round trips plus new events)."""

    def __init__(self, client: redis.Redis, config: Config) -> None:
        self.redis = client
        self.config = config
        self._lock = threading.Lock()  # the HTTP server may run scrapes concurrently
        self._tally: EventTally | None = None
        try:
            self._tally = EventTally(client)
        except TRANSIENT as exc:
            log.warning("metrics: Redis unavailable at start (%s); event counters start at the first scrape", exc)

    def describe(self) -> list[Metric]:
        return []  # families depend on Redis; nothing to check for clashes up front

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                families = self._families()
            except TRANSIENT as exc:
                log.warning("metrics scrape: Redis unavailable: %s", exc)
                families = []
                up = 0.0
            else:
                up = 1.0
        yield GaugeMetricFamily("swarm_up", "1 when the exporter could read Redis on this scrape.", value=up)
        yield from families

    def _families(self) -> list[Metric]:
        if self._tally is None:
            self._tally = EventTally(self.redis)
        self._tally.update()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            n = queue_counts(pipe, self.config.targets)
            pipe.smembers(keys.DRONES)
            pipe.hgetall(keys.STATS)
            pipe.hgetall(keys.FACTS)
            pipe.get(keys.LEADER)
            replies = pipe.execute()
        seconds, micros = replies[0]
        now = seconds + micros / 1e6
        counts = read_counts(replies[1:1 + n])
        names, stats, meta_hash, leader = replies[1 + n:5 + n]
        names = sorted(names)
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.drone(name))
            rows = pipe.execute()
        offline_after = self.config.orchestrator.offline_after
        drones = [DroneRegistry._info(name, row, now, offline_after) for name, row in zip(names, rows, strict=True)]
        return [*self._queue(counts), *self._drones(drones), *self._stats(stats), *self._events(),
                *self._meta(SwarmFacts.from_hash(meta_hash), now, leader),
                *self._targets(gather_targets(self.redis, self.config, counts, drones))]

    @staticmethod
    def _targets(targets: list[TargetStatus]) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("swarm_target_jobs", "Jobs by build target and state.", labels=["target", "state"])
        coverage = GaugeMetricFamily("swarm_target_coverage_percent",
                                     "Share of the target's world its binhost area had at the last sync.",
                                     labels=["target"])
        drones = GaugeMetricFamily("swarm_target_drones_available", "Available drones that build the target.",
                                   labels=["target"])
        stalled = GaugeMetricFamily("swarm_target_stalled", "1 when the target has open jobs and no drone "
                                    "available that builds it.", labels=["target"])
        for t in targets:
            for state, value in t.queue.items():
                jobs.add_metric([t.name, state], value)
            if t.coverage_percent is not None:
                coverage.add_metric([t.name], t.coverage_percent)
            drones.add_metric([t.name], len(t.drones_available))
            stalled.add_metric([t.name], 1 if t.stalled else 0)
        yield from (jobs, coverage, drones, stalled)

    @staticmethod
    def _queue(counts: dict[str, int]) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("swarm_queue_jobs", "Jobs by state (ready and waiting split needed).",
                                 labels=["state"])
        for state, value in counts.items():
            jobs.add_metric([state], value)
        yield jobs

    @staticmethod
    def _drones(drones: list[Any]) -> Iterator[Metric]:
        by_status = GaugeMetricFamily("swarm_drones", "Enrolled drones by status.", labels=["status"])
        tally = Counter(d.status for d in drones)
        for status in STATUSES:
            by_status.add_metric([status], tally.get(status, 0))
        yield by_status
        builds = CounterMetricFamily("swarm_drone_builds", "Packages built, by drone.", labels=["drone"])
        age = GaugeMetricFamily("swarm_drone_heartbeat_age_seconds", "Seconds since the drone's last heartbeat.",
                                labels=["drone"])
        cpu = GaugeMetricFamily("swarm_drone_cpu_percent", "CPU use the drone last reported.", labels=["drone"])
        mem = GaugeMetricFamily("swarm_drone_memory_percent", "Memory use the drone last reported.",
                                labels=["drone"])
        failures = GaugeMetricFamily("swarm_drone_consecutive_failures",
                                     "The drone's current failure streak (the breaker grounds at breaker.failures).",
                                     labels=["drone"])
        misconfigured = GaugeMetricFamily("swarm_drone_misconfigured",
                                          "1 for a drone whose preflight fails (it claims nothing), with the reason.",
                                          labels=["drone", "reason"])
        busy = GaugeMetricFamily("swarm_drone_builds_running", "Builds the drone runs now (one per busy slot).",
                                 labels=["drone"])
        slots = GaugeMetricFamily("swarm_drone_slots", "Builds the drone may run at once.", labels=["drone"])
        task = GaugeMetricFamily("swarm_drone_task", "1 for each build a drone runs now, by package.",
                                 labels=["drone", "cpv"])
        low_disk = GaugeMetricFamily("swarm_drone_low_disk",
                                     "1 for a drone below drone.min_free_gb (it claims nothing), with the reason.",
                                     labels=["drone", "reason"])
        free = GaugeMetricFamily("swarm_drone_disk_free_bytes",
                                 "Free bytes the drone last reported for its build dir and PKGDIR.",
                                 labels=["drone", "dir"])
        for d in drones:
            builds.add_metric([d.name], d.built)
            if d.status != "offline":
                busy.add_metric([d.name], len(d.tasks))
                for t in d.tasks:
                    task.add_metric([d.name, t["cpv"]], 1)
                if d.slots is not None:
                    slots.add_metric([d.name], d.slots)
            if d.status == "misconfigured":
                misconfigured.add_metric([d.name, d.problem or ""], 1)
            if d.status == "low-disk":
                low_disk.add_metric([d.name, d.problem or ""], 1)
            for where, value in (("build", d.disk_free_build), ("pkgdir", d.disk_free_pkgdir)):
                if value is not None and d.status != "offline":
                    free.add_metric([d.name, where], value)
            failures.add_metric([d.name], d.failures)
            if d.heartbeat_age is not None:
                age.add_metric([d.name], d.heartbeat_age)
            if d.cpu is not None and d.status != "offline":
                cpu.add_metric([d.name], d.cpu)
            if d.mem is not None and d.status != "offline":
                mem.add_metric([d.name], d.mem)
        yield from (builds, age, cpu, mem, failures, misconfigured, low_disk, free, busy, slots, task)

    @staticmethod
    def _stats(stats: dict[str, str]) -> Iterator[Metric]:
        for field, (name, doc) in STAT_COUNTERS.items():
            yield CounterMetricFamily(name, doc, value=float(stats.get(field) or 0))
        rejected = CounterMetricFamily("swarm_upload_rejections", "Uploads the binhost refused, by reason.",
                                       labels=["reason"])
        for field, value in sorted(stats.items()):
            if field.startswith(UPLOAD_REJECTED_PREFIX):
                rejected.add_metric([field[len(UPLOAD_REJECTED_PREFIX):]], float(value or 0))
        yield rejected

    def _events(self) -> Iterator[Metric]:
        tally = self._tally
        assert tally is not None
        failures = CounterMetricFamily("swarm_drone_failures", "Failed build attempts by drone and outcome, "
                                       "since the exporter started.", labels=["drone", "outcome"])
        for (drone, outcome), value in sorted(tally.failures.items()):
            failures.add_metric([drone, outcome], value)
        heals = CounterMetricFamily("swarm_heal_actions", "Self-healing actions (restart, reboot, refused), "
                                    "since the exporter started.", labels=["drone", "action"])
        for (drone, action), value in sorted(tally.heals.items()):
            heals.add_metric([drone, action], value)
        durations = HistogramMetricFamily("swarm_build_duration_seconds",
                                          "Build durations of accepted packages, since the exporter started.")
        durations.add_metric([], tally.buckets(), sum_value=tally.duration_sum)
        yield from (failures, heals, durations)

    @staticmethod
    def _meta(meta: SwarmFacts, now: float, leader: str | None) -> Iterator[Metric]:
        yield GaugeMetricFamily("swarm_orchestrator_leader", "1 while an orchestrator holds the leader lease.",
                                value=1.0 if leader else 0.0)
        if meta.sync_time is not None:
            yield GaugeMetricFamily("swarm_sync_age_seconds", "Seconds since the last portage sync.",
                                    value=max(0.0, now - meta.sync_time))
        if meta.world_size is not None:
            yield GaugeMetricFamily("swarm_world_packages", "Packages @world resolves to.", value=meta.world_size)
        if meta.binhost_total is not None and meta.binhost_available is not None:
            binhost = GaugeMetricFamily("swarm_binhost_packages", "Packages world needs: available on the "
                                        "binhost, and in total.", labels=["kind"])
            binhost.add_metric(["available"], meta.binhost_available)
            binhost.add_metric(["total"], meta.binhost_total)
            yield binhost
        if meta.nightly_last is not None:
            nightly = GaugeMetricFamily("swarm_nightly_last_timestamp_seconds",
                                        "Time of the nightly run's last logged event (label: which event).",
                                        labels=["event"])
            nightly.add_metric([meta.nightly_last.event], meta.nightly_last.time)
            yield nightly


def make_registry(client: redis.Redis, config: Config) -> CollectorRegistry:
    """A registry holding only the swarm collector (no process metrics of the exporter itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwarmCollector(client, config))
    return registry


def serve_metrics(client: redis.Redis, config: Config, address: str, port: int) -> Any:
    """Serve ``/metrics`` on ``address:port`` from a daemon thread; returns the HTTP server.

    Call ``.shutdown()`` on the result to stop it (the orchestrator just exits).
    """
    server, _thread = start_http_server(port, addr=address, registry=make_registry(client, config))
    log.info("metrics on http://%s:%d/metrics", address, server.server_port)
    return server
