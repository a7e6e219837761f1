"""The queue's derived bookkeeping checked against its facts, and repaired.

The facts are each job's hash (its state) and its edges (gates, settle group, needs). Derived
from them and kept up to date by the scripts: the state sets, each settle group's ``unsettled``
count, each job's ``pending`` count and the ready set. A script that failed halfway (before
every script checked its arguments first), a hand edit or a bug can leave them disagreeing, and
then a job waits forever with nothing to show for it. The orchestrator's leader runs check()
every ``orchestrator.integrity_interval``: it reads everything in pages (no call blocks Redis),
recomputes what the counts should be, and hands each job that disagrees to the REPAIR script,
which recomputes and fixes it atomically from the live data (so a change made meanwhile by a
drone is never undone) and records a ``repaired`` event saying what was wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis

from swarmctl import keys
from swarmctl.scripts import Scripts, decode

log = logging.getLogger("swarmctl.integrity")

#: Jobs read per pipeline round trip.
PAGE = 2000


@dataclass
class _Job:
    state: str | None
    pending: int | None
    group: str
    unsettled: int | None
    names_group: bool  # stored since settle groups exist (has 'group' or 'unsettled')
    gates: set[str] = field(default_factory=set)
    needs: set[str] = field(default_factory=set)


@dataclass
class Repair:
    job: str
    fixed: list[str]


def _job_names(client: redis.Redis) -> set[str]:
    """Every CPV with a job hash, or listed in a state set or the ready set."""
    names: set[str] = set()
    for key in client.scan_iter(match=keys.JOB_PREFIX + "*", count=1000):
        rest = key[len(keys.JOB_PREFIX):]
        if ":" not in rest:  # per-job sets carry a ':suffix'; a CPV never has a colon
            names.add(rest)
    for state in keys.STATES:
        names.update(client.sscan_iter(keys.state_set(state), count=1000))
    names.update(_ready_members(client))
    return names


def _ready_members(client: redis.Redis) -> set[str]:
    """Every job in a ready set: the default target's and every other target's."""
    sets = [keys.READY, *client.scan_iter(match=keys.READY_TARGETS_MATCH, count=1000)]
    return {member for key in sets for member, _ in client.zscan_iter(key, count=1000)}


def _read(client: redis.Redis, names: list[str]) -> dict[str, _Job]:
    jobs: dict[str, _Job] = {}
    for start in range(0, len(names), PAGE):
        page = names[start:start + PAGE]
        with client.pipeline(transaction=False) as pipe:
            for cpv in page:
                pipe.hmget(keys.job(cpv), "state", "pending", "group", "unsettled")
                pipe.smembers(keys.job_gates(cpv))
                pipe.smembers(keys.job_needs(cpv))
            rows = pipe.execute()
        for i, cpv in enumerate(page):
            (state, pending, group, unsettled), gates, needs = rows[3 * i:3 * i + 3]
            jobs[cpv] = _Job(state, _int(pending), group or cpv, _int(unsettled),
                             group is not None or unsettled is not None, set(gates), set(needs))
    return jobs


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _membership(client: redis.Redis) -> tuple[dict[str, set[str]], set[str]]:
    listed: dict[str, set[str]] = {}
    for state in keys.STATES:
        for cpv in client.sscan_iter(keys.state_set(state), count=1000):
            listed.setdefault(cpv, set()).add(state)
    return listed, _ready_members(client)


def _settled(jobs: dict[str, _Job]) -> tuple[dict[str, bool], dict[str, list[str]]]:
    """Which settle groups are settled (every member built, every needed group settled)."""
    members: dict[str, list[str]] = {}
    for cpv, job in jobs.items():
        if job.state is not None:
            members.setdefault(job.group, []).append(cpv)

    def needed(name: str) -> list[str]:
        return sorted({jobs[n].group for n in jobs[name].needs if n in jobs and jobs[n].group in members}
                      - {name}) if name in jobs else []

    settled: dict[str, bool] = {}
    for root in members:
        if root in settled:
            continue
        # Iterative depth-first, needed groups first. Only a group on the current path (being
        # expanded) closes a cycle, which never settles; a group merely found from a sibling
        # earlier is evaluated in its own turn.
        path = [(root, iter(needed(root)))]
        on_path = {root}
        while path:
            name, todo = path[-1]
            nxt = next((n for n in todo if n not in settled), None)
            if nxt is not None and nxt not in on_path:
                path.append((nxt, iter(needed(nxt))))
                on_path.add(nxt)
                continue
            if nxt is not None:  # a cycle through name: not settled
                settled[name] = False
            else:
                settled[name] = all(jobs[m].state in keys.SETTLED_STATES for m in members[name]) and \
                    all(settled[n] for n in needed(name))
            path.pop()
            on_path.discard(name)
    return settled, members


def suspects(client: redis.Redis) -> tuple[list[str], dict[str, _Job]]:
    """The jobs whose bookkeeping disagrees with the facts (as read), settle groups first in the
    order they must be repaired (a needed group before the groups that need it)."""
    jobs = _read(client, sorted(_job_names(client)))
    listed, ready = _membership(client)
    settled, members = _settled(jobs)

    def open_group(name: str) -> bool:
        return name in members and not settled[name]

    wrong: set[str] = set()
    for cpv, job in jobs.items():
        if job.state is None or job.state not in keys.STATES:
            if listed.get(cpv) or cpv in ready:
                wrong.add(cpv)
            continue
        if listed.get(cpv) != {job.state}:
            wrong.add(cpv)
        if job.group == cpv and job.names_group:
            want = sum(jobs[m].state not in keys.SETTLED_STATES for m in members.get(cpv, [cpv])) + \
                sum(1 for n in job.needs if n in jobs and jobs[n].state is not None and open_group(jobs[n].group))
            if job.unsettled != want:
                wrong.add(cpv)
        pending = sum(1 for g in job.gates if g in jobs and jobs[g].state is not None
                      and open_group(jobs[g].group))
        if job.pending != pending or (cpv in ready) != (job.state == "needed" and pending == 0):
            wrong.add(cpv)
    # Groups deepest first (what a group needs is repaired before it), then everything else.
    order: list[str] = []
    seen: set[str] = set()
    def needed(name: str) -> list[str]:
        return sorted({jobs[n].group for n in jobs[name].needs if n in jobs} & jobs.keys())

    for root in sorted(c for c in wrong if jobs[c].group == c and jobs[c].names_group):
        if root in seen:
            continue
        stack = [(root, iter(needed(root)))]
        seen.add(root)
        while stack:
            name, it = stack[-1]
            nxt = next((n for n in it if n not in seen), None)
            if nxt is None:
                stack.pop()
                order.append(name)
            else:
                seen.add(nxt)
                stack.append((nxt, iter(needed(nxt))))
    order = [n for n in order if n in wrong] + sorted(wrong - set(order))
    return order, jobs


def check(client: redis.Redis, events_max: int, repair: bool = True, rounds: int = 3) -> list[Repair]:
    """Find and (unless ``repair`` is False) repair every disagreement; returns what was fixed.

    Without repair, returns the jobs that disagree, each with no fixes. A repair can change what
    other jobs should count, so checking goes round again (at most ``rounds`` times) until a
    round finds nothing to fix.
    """
    scripts = Scripts(client)
    done: list[Repair] = []
    for _ in range(rounds):
        order, _jobs = suspects(client)
        if not repair:
            return [Repair(cpv, []) for cpv in order]
        fixed_now = 0
        for cpv in order:
            fixed = decode(scripts.repair(keys=list(keys.QUEUE_KEYS), args=[cpv, events_max]))
            if fixed and fixed[0] == "invalid":
                raise ValueError(f"repair refused: {fixed[1]}")
            if fixed:
                log.warning("repaired %s: %s", cpv, "; ".join(fixed))
                done.append(Repair(cpv, fixed))
                fixed_now += 1
        if not fixed_now:
            break
    return done
