"""``swarmctl drift``: which hosts' portage configuration differs from the target's."""

from __future__ import annotations

from pathlib import Path

import click

from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app


@click.command("drift")
@click.option("--inventory", type=click.Path(exists=True), help="Ansible inventory (default: healing.inventory).")
@click.option("--limit", default="drones:clients:binhost", show_default=True, metavar="PATTERN",
              help="Hosts to check (an Ansible pattern).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def drift(app: AppContext, inventory: str | None, limit: str, as_json: bool) -> None:
    """Compare each host's make.conf, package.* and profile with the target (changes nothing).

    Exits 1 when a host drifted or could not be checked.
    """
    from swarmctl.drift import check_drift
    from swarmctl.paths import cache_home

    source = inventory or app.config.healing.inventory
    if not source:
        raise click.UsageError("no inventory: --inventory, or healing.inventory in the config")
    playbook_dir = Path(app.config.healing.playbook_dir) if app.config.healing.playbook_dir else None
    report = check_drift(Path(source), limit, cache_home() / "drift-runs", playbook_dir)
    if as_json:
        terminal.print_json({"drifted": report.drifted, "current": report.current, "failed": report.failed})
    else:
        for host in report.current:
            terminal.ok(f"{host}: the target's configuration")
        for host, tasks in report.drifted.items():
            terminal.warn(f"{host}: differs from the target: {'; '.join(tasks)}")
        for host, why in report.failed.items():
            terminal.warn(f"{host}: not checked: {why}")
    if report.drifted or report.failed:
        raise SystemExit(1)


COMMANDS = [drift]
