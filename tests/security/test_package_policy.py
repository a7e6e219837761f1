# ruff: noqa: F811 - the portage fixtures imported below are used as test parameters
"""Threat family: what a package contains. The content policy and the decompression caps.

Every package here verifies as a gpkg (its Manifest matches): only the binhost's policy
stands between it and the clients. Each is refused with code ``policy`` and a reason
naming the problem, counted for the metrics, shown as an ``upload-refused`` event, and
leaves PKGDIR, its index and the job untouched. A drone whose build is refused fails the
build with fault ``build``: two drones and the package is blocked.
"""

from __future__ import annotations

import resource
import tarfile
import threading
import time
from pathlib import Path

import pytest
import redis

from swarmctl import keys
from swarmctl.binhost.client import BinhostClient, BinhostPublisher
from swarmctl.binhost.index import PackagesIndex
from swarmctl.binhost.policy import ContentPolicy
from swarmctl.binhost.publish import Publisher, PublishRefused
from swarmctl.binhost.server import QueueGate, ServerSettings
from swarmctl.config import Config
from swarmctl.drone.daemon import DroneDaemon
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.events import Events
from swarmctl.graph import JobSpec
from swarmctl.portage_env.prefix import make_prefix
from tests.helpers import run_cli
from tests.portage.fixtures import drone, pkgdir, sample_repo, serve  # noqa: F401 - fixtures
from tests.portage.helpers import copy_overlay_with, snapshot
from tests.portage.test_publish import HELLO, Swarm, sha
from tests.security.forge import forged_gpkg, member
from tests.security.test_uploads import whole_tree

pytestmark = pytest.mark.portage

SETTINGS = ServerSettings(max_upload_bytes=8 * 1024 * 1024, read_timeout=10.0)
CRON = b"* * * * * root id > /tmp/owned\n"
D = "image/usr/share/swarm-evil"  # a directory the hello package does not have

#: Attack -> (how the package is forged, what the refusal must say).
ATTACKS: dict[str, tuple[dict, str]] = {  # type: ignore[type-arg]
    "absolute_member": ({"image_members": [member("/etc/cron.d/evil", CRON)]}, "not a normalized relative path"),
    "dotdot_member": ({"image_members": [member("image/../../etc/cron.d/evil", CRON)]}, "not a normalized"),
    "dot_member": ({"image_members": [member(f"{D}/./x", b"x")]}, "not a normalized"),
    "empty_component": ({"image_members": [member("image/usr//share/x", b"x")]}, "not a normalized"),
    "control_char_name": ({"image_members": [member(f"{D}/a\nb", b"x")]}, "not a normalized"),
    "char_device": ({"image_members": [member(f"{D}/mem", kind=tarfile.CHRTYPE)]}, "a device node"),
    "fifo": ({"image_members": [member(f"{D}/fifo", kind=tarfile.FIFOTYPE)]}, "a fifo"),
    "setuid_file": ({"image_members": [member(f"{D}/rootshell", b"#!/bin/sh\n", mode=0o4755)]}, "setuid"),
    "setgid_file": ({"image_members": [member(f"{D}/groupshell", b"#!/bin/sh\n", mode=0o2755)]}, "setgid"),
    "world_writable_file": ({"image_members": [member(f"{D}/w", b"x", mode=0o666)]}, "world-writable"),
    "world_writable_dir": ({"image_members": [member(D, kind=tarfile.DIRTYPE, mode=0o777)]}, "sticky"),
    "cron_file": ({"image_members": [member("image/etc/cron.d/evil", CRON)]}, "protected path /etc/cron.d"),
    "sudoers_file": ({"image_members": [member("image/etc/sudoers.d/evil", b"ALL ALL=(ALL) NOPASSWD: ALL\n")]},
                     "protected path /etc/sudoers.d"),
    "symlink_to_shadow": ({"image_members": [member(f"{D}/shadow", kind=tarfile.SYMTYPE, link="/etc/shadow")]},
                          "a symlink to /etc/shadow"),
    "relative_symlink_into_cron": ({"image_members": [
        member(f"{D}/cron", kind=tarfile.SYMTYPE, link="../../../etc/cron.d/x")]}, "protected path /etc/cron.d"),
    "write_through_symlink": ({"image_members": [member(f"{D}/out", kind=tarfile.SYMTYPE, link="/opt"),
                                                 member(f"{D}/out/planted", b"x")]}, "below the symlink"),
    "hardlink_outside": ({"image_members": [member(f"{D}/h", kind=tarfile.LNKTYPE, link="/etc/shadow")]},
                         "hard link"),
    "duplicate_member": ({"image_members": [member(f"{D}/d", b"1"), member(f"{D}/d", b"2")]}, "appears twice"),
    "slot_traversal": ({"metadata": {"SLOT": "../../evil"}}, "SLOT '../../evil' is not well-formed"),
    "foreign_repository": ({"metadata": {"repository": "gentoo"}}, "repository 'gentoo' is not one of"),
    "injected_rdepend": ({"metadata": {"RDEPEND": "app-misc/greet-data\nCPV: sys-apps/evil"}}, "line break"),
    "bad_dependency": ({"metadata": {"RDEPEND": "app-misc/greet-data ) || sys-apps/$(evil)"}},
                       "RDEPEND is not a valid dependency string"),
    "bad_keywords": ({"metadata": {"KEYWORDS": "amd64 $(reboot)"}}, "KEYWORDS has malformed entries"),
    "metadata_member_outside": ({"extra_member": "../../../../escape-member"}, "is not metadata/KEY"),
    "long_description": ({"metadata": {"DESCRIPTION": "a" * (1024 * 1024)}}, "DESCRIPTION is longer than"),
}


@pytest.fixture
def swarm(redis_client: redis.Redis, config: Config) -> Swarm:
    return Swarm(redis_client, config)


@pytest.fixture
def binhost(swarm: Swarm, pkgdir: Path, serve):  # type: ignore[no-untyped-def]
    return serve(pkgdir, swarm.gate, SETTINGS)


def upload(url: str, path: Path, swarm: Swarm):  # type: ignore[no-untyped-def]
    return BinhostClient(url, "d1", swarm.token, attempts=1, timeout=60).upload(
        path, HELLO, swarm.leases[HELLO], sha256=sha(path))


def refusals(client: redis.Redis) -> int:
    return int(client.hget(keys.STATS, "upload_rejected:policy") or 0)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_package_breaking_the_policy_is_refused(attack: str, drone, swarm, binhost, pkgdir, tmp_path,  # type: ignore[no-untyped-def]
                                                  redis_client) -> None:
    forge, says = ATTACKS[attack]
    bad = forged_gpkg(drone.gpkg(HELLO), tmp_path / "hello-1-1.gpkg.tar", **forge)
    before, counted = whole_tree(pkgdir.parent), refusals(redis_client)
    verdict = upload(binhost.url, bad, swarm)
    assert (verdict.status, verdict.code) == (422, "policy"), verdict
    assert says in verdict.reason, verdict.reason
    assert verdict.fault == "build"
    assert whole_tree(pkgdir.parent) == before
    assert refusals(redis_client) == counted + 1
    events = [e for e in Events(redis_client).since() if e.kind == "upload-refused"]
    assert events and events[-1].job == HELLO and events[-1].drone == "d1" and says in events[-1].reason
    assert swarm.queue.get(HELLO).state == "delegated"


def test_the_unchanged_package_passes_the_same_checks(drone, swarm, binhost, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The control: re-packed with harmless additions (links anywhere, plain files), it is accepted."""
    fine = forged_gpkg(drone.gpkg(HELLO), tmp_path / "hello-1-1.gpkg.tar", image_members=[
        member(D, kind=tarfile.DIRTYPE, mode=0o755), member(f"{D}/data", b"x"),
        member(f"{D}/abs-link", kind=tarfile.SYMTYPE, link="/usr/lib64/libc.so.6"),
        member(f"{D}/rel-link", kind=tarfile.SYMTYPE, link="../../../etc/os-release"),
        member(f"{D}/hard", kind=tarfile.LNKTYPE, link=f"{D}/data"),
        member("image/var/tmp/sticky", kind=tarfile.DIRTYPE, mode=0o1777)])
    verdict = upload(binhost.url, fine, swarm)
    assert verdict.accepted, verdict.reason


def test_allow_lists_are_configurable(drone, config: Config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A cron package and a setuid helper an admin allows are published; others still are not."""
    eprefix = str(drone.prefix.root)
    allowing = ContentPolicy.from_config(config.with_overrides(
        binhost__path_allow=["app-misc/hello:/etc/cron.d/*"], binhost__mode_allow=["app-misc/hello:/usr/bin/helper"],
        binhost__repositories=["swarm-sample", "gentoo"]).binhost)
    forged = forged_gpkg(drone.gpkg(HELLO), tmp_path / "hello-1-1.gpkg.tar", metadata={"repository": "gentoo"},
                         image_members=[member(f"image{eprefix}/etc/cron.d/hello", CRON),
                                        member(f"image{eprefix}/usr/bin/helper", b"x", mode=0o4755)])
    with pytest.raises(PublishRefused) as refused:
        Publisher(tmp_path / "default").publish_file(forged, HELLO)
    assert refused.value.code == "policy" and "setuid" in str(refused.value) and "cron.d" in str(refused.value)
    published = Publisher(tmp_path / "allowing", policy=allowing).publish_file(forged, HELLO)
    assert published.rel_path == "app-misc/hello/hello-1-1.gpkg.tar"


@pytest.mark.parametrize(("dest", "eprefix", "protected"), [
    ("/etc/cron.d/evil", "", "/etc/cron.d"),
    ("/etc/cron.d/evil", "/etc", "/etc/cron.d"),  # a prefix cannot launder a system path
    ("/etc/cron.d/evil", "/etc/cron.d", "/etc/cron.d"),
    ("/home/me/gentoo/usr/bin/tool", "/home/me/gentoo", None),  # a prefix in a home directory
    ("/home/me", "/home/me/gentoo", None),  # the directories leading to the prefix
    ("/home/me/.bashrc", "/home/me/gentoo", "/home"),  # outside its own prefix
    ("/home/me/gentoo/etc/sudoers.d/x", "/home/me/gentoo", "/etc/sudoers.d"),  # relocated to /etc/sudoers.d
])
def test_prefix_packages_are_judged_where_they_install(dest: str, eprefix: str, protected: str | None) -> None:
    assert ContentPolicy.default().protected(dest, "app-misc/x", eprefix) == protected


def test_verify_manifests_applies_the_same_policy(drone, tmp_path: Path, swarm_env: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    pkgdir = tmp_path / "binhost"
    lax = ContentPolicy(repositories=("swarm-sample",))  # nothing protected, no mode allowed... but checked
    forged = forged_gpkg(drone.gpkg(HELLO), tmp_path / "hello-1-1.gpkg.tar",
                         image_members=[member(f"{D}/rootshell", b"#!/bin/sh\n", mode=0o4755)])
    with pytest.raises(PublishRefused):
        Publisher(pkgdir, policy=lax).publish_file(forged, HELLO)
    lax = ContentPolicy(repositories=("swarm-sample",), mode_allow=("*",))  # a binhost that allowed it
    Publisher(pkgdir, policy=lax).publish_file(forged, HELLO)
    plain = run_cli(["binhost", "verify", "--dir", str(pkgdir)], swarm_env)
    assert "1 package(s) verified" in plain.stdout + plain.stderr
    deep = run_cli(["binhost", "verify", "--dir", str(pkgdir), "--manifests"], swarm_env, check=False)
    assert deep.returncode != 0
    assert "usr/share/swarm-evil/rootshell: setuid" in deep.stdout + deep.stderr
    assert "Traceback" not in deep.stderr


# -- decompression bombs and index values ------------------------------------------------------------

def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("where", ["image", "metadata"])
def test_a_decompression_bomb_is_refused_while_streaming(where: str, drone, swarm, binhost, pkgdir, tmp_path,  # type: ignore[no-untyped-def]
                                                         redis_client) -> None:
    """~40 KB that unpacks to 1 GiB (as the issue's attack): refused after the cap, in bounded memory."""
    forge = {"image_members": [member(f"{D}/zeros", 1024**3)]} if where == "image" else \
        {"metadata": {"DESCRIPTION": 1024**3}}
    bomb = forged_gpkg(drone.gpkg(HELLO), tmp_path / "hello-1-1.gpkg.tar", **forge)  # type: ignore[arg-type]
    assert bomb.stat().st_size < 100 * 1024
    before, peak = whole_tree(pkgdir.parent), _peak_rss()
    started = time.monotonic()
    verdict = upload(binhost.url, bomb, swarm)
    elapsed = time.monotonic() - started
    assert (verdict.status, verdict.code) == (422, "policy"), verdict
    assert "decompression bomb" in verdict.reason, verdict.reason
    assert _peak_rss() - peak < 64 * 1024 * 1024, "the binhost held the unpacked data in memory"
    assert elapsed < 30
    assert whole_tree(pkgdir.parent) == before


def test_oversized_tar_extension_header_is_refused(drone, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """tarfile reads pax headers into memory whole: one of 8 MiB is refused before that."""
    info, data = member(f"{D}/x", b"x")
    info.pax_headers = {"comment": "z" * (8 * 1024 * 1024)}
    bomb = forged_gpkg(drone.gpkg(HELLO), tmp_path / "hello-1-1.gpkg.tar", image_members=[(info, data)])
    with pytest.raises(PublishRefused) as refused:
        Publisher(tmp_path / "binhost").publish_file(bomb, HELLO)
    assert refused.value.code == "policy" and "extension header" in str(refused.value)


def test_a_long_value_never_reaches_the_index(drone, swarm, binhost, pkgdir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The issue's 10 KB package with one 64 MB DESCRIPTION line: refused; a fine one is published
    and every value in the index stays within the cap."""
    huge = forged_gpkg(drone.gpkg(HELLO), tmp_path / "huge.gpkg.tar", metadata={"DESCRIPTION": "d" * (60 * 1024**2)})
    assert huge.stat().st_size < 64 * 1024
    verdict = upload(binhost.url, huge, swarm)
    assert verdict.code == "policy" and "DESCRIPTION is longer than 32768 bytes" in verdict.reason
    assert not (pkgdir / "Packages").exists()
    assert upload(binhost.url, drone.gpkg(HELLO), swarm).accepted
    index = PackagesIndex.read(pkgdir / "Packages")
    assert all(len(v) <= 32768 for entry in index.entries.values() for v in entry.values())


# -- the drone's side: a refused package is a failed build ------------------------------------------

EVIL_EBUILD = """EAPI=8
DESCRIPTION="Installs a system cron job (test only)"
HOMEPAGE="https://example.invalid"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"
src_compile() { echo '* * * * * root id > /tmp/owned' > evil || die; }
src_install() { insinto /etc/cron.d; doins evil; }
"""
EVIL = "app-broken/cronjob-1"


def test_drones_whose_package_is_refused_fail_the_build_and_block_it(sample_repo, queue, registry, pkgdir,  # type: ignore[no-untyped-def]
                                                                     serve, config, redis_client, tmp_path) -> None:
    """A real ebuild that installs into /etc/cron.d, built by two real drones: each upload is
    refused by policy, each drone reports a failed build (fault build), the package is blocked."""
    repo = copy_overlay_with(sample_repo, tmp_path / "repo", {"app-broken/cronjob/cronjob-1.ebuild": EVIL_EBUILD})
    prefix = make_prefix(tmp_path / "prefix", repo)
    binhost = serve(pkgdir, QueueGate(registry, queue), SETTINGS)
    queue.add([JobSpec(EVIL)])
    before = snapshot(pkgdir)
    for name in ("e1", "e2"):
        token = registry.enroll(name)
        publisher = BinhostPublisher(BinhostClient(binhost.url, name, token, attempts=1, timeout=60))
        daemon = DroneDaemon(redis_client, config, name, token, PortageBuilder(prefix), tmp_path / name, publisher)
        runner = threading.Thread(target=daemon.run, kwargs={"max_builds": 1}, daemon=True)
        runner.start()
        runner.join(180)
        assert not runner.is_alive(), f"{name} did not finish its build"
        assert publisher.last_verdict is not None and publisher.last_verdict.code == "policy", publisher.last_verdict
        assert "/etc/cron.d" in publisher.last_verdict.reason
    job = queue.get(EVIL)
    assert job.state == "blocked", job
    assert snapshot(pkgdir) == before
    refused = [e for e in Events(redis_client).since() if e.kind == "upload-refused" and e.job == EVIL]
    assert {e.drone for e in refused} == {"e1", "e2"}
