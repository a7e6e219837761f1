"""``swarmctl drift``: which hosts are no longer what site.yml made them (changes nothing)."""

from __future__ import annotations

from pathlib import Path

import click
import redis

from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app
from swarmctl.exceptions import SwarmError


@click.command("drift")
@click.option("--inventory", type=click.Path(exists=True), help="Ansible inventory (default: healing.inventory).")
@click.option("--limit", default="all", show_default=True, metavar="PATTERN",
              help="Hosts to check (an Ansible pattern).")
@click.option("--json", "as_json", is_flag=True, help="Hosts by outcome, and per changed task a summary of its diff.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Record the result in the swarm (swarmctl status shows drifted hosts).")
@pass_app
def drift(app: AppContext, inventory: str | None, limit: str, as_json: bool, record: bool) -> None:
    """Run site.yml in check + diff mode and name, per host, the tasks that would change it.

    A drone config edited by hand, a service stopped, a package or a portage file of the target
    missing or different: each shows as the task that would put it back. Exits 1 when a host
    drifted or could not be checked.
    """
    from swarmctl.drift import check_drift
    from swarmctl.facts import FactStore
    from swarmctl.paths import cache_home

    source = inventory or app.config.healing.inventory
    if not source:
        raise click.UsageError("no inventory: --inventory, or healing.inventory in the config")
    playbook_dir = Path(app.config.healing.playbook_dir) if app.config.healing.playbook_dir else None
    report = check_drift(Path(source), limit, cache_home() / "drift-runs", playbook_dir)
    if record:
        try:
            FactStore(app.client).record_drift(report.drifted, report.failed, len(report.current))
        except (redis.RedisError, SwarmError) as exc:  # the check itself stands: say so, keep its exit code
            terminal.note(f"drift not recorded in the swarm: {exc}")
    if as_json:
        terminal.print_json({"drifted": report.drifted, "current": report.current, "failed": report.failed,
                             "diffs": report.diffs})
    else:
        for host in report.current:
            terminal.ok(f"{host}: no drift")
        for host, tasks in report.drifted.items():
            terminal.warn(f"{host}: drifted: {'; '.join(tasks)}")
        for host, why in report.failed.items():
            terminal.warn(f"{host}: not checked: {why}")
    if report.drifted or report.failed:
        raise SystemExit(1)


COMMANDS = [drift]
