"""What a build may see: an allowlisted environment, another user, no way into the drone.

A build runs upstream code (every ebuild phase, every build script), so it is treated
as hostile towards the drone that starts it. The drone holds the farm's secrets (its
token, the Redis password); a build must not be able to read them:

* its environment is built from an allowlist (:data:`ALLOWED`), never inherited whole,
  and no ``SWARM_*`` variable ever passes;
* a drone running as root runs the whole build as an unprivileged user (``drone.build_user``),
  which can read neither the drone's 0600 config file nor its memory or ``/proc/PID/environ``;
* the drone scrubs secrets from its own environment once read and makes itself non-dumpable,
  so a build running as the drone's own user cannot read its ``/proc/PID/environ`` or memory
  either (root keeps CAP_SYS_PTRACE, hence the build user above).
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

logger = logging.getLogger("swarmctl.build_env")

#: Variables a build inherits from the drone; everything else is dropped.
ALLOWED = (
    "PATH", "HOME", "TERM", "TZ", "USER", "LOGNAME", "TMPDIR", "LANG", "LC_ALL",
    "http_proxy", "https_proxy", "ftp_proxy", "no_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY",
)

#: Never passed to a build, whatever the configuration says.
FORBIDDEN_PREFIX = "SWARM_"

_PR_SET_DUMPABLE = 4


def build_environment(base: Mapping[str, str] | None = None, allow: Iterable[str] = ()) -> dict[str, str]:
    """The allowlisted part of ``base`` (default ``os.environ``).

    Args:
        base: The environment to pick from.
        allow: Extra names to pass (``drone.build_env``); ``SWARM_*`` names are never passed.

    Returns:
        A new dict holding only :data:`ALLOWED` and ``allow`` names present in ``base``.
    """
    source = os.environ if base is None else base
    names = [*ALLOWED, *allow]
    return {name: source[name] for name in names
            if name in source and not name.upper().startswith(FORBIDDEN_PREFIX)}


@dataclass(frozen=True)
class BuildUser:
    """The unprivileged user builds run as (when the drone runs as root)."""

    name: str
    uid: int
    gid: int
    home: str


def resolve_build_user(name: str | None) -> BuildUser | None:
    """The user a root drone builds as, or None to build as the drone's own user.

    None when the drone is not root (it cannot switch), when ``name`` is empty, or when no
    such user exists (logged: the builds then run as root and can read the drone's secrets).
    """
    if not name or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        logger.warning("drone.build_user %r does not exist: builds run as root and can read this "
                       "drone's config file and memory; create the user or set drone.build_user", name)
        return None
    if entry.pw_uid == 0:
        return None
    return BuildUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)


class UserArgs(TypedDict, total=False):
    """The ``subprocess.Popen`` keyword arguments :func:`as_user` gives."""

    user: int
    group: int
    extra_groups: list[int]


def as_user(user: BuildUser | None) -> UserArgs:
    """``subprocess.Popen`` arguments that run the child as ``user`` (no supplementary groups).

    Popen switches in the forked child before exec, without a preexec_fn (unsafe with threads).
    """
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


def hide_process() -> bool:
    """Make this process non-dumpable: same-user processes (its builds) cannot read its memory.

    ``PR_SET_DUMPABLE=0`` makes ``/proc/PID/{environ,mem,maps}`` and ptrace need
    CAP_SYS_PTRACE. Children are dumpable again after their exec. False where unsupported.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def scrub_environ(names: Iterable[str]) -> list[str]:
    """Remove ``names`` from this process's environment (once their values are in the config).

    Returns:
        The names that were present.
    """
    removed = [name for name in names if name in os.environ]
    for name in removed:
        del os.environ[name]
    return removed


def secret_file_problem(path: Path | None) -> str | None:
    """Why a file holding secrets is not private to its owner, or None when it is.

    A config or token file must be readable by its owner only (0600 or stricter).
    """
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return (f"{path} holds secrets but is mode {mode:04o} (readable beyond its owner); "
                f"chmod 600 {path}")
    if info.st_uid != os.geteuid():
        return f"{path} holds secrets but belongs to uid {info.st_uid}, not to this drone's user"
    return None
