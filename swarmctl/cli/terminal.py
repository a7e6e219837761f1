"""All styling in one place: colours, tables and one-line messages.

Rendering functions are pure (data in, rich renderable out) so they can be
tested without a terminal.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from swarmctl.humanize import percent, seconds, size
from swarmctl.progress import ProgressFn, no_progress
from swarmctl.sanitize import printable

STATUS_STYLE = {
    "building": "bold green",
    "idle": "yellow",
    "grounded": "bold red",
    "misconfigured": "bold red",
    "low-disk": "bold yellow",
    "stopping": "magenta",
    "offline": "grey50",
}
STATE_STYLE = {
    "needed": "cyan",
    "delegated": "green",
    "built": "dim green",
    "failed": "red",
    "blocked": "bold red",
    "retired": "grey50",
}
EVENT_STYLE = {
    "built": "green",
    "failed": "red",
    "blocked": "bold red",
    "grounded": "bold red",
    "misconfigured": "bold red",
    "preflight-ok": "green",
    "low-disk": "bold yellow",
    "disk-ok": "green",
    "reclaimed": "yellow",
    "stale": "magenta",
    "restarted": "cyan",
    "rebooted": "cyan",
}

#: Secondary text (hints, stamps, quiet counts) and emphasis (labels, names, titles).
DIM = "dim"
BOLD = "bold"
MONITOR_TITLE = "Build Swarm Monitor"
MONITOR_BORDER = "blue"
LABEL_STYLE = BOLD
HUNG_STYLE = "bold magenta"
OFFLINE_ROW_STYLE = "grey50"
COUNT_STYLE = {
    "needed": "cyan",
    "building": "green",
    "built": "green",
    "failed": "red",
    "blocked": "bold red",
}
SEVERITY_STYLE = {"ok": "green", "warning": "yellow", "critical": "bold red"}
CHECK_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "grey50"}
CHECK_MARK = {"ok": " ok ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Stable JSON for scripts: sorted keys, one document."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def error(message: str) -> None:
    err_console.print(Text(f"error: {message}", style="bold red"), soft_wrap=True)


def note(message: str) -> None:
    err_console.print(Text(message, style="dim"), soft_wrap=True)


def ok(message: str) -> None:
    console.print(Text(message, style="green"), soft_wrap=True)


def warn(message: str) -> None:
    console.print(Text(message, style="yellow"), soft_wrap=True)


def styled(value: str, styles: dict[str, str]) -> Text:
    """A state or status in capitals, in its colour (the monitor's panels)."""
    return Text(value.upper(), style=styles.get(value, ""))


def coloured(value: str, styles: dict[str, str]) -> Text:
    """A state or status as ``--json`` spells it (so grep finds it), in its colour."""
    return Text(value, style=styles.get(value, ""))


def drone_task(drone: Any) -> str:
    """What a drone is doing; for a misconfigured or low-disk one, why it cannot build."""
    if drone.status in ("misconfigured", "low-disk") and getattr(drone, "problem", None):
        return str(drone.problem)
    tasks = [t["cpv"] for t in getattr(drone, "tasks", None) or []]
    if len(tasks) > 1:  # a multi-slot drone: every build, oldest first
        return ", ".join(tasks)
    return drone.task or "-"


def disk_free(drone: Any) -> str:
    """The least free space a drone reported (build dir or PKGDIR), or '-'."""
    reported = [v for v in (getattr(drone, "disk_free_build", None), getattr(drone, "disk_free_pkgdir", None))
                if v is not None]
    return size(min(reported)) if reported else "-"


def jobs_title(shown: int, total: int | None = None, offset: int = 0) -> str:
    """'12 job(s)', or 'jobs 51-100 of 420' for one page of a longer list."""
    if total is None or (offset == 0 and shown == total):
        return f"{shown} job(s)"
    return f"jobs {offset + 1 if shown else offset}-{offset + shown} of {total}"


@dataclass(frozen=True)
class Column:
    """A table column. ``drop``: 0 never dropped; on a narrow terminal the highest goes first."""

    name: str
    right: bool = False
    drop: int = 0


Cell = str | Text


def is_terminal() -> bool:
    return console.is_terminal


def table_lines(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int | None,
                title: str = "", title_piped: bool = False) -> list[Text]:
    """Aligned lines, one record each, never cut: at natural width when ``width`` is None (a pipe).

    On a terminal of ``width`` cells, optional columns are dropped (highest ``drop`` first)
    until the rest fits, and a footer names them; what is left may still be wider, and then
    the terminal wraps it rather than anything being cut. Through a pipe the title is left
    out (only records and their header) unless ``title_piped`` (a page of a longer list says which).
    """
    cells = [[c if isinstance(c, Text) else Text(c) for c in row] for row in rows]
    natural = [max([len(col.name)] + [row[i].cell_len for row in cells]) for i, col in enumerate(columns)]
    shown = list(range(len(columns)))
    hidden: list[str] = []
    if width is not None:
        for i in sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: -columns[i].drop):
            if sum(natural[j] for j in shown) + 2 * (len(shown) - 1) <= width:
                break
            shown.remove(i)
            hidden.append(columns[i].name)
    lines = [Text(title, style=BOLD)] if title and (width is not None or title_piped) else []

    def line(values: Sequence[Text], style: str = "") -> Text:
        out = Text(style=style)
        for n, i in enumerate(shown):
            value, pad = values[i], " " * (natural[i] - values[i].cell_len)
            last = n == len(shown) - 1
            out.append_text(Text(pad) + value if columns[i].right else value + Text("" if last else pad))
            if not last:
                out.append("  ")
        return out

    lines.append(line([Text(c.name) for c in columns], style=BOLD))
    lines += [line(row) for row in cells]
    if hidden:
        lines.append(Text(f"not shown for width: {', '.join(hidden)} (pipe or --json for all)", style=DIM))
    return lines


def tsv_lines(columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> list[str]:
    """Tab-separated: a header, then one record per line (tabs and newlines in values become spaces)."""
    def clean(cell: Cell) -> str:
        return (cell.plain if isinstance(cell, Text) else cell).replace("\t", " ").replace("\n", " ")
    return ["\t".join(c.name for c in columns)] + ["\t".join(clean(c) for c in row) for row in rows]


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], title: str = "",
                tsv: bool = False, title_piped: bool = False) -> None:
    """A table on stdout: TSV, plain natural-width text through a pipe, or fitted to the terminal."""
    if tsv:
        sys.stdout.write("".join(f"{line}\n" for line in tsv_lines(columns, rows)))
        return
    for line in table_lines(columns, rows, console.width if is_terminal() else None, title, title_piped):
        console.print(line, soft_wrap=True, highlight=False)


def hanging(text: Text, width: int, indent: int = 4) -> list[Text]:
    """``text`` wrapped at word boundaries to ``width``, continuation lines indented."""
    if text.cell_len <= width:
        return [text]
    lines = list(text.wrap(Console(width=max(20, width - indent)), max(20, width - indent)))
    return [lines[0]] + [Text(" " * indent) + rest for rest in lines[1:]]


def print_messages(lines: Iterable[RenderableType]) -> None:
    """One line per message through a pipe; on a terminal wrapped at words with an indented continuation."""
    for text in lines:
        if not isinstance(text, Text):
            console.print(text, highlight=False)
        elif is_terminal():
            for part in hanging(text, console.width):
                console.print(part, soft_wrap=True, highlight=False)
        else:
            console.print(text, soft_wrap=True, highlight=False)


class _Rate(ProgressColumn):
    """Items per second, once there is a rate to tell."""

    def render(self, task: Task) -> Text:
        return Text("" if not task.speed else f"{task.speed:,.0f}/s", style=DIM)


class _Count(ProgressColumn):
    """'n of m' (or just n while the total is unknown)."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{task.completed:,.0f} of {task.total:,.0f}")


@contextlib.contextmanager
def progress(quiet: bool = False) -> Iterator[ProgressFn]:
    """A progress callback: a bar per stage on a terminal (what, n of m, rate, time left); silent when piped or quiet.

    The bar is transient: when the work ends only the command's own result line stays.
    """
    if quiet or not is_terminal():
        yield no_progress
        return
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), _Count(), _Rate(),
                   TimeRemainingColumn(), TimeElapsedColumn(), console=console, transient=True)
    tasks: dict[str, TaskID] = {}

    def update(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            for earlier in tasks.values():  # a new stage ends the one before
                bar.update(earlier, completed=bar.tasks[earlier].total or 0)
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    with bar:
        yield update


#: On a narrow terminal the least needed columns go first: what a job waits for, its priority, its drone.
JOB_COLUMNS = (Column("PACKAGE"), Column("STATE"), Column("DRONE", drop=1), Column("TRIES", right=True),
               Column("PRIORITY", right=True, drop=2), Column("WAITS FOR", drop=3), Column("WHY", drop=4))


def job_rows(jobs: Sequence[Any]) -> list[list[Cell]]:
    return [[job.cpv, coloured(job.state, STATE_STYLE), job.drone or "-", str(job.attempts), f"{job.priority:.0f}",
             ",".join(job.after) or "-", Text(printable(job.reason) or "-")] for job in jobs]


#: Dropped first to last: grounding, last heartbeat, failures, task; name, status, cpu and mem stay.
DRONE_COLUMNS = (Column("DRONE"), Column("STATUS"), Column("TASK", drop=1), Column("CPU", right=True),
                 Column("RAM", right=True), Column("SEEN", right=True, drop=3), Column("FAILS", right=True, drop=2),
                 Column("GROUNDED", drop=4), Column("FREE", right=True, drop=5))


def drone_rows(drones: Sequence[Any], now: float) -> list[list[Cell]]:
    """The fleet; ``now`` is Redis's clock, which the groundings are in."""
    rows: list[list[Cell]] = []
    for d in drones:
        grounded = f"for {seconds(d.grounded_until - now)}" if d.grounded_until else "-"
        seen = "never" if d.heartbeat_age is None else f"{seconds(d.heartbeat_age)} ago"
        # Text, not str: a drone-written value is never parsed as rich markup.
        rows.append([Text(d.name), coloured(d.status, STATUS_STYLE), Text(printable(drone_task(d)) or "-"),
                     percent(d.cpu), percent(d.mem),
                     seen, str(d.failures), grounded, disk_free(d)])
    return rows


def drones_table(drones: Sequence[Any], now: float, width: int | None = None) -> Group:
    """The fleet as lines fitted to ``width`` (the live views' use)."""
    return Group(*table_lines(DRONE_COLUMNS, drone_rows(drones, now), width, f"{len(drones)} drone(s)"))


def events_lines(events: Iterable[Any]) -> list[Text]:
    """One line per event; a build's duration with its units, nothing shown for what an event lacks."""
    lines = []
    for event in events:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
        text = Text(f"{stamp} ")
        text.append(f"{event.kind:<10}", style=EVENT_STYLE.get(event.kind, ""))
        if event.job:
            text.append(f" {event.job}")
        if event.drone:
            text.append(f" on {event.drone}" if event.job else f" {event.drone}", style=BOLD)
        reason = event.reason
        if event.kind == "built" and reason:
            with contextlib.suppress(ValueError):
                reason = f"in {seconds(float(reason))}"
        if reason:
            text.append(f"  {reason}", style=DIM)
        lines.append(text)
    return lines


def labelled(label: str, value: str, style: str = "") -> Text:
    """'Label: value' with the value styled."""
    text = Text(f"{label}: ", style=LABEL_STYLE)
    text.append(value, style=style)
    return text


def pack_line(items: Sequence[Text], width: int, sep: str = "  ") -> list[Text]:
    """Lay items out left to right, starting a new line rather than splitting an item."""
    lines: list[Text] = []
    current = Text()
    for item in items:
        piece = item.copy()
        piece.truncate(max(1, width), overflow="ellipsis")
        if current.cell_len and current.cell_len + len(sep) + piece.cell_len > width:
            lines.append(current)
            current = Text()
        if current.cell_len:
            current.append(sep)
        current.append_text(piece)
    if current.cell_len or not lines:
        lines.append(current)
    return lines


def fit(text: Text, width: int) -> Text:
    """One line, cut with an ellipsis at ``width`` cells."""
    line = text.copy()
    line.no_wrap = True
    line.truncate(max(1, width), overflow="ellipsis")
    return line


def frame_console(width: int | None = None) -> Console:
    """The stdout console, or one of a fixed width (for --once --width N)."""
    return console if width is None else Console(width=width)


def demo_summary(summary: Any) -> Table:
    """The demo's closing table: every package built once, verified, indexed."""
    table = Table(title="Local swarm summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("jobs", str(summary.jobs))
    table.add_row("built", Text(f"{len(summary.built)}", style="green"))
    once = all(n == 1 for n in summary.builds_per_job.values())
    table.add_row("built exactly once", Text("yes" if once else "NO", style="green" if once else "bold red"))
    table.add_row("blocked", Text(", ".join(summary.blocked) or "-", style="red" if summary.blocked else ""))
    table.add_row("binhost index", Text("verified" if summary.index_ok else "PROBLEMS",
                                        style="green" if summary.index_ok else "bold red"))
    table.add_row("time", f"{summary.seconds:.0f} s")
    return table


def demo_frame(counts: dict[str, int], drones: Sequence[Any], now: float, seconds: float) -> Group:
    """The demo's live view: queue counts and elapsed time over the drones table (``now``: Redis clock)."""
    header = Text(f"Build Swarm (local)   needed {counts['needed']}  building {counts['delegated']}  "
                  f"built {counts['built']}  blocked {counts['blocked']}  {seconds:.0f}s", style=BOLD)
    return Group(header, drones_table(drones, now, console.width if is_terminal() else None))


def print_fields(data: dict[str, Any]) -> None:
    """'key value' lines, keys right-aligned and bold (``queue show``, ``report``)."""
    width = max((len(key) for key in data), default=0)
    for key, value in data.items():
        line = Text(f"{key:>{width}}", style=BOLD)
        line.append(f" {value}")
        console.print(line, highlight=False)
