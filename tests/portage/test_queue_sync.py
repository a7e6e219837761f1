"""``swarmctl queue sync``: resolve world with real portage, queue what the binhost lacks."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import redis

from swarmctl.config import load_config
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.graph import JobSpec
from swarmctl.overlay import DEFAULT_CPVS
from swarmctl.portage_env.prefix import make_prefix
from swarmctl.queue import Queue
from tests.helpers import run_cli
from tests.portage.helpers import copy_overlay_with

pytestmark = pytest.mark.portage


def test_sync_queues_what_the_binhost_lacks_with_edges(drone, pkgdir: Path, swarm_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    world = tmp_path / "world"
    world.write_text("# the demo site\napp-misc/swarm-world\n")
    args = ["queue", "sync", "--world", str(world), "--binhost", str(pkgdir), "--prefix", str(drone.prefix.root)]
    dry = json.loads(run_cli([*args, "--dry-run", "--json"], swarm_env).stdout)
    assert dry["dry_run"] and sorted(dry["missing"]) == sorted(DEFAULT_CPVS) and dry["added"] == []
    assert json.loads(run_cli(["queue", "list", "--json"], swarm_env).stdout) == []
    first = json.loads(run_cli([*args, "--json"], swarm_env).stdout)
    assert sorted(first["added"]) == sorted(DEFAULT_CPVS)
    jobs = {j["cpv"]: j for j in json.loads(run_cli(["queue", "list", "--json"], swarm_env).stdout)}
    assert "dev-libs/libgreet-1" in jobs["app-misc/greeter-1"]["after"]
    assert "app-misc/greet-data-1" in jobs["app-misc/greeter-1"]["run"]
    again = json.loads(run_cli([*args, "--json"], swarm_env).stdout)
    assert again["added"] == [] and sorted(again["already_queued"]) == sorted(DEFAULT_CPVS)
    status = json.loads(run_cli(["status", "--json"], swarm_env, check=False).stdout)
    assert status["world"]["packages"] == len(DEFAULT_CPVS)


def test_sync_with_a_bad_world_file_is_one_line(drone, swarm_env: dict[str, str], tmp_path: Path) -> None:
    world = tmp_path / "world"
    world.write_text("app-misc/swarm-world; reboot\n")
    proc = run_cli(["queue", "sync", "--world", str(world), "--prefix", str(drone.prefix.root)], swarm_env,
                   check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert json.loads(run_cli(["queue", "list", "--json"], swarm_env).stdout) == []


def test_a_config_change_queues_that_package_and_what_depends_on_its_subslot(
        sample_repo: Path, swarm_env: dict[str, str], queue, registry, tmp_path: Path) -> None:
    """The binhost is current, not just populated: a USE change and a new sub-slot make stale binaries."""
    repo = copy_overlay_with(sample_repo, tmp_path / "repo", {})
    for rel, old, new in (("dev-libs/libgreet/libgreet-1.ebuild", 'SLOT="0"', 'SLOT="0/1"'),
                          ("app-misc/greeter/greeter-1.ebuild", 'DEPEND="dev-libs/libgreet"',
                           'DEPEND="dev-libs/libgreet:="'),
                          ("app-misc/hello/hello-1.ebuild", 'SLOT="0"', 'SLOT="0"\nIUSE="loud"')):
        text = (repo / rel).read_text()
        assert old in text
        (repo / rel).write_text(text.replace(old, new, 1))
    prefix = make_prefix(tmp_path / "e", repo)
    builder = PortageBuilder(prefix)
    for cpv in ("app-misc/greeter-1", "app-misc/hello-extras-1"):  # the whole world, into the binhost
        assert builder.build(cpv, tmp_path / "build.log", threading.Event()).ok
    world = tmp_path / "world"
    world.write_text("app-misc/greeter\napp-misc/hello-extras\n")
    args = ["queue", "sync", "--world", str(world), "--binhost", str(prefix.pkgdir), "--prefix", str(prefix.root),
            "--json"]
    current = json.loads(run_cli(args, swarm_env).stdout)
    assert (current["world"], current["missing"], current["stale"], current["added"]) == (5, [], {}, [])
    # The swarm built them (jobs in state built), as a night's queue would have.
    token = registry.enroll("izar")
    registry.heartbeat("izar", token, {"status": "idle"})
    queue.add([JobSpec(cpv) for cpv in ("app-misc/hello-1", "dev-libs/libgreet-1", "app-misc/greeter-1")])
    while (claim := queue.claim("izar", token)) is not None:
        queue.complete(claim.cpv, "izar", token, claim.lease, 1.0)

    (prefix.config_dir / "package.use").write_text("app-misc/hello loud\n")
    bump = (repo / "dev-libs/libgreet/libgreet-1.ebuild").read_text().replace('SLOT="0/1"', 'SLOT="0/2"')
    (repo / "dev-libs/libgreet/libgreet-1-r1.ebuild").write_text(bump)
    after = json.loads(run_cli(args, swarm_env).stdout)
    assert after["stale"] == {"app-misc/hello-1": "USE changed: +loud",
                              "app-misc/greeter-1": "dev-libs/libgreet sub-slot 0/1 -> 0/2"}
    assert sorted(after["missing"]) == ["app-misc/greeter-1", "app-misc/hello-1", "dev-libs/libgreet-1-r1"]
    assert after["added"] == ["dev-libs/libgreet-1-r1"]
    assert sorted(after["rebuild"]) == ["app-misc/greeter-1", "app-misc/hello-1"]
    jobs = {j["cpv"]: j for j in json.loads(run_cli(["queue", "list", "--json"], swarm_env).stdout)}
    assert jobs["app-misc/hello-1"]["state"] == "needed" and jobs["app-misc/hello-1"]["reason"] == "USE changed: +loud"
    assert jobs["app-misc/greeter-1"]["after"] == ["dev-libs/libgreet-1-r1"]  # rebuilt against the new sub-slot
    assert jobs["dev-libs/libgreet-1"]["state"] == "built" and jobs["dev-libs/libgreet-1-r1"]["state"] == "needed"
    status = json.loads(run_cli(["status", "--json"], swarm_env, check=False).stdout)
    assert status["binary"]["available"] == 2 and status["binary"]["total"] == 5  # stale counts as missing


def test_sync_queues_every_target_at_the_tree_revision_it_resolved(drone, pkgdir: Path, swarm_env: dict[str, str],
                                                                   tmp_path: Path, redis_client: redis.Redis) -> None:
    stamp = drone.prefix.repo / "metadata" / "timestamp.chk"  # the session's repository: taken away after
    stamp.write_text("Tue, 01 Dec 2026 00:45:01 +0000\n")
    try:
        _sync_two_targets(drone, pkgdir, swarm_env, tmp_path, redis_client)
    finally:
        stamp.unlink()


def _sync_two_targets(drone, pkgdir: Path, swarm_env: dict[str, str], tmp_path: Path,
                      redis_client: redis.Redis) -> None:
    config = tmp_path / "swarm.yml"
    config.write_text("targets:\n  desktop: {world: [app-misc/hello]}\n  server: {world: [app-misc/hello]}\n")
    env = {**swarm_env, "SWARM_CONFIG": str(config)}
    args = ["queue", "sync", "--binhost", str(pkgdir), "--prefix", str(drone.prefix.root), "--json"]
    first = json.loads(run_cli(args, env).stdout)
    assert sorted(first["added"]) == ["app-misc/hello-1@desktop", "app-misc/hello-1@server"]
    assert first["targets"]["server"] == {"world": 1, "available": 0, "tree": "Tue, 01 Dec 2026 00:45:01 +0000"}
    jobs = json.loads(run_cli(["queue", "list", "--json", "--target", "server"], env).stdout)
    assert [(j["cpv"], j["tree"]) for j in jobs] == [("app-misc/hello-1@server", "Tue, 01 Dec 2026 00:45:01 +0000")]
    again = json.loads(run_cli([*args, "--target", "server"], env).stdout)
    assert again["added"] == [] and again["already_queued"] == ["app-misc/hello-1@server"]
    status = json.loads(run_cli(["status", "--json"], env, check=False).stdout)
    assert {t["name"]: t["world"] for t in status["targets"]} == {"desktop": 1, "server": 1}
    # The tree moves on; a job planned at the old revision whose package has left it is retired.
    old = first["targets"]["server"]["tree"]
    Queue(redis_client, load_config(environ=env)).add([JobSpec("app-misc/vanished-1@server")], tree=old)
    (drone.prefix.repo / "metadata" / "timestamp.chk").write_text("Tue, 01 Dec 2026 03:10:00 +0000\n")
    moved = json.loads(run_cli([*args, "--target", "server"], env).stdout)
    assert moved["retired"] == ["app-misc/vanished-1@server"] and moved["restamped"] == 1
    jobs = {j["cpv"]: j for j in json.loads(run_cli(["queue", "list", "--json", "--target", "server"], env).stdout)}
    assert jobs["app-misc/vanished-1@server"]["state"] == "retired"
    assert "gone from the tree at Tue, 01 Dec 2026 03:10:00" in jobs["app-misc/vanished-1@server"]["reason"]
    assert jobs["app-misc/hello-1@server"]["tree"] == "Tue, 01 Dec 2026 03:10:00 +0000"
