"""Low-level helpers of the test bed: ip(8) calls, process lookups, waiting.

Everything here is private to :mod:`tests.testbed`; the public API is :class:`TestBed`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def ip(*args: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` (in ``netns`` when given)."""
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def ip_batch(lines: Iterable[str], netns: str | None = None, force: bool = False) -> None:
    """Run many ip commands in one process (``ip -batch -``); raises on the first failure.

    Args:
        lines: Commands without the leading ``ip``.
        netns: Run them inside this network namespace.
        force: Go on after errors (used by cleanup, where some objects may be gone).
    """
    argv = ["ip"] + (["-n", netns] if netns else []) + (["-force"] if force else []) + ["-batch", "-"]
    text = "".join(f"{line}\n" for line in lines)
    proc = subprocess.run(argv, input=text, capture_output=True, text=True)
    if proc.returncode and not force:
        raise RuntimeError(f"ip -batch failed ({proc.returncode}): {proc.stderr.strip()}\n{text}")


def link_names() -> list[str]:
    """Names of the links in the root network namespace."""
    out = ip("-o", "link", "show").stdout
    names = []
    for line in out.splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0]
        names.append(name)
    return names


def netns_names() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def address_owner(address: str) -> str | None:
    """The link in the root namespace that holds ``address``, or None."""
    out = ip("-o", "-4", "addr", "show").stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3].split("/", 1)[0] == address:
            return fields[1]
    return None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (empty when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def pids_in_netns(netns: str) -> list[int]:
    """Every process whose network namespace is the named one."""
    try:
        target = os.stat(NETNS_DIR / netns)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def pids_with_cmdline(fragment: str) -> list[int]:
    """Processes whose command line contains ``fragment`` (e.g. a test bed's temp dir)."""
    me = os.getpid()
    found = []
    needle = fragment.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


def is_live(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def kill_all(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to each pid, ignoring the ones already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to a process group, ignoring a group already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_dead(pids: Sequence[int], timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` is alive (zombies count as dead); return the stragglers."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if is_live(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if is_live(p)]
    return left


def wait_gone(pids: Sequence[int], timeout: float = 5.0) -> list[int]:
    """Wait until ``pids`` have left the process table (reaped); return the ones still there."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if Path(f"/proc/{p}").exists()]
        if left:
            time.sleep(0.05)
    return left


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def mounts_under(path: str) -> list[str]:
    """Mount points in the root mount namespace at or below ``path``, deepest first."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        mnt = line.split()[4]
        if mnt == path or mnt.startswith(path.rstrip("/") + "/"):
            found.append(mnt)
    return sorted(found, key=len, reverse=True)
