"""Binhost generations: a staging index drones publish into, a published index clients see.

Layout inside PKGDIR (hidden entries are never served as files)::

    Packages, Packages.gz          the published generation (what clients fetch)
    .swarm-staging/Packages(.gz)   the staging index: uploads land here, drones build against it
                                   (served at URL/staging/Packages)
    .swarm-generations/000007/     one generation: its index snapshot (Packages, Packages.gz)
                                   and generation.json (id, created, tree, packages,
                                   signing key, gate results, state)
    .swarm-generations/published.json   the publication history, oldest first
    .swarm-gc/run-*/               files gc set aside under the index lock, unlinked after it

Package files are shared by every index. A binhost that was never promoted has no
staging index: uploads go straight to ``PKGDIR/Packages`` as before. The first
``promote`` copies the published index into staging; from then on uploads are staged.

Promote: under the index lock the staging index files (always replaced by rename,
never changed in place) are hard-linked into a new generation directory, which is
the snapshot. The gates (swarmctl.binhost.gates) then judge it; if they pass, the
snapshot is written as ``PKGDIR/Packages``: a fresh header (TIMESTAMP after the
published one, so a client's If-Modified-Since sees the change; ``SWARM_GENERATION``)
followed by the snapshot's entry bytes, and ``Packages.gz`` made of a gzip member of
that header followed by the snapshot's own entry members (no recompression). Both
are fsynced temp files renamed into place, ``Packages.gz`` first, like every index
write: a client reading either gets one whole index, and every file it names is
present (files are linked before they are staged, and gc never deletes a file the
published or previous generation names). Rollback writes an older snapshot the same way.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import shutil
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swarmctl.binhost.index import (
    COMPRESSED_NAME,
    GZIP_LEVEL,
    INDEX_NAME,
    LOCK_NAME,
    STAGING_DIR,
    BinhostIndexError,
    IndexStore,
    PackagesIndex,
    _flock,
    _fsync_dir,
    _render_block,
    _stage,
    index_paths,
)
from swarmctl.exceptions import SwarmError

logger = logging.getLogger("swarmctl.binhost.generations")

GENERATIONS_DIR = ".swarm-generations"
RECORD_NAME = "generation.json"
HISTORY_NAME = "published.json"
#: Serializes promote, rollback and gc (the index lock only guards the staging index).
PUBLISH_LOCK = ".swarm-publish.lock"
#: Header key of a published index: the generation it is.
GENERATION_KEY = "SWARM_GENERATION"
#: URL path (below the binhost's base URL) where the staging index is served.
STAGING_URL_PATH = "staging"


class GenerationError(SwarmError):
    """A generation cannot be made, found or published."""


@dataclass
class Generation:
    """One generation's record (``generation.json``).

    ``state``: ``candidate`` (made, gates running), ``ready`` (gates passed or forced),
    ``rejected`` (a gate failed: never published unless forced).
    """

    id: int
    created: float
    packages: int
    tree: str | None = None
    signing_key: str | None = None
    gates: dict[str, Any] = field(default_factory=dict)
    state: str = "candidate"
    forced: bool = False
    published_at: list[float] = field(default_factory=list)

    def as_dict(self, published: bool = False) -> dict[str, Any]:
        return {**asdict(self), "published": published}


def staging_url(base_url: str) -> str:
    """The staging index's base URL for drones (``http://binhost:8770`` -> ``.../staging``).

    Only http(s) binhosts serve it; a ``file://`` URL is returned unchanged.
    """
    if not base_url.startswith(("http://", "https://")):
        return base_url
    return base_url.rstrip("/") + "/" + STAGING_URL_PATH


def staged(pkgdir: Path) -> bool:
    return (Path(pkgdir) / STAGING_DIR / INDEX_NAME).exists()


def staging_index(pkgdir: Path) -> Path:
    """The index drones build against (``PKGDIR/Packages`` until the first promote)."""
    path = Path(pkgdir) / STAGING_DIR / INDEX_NAME
    return path if path.exists() else Path(pkgdir) / INDEX_NAME


def _gen_root(pkgdir: Path) -> Path:
    return Path(pkgdir) / GENERATIONS_DIR


def _gen_dir(pkgdir: Path, gen_id: int) -> Path:
    return _gen_root(pkgdir) / f"{gen_id:06d}"


def generation_ids(pkgdir: Path) -> list[int]:
    root = _gen_root(pkgdir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / RECORD_NAME).is_file() and (p / INDEX_NAME).is_file())


def load(pkgdir: Path, gen_id: int) -> Generation:
    path = _gen_dir(pkgdir, gen_id) / RECORD_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GenerationError(f"no generation {gen_id} in {pkgdir}") from None
    except (OSError, ValueError) as exc:
        raise GenerationError(f"cannot read {path}: {exc}") from None
    known = Generation.__dataclass_fields__
    return Generation(**{k: v for k, v in data.items() if k in known})


def _save(pkgdir: Path, gen: Generation) -> None:
    _write_json(_gen_dir(pkgdir, gen.id) / RECORD_NAME, asdict(gen))


def _write_json(path: Path, data: Any) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp, path)


def published_id(pkgdir: Path) -> int | None:
    """The generation ``PKGDIR/Packages`` is (None: never promoted)."""
    try:
        with open(Path(pkgdir) / INDEX_NAME, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                if key.strip() == GENERATION_KEY and value.strip().isdigit():
                    return int(value.strip())
    except FileNotFoundError:
        pass
    return None


def history(pkgdir: Path) -> list[int]:
    """Generation ids in the order they were published (promote or rollback), oldest first."""
    try:
        data = json.loads((_gen_root(pkgdir) / HISTORY_NAME).read_text(encoding="utf-8"))
        return [int(x) for x in data]
    except (OSError, ValueError, TypeError):
        return []


def previous_id(pkgdir: Path) -> int | None:
    """The generation published before the current one (what a bare rollback restores)."""
    current = published_id(pkgdir)
    for gen_id in reversed(history(pkgdir)):
        if gen_id != current:
            return gen_id
    return None


def resolve(pkgdir: Path, name: str) -> Path:
    """The index file a generation name means: a number, ``published`` or ``staging``."""
    if name == "staging":
        return staging_index(pkgdir)
    if name == "published":
        return Path(pkgdir) / INDEX_NAME
    if not name.isdigit():
        raise GenerationError(f"not a generation: {name!r} (a number, 'published' or 'staging')")
    path = _gen_dir(pkgdir, int(name)) / INDEX_NAME
    if not path.is_file():
        raise GenerationError(f"no generation {name} in {pkgdir}")
    return path


@contextlib.contextmanager
def publish_lock(pkgdir: Path) -> Iterator[None]:
    with _flock(Path(pkgdir) / PUBLISH_LOCK):
        yield


def ensure_staging(pkgdir: Path) -> bool:
    """Make the binhost staged: copy the published index into staging (True if it was not yet)."""
    pkgdir = Path(pkgdir)
    with _flock(pkgdir / LOCK_NAME):  # no upload writes the index meanwhile
        if staged(pkgdir):
            return False
        staging = pkgdir / STAGING_DIR
        staging.mkdir(exist_ok=True)
        published = pkgdir / INDEX_NAME
        if published.is_file():
            IndexStore(pkgdir).reconcile()  # a pair that agrees
            for name in (COMPRESSED_NAME, INDEX_NAME):  # Packages last: its presence means staged
                if (pkgdir / name).is_file():
                    temp = staging / f".{name}.copy.tmp"
                    shutil.copy2(pkgdir / name, temp)
                    os.replace(temp, staging / name)
        else:
            PackagesIndex().write(staging / INDEX_NAME)
        _fsync_dir(staging)
    logger.info("%s now stages uploads in %s/", pkgdir, STAGING_DIR)
    return True


def snapshot(pkgdir: Path, *, tree: str | None = None, signing_key: str | None = None) -> Generation:
    """A new candidate generation: the staging index as it is now (hard links, no copy)."""
    pkgdir = Path(pkgdir)
    ensure_staging(pkgdir)
    root = _gen_root(pkgdir)
    root.mkdir(exist_ok=True)
    with IndexStore(pkgdir).pinned() as source:  # Packages and Packages.gz agree; no upload meanwhile
        ids = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
        gen_id = max(ids, default=0) + 1
        target = _gen_dir(pkgdir, gen_id)
        temp = root / f".{gen_id:06d}.tmp"
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir()
        for name in (INDEX_NAME, COMPRESSED_NAME):
            os.link(source.with_name(name), temp / name)
        packages = PackagesIndex.parse(_head_of(source)).header.get("PACKAGES", "")
        gen = Generation(id=gen_id, created=time.time(), packages=int(packages) if packages.isdigit() else
                         len(index_paths(source)), tree=tree, signing_key=signing_key)
        _write_json(temp / RECORD_NAME, asdict(gen))
        os.replace(temp, target)
    return gen


def publish(pkgdir: Path, gen_id: int) -> float:
    """Write generation ``gen_id`` as ``PKGDIR/Packages`` (and ``.gz``); seconds it took."""
    start = time.monotonic()
    pkgdir = Path(pkgdir)
    source = _gen_dir(pkgdir, gen_id)
    plain = (source / INDEX_NAME).read_bytes()
    cut = plain.find(b"\n\n")
    head_text, body = (plain, b"") if cut < 0 else (plain[:cut + 1], plain[cut + 2:])
    header = PackagesIndex.parse(head_text.decode("utf-8", "replace")).header
    current = PackagesIndex.parse(_head_of(pkgdir / INDEX_NAME)).header
    last = int(current.get("TIMESTAMP", "0")) if current.get("TIMESTAMP", "").isdigit() else 0
    stamp = max(int(time.time()), last + 1)
    header["TIMESTAMP"] = str(stamp)
    header[GENERATION_KEY] = str(gen_id)
    head = _render_block(header).encode("utf-8")
    body_gz = _body_members(source / COMPRESSED_NAME, body)
    compressed = gzip.compress(head, compresslevel=GZIP_LEVEL, mtime=stamp) + body_gz
    target = pkgdir / INDEX_NAME
    temps = [_stage(target.with_name(COMPRESSED_NAME), [compressed], stamp), _stage(target, [head, body], stamp)]
    try:
        os.replace(temps[0], target.with_name(COMPRESSED_NAME))
        os.replace(temps[1], target)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
    _fsync_dir(pkgdir)
    gen = load(pkgdir, gen_id)
    gen.published_at.append(time.time())
    _save(pkgdir, gen)
    _write_json(_gen_root(pkgdir) / HISTORY_NAME, [*history(pkgdir), gen_id])
    return time.monotonic() - start


def _head_of(path: Path) -> str:
    lines = []
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                break
            lines.append(line)
    return "".join(lines)


def _body_members(gz_path: Path, body: bytes) -> bytes:
    """The gzip members after the header member of a multi-member Packages.gz (the entries).

    An index written by this package is a header member then one member per chunk of
    entries; anything else (or a mismatch) is compressed anew from ``body``.
    """
    with contextlib.suppress(OSError, zlib.error):
        data = gz_path.read_bytes()
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        inflate.decompress(data)
        rest = inflate.unused_data
        # Cheap check: the members' uncompressed length (ISIZE of each) is not summed here;
        # the rest must at least be gzip and non-empty exactly when there are entries.
        if bool(rest) == bool(body) and (not rest or rest[:2] == b"\x1f\x8b"):
            return rest
    return gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0) if body else b""


@dataclass
class PromoteResult:
    generation: Generation
    published: bool
    seconds: float = 0.0
    reason: str = ""


GateRunner = Callable[[Path, Path | None], dict[str, Any]]


def promote(pkgdir: Path, *, gates: GateRunner | None = None, force: bool = False,
            tree: str | None = None, signing_key: str | None = None) -> PromoteResult:
    """Snapshot staging as a new generation, run ``gates`` on it, publish it if they pass.

    ``gates(candidate_index, published_index_or_None)`` returns
    ``{"ok": bool, "reason": str, ...}``; ``force`` publishes whatever they say
    (None: no gates run).
    """
    pkgdir = Path(pkgdir)
    with publish_lock(pkgdir):
        gen = snapshot(pkgdir, tree=tree, signing_key=signing_key)
        candidate = _gen_dir(pkgdir, gen.id) / INDEX_NAME
        current = pkgdir / INDEX_NAME if published_id(pkgdir) is not None else None
        verdict: dict[str, Any] = {"ok": True, "reason": "no gates run"}
        if gates is not None:
            try:
                verdict = gates(candidate, current)
            except (SwarmError, OSError, subprocess.SubprocessError) as exc:
                verdict = {"ok": False, "reason": f"gates could not run: {exc}"}
        gen.gates = verdict
        gen.forced = force and not verdict.get("ok")
        gen.state = "ready" if verdict.get("ok") or force else "rejected"
        _save(pkgdir, gen)
        if gen.state == "rejected":
            return PromoteResult(gen, False, reason=str(verdict.get("reason", "a gate failed")))
        seconds = publish(pkgdir, gen.id)
        return PromoteResult(load(pkgdir, gen.id), True, seconds)


def rollback(pkgdir: Path, gen_id: int | None = None, *, force: bool = False) -> tuple[int, float]:
    """Publish an earlier generation (default: the one published before the current one)."""
    pkgdir = Path(pkgdir)
    with publish_lock(pkgdir):
        target = gen_id if gen_id is not None else previous_id(pkgdir)
        if target is None:
            raise GenerationError(f"nothing to roll back to in {pkgdir}: no generation was published "
                                  "before the current one")
        gen = load(pkgdir, target)
        if gen.state == "rejected" and not force:
            raise GenerationError(f"generation {target} failed its gates ({gen.gates.get('reason', '?')}); "
                                  "use --force to publish it anyway")
        if target == published_id(pkgdir):
            raise GenerationError(f"generation {target} is already published")
        return target, publish(pkgdir, target)


def listing(pkgdir: Path) -> list[dict[str, Any]]:
    """Every generation's record, oldest first, with ``published`` true for the one clients see."""
    current = published_id(pkgdir)
    return [load(pkgdir, gen_id).as_dict(published=gen_id == current) for gen_id in generation_ids(pkgdir)]


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return asdict(self)


def diff(old: Path, new: Path) -> Diff:
    """CPVs added, removed, and rebuilt (other package files) from index ``old`` to ``new``."""
    def files_by_cpv(path: Path) -> dict[str, set[str]]:
        result: dict[str, set[str]] = {}
        for rel_path, entry in PackagesIndex.read(path).entries.items():
            result.setdefault(entry["CPV"], set()).add(f"{rel_path} {entry.get('SHA256') or entry.get('MD5')}")
        return result

    before, after = files_by_cpv(old), files_by_cpv(new)
    return Diff(added=sorted(set(after) - set(before)), removed=sorted(set(before) - set(after)),
                rebuilt=sorted(cpv for cpv in set(before) & set(after) if before[cpv] != after[cpv]))


def indexed_paths(pkgdir: Path) -> set[str]:
    """Every package file some index names: published, staging, any generation."""
    pkgdir = Path(pkgdir)
    paths = index_paths(pkgdir / INDEX_NAME)
    for other in index_files(pkgdir):
        paths |= index_paths(other)
    return paths


def index_files(pkgdir: Path) -> list[Path]:
    """The staging index and every generation's (for checks that every named file exists)."""
    pkgdir = Path(pkgdir)
    files = [staging_index(pkgdir)] if staged(pkgdir) else []
    return files + [_gen_dir(pkgdir, gen_id) / INDEX_NAME for gen_id in generation_ids(pkgdir)]


def gen_dir(pkgdir: Path, gen_id: int) -> Path:
    return _gen_dir(pkgdir, gen_id)


__all__ = ["BinhostIndexError", "Diff", "Generation", "GenerationError", "PromoteResult", "diff", "ensure_staging",
           "gen_dir", "generation_ids", "history", "index_files", "indexed_paths", "listing", "load",
           "previous_id", "promote", "publish", "published_id", "resolve", "rollback", "snapshot",
           "staged", "staging_index", "staging_url"]
