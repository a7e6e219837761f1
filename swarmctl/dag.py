"""Dependency graphs resolved by portage, as JSON, turned into queue jobs.

The format (see ../shared/data/gentoo-kde-2014.dag.json)::

    {"nodes": [{"cpv": "sys-libs/zlib-1.2.8-r1", "seconds": 41, ...}, ...],
     "edges": [["sys-libs/zlib-1.2.8-r1", "dev-libs/libxml2-2.9.1-r5", "build"], ...],
     "edges_removed_to_make_acyclic": [[dependency, dependent, kind], ...]}

Each edge is ``[dependency, dependent, kind]`` with kind ``build`` (DEPEND),
``run`` (RDEPEND) or ``post`` (PDEPEND).

``edges_removed_to_make_acyclic`` lists the edges the resolver had to break to
get a buildable order (gcc<->glibc and the like). Our choice: by default those
edges are *not* loaded, because the file records how a real emptytree build
breaks those cycles (a build host's installed toolchain satisfies them); they
are returned in ``Dag.removed`` so the caller can report them. With
``keep_cycle_edges=True`` they are loaded like any other edge, and the queue
detects the cycles when the jobs are added and breaks them itself by edge kind
(swarmctl.graph.break_cycles), reporting every gate it dropped. Either way no
job is ever dropped. A listed edge that is not among ``edges`` is ignored.

Node ``seconds`` are *not* turned into estimates: the scheduler estimates from
recorded history only. They are kept in ``Dag.seconds`` for benchmarks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmctl.atoms import validate_cpv
from swarmctl.exceptions import InvalidAtom, SwarmError
from swarmctl.graph import KIND_STRENGTH, JobSpec

Edge = tuple[str, str, str]


class DagError(SwarmError):
    """The file is not a dependency graph in the expected format."""


@dataclass
class Dag:
    """Jobs with their typed edges, plus what was left out and why."""

    specs: list[JobSpec]
    seconds: dict[str, float | None] = field(default_factory=dict)
    removed: list[Edge] = field(default_factory=list)  # cycle edges not loaded
    dangling: list[Edge] = field(default_factory=list)  # edges naming a CPV that is not a node

    @property
    def edges(self) -> int:
        return sum(len(s.build) + len(s.run) + len(s.post) for s in self.specs)


def _edge(raw: Any, where: str) -> Edge:
    if not (isinstance(raw, list | tuple) and len(raw) == 3 and all(isinstance(x, str) for x in raw)):
        raise DagError(f"{where}: an edge must be [dependency, dependent, kind], got {raw!r}")
    dependency, dependent, kind = raw
    if kind not in KIND_STRENGTH:
        raise DagError(f"{where}: unknown edge kind {kind!r} (build, run or post)")
    return dependency, dependent, kind


def parse_dag(data: Any, keep_cycle_edges: bool = False, where: str = "DAG") -> Dag:
    """Build JobSpecs from a decoded DAG document.

    Raises:
        DagError: the document does not have the expected shape.
    """
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) \
            or not isinstance(data.get("edges"), list):
        raise DagError(f"{where}: expected an object with 'nodes' and 'edges' lists")
    specs: dict[str, JobSpec] = {}
    seconds: dict[str, float | None] = {}
    for i, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or not isinstance(node.get("cpv"), str):
            raise DagError(f"{where}: node {i} has no 'cpv'")
        try:
            cpv = validate_cpv(node["cpv"])
        except InvalidAtom as exc:
            raise DagError(f"{where}: node {i}: {exc}") from None
        specs[cpv] = JobSpec(cpv)
        value = node.get("seconds")
        seconds[cpv] = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    edges = [_edge(raw, f"{where}: edge {i}") for i, raw in enumerate(data["edges"])]
    removed = data.get("edges_removed_to_make_acyclic")
    if removed is not None and not isinstance(removed, list):
        raise DagError(f"{where}: 'edges_removed_to_make_acyclic' must be a list of edges")
    listed = {_edge(raw, f"{where}: removed edge {i}") for i, raw in enumerate(removed or [])}
    dag = Dag(specs=list(specs.values()), seconds=seconds)
    seen: set[Edge] = set()
    for edge in edges:
        if edge in seen:
            continue
        seen.add(edge)
        dependency, dependent, kind = edge
        if dependency not in specs or dependent not in specs:
            dag.dangling.append(edge)
        elif edge in listed and not keep_cycle_edges:
            dag.removed.append(edge)
        elif dependency != dependent:
            getattr(specs[dependent], kind).append(dependency)
    return dag


def load_dag(path: str | Path, keep_cycle_edges: bool = False) -> Dag:
    """Read a DAG JSON file (see the module docstring for the cycle-edge choice).

    Raises:
        DagError: unreadable, not JSON, or not in the expected format.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DagError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DagError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DagError(f"{path}: not JSON (line {exc.lineno})") from None
    except RecursionError:
        raise DagError(f"{path}: JSON nested too deeply to be a dependency graph") from None
    return parse_dag(data, keep_cycle_edges, where=str(path))
