"""The whole swarm from site.yml alone, on fresh test-bed hosts, healing itself as provisioned.

Five hosts: h1 the binhost with Redis (Debian's redis-server package, started by the binhost
role with a password and AOF), h2 the orchestrator, h3-h5 drones. `playbooks/site.yml` is the
only thing run against them: swarmctl is installed on every host from a wheel built from this
checkout (into a venv under /var, private to each host: the bed shares /usr and /opt), the
binhost serves, the orchestrator runs with healing on, the drones are enrolled on the
orchestrator host and run the command builder. h5's builds fail: its breaker grounds it and the
orchestrator, with the SSH key, healing account, sudo rule and healing inventory the roles made,
restarts it through ansible-runner and drone-restart.yml; the others build the queued world.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import yaml

from swarmctl import keys
from swarmctl.ansible_exec import run_playbook
from swarmctl.events import Event, Events
from tests.ansible.test_cron import cronie  # noqa: F401 - the shared cronie build fixture
from tests.helpers import wait_for
from tests.testbed import TestBed
from tests.testbed.fixtures import require_testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
VENV = "/var/lib/build-swarm/venv"
SWARMCTL = f"{VENV}/bin/swarmctl"
ORCH_CONFIG = "/etc/build-swarm/orchestrator.yml"
WORLD = [f"app-misc/site{i}-1.0" for i in range(24)]
BROKEN = "h5"
PATTERN = "--config /etc/build-swarm/swarm.yml drone run"


@dataclass
class Site:
    bed: TestBed
    inventory: Path
    client: redis.Redis
    runs: Path

    def events(self, kind: str, drone: str | None = None, after: float = 0.0) -> list[Event]:
        return [e for e in Events(self.client).since("0-0")
                if e.kind == kind and (drone is None or e.drone == drone) and e.ts > after]


def inventory_vars(bed: TestBed, wheel: Path, password: str, cronie_prefix: Path) -> dict[int, dict[str, object]]:
    binhost = bed.host(1).address
    drone = {
        "swarm_drone_enroll_host": "h2",
        "swarm_drone_redis_host": binhost,
        "swarm_drone_redis_password": password,
        "swarm_drone_binhost_url": f"http://{binhost}:8770",
        "swarm_drone_builder": "command",
        "swarm_drone_config_extra": {"breaker": {"failures": 3, "ground_seconds": 900},
                                     "queue": {"max_attempts": 10000, "block_after_drones": 100},
                                     "orchestrator": {"offline_after": 30.0}},
        "swarm_drone_stop_timeout": 15,
        "swarm_drone_verify_delay": 1,
        # The bed's host key (sshd's own, not /etc/ssh's) and how a bed host reboots.
        "reboot_command": "/bin/kill -TERM 1",
        "boot_time_command": "cat /run/fake_boot_id",
    }
    per_host: dict[int, dict[str, object]] = {
        1: {"swarm_binhost_redis_password": password,
            "swarm_binhost_redis_bind": f"127.0.0.1 {binhost}",
            "swarm_cron_install_method": "prefix", "swarm_cron_prefix": str(cronie_prefix),
            "swarm_cron_nightly_playbook_dir": "/var/lib/build-swarm/playbooks",
            "swarm_swarmctl_command": f"{SWARMCTL} --config /etc/build-swarm/binhost.yml",
            "protected": True},
        2: {"swarm_orchestrator_redis_host": binhost, "swarm_orchestrator_redis_password": password,
            "swarm_orchestrator_settings": {
                # Long enough that the converge's own restart of a drone is not "offline" (healed).
                "orchestrator": {"interval": 1.0, "offline_after": 30.0},
                "healing": {"cooldown_seconds": 4, "restarts_before_reboot": 2, "allow_reboot": False},
                "breaker": {"failures": 3, "ground_seconds": 900}},
            "swarm_swarmctl_command": f"{SWARMCTL} --config {ORCH_CONFIG}",
            "protected": True},
    }
    # The healthy drones take a second per build, so the broken one claims (and fails) often.
    healthy, broken = ["sh", "-c", "sleep 1", "build", "{cpv}"], ["false", "{cpv}"]
    for i, command in ((3, healthy), (4, healthy), (5, broken)):
        per_host[i] = {**drone, "protected": i == 4,
                       "swarm_ssh_host_key_file": str(bed.host(i).hostdir / "ssh_host_ed25519_key.pub"),
                       "swarm_drone_settings": {"heartbeat_interval": 1.0, "poll_interval": 0.5,
                                                "command": command}}
    return per_host


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, cronie: Path,  # noqa: F811
         request: pytest.FixtureRequest) -> Iterator[Site]:
    require_testbed()
    for tool, package in (("/usr/bin/redis-server", "redis-server"), ("/usr/bin/sudo", "sudo")):
        if not Path(tool).exists():
            pytest.skip(f"the binhost role installs Debian's redis-server and the drones need sudo: "
                        f"apt-get install {package}")
    work = tmp_path_factory.mktemp("site")
    wheel, wheelhouse = request.getfixturevalue("swarm_wheel")  # after the skips: built once per session
    password = "site-e2e-" + wheel.stat().st_mtime_ns.to_bytes(8, "little").hex()
    with TestBed(5, "swsite", boot_timeout=60) as bed:
        inventory = bed.inventory(
            work / "hosts.yml",
            {"swarm_venv": VENV, "swarm_wheel": str(wheel), "swarm_wheelhouse": str(wheelhouse)},
            groups={"binhost": [1], "orchestrator": [2], "drones": [3, 4, 5]},
            host_vars=inventory_vars(bed, wheel, password, cronie),
        )
        result = run_playbook("site.yml", inventory, "all", {}, work / "runs", timeout=900)
        assert result.ok, result.summary
        client = redis.Redis(host=bed.host(1).address, port=6379, password=password, decode_responses=True)
        try:
            yield Site(bed, inventory, client, work / "runs")
        finally:
            client.close()


@pytest.mark.timeout(900)
def test_site_yml_alone_brings_up_a_swarm_that_builds_and_heals_itself(site: Site) -> None:
    bed, client = site.bed, site.client
    # Redis from Debian's package, password and AOF from the role.
    assert client.config_get("appendonly")["appendonly"] == "yes"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=bed.host(1).address, port=6379).ping()
    assert "redis-server" in bed.run(1, "ls /etc/rc2.d").stdout
    # Every host runs swarmctl from the wheel in its own venv; no checkout is involved.
    for i in (1, 2, 3):
        origin = bed.run(i, [f"{VENV}/bin/python", "-c", "import swarmctl; print(swarmctl.__file__)"], check=True)
        assert origin.stdout.startswith(f"{VENV}/lib/"), origin.stdout
    # The orchestrator holds the lease, the drones heartbeat, the binhost answers.
    wait_for(lambda: client.get(keys.LEADER), 30, "the orchestrator to take the leader lease")
    for name in ("h3", "h4", "h5"):
        wait_for(lambda n=name: client.hget(keys.drone(n), "status") == "idle", 40, f"{name} to heartbeat")
    assert _http_status(f"http://{bed.host(1).address}:8770/Packages") in (200, 404)  # no index before uploads

    # The doctor on the orchestrator host finds the playbooks in the installed package.
    doctor = bed.run(2, [SWARMCTL, "--config", ORCH_CONFIG, "doctor", "--json"])
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert checks["playbooks"]["state"] == "ok", checks["playbooks"]
    assert f"{VENV}/lib/" in checks["playbooks"]["summary"] and "(package)" in checks["playbooks"]["summary"]

    # The healing inventory, rendered from the control node's: the drones, their flags, the account.
    heal = yaml.safe_load(bed.read_file(2, "/etc/build-swarm/heal-inventory.yml") or "")["all"]
    assert sorted(heal["hosts"]) == ["h3", "h4", "h5"]
    assert heal["hosts"]["h4"]["protected"] is True and heal["hosts"]["h5"]["protected"] is False
    assert heal["vars"]["ansible_user"] == "swarm-heal"
    assert heal["hosts"]["h5"]["swarm_drone_service_manager"] == "sysvinit"
    # The account may run the restart (and, unprotected, the reboot) through sudo, nothing else.
    rules = bed.run(5, ["sudo", "-l", "-U", "swarm-heal"], check=True).stdout
    assert "/etc/init.d/swarm-drone restart" in rules and "/bin/kill -TERM 1" in rules
    assert "kill" not in bed.run(4, ["sudo", "-l", "-U", "swarm-heal"], check=True).stdout
    denied = bed.run(5, ["su", "-s", "/bin/sh", "swarm-heal", "-c", "sudo -n /bin/cat /etc/shadow"])
    assert denied.returncode != 0

    # The world is queued and built; the broken drone is grounded and restarted by the orchestrator.
    pid_before = wait_for(lambda: _pid(bed, 5), 10, "h5's drone process")
    t0 = float(client.time()[0])
    queued = bed.run(2, [SWARMCTL, "--config", ORCH_CONFIG, "queue", "add", *WORLD])
    assert queued.returncode == 0, queued.stderr
    grounded = wait_for(lambda: site.events("grounded", BROKEN, t0), 90, "the breaker to ground h5")[0]
    wait_for(lambda: site.events("restarted", BROKEN, grounded.ts), 120, "the orchestrator to restart h5 over SSH")
    history = [(e.ts, e.kind, e.drone, e.reason) for e in Events(client).since("0-0")]
    restarting = site.events("restarting", BROKEN, grounded.ts - 1)
    assert restarting and restarting[0].reason.startswith("level 2, by orchestrator"), history
    pid_after = wait_for(lambda: _pid(bed, 5), 20, "h5's new drone process")
    assert pid_after != pid_before, f"the service really restarted: a new process; events: {history}"
    wait_for(lambda: client.hget(keys.drone(BROKEN), "pid") == str(pid_after), 20, "the new process's heartbeat")
    assert "Accepted publickey for swarm-heal" in (bed.host(5).hostdir / "sshd.log").read_text()
    built = wait_for(lambda: {e.job for e in site.events("built")} >= set(WORLD) or None, 90,
                     "the healthy drones to build the whole world")
    assert built
    assert not [e for e in site.events("built") if e.drone == BROKEN]


def _pid(bed: TestBed, i: int) -> int | None:
    proc = bed.run(i, ["pgrep", "-f", "--", PATTERN])
    return int(proc.stdout.split()[0]) if proc.returncode == 0 and proc.stdout.strip() else None


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
