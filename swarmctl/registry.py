"""Drone enrollment, tokens, heartbeats and the fleet view.

A drone must be enrolled (a per-drone token, stored only as a SHA-256 digest)
to heartbeat, take work or upload: a forgotten container that starts a drone
daemon gets nothing, unlike the seed project's "ghost drone".
"""

from __future__ import annotations

import builtins
import json
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.connection import server_time
from swarmctl.events import Events
from swarmctl.exceptions import NotEnrolled, SwarmError
from swarmctl.queue import Queue, refused
from swarmctl.sanitize import printable
from swarmctl.scripts import Scripts, decode
from swarmctl.targets import DEFAULT_TARGET
from swarmctl.tokens import new_token, token_sha, validate_token

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_MACHINE_ID_RE = re.compile(r"[0-9a-f]{32}")
STATUSES = ("building", "idle", "grounded", "misconfigured", "low-disk", "stopping", "offline")
#: Statuses whose reason the drone reports (``problem``): it claims nothing until the cause goes.
WAITING = ("misconfigured", "low-disk")


def validate_name(name: str) -> str:
    """Drone names reach file names, events and Ansible limits: keep them plain."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise SwarmError(f"invalid drone name {name!r} (letters, digits, '.', '_', '-'; at most 63)")
    return name


def validate_machine_id(machine_id: str) -> str:
    """A systemd/OpenRC machine id: 32 lowercase hex digits (it reaches the reboot playbook)."""
    if not isinstance(machine_id, str) or not _MACHINE_ID_RE.fullmatch(machine_id):
        raise SwarmError(f"invalid machine id {machine_id!r} (32 hex digits, as in /etc/machine-id)")
    return machine_id


@dataclass
class DroneInfo:
    """One drone as the fleet view shows it."""

    name: str
    status: str
    task: str | None
    task_started: float | None
    cpu: float | None
    mem: float | None
    last_heartbeat: float | None
    heartbeat_age: float | None
    failures: int
    grounded_until: float | None
    built: int
    revoked: bool
    hung: bool
    machine_id: str | None
    host: str | None
    #: Why a misconfigured or low-disk drone cannot build (its preflight's or disk's reason), else None.
    problem: str | None = None
    #: Every current build: {"cpv", "started", "hung"}, oldest first (``task`` is the first).
    tasks: list[dict[str, Any]] = field(default_factory=list)
    #: Builds it runs at once, and the cores, memory and build disk (MiB) it declares (None: not
    #: reported, an older drone).
    slots: int | None = None
    mem_total: int | None = None
    cores: int | None = None
    disk_total: int | None = None
    #: Free bytes of its build dir and PKGDIR, as it last reported (None: not reported).
    disk_free_build: int | None = None
    disk_free_pkgdir: int | None = None
    #: The build targets it declared (swarmctl.targets), and the tree revision it builds from.
    targets: list[str] = field(default_factory=lambda: [DEFAULT_TARGET])
    tree: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(value: float | None) -> int | None:
    return int(value) if value is not None else None


def parse_tasks(row: dict[str, str], status: str) -> list[dict[str, Any]]:
    """A drone's current builds from its heartbeat (drone-written: every entry checked).

    An older drone sends only ``task``/``task_started``: that one build, if any.
    """
    if status == "offline":
        return []
    try:
        raw = json.loads(row.get("tasks") or "null")
    except ValueError:
        raw = None
    if not isinstance(raw, list):
        task = printable(row.get("task") or None)
        if not task:
            return []
        started = row.get("task_started") or ""
        try:
            when = float(started) if started else None
        except ValueError:
            when = None
        return [{"cpv": task, "started": when, "hung": row.get("hung") == "1"}]
    tasks = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("cpv"), str):
            continue
        stamp = entry.get("started")
        tasks.append({"cpv": printable(entry["cpv"]),
                      "started": float(stamp) if isinstance(stamp, int | float) and math.isfinite(stamp) else None,
                      "hung": entry.get("hung") is True})
    return tasks


@dataclass(frozen=True)
class HeartbeatReply:
    grounded_until: float
    server_time: float
    #: For each job the heartbeat said it holds: does the drone still own it?
    owned: dict[str, bool] = field(default_factory=dict)

    @property
    def owns_current(self) -> bool:
        """The drone owns every job it said it holds (true when it holds none)."""
        return all(self.owned.values())


class DroneRegistry:
    """Enrolled drones and their live state in Redis."""

    def __init__(self, client: redis.Redis, config: Config) -> None:
        self.redis = client
        self.config = config
        self.scripts = Scripts(client)
        self.events = Events(client, config.queue.events_max)

    def enroll(self, name: str, machine_id: str | None = None, token: str | None = None) -> str:
        """Enroll (or re-enroll, invalidating the old token) and return the token.

        ``token`` is a pre-generated one (from a vault or a provisioning tool); None makes a new one.
        """
        validate_name(name)
        token = new_token() if token is None else validate_token(token)
        fields: dict[str, Any] = {"token_sha256": token_sha(token), "revoked": 0,
                                  "enrolled_at": int(self.server_time() * 1000)}
        if machine_id:
            fields["machine_id"] = validate_machine_id(machine_id.strip().lower())
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.drone(name), mapping=fields)
            pipe.sadd(keys.DRONES, name)
            pipe.execute()
        self.events.emit("enrolled", drone=name)
        return token

    def revoke(self, name: str, queue: Queue) -> list[str]:
        """Revoke a drone: it gets no work and its jobs go back to the queue."""
        self._require(name)
        self.redis.hset(keys.drone(name), "revoked", 1)
        taken = queue.reclaim(name, None, "drone revoked")
        self.events.emit("revoked", drone=name)
        return taken

    def authenticate(self, name: str, token: str) -> bool:
        """True when ``name`` is enrolled, not revoked, and ``token`` is its token."""
        if not _NAME_RE.fullmatch(name or "") or not token:
            return False
        stored, revoked = self.redis.hmget(keys.drone(name), "token_sha256", "revoked")
        return bool(stored) and revoked != "1" and secrets.compare_digest(stored, token_sha(token))

    def _require(self, name: str) -> None:
        validate_name(name)
        if not self.redis.sismember(keys.DRONES, name):
            raise NotEnrolled(f"no drone named {name!r} is enrolled")

    def heartbeat(self, name: str, token: str, fields: dict[str, Any], current: str | None = None,
                  lease: str | None = None, *,
                  held: Sequence[tuple[str, str]] | None = None, session: str = "",
                  settled: int = 0) -> HeartbeatReply:
        """Record liveness, status and the jobs the drone holds; raises NotEnrolled for an unknown
        or revoked drone.

        ``held`` lists (cpv, lease) of every job the drone holds (``current``/``lease`` is the
        one-job shorthand); with its claim ``session`` and the last ``settled`` claim request
        (see scripts.HEARTBEAT) the orchestrator can prove a delegated job is not held.
        """
        if held is None:
            held = [(current, lease or "")] if current else []
        # The script splits the list at spaces; a CPV with white space (never a valid one, only
        # one planted straight into Redis) cannot be reported held, and the builder refuses it.
        held = [(cpv, ls) for cpv, ls in held if cpv and not any(ch.isspace() for ch in cpv + (ls or ""))]
        flat: list[str] = []
        for key, value in fields.items():
            flat += [key, "" if value is None else str(value)]
        reply = refused(decode(self.scripts.heartbeat(keys=list(keys.QUEUE_KEYS), args=[
            name, token_sha(token), " ".join(c for c, _ in held), " ".join(ls or "-" for _, ls in held),
            self.config.queue.events_max, session, settled, *flat])))
        if reply[0] != "ok":
            raise NotEnrolled(f"drone {name!r} is not enrolled, revoked, or its token is wrong")
        owned = {cpv: flag == "1" for (cpv, _), flag in zip(held, reply[3], strict=True)}
        return HeartbeatReply(int(reply[1]) / 1000.0, int(reply[2]) / 1000.0, owned)

    def ground(self, name: str, seconds: float, queue: Queue) -> list[str]:
        """Ground a drone by hand for ``seconds`` and take its work back."""
        self._require(name)
        until_ms = int((self.server_time() + seconds) * 1000)
        self.redis.hset(keys.drone(name), mapping={"grounded_until": until_ms, "failures": 0})
        taken = queue.reclaim(name, None, "drone grounded by operator")
        self.events.emit("grounded", drone=name, reason=f"by operator for {seconds:.0f} s")
        return taken

    def release(self, name: str) -> None:
        """End a grounding early."""
        self._require(name)
        self.redis.hset(keys.drone(name), mapping={"grounded_until": 0, "failures": 0})
        self.events.emit("released", drone=name, reason="grounding lifted by operator")

    def server_time(self) -> float:
        return server_time(self.redis)

    def names(self) -> list[str]:
        return sorted(self.redis.smembers(keys.DRONES))

    def list(self, offline_after: float | None = None) -> list[DroneInfo]:
        """Every enrolled drone with its derived status (offline when silent too long)."""
        if offline_after is None:
            offline_after = self.config.orchestrator.offline_after
        names = self.names()
        now = self.server_time()
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(keys.drone(name))
            rows = pipe.execute()
        return [self._info(name, row, now, offline_after) for name, row in zip(names, rows, strict=True)]

    @staticmethod
    def _info(name: str, row: dict[str, str], now: float, offline_after: float) -> DroneInfo:
        def num(key: str) -> float | None:
            value = row.get(key)
            try:
                return float(value) if value not in (None, "") else None
            except ValueError:
                return None

        last = row.get("last_seen")
        last_s = int(last) / 1000.0 if last else None
        age = max(0.0, now - last_s) if last_s else None
        grounded_ms = num("grounded_until") or 0.0
        grounded_until = grounded_ms / 1000.0 if grounded_ms / 1000.0 > now else None
        revoked = row.get("revoked") == "1"
        reported = row.get("status") or "idle"
        if revoked or age is None or age > offline_after:
            status = "offline"
        elif reported in WAITING:  # the cause beats the breaker's verdict on it
            status = reported
        elif grounded_until:
            status = "grounded"
        else:
            status = reported if reported in STATUSES else "idle"
        started = num("task_started")
        return DroneInfo(
            name=name, status=status, task=printable(row.get("task") or None),
            task_started=started, cpu=num("cpu"), mem=num("mem"), last_heartbeat=last_s,
            heartbeat_age=round(age, 1) if age is not None else None,
            failures=int(num("failures") or 0), grounded_until=grounded_until,
            built=int(num("built") or 0), revoked=revoked, hung=row.get("hung") == "1",
            machine_id=printable(row.get("machine_id") or None), host=printable(row.get("host") or None),
            problem=printable(row.get("problem") or None) if status in WAITING else None,
            disk_free_build=_count(num("disk_free_build")), disk_free_pkgdir=_count(num("disk_free_pkgdir")),
            tasks=parse_tasks(row, status), slots=_int(num("slots")), mem_total=_int(num("mem_total")),
            cores=_int(num("cores")), disk_total=_int(num("disk_total")),
            targets=(printable(row.get("targets") or None) or DEFAULT_TARGET).split(),
            tree=printable(row.get("tree") or None),
        )

    def offline(self, offline_after: float) -> builtins.list[str]:  # list: the method above
        """Drones with jobs whose heartbeat is older than the threshold (server clock)."""
        cutoff = (self.server_time() - offline_after) * 1000
        silent = self.redis.zrangebyscore(keys.HEARTBEATS, "-inf", cutoff)
        never_seen = [n for n in self.names() if self.redis.zscore(keys.HEARTBEATS, n) is None]
        return [n for n in silent + never_seen if self.redis.scard(keys.drone_jobs(n))]


def _count(value: float | None) -> int | None:
    """A drone-written byte count, or None when it is missing or not a count."""
    return int(value) if value is not None and math.isfinite(value) and value >= 0 else None
