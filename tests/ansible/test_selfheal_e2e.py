"""Self-healing end to end: real drones on SSH hosts, a real orchestrator, real playbooks.

Three test-bed hosts get the real drone (`swarmctl drone run`, installed and enabled at boot by
the swarm_drone role) against a password-protected Redis on the bridge; its command builder
fails every build (`false`). The orchestrator runs on the controller with healing enabled and
the bed's inventory, so the breaker grounds each drone, the healer restarts its service through
drone-restart.yml (ansible-runner, real ssh), the restarts do not help, and a reboot is refused
without permission. Then: h1's command is fixed in its config file and an operator reboots it
(`swarmctl heal h1 --reboot --yes`): the host really reboots, the drone comes back by itself and
builds. With reboots allowed, h2 (protected) and h3 (enrolled with another machine's id) are
still never rebooted, and the events say why.

The tests share one bed and run in order (each builds on the state the previous one left).
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmctl.ansible_exec import run_playbook
from tests.ansible.helpers import BedSwarm
from tests.helpers import wait_for
from tests.testbed import TestBed
from tests.testbed.fixtures import require_testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

JOBS = [f"app-misc/heal{i}-1.0" for i in range(6)]
COOLDOWN = 4
RESTARTS_BEFORE_REBOOT = 2
#: Controller-side settings (the orchestrator's and the CLI's config file).
SETTINGS = {
    "orchestrator": {"interval": 1.0, "offline_after": 6.0},
    "healing": {"enabled": True, "cooldown_seconds": COOLDOWN, "restarts_before_reboot": RESTARTS_BEFORE_REBOOT,
                "allow_reboot": False},
    "breaker": {"failures": 3, "ground_seconds": 900},
}
#: Drone-side: the breaker and queue limits are applied by the drone when it reports a failure.
#: Every drone fails every package here, so a package must not be blamed (blocked) or given up.
DRONE_EXTRA = {
    "breaker": {"failures": 3, "ground_seconds": 900},
    "queue": {"max_attempts": 10000, "block_after_drones": 100},
    "orchestrator": {"offline_after": 6.0},
}
PATTERN = "--config /etc/build-swarm/swarm.yml drone run"


class Heal:
    """The module's shared state: the bed, the swarm, the inventory, and what was seen at the start."""

    def __init__(self, bed: TestBed, swarm: BedSwarm, inventory: Path) -> None:
        self.bed = bed
        self.swarm = swarm
        self.inventory = inventory
        self.boot_ids = {i: bed.boot_id(i) for i in (1, 2, 3)}
        self.pids = {i: drone_pid(bed, i) for i in (1, 2, 3)}
        self.orchestrator = swarm.start_orchestrator()


def drone_pid(bed: TestBed, i: int) -> int | None:
    """The drone daemon's pid inside host hI (its own PID namespace), None if it is not running."""
    proc = bed.run(i, ["pgrep", "-f", "--", PATTERN])
    return int(proc.stdout.split()[0]) if proc.returncode == 0 and proc.stdout.strip() else None


@pytest.fixture(scope="module")
def heal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Heal]:
    require_testbed()
    work = tmp_path_factory.mktemp("selfheal")
    inventory_path = work / "hosts.yml"
    with TestBed(3, "swheal") as bed:
        swarm = BedSwarm(bed, work, {**SETTINGS, "healing": {**SETTINGS["healing"], "inventory": str(inventory_path)}})
        try:
            tokens = {1: swarm.enroll(1), 2: swarm.enroll(2),
                      # h3 is enrolled with another machine's id: "the wrong host behind this address".
                      3: swarm.enroll(3, machine_id=secrets.token_hex(16))}
            inventory = bed.inventory(
                inventory_path,
                swarm.drone_vars(settings={"builder": "command", "command": ["false", "{cpv}"]}, extra=DRONE_EXTRA),
                groups={"drones": [1, 2, 3]},
                host_vars={
                    1: {"swarm_drone_token": tokens[1], "protected": False},
                    2: {"swarm_drone_token": tokens[2], "protected": True},
                    3: {"swarm_drone_token": tokens[3], "protected": False},
                },
            )
            result = run_playbook("site.yml", inventory, "drones", {}, work / "runs")
            assert result.ok, result.summary
            for name in ("h1", "h2", "h3"):
                wait_for(lambda n=name: swarm.drone(n).get("status") == "idle", 20, f"{name} to heartbeat")
            state = Heal(bed, swarm, inventory)
            yield state
        finally:
            swarm.close()


def _reasons(swarm: BedSwarm, kind: str, drone: str) -> list[str]:
    return [e.reason for e in swarm.events(kind, drone)]


def test_grounded_drone_is_restarted_through_ansible_and_heartbeats_again(heal: Heal) -> None:
    swarm, bed = heal.swarm, heal.bed
    assert all(heal.pids.values()), heal.pids
    # Enabled at boot by the role (Debian-style init links in the host's own /etc).
    assert bed.run(1, "ls /etc/rc2.d | grep -q swarm-drone").returncode == 0
    swarm.cli("queue", "add", *JOBS)
    wait_for(lambda: swarm.events("grounded", "h1"), 30, "h1 to be grounded by its breaker")
    wait_for(lambda: swarm.events("restarted", "h1"), 60, "the orchestrator to restart h1")
    assert swarm.events("restarting", "h1")[0].reason.startswith("level 2, by orchestrator")
    new_pid = wait_for(lambda: drone_pid(bed, 1), 20, "h1's drone process")
    assert new_pid != heal.pids[1], "the service really restarted: a new process"
    # The new process heartbeats: its pid is what Redis sees, and it works again (released).
    wait_for(lambda: swarm.drone("h1").get("pid") == str(new_pid), 20, "the new process's heartbeat")
    restarted_at = swarm.events("restarted", "h1")[0].ts
    wait_for(lambda: [e for e in swarm.events("claimed") if e.drone == "h1" and e.ts > restarted_at], 30,
             "h1 to claim work again after its restart")


def test_restarts_that_do_not_help_end_in_a_refused_reboot(heal: Heal) -> None:
    swarm, bed = heal.swarm, heal.bed
    for name in ("h1", "h3"):
        wait_for(lambda n=name: [r for r in _reasons(swarm, "heal-refused", n) if "permission" in r], 120,
                 f"the healer to ask for permission to reboot {name}")
        assert len(swarm.events("restarted", name)) >= RESTARTS_BEFORE_REBOOT
        assert not swarm.events("rebooting", name), "no reboot without permission"
    # A protected host is not even restarted: drone-restart.yml refuses it (security.md).
    wait_for(lambda: [r for r in _reasons(swarm, "heal-refused", "h2") if "protected" in r], 120,
             "the restart of protected h2 to be refused")
    assert not swarm.events("restarted", "h2") and not swarm.events("rebooting", "h2")
    assert {i: bed.boot_id(i) for i in (1, 2, 3)} == heal.boot_ids, "no host was rebooted"


def test_operator_reboot_brings_the_fixed_drone_back_by_itself(heal: Heal) -> None:
    swarm, bed = heal.swarm, heal.bed
    # Fix h1's builder in its config file; only the reboot makes the daemon read it again.
    fix = ("import yaml, pathlib; p = pathlib.Path('/etc/build-swarm/swarm.yml'); d = yaml.safe_load(p.read_text()); "
           "d['drone']['command'] = ['true', '{cpv}']; p.write_text(yaml.safe_dump(d))")
    bed.run(1, [sys.executable, "-c", fix], check=True)
    pid_before = drone_pid(bed, 1)
    built_before = len(swarm.events("built"))
    assert built_before == 0
    proc = swarm.cli("heal", "h1", "--reboot", "--yes", "--inventory", str(heal.inventory), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    boot = bed.boot_id(1)
    assert boot and boot != heal.boot_ids[1], "h1 really rebooted"
    assert swarm.events("rebooted", "h1") and swarm.events("rebooting", "h1")[0].reason.endswith("by operator")
    # The service came back by itself at boot (nobody started it), and the drone works again.
    new_pid = drone_pid(bed, 1)
    assert new_pid is not None
    wait_for(lambda: swarm.drone("h1").get("status") in ("idle", "building"), 30, "h1 to heartbeat after its reboot")
    built = wait_for(lambda: [e for e in swarm.events("built") if e.drone == "h1"], 40, "h1 to build a queued job")
    assert built[0].job in JOBS
    assert pid_before is not None
    assert {i: bed.boot_id(i) for i in (2, 3)} == {i: heal.boot_ids[i] for i in (2, 3)}


def test_protected_and_misidentified_hosts_are_never_rebooted(heal: Heal) -> None:
    swarm, bed = heal.swarm, heal.bed
    # Reboots allowed from now on: the orchestrator tries h2 and h3 by itself.
    swarm.stop(heal.orchestrator)
    allowed = swarm.write_config(
        swarm.work / "allow-reboot.yml",
        {**swarm.settings, "healing": {**swarm.settings["healing"], "allow_reboot": True}})
    heal.orchestrator = swarm.start_orchestrator(allowed)
    h2 = wait_for(lambda: [r for r in _reasons(swarm, "heal-refused", "h2") if "REFUSED" in r], 90,
                  "the reboot of protected h2 to be refused")
    assert "protected" in h2[0]
    h3 = wait_for(lambda: [r for r in _reasons(swarm, "heal-refused", "h3") if "REFUSED" in r], 90,
                  "the reboot of misidentified h3 to be refused")
    assert "identity mismatch on h3" in h3[0] and bed.host(3).machine_id in h3[0]
    assert swarm.events("rebooting", "h2") and swarm.events("rebooting", "h3"), "the orchestrator did try"
    # An operator cannot do it either.
    proc = swarm.cli("heal", "h2", "--reboot", "--yes", check=False)
    assert proc.returncode != 0 and "REFUSED" in proc.stdout + proc.stderr
    assert bed.boot_id(2) == heal.boot_ids[2] and bed.boot_id(3) == heal.boot_ids[3], "h2 and h3 never rebooted"
    assert not swarm.events("rebooted", "h2") and not swarm.events("rebooted", "h3")
