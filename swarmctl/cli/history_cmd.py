"""``swarmctl history``: import real emerge.log durations, show what the scheduler knows."""

from __future__ import annotations

from dataclasses import asdict

import click

from swarmctl.atoms import cp_of, validate_cp, validate_cpv
from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app
from swarmctl.emergelog import Merge, parse_file
from swarmctl.exceptions import InvalidAtom
from swarmctl.history import BuildRecord, History


@click.group()
def history() -> None:
    """Build durations: the scheduler's estimates come from these."""


def _history(app: AppContext) -> History:
    return History(app.client, app.config.queue.default_estimate)


@history.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the per-file report as JSON.")
@pass_app
def import_logs(app: AppContext, files: tuple[str, ...], as_json: bool) -> None:
    """Record the build durations found in emerge.log FILEs (oldest first, so the newest stay)."""
    reports = {path: parse_file(path) for path in files}
    merges: list[tuple[Merge, str]] = sorted(
        ((m, path) for path, r in reports.items() for m in r.merges), key=lambda item: item[0].end)
    repeats = _history(app).import_merges(merges)
    if as_json:
        terminal.print_json({path: r.as_dict() for path, r in reports.items()})
        return
    if repeats:
        terminal.note(f"{repeats} build(s) were imported before and are not recorded again")
    for path, r in reports.items():
        terminal.ok(f"{path}: {len(r.merges)} build(s) recorded ({r.parallel} under --jobs)")
        skipped = {"interrupted": r.interrupted, "binary": r.binary, "without a start": r.unpaired,
                   "with negative time": r.negative}
        extra = ", ".join(f"{n} {what}" for what, n in skipped.items() if n)
        if extra:
            terminal.note(f"  not recorded: {extra}")
        if r.malformed:
            shown = ", ".join(map(str, r.malformed_lines))
            more = " ..." if r.malformed > len(r.malformed_lines) else ""
            terminal.note(f"  {r.malformed} malformed line(s) ignored (line {shown}{more})")


@history.command("show")
@click.argument("atom")
@click.option("--json", "as_json", is_flag=True, help="Records and estimate as JSON.")
@pass_app
def show(app: AppContext, atom: str, as_json: bool) -> None:
    """A package's recorded builds and the estimate the scheduler uses (ATOM: cat/pkg or cat/pkg-ver)."""
    try:
        cpv: str | None = validate_cpv(atom)
        cp = cp_of(atom)
    except InvalidAtom:
        cpv, cp = None, validate_cp(atom)
    store = _history(app)
    records = store.records(cp)
    estimate = store.estimate(cpv or cp, records)
    if as_json:
        terminal.print_json({"atom": atom, "estimate": estimate, "default": store.default,
                             "records": [asdict(r) for r in records]})
        return
    terminal.console.print(_plain(cp, records), highlight=False, markup=False)
    source = "no history: the default" if not records else "median of recent builds"
    terminal.ok(f"estimate for {cpv or cp}: {estimate:.0f} s ({source})")


def _plain(cp: str, records: list[BuildRecord]) -> str:
    if not records:
        return f"{cp}: no recorded builds"
    lines = [f"{cp}: {len(records)} recorded build(s), newest first"]
    for r in records:
        flag = " (--jobs)" if r.parallel else ""
        lines.append(f"  {r.cpv:<48} {r.seconds:>9.0f} s{flag}  {r.source}")
    return "\n".join(lines)


COMMANDS = [history]
