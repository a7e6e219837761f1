"""The dependency-closure gate on a hand-written index (pure logic: portage's atom matching)."""

from __future__ import annotations

from pathlib import Path

from swarmctl.binhost.gates import closure_problems, profile_provided
from swarmctl.binhost.index import PackagesIndex


def write_index(path: Path, packages: dict[str, str]) -> Path:
    index = PackagesIndex()
    for n, (cpv, rdepend) in enumerate(packages.items()):
        index.add({"CPV": cpv, "PATH": f"{cpv}-{n}.gpkg.tar", "SIZE": "1", "MD5": "m", "SHA1": "s",
                   "RDEPEND": rdepend, "SLOT": "0"})
    index.write(path)
    return path


def test_closure_names_the_first_unsatisfied_dependency(tmp_path: Path) -> None:
    index = write_index(tmp_path / "Packages", {
        "app-misc/a-1": ">=dev-libs/b-2 || ( dev-libs/x dev-libs/c ) !app-misc/blocked",
        "dev-libs/b-2": "",
        "dev-libs/c-1": "sys-libs/provided",
        "app-misc/d-1": "<dev-libs/b-2 dev-libs/b[foo]",
    })
    profile = tmp_path / "repo/profiles/default"
    profile.mkdir(parents=True)
    (profile / "package.provided").write_text("# the toolchain\nsys-libs/provided-1\n")
    provided = profile_provided(tmp_path / "repo", "default")
    assert provided == {"sys-libs/provided-1"}
    # The any-of group and the provided package count; a blocker is no dependency.
    assert closure_problems(index, provided) == [
        "app-misc/d-1 needs <dev-libs/b-2 (RDEPEND): in neither the generation nor the profile"]
    assert closure_problems(index) == [
        "app-misc/d-1 needs <dev-libs/b-2 (RDEPEND): in neither the generation nor the profile",
        "dev-libs/c-1 needs sys-libs/provided (RDEPEND): in neither the generation nor the profile"]
