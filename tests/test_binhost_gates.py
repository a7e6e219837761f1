"""The dependency-closure gate on hand-written indexes (portage's atom matching), and promote's refusal."""

from __future__ import annotations

import json
from pathlib import Path

from swarmctl.binhost.gates import closure_problems, profile_provided
from swarmctl.binhost.index import PackagesIndex
from tests.helpers import run_cli


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


def test_promote_refuses_an_unclosed_generation_unless_forced_and_confirmed(tmp_path: Path,
                                                                          swarm_env: dict[str, str]) -> None:
    from swarmctl.binhost import generations

    pkgdir = tmp_path / "binhost"
    pkgdir.mkdir()
    write_index(pkgdir / "Packages", {"app-misc/a-1": "dev-libs/gone"})
    args = ["binhost", "promote", "--dir", str(pkgdir)]
    refused = run_cli(args, swarm_env, check=False)
    assert refused.returncode == 1 and "NOT promoted" in refused.stderr
    assert "app-misc/a-1 needs dev-libs/gone" in refused.stderr and "Traceback" not in refused.stderr
    declined = run_cli([*args, "--force"], swarm_env, check=False, input="n\n")
    assert declined.returncode != 0 and "aborted" in declined.stderr
    assert generations.published_id(pkgdir) is None
    run_cli([*args, "--force", "--yes"], swarm_env)
    listed = json.loads(run_cli(["binhost", "generations", "--json", "--dir", str(pkgdir)], swarm_env).stdout)
    assert [(g["state"], g["forced"], g["published"]) for g in listed] == \
        [("rejected", False, False), ("ready", True, True)]  # the declined --force made none
