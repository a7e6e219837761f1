"""Dependency semantics of binary builds: what gates a job, cycles, critical path.

To build X as a binary package a drone installs X's build-time dependencies,
and installing a binary also installs its run-time (and post) dependencies.
So X is ready when every package in the run-time closure of its build
dependencies is built (gates_of, the reference semantics). X's own run-time
and post edges do not gate X. What the queue stores is linear in the edges
instead (plan_batch and the settle groups below).

Pure functions over plain dicts: no Redis here.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: How strongly an edge binds, weakest first: cycles are broken at the weakest edge.
KIND_STRENGTH = {"post": 0, "run": 1, "build": 2}


@dataclass
class JobSpec:
    """A job to add: one CPV and the edges to what it depends on."""

    cpv: str
    build: list[str] = field(default_factory=list)  # DEPEND/BDEPEND: gate this job
    run: list[str] = field(default_factory=list)    # RDEPEND: installed with this job's binary
    post: list[str] = field(default_factory=list)   # PDEPEND: likewise, after it
    estimate: float | None = None
    reason: str = ""  # why it is built ("USE changed: +wayland"); shown in `queue list` and events


@dataclass(frozen=True)
class BrokenEdge:
    """A gate dropped to break a cycle: ``job`` no longer waits for ``gate``."""

    job: str
    gate: str
    kind: str  # the weakest edge kind on the path that made the gate


def gates_of(specs: Mapping[str, JobSpec]) -> dict[str, dict[str, str]]:
    """For each job, the jobs that gate it, each with the weakest edge kind on its path.

    A gate reached straight through a build edge has kind ``build``; one reached
    through a build dependency's run-time closure has the weakest kind on that
    path (``run`` or ``post``). Only CPVs present in ``specs`` count.
    """
    closure_cache: dict[str, dict[str, str]] = {}

    def runtime_closure(start: str) -> dict[str, str]:
        if start in closure_cache:
            return closure_cache[start]
        seen: dict[str, str] = {}
        stack = [(start, "run")]
        while stack:
            node, kind = stack.pop()
            spec = specs.get(node)
            if spec is None:
                continue
            for dep, dep_kind in [(d, "run") for d in spec.run] + [(d, "post") for d in spec.post]:
                weakest = min(kind, dep_kind, key=KIND_STRENGTH.__getitem__)
                if dep in specs and (dep not in seen or KIND_STRENGTH[weakest] > KIND_STRENGTH[seen[dep]]):
                    seen[dep] = weakest
                    stack.append((dep, weakest))
        closure_cache[start] = seen
        return seen

    gates: dict[str, dict[str, str]] = {}
    for cpv, spec in specs.items():
        mine: dict[str, str] = {}
        for dep in spec.build:
            if dep not in specs:
                continue
            mine[dep] = "build"
            for indirect, kind in runtime_closure(dep).items():
                if KIND_STRENGTH[kind] > KIND_STRENGTH.get(mine.get(indirect, ""), -1):
                    mine[indirect] = kind
        mine.pop(cpv, None)  # a package never waits for itself
        gates[cpv] = mine
    return gates


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(component)
    return found


def _back_edges(nodes: list[str], edges: Mapping[str, list[str]]) -> list[tuple[str, str]]:
    """Edges that close a cycle in one depth-first pass; removing them all leaves a DAG."""
    colour: dict[str, int] = {}
    back: list[tuple[str, str]] = []
    for root in nodes:
        if root in colour:
            continue
        colour[root] = 1
        work = [(root, iter(edges.get(root, ())))]
        while work:
            node, it = work[-1]
            for nxt in it:
                state = colour.get(nxt, 0)
                if state == 1:
                    back.append((node, nxt))
                elif state == 0:
                    colour[nxt] = 1
                    work.append((nxt, iter(edges.get(nxt, ()))))
                    break
            else:
                colour[node] = 2
                work.pop()
    return back


def _topological_rank(nodes: list[str], edges: Mapping[str, list[str]]) -> dict[str, int]:
    """Position of each node in an order where a job comes after every job it waits for."""
    waiting_on = {n: 0 for n in nodes}
    dependents: dict[str, list[str]] = {n: [] for n in nodes}
    for job in nodes:
        for gate in edges.get(job, ()):
            waiting_on[job] += 1
            dependents[gate].append(job)
    order = [n for n in nodes if waiting_on[n] == 0]
    for node in order:
        for job in dependents[node]:
            waiting_on[job] -= 1
            if waiting_on[job] == 0:
                order.append(job)
    return {n: i for i, n in enumerate(order)}


def _break_component(component: list[str], gates: dict[str, dict[str, str]],
                     strength: Mapping[str, int]) -> list[BrokenEdge]:
    """Make one strongly connected component acyclic, keeping the strongest gates.

    Gates are taken strongest kind first. Within the strongest kind, cycles are
    broken at the back edges of one depth-first pass. Every weaker gate is kept
    when it agrees with a topological order of the gates kept so far (so it can
    close no cycle) and dropped otherwise. Linear in the component's size.
    """
    members = set(component)
    nodes = sorted(component)
    inner = [(job, gate, kind) for job in nodes for gate, kind in sorted(gates[job].items()) if gate in members]
    broken: list[BrokenEdge] = []
    kept: dict[str, list[str]] = {}
    levels = sorted({strength[kind] for _, _, kind in inner}, reverse=True)
    for level in levels:
        batch = [(job, gate, kind) for job, gate, kind in inner if strength[kind] == level]
        if level == levels[0]:
            for job, gate, _ in batch:
                kept.setdefault(job, []).append(gate)
            drop = set(_back_edges(nodes, kept))
            for job, gate in sorted(drop):
                kept[job].remove(gate)
        else:
            rank = _topological_rank(nodes, kept)
            drop = {(job, gate) for job, gate, _ in batch if rank[gate] > rank[job]}
            for job, gate, _ in batch:
                if (job, gate) not in drop:
                    kept.setdefault(job, []).append(gate)
        for job, gate in sorted(drop):
            broken.append(BrokenEdge(job=job, gate=gate, kind=gates[job].pop(gate)))
    return broken


def break_cycles(gates: dict[str, dict[str, str]],
                 strength: Mapping[str, int] = KIND_STRENGTH) -> list[BrokenEdge]:
    """Make the gate graph acyclic, in place, dropping weak gates first; return what was dropped.

    Never drops a job: only gates (one job waiting for another). Cycles are found
    as strongly connected components; within each, a gate of a weaker kind
    (``strength`` ranks them, e.g. post < run < build) is dropped before a
    stronger one, and a gate of the strongest kind only when the cycle has
    nothing weaker (see ``_break_component``).
    """
    broken: list[BrokenEdge] = []
    for component in strongly_connected(gates):
        broken.extend(_break_component(component, gates, strength))
    return broken


def find_cycle(gates: Mapping[str, Iterable[str]]) -> list[str] | None:
    """The members of one dependency cycle (sorted), or None when the graph is acyclic."""
    components = strongly_connected(gates)
    return sorted(components[0]) if components else None


def critical_path(gates: Mapping[str, Iterable[str]], estimates: Mapping[str, float]) -> dict[str, float]:
    """Longest remaining chain of estimated time from each job to the end of the graph.

    ``gates[x]`` are the jobs x waits for; the chain of x is its own estimate
    plus the longest chain among the jobs that wait for x. The graph must be
    acyclic (see break_cycles).
    """
    dependents: dict[str, list[str]] = {cpv: [] for cpv in gates}
    indegree = dict.fromkeys(gates, 0)
    for cpv, mine in gates.items():
        for gate in mine:
            if gate in dependents:
                dependents[gate].append(cpv)
                indegree[cpv] += 1
    # Topological order (gates before dependents), then sweep backwards.
    order = [cpv for cpv, n in indegree.items() if n == 0]
    for cpv in order:
        for dep in dependents[cpv]:
            indegree[dep] -= 1
            if indegree[dep] == 0:
                order.append(dep)
    chain: dict[str, float] = {}
    for cpv in reversed(order):
        longest_after = max((chain[d] for d in dependents[cpv] if d in chain), default=0.0)
        chain[cpv] = float(estimates.get(cpv, 0.0)) + longest_after
    return chain


# -- what the queue stores: linear in the edges ---------------------------------------------------
#
# Redis does not hold gates_of()'s closures (700 packages build-depending on a root with a 700-long
# run-time chain would be 490,000 gates). It holds the edges, and "settled" propagation makes
# readiness exact: a job is *settled* when it is built and every job its run/post edges name is
# settled (its binary installs). A job waits for each of its build dependencies to be settled,
# which is the same as waiting for every job in their run-time closure to be built (gates_of).
# Jobs on one cycle of run/post edges settle together: they form one *settle group* (named by its
# smallest CPV) whose members are all built and whose out-edges are all settled.

#: Kind of an edge already stored in Redis: never dropped to break a new cycle.
EXISTING = "existing"


@dataclass
class Stored:
    """A queued job as planning sees it: its settle group, the gates it waits for, and if it
    names a settle group, the jobs that group's run/post edges name."""

    group: str
    gates: set[str] = field(default_factory=set)
    needs: set[str] = field(default_factory=set)
    members: set[str] = field(default_factory=set)


@dataclass
class Plan:
    """What the queue writes for a batch of new jobs."""

    order: list[str]                 # every job after the jobs it waits for; a group's members together
    gates: dict[str, list[str]]      # job -> build dependencies it waits for (for them to settle)
    group: dict[str, str]            # job in a group of several -> the group's name
    needs: dict[str, list[str]]      # group (or lone job) -> jobs its run/post edges name (outside it)
    broken: list[BrokenEdge]
    chain: dict[str, float]          # critical-path score of each new job


def settle_groups(specs: Mapping[str, JobSpec]) -> dict[str, str]:
    """The settle group of each job that shares one (a cycle of run/post edges): its smallest CPV."""
    run_edges = {c: [d for d in s.run + s.post if d in specs] for c, s in specs.items()}
    group: dict[str, str] = {}
    for component in strongly_connected(run_edges):
        name = min(component)
        group.update(dict.fromkeys(component, name))
    return group


def wait_graph(gates: Mapping[str, Iterable[str]], group: Mapping[str, str],
               needs: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Jobs ("j|cpv") and settle groups ("s|name") with what each waits for, for critical_path().

    A job waits for the groups of its gates; a group waits for its members to be built and for
    the groups of the jobs it needs. Its size is linear in the edges.
    """
    graph: dict[str, list[str]] = {}
    for cpv, mine in gates.items():
        graph[f"j|{cpv}"] = [f"s|{group.get(g, g)}" for g in mine]
        graph.setdefault(f"s|{group.get(cpv, cpv)}", []).append(f"j|{cpv}")
    for name, theirs in needs.items():
        graph.setdefault(f"s|{name}", []).extend(f"s|{group.get(n, n)}" for n in theirs)
    return graph


def chains(gates: Mapping[str, Iterable[str]], group: Mapping[str, str], needs: Mapping[str, Iterable[str]],
           estimates: Mapping[str, float]) -> dict[str, float]:
    """critical_path() of each job in ``gates`` over the settle representation."""
    chain = critical_path(wait_graph(gates, group, needs), {f"j|{c}": e for c, e in estimates.items()})
    return {cpv: chain[f"j|{cpv}"] for cpv in gates if f"j|{cpv}" in chain}


def plan_batch(new: Mapping[str, JobSpec], stored: Mapping[str, Stored], estimates: Mapping[str, float],
               fifo: bool = False) -> Plan:
    """Gates, settle groups, cycle breaks and write order for ``new`` jobs joining ``stored`` ones.

    Cycles are found between settle groups (a cycle of run/post edges alone is one group, not a
    cycle): each is broken at its weakest edges (post, then run, then build; stored edges never),
    and a build edge inside one group (a package whose own build dependency installs it) is
    dropped too. Every dropped edge is reported. ``stored`` must hold every queued job the new
    jobs' edges reach.
    """
    own_group = settle_groups(new)
    group = {c: own_group.get(c, c) for c in new} | {c: s.group for c, s in stored.items()}
    known = group.keys()
    strength = {**KIND_STRENGTH, EXISTING: len(KIND_STRENGTH)}
    condensed: dict[str, dict[str, str]] = {g: {} for g in set(group.values())}
    below: dict[tuple[str, str], list[tuple[str, str, str]]] = {}  # condensed edge -> new edges
    dropped: set[tuple[str, str]] = set()
    broken: list[BrokenEdge] = []

    def link(source: str, target: str, kind: str, edge: tuple[str, str, str] | None) -> None:
        mine = condensed.setdefault(source, {})
        if strength[kind] > strength.get(mine.get(target, ""), -1):
            mine[target] = kind
        if edge is not None:
            below.setdefault((source, target), []).append(edge)

    for cpv, spec in new.items():
        for dep in spec.build:
            if dep == cpv or dep not in known:
                continue
            if group[dep] == group[cpv]:  # it would wait for its own group to be built
                dropped.add((cpv, dep))
                broken.append(BrokenEdge(job=cpv, gate=dep, kind="build"))
            else:
                link(group[cpv], group[dep], "build", (cpv, dep, "build"))
        for kind, deps in (("run", spec.run), ("post", spec.post)):
            for dep in deps:
                if dep in known and group[dep] != group[cpv]:
                    link(group[cpv], group[dep], kind, (cpv, dep, kind))
    for job in stored.values():
        for dep in job.gates:
            if dep in known and group[dep] != job.group:
                link(job.group, group[dep], EXISTING, None)
        for name in job.needs:
            if name in known and group[name] != job.group:
                link(job.group, group[name], EXISTING, None)
    for cut in break_cycles(condensed, strength):
        for cpv, dep, kind in below.get((cut.job, cut.gate), []):
            if (cpv, dep) not in dropped:
                dropped.add((cpv, dep))
                broken.append(BrokenEdge(job=cpv, gate=dep, kind=kind))

    gates = {c: [d for d in dict.fromkeys(s.build) if d != c and (c, d) not in dropped] for c, s in new.items()}
    needs: dict[str, list[str]] = {}
    for cpv, spec in new.items():  # named before queued too: they count once they are
        mine = needs.setdefault(group[cpv], [])
        for dep in dict.fromkeys(spec.run + spec.post):
            if group.get(dep) != group[cpv] and (cpv, dep) not in dropped and dep not in mine:
                mine.append(dep)
    # Critical path over new and stored jobs alike (stored ones only as what new jobs wait on).
    all_gates = {c: s.gates for c, s in stored.items()} | gates
    all_needs = {c: s.needs for c, s in stored.items() if s.needs} | needs
    chain = {} if fifo else chains(all_gates, group, all_needs, estimates)
    return Plan(order=_write_order(new, gates, group, needs, chain), gates=gates,
                group=own_group, needs={g: n for g, n in needs.items() if n},
                broken=broken, chain={c: chain.get(c, float(estimates.get(c, 0.0))) for c in new})


def _write_order(new: Mapping[str, JobSpec], gates: Mapping[str, list[str]], group: Mapping[str, str],
                 needs: Mapping[str, list[str]], chain: Mapping[str, float]) -> list[str]:
    """New jobs so that each comes after every new job or group it waits for, a group's members
    together, and otherwise best first (batch order under fifo, where ``chain`` is empty)."""
    position = {c: i for i, c in enumerate(new)}
    members: dict[str, list[str]] = {}
    for cpv in new:
        members.setdefault(group[cpv], []).append(cpv)
    waits: dict[str, set[str]] = {g: set() for g in members}
    for name, mine in members.items():
        for cpv in mine:
            waits[name].update(group[d] for d in gates[cpv] if d in new)
        waits[name].update(group[n] for n in needs.get(name, ()) if n in new)
        waits[name].discard(name)
    waiters: dict[str, list[str]] = {g: [] for g in members}
    for name, theirs in waits.items():
        for other in theirs:
            waiters[other].append(name)

    def rank(name: str) -> tuple[float, int]:
        best = min(members[name], key=lambda c: (-chain.get(c, 0.0), position[c]))
        return -chain.get(best, 0.0), position[best]

    left = {g: len(w) for g, w in waits.items()}
    heap = [(rank(g), g) for g, n in left.items() if n == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, name = heapq.heappop(heap)
        order.extend(sorted(members[name], key=lambda c: (-chain.get(c, 0.0), position[c])))
        for other in waiters[name]:
            left[other] -= 1
            if left[other] == 0:
                heapq.heappush(heap, (rank(other), other))
    if len(order) != len(new):  # cannot happen once cycles are broken; never drop a job
        order.extend(c for c in new if c not in set(order))
    return order
