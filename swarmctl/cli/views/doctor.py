"""The human view of ``swarmctl doctor``: one line per check, the fix on the line under each problem."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from swarmctl.cli import terminal
from swarmctl.doctor import Check


def render_checks(checks: list[Check]) -> Group:
    """One line per check (state, name, what was seen); a 'fix:' line under each problem.

    Each is one message: through a pipe one line, on a terminal wrapped with its continuation indented.
    """
    width = max((len(c.name) for c in checks), default=0)
    lines: list[Text] = []
    for check in checks:
        line = Text(f"[{terminal.CHECK_MARK[check.state]}]", style=terminal.CHECK_STYLE[check.state])
        line.append(" ")
        line.append(check.name.ljust(width), style=terminal.BOLD)
        line.append(f" {check.summary}")
        lines.append(line)
        if check.hint and check.state in ("warn", "fail"):
            lines.append(Text(f"{' ' * 7}fix: {check.hint}", style=terminal.DIM))
    return Group(*lines)
