"""swarmctl.resolver.PackageResolver on the sample overlay."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmctl.binhost.publish import Publisher
from swarmctl.exceptions import InvalidAtom
from swarmctl.overlay import DEFAULT_CPVS, DEFAULT_WORLD
from swarmctl.portage_env.prefix import make_prefix
from swarmctl.resolver import PackageResolver, ResolveError

pytestmark = pytest.mark.portage


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory, sample_repo: Path) -> PackageResolver:
    return PackageResolver(make_prefix(tmp_path_factory.mktemp("resolver") / "e", sample_repo))


def test_world_closure_with_edge_kinds(resolver: PackageResolver, tmp_path: Path) -> None:
    world = tmp_path / "world"
    world.write_text("# the sample site\napp-misc/swarm-world\n\n")
    result = resolver.resolve(world)
    by_cpv = {p.cpv: p for p in result.needed}
    assert set(by_cpv) == set(DEFAULT_CPVS)
    assert by_cpv["app-misc/greeter-1"].build_deps == ("dev-libs/libgreet-1",)
    assert by_cpv["app-misc/greeter-1"].run_deps == ("app-misc/greet-data-1",)
    assert by_cpv["app-misc/banner-1"].build_deps == ("dev-util/stamp-1",)
    assert by_cpv["app-misc/swarm-world-1"].post_deps == ("app-misc/hello-extras-1",)
    order = [p.cpv for p in result.needed]
    assert order.index("dev-libs/libgreet-1") < order.index("app-misc/greeter-1")
    assert result.availability == 0.0 and len(result.missing) == len(DEFAULT_CPVS)


def test_diff_against_the_binhost(resolver: PackageResolver, drone, pkgdir: Path) -> None:
    publisher = Publisher(pkgdir)
    for cpv in ("app-misc/hello-1", "dev-libs/libgreet-1"):
        publisher.publish_file(drone.gpkg(cpv), cpv)
    result = resolver.resolve(list(DEFAULT_WORLD), pkgdir)
    assert result.available == {"app-misc/hello-1", "dev-libs/libgreet-1"}
    assert {p.cpv for p in result.missing} == set(DEFAULT_CPVS) - result.available
    assert result.availability == pytest.approx(2 / 8)
    specs = {s.cpv: s for s in result.job_specs()}
    assert "app-misc/hello-1" not in specs and specs["app-misc/greeter-1"].build == ["dev-libs/libgreet-1"]


def test_errors_are_one_line(resolver: PackageResolver) -> None:
    with pytest.raises(ResolveError, match="app-misc/nothere"):
        resolver.resolve(["app-misc/nothere"])
    with pytest.raises(InvalidAtom):
        resolver.resolve(["not an atom"])
    assert resolver.resolve([]).needed == ()
