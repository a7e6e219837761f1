"""A self-contained portage prefix: one per drone, per binhost, per test.

Portage installed from PyPI (``pip install portage``) runs on any Linux once it
is pointed at a prefix with ``PORTAGE_OVERRIDE_EPREFIX``: configuration, the
installed-package database (vdb), build directories, locks and the installed
files then all live below that one directory, so a drone never touches the
host's ``/etc/portage`` or ``/var/db/pkg``.

Layout written by :func:`make_prefix` (``E`` is the prefix root)::

    E/etc/portage/make.conf            one variable per line, see _make_conf()
    E/etc/portage/make.profile  ->     REPO/profiles/<profile>
    E/etc/portage/repos.conf/swarm.conf
    E/etc/portage/binrepos.conf        only when a binhost URL is given
    E/etc/portage/gnupg/               verification keyring (the binhost's KEYS.asc)
    E/share/portage/config/make.globals       -> VENV/share/portage/config/make.globals
    E/share/portage/config/binrepos.conf      -> VENV/share/portage/config/binrepos.conf
    E/share/portage/config/sets/portage.conf  -> VENV/share/portage/config/sets/portage.conf
    E/var/db/pkg  E/var/cache/{binpkgs,distfiles,edb}  E/var/tmp  E/var/lib/portage/world

About the two links into the venv: portage installed as a Python module looks for
its global defaults in ``$EPREFIX/share/portage/config`` and, with
``PORTAGE_OVERRIDE_EPREFIX`` set, that is inside the prefix, not the venv where the
wheel put them. Every prefix therefore gets a symlink to the venv's one copy.
Consequences, all deliberate:

* all prefixes made from one venv share byte-identical ``make.globals`` content,
  which is what makes a single shared file work; anything per prefix (PKGDIR,
  FEATURES, binhost) goes into that prefix's ``make.conf``, which overrides
  ``make.globals``;
* the shared file is never written through a link: links are (re)created with
  ``symlink`` to a temporary name plus ``rename``, which replaces the link itself
  atomically, so many prefixes can be created concurrently from many processes
  and re-running :func:`make_prefix` is idempotent;
* a portage upgrade in the venv is seen by every prefix at once (no stale copies).

Binary packages from the binhost are verified as on any Gentoo client: the linked
global ``binrepos.conf`` sets ``verify-signature = true`` and the prefix's own
binrepos.conf does not override it; ``BINPKG_GPG_VERIFY_GPG_HOME`` points at the
prefix's keyring, which trusts the binhost's published keys (see
:func:`swarmctl.binhost.signing.install_client_keyring`).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from swarmctl.atomicfile import write_atomic
from swarmctl.build_env import BuildUser, build_environment

logger = logging.getLogger("swarmctl.portage_env.prefix")

#: FEATURES that need a Gentoo host (sandbox, portage user, gpg, namespaces) are off.
FEATURES = (
    "-sandbox -usersandbox -userpriv -usersync -userfetch -network-sandbox -pid-sandbox "
    "-ipc-sandbox -binpkg-signing -gpg-keepalive -news -merge-wait"
)

#: The binrepos.conf section name a prefix uses for the swarm's binhost.
BINREPO_NAME = "swarm"

#: make.conf variables naming the user portage builds and installs files as.
_USER_VARS = ("PORTAGE_USERNAME", "PORTAGE_GRPNAME", "PORTAGE_INST_UID", "PORTAGE_INST_GID")
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_GLOBAL_CONFIG = Path("share/portage/config")


@dataclass(frozen=True)
class PortagePrefix:
    """A prefix made by :func:`make_prefix`; paths and the environment to run portage in.

    Attributes:
        root: The prefix directory (EPREFIX).
        repo: The ebuild repository this prefix builds from.
        repo_name: That repository's name (``profiles/repo_name``).
        venv: The Python environment whose portage runs here.
        binhost_url: Base URL of the binhost in binrepos.conf, if any.
    """

    root: Path
    repo: Path
    repo_name: str
    venv: Path
    binhost_url: str | None = None

    @property
    def pkgdir(self) -> Path:
        """Where ``--buildpkg`` writes packages and ``--getbinpkg`` caches them."""
        return self.root / "var/cache/binpkgs"

    @property
    def distdir(self) -> Path:
        """Where source tarballs are fetched to."""
        return self.root / "var/cache/distfiles"

    @property
    def tmpdir(self) -> Path:
        """PORTAGE_TMPDIR: build directories live in ``tmpdir/portage``."""
        return self.root / "var/tmp"

    @property
    def vdb(self) -> Path:
        """The installed-package database."""
        return self.root / "var/db/pkg"

    @property
    def config_dir(self) -> Path:
        """``E/etc/portage``."""
        return self.root / "etc/portage"

    @property
    def gnupg_home(self) -> Path:
        """The verification keyring (``BINPKG_GPG_VERIFY_GPG_HOME``)."""
        return self.root / "etc/portage/gnupg"

    @property
    def world_file(self) -> Path:
        """The prefix's own world file (``--oneshot`` builds never add to it)."""
        return self.root / "var/lib/portage/world"

    @property
    def bindir(self) -> Path:
        """The venv's bin directory holding emerge, ebuild and emaint."""
        return self.venv / "bin"

    def tool(self, name: str) -> str:
        """Absolute path of one of portage's launchers (``emerge``, ``emaint``...)."""
        return str(self.bindir / name)

    def env(self, base: Mapping[str, str] | None = None, allow: Iterable[str] = (),
            user: BuildUser | None = None) -> dict[str, str]:
        """The environment for portage subprocesses running in this prefix.

        Args:
            base: Environment to pick from (default: ``os.environ``). Only the allowlist
                of :func:`swarmctl.build_env.build_environment` passes: nothing that would
                point portage elsewhere (ROOT, PKGDIR, FEATURES...), and no secret.
            allow: Extra variable names to pass (``drone.build_env``).
            user: The user the build runs as: HOME, USER and LOGNAME become its own.

        Returns:
            A new dict: ``PORTAGE_OVERRIDE_EPREFIX`` set to the prefix, ``PATH`` with
            the venv's bin first, a C.UTF-8 locale so log messages are stable.
        """
        env = build_environment(base, allow)
        inherited = env.get("PATH") or _SYSTEM_PATH
        parts = [str(self.bindir)] + [p for p in inherited.split(os.pathsep) if p and p != str(self.bindir)]
        env["PATH"] = os.pathsep.join(parts)
        env["PORTAGE_OVERRIDE_EPREFIX"] = str(self.root)
        env["LC_ALL"] = "C.UTF-8"
        env["LANG"] = "C.UTF-8"
        if user is not None:
            env.update(HOME=str(self.tmpdir), USER=user.name, LOGNAME=user.name)
        env.setdefault("HOME", str(self.tmpdir))
        return env


def default_venv() -> Path:
    """The environment of the running interpreter (where portage is installed)."""
    return Path(sys.prefix)


def make_prefix(
    root: Path,
    repo: Path,
    binhost_url: str | None = None,
    *,
    venv: Path | None = None,
    profile: str = "default/linux/amd64",
    make_conf: Mapping[str, str] | None = None,
    pkgdir: Path | None = None,
    binhost_keys: str | None = None,
    verify_as_nobody: bool = False,
    seen_as: Path | None = None,
) -> PortagePrefix:
    """Create (or refresh) a self-contained portage prefix.

    Safe to call again on an existing prefix: configuration files are rewritten
    atomically and the vdb, packages and world file are kept.

    Args:
        root: Prefix directory; created if missing.
        repo: An ebuild repository with ``profiles/repo_name`` and the profile below
            ``profiles/<profile>`` (e.g. the bundled overlay, see
            :func:`swarmctl.overlay.install_overlay`).
        binhost_url: Base URL of a binhost for ``--getbinpkg``; written to
            ``binrepos.conf``. Signature verification stays at portage's default (on).
        venv: Environment with portage installed (default: the running one).
        profile: Profile path inside ``repo/profiles``.
        make_conf: Extra ``make.conf`` variables (e.g. ``{"MAKEOPTS": "-j2"}``); they
            override the defaults written here.
        pkgdir: Use this PKGDIR instead of ``root/var/cache/binpkgs``.
        binhost_keys: The binhost's ``KEYS.asc``: the prefix's verification keyring
            trusts exactly these keys (None leaves the keyring as it is).
        verify_as_nobody: Verify as portage does by default for root (gpg runs as
            nobody:nogroup; every directory above the prefix must let them in).
            False (drones): gpg runs as the prefix's user.
            seen_as: The path portage sees ``root`` at when it runs: ``/`` for a build root
                (a chroot, swarmctl.drone.build_root). The configuration names paths as seen
                from there; ``repo`` and ``venv`` must be bound at their own paths inside.

    Returns:
        The prefix.

    Raises:
        FileNotFoundError: ``repo`` has no ``profiles/repo_name``, the profile is
            missing, or the venv has no portage config to link.
        ValueError: ``binhost_url`` is not an http(s) or file URL.
    """
    root = Path(root).absolute()
    repo = Path(repo).absolute()
    venv = Path(venv if venv is not None else default_venv()).absolute()
    repo_name_file = repo / "profiles/repo_name"
    if not repo_name_file.is_file():
        raise FileNotFoundError(f"{repo} is not an ebuild repository (no profiles/repo_name)")
    repo_name = repo_name_file.read_text(encoding="utf-8").strip()
    profile_dir = repo / "profiles" / profile
    if not profile_dir.is_dir():
        raise FileNotFoundError(f"profile {profile} not found in {repo}/profiles")
    if binhost_url is not None and not binhost_url.startswith(("http://", "https://", "file://")):
        raise ValueError(f"binhost URL must be http://, https:// or file://, got {binhost_url!r}")

    prefix = PortagePrefix(root=root, repo=repo, repo_name=repo_name, venv=venv,
                           binhost_url=binhost_url)
    for directory in (
        prefix.config_dir / "repos.conf", prefix.vdb, prefix.distdir, prefix.tmpdir,
        root / "var/cache/edb", root / "var/lib/portage", root / _GLOBAL_CONFIG / "sets",
        pkgdir if pkgdir is not None else prefix.pkgdir,
    ):
        directory.mkdir(parents=True, exist_ok=True)

    link_global_config(root, venv)
    _replace_symlink(prefix.config_dir / "make.profile", profile_dir)
    if binhost_keys is not None:
        from swarmctl.binhost.signing import install_client_keyring

        install_client_keyring(prefix.gnupg_home, binhost_keys, nobody_readable=verify_as_nobody)
    inner = prefix if seen_as is None else PortagePrefix(root=Path(seen_as), repo=repo, repo_name=repo_name,
                                                         venv=venv, binhost_url=binhost_url)
    settings = _make_conf(inner, pkgdir)
    if not verify_as_nobody:
        settings.update(GPG_VERIFY_USER_DROP="", GPG_VERIFY_GROUP_DROP="")
    settings.update(make_conf or {})
    _write_if_changed(prefix.config_dir / "make.conf", "".join(
        f'{key}="{_quote(value)}"\n' for key, value in settings.items()))
    _write_if_changed(prefix.config_dir / "repos.conf/swarm.conf",
                  f"[DEFAULT]\nmain-repo = {repo_name}\n\n[{repo_name}]\nlocation = {repo}\n")
    binrepos = prefix.config_dir / "binrepos.conf"
    if binhost_url is None:
        with contextlib.suppress(FileNotFoundError):
            binrepos.unlink()
    else:
        _write_if_changed(binrepos, binrepos_conf(binhost_url))
    counter = root / "var/cache/edb/counter"
    if not counter.exists():
        _write_if_changed(counter, "100")
    if not prefix.world_file.exists():
        _write_if_changed(prefix.world_file, "")
    logger.debug("portage prefix ready at %s (repo %s)", root, repo_name)
    return prefix


def load_prefix(root: Path, venv: Path | None = None) -> PortagePrefix:
    """Describe an existing prefix made by :func:`make_prefix` (nothing is written).

    Raises:
        FileNotFoundError: ``root`` is not such a prefix.
    """
    root = Path(root).absolute()
    conf = root / "etc/portage/repos.conf/swarm.conf"
    try:
        lines = conf.read_text(encoding="utf-8").splitlines()
    except OSError:
        raise FileNotFoundError(f"{root} is not a build-swarm portage prefix (no {conf})") from None
    repo = next((Path(line.split("=", 1)[1].strip()) for line in lines
                 if line.strip().startswith("location")), None)
    if repo is None:
        raise FileNotFoundError(f"{conf} names no repository location")
    binhost_url = None
    with contextlib.suppress(OSError):
        for line in (root / "etc/portage/binrepos.conf").read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "sync-uri":
                binhost_url = value.strip()
    repo_name = (repo / "profiles/repo_name").read_text(encoding="utf-8").strip()
    if venv is None:
        venv = linked_venv(root) or default_venv()
    return PortagePrefix(root=root, repo=repo, repo_name=repo_name, venv=Path(venv).absolute(),
                         binhost_url=binhost_url)


def linked_venv(root: Path) -> Path | None:
    """The venv a prefix was made with (its make.globals link points into it), if any."""
    try:
        target = Path(os.readlink(Path(root) / _GLOBAL_CONFIG / "make.globals"))
    except OSError:
        return None
    venv = target.parents[len(_GLOBAL_CONFIG.parts)]
    return venv if (venv / "bin").is_dir() else None


def hand_over(prefix: PortagePrefix, user: BuildUser) -> None:
    """Let ``user`` run portage in ``prefix`` on its own: it owns the tree, portage builds as it.

    The prefix's make.conf names the user (PORTAGE_USERNAME, PORTAGE_INST_UID...) and every
    file below the prefix is given to it (links are not followed: make.globals stays the venv's).
    Idempotent.
    """
    group = grp.getgrgid(user.gid).gr_name
    values = {"PORTAGE_USERNAME": user.name, "PORTAGE_GRPNAME": group,
              "PORTAGE_INST_UID": str(user.uid), "PORTAGE_INST_GID": str(user.gid)}
    make_conf = prefix.config_dir / "make.conf"
    lines = [line for line in make_conf.read_text(encoding="utf-8").splitlines()
             if line.split("=", 1)[0].strip() not in _USER_VARS]
    lines += [f'{key}="{_quote(value)}"' for key, value in values.items()]
    _write_if_changed(make_conf, "\n".join(lines) + "\n")
    os.chown(prefix.root, user.uid, user.gid)
    for directory, dirs, files in os.walk(prefix.root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_uid != user.uid:
                    os.chown(path, user.uid, user.gid, follow_symlinks=False)


def binrepos_conf(url: str) -> str:
    """The binrepos.conf text for the swarm binhost at ``url``.

    It does not mention ``verify-signature``: portage's default (on, from the
    global binrepos.conf) applies, and the binhost signs every package.
    """
    return f"[{BINREPO_NAME}]\npriority = 10\nsync-uri = {url.rstrip('/')}\n"


def link_global_config(root: Path, venv: Path) -> None:
    """Point ``root``'s global config (make.globals, sets) at the venv's copies.

    Idempotent and race-free: an existing correct link is left alone, a wrong one is
    replaced atomically; the venv's files are never opened for writing.

    Raises:
        FileNotFoundError: The venv has no portage global config.
    """
    source = venv / _GLOBAL_CONFIG
    for relative in ("make.globals", "binrepos.conf", "sets/portage.conf"):
        target = source / relative
        if not target.is_file():
            raise FileNotFoundError(f"{target} missing: is portage installed in {venv}?")
        _replace_symlink(root / _GLOBAL_CONFIG / relative, target)


def _make_conf(prefix: PortagePrefix, pkgdir: Path | None) -> dict[str, str]:
    return {
        "FEATURES": FEATURES,
        "BINPKG_FORMAT": "gpkg",
        "BINPKG_COMPRESS": "zstd",
        "PKGDIR": str(pkgdir if pkgdir is not None else prefix.pkgdir),
        "DISTDIR": str(prefix.distdir),
        "PORTAGE_TMPDIR": str(prefix.tmpdir),
        "PORTAGE_USERNAME": "root",
        "PORTAGE_GRPNAME": "root",
        "PORTAGE_INST_UID": "0",
        "PORTAGE_INST_GID": "0",
        "PORTAGE_TRUST_HELPER": "",
        "BINPKG_GPG_VERIFY_GPG_HOME": str(prefix.gnupg_home),
        "ACCEPT_LICENSE": "*",
        "CLEAN_DELAY": "0",
        "EMERGE_WARNING_DELAY": "0",
    }


def _quote(value: str) -> str:
    if any(c in value for c in '"\\$`\n'):
        raise ValueError(f"make.conf value must not contain quotes, $, ` or newlines: {value!r}")
    return value


def _replace_symlink(link: Path, target: Path) -> None:
    with contextlib.suppress(OSError):
        if os.readlink(link) == str(target):
            return
    link.parent.mkdir(parents=True, exist_ok=True)
    temp = link.with_name(f".{link.name}.{os.getpid()}.{os.urandom(4).hex()}")
    os.symlink(target, temp)
    try:
        os.replace(temp, link)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _write_if_changed(path: Path, text: str) -> None:
    """Rewrite a config file only when its content changes (keeps reruns idempotent)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return
    write_atomic(path, text, fsync=False)


def main(args: Sequence[str] | None = None) -> int:
    """``python -m swarmctl.portage_env.prefix ROOT``: make (or refresh) a prefix from the shell.

    What the swarm_client role runs on a host without a Gentoo system of its own: a client
    prefix whose portage verifies signatures as by default (gpg as nobody, keyring from the role).
    """
    import argparse

    from swarmctl.overlay import overlay_source

    parser = argparse.ArgumentParser(prog="python -m swarmctl.portage_env.prefix",
                                     description="Make a self-contained portage prefix (idempotent).")
    parser.add_argument("root", type=Path, help="the prefix directory (EPREFIX)")
    parser.add_argument("--repo", type=Path, help="ebuild repository (default: the bundled sample overlay)")
    parser.add_argument("--profile", default="default/linux/amd64", help="profile inside REPO/profiles")
    parser.add_argument("--binhost", help="binhost base URL for binrepos.conf (default: none written)")
    parser.add_argument("--verify-as-nobody", action="store_true",
                        help="verify binary package signatures as portage does for root (gpg as nobody)")
    ns = parser.parse_args(args)
    try:
        prefix = make_prefix(ns.root, ns.repo or overlay_source(), ns.binhost, profile=ns.profile,
                             verify_as_nobody=ns.verify_as_nobody)
    except (OSError, ValueError) as exc:
        print(f"prefix {ns.root}: {exc}", file=sys.stderr)
        return 1
    print(prefix.root)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
