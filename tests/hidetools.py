"""Hide tools from a process, and find what a run left behind: for the preflight and demo tests.

``path_without`` builds a directory of links to everything on PATH except the hidden tools:
a process given it as its PATH finds no zstd (say) while everything else works as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def path_without(tools: Iterable[str], dest: Path, path: str | None = None) -> str:
    """A PATH (one directory, ``dest``) offering every program on ``path`` except ``tools``."""
    hidden = set(tools)
    dest.mkdir(parents=True, exist_ok=True)
    for directory in (path or os.environ.get("PATH", os.defpath)).split(os.pathsep):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            link = dest / entry.name
            if entry.name in hidden or link.is_symlink() or link.exists():
                continue
            link.symlink_to(entry.path)
    return str(dest)


def processes_using(path: Path) -> list[str]:
    """Processes (other than this one) whose command line, environment or cwd mention ``path``."""
    needle = str(path).encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        proc = Path("/proc", pid)
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if (proc / "stat").read_text().split()[2] == "Z":
                continue  # a zombie holds nothing; its parent just has not reaped it yet
            mentions = needle in cmdline or needle in (proc / "environ").read_bytes()
            mentions = mentions or needle in os.readlink(proc / "cwd").encode()
        except OSError:
            continue
        if mentions:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {command[:200]}")
    return found
