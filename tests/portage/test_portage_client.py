"""Real portage clients against the binhost: the index is accepted, binaries install and run."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from swarmctl.binhost.publish import Publisher
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.portage_env.prefix import make_prefix

pytestmark = pytest.mark.portage
GREETER_CLOSURE = ("dev-libs/libgreet-1", "app-misc/greet-data-1", "app-misc/greeter-1")


class OpenGate:
    def authenticate(self, drone: str, token: str) -> bool:
        return False

    def owner_of(self, cpv: str) -> tuple[None, None]:
        return None, None

    def complete(self, *args: object) -> str:
        return "unauthorized"


@pytest.fixture
def served(drone, pkgdir: Path, serve):
    publisher = Publisher(pkgdir)
    for cpv in GREETER_CLOSURE:
        publisher.publish_file(drone.gpkg(cpv), cpv)
    return serve(pkgdir, OpenGate())


def test_emerge_getbinpkgonly_installs_from_the_binhost(served, sample_repo: Path, tmp_path: Path) -> None:
    client = make_prefix(tmp_path / "client", sample_repo, served.url)
    done = subprocess.run([client.tool("emerge"), "--getbinpkgonly", "--oneshot", "--color=n", "--nospinner",
                           "=app-misc/greeter-1"], env=client.env(), capture_output=True, text=True, timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "lacks size and checksum" not in output
    elf = client.root / "usr/bin/greeter"  # built in another prefix; portage relocated it
    assert subprocess.run([str(elf), "client"], capture_output=True, text=True).stdout == "hello, client\n"
    assert (client.root / "usr/share/greet/message.txt").is_file()


def test_drone_pulls_build_deps_as_binaries_and_builds_only_the_target(served, sample_repo, tmp_path) -> None:
    prefix = make_prefix(tmp_path / "drone2", sample_repo, served.url)
    builder = PortageBuilder(prefix)
    plan = {p.cpv: p.kind for p in builder.plan("app-misc/greeter-1")}
    assert plan == {"dev-libs/libgreet-1": "binary", "app-misc/greet-data-1": "binary",
                    "app-misc/greeter-1": "ebuild"}  # the target is built even though the binhost has it
    result = builder.build("app-misc/greeter-1", tmp_path / "g.log", threading.Event())
    assert result.ok, result.reason
    # new build id above the binhost's (portage counts remote build ids), so publishing is no duplicate
    assert result.artifacts[0].path.name == "greeter-1-2.gpkg.tar"
    assert not list((prefix.pkgdir / "dev-libs/libgreet").glob("libgreet-1-2*"))  # deps not rebuilt


def test_tampered_file_on_the_binhost_is_refused_by_the_client(served, pkgdir, sample_repo, tmp_path) -> None:
    target = pkgdir / "app-misc/greet-data/greet-data-1-1.gpkg.tar"
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0xFF
    target.write_bytes(bytes(data))
    client = make_prefix(tmp_path / "client", sample_repo, served.url)
    done = subprocess.run([client.tool("emerge"), "--getbinpkgonly", "--oneshot", "--color=n", "--nospinner",
                           "=app-misc/greet-data-1"], env=client.env(), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode != 0
    assert "verification" in done.stdout + done.stderr
