"""``swarmctl drone`` and ``swarmctl drones``: enrollment, the daemon, the fleet."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

import click

from swarmctl import build_env, paths
from swarmctl.atomicfile import write_atomic
from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app
from swarmctl.defaults import SETTINGS
from swarmctl.drone.configured import builders_from_config
from swarmctl.drone.daemon import DroneDaemon, Publisher
from swarmctl.registry import validate_machine_id, validate_name
from swarmctl.targets import drone_targets
from swarmctl.tokens import new_token

log = logging.getLogger("swarmctl.drone")


@click.group()
def drone() -> None:
    """Enroll, run and manage drones."""


@drone.command("enroll")
@click.argument("name")
@click.option("--machine-id", help="The host's /etc/machine-id, checked before any reboot.")
@click.option("--token-file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Enroll with the token in this file ('-': stdin); when the file is missing or empty, "
                   "generate a token and write it there (mode 0600) instead of printing it.")
@pass_app
def enroll(app: AppContext, name: str, machine_id: str | None, token_file: str | None) -> None:
    """Enroll a drone and print its token (re-enrolling replaces the old token)."""
    if token_file is None:
        click.echo(app.registry.enroll(name, machine_id))
        terminal.note(f"drone {name} enrolled; give its daemon the token in SWARM_DRONE_TOKEN or a 0600 config file")
        return
    validate_name(name)  # before any file is written
    if machine_id:
        validate_machine_id(machine_id.strip().lower())
    given = _read_token(token_file)
    if given is not None:
        app.registry.enroll(name, machine_id, token=given)
        terminal.note(f"drone {name} enrolled with the token from {token_file}")
        return
    # The file first: a token that could not be saved must not replace the drone's old one.
    token = new_token()
    try:
        write_atomic(Path(token_file), token + "\n", mode=0o600)
    except OSError as exc:
        raise click.ClickException(f"cannot write the token file {token_file}: {exc}") from None
    app.registry.enroll(name, machine_id, token=token)
    terminal.note(f"drone {name} enrolled; its token is in {token_file} (mode 0600)")


def _read_token(token_file: str) -> str | None:
    """The token in ``token_file`` ('-': stdin), or None when the file is missing or empty."""
    if token_file == "-":
        text = sys.stdin.read()
    else:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8") if path.exists() else ""
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"cannot read the token file {token_file}: {exc}") from None
        if text.strip() and path.stat().st_mode & 0o077:
            terminal.note(f"{token_file} is readable by others: keep token files mode 0600")
    text = text.strip()
    if not text and token_file == "-":
        raise click.ClickException("no token on stdin")
    return text or None


@drone.command("revoke")
@click.argument("name")
@pass_app
def revoke(app: AppContext, name: str) -> None:
    """Revoke a drone's token; its jobs go back to the queue."""
    taken = app.registry.revoke(name, app.queue)
    terminal.ok(f"revoked {name}; {len(taken)} job(s) returned to the queue")


@drone.command("ground")
@click.argument("name")
@click.option("--minutes", type=float, default=None, help="How long (default: breaker.ground_seconds).")
@pass_app
def ground(app: AppContext, name: str, minutes: float | None) -> None:
    """Ground a drone by hand (no work) and take its jobs back."""
    seconds = minutes * 60 if minutes is not None else app.config.breaker.ground_seconds
    taken = app.registry.ground(name, seconds, app.queue)
    terminal.ok(f"grounded {name} for {seconds:.0f} s; {len(taken)} job(s) returned to the queue")


@drone.command("release")
@click.argument("name")
@pass_app
def release(app: AppContext, name: str) -> None:
    """Lift a drone's grounding."""
    app.registry.release(name)
    terminal.ok(f"released {name}")


def _guard_secrets(app: AppContext, token_on_command_line: bool) -> None:
    """Keep the drone's secrets away from its builds and from other users (see build_env)."""
    if token_on_command_line:
        terminal.note("warning: --token is visible to every local user in ps; "
                      "use SWARM_DRONE_TOKEN or drone.token in a 0600 config file")
    secrets = [s for s in SETTINGS if s.secret]
    if any(app.config.get(s.name) and s.env not in os.environ for s in secrets):  # from the file
        problem = build_env.secret_file_problem(app.config.source)
        if problem:
            terminal.note(f"warning: {problem}")
    # The values now live in the config object only; nothing this process starts inherits them.
    build_env.scrub_environ([s.env for s in secrets])
    build_env.hide_process()


def make_publisher(app: AppContext, name: str, token: str) -> Publisher | None:
    """Portage builds go to the binhost (which marks the job built); others complete directly."""
    cfg = app.config
    if cfg.drone.builder != "portage" or not cfg.binhost.url:
        return None
    from swarmctl.binhost.client import BinhostClient, BinhostPublisher

    return BinhostPublisher(BinhostClient(cfg.binhost.url, name, token, attempts=cfg.binhost.upload_retries,
                                          timeout=cfg.binhost.read_timeout))


@drone.command("run")
@click.option("--name", help="This drone's name (or drone.name).")
@click.option("--token", envvar="SWARM_DRONE_TOKEN",
              help="Enrollment token; prefer SWARM_DRONE_TOKEN (--token shows in ps).")
@click.option("--builder", type=click.Choice(["command", "portage"]), help="Builder (or drone.builder).")
@click.option("--command", "command", help="Argv template for the command builder, e.g. 'make-pkg {cpv}'.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Where build logs go.")
@click.option("--max-builds", type=int, help="Exit after this many builds (for tests).")
@click.option("--slots", type=click.IntRange(0, 256),
              help="Builds to run at once (or drone.slots; 0: one per 4 cores).")
@click.option("--target", "targets", multiple=True, metavar="T",
              help="A build target this drone builds (repeatable; or drone.targets). It is handed no job of "
                   "another target. Default: the farm's only target.")
@pass_app
def run(app: AppContext, name: str | None, token: str | None, builder: str | None, command: str | None,
        state_dir: str | None, max_builds: int | None, slots: int | None, targets: tuple[str, ...]) -> None:
    """Run the drone daemon: heartbeat, claim, build, report."""
    app.config = app.config.with_overrides(drone__name=name, drone__token=token, drone__builder=builder,
                                           drone__command=shlex.split(command) if command else None,
                                           drone__state_dir=state_dir, drone__slots=slots,
                                           drone__targets=list(targets) or None)
    cfg = app.config.drone
    if not cfg.name:
        raise click.UsageError("a drone needs a name: --name or drone.name")
    validate_name(cfg.name)
    declared = drone_targets(app.config.targets, cfg.targets)
    if not cfg.token:
        raise click.UsageError("a drone needs its token: --token, SWARM_DRONE_TOKEN or drone.token")
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    source = click.get_current_context().get_parameter_source("token")
    _guard_secrets(app, source is click.core.ParameterSource.COMMANDLINE)
    directory = Path(cfg.state_dir) if cfg.state_dir else paths.state_home() / "drones" / cfg.name
    if not app.registry.authenticate(cfg.name, cfg.token):
        raise click.ClickException(f"drone {cfg.name!r} is not enrolled, revoked, or its token is wrong "
                                   "(enroll it with: swarmctl drone enroll NAME)")
    builders = builders_from_config(app.config, declared)
    daemon = DroneDaemon(app.client, app.config, cfg.name, cfg.token, next(iter(builders.values())), directory,
                         publisher=make_publisher(app, cfg.name, cfg.token), builders=builders)
    daemon.install_signal_handlers()
    terminal.note(f"drone {cfg.name} (pid {os.getpid()}) working on target(s) {', '.join(builders)}; "
                  f"logs in {directory / 'logs'}")
    code = daemon.run(max_builds=max_builds)
    raise SystemExit(code)


@click.command("drones")
@click.option("--json", "as_json", is_flag=True, help="JSON list of drones.")
@click.option("--tsv", is_flag=True, help="Tab-separated values, a header then one drone per line.")
@pass_app
def drones(app: AppContext, as_json: bool, tsv: bool) -> None:
    """List every drone: status, task, cpu, mem, heartbeat, failures, grounding."""
    fleet = app.registry.list()
    if as_json:
        terminal.print_json([d.as_dict() for d in fleet])
    else:
        terminal.print_table(terminal.DRONE_COLUMNS, terminal.drone_rows(fleet, app.registry.server_time()),
                             f"{len(fleet)} drone(s)", tsv=tsv)
