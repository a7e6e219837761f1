"""``swarmctl status``: the swarm at a glance, and whether someone needs to look at it.

Like the story's ``apkg status``: Sync, World, Binary, Swarm, plus the queue.
:func:`gather_status` reads Redis (and the nightly status file when this host
has it); :func:`assess` lists what needs attention; :func:`exit_code` turns that
into the process's exit status, monitoring-plugin style:

    0  all well
    1  warning: needs a look (blocked or failed packages, sync never recorded,
       no orchestrator leading while work is open)
    2  critical: the farm is not doing its job (sync older than the limit, the
       last nightly FAILED or the last cron verification FAILED: the nightly job
       is not scheduled, no drone available while work is queued); also what
       swarmctl exits with when Redis cannot be reached

``--json`` prints :func:`as_json`, described by :data:`JSON_SCHEMA`.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from swarmctl import keys
from swarmctl.capacity import Unfit, unfit_jobs
from swarmctl.config import Config
from swarmctl.facts import SwarmFacts
from swarmctl.nightly import (
    NightlyMark,
    last_nightly,
    nightly_report_path,
    nightly_status_path,
    read_nightly_file,
)
from swarmctl.queue import queue_counts, read_counts
from swarmctl.redis_memory import HINT, memory_use
from swarmctl.registry import DroneRegistry
from swarmctl.target_status import TargetStatus, gather_targets

SCHEMA_ID = "build-swarm/status/1"
#: Default oldest acceptable portage sync (the story's "red when older than a day").
MAX_SYNC_AGE = 86400.0

OK, WARNING, CRITICAL = 0, 1, 2
SEVERITY_CODE = {"warning": WARNING, "critical": CRITICAL}


@dataclass(frozen=True)
class Attention:
    """One thing an operator should look at, with a stable machine-readable code."""

    code: str
    severity: str  # warning | critical
    message: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class SwarmCounts:
    drones_total: int = 0
    drones_online: int = 0
    drones_available: int = 0  # online and not grounded or stopping
    drones_grounded: int = 0
    drones_misconfigured: int = 0  # their preflight fails: they claim nothing
    drones_low_disk: int = 0  # below drone.min_free_gb: they claim nothing until space returns
    building: int = 0


@dataclass
class StatusReport:
    """What ``swarmctl status`` knows, read at ``now`` (Redis clock)."""

    now: float
    meta: SwarmFacts
    nightly: NightlyMark | None
    queue: dict[str, int]
    swarm: SwarmCounts
    leader: str | None
    max_sync_age: float = MAX_SYNC_AGE
    attention: list[Attention] = field(default_factory=list)
    #: Misconfigured drones and why (their preflight's reason).
    misconfigured: dict[str, str] = field(default_factory=dict)
    #: Queued jobs no enrolled drone could ever fit (swarmctl.capacity).
    unfit: list[Unfit] = field(default_factory=list)
    #: Drones low on disk and what is short.
    low_disk: dict[str, str] = field(default_factory=dict)
    report_path: str | None = None    # the nightly's report of the night's work, when written
    report_time: float | None = None  # when it was written (this host's clock: the file's mtime)
    #: Each build target's queue, coverage and drones (swarmctl.target_status).
    targets: list[TargetStatus] = field(default_factory=list)

    @property
    def sync_age(self) -> float | None:
        return None if self.meta.sync_time is None else max(0.0, self.now - self.meta.sync_time)

    @property
    def sync_bad(self) -> bool:
        """Red: older than the limit, or the last nightly failed."""
        stale = self.sync_age is not None and self.sync_age > self.max_sync_age
        return stale or (self.nightly is not None and self.nightly.event == "FAILED")

    @property
    def open_jobs(self) -> int:
        return self.queue.get("needed", 0) + self.queue.get("delegated", 0)


def gather_status(client: redis.Redis, config: Config, max_sync_age: float = MAX_SYNC_AGE) -> StatusReport:
    """Read everything status shows in one pipelined round trip plus the drones."""
    with client.pipeline(transaction=False) as pipe:
        pipe.time()
        n = queue_counts(pipe, config.targets)
        pipe.hgetall(keys.FACTS)
        pipe.get(keys.LEADER)
        replies = pipe.execute()
    seconds, micros = replies[0]
    queue = read_counts(replies[1:1 + n])
    meta = SwarmFacts.from_hash(replies[1 + n])
    drones = [d for d in DroneRegistry(client, config).list() if not d.revoked]
    swarm = SwarmCounts(
        drones_total=len(drones),
        drones_online=sum(1 for d in drones if d.status != "offline"),
        drones_available=sum(1 for d in drones if d.status in ("building", "idle")),
        drones_grounded=sum(1 for d in drones if d.status == "grounded"),
        drones_misconfigured=sum(1 for d in drones if d.status == "misconfigured"),
        drones_low_disk=sum(1 for d in drones if d.status == "low-disk"),
        building=queue["delegated"],
    )
    report = StatusReport(now=seconds + micros / 1e6, meta=meta,
                          nightly=last_nightly(meta, read_nightly_file(nightly_status_path(config))),
                          queue=queue, swarm=swarm, leader=replies[2 + n], max_sync_age=max_sync_age,
                          misconfigured={d.name: d.problem or "?" for d in drones if d.status == "misconfigured"},
                          low_disk={d.name: d.problem or "?" for d in drones if d.status == "low-disk"},
                          unfit=unfit_jobs(client, drones), targets=gather_targets(client, config, queue, drones))
    report.attention = (assess(report) + signing_attention(config) + memory_attention(client, config)
                        + binhost_attention(config))
    report.attention.sort(key=lambda a: -SEVERITY_CODE[a.severity])
    page = nightly_report_path(config)
    with contextlib.suppress(OSError):
        report.report_time = page.stat().st_mtime
        report.report_path = str(page)
    return report


def signing_attention(config: Config) -> list[Attention]:
    """The binhost's signing key and newest packages, when this host is the binhost."""
    from swarmctl.binhost.signing import config_trust_problems

    try:
        problems = config_trust_problems(config) or []
    except Exception as exc:  # gpg missing or broken: say so, do not hide the rest of status
        return [Attention("signing_unknown", "warning", f"cannot check the signing key: {exc}")]
    return [Attention(p.code, p.severity, p.message) for p in problems]


def binhost_attention(config: Config) -> list[Attention]:
    """On the binhost (binhost.dir): a disk below binhost.min_free_mb, a candidate generation
    whose gates failed (clients still get the older published one)."""
    import shutil

    from swarmctl.binhost import generations

    directory = config.binhost.dir
    if not directory or not Path(directory).is_dir():
        return []
    found = []
    floor = config.binhost.min_free_mb * 2**20
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(directory).free
        if floor and free < floor:
            found.append(Attention("binhost_low_disk", "critical",
                                   f"binhost {directory} has {free // 2**20} MiB free, below binhost.min_free_mb "
                                   f"({config.binhost.min_free_mb}): uploads are refused (507); "
                                   "swarmctl binhost gc --dry-run shows what can go"))
    with contextlib.suppress(Exception):  # an unreadable record must not hide the rest of status
        ids = generations.generation_ids(Path(directory))
        if ids:
            newest = generations.load(Path(directory), ids[-1])
            if newest.state == "rejected":
                found.append(Attention("promotion_blocked", "critical",
                                       f"generation {newest.id} was not promoted: {newest.gates.get('reason', '?')} "
                                       f"(clients get generation {generations.published_id(Path(directory))})"))
    return found


def memory_attention(client: redis.Redis, config: Config) -> list[Attention]:
    """Redis nearing its maxmemory (nothing when it has none)."""
    use = memory_use(client)
    severity = use.severity(config) if use is not None else None
    if use is None or severity is None:
        return []
    return [Attention("redis_memory", severity, f"{use.message()}: {HINT}")]


def assess(report: StatusReport) -> list[Attention]:
    """Everything that needs attention, most severe first."""
    found: list[Attention] = []
    age = report.sync_age
    if report.meta.sync_time is None:
        found.append(Attention("sync_unknown", "warning",
                               "no portage sync recorded yet (has the nightly run ever finished?)"))
    elif age is not None and age > report.max_sync_age:
        found.append(Attention("sync_stale", "critical",
                               f"last sync {age / 3600:.1f} h ago (limit {report.max_sync_age / 3600:g} h)"))
    if report.nightly is not None and report.nightly.event == "FAILED":
        detail = f": {report.nightly.detail}" if report.nightly.detail else ""
        found.append(Attention("nightly_failed", "critical", f"the last nightly run FAILED{detail}"))
    cron = report.meta.cron_verify
    if cron is not None and not cron.ok:
        detail = f": {cron.detail}" if cron.detail else ""
        found.append(Attention("cron_failed", "critical",
                               f"the last cron verification FAILED, the nightly job will not run{detail}"))
    queued = report.open_jobs
    if queued and report.swarm.drones_available == 0:
        why = ("no drones enrolled" if report.swarm.drones_total == 0 else
               f"{report.swarm.drones_online}/{report.swarm.drones_total} online, "
               f"{report.swarm.drones_grounded} grounded, {report.swarm.drones_misconfigured} misconfigured, "
               f"{report.swarm.drones_low_disk} low on disk")
        found.append(Attention("no_drone_online", "critical",
                               f"{queued} job(s) queued but no drone can take work ({why})"))
    if report.misconfigured:
        found.append(Attention("misconfigured", "warning", "; ".join(
            f"{name} misconfigured: {why}" for name, why in sorted(report.misconfigured.items()))
            + " (swarmctl doctor on that host prints the fix)"))
    if report.unfit:
        found.append(Attention("unfit", "warning", f"{len(report.unfit)} job(s) no enrolled drone can ever build: "
                               + "; ".join(f"{u.cpv} {u.reason}" for u in report.unfit[:5])
                               + " (enroll a larger drone, or correct queue.constraints_file)"))
    if report.low_disk:
        found.append(Attention("low_disk", "warning", "; ".join(
            f"{name} low on disk: {why}" for name, why in sorted(report.low_disk.items()))
            + " (it resumes by itself once space is freed)"))
    if queued and not report.leader:
        found.append(Attention("no_orchestrator", "warning",
                               "no orchestrator is leading: work of drones that die is not reclaimed"))
    if len(report.targets) > 1 and not any(a.code == "no_drone_online" for a in found):
        found += [Attention("target_stalled", "critical", t.stalled) for t in report.targets if t.stalled]
    found += [Attention("tree_mismatch", "warning", f"target {t.name} was planned at tree {t.tree[:40]}; "
                        + ", ".join(f"{d} is at {rev[:40]}" for d, rev in sorted(t.tree_mismatch.items()))
                        + " (a git tree catches up by itself; another gives the jobs back)")
              for t in report.targets if t.tree and t.tree_mismatch]
    blocked = report.queue.get("blocked", 0)
    if blocked:
        found.append(Attention("blocked", "warning",
                               f"{blocked} package(s) blocked (failed on several drones): "
                               "swarmctl queue list --state blocked"))
    failed = report.queue.get("failed", 0)
    if failed:
        found.append(Attention("failed", "warning",
                               f"{failed} package(s) failed for good: swarmctl queue list --state failed"))
    return sorted(found, key=lambda a: -SEVERITY_CODE[a.severity])


def exit_code(attention: list[Attention]) -> int:
    return max((SEVERITY_CODE[a.severity] for a in attention), default=OK)


def as_json(report: StatusReport) -> dict[str, Any]:
    """The ``--json`` document (see JSON_SCHEMA)."""
    meta = report.meta
    return {
        "schema": SCHEMA_ID,
        "time": round(report.now, 3),
        "sync": {
            "time": meta.sync_time,
            "age_seconds": None if report.sync_age is None else round(report.sync_age, 1),
            "max_age_seconds": report.max_sync_age,
            "ok": meta.sync_time is not None and not report.sync_bad,
            "nightly": report.nightly.as_dict() if report.nightly else None,
            "cron": meta.cron_verify.as_dict() if meta.cron_verify else None,
        },
        "world": {"packages": meta.world_size},
        "binary": {
            "available": meta.binhost_available,
            "total": meta.binhost_total,
            "percent": None if meta.binhost_percent is None else round(meta.binhost_percent, 2),
        },
        "swarm": asdict(report.swarm) | {"leader": report.leader},
        "queue": dict(report.queue),
        "targets": [t.as_dict() for t in report.targets],
        "report": None if report.report_path is None else {"path": report.report_path,
                                                            "time": report.report_time},
        "drift": meta.drift.as_dict() if meta.drift else None,
        "attention": [a.as_dict() for a in report.attention],
        "exit_code": exit_code(report.attention),
    }


_COUNT = {"type": "integer", "minimum": 0}
_NULLABLE_COUNT = {"type": ["integer", "null"], "minimum": 0}
_NULLABLE_TIME = {"type": ["number", "null"]}

#: JSON Schema (draft 2020-12) of ``swarmctl status --json``; docs/operator-guide.md explains it.
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "swarmctl status --json",
    "type": "object",
    "required": ["schema", "time", "sync", "world", "binary", "swarm", "queue", "targets", "report", "drift",
                 "attention", "exit_code"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "report": {
            "description": "the nightly's picture of the night's work (swarmctl report), when written",
            "type": ["object", "null"],
            "required": ["path", "time"],
            "additionalProperties": False,
            "properties": {"path": {"type": "string"}, "time": {"type": "number"}},
        },
        "drift": {
            "description": "the last drift check (swarmctl drift): hosts that are no longer what site.yml made them",
            "oneOf": [
                {"type": "null"},
                {"type": "object", "required": ["time", "drifted", "failed", "current"], "additionalProperties": False,
                 "properties": {
                     "time": {"type": "number"},
                     "drifted": {"type": "object", "description": "host -> the tasks that would change it",
                                 "additionalProperties": {"type": "array", "items": {"type": "string"}}},
                     "failed": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "host -> why it could not be checked"},
                     "current": {"type": "integer", "minimum": 0, "description": "hosts found unchanged"}}},
            ],
        },
        "time": {"type": "number", "description": "Redis server time, epoch seconds"},
        "sync": {
            "type": "object",
            "required": ["time", "age_seconds", "max_age_seconds", "ok", "nightly", "cron"],
            "additionalProperties": False,
            "properties": {
                "time": _NULLABLE_TIME | {"description": "last successful emerge --sync, epoch seconds"},
                "age_seconds": _NULLABLE_TIME,
                "max_age_seconds": {"type": "number"},
                "ok": {"type": "boolean", "description": "recorded, younger than the limit, nightly not FAILED"},
                "nightly": {
                    "oneOf": [
                        {"type": "null"},
                        {"type": "object", "required": ["event", "time", "detail"], "additionalProperties": False,
                         "properties": {"event": {"enum": ["STARTED", "FINISHED", "FAILED"]},
                                        "time": {"type": "number"}, "detail": {"type": "string"}}},
                    ],
                },
                "cron": {
                    "description": "last check that the nightly cron job is really scheduled (cron-verify)",
                    "oneOf": [
                        {"type": "null"},
                        {"type": "object", "required": ["ok", "time", "detail"], "additionalProperties": False,
                         "properties": {"ok": {"type": "boolean"}, "time": {"type": "number"},
                                        "detail": {"type": "string"}}},
                    ],
                },
            },
        },
        "world": {"type": "object", "required": ["packages"], "additionalProperties": False,
                  "properties": {"packages": _NULLABLE_COUNT}},
        "binary": {
            "type": "object", "required": ["available", "total", "percent"], "additionalProperties": False,
            "properties": {"available": _NULLABLE_COUNT, "total": _NULLABLE_COUNT,
                           "percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100}},
        },
        "swarm": {
            "type": "object",
            "required": ["drones_total", "drones_online", "drones_available", "drones_grounded",
                         "drones_misconfigured", "drones_low_disk", "building", "leader"],
            "additionalProperties": False,
            "properties": {"drones_total": _COUNT, "drones_online": _COUNT, "drones_available": _COUNT,
                           "drones_grounded": _COUNT, "drones_misconfigured": _COUNT, "drones_low_disk": _COUNT,
                           "building": _COUNT,
                           "leader": {"type": ["string", "null"], "description": "orchestrator holding the lease"}},
        },
        "queue": {
            "type": "object",
            "required": [*keys.STATES, "ready", "waiting"],
            "additionalProperties": False,
            "properties": {name: _COUNT for name in (*keys.STATES, "ready", "waiting")},
        },
        "targets": {
            "description": "each build target: its jobs, binary coverage at the last sync, drones that build it",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "queue", "world", "available", "coverage_percent", "tree", "drones",
                             "drones_available", "stalled", "tree_mismatch"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "queue": {"type": "object", "additionalProperties": _COUNT},
                    "world": _NULLABLE_COUNT, "available": _NULLABLE_COUNT,
                    "coverage_percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
                    "tree": {"type": ["string", "null"], "description": "tree revision of its last sync"},
                    "drones": {"type": "array", "items": {"type": "string"}},
                    "drones_available": {"type": "array", "items": {"type": "string"}},
                    "stalled": {"type": ["string", "null"], "description": "why its open jobs cannot progress"},
                    "tree_mismatch": {"type": "object", "additionalProperties": {"type": "string"},
                                      "description": "drones building it from another tree revision"},
                },
            },
        },
        "attention": {
            "type": "array",
            "items": {
                "type": "object", "required": ["code", "severity", "message"], "additionalProperties": False,
                "properties": {
                    "code": {"enum": ["sync_unknown", "sync_stale", "nightly_failed", "cron_failed", "no_drone_online",
                                      "misconfigured", "low_disk", "redis_memory", "unfit", "no_orchestrator",
                                      "blocked", "failed", "target_stalled", "tree_mismatch"]},
                    "severity": {"enum": ["warning", "critical"]},
                    "message": {"type": "string"},
                },
            },
        },
        "exit_code": {"enum": [OK, WARNING, CRITICAL]},
    },
}
