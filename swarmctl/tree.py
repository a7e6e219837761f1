"""Tree revisions: which state of an ebuild repository a job was planned from, and bringing a
drone's repository to it.

A repository's revision is its git commit when it is a git checkout, else its metadata
timestamp (``metadata/timestamp.chk``, which ``emerge --sync`` over rsync writes, or
``metadata/timestamp``), else unknown (''). A job records the revision ``queue sync``
resolved it from; a drone builds it only at that revision (swarmctl.drone.daemon), its
concurrent builds sharing the tree through a :class:`TreeGate`. A sync at a new revision retires
the waiting jobs whose ebuild the new tree lacks (swarmctl.queue.Queue.retree).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from swarmctl.atoms import split_cpv

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
    """The revision of the repository at ``repo`` ('' when unknown or no repository).

    A git tree's commit is cached per repository, keyed on the stat of the files that name it
    (see :func:`_head_signature`): a drone's heartbeat asks every couple of seconds, and an
    unchanged tree then costs a few stats instead of a ``git rev-parse``, while a commit, checkout
    or sync done from outside changes the key and is seen at the next call.
    """
    if repo is None:
        return ""
    repo = Path(repo)
    if (repo / ".git").exists():
        revision = _git_revision(repo)
        if revision:
            return revision
    for name in ("metadata/timestamp.chk", "metadata/timestamp"):
        try:
            text = (repo / name).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if text:
            return text.splitlines()[0][:100]
    return ""


#: repository -> (the signature its commit was read under, the commit).
_revisions: dict[Path, tuple[tuple[object, ...], str]] = {}
_revisions_lock = threading.Lock()


def _git_revision(repo: Path) -> str:
    """The commit checked out at ``repo`` ('' when git cannot tell), cached on its HEAD signature."""
    # Taken before git runs: a change racing the rev-parse leaves a signature that no longer
    # matches, so the next call reads again (never a stale commit under a current key).
    signature = _head_signature(repo)
    if signature is not None:
        with _revisions_lock:
            cached = _revisions.get(repo)
        if cached is not None and cached[0] == signature:
            return cached[1]
    done = _git(repo, "rev-parse", "HEAD")
    revision = done.stdout.strip() if done is not None and done.returncode == 0 else ""
    if not _COMMIT.fullmatch(revision):
        return ""
    if signature is not None:
        with _revisions_lock:
            _revisions[repo] = (signature, revision)
    return revision


def _stat(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _head_signature(repo: Path) -> tuple[object, ...] | None:
    """What changes whenever ``HEAD`` resolves to another commit: HEAD's text and the stat of
    HEAD, of the ref it names (loose, in a worktree's own and the common git directory) and of
    ``packed-refs``. Git replaces these files by rename, so a change gives a new inode and
    mtime. None when the git directory cannot be read this way (then git is always asked)."""
    gitdir = repo / ".git"
    if gitdir.is_file():  # a linked worktree or submodule: "gitdir: <path>"
        try:
            text = gitdir.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        if not text.startswith("gitdir:"):
            return None
        gitdir = (repo / text.removeprefix("gitdir:").strip()).resolve()
    try:
        head = (gitdir / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    try:
        common = gitdir / (gitdir / "commondir").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        common = gitdir
    except OSError:
        return None
    signature: list[object] = [head, _stat(gitdir / "HEAD"), _stat(common / "packed-refs")]
    if head.startswith("ref:"):
        ref = head.removeprefix("ref:").strip()
        signature += [_stat(gitdir / ref), _stat(common / ref)]
    return tuple(signature)



def ebuild_present(repo: Path | None, cpv: str) -> bool:
    """Does the repository at ``repo`` have an ebuild of ``cpv`` (``category/PF``)?"""
    if repo is None:
        return False
    category, pn, pv = split_cpv(cpv)
    return (Path(repo) / category / pn / f"{pn}-{pv}.ebuild").is_file()

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


class TreeGate:
    """One drone's repositories, shared by its concurrent builds (drone.slots).

    A repository is moved to another revision only under the gate's lock (one checkout at a
    time per drone) and only while none of this drone's builds is using it: a build holds its
    repository at its revision from the check until it ends. A build whose job needs another
    revision than the running builds' is not made to wait (it could wait hours behind a long
    build while holding a job another drone could take): its job goes back as tree-mismatch,
    to a drone at that revision or to this one once its builds are done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[Path, int] = {}

    @contextlib.contextmanager
    def at(self, repo: Path, revision: str) -> Iterator[str]:
        """Hold ``repo`` at ``revision`` for one build: yields '' when it is there (brought there
        when no other build uses it), else why it is not (the build must not run)."""
        with self._lock:
            mine = tree_revision(repo)
            problem = ""
            if mine != revision:
                if self._users.get(repo):
                    problem = (f"is at {mine[:40] or 'an unknown revision'}, which another build of this "
                               "drone is using")
                elif not sync_tree(repo, revision):
                    problem = f"is at {mine[:40] or 'an unknown revision'} and cannot be brought to it"
            if not problem:
                self._users[repo] = self._users.get(repo, 0) + 1
        if problem:
            yield problem
            return
        try:
            yield ""
        finally:
            with self._lock:
                self._users[repo] -= 1
