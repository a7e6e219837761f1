"""The monitor's frame: a :class:`~swarmctl.monitor.Snapshot` in, a rich renderable out, no I/O.

Frames can be compared in tests and timed in bench/monitor.py; the live loop
(swarmctl.cli.live) only hands them to rich's Live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Group, JustifyMethod, RenderableType
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from swarmctl.cli import terminal
from swarmctl.cli.views.status import target_line
from swarmctl.humanize import ago, duration, percent, stamp
from swarmctl.monitor import Eta, Snapshot
from swarmctl.registry import DroneInfo

#: Order of drones in the table: trouble first, then work, then the rest.
STATUS_ORDER = {"misconfigured": 0, "grounded": 0, "low-disk": 0, "building": 1, "stopping": 2, "idle": 3,
                "offline": 4}

@dataclass(frozen=True)
class _Column:
    name: str
    width: int
    justify: JustifyMethod = "left"


#: Optional columns, most useful first; dropped from the end when the terminal is narrow.
_OPTIONAL = (_Column("TIME", 6, "right"), _Column("CPU", 4, "right"), _Column("RAM", 4, "right"),
             _Column("SEEN", 5, "right"))
_STATUS_WIDTH = 11  # "GROUNDED 4m"
_TASK_MIN = 14
_DRONE_MIN, _DRONE_MAX = 8, 22
_GAP = 3  # cells between two columns: padding either side plus the box's divider


def _columns(inner: int, longest_name: int) -> tuple[int, list[_Column]]:
    """The drone column's width and the optional columns that fit in ``inner`` cells."""
    drone = max(_DRONE_MIN, min(_DRONE_MAX, longest_name, inner // 4))
    used = drone + _STATUS_WIDTH + _TASK_MIN + 2 * _GAP
    chosen = []
    for column in _OPTIONAL:
        if used + column.width + _GAP <= inner:
            chosen.append(column)
            used += column.width + _GAP
    return drone, chosen


def _status_cell(drone: DroneInfo, now: float) -> Text:
    if drone.status == "grounded" and drone.grounded_until:
        return Text(f"GROUNDED {ago(drone.grounded_until - now)}",
                    style=terminal.STATUS_STYLE["grounded"])
    if drone.status == "building" and drone.hung:
        return Text("HUNG", style=terminal.HUNG_STYLE)
    if drone.status == "misconfigured":  # the reason is in the task column
        return Text("MISCONFIG", style=terminal.STATUS_STYLE["misconfigured"])
    if drone.status == "low-disk":  # the reason is in the task column
        return Text("LOW-DISK", style=terminal.STATUS_STYLE["low-disk"])
    return terminal.styled(drone.status, terminal.STATUS_STYLE)


def _cell(snapshot: Snapshot, drone: DroneInfo, column: str) -> str:
    if column == "TIME":
        return duration(snapshot.elapsed(drone)) if drone.task else "-"
    if column == "CPU":
        return percent(drone.cpu) if drone.status != "offline" else "-"
    if column == "RAM":
        return percent(drone.mem) if drone.status != "offline" else "-"
    return ago(drone.heartbeat_age)


def drone_table(snapshot: Snapshot, inner: int, rows: int | None = None) -> Table:
    """The fleet, one line per drone; ``rows`` caps the lines (a summary line says what is hidden)."""
    fleet = sorted(snapshot.drones, key=lambda d: (STATUS_ORDER.get(d.status, 9), d.name))
    drone_w, optional = _columns(inner, max((len(d.name) for d in fleet), default=5))
    table = Table(box=box.SIMPLE_HEAD, expand=True, show_edge=False, pad_edge=False, padding=(0, 1))
    table.add_column("DRONE", width=drone_w, no_wrap=True, overflow="ellipsis")
    table.add_column("STATUS", width=_STATUS_WIDTH, no_wrap=True, overflow="ellipsis")
    table.add_column("TASK", min_width=_TASK_MIN, ratio=1, no_wrap=True, overflow="ellipsis")
    for column in optional:
        table.add_column(column.name, width=column.width, justify=column.justify, no_wrap=True)
    shown = fleet
    if rows is not None and len(fleet) > rows:
        shown = fleet[:max(0, rows - 1)]
    for drone in shown:
        style = terminal.OFFLINE_ROW_STYLE if drone.status == "offline" else None
        # Text, not str: a drone-written value is never parsed as rich markup.
        cells: list[Any] = [Text(drone.name), _status_cell(drone, snapshot.now), Text(terminal.drone_task(drone))]
        cells += [_cell(snapshot, drone, c.name) for c in optional]
        table.add_row(*cells, style=style)
    hidden = fleet[len(shown):]
    if hidden:
        by_status: dict[str, int] = {}
        for drone in hidden:
            by_status[drone.status] = by_status.get(drone.status, 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items(), key=lambda i: STATUS_ORDER.get(i[0], 9)))
        table.add_row(f"+{len(hidden)} more", "", Text(detail, style=terminal.DIM), *([""] * len(optional)))
    if not fleet:
        table.add_row("-", "", Text("no drones enrolled: swarmctl drone enroll NAME", style=terminal.DIM),
                      *([""] * len(optional)))
    return table


def _eta_text(eta: Eta | None) -> str:
    if eta is None:
        return "-"
    if eta.seconds <= 0:
        return "done"
    return ("≥" if eta.lower_bound else "") + duration(eta.seconds)


def header_lines(snapshot: Snapshot, inner: int) -> list[Text]:
    """Queue counts, rate and ETA, then the slower-moving facts, packed to the width; then a line
    per target when there are several."""
    c = snapshot.counts
    trouble = terminal.COUNT_STYLE
    items = [
        terminal.labelled("Needed", f"{c.get('needed', 0)}", trouble["needed"]),
        terminal.labelled("Building", f"{c.get('delegated', 0)}", trouble["building"]),
        terminal.labelled("Built", f"{c.get('built', 0)}", trouble["built"]),
        terminal.labelled("Failed/Blocked", f"{c.get('failed', 0)}/{c.get('blocked', 0)}",
                          trouble["blocked"] if c.get("failed", 0) + c.get("blocked", 0) else ""),
        terminal.labelled("Rate", f"{snapshot.rate_per_hour:.0f}/hr"),
        terminal.labelled("ETA", _eta_text(snapshot.eta)),
    ]
    meta = snapshot.meta
    sync_age = snapshot.now - meta.sync_time if meta.sync_time else None
    facts = [
        terminal.labelled("Drones", f"{snapshot.online}/{len(snapshot.drones)} online"),
        terminal.labelled("Ready", f"{c.get('ready', 0)}"),
        terminal.labelled("Waiting", f"{c.get('waiting', 0)}"),
        terminal.labelled("Sync", f"{ago(sync_age)} ago" if sync_age is not None else "unknown"),
    ]
    if meta.binhost_percent is not None:
        facts.append(terminal.labelled("Binary", f"{meta.binhost_percent:.1f}%"))
    facts.append(terminal.labelled("Leader", snapshot.leader or "none",
                                   "" if snapshot.leader else terminal.SEVERITY_STYLE["critical"]))
    # Several targets: a line each, as in ``swarmctl status``.
    targets = [terminal.fit(terminal.labelled(f"Target {t.name}", "").append_text(target_line(t)), inner)
               for t in snapshot.targets if len(snapshot.targets) > 1]
    return terminal.pack_line(items, inner, sep="   ") + [
        Text.assemble(*_dim(line)) for line in terminal.pack_line(facts, inner, sep="   ")] + targets


def _dim(line: Text) -> tuple[Text]:
    line.stylize("dim")
    return (line,)


def render_frame(snapshot: Snapshot, width: int, height: int | None = None, tail: int = 8) -> RenderableType:
    """The whole frame for a terminal ``width`` x ``height`` (None: as tall as needed).

    Long names never break a column: cells are cut with an ellipsis and every
    drone takes exactly one line; narrow terminals lose optional columns
    (SEEN, RAM, CPU, TIME, in that order) before the task is squeezed.
    """
    width = max(width, 30)
    inner = width - 4  # panel border and padding
    header = header_lines(snapshot, inner)
    event_lines = [terminal.fit(line, inner) for line in terminal.events_lines(snapshot.events)]
    rows: int | None = None
    if height is not None:
        # panel 2 + header + blank + table head 2 + rule 1 + events
        budget = max(4, height - 2 - len(header) - 1 - 2 - 1)
        keep_events = min(len(event_lines), tail, max(1, budget // 3))
        event_lines = event_lines[-keep_events:] if keep_events else []
        rows = max(1, budget - max(1, len(event_lines)))
    parts: list[RenderableType] = [*header, Text(""), drone_table(snapshot, inner, rows),
                                   Rule("recent events", style=terminal.DIM, characters="─")]
    parts += event_lines or [Text("no events yet", style=terminal.DIM)]
    subtitle = f"q quits · every {snapshot.interval:g}s"
    if width >= 60:
        subtitle += f" · {stamp(snapshot.now)}"
    return Panel(Group(*parts), title=Text(terminal.MONITOR_TITLE, style=terminal.BOLD), title_align="left",
                 subtitle=Text(subtitle, style=terminal.DIM), subtitle_align="right",
                 border_style=terminal.MONITOR_BORDER, width=width, height=height, padding=(0, 1))


def error_frame(message: str, width: int, interval: float) -> RenderableType:
    """What the live view shows while Redis cannot be read (it keeps retrying)."""
    body = Text(f"cannot read the swarm: {message}\nretrying every {interval:g}s; q quits",
                style=terminal.SEVERITY_STYLE["critical"])
    return Panel(body, title=terminal.MONITOR_TITLE, title_align="left", width=max(30, width),
                 border_style=terminal.SEVERITY_STYLE["critical"])
