"""``swarmctl queue``: add, list, show, unblock, retry, clear."""

from __future__ import annotations

import click

from swarmctl.atoms import validate_cpv
from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app
from swarmctl.graph import JobSpec
from swarmctl.keys import STATES


@click.group()
def queue() -> None:
    """Manage the build queue."""


@queue.command("add")
@click.argument("atoms", nargs=-1, required=True)
@click.option("--after", "after", multiple=True, metavar="ATOM",
              help="A package these build against (repeatable); they wait until it is built.")
@click.option("--estimate", type=float, help="Estimated build seconds (default: from history).")
@pass_app
def add(app: AppContext, atoms: tuple[str, ...], after: tuple[str, ...], estimate: float | None) -> None:
    """Queue packages (exact versions, e.g. sys-devel/llvm-19.1.7)."""
    cpvs = [validate_cpv(a) for a in atoms]
    deps = [validate_cpv(a) for a in after]
    report = app.queue.add([JobSpec(cpv, build=list(deps), estimate=estimate) for cpv in cpvs])
    for cpv in report.added:
        terminal.ok(f"queued {cpv}")
    for cpv in report.existing:
        terminal.note(f"{cpv} is already queued")
    for edge in report.broken:
        terminal.note(f"cycle: {edge.job} no longer waits for {edge.gate} ({edge.kind} edge)")


@queue.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--json", "as_json", is_flag=True, help="JSON list of jobs.")
@pass_app
def list_jobs(app: AppContext, state: str | None, as_json: bool) -> None:
    """List jobs, highest priority first."""
    jobs = app.queue.jobs(state)
    if as_json:
        terminal.print_json([j.as_dict() for j in jobs])
    else:
        terminal.console.print(terminal.jobs_table(jobs))


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
    for key, value in data.items():
        if key != "log_tails":
            terminal.console.print(f"[bold]{key:>10}[/] {value}", highlight=False)
    for drone, text in data["log_tails"].items():
        terminal.console.rule(f"log tail from {drone}")
        terminal.console.print(text, highlight=False, markup=False)


@queue.command("unblock")
@click.argument("atom")
@pass_app
def unblock(app: AppContext, atom: str) -> None:
    """Release a blocked package for another round of attempts."""
    app.queue.unblock(atom)
    terminal.ok(f"unblocked {validate_cpv(atom)}")


@queue.command("retry")
@click.argument("atom")
@pass_app
def retry(app: AppContext, atom: str) -> None:
    """Queue a failed or blocked package again."""
    app.queue.retry(atom)
    terminal.ok(f"queued {validate_cpv(atom)} again")


@queue.command("clear")
@click.option("--yes", is_flag=True, help="Really delete every job.")
@pass_app
def clear(app: AppContext, yes: bool) -> None:
    """Delete every job from the queue (needs --yes)."""
    if not yes:
        raise click.UsageError("queue clear deletes every job; add --yes to confirm")
    terminal.ok(f"deleted {app.queue.clear()} job(s)")
