"""Benchmark: binhost generations (issue 14): promote, rollback, gc on a synthetic binhost.

Run: ``.venv/bin/python bench/lifecycle.py [--entries 50000] [--rounds 3]`` (about a minute).
Prints the figures and writes them to ``bench/results/lifecycle.json``.

* promote and rollback with 50,000 index entries (targets: promote < 2 s, rollback
  < 5 s). Promote is the snapshot (hard links of the staging index under the index
  lock) plus writing ``PKGDIR/Packages`` and ``Packages.gz``; gates are not run (their
  cost is the packages', see bench/publish.py for one install). Each round stages 500
  more entries first (a night's builds), so every promote publishes a new index.
* gc on a synthetic binhost with 5 generations: each generation rebuilds 10 % of the
  CPVs (a new BUILD_ID, a new 4 KiB file), after a nightly gc that keeps every
  generation (it only drops the older builds from staging); then the measured gc keeps
  2 generations and 1 instance per CPV. Reported: seconds, files and bytes freed, and
  the problems ``binhost verify`` finds after (checksums aside: the files are synthetic).

Entries and files are synthetic (not gpkg): the figures are the index and file work only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from swarmctl.binhost import generations as gens
from swarmctl.binhost.index import FileDigests, IndexStore, PackagesIndex, verify
from swarmctl.binhost.retention import gc

RESULTS = Path(__file__).parent / "results" / "lifecycle.json"
FILE_BYTES = 4096


def entry(cpv: str, build_id: int, rel_path: str, digests: FileDigests | None = None) -> dict[str, str]:
    """An index entry as a publish writes it (about 600 bytes, like a real one)."""
    fake = digests or FileDigests(size=FILE_BYTES, md5="0" * 32, sha1="0" * 40, sha256="0" * 64)
    return {"CPV": cpv, "PATH": rel_path, "BUILD_ID": str(build_id), "SIZE": str(fake.size), "MD5": fake.md5,
            "SHA1": fake.sha1, "SHA256": fake.sha256, "MTIME": str(1_700_000_000 + build_id), "SLOT": "0",
            "EAPI": "8", "KEYWORDS": "amd64", "LICENSE": "MIT", "CHOST": "x86_64-pc-linux-gnu",
            "DESC": f"synthetic package {cpv} for the lifecycle bench", "REPO": "swarm-sample",
            "RDEPEND": "dev-libs/libgreet app-misc/greet-data", "DEPEND": "dev-libs/libgreet",
            "DEFINED_PHASES": "compile install", "USE": "amd64 elibc_glibc kernel_linux", "IUSE": "doc test"}


def cpv_of(n: int) -> str:
    return f"cat-{n % 97:02d}/pkg-{n}-1.0"


def path_of(n: int, build_id: int) -> str:
    cat, rest = cpv_of(n).split("/")
    return f"{cat}/{rest.rsplit('-', 1)[0]}/{rest}-{build_id}.gpkg.tar"


def stage(pkgdir: Path, entries: list[dict[str, str]]) -> None:
    """Add entries to the staging index in one write (as a group commit would)."""
    store = IndexStore(pkgdir)
    with store.locked() as index:
        for item in entries:
            index.add(item)
        store.save(index)


def bench_promote(root: Path, count: int, rounds: int) -> dict[str, object]:
    pkgdir = root / "promote"
    pkgdir.mkdir()
    stage(pkgdir, [entry(cpv_of(n), 1, path_of(n, 1)) for n in range(count)])
    gens.promote(pkgdir)  # generation 1: the binhost becomes staged
    promote_s, rollback_s, publish_s = [], [], []
    extra = count
    for _ in range(rounds):
        stage(pkgdir, [entry(cpv_of(n), 1, path_of(n, 1)) for n in range(extra, extra + 500)])
        extra += 500
        start = time.perf_counter()
        result = gens.promote(pkgdir)
        promote_s.append(time.perf_counter() - start)
        publish_s.append(result.seconds)
        start = time.perf_counter()
        gens.rollback(pkgdir)
        rollback_s.append(time.perf_counter() - start)
        gens.rollback(pkgdir)  # back to the newest, for the next round
    size = (pkgdir / "Packages").stat().st_size
    return {"entries": count, "rounds": rounds, "promote_s_median": round(statistics.median(promote_s), 3),
            "promote_s_max": round(max(promote_s), 3), "publish_part_s_median": round(statistics.median(publish_s), 3),
            "rollback_s_median": round(statistics.median(rollback_s), 3),
            "rollback_s_max": round(max(rollback_s), 3), "packages_bytes": size,
            "packages_gz_bytes": (pkgdir / "Packages.gz").stat().st_size,
            "targets": {"promote_s": 2.0, "rollback_s": 5.0},
            "met": max(promote_s) < 2.0 and max(rollback_s) < 5.0}


def bench_gc(root: Path, count: int) -> dict[str, object]:
    pkgdir = root / "gc"
    pkgdir.mkdir()
    payload = os.urandom(FILE_BYTES)

    def put(n: int, build_id: int) -> dict[str, str]:
        rel = path_of(n, build_id)
        (pkgdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkgdir / rel).write_bytes(payload)
        return entry(cpv_of(n), build_id, rel, FileDigests(FILE_BYTES, "0" * 32, "0" * 40, "0" * 64))

    stage(pkgdir, [put(n, 1) for n in range(count)])
    gens.promote(pkgdir)
    for generation in range(2, 6):  # 5 generations, each rebuilding a tenth of the CPVs
        # A nightly: gc keeping every generation only drops old builds from staging ...
        gc(pkgdir, keep_generations=5, keep_instances=1)
        rebuilt = range((generation - 2) * count // 10, (generation - 1) * count // 10)
        stage(pkgdir, [put(n, generation) for n in rebuilt])
        gens.promote(pkgdir)
    files_before = sum(1 for _ in pkgdir.rglob("*.gpkg.tar"))
    dry = gc(pkgdir, keep_generations=2, keep_instances=1, dry_run=True)
    start = time.perf_counter()
    plan = gc(pkgdir, keep_generations=2, keep_instances=1)
    seconds = time.perf_counter() - start
    problems = [p for p in verify(pkgdir).problems if "mismatch" not in p]  # synthetic digests
    return {"entries": count, "generations": 5, "files_before": files_before, "gc_s": round(seconds, 3),
            "generations_dropped": plan.generations, "files_deleted": len(plan.files),
            "bytes_freed": plan.bytes_freed, "dry_run_matched": dry.bytes_freed == plan.bytes_freed,
            "unstaged": len(plan.unstaged),
            "verify_problems_after": len(problems),
            "index_entries_after": len(PackagesIndex.read(gens.staging_index(pkgdir)).entries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--gc-entries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="swarm-bench-lifecycle-") as scratch:
        results = {"promote_rollback": bench_promote(Path(scratch), args.entries, args.rounds),
                   "gc": bench_gc(Path(scratch), args.gc_entries)}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
