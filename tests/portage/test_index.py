"""swarmctl.binhost.index: format, incremental publish, reindex and verify."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from swarmctl.binhost import index as index_module
from swarmctl.binhost.index import IndexStore, PackagesIndex, reindex, verify
from swarmctl.binhost.publish import Publisher
from tests.helpers import wait_until

pytestmark = pytest.mark.portage
CPVS = ("app-misc/hello-1", "app-misc/greeter-1", "dev-libs/libgreet-1")


def synthetic_entries(count: int) -> dict[str, dict[str, str]]:
    entries = {}
    for i in range(count):
        path = f"app-synth/pkg{i}/pkg{i}-1-1.gpkg.tar"
        entries[path] = {"CPV": f"app-synth/pkg{i}-1", "BUILD_ID": "1", "PATH": path, "SIZE": "10240",
                         "MD5": "0" * 32, "SHA1": "0" * 40, "SHA256": "0" * 64, "EAPI": "8"}
    return entries


def test_index_is_readable_by_portage(drone, pkgdir: Path) -> None:
    from portage.getbinpkg import PackageIndex

    Publisher(pkgdir).publish_file(drone.gpkg(CPVS[0]), CPVS[0])
    theirs = PackageIndex()
    with open(pkgdir / "Packages", encoding="utf-8") as handle:
        theirs.read(handle)
    (entry,) = theirs.packages
    assert entry["CPV"] == CPVS[0] and entry["MD5"] and entry["SHA1"] and entry["SIZE"]
    assert theirs.header["PACKAGES"] == "1" and theirs.header["CHOST"]


def test_publish_into_a_big_index_hashes_only_the_new_file(drone, pkgdir: Path, monkeypatch) -> None:
    big = PackagesIndex(header={"CHOST": "x86_64-pc-linux-gnu"}, entries=synthetic_entries(5000))
    big.write(pkgdir / "Packages")
    opened: list[str] = []
    real_open = open

    def watching_open(file, *args, **kwargs):
        if str(file).endswith(".gpkg.tar"):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watching_open)
    published = Publisher(pkgdir).publish_file(drone.gpkg(CPVS[0]), CPVS[0])
    monkeypatch.undo()
    assert all(path == str(drone.gpkg(CPVS[0])) for path in opened)  # none of the 5,000
    after = PackagesIndex.read(pkgdir / "Packages")
    assert len(after.entries) == 5001 and published.rel_path in after.entries


def test_store_reparses_only_when_the_file_changed(tmp_path: Path) -> None:
    PackagesIndex(entries=synthetic_entries(3)).write(tmp_path / "Packages")
    store = IndexStore(tmp_path)
    first = store.snapshot()
    assert store.snapshot() is first
    PackagesIndex(entries=synthetic_entries(4)).write(tmp_path / "Packages")
    assert len(store.snapshot().entries) == 4


def test_write_produces_a_matching_packages_gz_with_a_growing_timestamp(tmp_path: Path) -> None:
    (tmp_path / "Packages.gz").write_bytes(b"old")
    index = PackagesIndex(entries=synthetic_entries(2))
    index.write(tmp_path / "Packages", ttl=600)
    text = (tmp_path / "Packages").read_bytes()
    assert gzip.decompress((tmp_path / "Packages.gz").read_bytes()) == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Packages", "Packages.gz"]
    header = PackagesIndex.parse(text.decode()).header
    assert header["TTL"] == "600"
    stamp = int(header["TIMESTAMP"])
    assert int((tmp_path / "Packages").stat().st_mtime) == int((tmp_path / "Packages.gz").stat().st_mtime) == stamp
    index.write(tmp_path / "Packages")  # the clock's second, never back
    assert PackagesIndex.read(tmp_path / "Packages").timestamp >= stamp


def test_a_version_sharing_its_second_is_restamped_so_clients_see_it(tmp_path: Path) -> None:
    """Portage takes a fetched index only if its TIMESTAMP is newer than the one it holds:
    after two writes within one second, the last version gets a newer TIMESTAMP on its own."""
    store = IndexStore(tmp_path)
    try:
        for entry in synthetic_entries(6).values():
            time.sleep(1.01 - time.time() % 1)  # two writes at the start of a second
            store.commit(lambda index, entry=entry: index.add(entry))
            first = PackagesIndex.read(tmp_path / "Packages").timestamp
            store.commit(lambda index, entry=dict(entry, PATH=entry["PATH"] + ".2"): index.add(entry))
            shared = PackagesIndex.read(tmp_path / "Packages")
            if shared.timestamp == first:
                break
        assert shared.timestamp == first, "no two writes within one second"
        assert wait_until(lambda: PackagesIndex.read(tmp_path / "Packages").timestamp > first, timeout=3)
        assert PackagesIndex.read(tmp_path / "Packages").entries == shared.entries
    finally:
        store.close()


def test_store_repairs_a_write_interrupted_between_the_two_renames(tmp_path: Path) -> None:
    PackagesIndex(entries=synthetic_entries(2)).write(tmp_path / "Packages")
    newer = PackagesIndex(entries=synthetic_entries(3))
    newer.write(tmp_path / "next")  # the gz copy is renamed first: simulate dying right after it
    (tmp_path / "next.gz").rename(tmp_path / "Packages.gz")
    store = IndexStore(tmp_path)
    with store.locked() as index:
        assert len(index.entries) == 3
    assert gzip.decompress((tmp_path / "Packages.gz").read_bytes()) == (tmp_path / "Packages").read_bytes()


def test_concurrent_commits_are_grouped_and_none_is_lost(tmp_path: Path) -> None:
    PackagesIndex(entries=synthetic_entries(1000)).write(tmp_path / "Packages")
    store = IndexStore(tmp_path)
    entries = list(synthetic_entries(1240).values())[1000:]
    refused = []

    def publish(part: list[dict[str, str]]) -> None:
        for entry in part:
            def apply(index: PackagesIndex, entry: dict[str, str] = entry) -> None:
                if entry["PATH"].endswith("pkg1007-1-1.gpkg.tar"):
                    raise ValueError("refused")  # one change refused: the others still land
                index.add(entry)
            try:
                store.commit(apply)
            except ValueError:
                refused.append(entry["PATH"])

    threads = [threading.Thread(target=publish, args=(entries[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    final = PackagesIndex.read(tmp_path / "Packages")
    assert len(final.entries) == 1239 and refused == ["app-synth/pkg1007/pkg1007-1-1.gpkg.tar"]
    assert store.committed_changes == 239 and store.commits < 239  # some changes were written together
    assert gzip.decompress((tmp_path / "Packages.gz").read_bytes()) == (tmp_path / "Packages").read_bytes()


CRASHER = """
import os, sys
from pathlib import Path
from swarmctl.binhost.index import IndexStore, PackagesIndex
pkgdir = Path(sys.argv[1]); store = IndexStore(pkgdir); start = int(sys.argv[2])
for i in range(start, start + 100000):
    rel = f"app-crash/p{i}/p{i}-1-1.gpkg.tar"
    def apply(index, rel=rel, i=i):
        (pkgdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkgdir / rel).write_bytes(b"x")
        index.add({"CPV": f"app-crash/p{i}-1", "PATH": rel, "SIZE": "1", "MD5": "0" * 32, "SHA1": "0" * 40,
                   "BUILD_ID": "1"})
    store.commit(apply)
"""


def test_kill_9_during_group_commits_leaves_no_entry_without_its_file(tmp_path: Path) -> None:
    PackagesIndex(entries=synthetic_entries(20000)).write(tmp_path / "Packages")
    for n in range(4):
        proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(tmp_path), str(n * 100000)])
        time.sleep(1.3 + 0.35 * n)  # lands anywhere in a write of a 20,000-entry index
        proc.kill()
        proc.wait()
        for name in ("Packages", "Packages.gz"):  # before any repair: both name only existing files
            data = (tmp_path / name).read_bytes()
            index = PackagesIndex.parse((gzip.decompress(data) if name.endswith(".gz") else data).decode())
            assert len(index.entries) >= 20000
            assert all((tmp_path / rel).exists() for rel in index.entries if rel.startswith("app-crash/"))
        with IndexStore(tmp_path).locked():
            pass
        assert gzip.decompress((tmp_path / "Packages.gz").read_bytes()) == (tmp_path / "Packages").read_bytes()
    assert len(list(tmp_path.glob("app-crash/*/*"))) > 4  # the crasher did publish before each kill



def test_add_refuses_entries_clients_would_reject() -> None:
    with pytest.raises(index_module.BinhostIndexError, match="MD5"):
        PackagesIndex().add({"CPV": "a/b-1", "PATH": "a/b/b-1-1.gpkg.tar", "SIZE": "1", "SHA1": "x"})


def test_reindex_rebuilds_with_portage_and_verify_finds_every_problem(drone, pkgdir: Path) -> None:
    publisher = Publisher(pkgdir)
    for cpv in CPVS:
        publisher.publish_file(drone.gpkg(cpv), cpv)
    original = PackagesIndex.read(pkgdir / "Packages")
    (pkgdir / "Packages").unlink()
    assert not verify(pkgdir).ok
    assert reindex(pkgdir, prefix_root=drone.prefix.root) == 3
    rebuilt = PackagesIndex.read(pkgdir / "Packages")
    assert set(rebuilt.entries) == set(original.entries)
    for path, entry in rebuilt.entries.items():
        for key in ("MD5", "SHA1", "SIZE", "SHA256", "CPV", "BUILD_ID"):
            assert entry[key] == original.entries[path][key], key
    assert verify(pkgdir, check_manifests=True).ok
    assert "MTIME" in rebuilt.entries[next(iter(rebuilt.entries))]

    hello = pkgdir / "app-misc/hello/hello-1-1.gpkg.tar"
    data = bytearray(hello.read_bytes())
    data[100] ^= 1
    hello.write_bytes(bytes(data))
    (pkgdir / "dev-libs/libgreet/libgreet-1-1.gpkg.tar").unlink()
    shutil.copy(drone.gpkg(CPVS[1]), pkgdir / "app-misc/greeter/greeter-1-9.gpkg.tar")
    problems = "\n".join(verify(pkgdir).problems)
    assert "hello-1-1.gpkg.tar: MD5 mismatch" in problems
    assert "libgreet-1-1.gpkg.tar: No such file" in problems
    assert "greeter-1-9.gpkg.tar: package file not in the index" in problems


def test_reindex_without_prefix_uses_a_scratch_one(drone, pkgdir: Path) -> None:
    target = pkgdir / "app-misc/hello/hello-1-1.gpkg.tar"
    target.parent.mkdir(parents=True)
    shutil.copy(drone.gpkg(CPVS[0]), target)
    assert reindex(pkgdir) == 1
    assert verify(pkgdir).ok


def test_incremental_render_matches_a_full_render() -> None:
    import random

    rng = random.Random(7)
    index = PackagesIndex(entries=synthetic_entries(300))
    index.render()  # from here on, add/remove keep the cached order
    extra = list(synthetic_entries(400).values())[300:]
    rng.shuffle(extra)
    for entry in extra:
        index.add(entry)
        index.add({**entry, "BUILD_ID": "2", "PATH": entry["PATH"].replace("-1-1.", "-1-2.")})
    for path in rng.sample(sorted(index.entries), 50):
        assert index.remove(path)
    index.add({**extra[0], "SIZE": "99"})  # replace an entry in place
    incremental = index.render().split("\n\n", 1)[1]
    fresh = PackagesIndex(entries=dict(index.entries)).render().split("\n\n", 1)[1]
    assert incremental == fresh and "SIZE: 99" in incremental
