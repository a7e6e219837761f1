# ruff: noqa: F811 - the portage fixtures imported below are used as test parameters
"""Per-target binhost areas (issue 15): target T's uploads land in PKGDIR/T/, served at /T/."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest
import redis

from swarmctl.binhost.client import BinhostClient
from swarmctl.binhost.index import PackagesIndex
from swarmctl.binhost.server import QueueGate, make_server
from swarmctl.config import load_config
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue, for_target
from swarmctl.registry import DroneRegistry
from tests.portage.fixtures import drone, sample_repo  # noqa: F401 - fixtures
from tests.portage.test_publish import HELLO, sha

pytestmark = pytest.mark.portage


def test_each_target_uploads_into_its_own_area_with_its_header(drone, redis_client: redis.Redis,
                                                                 swarm_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "swarm.yml"
    path.write_text("targets:\n  desktop: {profile: default/linux/amd64}\n"
                    "  server: {chost: x86_64-pc-linux-gnu, accept_keywords: amd64 ~amd64}\n")
    config = load_config(path, environ=swarm_env)
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    token = registry.enroll("d1")
    queue.add(for_target([JobSpec(HELLO)], "desktop") + for_target([JobSpec(HELLO)], "server"))
    claims = {c.target: c for c in (queue.claim("d1", token, targets=["desktop", "server"]) for _ in range(2)) if c}
    pkgdir = tmp_path / "binhost"
    server = make_server(pkgdir, "127.0.0.1:0", QueueGate(registry, queue), targets=config.targets)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = BinhostClient(server.url, "d1", token, attempts=1, timeout=10)
        gpkg = drone.gpkg(HELLO)
        for target, claim in claims.items():
            verdict = client.upload(gpkg, HELLO, claim.lease, sha256=sha(gpkg), target=target)
            assert verdict.accepted, verdict.reason
        unknown = client.upload(gpkg, HELLO, claims["server"].lease, sha256=sha(gpkg), target="laptop")
        assert (unknown.code, unknown.accepted) == ("bad_request", False)
        with urllib.request.urlopen(f"{server.url}/server/Packages", timeout=10) as reply:
            served = PackagesIndex.parse(reply.read().decode())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert {job.target: job.state for job in queue.jobs()} == {"desktop": "built", "server": "built"}
    desktop = PackagesIndex.read(pkgdir / "desktop" / "Packages")
    assert HELLO in desktop.cpvs() and HELLO in served.cpvs()
    assert (served.header["TARGET"], served.header["CHOST"], served.header["ACCEPT_KEYWORDS"]) == (
        "server", "x86_64-pc-linux-gnu", "amd64 ~amd64")
    assert (desktop.header["TARGET"], desktop.header["PROFILE"]) == ("desktop", "default/linux/amd64")
    assert not (pkgdir / "Packages").exists()  # with several targets nothing is published at the top


def test_two_targets_each_built_once_into_its_area_and_installed_by_its_own_client(tmp_path: Path) -> None:
    """The multi-target demo's harness on a one-package world: each target's drone builds with its
    own make.conf (witness: the CFLAGS its build recorded), its client installs from its own area."""
    from swarmctl.demo import MULTI_TARGETS, LocalSwarm

    swarm = LocalSwarm(tmp_path / "swarm", drones=2, world=(HELLO.rsplit("-", 1)[0],), targets=MULTI_TARGETS)
    try:
        swarm.start()
        assert swarm.queue_world() == 2  # one CPV, once per target
        assert swarm.watch(timeout=300, stall=120) is None
        summary = swarm.summary()
        assert summary.ok and sorted(summary.built) == [f"{HELLO}@size", f"{HELLO}@speed"], summary.problems
        for target, make_conf in MULTI_TARGETS.items():
            assert len(list((swarm.area(target) / "app-misc" / "hello").glob("*.gpkg.tar"))) == 1
            builder = swarm.drone_prefix(swarm.queue.get(f"{HELLO}@{target}").built_by or "?")
            assert (builder.vdb / HELLO / "CFLAGS").read_text().strip() == make_conf["CFLAGS"]
            assert PackagesIndex.read(swarm.area(target) / "Packages").header["TARGET"] == target
            ok, said = swarm.install_on_client(f"={HELLO}", name=f"client-{target}", target=target)
            assert ok, said
    finally:
        swarm.stop()
