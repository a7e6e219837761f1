"""``swarmctl orchestrator run`` and ``swarmctl events``."""

from __future__ import annotations

import logging
import signal
from typing import Any

import click

from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app
from swarmctl.orchestrator import Orchestrator


@click.group()
def orchestrator() -> None:
    """The maintenance loop (one leader, any number of standbys)."""


def make_healer(app: AppContext) -> Any:
    """The self-healing policy, when enabled and available."""
    if not app.config.healing.enabled:
        return None
    from swarmctl.healing import Healer  # needs ansible-runner

    return Healer.from_config(app.client, app.config)


@orchestrator.command("run")
@click.option("--interval", type=float, help="Seconds between sweeps (or orchestrator.interval).")
@pass_app
def run(app: AppContext, interval: float | None) -> None:
    """Run the maintenance loop until SIGTERM."""
    app.config = app.config.with_overrides(orchestrator__interval=interval)
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    healer = make_healer(app)
    orch = Orchestrator(app.client, app.config, healer=healer)

    def stop(_signum: int, _frame: Any) -> None:
        orch.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    metrics_port = app.config.orchestrator.metrics_port
    if metrics_port:
        from swarmctl.metrics import serve_metrics

        serve_metrics(app.client, app.config, app.config.orchestrator.metrics_address, metrics_port)
    terminal.note(f"orchestrator {orch.id} running (sweep every {app.config.orchestrator.interval:g} s)")
    orch.run()
    if healer is not None:
        # Let running restart/reboot playbooks finish: one killed halfway can leave a service stopped.
        healer.wait(timeout=900)


@click.command("events")
@click.option("-n", "--count", default=30, show_default=True, help="How many recent events.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_app
def events(app: AppContext, count: int, follow: bool, as_json: bool) -> None:
    """Show the event stream (every state change)."""
    import json

    def show(batch: list[Any]) -> None:
        if as_json:
            for event in batch:
                click.echo(json.dumps(event.as_dict(), sort_keys=True))
        else:
            terminal.print_messages(terminal.events_lines(batch))

    recent = app.events.tail(count)
    show(recent)
    if follow:
        last = recent[-1].id if recent else "$"
        try:
            for event in app.events.follow(last):
                show([event])
        except KeyboardInterrupt:
            pass
