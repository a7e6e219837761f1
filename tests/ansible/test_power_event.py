"""The story's power event (three drones lost at Andromeda), on real SSH hosts.

Three test-bed drones run the real `swarmctl drone run` (installed and enabled at boot by the
swarm_drone role; each build sleeps a few seconds) and a fourth host runs the real orchestrator
(swarm_orchestrator role), all against one password-protected Redis on the bridge. Mid-build,
two drones lose power (SIGKILL of the host's PID 1; the host boots again after
``RESTART_DELAY`` s). Their jobs must be reclaimed within ``offline_after`` + a sweep and
finished by the survivor; the lost drones must come back by themselves and build again; and in
the end every job is built exactly once, with no stale completion applied.

A second test kills one drone process mid-build and restarts its service at once (a crash and a
quick supervisor restart): the drone is back before ``offline_after``, so the orchestrator never
sees it offline, and its orphaned job must still go back to the queue and be built once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from swarmctl import keys
from swarmctl.ansible_exec import run_playbook
from tests.ansible.helpers import SWARMCTL_BIN, BedSwarm
from tests.helpers import wait_for
from tests.testbed import GATEWAY, TestBed
from tests.testbed.fixtures import require_testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

OFFLINE_AFTER = 5.0
INTERVAL = 1.0
#: A host stays dark this long after losing power: longer than offline_after, so the
#: orchestrator (not the drone itself) must give its work away.
RESTART_DELAY = 13.0
BUILD_SECONDS = 3
JOBS = [f"app-misc/power{i:02d}-1.0" for i in range(15)]


class Power:
    def __init__(self, bed: TestBed, swarm: BedSwarm) -> None:
        self.bed = bed
        self.swarm = swarm


@pytest.fixture(scope="module")
def power(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Power]:
    require_testbed()
    work = tmp_path_factory.mktemp("power")
    with TestBed(4, "swpower", restart_delay=RESTART_DELAY) as bed:
        settings = {"orchestrator": {"interval": INTERVAL, "offline_after": OFFLINE_AFTER}}
        swarm = BedSwarm(bed, work, settings)
        try:
            tokens = {i: swarm.enroll(i) for i in (1, 2, 3)}
            inventory = bed.inventory(
                work / "hosts.yml",
                {
                    **swarm.drone_vars(
                        settings={"builder": "command",
                                  "command": ["sh", "-c", f"echo building $0; sleep {BUILD_SECONDS}", "{cpv}"]},
                        extra={"orchestrator": {"offline_after": OFFLINE_AFTER}},
                    ),
                    # h4: the real orchestrator, installed and started by its role.
                    "swarm_orchestrator_install_method": "path",
                    "swarm_orchestrator_swarmctl_path": SWARMCTL_BIN,
                    "swarm_orchestrator_redis_host": GATEWAY,
                    "swarm_orchestrator_redis_port": swarm.redis.port,
                    "swarm_orchestrator_redis_password": swarm.password,
                    "swarm_orchestrator_settings": settings,
                    # Power events need no provisioned healing (test_site_e2e covers that).
                    "swarm_orchestrator_healing": False,
                    "swarm_orchestrator_stop_timeout": 10,
                },
                groups={"drones": [1, 2, 3], "orchestrator": [4]},
                host_vars={i: {"swarm_drone_token": tokens[i]} for i in (1, 2, 3)},
            )
            t0 = time.time()
            result = run_playbook("site.yml", inventory, "drones:orchestrator", {}, work / "runs")
            print("PLAYBOOK", time.time() - t0)
            assert result.ok, result.summary
            leader = wait_for(lambda: swarm.events("leader"), 20, "the orchestrator on h4 to take the lead")
            assert "orchestrator h4:" in leader[0].reason
            for name in ("h1", "h2", "h3"):
                wait_for(lambda n=name: swarm.drone(n).get("status") == "idle", 20, f"{name} to heartbeat")
            print("READY", time.time() - t0)
            yield Power(bed, swarm)
        finally:
            swarm.close()


def _built_by(swarm: BedSwarm) -> dict[str, list[str]]:
    """Job -> the drones of its `built` events (one entry per applied completion)."""
    out: dict[str, list[str]] = {}
    for event in swarm.events("built"):
        out.setdefault(event.job, []).append(event.drone)
    return out


def _assert_each_built_once(swarm: BedSwarm, jobs: list[str]) -> None:
    built = _built_by(swarm)
    assert sorted(built) == sorted(jobs)
    counts = Counter({job: len(drones) for job, drones in built.items()})
    assert set(counts.values()) == {1}, f"built more than once: {[j for j, c in counts.items() if c > 1]}"
    # Only a drone that lost its job (h1, h2) may report for it too late; the survivor's reports
    # are all its own, so a refused one would be a lost build.
    assert [e for e in swarm.events("stale") if e.drone not in ("h1", "h2")] == []
    for job, drones in built.items():
        state, built_by = swarm.client.hmget(keys.job(job), "state", "built_by")
        assert (state, built_by) == ("built", drones[0]), f"{job}: the one applied completion is the recorded one"


def test_two_drones_lose_power_mid_build(power: Power) -> None:
    bed, swarm = power.bed, power.swarm
    swarm.cli("queue", "add", "--estimate", str(BUILD_SECONDS), *JOBS)

    def both_building() -> dict[str, str] | None:
        tasks = {n: swarm.drone(n).get("task", "") for n in ("h1", "h2")}
        busy = all(swarm.drone(n).get("status") == "building" and tasks[n] for n in tasks)
        return tasks if busy and len(swarm.events("built")) >= 3 else None

    lost = wait_for(both_building, 60, "h1 and h2 to be building (after a few builds)")
    boot = {i: bed.boot_id(i) for i in (1, 2)}
    cut_at = time.time()
    bed.power_cut(1)
    bed.power_cut(2)

    # Level 1: the orchestrator reclaims their jobs once they are offline, while they are still dark.
    def reclaimed() -> dict[str, float] | None:
        found = {e.job: e.ts for e in swarm.events("reclaimed") if e.job in lost.values() and e.ts >= cut_at}
        return found if len(found) == 2 else None

    when = wait_for(reclaimed, OFFLINE_AFTER + 15, "the lost drones' jobs to be reclaimed")
    delay = max(when.values()) - cut_at
    assert delay <= OFFLINE_AFTER + INTERVAL + 2.5, f"reclaimed {delay:.1f} s after the power cut"
    assert [e for e in swarm.events("reclaimed") if e.job in when and "offline" in e.reason]
    assert delay < RESTART_DELAY, "reclaimed while the hosts were still dark"

    # The survivor finishes them (the lost hosts are still booting).
    def finished() -> dict[str, list[str]] | None:
        built = _built_by(swarm)
        return built if all(job in built for job in lost.values()) else None

    built = wait_for(finished, 30, "the reclaimed jobs to be built")
    assert [built[job] for job in lost.values()] == [["h3"], ["h3"]], built

    # The lost drones boot again, their services start by themselves, and they rejoin.
    for i in (1, 2):
        bed.wait_booted(i, boot[i], timeout=60)
    for name in ("h1", "h2"):
        wait_for(lambda n=name: [e for e in swarm.events("built") if e.drone == n and e.ts > cut_at + RESTART_DELAY],
                 60, f"{name} to rejoin and build again after its reboot")

    wait_for(lambda: len(_built_by(swarm)) == len(JOBS), 90, "every job to be built")
    _assert_each_built_once(swarm, JOBS)
    status = json.loads(swarm.cli("status", "--json", check=False).stdout)
    assert status["queue"]["built"] == len(JOBS) and status["queue"]["delegated"] == 0
    assert status["swarm"]["drones_online"] == 3


def test_a_drone_restarted_at_once_gives_its_orphaned_job_back(power: Power) -> None:
    bed, swarm = power.bed, power.swarm
    jobs = [f"app-misc/crash{i}-1.0" for i in range(4)]
    swarm.cli("queue", "add", "--estimate", str(BUILD_SECONDS), *jobs)
    task = wait_for(lambda: swarm.drone("h1").get("task") in jobs and swarm.drone("h1")["task"], 30,
                    "h1 to build one of the new jobs")
    killed_at = time.time()
    # A crash (SIGKILL) and a supervisor that starts the service again at once.
    bed.run(1, "kill -KILL $(cat /run/swarm-drone.pid) && sleep 0.3 && /etc/init.d/swarm-drone start", check=True)
    wait_for(lambda: [e for e in swarm.events("reclaimed") if e.job == task and e.ts >= killed_at], 20,
             f"{task} to go back to the queue")
    wait_for(lambda: all(j in _built_by(swarm) for j in jobs), 60, "the new jobs to be built")
    _assert_each_built_once(swarm, JOBS + jobs)
