"""``swarmctl nightly``: what the nightly playbook and the cron check report to the swarm."""

from __future__ import annotations

import click

from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app
from swarmctl.facts import FactStore
from swarmctl.nightly import NIGHTLY_EVENTS, nightly_status_path, nightly_world_path


@click.group()
def nightly() -> None:
    """Record the nightly run's progress and the cron check (read by status and doctor)."""


@nightly.command("mark")
@click.argument("event", type=click.Choice([*NIGHTLY_EVENTS, "SYNCED"], case_sensitive=False))
@click.option("--detail", default="", help="A short note (the failed task, the sync method).")
@pass_app
def mark(app: AppContext, event: str, detail: str) -> None:
    """STARTED first, SYNCED after a good sync, FINISHED or FAILED last."""
    meta = FactStore(app.client)
    if event.upper() == "SYNCED":
        meta.set_sync_time()
    else:
        meta.record_nightly(event, detail=detail[:500])
    terminal.ok(f"nightly {event.upper()} recorded")


@nightly.command("paths")
@pass_app
def paths(app: AppContext) -> None:
    """The files the nightly run uses, from this config (JSON; read by playbooks/nightly.yml)."""
    terminal.print_json({"status_file": str(nightly_status_path(app.config)),
                         "world_file": str(nightly_world_path(app.config)),
                         "binhost_dir": app.config.binhost.dir or ""})


@nightly.command("cron-check")
@click.option("--ok/--failed", "ok", required=True, help="Did the verification pass?")
@click.option("--detail", default="", help="What was checked, or what failed.")
@pass_app
def cron_check(app: AppContext, ok: bool, detail: str) -> None:
    """Record the cron verification (the job is really scheduled under cronie)."""
    FactStore(app.client).record_cron_verify(ok, detail[:500])
    terminal.ok(f"cron check {'passed' if ok else 'FAILED'} recorded")


COMMANDS = [nightly]
