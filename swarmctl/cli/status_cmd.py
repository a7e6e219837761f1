"""``swarmctl status``: the swarm at a glance, with an exit code for scripts and cron.

The command gathers, then hands the report to a pure render function; the module is
imported when the command runs, so ``swarmctl --help`` does not pay for it.
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
    from swarmctl.cli.views.status import render_status
    from swarmctl.status import as_json as to_json
    from swarmctl.status import exit_code, gather_status

    report = gather_status(app.client, app.config, max_sync_age * 3600)
    if as_json:
        terminal.print_json(to_json(report))
    else:
        terminal.print_messages(render_status(report).renderables)
    code = exit_code(report.attention)
    if code:
        raise SystemExit(code)


COMMANDS = [status]
