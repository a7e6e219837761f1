"""Each build target at a glance: its queue, its binary coverage, and whether any drone builds it.

``queue sync`` records every target's world size, coverage and tree revision
(:func:`record_sync`); :func:`gather_targets` adds the per-target job counts and the
drones that declared the target. A target with open jobs and no available drone
that builds it is *stalled*, with the reason (no drone declares it, or those that do
are offline, grounded or misconfigured).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from swarmctl import keys
from swarmctl.targets import several, target_of

if TYPE_CHECKING:
    from swarmctl.config import Config
    from swarmctl.registry import DroneInfo

#: Drone statuses that take work.
AVAILABLE = ("building", "idle")
#: Members read per SSCAN step when counting a multi-target farm's states.
SCAN_COUNT = 5000


@dataclass
class TargetStatus:
    """One target's queue, coverage and drones."""

    name: str
    queue: dict[str, int] = field(default_factory=dict)
    world: int | None = None
    available: int | None = None
    coverage_percent: float | None = None
    tree: str | None = None
    drones: list[str] = field(default_factory=list)        # that declared it
    drones_available: list[str] = field(default_factory=list)
    stalled: str | None = None                               # why its open jobs cannot progress
    #: Drones that build it whose tree is at another revision than its last sync's (they give
    #: its jobs back unless they can bring their tree to the job's revision): name -> their revision.
    tree_mismatch: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_sync(client: redis.Redis, target: str, world: int, available: int, tree: str) -> None:
    """What ``queue sync`` found for ``target``: world size, binaries available, tree revision."""
    client.hset(keys.TARGET_FACTS, target, json.dumps({"world": world, "available": available, "tree": tree}))


def target_counts(client: redis.Redis, config: Config, totals: dict[str, int]) -> dict[str, dict[str, int]]:
    """Jobs per state of each target. A single-target farm's are the queue's totals (no scan)."""
    names = list(config.targets)
    if not several(config.targets):
        return {names[0]: dict(totals)}
    counts = {name: Counter[str]() for name in names}
    for state in keys.STATES:
        for job in client.sscan_iter(keys.state_set(state), count=SCAN_COUNT):
            counts.setdefault(target_of(job), Counter())[state] += 1
    with client.pipeline(transaction=False) as pipe:
        for name in counts:
            pipe.zcard(keys.ready(name))
        ready = pipe.execute()
    out: dict[str, dict[str, int]] = {}
    for (name, found), claimable in zip(counts.items(), ready, strict=True):
        row = {state: found.get(state, 0) for state in keys.STATES}
        row["ready"] = claimable
        row["waiting"] = row["needed"] - claimable
        out[name] = row
    return out


def gather_targets(client: redis.Redis, config: Config, totals: dict[str, int],
                   drones: list[DroneInfo]) -> list[TargetStatus]:
    """Every target's status (the config's targets, plus any still holding jobs)."""
    facts = client.hgetall(keys.TARGET_FACTS)
    result = []
    for name, queue in target_counts(client, config, totals).items():
        status = TargetStatus(name=name, queue=queue)
        try:
            sync = json.loads(facts[name]) if name in facts else {}
        except ValueError:
            sync = {}
        status.world, status.available, status.tree = sync.get("world"), sync.get("available"), sync.get("tree")
        if status.world and status.available is not None:
            status.coverage_percent = round(100.0 * status.available / status.world, 2)
        declaring = [d for d in drones if name in d.targets]
        status.drones = [d.name for d in declaring]
        status.drones_available = [d.name for d in declaring if d.status in AVAILABLE]
        status.stalled = stalled_reason(name, queue, declaring)
        if status.tree:
            status.tree_mismatch = {d.name: d.tree for d in declaring
                                    if d.tree and d.tree != status.tree and d.status != "offline"}
        result.append(status)
    return result


def stalled_reason(name: str, queue: dict[str, int], declaring: list[DroneInfo]) -> str | None:
    """Why a target's open jobs cannot progress, or None (no open jobs, or a drone can take them)."""
    open_jobs = queue.get("needed", 0) + queue.get("delegated", 0)
    if not open_jobs or any(d.status in AVAILABLE for d in declaring):
        return None
    if not declaring:
        return f"{open_jobs} job(s) of target {name} open but no drone declares it (drone run --target {name})"
    states = ", ".join(f"{d.name} {d.status}" for d in declaring)
    return f"{open_jobs} job(s) of target {name} open but no drone that builds it is available ({states})"
