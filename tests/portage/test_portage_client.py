"""Real portage clients against the signed binhost, verification at portage's default (on).

The client prefixes here are default clients: their binrepos.conf does not mention
verify-signature, their keyring trusts the binhost's KEYS.asc (locally signed, as
getuto does) and, as root, portage verifies as nobody:nogroup.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from swarmctl.binhost.publish import Publisher
from swarmctl.binhost.signing import KEYS_NAME, sign_gpkg
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.portage_env.prefix import PortagePrefix, make_prefix
from tests.portage.signing_fixtures import world_traversable_dir
from tests.portage.test_signing import flip_in_image, replace_package

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
def served(drone, pkgdir: Path, serve, keyring):  # type: ignore[no-untyped-def]
    publisher = Publisher(pkgdir, keyring=keyring)
    for cpv in GREETER_CLOSURE:
        publisher.publish_file(drone.gpkg(cpv), cpv)
    keyring.publish(pkgdir)
    return serve(pkgdir, OpenGate())


@pytest.fixture
def client_root():  # type: ignore[no-untyped-def]
    root = world_traversable_dir("swarm-client-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def default_client(root: Path, repo: Path, served, pkgdir: Path) -> PortagePrefix:  # type: ignore[no-untyped-def]
    return make_prefix(root / "client", repo, served.url, binhost_keys=(pkgdir / KEYS_NAME).read_text(),
                       verify_as_nobody=True)


def emerge_binary(client: PortagePrefix, atom: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([client.tool("emerge"), "--getbinpkgonly", "--oneshot", "--color=n", "--nospinner",
                           atom], env=client.env(), capture_output=True, text=True, timeout=180)


def test_emerge_getbinpkgonly_installs_signed_packages(served, pkgdir, sample_repo: Path, client_root) -> None:  # type: ignore[no-untyped-def]
    client = default_client(client_root, sample_repo, served, pkgdir)
    assert "verify-signature" not in (client.config_dir / "binrepos.conf").read_text()
    assert 'GPG_VERIFY_USER_DROP' not in (client.config_dir / "make.conf").read_text()
    done = emerge_binary(client, "=app-misc/greeter-1")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "lacks size and checksum" not in output
    elf = client.root / "usr/bin/greeter"  # built in another prefix; portage relocated it
    assert subprocess.run([str(elf), "client"], capture_output=True, text=True).stdout == "hello, client\n"
    assert (client.root / "usr/share/greet/message.txt").is_file()


def test_client_without_the_key_refuses_the_packages(served, sample_repo, client_root) -> None:  # type: ignore[no-untyped-def]
    client = make_prefix(client_root / "keyless", sample_repo, served.url, verify_as_nobody=True)
    done = emerge_binary(client, "=app-misc/greet-data-1")
    assert done.returncode != 0 and not (client.root / "usr/share/greet/message.txt").exists()


def test_drone_pulls_build_deps_as_binaries_and_builds_only_the_target(served, pkgdir, sample_repo,  # type: ignore[no-untyped-def]
                                                                        tmp_path) -> None:
    prefix = make_prefix(tmp_path / "drone2", sample_repo, served.url,
                         binhost_keys=(pkgdir / KEYS_NAME).read_text())
    builder = PortageBuilder(prefix)
    plan = {p.cpv: p.kind for p in builder.plan("app-misc/greeter-1")}
    assert plan == {"dev-libs/libgreet-1": "binary", "app-misc/greet-data-1": "binary",
                    "app-misc/greeter-1": "ebuild"}  # the target is built even though the binhost has it
    result = builder.build("app-misc/greeter-1", tmp_path / "g.log", threading.Event())
    assert result.ok, result.reason
    # new build id above the binhost's (portage counts remote build ids), so publishing is no duplicate
    assert result.artifacts[0].path.name == "greeter-1-2.gpkg.tar"
    assert not list((prefix.pkgdir / "dev-libs/libgreet").glob("libgreet-1-2*"))  # deps not rebuilt


def test_tampered_file_on_the_binhost_is_refused_by_the_client(served, pkgdir, sample_repo, client_root) -> None:  # type: ignore[no-untyped-def]
    target = pkgdir / "app-misc/greet-data/greet-data-1-1.gpkg.tar"
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0xFF
    target.write_bytes(bytes(data))
    client = default_client(client_root, sample_repo, served, pkgdir)
    done = emerge_binary(client, "=app-misc/greet-data-1")
    assert done.returncode != 0
    assert "verification" in done.stdout + done.stderr


@pytest.mark.parametrize("forgery", ["stripped", "other_key", "altered"])
def test_forged_signature_is_refused_by_a_default_client(forgery, served, drone, pkgdir, sample_repo,  # type: ignore[no-untyped-def]
                                                        client_root, keyrings) -> None:
    """The index is made to match the forged file: only the signature can tell."""
    rel = "app-misc/greet-data/greet-data-1-1.gpkg.tar"
    if forgery == "stripped":
        content = drone.gpkg("app-misc/greet-data-1").read_bytes()
    elif forgery == "other_key":
        scratch = client_root / "other.gpkg.tar"
        shutil.copy(drone.gpkg("app-misc/greet-data-1"), scratch)
        sign_gpkg(scratch, keyrings())
        content = scratch.read_bytes()
    else:
        content = flip_in_image((pkgdir / rel).read_bytes())
    replace_package(pkgdir, rel, content)
    client = default_client(client_root, sample_repo, served, pkgdir)
    done = emerge_binary(client, "=app-misc/greet-data-1")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]
    assert not (client.root / "usr/share/greet/message.txt").exists()
    expected = {"stripped": "unsigned", "other_key": "signature", "altered": "bad signature"}[forgery]
    assert expected in output.lower(), output[-3000:]
