"""Every Redis key swarmctl uses, in one place, under the ``swarm:`` namespace.

Fixed keys reach Lua scripts through KEYS (in the order of QUEUE_KEYS); the
per-job and per-drone keys are built in Lua by the prelude that
swarmctl.scripts generates from the prefixes below, so no other file spells
a key (tests/test_layering.py checks the package, the tests and the benches).
"""

from __future__ import annotations

from swarmctl.targets import DEFAULT_TARGET

NAMESPACE = "swarm:"

JOB_PREFIX = NAMESPACE + "job:"
DRONE_PREFIX = NAMESPACE + "drone:"
HISTORY_PREFIX = NAMESPACE + "history:"
HISTORY_SEEN = NAMESPACE + "history-seen"  # set: merges already imported from emerge.log files

# Suffixes of the per-job and per-drone keys (the prelude uses these too).
JOB_GATES = ":gates"            # set: build dependencies this job waits for (to be settled)
JOB_DEPENDENTS = ":dependents"  # set: jobs waiting for this one (to be settled)
JOB_NEEDS = ":needs"            # set: jobs this settle group's run/post edges name (waits for their groups)
JOB_HOLDERS = ":holders"        # set: settle groups whose run/post edges name this job
JOB_MEMBERS = ":members"        # set: the members of a settle group of several jobs
JOB_BLAME = ":failed-by"        # set: healthy drones whose failure blames the package
JOB_AVOID = ":avoid"            # set: drones that failed it (not handed it again)
JOB_TAILS = ":tails"            # hash: drone -> tail of its failed build log
DRONE_JOBS = ":jobs"            # set: jobs delegated to the drone
DRONE_STREAK = ":streak"        # set: jobs failed in the drone's current failure streak

READY = NAMESPACE + "queue:ready"        # zset: claimable jobs, best first
SEQ = NAMESPACE + "queue:seq"            # counter: order of arrival (fifo)
LISTING = NAMESPACE + "queue:listing"    # zset: every job by -priority (listing order, paged)
NEEDS = NAMESPACE + "queue:needs"        # zset: jobs with a known memory need -> MiB (swarmctl.capacity)
NEEDS_DISK = NAMESPACE + "queue:needs:disk"  # zset: the same jobs -> their build disk need, MiB
DRONES = NAMESPACE + "drones"            # set: enrolled drone names
HEARTBEATS = NAMESPACE + "heartbeats"    # zset: drone -> last heartbeat (ms)
EVENTS = NAMESPACE + "events"            # stream: every state change
STATS = NAMESPACE + "stats"              # hash: counters (stale, reclaimed, ...)
LEADER = NAMESPACE + "orchestrator:leader"
HEALING = NAMESPACE + "healing"          # hash: drone -> JSON of its heal record
FACTS = NAMESPACE + "meta"               # hash: swarm facts (sync time, world size, ...)
TARGET_FACTS = NAMESPACE + "targets"     # hash: target -> JSON of its last sync (world, coverage, tree)

STATES = ("needed", "delegated", "built", "failed", "blocked", "retired")
#: States that settle a job for what is gated on it: built, or retired (its CPV left the tree
#: before it was built: swarmctl.cli.queue_cmd sync; nothing will ever be built to wait for).
SETTLED_STATES = ("built", "retired")
#: The ``default`` target's ready set is READY; target T's is READY + READY_TARGET + T (built in
#: Lua too, from the job's name: swarmctl.targets).
READY_TARGET = ":"


def ready(target: str) -> str:
    """Zset of one target's claimable jobs, best first (the default target's is READY)."""
    return READY if target == DEFAULT_TARGET else READY + READY_TARGET + target


#: SCAN pattern of every target's ready set but the default's (READY itself).
READY_TARGETS_MATCH = READY + READY_TARGET + "*"


def state_set(state: str) -> str:
    """Set of the CPVs in one state."""
    return f"{NAMESPACE}queue:{state}"


def job(cpv: str) -> str:
    return JOB_PREFIX + cpv


def job_gates(cpv: str) -> str:
    return JOB_PREFIX + cpv + JOB_GATES


def job_dependents(cpv: str) -> str:
    return JOB_PREFIX + cpv + JOB_DEPENDENTS


def job_needs(cpv: str) -> str:
    return JOB_PREFIX + cpv + JOB_NEEDS


def job_holders(cpv: str) -> str:
    return JOB_PREFIX + cpv + JOB_HOLDERS


def job_members(cpv: str) -> str:
    return JOB_PREFIX + cpv + JOB_MEMBERS


def job_blame(cpv: str) -> str:
    return JOB_PREFIX + cpv + JOB_BLAME


def job_avoid(cpv: str) -> str:
    return JOB_PREFIX + cpv + JOB_AVOID


def job_tails(cpv: str) -> str:
    return JOB_PREFIX + cpv + JOB_TAILS


def drone(name: str) -> str:
    return DRONE_PREFIX + name


def drone_jobs(name: str) -> str:
    return DRONE_PREFIX + name + DRONE_JOBS


def history(cp: str) -> str:
    """List of recent build durations of a package (JSON records)."""
    return HISTORY_PREFIX + cp


#: The fixed keys every queue script receives, in this order.
QUEUE_KEYS: tuple[str, ...] = (
    READY,
    state_set("needed"),
    state_set("delegated"),
    state_set("built"),
    state_set("failed"),
    state_set("blocked"),
    EVENTS,
    HEARTBEATS,
    STATS,
    SEQ,
)


def job_keys(cpv: str) -> list[str]:
    """All keys of one job (for deletion)."""
    return [job(cpv), job_gates(cpv), job_dependents(cpv), job_needs(cpv), job_holders(cpv), job_members(cpv),
            job_blame(cpv), job_avoid(cpv), job_tails(cpv)]
