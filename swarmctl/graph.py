"""Dependency semantics of binary builds: what gates a job, cycles, critical path.

To build X as a binary package a drone installs X's build-time dependencies,
and installing a binary also installs its run-time (and post) dependencies.
So X is ready when every package in the run-time closure of its build
dependencies is built. X's own run-time and post edges do not gate X.

Pure functions over plain dicts: no Redis here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise

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


def _find_cycle(graph: Mapping[str, Mapping[str, str]]) -> list[str] | None:
    """One cycle as a list of nodes [a, b, ..., a], or None (iterative DFS)."""
    colour: dict[str, int] = {}
    for root in graph:
        if colour.get(root):
            continue
        colour[root] = 1
        path = [root]
        iters = [iter(graph[root])]
        while iters:
            advanced = False
            for nxt in iters[-1]:
                if nxt not in graph:
                    continue
                state = colour.get(nxt, 0)
                if state == 1:
                    return [*path[path.index(nxt):], nxt]
                if state == 0:
                    colour[nxt] = 1
                    path.append(nxt)
                    iters.append(iter(graph[nxt]))
                    advanced = True
                    break
            if not advanced:
                colour[path.pop()] = 2
                iters.pop()
    return None


def break_cycles(gates: dict[str, dict[str, str]],
                 strength: Mapping[str, int] = KIND_STRENGTH) -> list[BrokenEdge]:
    """Remove the weakest gate of every cycle, in place; return what was removed.

    Never drops a job: only the edge that made one job wait for another.
    ``strength`` ranks edge kinds (weakest dropped first).
    """
    broken: list[BrokenEdge] = []
    while (cycle := _find_cycle(gates)) is not None:
        edges = list(pairwise(cycle))
        job, gate = min(edges, key=lambda e: strength[gates[e[0]][e[1]]])
        broken.append(BrokenEdge(job=job, gate=gate, kind=gates[job].pop(gate)))
    return broken


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
