"""``swarmctl queue sync``: resolve world with real portage, queue what the binhost lacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmctl.overlay import DEFAULT_CPVS
from tests.helpers import run_cli

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


def test_sync_queues_every_target_at_the_tree_revision_it_resolved(drone, pkgdir: Path, swarm_env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    stamp = drone.prefix.repo / "metadata" / "timestamp.chk"  # the session's repository: taken away after
    stamp.write_text("Tue, 01 Dec 2026 00:45:01 +0000\n")
    try:
        _sync_two_targets(drone, pkgdir, swarm_env, tmp_path)
    finally:
        stamp.unlink()


def _sync_two_targets(drone, pkgdir: Path, swarm_env: dict[str, str], tmp_path: Path) -> None:
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
