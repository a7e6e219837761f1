"""``swarmctl doctor``: check every moving part, one line each with a fix.

The checks are imported when the command runs, so ``swarmctl --help`` does not pay for them.
"""

from __future__ import annotations

import click

from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext


@click.command("doctor", short_help="Check every moving part, one line each with a fix.")
@click.option("--json", "as_json", is_flag=True, help="JSON list of checks.")
@click.option("--deep", is_flag=True, help="Also hash every binhost file against the index (slow).")
@click.option("--max-skew", type=float, default=2.0, show_default=True, metavar="SECONDS",
              help="Clock difference (drones or this host vs Redis) that is a problem.")
@click.pass_obj
def doctor(app: AppContext, as_json: bool, deep: bool, max_skew: float) -> None:
    """Check the swarm's moving parts, one line each with a fix; exits 1 on warnings, 2 on failures."""
    from swarmctl.cli.views.doctor import render_checks
    from swarmctl.doctor import as_json as to_json
    from swarmctl.doctor import exit_code, run_checks

    checks = run_checks(app.config, lambda: app.client, deep=deep, max_skew=max_skew)
    if as_json:
        terminal.print_json(to_json(checks))
    else:
        terminal.print_messages(render_checks(checks).renderables)
    code = exit_code(checks)
    if code:
        raise SystemExit(code)


COMMANDS = [doctor]
