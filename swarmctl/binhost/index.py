"""The binhost's ``Packages`` index: read, update one entry, write atomically, verify.

The format is portage's: a header block (``KEY: value`` lines), a blank line, then
one block per package file separated by blank lines. Clients (``emerge
--getbinpkg``) refuse an index whose entries lack ``SIZE``, ``MD5`` and ``SHA1``;
the swarm adds ``SHA256`` (portage ignores keys it does not know).

Publishing is incremental: :class:`IndexStore` keeps the parsed index in memory
and re-parses ``Packages`` only when the file changed underneath it, so publishing
one package hashes one package file, whatever the size of the binhost. A full
rebuild (:func:`reindex`) and a full check (:func:`verify`) read every file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from swarmctl.atomicfile import write_atomic
from swarmctl.binhost.gpkg import GPKG_SUFFIX, GpkgError, GpkgInfo, inspect_gpkg
from swarmctl.exceptions import SwarmError
from swarmctl.progress import ProgressFn, no_progress, tick

if TYPE_CHECKING:
    from swarmctl.binhost.policy import ContentPolicy

logger = logging.getLogger("swarmctl.binhost.index")

INDEX_NAME = "Packages"
#: Lock file serializing every writer of one PKGDIR's index (publish, reindex).
LOCK_NAME = ".swarm-index.lock"
#: Keys every package entry must have for portage clients to accept the index.
REQUIRED_KEYS = ("CPV", "PATH", "SIZE", "MD5", "SHA1")
INDEX_VERSION = "0"

# gpkg metadata name -> index key (portage translates these three).
_TRANSLATED = {"DESCRIPTION": "DESC", "repository": "REPO"}
_COPIED = (
    "BDEPEND", "BUILD_ID", "BUILD_TIME", "CHOST", "DEFINED_PHASES", "DEPEND", "DESCRIPTION",
    "EAPI", "IDEPEND", "IUSE", "KEYWORDS", "LICENSE", "PDEPEND", "PROPERTIES", "PROVIDES",
    "RDEPEND", "repository", "REQUIRES", "RESTRICT", "SLOT", "USE",
)
# Keys portage stores with USE conditionals already evaluated.
_USE_EVALUATED = ("BDEPEND", "DEPEND", "IDEPEND", "LICENSE", "RDEPEND", "PDEPEND", "PROPERTIES",
                  "RESTRICT")
_HASH_BLOCK = 1024 * 1024


class BinhostIndexError(SwarmError):
    """The index cannot be read, rebuilt or written."""


@dataclass(frozen=True)
class FileDigests:
    """Size and the checksums the index carries, computed in one pass over a file."""

    size: int
    md5: str
    sha1: str
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileDigests:
        """Hash ``path`` in 1 MiB blocks."""
        md5, sha1, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha1(usedforsecurity=False), \
            hashlib.sha256()
        size = 0
        with open(path, "rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                md5.update(block)
                sha1.update(block)
                sha256.update(block)
                size += len(block)
        return cls(size=size, md5=md5.hexdigest(), sha1=sha1.hexdigest(), sha256=sha256.hexdigest())


@dataclass
class PackagesIndex:
    """A parsed ``Packages`` file: header plus entries keyed by their ``PATH``."""

    header: dict[str, str] = field(default_factory=dict)
    entries: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> PackagesIndex:
        """Parse index text (entries without CPV or PATH are dropped)."""
        blocks = _blocks(text)
        index = cls(header=next(blocks, {}))
        for block in blocks:
            if block.get("CPV") and block.get("PATH"):
                index.entries[block["PATH"]] = block
        return index

    @classmethod
    def read(cls, path: Path) -> PackagesIndex:
        """Read an index file; a missing file is an empty index."""
        try:
            return cls.parse(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError) as exc:
            raise BinhostIndexError(f"cannot read {path}: {exc}") from None

    def render(self) -> str:
        """The index as text: header (with fresh PACKAGES and TIMESTAMP), then entries."""
        header = dict(self.header)
        header["PACKAGES"] = str(len(self.entries))
        header["TIMESTAMP"] = str(int(time.time()))
        header.setdefault("VERSION", INDEX_VERSION)
        chunks = [_render_block(header)]
        for path in sorted(self.entries, key=lambda p: _sort_key(self.entries[p])):
            chunks.append(_render_block(self.entries[path]))
        return "".join(chunks)

    def write(self, path: Path) -> None:
        """Write atomically: temp file in the same directory, fsync, rename.

        A stale ``Packages.gz`` next to it is removed so no client ever reads an
        older compressed copy.
        """
        path = Path(path)
        write_atomic(path, self.render())
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + ".gz").unlink()

    def add(self, entry: dict[str, str]) -> None:
        """Insert or replace the entry for ``entry["PATH"]``."""
        missing = [key for key in REQUIRED_KEYS if not entry.get(key)]
        if missing:
            raise BinhostIndexError(f"index entry lacks {', '.join(missing)}")
        self.entries[entry["PATH"]] = dict(entry)
        if entry.get("CHOST"):
            self.header.setdefault("CHOST", entry["CHOST"])

    def remove(self, rel_path: str) -> bool:
        """Drop the entry for a file; True if there was one."""
        return self.entries.pop(rel_path, None) is not None

    def build_ids(self, cpv: str) -> set[int]:
        """BUILD_IDs already published for ``cpv``."""
        ids = set()
        for entry in self.entries.values():
            if entry.get("CPV") == cpv and entry.get("BUILD_ID", "").isdigit():
                ids.add(int(entry["BUILD_ID"]))
        return ids

    def cpvs(self) -> set[str]:
        """Every CPV with at least one published package."""
        return {entry["CPV"] for entry in self.entries.values()}


def make_entry(info: GpkgInfo, rel_path: str, digests: FileDigests, mtime: int) -> dict[str, str]:
    """The index entry for a verified package file at ``PKGDIR/rel_path``."""
    meta = dict(info.metadata)
    use = frozenset(meta.get("USE", "").split())
    for key in _USE_EVALUATED:
        if meta.get(key):
            meta[key] = _evaluate_use(meta[key], use, key.endswith("DEPEND"))
    entry = {"CPV": info.cpv}
    for key in _COPIED:
        value = " ".join(meta.get(key, "").split())
        if value:
            entry[_TRANSLATED.get(key, key)] = value
    if info.build_id is not None:
        entry["BUILD_ID"] = str(info.build_id)
    entry.update({
        "PATH": rel_path, "SIZE": str(digests.size), "MD5": digests.md5, "SHA1": digests.sha1,
        "SHA256": digests.sha256, "MTIME": str(mtime),
    })
    return entry


class IndexStore:
    """One PKGDIR's index with an in-memory cache and an exclusive writer lock.

    ``with store.locked() as index: ...; store.save(index)`` is the only way the
    swarm changes an index. The lock is a ``flock`` on ``PKGDIR/.swarm-index.lock``
    (serializes processes) plus a thread lock (serializes a threaded server).
    """

    def __init__(self, pkgdir: Path) -> None:
        self.pkgdir = Path(pkgdir)
        self.path = self.pkgdir / INDEX_NAME
        self._thread_lock = threading.Lock()
        self._cached: PackagesIndex | None = None
        self._cached_stat: tuple[int, int, int] | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[PackagesIndex]:
        """Hold the writer lock; yields a private copy of the current index."""
        with self._thread_lock, _flock(self.pkgdir / LOCK_NAME):
            current = self._load()
            yield PackagesIndex(header=dict(current.header),
                                entries=current.entries.copy())

    def save(self, index: PackagesIndex) -> None:
        """Write ``index`` atomically (call inside :meth:`locked`) and cache it."""
        index.write(self.path)
        self._cached = index
        self._cached_stat = _stat_key(self.path)

    def snapshot(self) -> PackagesIndex:
        """The current index (read-only use; reparsed only if the file changed)."""
        with self._thread_lock:
            return self._load()

    def _load(self) -> PackagesIndex:
        key = _stat_key(self.path)
        if self._cached is None or key != self._cached_stat:
            self._cached = PackagesIndex.read(self.path)
            self._cached_stat = key
        return self._cached


@dataclass
class VerifyReport:
    """Result of :func:`verify`: an empty ``problems`` list means all is well."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(pkgdir: Path, *, check_manifests: bool = False, policy: ContentPolicy | None = None,
           progress: ProgressFn = no_progress) -> VerifyReport:
    """Check every index entry against its file, and every file against the index.

    Args:
        pkgdir: The binhost directory.
        check_manifests: Also verify each gpkg's internal Manifest and apply the content
            policy, as a publish does (slower).
        policy: The content policy (default: the documented defaults).
        progress: Hears how many entries of how many are checked (swarmctl.progress).

    Returns:
        One problem per line: missing file, size or checksum mismatch, entry without
        required keys, package file not in the index, bad gpkg.
    """
    pkgdir = Path(pkgdir)
    report = VerifyReport()
    index_path = pkgdir / INDEX_NAME
    if not index_path.is_file():
        report.problems.append(f"{index_path}: no index")
        return report
    index = PackagesIndex.read(index_path)
    stage = "verifying with manifests" if check_manifests else "verifying"
    for rel_path, entry in sorted(index.entries.items()):
        report.checked += 1
        tick(progress, stage, report.checked, len(index.entries))
        missing = [key for key in REQUIRED_KEYS if not entry.get(key)]
        if missing:
            report.problems.append(f"{rel_path}: entry lacks {', '.join(missing)}")
            continue
        file_path = _inside(pkgdir, rel_path)
        if file_path is None:
            report.problems.append(f"{rel_path}: PATH escapes the binhost directory")
            continue
        try:
            digests = FileDigests.of(file_path)
        except OSError as exc:
            report.problems.append(f"{rel_path}: {exc.strerror or exc}")
            continue
        for key, actual in (("SIZE", str(digests.size)), ("MD5", digests.md5), ("SHA1", digests.sha1),
                            ("SHA256", digests.sha256)):
            if key in entry and entry[key].lower() != actual:
                report.problems.append(f"{rel_path}: {key} mismatch (index {entry[key]}, file {actual})")
        if check_manifests:
            report.problems += _manifest_problems(file_path, rel_path, entry, policy)
    for file_path in sorted(_package_files(pkgdir)):
        rel_path = file_path.relative_to(pkgdir).as_posix()
        if rel_path not in index.entries:
            report.problems.append(f"{rel_path}: package file not in the index")
    return report


def _manifest_problems(file_path: Path, rel_path: str, entry: dict[str, str],
                       policy: ContentPolicy | None) -> list[str]:
    """What ``verify --manifests`` finds in one file: Manifest, identity, content policy."""
    from swarmctl.binhost.policy import ContentPolicy

    policy = policy or ContentPolicy.default()
    try:
        info = inspect_gpkg(file_path, limits=policy.limits)
        if info.cpv != entry["CPV"]:
            return [f"{rel_path}: file is {info.cpv}, index says {entry['CPV']}"]
        policy.check(file_path, info)
    except GpkgError as exc:
        return [f"{rel_path}: {exc}"]
    return []


def reindex(pkgdir: Path, *, prefix_root: Path | None = None, full: bool = True,
            timeout: float = 3600.0, progress: ProgressFn = no_progress) -> int:
    """Rebuild ``PKGDIR/Packages`` with portage's ``emaint binhost --fix``, then add SHA256.

    Args:
        pkgdir: The binhost directory.
        prefix_root: Portage prefix to run emaint in; default: a temporary one made
            from the bundled overlay (only its profile's CHOST reaches the header).
        full: Ignore the existing index (every file is re-read and re-hashed);
            otherwise emaint only refreshes entries whose size or mtime changed.
        timeout: Seconds emaint may take.
        progress: Hears when emaint runs (no total) and how many files of how many are hashed.

    Returns:
        Number of packages in the new index.

    Raises:
        BinhostIndexError: emaint failed (the previous index is left in place).
    """
    from swarmctl.portage_env.prefix import load_prefix, make_prefix  # portage tooling only here

    pkgdir = Path(pkgdir).absolute()
    store = IndexStore(pkgdir)
    with contextlib.ExitStack() as stack:
        if prefix_root is None:
            from swarmctl.overlay import install_overlay

            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-reindex-")))
            prefix = make_prefix(scratch / "prefix", install_overlay(scratch / "repo"))
        else:
            try:
                prefix = load_prefix(Path(prefix_root))
            except FileNotFoundError as exc:
                raise BinhostIndexError(str(exc)) from None
        with store.locked():
            aside = pkgdir / f".{INDEX_NAME}.before-reindex"
            if full and store.path.exists():
                os.replace(store.path, aside)
            env = prefix.env()
            env["PKGDIR"] = str(pkgdir)
            # Incremental on top of make.conf: one plain Packages, built from the files.
            env["FEATURES"] = "-compress-index -pkgdir-index-trusted"
            progress("indexing with emaint", 0, None)
            done = subprocess.run([prefix.tool("emaint"), "binhost", "--fix"], env=env,
                                  capture_output=True, text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
            if done.returncode != 0 or not store.path.exists():
                if aside.exists():
                    os.replace(aside, store.path)
                output = (done.stderr or done.stdout).strip().splitlines()
                raise BinhostIndexError(f"emaint binhost --fix failed (exit {done.returncode}): "
                                  f"{output[-1] if output else 'no output'}")
            with contextlib.suppress(FileNotFoundError):
                aside.unlink()
            index = PackagesIndex.read(store.path)
            for n, (rel_path, entry) in enumerate(index.entries.items(), 1):
                tick(progress, "hashing", n, len(index.entries))
                file_path = _inside(pkgdir, rel_path)
                if file_path is not None and file_path.is_file():
                    entry["SHA256"] = FileDigests.of(file_path).sha256
            store.save(index)
            return len(index.entries)


def _blocks(text: str) -> Iterator[dict[str, str]]:
    block: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if block:
                yield block
                block = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            block[key.strip()] = value.strip()
    if block:
        yield block


def _render_block(data: dict[str, str]) -> str:
    lines = [f"{key}: {value}\n" for key, value in sorted(data.items()) if value != ""]
    return "".join(lines) + "\n"


def _sort_key(entry: dict[str, str]) -> tuple[str, int, str]:
    build_id = entry.get("BUILD_ID", "")
    return entry.get("CPV", ""), int(build_id) if build_id.isdigit() else 0, entry.get("PATH", "")


def _evaluate_use(value: str, use: frozenset[str], atoms: bool) -> str:
    from portage.dep import Atom, paren_enclose, use_reduce

    try:
        return str(paren_enclose(use_reduce(value, uselist=use, token_class=Atom if atoms else None)))
    except Exception:  # an unparsable string stays as the package says
        return value


def _inside(pkgdir: Path, rel_path: str) -> Path | None:
    candidate = (pkgdir / rel_path).resolve()
    try:
        candidate.relative_to(pkgdir.resolve())
    except ValueError:
        return None
    return candidate


def _package_files(pkgdir: Path) -> Iterator[Path]:
    for path in pkgdir.rglob(f"*{GPKG_SUFFIX}"):
        if not any(part.startswith(".") for part in path.relative_to(pkgdir).parts):
            yield path


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


