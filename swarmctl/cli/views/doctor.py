"""The human view of ``swarmctl doctor``: one row per check, the fix under each problem."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from swarmctl.cli import terminal
from swarmctl.doctor import Check


def render_checks(checks: list[Check]) -> Table:
    """One row per check (state, name, what was seen); the fix under each problem, wrapped in its column."""
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, style=terminal.BOLD)
    table.add_column(ratio=1)
    for check in checks:
        body = Text(check.summary)
        if check.hint and check.state in ("warn", "fail"):
            body.append(f"\nfix: {check.hint}", style=terminal.DIM)
        table.add_row(Text(f"[{terminal.CHECK_MARK[check.state]}]", style=terminal.CHECK_STYLE[check.state]),
                      check.name, body)
    return table
