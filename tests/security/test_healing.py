"""Threat family: destructive actions (level-3 reboots) aimed at the wrong host.

The playbook side -- a protected host and an identity mismatch are refused on real
SSH hosts -- is proven end to end in tests/ansible/test_playbooks.py. Here: the
healing policy never asks for a reboot it cannot aim, and the playbook checks come
before the reboot task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.events import Events
from swarmctl.exceptions import SwarmError
from swarmctl.healing import Healer, default_playbook_dir
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry


class Recorder:
    """Stands in for ansible_exec.run_playbook and records what it was asked to run."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, playbook: str, inventory: Path, limit: str, extra: dict[str, Any], data_root: Path,
                 **_: Any) -> Any:
        self.calls.append((playbook, limit, dict(extra)))
        return type("Result", (), {"ok": True, "summary": f"{playbook} [{limit}]: successful"})()


@pytest.fixture
def fleet(redis_client: redis.Redis, config: Config, tmp_path: Path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all: {}\n")
    cfg = config.with_overrides(healing__inventory=str(inventory), healing__cooldown_seconds=0,
                                healing__restarts_before_reboot=1, healing__allow_reboot=True)
    registry = DroneRegistry(redis_client, cfg)
    return cfg, registry, Queue(redis_client, cfg), Recorder()


@pytest.mark.parametrize("recorded", [None, ""])
def test_no_reboot_without_a_recorded_machine_id(recorded: str | None, fleet, redis_client) -> None:
    cfg, registry, queue, recorder = fleet
    token = registry.enroll("tarn")
    if recorded is not None:
        redis_client.hset(keys.drone("tarn"), "machine_id", recorded)
    registry.heartbeat("tarn", token, {"status": "idle"})
    healer = Healer(redis_client, cfg, recorder)
    outcome = healer.act("tarn", "reboot", operator=True)  # even an operator's explicit request
    assert not outcome.ok and "no machine id" in outcome.summary
    for _ in range(3):  # and the automatic policy, with reboots allowed, after restarts failed
        registry.ground("tarn", 300, queue)
        healer.consider(registry.list())
        healer.wait(10)
    assert [c[0] for c in recorder.calls if c[0] == "drone-reboot.yml"] == []
    assert recorder.calls and all(c[0] == "drone-restart.yml" for c in recorder.calls)
    refusals = [e for e in Events(redis_client).since() if e.kind == "heal-refused"]
    assert refusals and all("refusing to reboot an unidentified host" in e.reason for e in refusals)


def test_a_reboot_is_aimed_at_one_named_host_with_its_identity(fleet, redis_client) -> None:
    cfg, registry, _queue, recorder = fleet
    registry.enroll("tarn", machine_id="0123456789abcdef0123456789abcdef")
    Healer(redis_client, cfg, recorder).act("tarn", "reboot", operator=True)
    assert recorder.calls == [("drone-reboot.yml", "tarn", {
        "target": "tarn", "expected_machine_id": "0123456789abcdef0123456789abcdef"})]


def test_no_action_on_a_drone_that_is_not_enrolled(fleet, redis_client) -> None:
    cfg, _registry, _queue, recorder = fleet
    with pytest.raises(SwarmError, match="no drone named"):
        Healer(redis_client, cfg, recorder).act("all", "reboot", operator=True)
    assert recorder.calls == []


def test_reboot_playbook_refuses_before_it_reboots() -> None:
    play = yaml.safe_load((default_playbook_dir() / "drone-reboot.yml").read_text())[0]
    names = [t["name"] for t in play["tasks"]]
    reboot = next(i for i, t in enumerate(play["tasks"]) if "ansible.builtin.reboot" in t)
    before = " ".join(names[:reboot]).lower()
    assert "protected" in before and "not the expected drone" in before and "explicit target" in before
    assert play["serial"] == 1 and "target" in play["hosts"]
    guard = play["tasks"][0]["ansible.builtin.assert"]["that"]
    assert any("'all'" in cond for cond in guard), "a target of 'all' must be refused"


# -- a drone named like a group (real ansible-runner) --------------------------------------------------

def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    """The example inventory's shape: a protected binhost host in group ``binhost``, drones, a
    protected gateway drone. Every address is a closed port: a play that got past its guards
    shows up as ``unreachable``, a refusal as ``failed`` -- and nothing here is ever touched."""
    port = _closed_port()
    reach = {"ansible_host": "127.0.0.1", "ansible_port": port, "ansible_connection": "ssh",
             "ansible_python_interpreter": "/usr/bin/python3",
             "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {
        "binhost": {"hosts": {"binhost.swarm.lan": {**reach, "protected": True}}},
        "drones": {"hosts": {"drone-a": {**reach, "protected": False}, "gateway": {**reach, "protected": True}}},
    }}}))
    return path


@pytest.fixture
def real_healer(redis_client: redis.Redis, config: Config, inventory: Path, tmp_path: Path) -> Healer:
    cfg = config.with_overrides(healing__inventory=str(inventory), healing__cooldown_seconds=0)
    healer = Healer(redis_client, cfg)  # the real executor: ansible_exec.run_playbook
    healer.data_root = tmp_path / "runner"
    return healer


def _heal_refusals(client: redis.Redis, name: str) -> list[str]:
    return [e.reason for e in Events(client).since() if e.kind == "heal-refused" and e.drone == name]


def test_a_drone_named_like_a_group_is_not_healed(real_healer: Healer, redis_client: redis.Redis) -> None:
    """The issue's attack: a drone enrolled as "binhost" -- the restart reached the binhost host."""
    DroneRegistry(redis_client, real_healer.config).enroll("binhost")
    outcome = real_healer.act("binhost", "restart", operator=True)
    assert not outcome.ok
    assert "REFUSED" in outcome.summary and "is an inventory group" in outcome.summary, outcome.summary
    assert "nothing was run" in outcome.summary
    assert not (real_healer.data_root).exists() or not any(real_healer.data_root.iterdir())
    assert _heal_refusals(redis_client, "binhost")


def test_restart_playbook_refuses_a_group_target_and_protected_hosts(inventory: Path, tmp_path: Path) -> None:
    """Even when run by hand with a group as target, the playbook refuses before it connects."""
    from swarmctl.ansible_exec import run_playbook

    group = run_playbook("drone-restart.yml", inventory, "binhost", {"target": "binhost"}, tmp_path / "r1")
    line = group.hosts["binhost.swarm.lan"]
    assert not group.ok and line.startswith("failed") and "REFUSED" in line and "not named by" in line, line
    protected = run_playbook("drone-restart.yml", inventory, "gateway", {"target": "gateway"}, tmp_path / "r2")
    line = protected.hosts["gateway"]
    assert not protected.ok and line.startswith("failed") and "protected" in line, line
    # The control: an ordinary drone gets past every guard (and finds nobody at the address).
    plain = run_playbook("drone-restart.yml", inventory, "drone-a", {"target": "drone-a"}, tmp_path / "r3")
    assert plain.hosts["drone-a"].startswith("unreachable"), plain.summary


def test_healing_a_protected_drone_is_refused_by_the_playbook(real_healer: Healer, redis_client: redis.Redis) -> None:
    DroneRegistry(redis_client, real_healer.config).enroll("gateway")
    outcome = real_healer.act("gateway", "restart", operator=True)
    assert not outcome.ok and "REFUSED" in outcome.summary and "protected" in outcome.summary, outcome.summary
    assert _heal_refusals(redis_client, "gateway")


@pytest.mark.parametrize("name", ["all", "ungrouped", "drones", "nosuchhost", "localhost"])
def test_only_one_named_inventory_host_is_a_valid_limit(name: str, inventory: Path) -> None:
    from swarmctl.ansible_exec import single_host_problem

    assert single_host_problem(inventory, name) is not None
    assert single_host_problem(inventory, "drone-a") is None
