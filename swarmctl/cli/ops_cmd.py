"""``swarmctl status``, ``swarmctl monitor`` and ``swarmctl doctor``: the operator's views.

Each command gathers, then hands the data to a pure render function; the
modules are imported when the command runs (they import the styling from
terminal.py, and ``swarmctl --help`` should not pay for them).
"""

from __future__ import annotations

import click

from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app


@click.command("status", short_help="The swarm at a glance; non-zero exit when it needs attention.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (schema: docs/operator-guide.md).")
@click.option("--max-sync-age", type=float, default=24.0, show_default=True, metavar="HOURS",
              help="A sync older than this needs attention.")
@pass_app
def status(app: AppContext, as_json: bool, max_sync_age: float) -> None:
    """The swarm at a glance; exits 1 (warning) or 2 (critical) when it needs attention.

    Sync, World, Binary, Swarm and the queue. Exit status: 0 all well; 1 blocked or
    failed packages, no sync recorded, no orchestrator; 2 sync too old or the last
    nightly FAILED, or no drone can take queued work (or Redis is unreachable).
    """
    from swarmctl.status import as_json as to_json
    from swarmctl.status import exit_code, gather_status, render_status

    report = gather_status(app.client, app.config, max_sync_age * 3600)
    if as_json:
        terminal.print_json(to_json(report))
    else:
        terminal.console.print(render_status(report), highlight=False)
    code = exit_code(report.attention)
    if code:
        raise SystemExit(code)


@click.command("monitor", short_help="Live view of the queue and the drones (q quits).")
@click.option("--interval", type=float, default=2.0, show_default=True, envvar="SWARM_MONITOR_INTERVAL",
              help="Seconds between refreshes (or SWARM_MONITOR_INTERVAL).")
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts and tests).")
@click.option("--width", type=click.IntRange(30, 1000), help="Frame width with --once (default: the terminal's).")
@click.option("--events", "tail", type=click.IntRange(0, 100), default=8, show_default=True,
              help="Recent events shown under the drones.")
@click.option("--window", type=click.FloatRange(1, 24 * 60), default=60.0, show_default=True, metavar="MINUTES",
              help="Sliding window of the build rate.")
@pass_app
def monitor(app: AppContext, interval: float, once: bool, width: int | None, tail: int, window: float) -> None:
    """Live view of the queue and every drone, refreshed in place; q quits."""
    from swarmctl import monitor as view

    if interval <= 0:
        raise click.BadParameter("must be positive", param_hint="--interval")

    def read(rate: view.BuiltRate) -> view.Snapshot:
        return view.gather(app.client, app.config, rate, tail=tail)

    if once:
        snapshot = read(view.BuiltRate(window * 60))
        snapshot.interval = interval
        console = terminal.frame_console(width)
        console.print(view.render_frame(snapshot, console.width, None, tail=tail))
        return
    app.client  # noqa: B018 (connect now: a wrong URL is one error line, not a broken screen)
    view.run_live(read, terminal.console, interval, window=window * 60)


@click.command("doctor", short_help="Check every moving part, one line each with a fix.")
@click.option("--json", "as_json", is_flag=True, help="JSON list of checks.")
@click.option("--deep", is_flag=True, help="Also hash every binhost file against the index (slow).")
@click.option("--max-skew", type=float, default=2.0, show_default=True, metavar="SECONDS",
              help="Clock difference (drones or this host vs Redis) that is a problem.")
@click.pass_obj
def doctor(app: AppContext, as_json: bool, deep: bool, max_skew: float) -> None:
    """Check the swarm's moving parts, one line each with a fix; exits 1 on warnings, 2 on failures."""
    from swarmctl.doctor import as_json as to_json
    from swarmctl.doctor import exit_code, render_checks, run_checks

    checks = run_checks(app.config, lambda: app.client, deep=deep, max_skew=max_skew)
    if as_json:
        terminal.print_json(to_json(checks))
    else:
        terminal.console.print(render_checks(checks), highlight=False)
    code = exit_code(checks)
    if code:
        raise SystemExit(code)


COMMANDS = [status, monitor, doctor]
