"""The ``swarmctl`` command line: click commands only; styling lives in terminal.py."""

from __future__ import annotations

import sys

import click
import redis

from swarmctl import __version__
from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext
from swarmctl.config import Config, load_config
from swarmctl.connection import TRANSIENT, unavailable
from swarmctl.exceptions import SwarmError
from swarmctl.logging_setup import setup_logging

_LOADED: dict[str, Config] = {}  # the invocation's config, for error messages after click unwound
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="swarmctl")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="SWARM_CONFIG",
              help="Config file (default: $XDG_CONFIG_HOME/build-swarm/swarm.yml, then /etc/build-swarm/swarm.yml).")
@click.option("--redis", "redis_url", metavar="URL", help="Redis URL (overrides SWARM_REDIS_URL and the file).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, redis_url: str | None, verbose: int) -> None:
    """Run a self-healing build farm for Gentoo binary packages."""
    config = load_config(config_path).with_overrides(redis__url=redis_url)
    setup_logging(verbose, json_lines=config.log.json, log_file=config.log.file, max_bytes=config.log.max_bytes,
                  backups=config.log.backups)
    _LOADED["config"] = config
    ctx.obj = AppContext(config)


def _register() -> None:
    from swarmctl.cli import (
        binhost_cmd,
        demo_cmd,
        doctor_cmd,
        drift_cmd,
        drone_cmd,
        heal_cmd,
        history_cmd,
        local_cmd,
        monitor_cmd,
        nightly_cmd,
        orchestrator_cmd,
        queue_cmd,
        report_cmd,
        status_cmd,
    )

    cli.add_command(queue_cmd.queue)
    cli.add_command(drone_cmd.drone)
    cli.add_command(drone_cmd.drones)
    cli.add_command(orchestrator_cmd.orchestrator)
    cli.add_command(orchestrator_cmd.events)
    cli.add_command(local_cmd.local)
    for module in (binhost_cmd, status_cmd, monitor_cmd, doctor_cmd, history_cmd, heal_cmd, demo_cmd, nightly_cmd,
                   report_cmd, drift_cmd):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure becomes one line on stderr and a non-zero exit."""
    try:
        code = cli.main(args=argv, prog_name="swarmctl", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        terminal.error("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        terminal.error(exc.format_message())
        sys.exit(exc.exit_code)
    except SwarmError as exc:
        terminal.error(str(exc))
        sys.exit(1)
    except redis.AuthenticationError as exc:
        terminal.error(_where(f"Redis refused the credentials: {exc}"))
        sys.exit(2)
    except TRANSIENT as exc:
        config = _config_or_none()
        terminal.error(str(unavailable(config, exc)) if config else f"Redis unavailable: {exc}")
        sys.exit(2)
    except redis.ResponseError as exc:
        terminal.error(_where(f"Redis error: {exc}"))
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _config_or_none() -> Config | None:
    if "config" in _LOADED:
        return _LOADED["config"]
    try:
        return load_config()
    except SwarmError:
        return None


def _where(message: str) -> str:
    from swarmctl.connection import describe

    config = _config_or_none()
    return f"{describe(config)}: {message}" if config else message
