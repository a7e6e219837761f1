"""Self-healing levels 2 and 3: the orchestrator decides, an Ansible executor acts.

Level 1 (reclaiming an offline drone's work) is the orchestrator's sweep. Here:

- Level 2: a grounded drone, or one that went silent, gets its service
  restarted by ``drone-restart.yml``. After a successful restart its grounding
  is lifted so it can prove itself; if it is unhealthy again at the next look,
  that restart counts as failed.
- Level 3: after ``restarts_before_reboot`` failed restarts, ``drone-reboot.yml``
  reboots the host, only when ``allow_reboot`` is on or an operator asked
  (``swarmctl heal NAME --reboot --yes``). The playbook refuses a protected host
  and checks the host's identity against the machine id recorded at enrollment.
- Both are aimed at one inventory host named like the drone: a name that is a group,
  or resolves to any other set of hosts, is refused before Ansible starts, and both
  playbooks refuse a host the target does not name and a protected host.
- A cooldown between actions on one drone: no restart storms.

Actions run in background threads so a slow playbook never stalls the sweep.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from swarmctl import ansible_assets, keys, paths
from swarmctl.config import Config
from swarmctl.events import Events
from swarmctl.exceptions import SwarmError
from swarmctl.registry import DroneInfo, DroneRegistry, validate_machine_id

log = logging.getLogger("swarmctl.healing")

RESTART_PLAYBOOK = "drone-restart.yml"
REBOOT_PLAYBOOK = "drone-reboot.yml"
UNHEALTHY = ("grounded", "offline")


@dataclass
class HealRecord:
    """What healing has done to one drone (kept in Redis, one JSON per drone)."""

    restarts: int = 0
    failed_restarts: int = 0
    reboots: int = 0
    last_kind: str = ""
    last_action: float = 0.0
    last_result: str = ""
    built_at_action: int = 0
    refused_at: float = 0.0


@dataclass(frozen=True)
class ActionOutcome:
    ok: bool
    summary: str


Executor = Callable[..., Any]  # swarmctl.ansible_exec.run_playbook's signature


def default_playbook_dir() -> Path:
    """The playbooks shipped in the package (or a system install's): see :mod:`swarmctl.ansible_assets`."""
    return ansible_assets.playbook_dir()


class Healer:
    """Decides which drones need a restart or a reboot, and has them done."""

    def __init__(self, client: redis.Redis, config: Config, executor: Executor | None = None) -> None:
        self.redis = client
        self.config = config
        self.registry = DroneRegistry(client, config)
        self.events = Events(client, config.queue.events_max)
        if executor is None:
            from swarmctl.ansible_exec import run_playbook

            executor = run_playbook
        self.executor = executor
        cfg = config.healing
        if not cfg.inventory:
            raise SwarmError("healing.inventory is not set: the healing playbooks need an inventory")
        self.inventory = Path(cfg.inventory)
        self.playbook_dir = Path(cfg.playbook_dir) if cfg.playbook_dir else default_playbook_dir()
        self.data_root = paths.cache_home() / "ansible-runner"
        self._busy: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, client: redis.Redis, config: Config) -> Healer:
        return cls(client, config)

    # -- records ---------------------------------------------------------------------------

    def record(self, name: str) -> HealRecord:
        raw = self.redis.hget(keys.HEALING, name)
        return HealRecord(**json.loads(raw)) if raw else HealRecord()

    def _save(self, name: str, record: HealRecord) -> None:
        self.redis.hset(keys.HEALING, name, json.dumps(asdict(record)))

    # -- the policy --------------------------------------------------------------------------

    def consider(self, drones: list[DroneInfo]) -> None:
        """Called by the orchestrator each sweep with the fleet."""
        now = self.registry.server_time()
        cfg = self.config.healing
        for drone in drones:
            if drone.revoked or self.busy(drone.name):
                continue
            record = self.record(drone.name)
            if drone.status not in UNHEALTHY:
                if record.last_kind and drone.built > record.built_at_action:
                    self._save(drone.name, HealRecord())  # it works again: start over
                continue
            if drone.last_heartbeat is None or now - record.last_action < cfg.cooldown_seconds:
                continue  # never ran (nothing to restart), or cooling down
            if record.last_kind == "restart":
                record.failed_restarts += 1  # unhealthy again after a restart
                self._save(drone.name, record)
            if record.failed_restarts < cfg.restarts_before_reboot:
                self.start(drone.name, "restart")
            elif cfg.allow_reboot:
                self.start(drone.name, "reboot")
            elif now - record.refused_at >= cfg.cooldown_seconds:
                record.refused_at = now
                self._save(drone.name, record)
                self.events.emit("heal-refused", drone=drone.name,
                                 reason=f"{record.failed_restarts} restarts did not help; a reboot needs "
                                        f"permission: swarmctl heal {drone.name} --reboot --yes")

    def busy(self, name: str) -> bool:
        with self._lock:
            thread = self._busy.get(name)
            return thread is not None and thread.is_alive()

    def start(self, name: str, kind: str) -> threading.Thread:
        """Run an action in the background (one at a time per drone)."""
        thread = threading.Thread(target=self.act, args=(name, kind), name=f"heal-{kind}-{name}", daemon=True)
        with self._lock:
            self._busy[name] = thread
        thread.start()
        return thread

    def wait(self, timeout: float | None = None) -> None:
        """Wait for every running action (tests, shutdown)."""
        with self._lock:
            threads = list(self._busy.values())
        for thread in threads:
            thread.join(timeout)

    # -- the actions -------------------------------------------------------------------------

    def act(self, name: str, kind: str, operator: bool = False) -> ActionOutcome:
        """Restart or reboot one drone now (operator=True: asked for by a person)."""
        if kind not in ("restart", "reboot"):
            raise ValueError(kind)
        info = self.registry.redis.hgetall(keys.drone(name))
        if not info:
            raise SwarmError(f"no drone named {name!r} is enrolled")
        record = self.record(name)
        record.last_kind, record.last_action = kind, self.registry.server_time()
        record.built_at_action = int(info.get("built") or 0)
        extra: dict[str, Any] = {"target": name}
        if kind == "reboot":
            machine_id = info.get("machine_id")
            if not machine_id:
                outcome = ActionOutcome(False, f"no machine id was recorded for {name} at enrollment; "
                                               "refusing to reboot an unidentified host")
                self.events.emit("heal-refused", drone=name, reason=outcome.summary)
                return outcome
            extra["expected_machine_id"] = validate_machine_id(machine_id)
        self._save(name, record)
        who = "operator" if operator else "orchestrator"
        self.events.emit(f"{kind}ing", drone=name, reason=f"level {2 if kind == 'restart' else 3}, by {who}")
        playbook = RESTART_PLAYBOOK if kind == "restart" else REBOOT_PLAYBOOK
        try:
            # single_host: a drone's name must resolve to that one inventory host, never to a
            # group (a drone enrolled as "binhost" must not reach the binhost group's hosts).
            result = self.executor(playbook, self.inventory, name, extra, self.data_root,
                                   playbook_dir=self.playbook_dir, single_host=True)
            outcome = ActionOutcome(bool(result.ok), result.summary)
        except (OSError, RuntimeError) as exc:
            outcome = ActionOutcome(False, f"{playbook} could not run: {exc}")
        record = self.record(name)
        record.last_result = outcome.summary
        if kind == "restart":
            record.restarts += 1
        if outcome.ok:
            if kind == "reboot":
                record.reboots += 1
                record.failed_restarts = 0
            self.registry.release(name)  # let it prove itself
        # A restart that did not help is counted by consider() when it finds the drone still unhealthy.
        self._save(name, record)
        refused = "REFUSED" in outcome.summary
        kind_done = {"restart": "restarted", "reboot": "rebooted"}[kind] if outcome.ok else (
            "heal-refused" if refused else "heal-failed")
        self.events.emit(kind_done, drone=name, reason=outcome.summary[:400])
        log.warning("%s %s: %s", kind, name, outcome.summary)
        return outcome
