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
        min_free_bytes=cfg.min_free_mb * 2**20,
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
    terminal.ok(f"binhost serving {directory} on {server.url} (uploads: PUT {server.url}/upload, "
                f"staging index for drones: {server.url}/staging/)"
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


def gate_settings(config: Any) -> Any:
    """The promote gates' settings from the config (binhost.gate_*, smoke_*)."""
    from swarmctl.binhost.gates import GateSettings

    cfg = config.binhost
    repo = cfg.gate_repo or config.drone.repo
    return GateSettings(repo=Path(repo) if repo else None, profile=cfg.gate_profile, smoke=cfg.smoke_install,
                        smoke_limit=cfg.smoke_limit)


def _existing_dir(obj: Any, pkgdir: str | None) -> Path:
    directory = _pkgdir(obj, pkgdir)
    if not directory.is_dir():
        raise click.ClickException(f"{directory} is not a directory")
    return directory


def _signing_fingerprint(config: Any) -> str | None:
    try:
        return str(binhost_keyring(config).signing_key().fingerprint)
    except Exception:  # no key, no gpg: the record says unknown
        return None


@binhost.command("promote")
@click.option("--dir", "pkgdir", metavar="PKGDIR", help="Binhost directory (default: binhost.dir).")
@click.option("--force", is_flag=True, help="Publish even if a gate fails (asks for confirmation).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (with --force).")
@click.option("--no-gates", is_flag=True, hidden=True, help="Skip the gates (tests and benches).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def promote_cmd(obj: Any, pkgdir: str | None, force: bool, yes: bool, no_gates: bool, as_json: bool) -> None:
    """Snapshot the staging index as a new generation, run the gates, and publish it.

    Clients see the new generation at once and whole (PKGDIR/Packages is replaced
    atomically). A failing gate (dependency closure, smoke install) keeps the
    published generation and exits 1 with the reason.
    """
    from swarmctl.binhost import generations
    from swarmctl.binhost.gates import run_gates
    from swarmctl.exceptions import SwarmError
    from swarmctl.tree import tree_revision

    directory = _existing_dir(obj, pkgdir)
    if force and not yes:
        click.confirm(f"publish the staging index of {directory} to clients even if a gate fails?", abort=True)
    settings = gate_settings(obj.config)
    try:
        result = generations.promote(directory, gates=None if no_gates else run_gates(directory, settings),
                                     force=force, tree=tree_revision(settings.repo) or None,
                                     signing_key=_signing_fingerprint(obj.config))
    except (SwarmError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    gen = result.generation
    if as_json:
        terminal.print_json({**gen.as_dict(published=result.published), "seconds": round(result.seconds, 3)})
    if not result.published:
        raise click.ClickException(f"generation {gen.id} NOT promoted, gate failed: {result.reason}")
    if not as_json:
        terminal.ok(f"generation {gen.id} published ({gen.packages} package(s), {result.seconds:.2f} s)"
                    + (" -- FORCED past a failing gate" if gen.forced else ""))


@binhost.command("rollback")
@click.argument("generation", required=False, type=int)
@click.option("--dir", "pkgdir", metavar="PKGDIR", help="Binhost directory (default: binhost.dir).")
@click.option("--force", is_flag=True, help="Publish a generation even if it failed its gates.")
@click.pass_obj
def rollback_cmd(obj: Any, generation: int | None, pkgdir: str | None, force: bool) -> None:
    """Publish an earlier generation again (default: the one published before the current one)."""
    from swarmctl.binhost import generations
    from swarmctl.exceptions import SwarmError

    directory = _existing_dir(obj, pkgdir)
    try:
        gen_id, seconds = generations.rollback(directory, generation, force=force)
    except (SwarmError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    terminal.ok(f"generation {gen_id} published again ({seconds:.2f} s)")


@binhost.command("generations")
@click.option("--dir", "pkgdir", metavar="PKGDIR", help="Binhost directory (default: binhost.dir).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def generations_cmd(obj: Any, pkgdir: str | None, as_json: bool) -> None:
    """List the generations (* marks the published one)."""
    from swarmctl.binhost import generations
    from swarmctl.exceptions import SwarmError
    from swarmctl.humanize import stamp

    directory = _existing_dir(obj, pkgdir)
    try:
        rows = generations.listing(directory)
    except SwarmError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        terminal.print_json(rows)
        return
    if not rows:
        click.echo(f"no generations in {directory} (run 'swarmctl binhost promote')")
        return
    for row in rows:
        gate = row["gates"].get("reason", "") if row["state"] == "rejected" else ""
        click.echo(f"{'*' if row['published'] else ' '} {row['id']:>5}  {stamp(row['created'])}  "
                   f"{row['packages']:>6} pkgs  {row['state']}{'  (forced)' if row['forced'] else ''}"
                   f"{'  ' + gate if gate else ''}")


@binhost.command("diff")
@click.argument("old")
@click.argument("new")
@click.option("--dir", "pkgdir", metavar="PKGDIR", help="Binhost directory (default: binhost.dir).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def diff_cmd(obj: Any, old: str, new: str, pkgdir: str | None, as_json: bool) -> None:
    """CPVs added, removed and rebuilt from generation OLD to NEW (a number, 'published' or 'staging')."""
    from swarmctl.binhost import generations
    from swarmctl.exceptions import SwarmError

    directory = _existing_dir(obj, pkgdir)
    try:
        changes = generations.diff(generations.resolve(directory, old), generations.resolve(directory, new))
    except SwarmError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        terminal.print_json(changes.as_dict())
        return
    for sign, cpvs in (("+", changes.added), ("-", changes.removed), ("~", changes.rebuilt)):
        for cpv in cpvs:
            click.echo(f"{sign} {cpv}")
    click.echo(f"{len(changes.added)} added, {len(changes.removed)} removed, {len(changes.rebuilt)} rebuilt")


@binhost.command("gc")
@click.option("--dir", "pkgdir", metavar="PKGDIR", help="Binhost directory (default: binhost.dir).")
@click.option("--keep-generations", type=click.IntRange(min=1), help="Generations to keep (default: "
              "binhost.keep_generations; the published and previous ones always stay).")
@click.option("--keep-instances", type=click.IntRange(min=1),
              help="Builds per CPV to keep in staging (default: binhost.keep_instances).")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted and the bytes freed; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def gc_cmd(obj: Any, pkgdir: str | None, keep_generations: int | None, keep_instances: int | None,
           dry_run: bool, as_json: bool) -> None:
    """Delete old generations and the package files no kept index names."""
    from swarmctl.binhost.retention import gc
    from swarmctl.exceptions import SwarmError
    from swarmctl.humanize import size as human_size

    directory = _existing_dir(obj, pkgdir)
    cfg = obj.config.binhost
    try:
        plan = gc(directory, keep_generations=keep_generations or cfg.keep_generations,
                  keep_instances=keep_instances or cfg.keep_instances, dry_run=dry_run)
    except (SwarmError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        terminal.print_json({**plan.as_dict(), "dry_run": dry_run})
        return
    verb = "would delete" if dry_run else "deleted"
    for gen_id in plan.generations:
        click.echo(f"{verb} generation {gen_id}")
    for rel_path in plan.unstaged:
        click.echo(f"{'would drop' if dry_run else 'dropped'} {rel_path} from staging (more than "
                   f"{keep_instances or cfg.keep_instances} build(s) of its CPV)")
    for rel_path, nbytes in plan.files:
        click.echo(f"{verb} {rel_path} ({human_size(nbytes)})")
    terminal.ok(f"{verb} {len(plan.generations)} generation(s), {len(plan.files)} file(s): "
                f"{human_size(plan.bytes_freed)} ({plan.bytes_freed} bytes) freed")


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
    _new_key(obj, pkgdir, "init", "signing key", "public keys",
             "(copy it somewhere safe, off this host)")


def _new_key(obj: Any, pkgdir: str | None, how: str, what: str, published: str, advice: str = "") -> None:
    """Make a key with the keyring's ``init`` or ``create``, publish the public keys, say where."""
    from swarmctl.binhost.signing import SigningError

    keyring, directory = _key_context(obj, pkgdir)
    make = keyring.init if how == "init" else keyring.create
    try:
        key = make(obj.config.binhost.key_uid, obj.config.binhost.key_expiry_days)
        where = _published(keyring, directory)
    except SigningError as exc:
        raise click.ClickException(str(exc)) from None
    terminal.ok(f"{what} {_describe_key(key)}")
    click.echo(f"{published}: {where}")
    click.echo(f"revocation certificate: {keyring.revocation_path(key.fingerprint)}" + (f" {advice}" if advice else ""))


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
    _new_key(obj, pkgdir, "create", "new signing key", "public keys (old and new)")


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
