"""The human view of ``swarmctl status``: the story's four lines, the queue, then what needs attention."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from swarmctl.cli import terminal
from swarmctl.facts import DriftCheck
from swarmctl.humanize import ago, stamp
from swarmctl.status import StatusReport
from swarmctl.target_status import TargetStatus


def render_status(report: StatusReport) -> Group:
    """The human view: the story's four lines, the queue, then what needs attention."""
    meta, q, swarm = report.meta, report.queue, report.swarm
    bad = terminal.SEVERITY_STYLE["critical"]
    if meta.sync_time is None:
        sync = Text("never recorded", style=terminal.SEVERITY_STYLE["warning"])
    else:
        sync = Text(f"{stamp(meta.sync_time)} ({ago(report.sync_age)} ago)",
                    style=bad if report.sync_bad else "")
    if report.nightly is not None:
        sync.append(f"  nightly {report.nightly.event} {stamp(report.nightly.time)}",
                    style=bad if report.nightly.event == "FAILED" else terminal.DIM)
    world = "unknown" if meta.world_size is None else f"{meta.world_size:,} packages"
    if meta.binhost_percent is None:
        binary = Text("unknown", style=terminal.DIM)
    else:
        binary = Text(f"{meta.binhost_percent:.1f}% available ({meta.binhost_available:,}/{meta.binhost_total:,})")
    plural = "package" if swarm.building == 1 else "packages"
    drones = Text(f"{swarm.drones_online}/{swarm.drones_total} drones online, {swarm.building} {plural} building",
                  style=bad if report.open_jobs and not swarm.drones_available else "")
    if swarm.drones_grounded:
        drones.append(f", {swarm.drones_grounded} grounded", style=terminal.STATUS_STYLE["grounded"])
    if swarm.drones_misconfigured:
        drones.append(f", {swarm.drones_misconfigured} misconfigured", style=terminal.STATUS_STYLE["misconfigured"])
    if swarm.drones_low_disk:
        drones.append(f", {swarm.drones_low_disk} low on disk", style=terminal.STATUS_STYLE["low-disk"])
    queue = Text(f"{q['needed']} needed ({q['ready']} ready, {q['waiting']} waiting), {q['delegated']} building, "
                 f"{q['built']} built, ")
    queue.append(f"{q['failed']} failed", style=terminal.STATE_STYLE["failed"] if q["failed"] else "")
    queue.append(", ")
    queue.append(f"{q['blocked']} blocked", style=terminal.STATE_STYLE["blocked"] if q["blocked"] else "")
    if q.get("retired"):  # gone from the tree before they were built (queue sync)
        queue.append(f", {q['retired']} retired", style=terminal.STATE_STYLE["retired"])
    rows: list[tuple[str, Text | str]] = [("Sync", sync), ("World", world), ("Binary", binary), ("Swarm", drones),
                                          ("Queue", queue)]
    if len(report.targets) > 1:
        rows += [(f"Target {t.name}", target_line(t)) for t in report.targets]
    drift = drift_line(meta.drift)
    if drift is not None:
        rows.append(("Drift", drift))
    if report.report_path is not None:
        rows.append(("Report", Text(f"{report.report_path} (written {stamp(report.report_time)})")))
    lines = [terminal.labelled(label, "").append_text(value if isinstance(value, Text) else Text(value))
             for label, value in rows]
    if report.attention:
        lines.append(Text(""))
        for item in report.attention:
            line = Text(f"{item.severity.upper():>8} ", style=terminal.SEVERITY_STYLE[item.severity])
            line.append(f"{item.code}: ", style=terminal.BOLD)
            line.append(item.message)
            lines.append(line)
    else:
        lines.append(Text("all well", style=terminal.SEVERITY_STYLE["ok"]))
    return Group(*lines)


def drift_line(check: DriftCheck | None, tasks_shown: int = 3) -> Text | None:
    """``2 host(s) drifted since <time> (h3: task; task, h4: task)``; None when the last check was clean."""
    if check is None or check.clean:
        return None
    warn = terminal.SEVERITY_STYLE["warning"]
    parts = []
    if check.drifted:
        hosts = ", ".join(f"{host}: {'; '.join(tasks[:tasks_shown])}{'; ...' if len(tasks) > tasks_shown else ''}"
                          for host, tasks in check.drifted.items())
        parts.append(f"{len(check.drifted)} host(s) drifted since {stamp(check.time)} ({hosts})")
    if check.failed:
        parts.append(f"{len(check.failed)} host(s) not checked at {stamp(check.time)} ({', '.join(check.failed)})")
    return Text("; ".join(parts), style=warn)


def target_line(target: TargetStatus) -> Text:
    """One target: its jobs, its coverage and its drones (red when stalled)."""
    q = target.queue
    line = Text(f"{q.get('needed', 0)} needed, {q.get('delegated', 0)} building, {q.get('built', 0)} built, "
                f"{q.get('failed', 0) + q.get('blocked', 0)} failed/blocked; ")
    line.append("coverage unknown" if target.coverage_percent is None else
                f"{target.coverage_percent:.1f}% available ({target.available}/{target.world})")
    line.append(f"; {len(target.drones_available)}/{len(target.drones)} drone(s) available",
                style=terminal.SEVERITY_STYLE["critical"] if target.stalled else "")
    return line
