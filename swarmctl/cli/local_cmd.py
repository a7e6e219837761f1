"""``swarmctl local``: the embedded single-machine Redis."""

from __future__ import annotations

import click

from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app
from swarmctl.embedded import EmbeddedRedis


@click.group()
def local() -> None:
    """The embedded local Redis (used when no redis.url is configured)."""


def _embedded(app: AppContext) -> EmbeddedRedis:
    if app.config.redis.url or app.config.redis.sentinels:
        raise click.ClickException("a Redis server is configured (redis.url/sentinels); nothing embedded to manage")
    return EmbeddedRedis(app.config.redis.data_dir)


@local.command("start")
@pass_app
def start(app: AppContext) -> None:
    """Start the embedded server (commands also start it on first use)."""
    server = _embedded(app)
    server.ensure_running()
    terminal.ok(f"{server} is running")


@local.command("stop")
@pass_app
def stop(app: AppContext) -> None:
    """Stop the embedded server (data persists in its AOF)."""
    server = _embedded(app)
    terminal.ok(f"stopped {server}" if server.stop() else f"{server} was not running")


@local.command("status")
@pass_app
def status(app: AppContext) -> None:
    """Is the embedded server running?"""
    server = _embedded(app)
    if server.is_running():
        terminal.ok(f"{server} is running")
    else:
        terminal.note(f"{server} is not running")
        raise SystemExit(1)
