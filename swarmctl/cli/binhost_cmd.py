"""``swarmctl binhost``: serve, reindex and verify a binhost directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from swarmctl.cli import terminal

log = logging.getLogger("swarmctl.cli.binhost")


def _pkgdir(ctx_obj: Any, given: str | None) -> Path:
    value = given or ctx_obj.config.binhost.dir
    if not value:
        raise click.ClickException("no binhost directory: pass --dir or set binhost.dir")
    return Path(value)


@click.group(short_help="Serve and check the binhost")
def binhost() -> None:
    """Serve the binhost (verified uploads, read-only PKGDIR) and check its index."""


@binhost.command("serve")
@click.option("--dir", "pkgdir", metavar="PKGDIR", help="Directory to serve (default: binhost.dir).")
@click.option("--listen", metavar="ADDR:PORT", help="Address to bind (default: binhost.listen).")
@click.pass_obj
def serve(obj: Any, pkgdir: str | None, listen: str | None) -> None:
    """Accept verified uploads from drones and serve PKGDIR to portage clients."""
    from swarmctl.binhost.policy import ContentPolicy
    from swarmctl.binhost.server import QueueGate, ServerSettings, make_server

    directory = _pkgdir(obj, pkgdir)
    cfg = obj.config.binhost
    settings = ServerSettings(
        max_upload_bytes=cfg.max_upload_bytes,
        read_timeout=cfg.read_timeout,
        min_upload_rate=cfg.min_upload_rate,
        max_uploads=cfg.max_uploads,
        header_timeout=cfg.header_timeout,
        max_connections=cfg.max_connections,
        max_connections_per_address=cfg.max_connections_per_address,
        policy=ContentPolicy.from_config(cfg),
    )
    client = obj.client
    from swarmctl.queue import Queue
    from swarmctl.registry import DroneRegistry

    gate = QueueGate(DroneRegistry(client, obj.config), Queue(client, obj.config))
    try:
        server = make_server(directory, listen or cfg.listen, gate, settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen or cfg.listen}: {exc.strerror or exc}") from None
    terminal.ok(f"binhost serving {directory} on {server.url} (uploads: PUT {server.url}/upload)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@binhost.command("reindex")
@click.option("--dir", "pkgdir", metavar="PKGDIR", help="Binhost directory (default: binhost.dir).")
@click.option("--prefix", "prefix_root", type=click.Path(file_okay=False),
              help="Portage prefix to run emaint in (default: a temporary one).")
@click.option("--incremental", is_flag=True, help="Only refresh entries whose file changed.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on a terminal.")
@click.pass_obj
def reindex_cmd(obj: Any, pkgdir: str | None, prefix_root: str | None, incremental: bool, quiet: bool) -> None:
    """Rebuild the Packages index from the package files (emaint binhost --fix)."""
    from swarmctl.binhost.index import reindex
    from swarmctl.exceptions import SwarmError

    directory = _pkgdir(obj, pkgdir)
    if not directory.is_dir():
        raise click.ClickException(f"{directory} is not a directory")
    try:
        with terminal.progress(quiet) as progress:
            count = reindex(directory, prefix_root=Path(prefix_root) if prefix_root else None,
                            full=not incremental, progress=progress)
    except (SwarmError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    terminal.ok(f"indexed {count} package(s) in {directory / 'Packages'}")


@binhost.command("verify")
@click.option("--dir", "pkgdir", metavar="PKGDIR", help="Binhost directory (default: binhost.dir).")
@click.option("--manifests", is_flag=True,
              help="Also verify every gpkg's internal Manifest and its content policy.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on a terminal.")
@click.pass_obj
def verify_cmd(obj: Any, pkgdir: str | None, manifests: bool, quiet: bool) -> None:
    """Check every package file against the index (size, MD5, SHA1, SHA256) and vice versa."""
    from swarmctl.binhost.index import verify
    from swarmctl.binhost.policy import ContentPolicy

    directory = _pkgdir(obj, pkgdir)
    with terminal.progress(quiet) as progress:
        report = verify(directory, check_manifests=manifests, policy=ContentPolicy.from_config(obj.config.binhost),
                        progress=progress)
    for problem in report.problems:
        click.echo(problem)
    if not report.ok:
        raise click.ClickException(f"{len(report.problems)} problem(s) in {directory} "
                                   f"({report.checked} package(s) checked)")
    terminal.ok(f"{report.checked} package(s) verified in {directory}")


COMMANDS = [binhost]
