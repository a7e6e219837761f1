"""All styling in one place: colours, tables and one-line messages.

Rendering functions are pure (data in, rich renderable out) so they can be
tested without a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from swarmctl.sanitize import printable

STATUS_STYLE = {
    "building": "bold green",
    "idle": "yellow",
    "grounded": "bold red",
    "stopping": "magenta",
    "offline": "grey50",
}
STATE_STYLE = {
    "needed": "cyan",
    "delegated": "green",
    "built": "dim green",
    "failed": "red",
    "blocked": "bold red",
}
EVENT_STYLE = {
    "built": "green",
    "failed": "red",
    "blocked": "bold red",
    "grounded": "bold red",
    "reclaimed": "yellow",
    "stale": "magenta",
    "restarted": "cyan",
    "rebooted": "cyan",
}

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


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.0f}d"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def styled(value: str, styles: dict[str, str]) -> Text:
    return Text(value.upper(), style=styles.get(value, ""))


def jobs_table(jobs: Sequence[Any], total: int | None = None, offset: int = 0) -> Table:
    if total is None or (offset == 0 and len(jobs) == total):
        title = f"{len(jobs)} job(s)"
    else:
        title = f"jobs {offset + 1 if jobs else offset}-{offset + len(jobs)} of {total}"
    table = Table(title=title, expand=False)
    table.add_column("PACKAGE", overflow="ellipsis", no_wrap=True, max_width=48)
    table.add_column("STATE", no_wrap=True)
    table.add_column("DRONE", overflow="ellipsis", no_wrap=True, max_width=20)
    table.add_column("TRIES", justify="right")
    table.add_column("PRIORITY", justify="right")
    table.add_column("WAITS FOR", overflow="ellipsis", no_wrap=True, max_width=40)
    for job in jobs:
        state = "waiting" if job.state == "needed" and job.pending > 0 else job.state
        table.add_row(job.cpv, styled(state, STATE_STYLE), job.drone or "-", str(job.attempts),
                      f"{job.priority:.0f}", ", ".join(job.after) or "-")
    return table


def drones_table(drones: Sequence[Any], now: float | None = None) -> Table:
    now = time.time() if now is None else now
    table = Table(title=f"{len(drones)} drone(s)")
    table.add_column("DRONE", overflow="ellipsis", no_wrap=True, max_width=24)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("TASK", overflow="ellipsis", no_wrap=True, max_width=40)
    table.add_column("CPU", justify="right")
    table.add_column("RAM", justify="right")
    table.add_column("SEEN", justify="right")
    table.add_column("FAILS", justify="right")
    table.add_column("GROUNDED", justify="right")
    for d in drones:
        grounded = ago(d.grounded_until - now) if d.grounded_until else "-"
        # Text, not str: a drone-written value is never parsed as rich markup.
        table.add_row(Text(d.name), styled(d.status, STATUS_STYLE), Text(printable(d.task) or "-"),
                      percent(d.cpu), percent(d.mem),
                      ago(d.heartbeat_age), str(d.failures), grounded)
    return table


def events_lines(events: Iterable[Any]) -> list[Text]:
    lines = []
    for event in events:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
        text = Text(f"{stamp} ")
        text.append(f"{event.kind:<10}", style=EVENT_STYLE.get(event.kind, ""))
        text.append(f" {event.job or '-'}")
        if event.drone:
            text.append(f" @{event.drone}", style="bold")
        if event.reason:
            text.append(f"  {event.reason}", style="dim")
        lines.append(text)
    return lines


# -- monitor, status and doctor ----------------------------------------------------------------

MONITOR_TITLE = "Build Swarm Monitor"
MONITOR_BORDER = "blue"
LABEL_STYLE = "bold"
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


def duration(seconds: float | None) -> str:
    """Compact elapsed time: 42s, 12m05s, 3h07m, 2d04h; '-' when unknown."""
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def stamp(epoch: float | None) -> str:
    """Local wall-clock time of an epoch, minutes precision."""
    return "never" if epoch is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


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


def print_frame(renderable: Any, width: int | None = None) -> None:
    frame_console(width).print(renderable)


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
