"""The one PackageResolver: what world needs, with dependency edges, vs what the binhost has.

Portage's own resolver answers "what does world need": ``backtrack_depgraph`` with
``--pretend --emptytree`` returns every package of the full dependency closure in
merge order, and the graph's edges carry the dependency kind (build time: DEPEND /
BDEPEND; run time: RDEPEND; post: PDEPEND). Portage must be configured by
environment before it is imported, so the depgraph runs in a child Python process
in the prefix's environment (``python -m swarmctl.resolver ATOM...``, about 0.5 s)
that prints the graph as JSON; no portage state leaks into the caller.

"What the binhost has" is its ``Packages`` index, read from a path or over HTTP.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmctl.atoms import validate_atom
from swarmctl.exceptions import SwarmError

logger = logging.getLogger("swarmctl.resolver")


class ResolveError(SwarmError):
    """Portage could not resolve the world set, or the binhost index is unreadable."""


@dataclass(frozen=True)
class ResolvedPackage:
    """One package world needs, and what it depends on (CPVs also in the result).

    Attributes:
        cpv: Package version.
        build_deps: Needed to build it (DEPEND, BDEPEND).
        run_deps: Needed at run time (RDEPEND).
        post_deps: Merged after it (PDEPEND).
    """

    cpv: str
    build_deps: tuple[str, ...] = ()
    run_deps: tuple[str, ...] = ()
    post_deps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolution:
    """World's needs against the binhost.

    Attributes:
        needed: Every package of world's closure, in portage's merge order.
        available: CPVs the binhost's index has (any build id).
    """

    needed: tuple[ResolvedPackage, ...]
    available: frozenset[str] = field(default_factory=frozenset)

    @property
    def missing(self) -> tuple[ResolvedPackage, ...]:
        """Needed packages the binhost lacks (what the swarm must build), in order."""
        return tuple(p for p in self.needed if p.cpv not in self.available)

    @property
    def availability(self) -> float:
        """Share of needed packages already on the binhost (1.0 for an empty world)."""
        if not self.needed:
            return 1.0
        return sum(p.cpv in self.available for p in self.needed) / len(self.needed)

    def job_specs(self, missing_only: bool = True) -> list[Any]:
        """``swarmctl.graph.JobSpec`` objects for the queue (only what the binhost lacks)."""
        from swarmctl.graph import JobSpec

        chosen = self.missing if missing_only else self.needed
        return [JobSpec(cpv=p.cpv, build=list(p.build_deps), run=list(p.run_deps), post=list(p.post_deps))
                for p in chosen]


class PackageResolver:
    """Resolves a world set with portage and compares it with a binhost index."""

    def __init__(self, prefix: Any = None, *, python: str | None = None, timeout: float = 600.0) -> None:
        """Args:
            prefix: A :class:`~swarmctl.portage_env.prefix.PortagePrefix` (its repo,
                profile and make.conf decide); None uses the host's portage config.
            python: Interpreter with portage (default: the prefix's venv, else this one).
            timeout: Seconds the depgraph may take.
        """
        self.prefix = prefix
        if python is None:
            python = str(prefix.venv / "bin/python") if prefix is not None else sys.executable
        self.python = python
        self.timeout = timeout

    def resolve(self, world: Iterable[str] | Path, binhost: str | Path | None = None) -> Resolution:
        """Compute what ``world`` needs and what of it ``binhost`` already has.

        Args:
            world: Atoms, or the path of a world file (one atom per line, ``#`` comments).
            binhost: The binhost's ``Packages`` file, its PKGDIR, or its base URL.

        Returns:
            The resolution.

        Raises:
            ResolveError: An atom is invalid, portage cannot resolve world, or the
                index cannot be read.
            InvalidAtom: An atom in ``world`` is malformed.
        """
        atoms = read_world(world) if isinstance(world, Path) else [validate_atom(a) for a in world]
        needed = self.graph(atoms)
        available = available_cpvs(binhost) if binhost is not None else frozenset()
        return Resolution(needed=needed, available=available)

    def graph(self, atoms: Sequence[str]) -> tuple[ResolvedPackage, ...]:
        """The closure of ``atoms`` in merge order, with typed edges."""
        if not atoms:
            return ()
        env = self.prefix.env() if self.prefix is not None else None
        argv = [self.python, "-m", "swarmctl.resolver", "--", *atoms]
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=self.timeout,
                                  check=False, stdin=subprocess.DEVNULL, cwd=str(Path(__file__).parent.parent))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ResolveError(f"cannot run portage's resolver: {exc}") from None
        if done.returncode != 0:
            lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
            message = next((line for line in reversed(lines) if line.startswith("swarm-resolver:")), None)
            detail = message.removeprefix("swarm-resolver:").strip() if message else (
                lines[-1] if lines else f"exit {done.returncode}")
            raise ResolveError(f"portage cannot resolve {' '.join(atoms)}: {detail}")
        try:
            rows = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise ResolveError("portage's resolver printed no graph") from None
        return tuple(ResolvedPackage(cpv=row["cpv"], build_deps=tuple(row["build"]),
                                     run_deps=tuple(row["run"]), post_deps=tuple(row["post"]))
                     for row in rows)


def read_world(path: Path) -> list[str]:
    """Atoms of a world file (blank lines and ``#`` comments skipped, each validated)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ResolveError(f"cannot read world file {path}: {exc.strerror or exc}") from None
    atoms = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            atoms.append(validate_atom(line))
    return atoms


def available_cpvs(binhost: str | Path) -> frozenset[str]:
    """CPVs in a binhost index: a ``Packages`` path, a PKGDIR (its staging index), or an http(s)
    base URL (the swarm's binhost: ``URL/staging``)."""
    from swarmctl.binhost.index import INDEX_NAME, PackagesIndex

    text = str(binhost)
    if text.startswith(("http://", "https://")):
        url = text.rstrip("/") + "/" + INDEX_NAME
        try:
            with urllib.request.urlopen(url, timeout=60) as reply:
                index = PackagesIndex.parse(reply.read().decode("utf-8", "replace"))
        except (OSError, urllib.error.URLError) as exc:
            raise ResolveError(f"cannot read {url}: {exc}") from None
    else:
        from swarmctl.binhost.generations import staging_index

        path = Path(binhost)  # a PKGDIR: what the swarm built, promoted or still staged
        index = PackagesIndex.read(staging_index(path) if path.is_dir() else path)
    return frozenset(index.cpvs())


# -- the child process -----------------------------------------------------------------------------

def _kinds(priorities: Iterable[Any]) -> set[str]:
    kinds = set()
    for priority in priorities:
        if getattr(priority, "buildtime", False) or getattr(priority, "buildtime_slot_op", False):
            kinds.add("build")
        elif getattr(priority, "runtime", False) or getattr(priority, "runtime_slot_op", False):
            kinds.add("run")
        elif getattr(priority, "runtime_post", False):
            kinds.add("post")
    return kinds


def _child_main(atoms: list[str]) -> int:  # pragma: no cover - runs in the subprocess
    """Resolve ``atoms`` with portage; print one JSON line (list of packages)."""
    import os

    # portage prints its own messages; keep stdout for the JSON line only.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    from _emerge.actions import load_emerge_config
    from _emerge.create_depgraph_params import create_depgraph_params
    from _emerge.depgraph import backtrack_depgraph
    from _emerge.Package import Package

    config = load_emerge_config()
    settings, trees = config.target_config.settings, config.trees
    options: dict[str, Any] = {"--pretend": True, "--emptytree": True, "--quiet": True}
    params = create_depgraph_params(options, None)
    ok, graph, _favorites = backtrack_depgraph(settings, trees, options, params, None, atoms, None)
    if not ok:
        graph.display_problems()
        print(f"swarm-resolver: dependencies of {' '.join(atoms)} cannot be satisfied", file=sys.stderr)
        return 1
    order = [node for node in graph.altlist() if isinstance(node, Package) and node.operation == "merge"]
    digraph = graph._dynamic_config.digraph
    rows = []
    for node in order:
        edges: dict[str, set[str]] = {"build": set(), "run": set(), "post": set()}
        children = digraph.nodes[node][0] if node in digraph.nodes else {}
        for child, priorities in children.items():
            if isinstance(child, Package) and child.operation == "merge" and child.cpv != node.cpv:
                for kind in _kinds(priorities):
                    edges[kind].add(str(child.cpv))
        rows.append({"cpv": str(node.cpv), **{kind: sorted(cpvs) for kind, cpvs in edges.items()}})
    os.write(real_stdout, (json.dumps(rows) + "\n").encode())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_child_main([a for a in sys.argv[1:] if a != "--"]))
