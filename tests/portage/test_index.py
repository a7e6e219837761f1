"""swarmctl.binhost.index: format, incremental publish, reindex and verify."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from swarmctl.binhost import index as index_module
from swarmctl.binhost.index import IndexStore, PackagesIndex, reindex, verify
from swarmctl.binhost.publish import Publisher

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


def test_write_is_atomic_and_drops_stale_gz(tmp_path: Path) -> None:
    (tmp_path / "Packages.gz").write_bytes(b"old")
    PackagesIndex(entries=synthetic_entries(2)).write(tmp_path / "Packages")
    assert not (tmp_path / "Packages.gz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Packages"]


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
