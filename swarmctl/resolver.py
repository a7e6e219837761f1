"""The one PackageResolver: what world needs, with dependency edges, vs what the binhost has.

Portage's own resolver answers "what does world need": ``backtrack_depgraph`` with
``--pretend --emptytree`` returns every package of the full dependency closure in
merge order, and the graph's edges carry the dependency kind (build time: DEPEND /
BDEPEND; run time: RDEPEND; post: PDEPEND). Portage must be configured by
environment before it is imported, so the depgraph runs in a child Python process
in the prefix's environment (``python -m swarmctl.resolver ATOM...``, about 0.5 s)
that prints the graph as JSON; no portage state leaks into the caller.

"What the binhost has" is its ``Packages`` index, read from a path or over HTTP. A CPV
on the binhost is not enough: a client only takes a binary built the way it needs the
package (``--binpkg-respect-use`` and ``--binpkg-changed-deps`` are portage's
defaults). So the child process also gets the binhost's entries for the graph's CPVs
(on stdin) and judges each as portage does (see :func:`_stale_reasons`): the USE flags
(``--newuse``), the dependencies' sub-slots bound by ``:=`` operators, and the
dependencies themselves (``--changed-deps``). A CPV none of whose binaries is current
is *stale*: it counts as missing, and the reason goes with its rebuild.

World is resolved together with ``@system`` (a client's ``emerge @world`` includes it).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmctl.atoms import validate_atom
from swarmctl.exceptions import SwarmError

logger = logging.getLogger("swarmctl.resolver")

#: The set resolved with world (a client's ``emerge @world`` pulls it in).
SYSTEM_SET = "@system"
#: Dependency keys of a binary that --changed-deps compares (portage's Package._dep_keys).
DEP_KEYS = ("BDEPEND", "DEPEND", "IDEPEND", "PDEPEND", "RDEPEND")


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
        stale: Why none of the binhost's binaries of this CPV will do ("USE changed:
            +wayland"); empty when one will, or when the binhost has none.
    """

    cpv: str
    build_deps: tuple[str, ...] = ()
    run_deps: tuple[str, ...] = ()
    post_deps: tuple[str, ...] = ()
    stale: str = ""


@dataclass(frozen=True)
class Resolution:
    """World's needs against the binhost.

    Attributes:
        needed: Every package of world's closure, in portage's merge order.
        available: CPVs the binhost's index has (any build id).
    """

    needed: tuple[ResolvedPackage, ...]
    available: frozenset[str] = field(default_factory=frozenset)

    def current(self, package: ResolvedPackage) -> bool:
        """Does the binhost hold a binary of ``package`` a client would take?"""
        return package.cpv in self.available and not package.stale

    @property
    def missing(self) -> tuple[ResolvedPackage, ...]:
        """Needed packages without a current binary (absent or stale: what the swarm must build), in order."""
        return tuple(p for p in self.needed if not self.current(p))

    @property
    def outdated(self) -> tuple[ResolvedPackage, ...]:
        """The missing packages the binhost has a binary of, but a stale one (rebuilds), in order."""
        return tuple(p for p in self.needed if p.cpv in self.available and p.stale)

    def reason(self, package: ResolvedPackage) -> str:
        """Why ``package`` must be built: 'not on the binhost', the staleness, or '' when current."""
        if package.cpv not in self.available:
            return "not on the binhost"
        return package.stale

    @property
    def availability(self) -> float:
        """Share of needed packages with a current binary on the binhost (1.0 for an empty world)."""
        if not self.needed:
            return 1.0
        return sum(self.current(p) for p in self.needed) / len(self.needed)

    def job_specs(self, missing_only: bool = True) -> list[Any]:
        """``swarmctl.graph.JobSpec`` objects for the queue (only what lacks a current binary), each
        with the reason it is built."""
        from swarmctl.graph import JobSpec

        chosen = self.missing if missing_only else self.needed
        return [JobSpec(cpv=p.cpv, build=list(p.build_deps), run=list(p.run_deps), post=list(p.post_deps),
                        reason=self.reason(p)) for p in chosen]


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

    def resolve(self, world: Iterable[str] | Path, binhost: str | Path | None = None, *,
                system: bool = True) -> Resolution:
        """Compute what ``world`` (with ``@system``) needs and what of it ``binhost`` has, current.

        Args:
            world: Atoms, or the path of a world file (one atom per line, ``#`` comments).
            binhost: The binhost's ``Packages`` file, its PKGDIR, or its base URL.
            system: Resolve ``@system`` too, as a client's ``emerge @world`` does.

        Returns:
            The resolution.

        Raises:
            ResolveError: An atom is invalid, portage cannot resolve world, or the
                index cannot be read.
            InvalidAtom: An atom in ``world`` is malformed.
        """
        atoms = read_world(world) if isinstance(world, Path) else [validate_atom(a) for a in world]
        index = read_index(binhost) if binhost is not None else None
        entries = binaries_by_cpv(index) if index is not None else {}
        needed = self.graph([*atoms, SYSTEM_SET] if atoms and system else atoms, entries)
        return Resolution(needed=needed, available=frozenset(entries))

    def graph(self, atoms: Sequence[str], binaries: Mapping[str, list[dict[str, str]]] | None = None,
              ) -> tuple[ResolvedPackage, ...]:
        """The closure of ``atoms`` in merge order, with typed edges; each package judged against
        ``binaries`` (the binhost's entries by CPV, see :func:`binaries_by_cpv`)."""
        if not atoms:
            return ()
        env = self.prefix.env() if self.prefix is not None else None
        argv = [self.python, "-m", "swarmctl.resolver", "--", *atoms]
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=self.timeout,
                                  check=False, input=json.dumps(dict(binaries or {})),
                                  cwd=str(Path(__file__).parent.parent))
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
                                     run_deps=tuple(row["run"]), post_deps=tuple(row["post"]),
                                     stale=row.get("stale", "")) for row in rows)


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
    return frozenset(read_index(binhost).cpvs())


#: What of a binary's index entry decides whether it is current (see _stale_reasons).
BINARY_KEYS = ("BUILD_ID", "EAPI", "IUSE", "USE", *DEP_KEYS)


def binaries_by_cpv(index: Any) -> dict[str, list[dict[str, str]]]:
    """A binhost index's entries by CPV, cut down to the keys that decide currency."""
    found: dict[str, list[dict[str, str]]] = {}
    for entry in index.entries.values():
        found.setdefault(entry["CPV"], []).append({k: entry[k] for k in BINARY_KEYS if entry.get(k)})
    return found


def read_index(binhost: str | Path) -> Any:
    """A binhost's ``PackagesIndex``: from a ``Packages`` path, a PKGDIR (its staging index: what
    the swarm built, promoted or not), or an http(s) base URL."""
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
    return index


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


def _use_change(graph: Any, node: Any, entry: Mapping[str, str]) -> str:
    """--newuse, as portage's depgraph._reinstall_for_flags: flags added to or dropped from IUSE
    (unless forced or masked), and IUSE flags whose state differs. '' when the same."""
    old_iuse = {flag.lstrip("+-") for flag in entry.get("IUSE", "").split()}
    old_use = set(entry.get("USE", "").split()) & old_iuse
    cur_iuse = set(node.iuse.all)
    cur_use = set(graph._pkg_use_enabled(node)) & cur_iuse
    forced = set(node.use.force) | set(node.use.mask)
    added_or_dropped = (old_iuse ^ cur_iuse) - forced
    flags = added_or_dropped | (old_use ^ cur_use)
    if not flags:
        return ""
    return "USE changed: " + " ".join(("+" if f in cur_use else "-") + f + ("%" if f in added_or_dropped else "")
                                      for f in sorted(flags))


def _built_atoms(struct: Any) -> Iterable[Any]:
    for item in struct:
        if isinstance(item, list):
            yield from _built_atoms(item)
        elif hasattr(item, "slot_operator_built") and item.slot_operator_built and not item.blocker:
            yield item


def _subslot_changes(entry: Mapping[str, str], slots: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Dependencies the binary was bound to with ``:=`` whose slot or sub-slot the graph now
    resolves differently (a sub-slot rebuild, as portage's slot-operator rebuilds)."""
    from portage.dep import Atom, use_reduce

    use = entry.get("USE", "").split()
    changes = set()
    for key in DEP_KEYS:
        try:
            struct = use_reduce(entry.get(key, ""), uselist=use, token_class=Atom)
        except Exception:  # an unreadable dependency string: --changed-deps reports it
            continue
        for atom in _built_atoms(struct):
            now = slots.get(atom.cp)
            if not now:
                continue  # not in the graph: nothing to compare with
            was = f"{atom.slot}/{atom.sub_slot or atom.slot}"
            if atom.slot in now and now[atom.slot] != was:
                changes.add(f"{atom.cp} sub-slot {was} -> {now[atom.slot]}")
            elif atom.slot not in now:
                changes.add(f"{atom.cp} slot {atom.slot} -> {'/'.join(sorted(now))}")
    return sorted(changes)


def _deps_changed(node: Any, entry: Mapping[str, str]) -> list[str]:
    """--changed-deps, as portage's depgraph._changed_deps: the binary's dependencies against the
    ebuild's, both with the binary's USE, ``:=`` bindings stripped. The keys that differ."""
    from portage.dep import Atom, use_reduce
    from portage.dep._slot_operator import strip_slots

    use = entry.get("USE", "").split()
    changed = []
    for key in DEP_KEYS:
        try:
            built = use_reduce(entry.get(key, ""), uselist=use, eapi=entry.get("EAPI") or None, token_class=Atom)
            unbuilt = use_reduce(node._raw_metadata.get(key, ""), uselist=use, eapi=node.eapi, token_class=Atom)
        except Exception:
            changed.append(key)
            continue
        strip_slots(built)
        strip_slots(unbuilt)
        if built != unbuilt:
            changed.append(key)
    return changed


def _stale_reasons(graph: Any, node: Any, entry: Mapping[str, str],
                   slots: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Why a client needing ``node`` would not take the binary ``entry`` ([] when it would)."""
    reasons = []
    use = _use_change(graph, node, entry)
    if use:
        reasons.append(use)
    reasons += _subslot_changes(entry, slots)
    deps = _deps_changed(node, entry)
    if deps:
        reasons.append(f"dependencies changed ({', '.join(deps)})")
    return reasons


def binary_verdict(graph: Any, node: Any, entries: list[Mapping[str, str]],
                   slots: Mapping[str, Mapping[str, str]]) -> str:
    """'' when one of ``entries`` (the binhost's binaries of node's CPV) is current or there is
    none; else why the newest one is not."""
    newest: list[str] = []
    newest_id = -1
    for entry in entries:
        reasons = _stale_reasons(graph, node, entry, slots)
        if not reasons:
            return ""
        build_id = int(entry["BUILD_ID"]) if entry.get("BUILD_ID", "").isdigit() else 0
        if build_id >= newest_id:
            newest, newest_id = reasons, build_id
    return "; ".join(newest)


def _child_main(atoms: list[str]) -> int:  # pragma: no cover - runs in the subprocess
    """Resolve ``atoms`` with portage; judge each package against the binhost's binaries (JSON
    on stdin, {cpv: [entry]}); print one JSON line (list of packages)."""
    import os

    binaries = json.loads(sys.stdin.read() or "{}")
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
    slots: dict[str, dict[str, str]] = {}
    for node in order:
        slots.setdefault(node.cp, {})[node.slot] = f"{node.slot}/{node.sub_slot}"
    digraph = graph._dynamic_config.digraph
    rows = []
    for node in order:
        edges: dict[str, set[str]] = {"build": set(), "run": set(), "post": set()}
        children = digraph.nodes[node][0] if node in digraph.nodes else {}
        for child, priorities in children.items():
            if isinstance(child, Package) and child.operation == "merge" and child.cpv != node.cpv:
                for kind in _kinds(priorities):
                    edges[kind].add(str(child.cpv))
        rows.append({"cpv": str(node.cpv), **{kind: sorted(cpvs) for kind, cpvs in edges.items()},
                     "stale": binary_verdict(graph, node, binaries.get(str(node.cpv), []), slots)})
    os.write(real_stdout, (json.dumps(rows) + "\n").encode())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_child_main([a for a in sys.argv[1:] if a != "--"]))
