"""Drone preflight with the command builder (no portage needed): a drone missing its tool claims
nothing, says why everywhere an operator looks, and resumes by itself once the tool is there."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from prometheus_client.exposition import generate_latest

from swarmctl import metrics, prereqs
from swarmctl.config import Config
from swarmctl.events import Events
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import Spawner, run_cli, wait_until
from tests.test_drone_process import start_drone


def _misconfigured(registry: DroneRegistry, name: str):  # type: ignore[no-untyped-def]
    return next((d for d in registry.list() if d.name == name and d.status == "misconfigured"), None)


def test_a_drone_without_its_tool_claims_nothing_says_why_and_resumes_when_it_appears(
        spawn: Spawner, queue: Queue, registry: DroneRegistry, config: Config, redis_client,  # type: ignore[no-untyped-def]
        swarm_env: dict[str, str], tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    path = f"{tools}{os.pathsep}{os.environ['PATH']}"
    queue.add([JobSpec("app-misc/hello-1")])
    drone = start_drone(spawn, registry, "vega", "swarm-make-pkg {cpv}", PATH=path,
                        SWARM_DRONE_PREFLIGHT_RETRY="0.5")
    seen = wait_until(lambda: _misconfigured(registry, "vega"), 15)
    assert seen, spawn.output(drone)
    assert "swarm-make-pkg not found" in seen.problem

    # It claims nothing: the job was never handed out, so no package carries the blame.
    job = queue.get("app-misc/hello-1")
    assert (job.state, job.attempts, job.failed_on) == ("needed", 0, [])
    assert not [e for e in Events(redis_client).since() if e.kind == "claimed"]

    # Every view says so: drones, status (with the attention line), metrics, and doctor on its host.
    drones = json.loads(run_cli(["drones", "--json"], swarm_env).stdout)
    assert [(d["status"], d["problem"]) for d in drones] == [("misconfigured", seen.problem)]
    table = run_cli(["drones"], {**swarm_env, "COLUMNS": "200"}).stdout
    assert "misconfigured" in table.lower() and "swarm-make-pkg not found" in table, table
    status = json.loads(run_cli(["status", "--json"], swarm_env, check=False).stdout)
    assert status["swarm"]["drones_misconfigured"] == 1 and status["swarm"]["drones_available"] == 0
    assert any(a["code"] == "misconfigured" and "vega misconfigured: swarm-make-pkg not found" in a["message"]
               for a in status["attention"])
    exported = generate_latest(metrics.make_registry(redis_client, config)).decode()
    assert 'swarm_drones{status="misconfigured"} 1.0' in exported
    assert 'swarm_drone_misconfigured{drone="vega",reason="swarm-make-pkg not found' in exported
    host = {**swarm_env, "PATH": path, "SWARM_DRONE_NAME": "vega", "SWARM_DRONE_BUILDER": "command",
            "SWARM_DRONE_COMMAND": "swarm-make-pkg {cpv}"}
    doctor = json.loads(run_cli(["doctor", "--json"], host, check=False).stdout)
    check = next(c for c in doctor["checks"] if c["name"] == "preflight")
    assert check["state"] == "fail" and "swarm-make-pkg not found" in check["summary"]
    assert "put it on the drone's PATH" in check["hint"]
    drones_check = next(c for c in doctor["checks"] if c["name"] == "drones")
    assert "misconfigured: vega (swarm-make-pkg not found" in drones_check["summary"]

    # The fix, and nothing else: the drone notices by itself and builds.
    tool = tools / "swarm-make-pkg"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    assert wait_until(lambda: queue.get("app-misc/hello-1").state == "built", 15), spawn.output(drone)
    assert next(d for d in registry.list() if d.name == "vega").problem is None
    kinds = [e.kind for e in Events(redis_client).since() if e.drone == "vega"]
    assert kinds.index("misconfigured") < kinds.index("preflight-ok") < kinds.index("built")
    doctor = json.loads(run_cli(["doctor", "--json"], host, check=False).stdout)
    assert next(c for c in doctor["checks"] if c["name"] == "preflight")["state"] == "ok"


def test_a_drone_fault_never_fails_or_blocks_the_package_but_grounds_the_drone(
        queue: Queue, registry: DroneRegistry, config: Config) -> None:
    queue.add([JobSpec("app-misc/hello-1")])
    tokens = {name: registry.enroll(name) for name in ("vega", "deneb")}
    reports = []
    for _ in range(config.queue.max_attempts + 2):
        for name, token in tokens.items():
            claim = queue.claim(name, token)
            assert claim is not None, "a drone fault must leave the job claimable"
            reports.append(queue.fail(claim.cpv, name, token, claim.lease, "drone",
                                      "portage misconfigured on this drone: compressor zstd not found")[0])
            registry.release(name)  # keep claiming past the breaker: only the package's fate is tested here
    job = queue.get("app-misc/hello-1")
    assert set(reports) == {"requeued"}
    assert (job.state, job.attempts) == ("needed", 0)
    assert queue.counts()["failed"] == queue.counts()["blocked"] == 0


def test_the_breaker_still_counts_drone_faults(queue: Queue, registry: DroneRegistry, config: Config) -> None:
    queue.add([JobSpec(f"app-misc/p{i}-1") for i in range(config.breaker.failures)])
    token = registry.enroll("vega")
    outcome = ("", 0.0)
    for _ in range(config.breaker.failures):
        claim = queue.claim("vega", token)
        assert claim is not None
        outcome = queue.fail(claim.cpv, "vega", token, claim.lease, "drone", "gcc not found (toolchain)")
    assert outcome[1] > 0, f"{config.breaker.failures} drone faults in a row ground the drone"
    assert next(d for d in registry.list() if d.name == "vega").grounded_until
    assert queue.counts()["needed"] == config.breaker.failures  # every job back in the queue, none failed


def test_prereqs_name_each_missing_tool_with_its_install_command(tmp_path: Path) -> None:
    debian, gentoo = tmp_path / "debian", tmp_path / "gentoo"
    debian.write_text('PRETTY_NAME="Ubuntu 24.04"\nID=ubuntu\nID_LIKE=debian\n')
    gentoo.write_text("ID=gentoo\n")
    assert prereqs.distribution(debian) == "debian" and prereqs.distribution(gentoo) == "gentoo"
    lines = prereqs.report(["zstd", "gcc"], "debian")
    assert lines[0].startswith("missing: zstd") and lines[0].endswith("apt-get install -y zstd")
    assert lines[1].startswith("missing: gcc") and lines[1].endswith("apt-get install -y gcc")
    assert prereqs.install_command(["zstd", "gcc"], "gentoo") == "emerge --ask --noreplace app-arch/zstd sys-devel/gcc"
    assert "(Debian/Ubuntu) or" in prereqs.install_command(["zstd"], "other")


def test_make_test_names_what_it_skips_without_root(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(prereqs, "missing", lambda tools, path=None: [t for t in tools if t == "tmux"])
    errors, notes = prereqs.check("test", is_root=False)
    assert errors == []
    assert any(n.startswith("the monitor's tmux tests will be skipped: tmux is missing") for n in notes)
    assert any(n.startswith("not root: the test-bed tests") for n in notes)
    errors, _ = prereqs.check("test", require_all=True, is_root=True)  # SWARM_REQUIRE_ALL: a skip is a failure
    assert errors == ["missing: tmux - tmux (the monitor's tmux tests); install it with: "
                      + prereqs.install_command(["tmux"])]
