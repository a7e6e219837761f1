"""``swarmctl heal``: restart or reboot a drone now, through the healing playbooks."""

from __future__ import annotations

import click

from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app


@click.command("heal")
@click.argument("name")
@click.option("--reboot", is_flag=True, help="Reboot the host (level 3) instead of restarting the service.")
@click.option("--yes", is_flag=True, help="Confirm a reboot.")
@click.option("--inventory", type=click.Path(exists=True), help="Ansible inventory (or healing.inventory).")
@pass_app
def heal(app: AppContext, name: str, reboot: bool, yes: bool, inventory: str | None) -> None:
    """Restart a drone's service, or reboot its host with --reboot --yes."""
    from swarmctl.healing import Healer
    from swarmctl.registry import validate_name

    validate_name(name)
    if reboot and not yes:
        raise click.UsageError(f"rebooting {name} is destructive: add --yes to confirm")
    app.config = app.config.with_overrides(healing__inventory=inventory)
    outcome = Healer(app.client, app.config).act(name, "reboot" if reboot else "restart", operator=True)
    if not outcome.ok:
        raise click.ClickException(outcome.summary)
    terminal.ok(outcome.summary)


COMMANDS = [heal]
