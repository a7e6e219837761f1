"""Tree revisions: which state of an ebuild repository a job was planned from, and bringing a
drone's repository to it.

A repository's revision is its git commit when it is a git checkout, else its metadata
timestamp (``metadata/timestamp.chk``, which ``emerge --sync`` over rsync writes, or
``metadata/timestamp``), else unknown (''). A job records the revision ``queue sync``
resolved it from; a drone builds it only at that revision (swarmctl.drone.daemon).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("swarmctl.tree")

#: A git commit as recorded (full or abbreviated hex): the only revision sync_tree checks out.
_COMMIT = re.compile(r"[0-9a-f]{7,64}", re.ASCII)
#: Seconds a git command may take.
GIT_TIMEOUT = 120.0


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        return subprocess.run([git, "-C", str(repo), *args], capture_output=True, text=True, check=False,
                              timeout=GIT_TIMEOUT, stdin=subprocess.DEVNULL,
                              env={"PATH": os.defpath, "HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0"})
    except (OSError, subprocess.TimeoutExpired):
        return None


def tree_revision(repo: Path | None) -> str:
    """The revision of the repository at ``repo`` ('' when unknown or no repository)."""
    if repo is None:
        return ""
    repo = Path(repo)
    if (repo / ".git").exists():
        done = _git(repo, "rev-parse", "HEAD")
        if done is not None and done.returncode == 0 and _COMMIT.fullmatch(done.stdout.strip()):
            return done.stdout.strip()
    for name in ("metadata/timestamp.chk", "metadata/timestamp"):
        try:
            text = (repo / name).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if text:
            return text.splitlines()[0][:100]
    return ""


def sync_tree(repo: Path, revision: str) -> bool:
    """Bring a git repository to ``revision`` (fetching it when it is not there yet); True when the
    repository is at it now. A non-git tree cannot be moved to a given revision: False."""
    if tree_revision(repo) == revision:
        return True
    if not _COMMIT.fullmatch(revision) or not (repo / ".git").exists():
        return False
    have = _git(repo, "cat-file", "-e", f"{revision}^{{commit}}")
    if have is None or have.returncode != 0:
        _git(repo, "fetch", "--quiet")
    done = _git(repo, "checkout", "--quiet", "--detach", revision)
    if done is None or done.returncode != 0:
        log.warning("cannot bring %s to %s: %s", repo, revision[:12], (done.stderr.strip() if done else "no git"))
        return False
    return tree_revision(repo) == revision
