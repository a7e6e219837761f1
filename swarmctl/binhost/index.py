"""The binhost's ``Packages`` index: read, update one entry, write atomically, verify.

The format is portage's: a header block (``KEY: value`` lines), a blank line, then
one block per package file separated by blank lines. Clients (``emerge
--getbinpkg``) refuse an index whose entries lack ``SIZE``, ``MD5`` and ``SHA1``;
the swarm adds ``SHA256`` (portage ignores keys it does not know).

Publishing is incremental: :class:`IndexStore` keeps the parsed index (and each
entry's rendered text) in memory and re-parses ``Packages`` only when the file
changed underneath it, so publishing one package hashes one package file, whatever
the size of the binhost. Concurrent publishes are grouped (:meth:`IndexStore.commit`):
one leader writes the index once for every change waiting, so the index cost per
package stays flat as the binhost grows. A full rebuild (:func:`reindex`) and a full
check (:func:`verify`) read every file.

Every write produces ``Packages`` and ``Packages.gz`` with the same content: both are
written to temp files and fsynced, then ``Packages.gz`` is renamed into place first and
``Packages`` second. The header's TIMESTAMP is the clock's second (never less than
the last one) and both files' mtime is set to it; clients send it back as
If-Modified-Since and take a fetched index only if its TIMESTAMP is newer than theirs
(portage's bintree), so a version that shares its second with an earlier one may be
missed by a client that fetched that earlier one. Hence the restamp: when a write
shares its second, :class:`IndexStore` writes the index once more after the second
has passed (unless a later write did), so every client sees the last version within
about a second. Writes themselves are never held back by the clock: publishing is
not capped at one index write per second. After a crash between the two renames, the
next writer (or :meth:`IndexStore.reconcile`) rewrites the older of the two from the
newer.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import gzip
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zlib import error as zlib_error

from swarmctl.binhost.gpkg import GPKG_SUFFIX, GpkgError, GpkgInfo, PolicyViolation, inspect_gpkg
from swarmctl.binhost.signing import verifying
from swarmctl.exceptions import SwarmError
from swarmctl.progress import ProgressFn, no_progress, tick

if TYPE_CHECKING:
    from swarmctl.binhost.policy import ContentPolicy

logger = logging.getLogger("swarmctl.binhost.index")

INDEX_NAME = "Packages"
#: The compressed copy clients ask for first.
COMPRESSED_NAME = "Packages.gz"
#: gzip level for Packages.gz: the index is highly repetitive text, level 1 already
#: shrinks it well below a fifth, at a fraction of level 6's cost on a large index.
GZIP_LEVEL = 1
#: Entries per cached chunk of the rendered index (see PackagesIndex).
CHUNK_ENTRIES = 256
#: Seconds after a shared TIMESTAMP's second before the restamp write (clock jitter).
RESTAMP_DELAY = 0.05
#: Lock file serializing every writer of one PKGDIR's index (publish, reindex).
LOCK_NAME = ".swarm-index.lock"
#: Directory (hidden from clients) of the staging index, once the binhost stages
#: (swarmctl.binhost.generations): uploads go there, clients see PKGDIR/Packages.
STAGING_DIR = ".swarm-staging"
#: Keys every package entry must have for portage clients to accept the index.
REQUIRED_KEYS = ("CPV", "PATH", "SIZE", "MD5", "SHA1")
INDEX_VERSION = "0"
#: The SHA256 a drone declared for an upload the binhost then signed (portage ignores it).
UPLOAD_SHA256_KEY = "UPLOAD_SHA256"

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
#: Buffers per writev (Linux's IOV_MAX).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


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
    """A parsed ``Packages`` file: header plus entries keyed by their ``PATH``.

    Once rendered, ``order`` holds the entries' sort keys in index order and
    ``blocks`` their rendered text, position for position, cut into chunks of about
    ``CHUNK_ENTRIES`` entries by key range (``bounds``) whose joined text and gzip
    member are cached (``chunks``). :meth:`add` and :meth:`remove` keep all of it
    right and drop only the cache of the chunk they touch (change entries only
    through them), so writing a big index again re-compresses one chunk and joins
    the rest: the cost per change stays flat as the index grows, and no Python loop
    over every entry holds the GIL from the threads receiving uploads. Packages.gz is
    then a multi-member gzip file (header member, then one member per chunk), which
    gzip readers (portage's ``GzipFile`` included) read as one stream.
    """

    header: dict[str, str] = field(default_factory=dict)
    entries: dict[str, dict[str, str]] = field(default_factory=dict)
    order: list[tuple[tuple[str, int, str], str]] | None = field(default=None, repr=False, compare=False)
    blocks: list[bytes] | None = field(default=None, repr=False, compare=False)
    bounds: list[tuple[tuple[str, int, str], str]] | None = field(default=None, repr=False, compare=False)
    chunks: dict[int, tuple[bytes, bytes]] = field(default_factory=dict, repr=False, compare=False)
    #: CPV -> the PATHs of its entries, built on first use; sets are replaced, never
    #: changed in place, so a copy shares them safely.
    by_cpv: dict[str, frozenset[str]] | None = field(default=None, repr=False, compare=False)

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

    def copy(self) -> PackagesIndex:
        """A copy whose header and entries can change without touching this one."""
        by_cpv = None if self.by_cpv is None else self.by_cpv.copy()
        if self.order is None or self.blocks is None or self.bounds is None:
            return PackagesIndex(header=dict(self.header), entries=self.entries.copy(), by_cpv=by_cpv)
        return PackagesIndex(header=dict(self.header), entries=self.entries.copy(), order=self.order.copy(),
                             blocks=self.blocks.copy(), bounds=self.bounds, chunks=self.chunks.copy(),
                             by_cpv=by_cpv)

    @property
    def timestamp(self) -> int:
        text = self.header.get("TIMESTAMP", "")
        return int(text) if text.isdigit() else 0

    def render(self, ttl: int | None = None) -> str:
        """The index as text: header (fresh PACKAGES, TIMESTAMP now but never back, TTL), then entries."""
        head, parts = self._render_parts(ttl)
        return (head + b"".join(text for text, _ in parts)).decode("utf-8")

    def _render_parts(self, ttl: int | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        header = dict(self.header)
        header["PACKAGES"] = str(len(self.entries))
        header["TIMESTAMP"] = str(max(int(time.time()), self.timestamp))
        if ttl:
            header["TTL"] = str(ttl)
        header.setdefault("VERSION", INDEX_VERSION)
        self.header["TIMESTAMP"] = header["TIMESTAMP"]
        self._layout()
        assert self.order is not None and self.blocks is not None and self.bounds is not None
        parts = []
        for number in range(len(self.bounds)):
            cached = self.chunks.get(number)
            if cached is None:
                start = 0 if number == 0 else bisect.bisect_left(self.order, self.bounds[number])
                end = (bisect.bisect_left(self.order, self.bounds[number + 1]) if number + 1 < len(self.bounds)
                       else len(self.order))
                text = b"".join(self.blocks[start:end])
                cached = self.chunks[number] = (text, gzip.compress(text, compresslevel=GZIP_LEVEL, mtime=0))
            parts.append(cached)
        return _render_block(header).encode("utf-8"), parts

    def _layout(self) -> None:
        """(Re)build order, blocks and chunk bounds when missing, stale or lopsided."""
        count = len(self.entries)
        if (self.order is None or self.blocks is None or self.bounds is None or len(self.order) != count
                or count > 2 * CHUNK_ENTRIES * max(1, len(self.bounds))):
            self.order = sorted((_sort_key(entry), path) for path, entry in self.entries.items())
            self.blocks = [_render_block(self.entries[path]).encode("utf-8") for _, path in self.order]
            self.bounds = self.order[::CHUNK_ENTRIES] or [(("", 0, ""), "")]
            self.chunks = {}

    def write(self, path: Path, ttl: int | None = None) -> None:
        """Write ``Packages`` and ``Packages.gz`` (same content) atomically, gz first.

        Each goes to a temp file in the same directory and is fsynced; then
        ``Packages.gz`` and ``Packages`` are renamed into place, in that order, and the
        directory is fsynced. Both files' mtime is the header's TIMESTAMP.
        """
        path = Path(path)
        head, parts = self._render_parts(ttl)
        stamp = self.timestamp
        # The cached chunks go to the files as they are (one writev): joining a big index
        # into one bytes object first would copy it twice more, holding the GIL.
        text = [head, *(chunk for chunk, _ in parts)]
        compressed = [gzip.compress(head, compresslevel=GZIP_LEVEL, mtime=stamp), *(gz for _, gz in parts)]
        gz_path = path.with_name(path.name + ".gz")
        temps = [_stage(gz_path, compressed, stamp), _stage(path, text, stamp)]
        try:
            os.replace(temps[0], gz_path)
            os.replace(temps[1], path)
        finally:
            for temp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
        _fsync_dir(path.parent)

    def add(self, entry: dict[str, str]) -> None:
        """Insert or replace the entry for ``entry["PATH"]``."""
        missing = [key for key in REQUIRED_KEYS if not entry.get(key)]
        if missing:
            raise BinhostIndexError(f"index entry lacks {', '.join(missing)}")
        path = entry["PATH"]
        if path in self.entries:
            self.remove(path)
        self.entries[path] = dict(entry)
        if self.by_cpv is not None:
            self.by_cpv[entry["CPV"]] = self.by_cpv.get(entry["CPV"], frozenset()) | {path}
        if self.order is not None and self.blocks is not None and self.bounds is not None:
            key = (_sort_key(entry), path)
            at = bisect.bisect(self.order, key)
            self.order.insert(at, key)
            self.blocks.insert(at, _render_block(self.entries[path]).encode("utf-8"))
            self.chunks.pop(max(0, bisect.bisect_right(self.bounds, key) - 1), None)
        if entry.get("CHOST"):
            self.header.setdefault("CHOST", entry["CHOST"])

    def remove(self, rel_path: str) -> bool:
        """Drop the entry for a file; True if there was one."""
        if rel_path not in self.entries:
            return False
        self._unplace(rel_path)
        cpv = self.entries.pop(rel_path)["CPV"]
        if self.by_cpv is not None:
            self.by_cpv[cpv] = self.by_cpv.get(cpv, frozenset()) - {rel_path}
        return True

    def _unplace(self, path: str) -> None:
        """Take an entry out of the rendered order (before it changes or goes)."""
        if self.order is None or self.blocks is None or self.bounds is None:
            return
        key = (_sort_key(self.entries[path]), path)
        at = bisect.bisect_left(self.order, key)
        if at < len(self.order) and self.order[at] == key:
            del self.order[at]
            del self.blocks[at]
            self.chunks.pop(max(0, bisect.bisect_right(self.bounds, key) - 1), None)
        else:  # not where it should be: forget the layout, the next render rebuilds it
            self.order = self.blocks = self.bounds = None

    def paths_of(self, cpv: str) -> frozenset[str]:
        """The PATHs of ``cpv``'s entries (one lookup, whatever the size of the index)."""
        if self.by_cpv is None:  # one pass over the index, then kept up to date by add/remove
            by_cpv: dict[str, set[str]] = {}
            for path, entry in self.entries.items():
                by_cpv.setdefault(entry["CPV"], set()).add(path)
            self.by_cpv = {key: frozenset(paths) for key, paths in by_cpv.items()}
        return self.by_cpv.get(cpv, frozenset())

    def build_ids(self, cpv: str) -> set[int]:
        """BUILD_IDs already published for ``cpv``."""
        ids = set()
        for path in self.paths_of(cpv):
            build_id = self.entries[path].get("BUILD_ID", "")
            if build_id.isdigit():
                ids.add(int(build_id))
        return ids

    def cpvs(self) -> set[str]:
        """Every CPV with at least one published package."""
        return {entry["CPV"] for entry in self.entries.values()}


def writable_index(pkgdir: Path) -> Path:
    """Where publishing writes: ``PKGDIR/.swarm-staging/Packages`` on a staged binhost
    (one ``binhost promote`` made it so), else ``PKGDIR/Packages`` (uploads visible at once)."""
    staging = Path(pkgdir) / STAGING_DIR / INDEX_NAME
    return staging if staging.exists() else Path(pkgdir) / INDEX_NAME


def _stage(path: Path, parts: list[bytes], stamp: int) -> str:
    """``parts``, concatenated, in an fsynced temp file beside ``path`` (mode 0644, mtime ``stamp``)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            _write_all(fd, parts)
            os.fsync(fd)
            os.fchmod(fd, 0o644)
            os.utime(fd, (stamp, stamp))
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Write every part, in few system calls (each one lets go of the GIL and takes it back)."""
    pending = [memoryview(part) for part in parts if part]
    while pending:
        written = os.writev(fd, pending[:_IOV_MAX])
        while written and pending:  # drop what was written; keep a partly written part's rest
            if written >= len(pending[0]):
                written -= len(pending.pop(0))
            else:
                pending[0], written = pending[0][written:], 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


@dataclass
class _Change:
    apply: Callable[[PackagesIndex], Callable[[], None] | None]
    done: bool = False
    error: BaseException | None = None
    undo: Callable[[], None] | None = None


class IndexStore:
    """One PKGDIR's index with an in-memory cache, an exclusive writer lock and group commit.

    Two ways to change an index: ``store.commit(change)`` (publishing: concurrent
    changes are written together), or ``with store.locked() as index: ...;
    store.save(index)`` (reindex). The lock is a ``flock`` on
    ``PKGDIR/.swarm-index.lock`` (serializes processes) plus a thread lock.
    """

    def __init__(self, pkgdir: Path, ttl: int | None = None, facts: dict[str, str] | None = None) -> None:
        """Args:
            pkgdir: The binhost directory.
            ttl: Seconds written as the index header's TTL (clients skip refreshes
                within it); None or 0 writes none.
            facts: Header fields every write sets (a build target's CHOST, ACCEPT_KEYWORDS,
                PROFILE: swarmctl.targets.Target.index_header).
        """
        self.pkgdir = Path(pkgdir)
        self.ttl = ttl
        self.facts = dict(facts or {})
        self._thread_lock = threading.Lock()
        self._cached: PackagesIndex | None = None
        self._cached_stat: tuple[int, int, int] | None = None
        self._group = threading.Condition()
        self._pending: list[_Change] = []
        self._leading = False
        #: Index writes done by :meth:`commit` and the changes they carried (for benches).
        self.commits = 0
        self.committed_changes = 0
        self._reconciled: tuple[object, object] | None = None
        self._last_stamp: int | None = None
        self._restamp_timer: threading.Timer | None = None
        self._closed = False

    @property
    def path(self) -> Path:
        """The index uploads go to: the staging index once there is one, else ``PKGDIR/Packages``."""
        return writable_index(self.pkgdir)

    @contextlib.contextmanager
    def pinned(self) -> Iterator[Path]:
        """Hold the writer lock with ``Packages`` and ``Packages.gz`` agreeing, without loading
        the index; yields the index file's path (its files are replaced only by rename)."""
        with self._thread_lock, _flock(self.pkgdir / LOCK_NAME):
            self.reconcile()
            yield self.path

    @contextlib.contextmanager
    def locked(self) -> Iterator[PackagesIndex]:
        """Hold the writer lock; yields a private copy of the current index."""
        with self._thread_lock, _flock(self.pkgdir / LOCK_NAME):
            self.reconcile()
            yield self._load().copy()

    def save(self, index: PackagesIndex) -> None:
        """Write ``index`` atomically (call inside :meth:`locked`) and cache it."""
        index.header.update(self.facts)
        index.write(self.path, self.ttl)
        self._cache(index)
        self._reconciled = (self._cached_stat, _stat_key(self.path.with_name(COMPRESSED_NAME)))
        if index.timestamp == self._last_stamp:
            self._schedule_restamp(index.timestamp)
        self._last_stamp = index.timestamp

    def _schedule_restamp(self, stamp: int) -> None:
        """Write the index again once ``stamp``'s second is over (see the module doc)."""
        with self._group:
            if self._restamp_timer is not None or self._closed:
                return
            timer = threading.Timer(max(0.0, stamp + 1 - time.time()) + RESTAMP_DELAY, self._restamp, (stamp,))
            timer.daemon = True
            self._restamp_timer = timer
        timer.start()

    def _restamp(self, stamp: int) -> None:
        with self._group:
            self._restamp_timer = None
            if self._closed:
                return
        try:
            if not self.path.exists():
                return  # PKGDIR gone (a test's temp dir): nothing to tell clients
            with self._thread_lock, _flock(self.pkgdir / LOCK_NAME):
                self.reconcile()
                index = self._load()
                if index.timestamp <= stamp:  # no later write did it
                    self.save(index)
        except Exception as exc:  # the next publish writes a newer TIMESTAMP anyway
            logger.warning("could not write the index again with a newer TIMESTAMP: %s", exc)

    def close(self) -> None:
        """Cancel a pending restamp (the server is shutting down)."""
        with self._group:
            self._closed = True
            timer, self._restamp_timer = self._restamp_timer, None
        if timer is not None:
            timer.cancel()

    def commit(self, apply: Callable[[PackagesIndex], Callable[[], None] | None]) -> None:
        """Apply one change in the next group commit; return when the index holding it is written.

        ``apply(index)`` changes the working index, through ``add``/``remove`` as its
        last step (or raises before changing it: the error is raised here; the index is
        the cached one, changed in place); it may return an undo callable, run if
        writing the index fails. While one caller (the leader) writes the index, the
        changes arriving meanwhile wait and are then written together by the next
        leader, so a big index is rewritten once per group, not once per package.

        Raises:
            Whatever ``apply`` raised, or the write's error.
        """
        change = _Change(apply)
        with self._group:
            self._pending.append(change)
            while not change.done and self._leading:
                self._group.wait()
            if not change.done:
                self._leading = True
        if not change.done:
            try:
                self._lead()
            finally:
                with self._group:
                    self._leading = False
                    self._group.notify_all()
        if change.error is not None:
            raise change.error

    def _lead(self) -> None:
        with self._group:
            batch, self._pending = self._pending, []
        try:
            with self._thread_lock, _flock(self.pkgdir / LOCK_NAME):
                self.reconcile()
                # Changed in place: copying a big index (entries, order, rendered blocks)
                # for every write costs more than the changes. Lock-free readers only look
                # entries up; a failed write drops the cache (re-read from Packages below).
                index = self._load()
                applied = []
                for change in batch:
                    try:
                        change.undo = change.apply(index)
                        applied.append(change)
                    except BaseException as exc:  # this change only; the others go on
                        change.error = exc
                if applied:
                    try:
                        self.save(index)
                    except BaseException as exc:
                        self._cached = self._cached_stat = None  # Packages still holds the last write
                        for change in applied:
                            change.error = exc
                            if change.undo is not None:
                                with contextlib.suppress(Exception):
                                    change.undo()
                        raise
                    self.commits += 1
                    self.committed_changes += len(applied)
        except BaseException as exc:
            for change in batch:
                if change.error is None and not change.done:
                    change.error = exc
        finally:
            with self._group:
                for change in batch:
                    change.done = True
                self._group.notify_all()

    def snapshot(self) -> PackagesIndex:
        """The current index (read-only use; reparsed only if the file changed).

        While a writer holds the lock, the cached index is returned at once (it may
        already hold the group's changes being written): waiting for a big index write
        would put every reader (an upload's retry check) in line behind it. Callers that
        must be exact (a duplicate check) check again under the lock.
        """
        cached = self._cached
        if cached is not None and not self._thread_lock.acquire(blocking=False):
            return cached
        if cached is None:
            self._thread_lock.acquire()
        try:
            return self._load()
        finally:
            self._thread_lock.release()

    def reconcile(self) -> bool:
        """Make ``Packages`` and ``Packages.gz`` the same again after a crash between their renames.

        Call with the writer lock held. The one with the newer TIMESTAMP wins (the gz
        copy on a tie: it is renamed first). Returns True if a file was rewritten.
        """
        gz_path = self.path.with_name(COMPRESSED_NAME)
        key = (_stat_key(self.path), _stat_key(gz_path))
        if key == self._reconciled:
            return False
        changed = False
        try:
            plain = self.path.read_bytes() if self.path.exists() else None
            packed = gzip.decompress(gz_path.read_bytes()) if gz_path.exists() else None
        except (OSError, EOFError, gzip.BadGzipFile, zlib_error) as exc:
            logger.warning("%s unreadable (%s): rewriting it from %s", gz_path, exc, self.path)
            packed = None
        if plain is not None and packed != plain:
            index_plain = PackagesIndex.parse(plain.decode("utf-8", "replace"))
            index_packed = PackagesIndex.parse(packed.decode("utf-8", "replace")) if packed else None
            newer = index_packed if index_packed is not None and \
                index_packed.timestamp >= index_plain.timestamp else index_plain
            logger.warning("Packages and Packages.gz differ (a write was interrupted): rewriting both "
                           "from the newer (TIMESTAMP %d)", newer.timestamp)
            newer.header.update(self.facts)
            newer.write(self.path, self.ttl)
            self._cache(newer)
            changed = True
        elif plain is None and packed is not None:
            newer = PackagesIndex.parse(packed.decode("utf-8", "replace"))
            newer.header.update(self.facts)
            newer.write(self.path, self.ttl)
            changed = True
        self._reconciled = (_stat_key(self.path), _stat_key(gz_path))
        return changed

    def _load(self) -> PackagesIndex:
        key = _stat_key(self.path)
        if self._cached is None or key != self._cached_stat:
            self._cache(PackagesIndex.read(self.path))
            assert self._cached is not None
            self._last_stamp = self._cached.timestamp  # a write in its second shares it
        assert self._cached is not None
        return self._cached

    def _cache(self, index: PackagesIndex) -> None:
        """Make ``index`` (as ``Packages`` now holds it) the cached one.

        Its per-CPV map is built here, under the lock: lock-free readers
        (:meth:`snapshot`) only look things up in it, never build it while a
        leader changes the entries.
        """
        index.paths_of("")
        self._cached, self._cached_stat = index, _stat_key(self.path)


@dataclass
class VerifyReport:
    """Result of :func:`verify`: an empty ``problems`` list means all is well."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(pkgdir: Path, *, check_manifests: bool = False, check_signatures: bool = False,
           gpg: str = "gpg", policy: ContentPolicy | None = None,
           progress: ProgressFn = no_progress) -> VerifyReport:
    """Check every index entry against its file, and every file against the index.

    Args:
        pkgdir: The binhost directory.
        check_manifests: Also verify each gpkg's internal Manifest and apply the content
            policy, as a publish does (slower).
        check_signatures: Also let portage verify each package as a default client
            would: signature required, made by a key in ``PKGDIR/KEYS.asc``, Manifest
            and members intact (implies ``check_manifests``).
        gpg: The gpg program.
        policy: The content policy (default: the documented defaults).
        progress: Hears how many entries of how many are checked (swarmctl.progress).

    Returns:
        One problem per line: missing file, size or checksum mismatch, entry without
        required keys, package file not in the index, bad gpkg, bad or missing signature.
    """
    pkgdir = Path(pkgdir)
    if check_signatures:
        with verifying(pkgdir, gpg) as keyring:
            if not keyring.fingerprints:
                report = _verify(pkgdir, check_manifests=True, settings=None, policy=policy, progress=progress)
                report.problems.insert(0, f"{pkgdir / 'KEYS.asc'}: no public keys published: "
                                          "no package can be verified")
                return report
            return _verify(pkgdir, check_manifests=True, settings=keyring.settings(), policy=policy,
                           progress=progress)
    return _verify(pkgdir, check_manifests=check_manifests, settings=None, policy=policy, progress=progress)


def _verify(pkgdir: Path, *, check_manifests: bool, settings: Any, policy: ContentPolicy | None,
            progress: ProgressFn) -> VerifyReport:
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
            report.problems += _manifest_problems(file_path, rel_path, entry, policy, settings)
    from swarmctl.binhost import generations  # it builds on this module

    # A staged binhost: files of unpromoted uploads and of kept generations are known too,
    # and every file those indexes name must be present (rollback and promote need it).
    known = set(index.entries)
    for other in generations.index_files(pkgdir):
        for rel_path in index_paths(other):
            if rel_path not in known:
                known.add(rel_path)
                file_path = _inside(pkgdir, rel_path)
                if file_path is None or not file_path.is_file():
                    report.problems.append(f"{rel_path}: named by {other.relative_to(pkgdir)}, file missing")
    for file_path in sorted(_package_files(pkgdir)):
        rel_path = file_path.relative_to(pkgdir).as_posix()
        if rel_path not in known:
            report.problems.append(f"{rel_path}: package file not in the index")
    return report


def _manifest_problems(file_path: Path, rel_path: str, entry: dict[str, str],
                       policy: ContentPolicy | None, settings: Any = None) -> list[str]:
    """What ``verify --manifests`` finds in one file: Manifest, identity, content policy."""
    from swarmctl.binhost.policy import ContentPolicy

    policy = policy or ContentPolicy.default()
    try:
        info = inspect_gpkg(file_path, settings, limits=policy.limits)
        if info.cpv != entry["CPV"]:
            return [f"{rel_path}: file is {info.cpv}, index says {entry['CPV']}"]
        policy.check(file_path, info)
    except PolicyViolation as exc:
        return [f"{rel_path}: {exc}"]
    except GpkgError as exc:  # its message starts with the file's name
        return [str(exc)]
    return []


def reindex(pkgdir: Path, *, prefix_root: Path | None = None, full: bool = True,
            timeout: float = 3600.0, gpg: str = "gpg", progress: ProgressFn = no_progress) -> int:
    """Rebuild ``PKGDIR/Packages`` with portage's ``emaint binhost --fix``, then add SHA256.

    Args:
        pkgdir: The binhost directory.
        prefix_root: Portage prefix to run emaint in; default: a temporary one made
            from the bundled overlay (only its profile's CHOST reaches the header).
        full: Ignore the existing index (every file is re-read and re-hashed);
            otherwise emaint only refreshes entries whose size or mtime changed.
        timeout: Seconds emaint may take.
        gpg: The gpg program signed packages are verified with.
        progress: Hears when emaint runs (no total) and how many files of how many are hashed.

    Returns:
        Number of packages in the new index.

    Raises:
        BinhostIndexError: emaint failed, or would drop a package file (a signature
            that does not verify against ``PKGDIR/KEYS.asc``, a damaged file); the
            previous index is left in place.
    """
    pkgdir = Path(pkgdir).absolute()
    store = IndexStore(pkgdir)
    with contextlib.ExitStack() as stack:
        prefix = _emaint_prefix(stack, prefix_root)
        keyring = stack.enter_context(verifying(pkgdir, gpg))
        files = sorted(p.relative_to(pkgdir).as_posix() for p in _package_files(pkgdir))
        with store.locked():
            work = pkgdir
            if store.path != pkgdir / INDEX_NAME:
                # A staged binhost: emaint rebuilds the staging index in a shadow PKGDIR (it only
                # ever writes PKGDIR/Packages, which is what clients see), from staging's files and
                # any file no index names; files only old generations name stay out of it.
                from swarmctl.binhost.generations import indexed_paths

                staging = index_paths(store.path)
                elsewhere = indexed_paths(pkgdir) - staging
                files = [rel for rel in files if rel in staging or rel not in elsewhere]
                work = _shadow(stack, pkgdir, files, [store.path] if not full else [])
            target = work / INDEX_NAME
            aside = work / f".{INDEX_NAME}.before-reindex"
            if target.exists():
                if full:
                    os.replace(target, aside)
                else:
                    shutil.copy2(target, aside)
            # Incremental on top of make.conf: one plain Packages, built from the files
            # (store.save below writes Packages.gz beside it).
            env = _emaint_env(prefix, work, keyring, "-compress-index -pkgdir-index-trusted")
            progress("indexing with emaint", 0, None)
            done = subprocess.run([prefix.tool("emaint"), "binhost", "--fix"], env=env,
                                  capture_output=True, text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
            if done.returncode != 0 or not target.exists():
                if aside.exists():
                    os.replace(aside, target)
                output = (done.stderr or done.stdout).strip().splitlines()
                raise BinhostIndexError(f"emaint binhost --fix failed (exit {done.returncode}): "
                                  f"{output[-1] if output else 'no output'}")
            index = PackagesIndex.read(target)
            dropped = [rel for rel in files if rel not in index.entries]
            if dropped:
                # Never a quiet success: a package file emaint could not read (bad or
                # untrusted signature, damaged file) is an error, and the old index stays.
                if aside.exists():
                    os.replace(aside, target)
                else:
                    target.unlink()
                raise BinhostIndexError(
                    f"reindex would drop {len(dropped)} of {len(files)} package(s) (unreadable, or "
                    f"signature not verified against KEYS.asc): {', '.join(dropped[:5])}"
                    + (" ..." if len(dropped) > 5 else "") + "; index left unchanged")
            with contextlib.suppress(FileNotFoundError):
                aside.unlink()
            for n, (rel_path, entry) in enumerate(index.entries.items(), 1):
                tick(progress, "hashing", n, len(index.entries))
                file_path = _inside(pkgdir, rel_path)
                if file_path is not None and file_path.is_file():
                    entry["SHA256"] = FileDigests.of(file_path).sha256
            store.save(index)
            return len(index.entries)


def emaint_check(pkgdir: Path, *, prefix_root: Path | None = None, gpg: str = "gpg",
                 timeout: float = 3600.0) -> list[str]:
    """Portage's own ``emaint binhost --check`` on PKGDIR; the problems it reports (none: clean).

    Run with FEATURES=compress-index (the binhost writes Packages.gz) and signed
    packages read against ``PKGDIR/KEYS.asc``. Portage 3.0.83's check rewrites the
    index as a side effect (every time, even its own: ``USER_PATCHES`` is a key it
    requires but never writes), so it runs on a shadow PKGDIR: hard links of the
    package files (same size and mtime) and copies of both index files, inside
    ``PKGDIR/.swarm-tmp``; the real index is never touched. On a staged binhost the
    published index is checked against the files it names (unpromoted uploads are not its).
    """
    pkgdir = Path(pkgdir).absolute()
    with contextlib.ExitStack() as stack:
        prefix = _emaint_prefix(stack, prefix_root)
        keyring = stack.enter_context(verifying(pkgdir, gpg))
        files = [p.relative_to(pkgdir).as_posix() for p in _package_files(pkgdir)]
        if (pkgdir / STAGING_DIR).is_dir():
            # Staged: files of unpromoted uploads are in the staging index, not in this one.
            published = PackagesIndex.read(pkgdir / INDEX_NAME).entries
            files = [rel for rel in files if rel in published]
        shadow = _shadow(stack, pkgdir, files, [pkgdir / INDEX_NAME, pkgdir / COMPRESSED_NAME])
        env = _emaint_env(prefix, shadow, keyring, "compress-index -pkgdir-index-trusted")
        done = subprocess.run([prefix.tool("emaint"), "binhost", "--check"], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    # Progress bars end in carriage returns: split on them too, and drop them.
    lines = [line.strip() for line in re.split(r"[\r\n]+", done.stdout + done.stderr) if line.strip()]
    problems = [line for line in lines if not line.startswith(("Emaint:", "[", "binhost"))
                and not re.search(r"\d+%|\[=*>?\s*\]", line)]
    if done.returncode != 0 and not problems:
        problems = [f"emaint binhost --check exited {done.returncode}: {lines[-1] if lines else 'no output'}"]
    return problems


def _shadow(stack: contextlib.ExitStack, pkgdir: Path, files: list[str], copies: list[Path]) -> Path:
    """A scratch PKGDIR inside ``PKGDIR/.swarm-tmp``: hard links of ``files`` (same size and
    mtime), copies of ``copies`` (index files) under their plain names; removed with ``stack``."""
    (pkgdir / ".swarm-tmp").mkdir(exist_ok=True)
    shadow = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="emaint-", dir=pkgdir / ".swarm-tmp")))
    for rel_path in files:
        target = shadow / rel_path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(pkgdir / rel_path, target)
    for source in copies:
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(source, shadow / source.name)
    return shadow


def _emaint_prefix(stack: contextlib.ExitStack, prefix_root: Path | None) -> Any:
    from swarmctl.portage_env.prefix import load_prefix, make_prefix  # portage tooling only here

    if prefix_root is None:
        from swarmctl.overlay import install_overlay

        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-reindex-")))
        return make_prefix(scratch / "prefix", install_overlay(scratch / "repo"))
    try:
        return load_prefix(Path(prefix_root))
    except FileNotFoundError as exc:
        raise BinhostIndexError(str(exc)) from None


def _emaint_env(prefix: Any, pkgdir: Path, keyring: Any, features: str) -> dict[str, str]:
    env: dict[str, str] = prefix.env()
    env["PKGDIR"] = str(pkgdir)
    env["FEATURES"] = features
    # Signed packages are read as a client would: against the published keys (our own
    # temporary keyring, so no drop to nobody).
    env["BINPKG_GPG_VERIFY_GPG_HOME"] = str(keyring.home)
    env["BINPKG_GPG_VERIFY_BASE_COMMAND"] = keyring.settings()["BINPKG_GPG_VERIFY_BASE_COMMAND"]
    env["GPG_VERIFY_USER_DROP"] = ""
    env["GPG_VERIFY_GROUP_DROP"] = ""
    return env


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
    """Every package file below PKGDIR outside hidden directories (os.walk: rglob is slow)."""
    for directory, dirs, files in os.walk(pkgdir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith(GPKG_SUFFIX) and not name.startswith("."):
                yield Path(directory, name)


_PATH_LINE = re.compile(r"^PATH:[ \t]*(.*?)[ \t]*$", re.M)


def index_paths(path: Path) -> set[str]:
    """The ``PATH`` of every entry of an index file, without parsing the rest (a missing file: none)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return set()
    except OSError as exc:
        raise BinhostIndexError(f"cannot read {path}: {exc}") from None
    return {match for match in _PATH_LINE.findall(text) if match}


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


