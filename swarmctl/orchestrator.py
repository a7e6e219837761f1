"""The orchestrator: one active leader running the maintenance loop.

Each sweep reclaims the work of offline drones (self-healing level 1), flags
hung or overdue builds, hands grounded or silent drones to the healing
policy (levels 2 and 3 are Ansible playbooks run by an executor), and every
integrity interval repairs queue counts that disagree with the jobs
(swarmctl.integrity). A second
orchestrator waits as a hot standby and takes the lease when the leader dies.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Protocol

import redis

from swarmctl import integrity, keys
from swarmctl.backoff import delays
from swarmctl.config import Config
from swarmctl.connection import TRANSIENT
from swarmctl.events import Events
from swarmctl.exceptions import SwarmError
from swarmctl.integrity import Repair
from swarmctl.queue import Queue
from swarmctl.registry import DroneInfo, DroneRegistry
from swarmctl.scripts import Scripts, decode

log = logging.getLogger("swarmctl.orchestrator")


class Healer(Protocol):
    """Decides and acts on drones that need more than reclaiming (see swarmctl.healing)."""

    def consider(self, drones: list[DroneInfo]) -> None: ...


@dataclass
class SweepReport:
    reclaimed: dict[str, list[str]] = field(default_factory=dict)
    #: Jobs given back because the drone they were delegated to does not hold them.
    reconciled: dict[str, list[str]] = field(default_factory=dict)
    overdue: list[str] = field(default_factory=list)
    repaired: list[Repair] = field(default_factory=list)


class Orchestrator:
    """Leader election plus the periodic maintenance sweep."""

    def __init__(self, client: redis.Redis, config: Config, healer: Healer | None = None,
                 ident: str | None = None) -> None:
        self.redis = client
        self.config = config
        self.queue = Queue(client, config)
        self.registry = DroneRegistry(client, config)
        self.events = Events(client, config.queue.events_max)
        self.scripts = Scripts(client)
        self.healer = healer
        self.id = ident or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stop = threading.Event()
        self.is_leader = False
        self._overdue_flagged: set[str] = set()
        self._next_integrity = 0.0  # monotonic time of the next integrity check
        #: Since when (monotonic) this process has reached Redis without an error; None while it cannot.
        self.reachable_since: float | None = None

    def hold_lease(self) -> bool:
        """Take or renew the leader lease; True while this process leads."""
        ttl_ms = int(self.config.orchestrator.leader_ttl * 1000)
        reply = self.scripts.leader(keys=[keys.LEADER], args=[self.id, max(1, ttl_ms)])
        if isinstance(reply, list):  # {'invalid', what}: never taken for a yes
            raise SwarmError(f"leader lease refused: {decode(reply)[1]}")
        leading = bool(reply)
        if leading and not self.is_leader:
            self.events.emit("leader", reason=f"orchestrator {self.id} took the lead")
            log.info("took the leader lease as %s", self.id)
        self.is_leader = leading
        return leading

    def resign(self) -> None:
        if self.is_leader:
            self.scripts.resign(keys=[keys.LEADER], args=[self.id])
            self.is_leader = False

    def sweep(self) -> SweepReport:
        """One maintenance pass (leader only)."""
        report = SweepReport()
        offline_after = self.config.orchestrator.offline_after
        for name in self.registry.offline(offline_after) if self.can_judge_silence(offline_after) else []:
            taken = self.queue.reclaim(name, offline_after, f"drone offline for over {offline_after:.0f} s")
            if taken:
                report.reclaimed[name] = taken
                log.warning("reclaimed %d job(s) from offline drone %s", len(taken), name)
        report.reconciled = self.reconcile()
        drones = self.registry.list(offline_after)
        report.overdue = self._flag_overdue(drones)
        report.repaired = self._check_integrity()
        if self.healer is not None:
            try:
                self.healer.consider(drones)
            except Exception:  # a healing bug must not stop reclaiming
                log.exception("healing policy failed")
        return report

    def reconcile(self) -> dict[str, list[str]]:
        """Take back every job delegated to a drone whose heartbeats prove it does not hold it.

        The lost claim reply: the claim ran in Redis, the reply never reached the drone, and the
        job would stay delegated to a live, idle drone for as long as it lives. The proof (see
        scripts.RECONCILE) never judges a claim whose reply may still arrive.
        """
        reconciled = {}
        for name in self.registry.names():
            taken = self.queue.reconcile(name)
            if taken:
                reconciled[name] = taken
                log.warning("took back %d job(s) drone %s does not hold: %s", len(taken), name, " ".join(taken))
        return reconciled

    def _check_integrity(self) -> list[Repair]:
        """Every integrity_interval: repair counts that disagree with the jobs (swarmctl.integrity)."""
        interval = self.config.orchestrator.integrity_interval
        if interval <= 0 or time.monotonic() < self._next_integrity:
            return []
        self._next_integrity = time.monotonic() + interval
        try:
            repaired = integrity.check(self.redis, self.config.queue.events_max)
        except TRANSIENT:
            raise
        except Exception:  # a checking bug must not stop reclaiming
            log.exception("queue integrity check failed")
            return []
        if repaired:
            log.warning("repaired the bookkeeping of %d job(s)", len(repaired))
        return repaired

    def can_judge_silence(self, offline_after: float) -> bool:
        """Is a drone's silence its own? Not while Redis itself was out of reach or restarting.

        Drones cannot heartbeat while Redis is down or cut off, so for offline_after after
        this process reaches Redis again (or after Redis restarted) nobody is reclaimed:
        otherwise every healthy drone's work would be taken back after each outage.
        """
        if self.reachable_since is None:
            self.reachable_since = time.monotonic()
        if time.monotonic() - self.reachable_since < offline_after:
            return False
        uptime = self.redis.info("server").get("uptime_in_seconds")
        return uptime is None or float(uptime) >= offline_after

    def _flag_overdue(self, drones: list[DroneInfo]) -> list[str]:
        """Events for hung builds and builds running far past their estimate (once per build)."""
        factor = self.config.drone.overdue_factor
        now = self.registry.server_time()
        flagged = []
        for drone in drones:
            if drone.status != "building":
                continue
            for task in drone.tasks:  # every build of a multi-slot drone, each judged alone
                cpv, started = task["cpv"], task["started"]
                if not cpv or not started:
                    continue
                marker = f"{drone.name}:{cpv}:{started}"
                if task["hung"] and f"hung:{marker}" not in self._overdue_flagged:
                    self._overdue_flagged.add(f"hung:{marker}")
                    self.events.emit("hung", job=cpv, drone=drone.name,
                                     reason="no log output and no CPU; killed if it stays so")
                estimate = float(self.redis.hget(keys.job(cpv), "estimate") or 0)
                if estimate and now - started > factor * estimate and marker not in self._overdue_flagged:
                    self._overdue_flagged.add(marker)
                    self.events.emit("overdue", job=cpv, drone=drone.name,
                                     reason=f"running {now - started:.0f} s, estimate {estimate:.0f} s")
                    flagged.append(cpv)
        return flagged

    def run(self, on_tick: Callable[[SweepReport | None], None] | None = None) -> None:
        """Loop until ``stop`` is set: lead when possible, sweep every interval."""
        interval = self.config.orchestrator.interval
        waits = None
        while not self.stop.is_set():
            try:
                leading = self.hold_lease()
                if self.reachable_since is None:
                    self.reachable_since = time.monotonic()
                report = self.sweep() if leading else None
                waits = None
                if on_tick is not None:
                    on_tick(report)
                self.stop.wait(interval)
            except TRANSIENT as exc:
                waits = waits or delays(base=0.5, cap=15.0)
                wait = next(waits)
                log.warning("Redis unavailable (%s); retrying in %.1f s", exc, wait)
                self.is_leader = False
                self.reachable_since = None
                self.stop.wait(wait)
        with suppress(*TRANSIENT):
            self.resign()
