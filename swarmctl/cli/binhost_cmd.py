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


def binhost_keyring(config: Any) -> Any:
    """The binhost's signing :class:`~swarmctl.binhost.signing.Keyring` from the config."""
    from swarmctl.binhost.signing import keyring_from_config

    return keyring_from_config(config)


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
        index_ttl=cfg.index_ttl,
        policy=ContentPolicy.from_config(cfg),
    )
    client = obj.client
    from swarmctl.binhost.signing import SigningError
    from swarmctl.queue import Queue
    from swarmctl.registry import DroneRegistry

    gate = QueueGate(DroneRegistry(client, obj.config), Queue(client, obj.config))
    keyring = binhost_keyring(obj.config)
    try:
        key = keyring.signing_key()
        keyring.publish(directory)
    except SigningError as exc:
        # Serve anyway (clients still fetch what is published); uploads wait for a key.
        key = None
        terminal.error(f"uploads are refused until the binhost can sign: {exc}")
    try:
        server = make_server(directory, listen or cfg.listen, gate, settings, keyring=keyring,
                             targets=obj.config.targets)
        if key is not None:
            server.publish_keys(keyring)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen or cfg.listen}: {exc.strerror or exc}") from None
    terminal.ok(f"binhost serving {directory} on {server.url} (uploads: PUT {server.url}/upload)"
                + (f", signing with {key.fingerprint}" if key else ""))
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
                            full=not incremental, progress=progress, gpg=obj.config.binhost.gpg)
    except (SwarmError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    terminal.ok(f"indexed {count} package(s) in {directory / 'Packages'}")


@binhost.command("verify")
@click.option("--dir", "pkgdir", metavar="PKGDIR", help="Binhost directory (default: binhost.dir).")
@click.option("--manifests", is_flag=True, help="Also verify every gpkg's internal Manifest and its content policy.")
@click.option("--signatures/--no-signatures", default=True, show_default=True,
              help="Verify every package's signature against PKGDIR/KEYS.asc as a default portage "
                   "client does (implies --manifests).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar on a terminal.")
@click.pass_obj
def verify_cmd(obj: Any, pkgdir: str | None, manifests: bool, signatures: bool, quiet: bool) -> None:
    """Check every package file against the index (size, MD5, SHA1, SHA256) and vice versa,
    and every package's signature against the published keys."""
    from swarmctl.binhost.index import verify
    from swarmctl.binhost.policy import ContentPolicy
    from swarmctl.exceptions import SwarmError

    directory = _pkgdir(obj, pkgdir)
    try:
        with terminal.progress(quiet) as progress:
            report = verify(directory, check_manifests=manifests, check_signatures=signatures,
                            gpg=obj.config.binhost.gpg, policy=ContentPolicy.from_config(obj.config.binhost),
                            progress=progress)
    except SwarmError as exc:
        raise click.ClickException(str(exc)) from None
    for problem in report.problems:
        click.echo(problem)
    if not report.ok:
        raise click.ClickException(f"{len(report.problems)} problem(s) in {directory} "
                                   f"({report.checked} package(s) checked)")
    terminal.ok(f"{report.checked} package(s) verified in {directory}")


@binhost.group("key")
def key_group() -> None:
    """The binhost's signing key: init, show, rotate, revoke, retire, export.

    The key lives in binhost.gnupg_home (mode 0700, the binhost's user); its public
    half, with every other key clients should trust, is written to PKGDIR/KEYS.asc.
    """


def _key_context(obj: Any, pkgdir: str | None) -> tuple[Any, Path | None]:
    directory = pkgdir or obj.config.binhost.dir
    return binhost_keyring(obj.config), Path(directory) if directory else None


def _published(keyring: Any, directory: Path | None) -> str:
    if directory is None:
        return "no binhost.dir set: publish with 'swarmctl binhost key export > PKGDIR/KEYS.asc'"
    return str(keyring.publish(directory))


def _describe_key(key: Any) -> str:
    from swarmctl.humanize import stamp

    expiry = "never expires" if key.expires is None else f"expires {stamp(key.expires)} " \
        f"({key.days_left():.0f} days)"
    return f"{key.fingerprint}  {key.status()}  created {stamp(key.created)}  {expiry}"


_DIR_OPTION = click.option("--dir", "pkgdir", metavar="PKGDIR",
                           help="Binhost directory whose KEYS.asc is rewritten (default: binhost.dir).")


@key_group.command("init")
@_DIR_OPTION
@click.pass_obj
def key_init(obj: Any, pkgdir: str | None) -> None:
    """Create the signing key (ed25519, expiring after binhost.key_expiry_days)."""
    from swarmctl.binhost.signing import SigningError

    keyring, directory = _key_context(obj, pkgdir)
    try:
        key = keyring.init(obj.config.binhost.key_uid, obj.config.binhost.key_expiry_days)
        where = _published(keyring, directory)
    except SigningError as exc:
        raise click.ClickException(str(exc)) from None
    terminal.ok(f"signing key {_describe_key(key)}")
    click.echo(f"public keys: {where}")
    click.echo(f"revocation certificate: {keyring.revocation_path(key.fingerprint)} "
               "(copy it somewhere safe, off this host)")


@key_group.command("show")
@_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def key_show(obj: Any, pkgdir: str | None, as_json: bool) -> None:
    """Fingerprints, expiry and where the public keys are served."""
    from swarmctl.binhost.signing import KEYS_NAME, SigningError

    keyring, directory = _key_context(obj, pkgdir)
    try:
        keys = keyring.list_keys()
    except SigningError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        current = keyring.signing_key().fingerprint
    except SigningError:
        current = None
    url = obj.config.binhost.url
    served = f"{url.rstrip('/')}/{KEYS_NAME}" if url else (str(directory / KEYS_NAME) if directory else None)
    if as_json:
        terminal.print_json({"home": str(keyring.home), "signing": current, "served_at": served,
                             "keys": [{"fingerprint": k.fingerprint, "status": k.status(), "created": k.created,
                                       "expires": k.expires, "uid": k.uid} for k in keys]})
        return
    if not keys:
        raise click.ClickException(f"no signing key in {keyring.home}: run 'swarmctl binhost key init'")
    for key in keys:
        marker = "* " if key.fingerprint == current else "  "
        click.echo(f"{marker}{_describe_key(key)}")
    click.echo(f"signing with: {current or 'NONE (uploads are refused)'}")
    click.echo(f"public keys served at: {served or 'binhost.url / binhost.dir not set'}")


@key_group.command("rotate")
@_DIR_OPTION
@click.pass_obj
def key_rotate(obj: Any, pkgdir: str | None) -> None:
    """Make a new key that signs from now on; the old ones stay published and trusted.

    End the overlap with 'key retire OLD' once clients have the new key and the
    packages are re-signed (portage's gpkg-sign; see docs/operator-guide.md).
    """
    from swarmctl.binhost.signing import SigningError

    keyring, directory = _key_context(obj, pkgdir)
    try:
        key = keyring.create(obj.config.binhost.key_uid, obj.config.binhost.key_expiry_days)
        where = _published(keyring, directory)
    except SigningError as exc:
        raise click.ClickException(str(exc)) from None
    terminal.ok(f"new signing key {_describe_key(key)}")
    click.echo(f"public keys (old and new): {where}")
    click.echo(f"revocation certificate: {keyring.revocation_path(key.fingerprint)}")


@key_group.command("revoke")
@click.argument("fingerprint")
@_DIR_OPTION
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def key_revoke(obj: Any, fingerprint: str, pkgdir: str | None, yes: bool) -> None:
    """Revoke a key (compromise): packages it signed stop verifying on every client."""
    from swarmctl.binhost.signing import SigningError

    if not yes:
        click.confirm(f"revoke {fingerprint}? packages signed with it will be refused by clients", abort=True)
    keyring, directory = _key_context(obj, pkgdir)
    try:
        key = keyring.revoke(fingerprint)
        where = _published(keyring, directory)
    except SigningError as exc:
        raise click.ClickException(str(exc)) from None
    terminal.ok(f"revoked {key.fingerprint}; the revocation is published in {where}")


@key_group.command("retire")
@click.argument("fingerprint")
@_DIR_OPTION
@click.pass_obj
def key_retire(obj: Any, fingerprint: str, pkgdir: str | None) -> None:
    """End a rotation overlap: drop an old key from the binhost and KEYS.asc."""
    from swarmctl.binhost.signing import SigningError

    keyring, directory = _key_context(obj, pkgdir)
    try:
        current = keyring.signing_key().fingerprint
    except SigningError:
        current = ""
    try:
        if keyring.find(fingerprint).fingerprint == current:
            raise click.ClickException("refusing to retire the key that signs now; rotate first")
        keyring.retire(fingerprint)
        where = _published(keyring, directory)
    except SigningError as exc:
        raise click.ClickException(str(exc)) from None
    terminal.ok(f"retired {fingerprint}; {where} no longer lists it")


@key_group.command("export")
@click.pass_obj
def key_export(obj: Any) -> None:
    """The armored public keys clients should trust, on stdout."""
    from swarmctl.binhost.signing import SigningError

    keyring = binhost_keyring(obj.config)
    try:
        text = keyring.export()
    except SigningError as exc:
        raise click.ClickException(str(exc)) from None
    if not text:
        raise click.ClickException(f"no keys in {keyring.home}: run 'swarmctl binhost key init'")
    click.echo(text, nl=False)


COMMANDS = [binhost]
