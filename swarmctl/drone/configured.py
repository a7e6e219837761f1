"""The builder a drone's configuration names (drone.builder), ready to build.

Shared by the daemon (``swarmctl drone run``) and ``swarmctl doctor``'s preflight check on
a drone's host, so both judge the very builder the daemon would use.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from swarmctl import build_env
from swarmctl.config import Config
from swarmctl.drone.build_root import BuildRoot
from swarmctl.drone.builders import Builder, CommandBuilder, Watchdog
from swarmctl.exceptions import ConfigError
from swarmctl.targets import DEFAULT_TARGET, Target, area_url, install_package_files, make_conf_of

log = logging.getLogger("swarmctl.drone")


def _staging(config: Config) -> str | None:
    """Drones build against the binhost's staging index (what the swarm built, promoted or not)."""
    from swarmctl.binhost.generations import staging_url

    return staging_url(config.binhost.url) if config.binhost.url else None


def builders_from_config(config: Config, targets: list[str]) -> dict[str, Builder]:
    """One builder per target this drone declares: the target's own prefix when it names one
    (built with its profile, make.conf and package.* files), else the drone's."""
    builders: dict[str, Builder] = {}
    for name in targets:
        target = config.targets[name]
        chosen = config.with_overrides(drone__prefix=target.prefix) if target.prefix else config
        builders[name] = builder_from_config(chosen, target)
    return builders


def builder_from_config(config: Config, target: Target | None = None) -> Builder:
    """The configured builder (drone.builder); the daemon hooks into its watchdog. A portage
    builder whose prefix is made from drone.repo gets ``target``'s configuration."""
    cfg = config.drone
    watchdog = Watchdog(idle=cfg.hung_idle_seconds, kill=cfg.hung_kill_seconds)
    if cfg.builder == "command":
        return CommandBuilder(cfg.command, watchdog, allow_env=cfg.build_env,
                              target=target.name if target is not None else DEFAULT_TARGET)
    if cfg.builder != "portage":
        raise ConfigError(f"drone.builder: unknown builder {cfg.builder!r} (command or portage)")
    from swarmctl.drone.portage_builder import PortageBuilder
    from swarmctl.portage_env.prefix import hand_over, load_prefix, make_prefix

    min_free = cfg.preflight_min_free_mb * 1024 * 1024
    if cfg.build_root:
        if cfg.prefix:
            raise ConfigError("drone.build_root and drone.prefix: set one of them")
        root = BuildRoot(Path(cfg.build_root), tuple(Path(b) for b in cfg.build_root_binds))
        root.check()
        keys = binhost_keys(config)
        if keys is not None:  # the root's portage verifies binary dependencies (gpg as nobody)
            from swarmctl.binhost.signing import install_client_keyring

            install_client_keyring(root.path / "etc/portage/gnupg", keys, nobody_readable=True)
        log.info("builds run in the build root %s", root.path)
        return PortageBuilder(None, _staging(config), extra_args=cfg.emerge_args, watchdog=watchdog,
                              allow_env=cfg.build_env, min_free_bytes=min_free, build_root=root)
    if not cfg.prefix:
        if not cfg.live_root:
            raise ConfigError("drone.builder portage needs drone.build_root or drone.prefix: builds would merge "
                              "into this host's live system (drone.live_root: true allows that)")
        if os.geteuid() == 0:
            log.info("builds use the host's portage as root: its FEATURES=userpriv decides who compiles")
        log.warning("drone.live_root: builds merge into this host's live system")
        return PortageBuilder(None, _staging(config), extra_args=cfg.emerge_args, watchdog=watchdog,
                              allow_env=cfg.build_env, min_free_bytes=min_free)
    keys = binhost_keys(config)
    url = config.binhost.url
    shaped: dict[str, object] = {}
    if target is not None:
        url = area_url(url, target.name, config.targets) if url else url
        shaped = {"make_conf": make_conf_of(target)} | ({"profile": target.profile} if target.profile else {})
    if url:
        from swarmctl.binhost.generations import staging_url

        url = staging_url(url)  # drones build against the area's staging index (promoted or not)
    try:
        prefix = load_prefix(Path(cfg.prefix))
    except FileNotFoundError:
        if not cfg.repo:
            raise ConfigError(f"drone.prefix: {cfg.prefix} is not a portage prefix yet; "
                              "set drone.repo to create it from a repository") from None
        prefix = make_prefix(Path(cfg.prefix), Path(cfg.repo), url, binhost_keys=keys, **shaped)  # type: ignore[arg-type]
    else:
        if cfg.repo:  # refresh the configuration (binrepos.conf, keyring) of an existing prefix
            prefix = make_prefix(prefix.root, Path(cfg.repo), url, binhost_keys=keys, **shaped)  # type: ignore[arg-type]
        elif keys is not None:
            from swarmctl.binhost.signing import install_client_keyring

            install_client_keyring(prefix.gnupg_home, keys, nobody_readable=False)
    if target is not None and cfg.repo:
        install_package_files(prefix.config_dir, target)
    user = build_env.resolve_build_user(cfg.build_user)
    if user is not None:
        _check_build_user(user, [("-x", prefix.root.parent, "reach"),
                                 ("-r", prefix.repo / "profiles/repo_name", "read"),
                                 ("-x", prefix.bindir / "python3", "run"),
                                 ("-x", Path(prefix.tool("emerge")), "run")])
        hand_over(prefix, user)
        _check_build_user(user, [("-w", prefix.root, "write")])
        log.info("builds run as %s (uid %d) in %s", user.name, user.uid, prefix.root)
    return PortageBuilder(prefix, extra_args=cfg.emerge_args, watchdog=watchdog, allow_env=cfg.build_env,
                          user=user, min_free_bytes=min_free)


def _check_build_user(user: build_env.BuildUser, checks: list[tuple[str, Path, str]]) -> None:
    """Fail at start, in one line, when the build user cannot use the prefix, repository or portage."""
    test = shutil.which("test") or "/usr/bin/test"
    for flag, path, need in checks:
        done = subprocess.run([test, flag, str(path)], check=False, cwd="/", env={"PATH": os.defpath},
                              **build_env.as_user(user))
        if done.returncode != 0:
            raise ConfigError(f"drone.build_user: {user.name} cannot {need} {path} (a parent directory may be "
                              "private); make it reachable, or set drone.build_user to '' to build as root")


def binhost_keys(config: Config) -> str | None:
    """The public keys binary dependencies must be signed with (binhost.keys_file, else
    fetched from the binhost: trust on first use, logged); None when neither is there."""
    import urllib.request

    cfg = config.binhost
    if cfg.keys_file:
        try:
            return Path(cfg.keys_file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"binhost.keys_file: cannot read {cfg.keys_file}: {exc}") from None
    if not cfg.url:
        return None
    url = f"{cfg.url.rstrip('/')}/KEYS.asc"
    try:
        with urllib.request.urlopen(url, timeout=cfg.read_timeout) as reply:
            text: str = reply.read(1024 * 1024).decode("ascii")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.warning("no binhost keys (%s: %s): binary dependencies will fail verification", url, exc)
        return None
    log.warning("trusting the binhost keys fetched from %s (set binhost.keys_file to pin them)", url)
    return text
