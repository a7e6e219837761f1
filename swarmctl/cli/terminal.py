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


def jobs_table(jobs: Sequence[Any]) -> Table:
    table = Table(title=f"{len(jobs)} job(s)", expand=False)
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
        table.add_row(d.name, styled(d.status, STATUS_STYLE), d.task or "-", percent(d.cpu), percent(d.mem),
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
