"""``swarmctl queue``: add, import, list, show, unblock, retry, clear."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from swarmctl.atoms import validate_cpv
from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app
from swarmctl.config import Config
from swarmctl.dag import load_dag
from swarmctl.exceptions import ConfigError
from swarmctl.graph import BrokenEdge, JobSpec
from swarmctl.keys import STATES
from swarmctl.queue import AddReport, Queue, RetreeReport, for_target
from swarmctl.targets import job_name, validate_job

#: Broken cycle edges listed one by one; beyond that only counted by kind.
SHOW_BROKEN = 20
#: Jobs `queue list` shows on a terminal unless --limit says otherwise.
TERMINAL_PAGE = 50
#: Adds at least this large show their progress on a terminal.
PROGRESS_FROM = 5000
#: Jobs read per round of `queue list --json`.
JSON_PAGE = 1000


@click.group()
def queue() -> None:
    """Manage the build queue."""


@queue.command("add")
@click.argument("atoms", nargs=-1, required=True)
@click.option("--after", "after", multiple=True, metavar="ATOM",
              help="A build-time dependency (DEPEND, repeatable): they wait until it and its run-time "
                   "dependencies are built.")
@click.option("--run", "run", multiple=True, metavar="ATOM",
              help="A run-time dependency (RDEPEND, repeatable): does not gate these packages, but gates "
                   "whatever builds against them.")
@click.option("--post", "post", multiple=True, metavar="ATOM",
              help="A post dependency (PDEPEND, repeatable): like --run, the weakest kind in cycles.")
@click.option("--estimate", type=float, help="Estimated build seconds (default: from history).")
@click.option("--target", "targets", multiple=True, metavar="T",
              help="Queue them for this build target (repeatable; default: every target of the config).")
@pass_app
def add(app: AppContext, atoms: tuple[str, ...], after: tuple[str, ...], run: tuple[str, ...],
        post: tuple[str, ...], estimate: float | None, targets: tuple[str, ...]) -> None:
    """Queue packages (exact versions, e.g. sys-devel/llvm-19.1.7)."""
    cpvs = [validate_cpv(a) for a in atoms]
    build, runtime, later = ([validate_cpv(a) for a in group] for group in (after, run, post))
    specs = [JobSpec(cpv, build=list(build), run=list(runtime), post=list(later), estimate=estimate) for cpv in cpvs]
    report = app.queue.add([job for target in chosen_targets(app.config, targets) for job in for_target(specs, target)])
    for cpv in report.added:
        terminal.ok(f"queued {cpv}")
    for cpv in report.existing:
        terminal.note(f"{cpv} is already queued")
    _report_cycles(report.broken)


def chosen_targets(config: Config, targets: tuple[str, ...]) -> list[str]:
    """The targets named (each one of the config's), else every target of the config."""
    unknown = [t for t in targets if t not in config.targets]
    if unknown:
        raise ConfigError(f"no target {', '.join(map(repr, unknown))} in the config "
                          f"(known: {', '.join(config.targets)})")
    return list(dict.fromkeys(targets)) or list(config.targets)


def _report_cycles(broken: list[BrokenEdge]) -> None:
    for edge in broken[:SHOW_BROKEN]:
        terminal.note(f"cycle: {edge.job} no longer waits for {edge.gate} ({edge.kind} edge)")
    if len(broken) > SHOW_BROKEN:
        kinds = Counter(e.kind for e in broken[SHOW_BROKEN:])
        terminal.note(f"cycle: {len(broken) - SHOW_BROKEN} more gate(s) dropped ("
                      + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + "); see swarmctl events")


@queue.command("import")
@click.argument("path", metavar="DAG.json", type=click.Path(exists=True, dir_okay=False))
@click.option("--keep-cycle-edges", is_flag=True,
              help="Also load the edges the resolver removed to break cycles, and let the queue break "
                   "those cycles itself by edge kind.")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on a terminal.")
@click.option("--target", "targets", multiple=True, metavar="T",
              help="Queue it for this build target (repeatable; default: every target of the config).")
@pass_app
def import_dag(app: AppContext, path: str, keep_cycle_edges: bool, as_json: bool, quiet: bool,
               targets: tuple[str, ...]) -> None:
    """Queue a whole dependency graph resolved by portage (nodes plus typed edges)."""
    names = chosen_targets(app.config, targets)
    dag = load_dag(path, keep_cycle_edges=keep_cycle_edges)
    specs = [job for name in names for job in for_target(dag.specs, name)]
    report: AddReport = _add_counted(app, specs, quiet or as_json)
    if as_json:
        terminal.print_json({"added": len(report.added), "existing": len(report.existing),
                             "edges": dag.edges, "removed_edges_not_loaded": len(dag.removed),
                             "dangling_edges": len(dag.dangling),
                             "cycle_gates_dropped": [vars(e) for e in report.broken]})
        return
    terminal.ok(f"queued {len(report.added)} package(s) with {dag.edges} edge(s) from {path}"
                + (f"; {len(report.existing)} already queued" if report.existing else ""))
    if dag.removed:
        terminal.note(f"{len(dag.removed)} edge(s) the resolver removed to break cycles were not loaded "
                      "(--keep-cycle-edges loads them)")
    if dag.dangling:
        terminal.note(f"{len(dag.dangling)} edge(s) naming a package that is not a node were ignored")
    _report_cycles(report.broken)


def _add_counted(app: AppContext, specs: list[JobSpec], quiet: bool, tree: str = "") -> AddReport:
    """Queue.add, with a progress bar on a terminal for a large add (it is written in slices)."""
    with terminal.progress(quiet or len(specs) < PROGRESS_FROM) as progress:
        return app.queue.add(specs, progress=lambda done, total: progress("queuing", done, total), tree=tree)


@queue.command("sync")
@click.option("--world", "world_file", type=click.Path(dir_okay=False),
              help="World file (one atom per line) to resolve (default: the target's world, then "
                   "nightly.world_file, then /var/lib/portage/world).")
@click.option("--binhost", "binhost", metavar="DIR|URL",
              help="The binhost's PKGDIR, Packages file or URL (default: binhost.dir, then binhost.url); "
                   "with several targets, each target's area below it.")
@click.option("--prefix", type=click.Path(file_okay=False),
              help="Portage prefix to resolve with (default: the target's prefix, then drone.prefix; none: "
                   "this host's portage).")
@click.option("--target", "targets", multiple=True, metavar="T",
              help="Resolve and queue this build target (repeatable; default: every target of the config).")
@click.option("--dry-run", is_flag=True, help="Resolve and report; queue nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on a terminal.")
@pass_app
def sync(app: AppContext, world_file: str | None, binhost: str | None, prefix: str | None, targets: tuple[str, ...],
         dry_run: bool, quiet: bool, as_json: bool) -> None:
    """Resolve what world needs with portage and queue what the binhost lacks (all or nothing), for every
    target; each job records the tree revision it was resolved from."""
    from swarmctl.facts import FactStore
    from swarmctl.target_status import record_sync

    names = chosen_targets(app.config, targets)
    source = binhost or app.config.binhost.dir or app.config.binhost.url
    planned = [_resolve_target(app, name, world_file, source, prefix, quiet or as_json) for name in names]
    if not source:
        # Without a binhost every package counts as missing: coverage would read 0 %.
        terminal.note("no binhost to compare with (--binhost, binhost.dir or binhost.url): "
                      "every package counts as missing")
    specs = [job for name, resolution, tree, _ in planned for job in for_target(resolution.job_specs(), name)]
    trees = {tree for _, _, tree, _ in planned}
    # One revision per batch: with several trees (targets resolved from different repositories), each its own.
    if dry_run:
        report = AddReport()
    elif len(trees) <= 1:
        report = _add_counted(app, specs, quiet or as_json, tree=next(iter(trees), ""))
    else:
        report = AddReport()
        for name, resolution, tree, _ in planned:
            part = _add_counted(app, for_target(resolution.job_specs(), name), quiet or as_json, tree=tree)
            report.added += part.added
            report.existing += part.existing
            report.broken += part.broken
    rebuilt = [] if dry_run else _rebuild_stale(app.queue, specs, report)
    retreed = RetreeReport() if dry_run else _retree(app.queue, planned, specs)
    world = sum(len(r.needed) for _, r, _, _ in planned)
    available = sum(len(r.needed) - len(r.missing) for _, r, _, _ in planned)
    outdated = [(name, p) for name, r, _, _ in planned for p in r.outdated]
    if not dry_run:
        meta = FactStore(app.client)
        meta.set_world_size(world)
        meta.set_binhost(available, world)
        for name, resolution, tree, _ in planned:
            record_sync(app.client, name, len(resolution.needed), len(resolution.needed) - len(resolution.missing),
                        tree)
    already = [c for c in report.existing if c not in rebuilt]
    summary = {"world": world, "available": available,
               "missing": [job.cpv for job in specs],
               "stale": {job_name(p.cpv, name): p.stale for name, p in outdated}, "added": report.added,
               "rebuild": rebuilt, "already_queued": already, "dry_run": dry_run,
               "retired": retreed.retired, "restamped": len(retreed.restamped), "restored": retreed.restored,
               "targets": {name: {"world": len(r.needed), "available": len(r.needed) - len(r.missing), "tree": tree}
                           for name, r, tree, _ in planned}}
    if as_json:
        terminal.print_json(summary)
        return
    terminal.ok(f"world needs {summary['world']} package(s); the binhost has {summary['available']} current"
                + (f" ({len(outdated)} stale)" if outdated else "") + "; "
                + (f"{len(specs)} would be queued" if dry_run else
                   f"queued {len(report.added)}, {len(rebuilt)} again for a rebuild, "
                   f"{len(already)} already queued")
                + (f" ({len(names)} targets)" if len(names) > 1 else ""))
    for name, package in outdated:
        terminal.note(f"{job_name(package.cpv, name)}: {package.stale}")
    for job in retreed.retired:
        terminal.note(f"{job}: retired, gone from the tree it was planned from")
    if retreed.restamped or retreed.restored:
        terminal.note(f"{len(retreed.restamped) + len(retreed.restored)} waiting job(s) moved to the new tree "
                      f"revision ({len(retreed.restored)} back from retired)")
    _report_cycles(report.broken)


def _rebuild_stale(queue: Queue, specs: list[JobSpec], report: AddReport) -> list[str]:
    """Queue again the built jobs whose binaries are stale; each waits for what it is built against
    in this round (swarmctl.graph.gates_of over the round's jobs)."""
    from swarmctl.graph import gates_of

    existing = set(report.existing)
    stale = [s for s in specs if s.cpv in existing]
    if not stale:
        return []
    gates = gates_of({s.cpv: s for s in specs})
    return queue.rebuild(stale, {cpv: sorted(found) for cpv, found in gates.items()})


def _retree(queue: Queue, planned: list[tuple[str, Any, str, Path | None]], specs: list[JobSpec]) -> RetreeReport:
    """Jobs waiting at an older tree revision: those whose CPV the new tree lacks are retired, the
    others take the new revision and their edges in it (Queue.retree). A CPV is still there when
    world needs it now or its ebuild is in the repository the revision is of."""
    from swarmctl.tree import ebuild_present

    edges = {s.cpv: s.build for s in specs}
    report = RetreeReport()
    for name, resolution, tree, repo in planned:
        needed = {p.cpv for p in resolution.needed}

        def present(cpv: str, needed: set[str] = needed, repo: Path | None = repo) -> bool:
            return cpv in needed or ebuild_present(repo, cpv)

        part = queue.retree(name, tree, present, edges)
        report.retired += part.retired
        report.restamped += part.restamped
        report.restored += part.restored
    return report


def _resolve_target(app: AppContext, name: str, world_file: str | None, source: str | None, prefix: str | None,
                    quiet: bool) -> tuple[str, Any, str, Path | None]:
    """(target, its resolution, the tree revision it was resolved from, the repository it is of)."""
    from swarmctl.nightly import nightly_world_path
    from swarmctl.portage_env.prefix import load_prefix
    from swarmctl.resolver import PackageResolver
    from swarmctl.targets import area_url, several
    from swarmctl.tree import tree_revision

    target = app.config.targets[name]
    world: Path | list[str]
    if world_file:
        world = Path(world_file)
    elif target.world:
        world = list(target.world)
    else:
        world = Path(target.world_file) if target.world_file else nightly_world_path(app.config)
    if isinstance(world, Path) and not world.is_file():
        raise click.ClickException(f"world file {str(world)!r} does not exist (--world, targets.{name}.world_file "
                                   "or nightly.world_file)")
    prefix_dir = prefix or target.prefix or app.config.drone.prefix
    try:
        portage_prefix = load_prefix(Path(prefix_dir)) if prefix_dir else None
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    area = source
    if source and several(app.config.targets):
        area = area_url(source, name, app.config.targets) if "://" in source else str(Path(source) / name)
    if area and source == app.config.binhost.url and not app.config.binhost.dir:
        from swarmctl.binhost.generations import staging_url

        area = staging_url(area)  # what the swarm built counts, promoted or still staged
    repo = portage_prefix.repo if portage_prefix is not None else (
        Path(app.config.drone.repo) if app.config.drone.repo else None)
    with terminal.progress(quiet) as progress:
        progress(f"resolving {world if isinstance(world, Path) else 'the world of ' + name} with portage", 0, None)
        resolution = PackageResolver(portage_prefix).resolve(world, area)
    return name, resolution, tree_revision(repo), repo


@queue.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--json", "as_json", is_flag=True, help="JSON list of jobs (streamed page by page).")
@click.option("--limit", type=click.IntRange(min=0), metavar="N",
              help=f"At most N jobs (default: {TERMINAL_PAGE} on a terminal, all otherwise).")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Skip the first N jobs (in priority order).")
@click.option("--tsv", is_flag=True, help="Tab-separated values, a header then one job per line.")
@click.option("--target", metavar="T", help="Only jobs of this build target.")
@pass_app
def list_jobs(app: AppContext, state: str | None, as_json: bool, limit: int | None, offset: int, tsv: bool,
              target: str | None) -> None:
    """List jobs, highest priority first (one per line; every column when piped)."""
    if limit is None and not as_json and sys.stdout.isatty():
        limit = TERMINAL_PAGE
    if target is not None:
        chosen_targets(app.config, (target,))
    chosen, total = app.queue.page(state, offset, limit, target)
    if as_json:
        _stream_json(app.queue, chosen)
        return
    jobs = app.queue.load(chosen)
    terminal.print_table(terminal.JOB_COLUMNS, terminal.job_rows(jobs), terminal.jobs_title(len(jobs), total, offset),
                         tsv=tsv, title_piped=offset > 0 or len(jobs) < total)
    if offset + len(chosen) < total:
        terminal.note(f"{total - offset - len(chosen)} more; --offset {offset + len(chosen)} for the next page, "
                      "--limit N for more at once")


def _stream_json(queue: Queue, cpvs: list[str]) -> None:
    """A JSON list, one job per line, written a page at a time (memory stays one page, output
    starts at once; one line per job keeps it greppable and uses the fast encoder)."""
    out = sys.stdout
    out.write("[")
    first = True
    for start in range(0, len(cpvs), JSON_PAGE):
        for job in queue.load(cpvs[start:start + JSON_PAGE]):
            out.write(("\n" if first else ",\n") + json.dumps(job.as_dict(), sort_keys=True, default=str))
            first = False
    out.write("]\n" if first else "\n]\n")


@queue.command("show")
@click.argument("atom")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: AppContext, atom: str, as_json: bool) -> None:
    """One job in full, with the log tails of its failed builds."""
    job = app.queue.get(atom)
    data = job.as_dict() | {"log_tails": app.queue.tails(job.cpv)}
    if as_json:
        terminal.print_json(data)
        return
    terminal.print_fields({key: value for key, value in data.items() if key != "log_tails"})
    for drone, text in data["log_tails"].items():
        terminal.console.rule(f"log tail from {drone}")
        terminal.console.print(text, highlight=False, markup=False)


@queue.command("unblock")
@click.argument("atom")
@pass_app
def unblock(app: AppContext, atom: str) -> None:
    """Release a blocked package for another round of attempts."""
    app.queue.unblock(atom)
    terminal.ok(f"unblocked {validate_job(atom)}")


@queue.command("retry")
@click.argument("atom")
@pass_app
def retry(app: AppContext, atom: str) -> None:
    """Queue a failed or blocked package again."""
    app.queue.retry(atom)
    terminal.ok(f"queued {validate_job(atom)} again")


@queue.command("clear")
@click.option("--yes", is_flag=True, help="Really delete every job.")
@pass_app
def clear(app: AppContext, yes: bool) -> None:
    """Delete every job from the queue (needs --yes)."""
    if not yes:
        raise click.UsageError("queue clear deletes every job; add --yes to confirm")
    terminal.ok(f"deleted {app.queue.clear()} job(s)")
