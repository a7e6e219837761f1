"""Binhost retention: drop old generations and the package files nothing keeps.

``gc(pkgdir, keep_generations=N, keep_instances=M)``:

- kept generations: the newest N, plus always the published one and the one
  published before it (what a bare rollback restores); the others' snapshots go;
- a package file named by a kept generation (or by ``PKGDIR/Packages``) is kept,
  whatever else holds;
- of the staging index's instances of one CPV (several BUILD_IDs), the newest M stay;
  older ones leave the staging index (the next promote publishes without them), and
  their files go once no kept generation names them;
- every other package file (named by no index left) goes.

Deciding happens under the publish lock (no promote or rollback meanwhile) and the
index lock (no upload links or indexes a file meanwhile): the staging index is
written, then every file picked is renamed aside into ``PKGDIR/.swarm-gc/`` (hidden,
never served) and the category directories left empty are removed. Only then, with
both locks released, are the set-aside files unlinked: a publish waits for the
decision and the renames, never for the unlinks of a big collection. A file set
aside is out of its path before the lock goes, so an upload of the same path links a
new file there (it cannot adopt one about to be unlinked). A crash leaves at worst
an unreferenced file or a set-aside directory, which the next gc deletes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from swarmctl.binhost import generations as gens
from swarmctl.binhost.index import INDEX_NAME, IndexStore, _package_files, index_paths

#: Where gc moves the files it deletes, under the index lock, to unlink them after it.
GC_DIR = ".swarm-gc"


@dataclass
class GcPlan:
    """What gc deletes (or, dry, would delete)."""

    generations: list[int] = field(default_factory=list)
    files: list[tuple[str, int]] = field(default_factory=list)
    unstaged: list[str] = field(default_factory=list)
    kept_generations: list[int] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.files)

    def as_dict(self) -> dict[str, object]:
        return {"generations": self.generations, "files": [p for p, _ in self.files], "unstaged": self.unstaged,
                "kept_generations": self.kept_generations, "bytes_freed": self.bytes_freed}


def gc(pkgdir: Path, *, keep_generations: int, keep_instances: int, dry_run: bool = False) -> GcPlan:
    """Plan and (unless ``dry_run``) carry out a collection; see the module doc."""
    pkgdir = Path(pkgdir)
    plan = GcPlan()
    with gens.publish_lock(pkgdir):
        # Set aside by a gc that died before unlinking (or one unlinking now: deleting its files
        # twice is harmless, everything in there is garbage).
        leftovers = sorted((pkgdir / GC_DIR).glob("run-*"))
        ids = gens.generation_ids(pkgdir)
        keep = set(ids[-keep_generations:]) if keep_generations > 0 else set()
        keep |= {i for i in (gens.published_id(pkgdir), gens.previous_id(pkgdir)) if i is not None}
        plan.kept_generations = sorted(i for i in keep if i in ids)
        plan.generations = [i for i in ids if i not in keep]
        protected = index_paths(pkgdir / INDEX_NAME)
        for gen_id in plan.kept_generations:
            protected |= index_paths(gens.gen_dir(pkgdir, gen_id) / INDEX_NAME)
        store = IndexStore(pkgdir)
        with store.locked() as staging:
            is_staged = store.path != pkgdir / INDEX_NAME
            if is_staged and keep_instances > 0:
                by_cpv: dict[str, list[tuple[int, int, str]]] = {}
                for rel_path, entry in staging.entries.items():
                    build_id = entry.get("BUILD_ID", "")
                    mtime = entry.get("MTIME", "")
                    by_cpv.setdefault(entry["CPV"], []).append(
                        (int(build_id) if build_id.isdigit() else 0, int(mtime) if mtime.isdigit() else 0, rel_path))
                for instances in by_cpv.values():
                    # Out of staging (the next promote leaves them out); the file itself
                    # goes only once no kept generation names it.
                    plan.unstaged += [rel_path for _, _, rel_path in sorted(instances, reverse=True)[keep_instances:]]
            keep_files = protected | (set(staging.entries) - set(plan.unstaged))
            for path in sorted(_package_files(pkgdir)):
                rel_path = path.relative_to(pkgdir).as_posix()
                if rel_path not in keep_files:
                    plan.files.append((rel_path, path.stat().st_size))
            if dry_run:
                return plan
            if plan.unstaged:
                for rel_path in plan.unstaged:
                    staging.remove(rel_path)
                store.save(staging)
            aside = _set_aside(pkgdir, [rel_path for rel_path, _ in plan.files])
        for gen_id in plan.generations:
            shutil.rmtree(gens.gen_dir(pkgdir, gen_id), ignore_errors=True)
    _discard(aside, leftovers)
    return plan


def _prune_empty(pkgdir: Path, directory: Path) -> None:
    """Remove ``category/pn`` directories left empty (never PKGDIR itself)."""
    while directory != pkgdir and directory.is_relative_to(pkgdir):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _set_aside(pkgdir: Path, rel_paths: list[str]) -> Path:
    """Move ``rel_paths`` into a new directory below ``PKGDIR/.swarm-gc`` (call under the index lock;
    renames within one file system), and remove the directories they leave empty."""
    (pkgdir / GC_DIR).mkdir(exist_ok=True)
    aside = Path(tempfile.mkdtemp(prefix="run-", dir=pkgdir / GC_DIR))
    for number, rel_path in enumerate(rel_paths):
        try:
            os.rename(pkgdir / rel_path, aside / f"{number}.gpkg.tar")
        except FileNotFoundError:
            continue
        _prune_empty(pkgdir, (pkgdir / rel_path).parent)
    return aside


def _discard(aside: Path, leftovers: list[Path]) -> None:
    """Unlink what was set aside (no lock held: nothing else uses these names)."""
    for directory in (*leftovers, aside):
        shutil.rmtree(directory, ignore_errors=True)
