"""``swarmctl monitor``: the live view of the queue and the drones (q quits).

The gathering, view and live loop are imported when the command runs, so ``swarmctl --help`` does not pay
for them.
"""

from __future__ import annotations

import click

from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app


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
    from swarmctl import monitor as data
    from swarmctl.cli.live import run_live
    from swarmctl.cli.views.monitor import render_frame

    if interval <= 0:
        raise click.BadParameter("must be positive", param_hint="--interval")

    def read(rate: data.BuiltRate) -> data.Snapshot:
        return data.gather(app.client, app.config, rate, tail=tail)

    if once:
        snapshot = read(data.BuiltRate(window * 60))
        snapshot.interval = interval
        console = terminal.frame_console(width)
        console.print(render_frame(snapshot, console.width, None, tail=tail))
        return
    app.client  # noqa: B018 (connect now: a wrong URL is one error line, not a broken screen)
    run_live(read, terminal.console, interval, window=window * 60)


COMMANDS = [monitor]
