"""The whole swarm from site.yml alone, on fresh test-bed hosts, healing itself as provisioned.

Five hosts: h1 the binhost with Redis (Debian's redis-server package, started by the binhost
role with a password and AOF), its signing key (made by the role), cronie with the nightly job
and a binhost client, h2 the orchestrator, h3-h5 drones. The site playbook of the INSTALLED
collection (``ansible-galaxy collection build`` + ``install``, run by its FQCN) is the only thing
run against them: swarmctl is installed on every host from a wheel built from this checkout
(into a venv under /var, private to each host: the bed shares /usr and /opt), the binhost
serves and signs, the orchestrator runs with healing on, the drones are enrolled on the
orchestrator host and build with real portage in prefixes made from the sample overlay.

Then nothing is done by hand: cron fires the nightly playbook (every minute here), which queues
the world the binhost lacks; the drones build it; the binhost verifies, signs and indexes the
uploads; a later nightly run promotes the generation when its gates pass; the client installs
the world with ``emerge --getbinpkgonly`` and portage's signature verification on. h5's builds
fail (a broken emerge argument in its config): its breaker grounds it and the orchestrator, with
the SSH key, healing account, sudo rule and healing inventory the roles made, restarts it through
ansible-runner and drone-restart.yml. Re-running site.yml changes nothing and restarts nothing.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import yaml

from swarmctl import keys
from swarmctl.ansible_exec import PlaybookResult, run_playbook
from swarmctl.events import Event, Events
from swarmctl.overlay import DEFAULT_CPVS, DEFAULT_WORLD
from tests.ansible.helpers import COLLECTION, install_collection
from tests.ansible.test_cron import cronie  # noqa: F401 - the shared cronie build fixture
from tests.helpers import wait_for
from tests.testbed import TestBed
from tests.testbed.fixtures import require_testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
VENV = "/var/lib/build-swarm/venv"
SWARMCTL = f"{VENV}/bin/swarmctl"
ORCH_CONFIG = "/etc/build-swarm/orchestrator.yml"
BINHOST_CONFIG = "/etc/build-swarm/binhost.yml"
BROKEN = "h5"
PATTERN = "--config /etc/build-swarm/swarm.yml drone run"
#: The client's portage prefix on h1 (made by the swarm_client role); the nightly's resolver uses it too.
CLIENT = "/var/lib/build-swarm/client"
#: The sample overlay as installed in each host's venv (the bed's python3 is this one's version).
OVERLAY = f"{VENV}/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages/swarmctl/overlay/tree"
#: The daemons whose processes must survive a re-run of site.yml (host, pgrep -f pattern).
DAEMONS = [(1, "binhost serve"), (1, "redis-server"), (1, "sbin/crond"), (2, "orchestrator run"),
           (3, PATTERN), (4, PATTERN), (5, PATTERN)]


@dataclass
class Site:
    bed: TestBed
    inventory: Path
    client: redis.Redis
    runs: Path
    collections: Path

    def converge(self) -> PlaybookResult:
        """site.yml of the installed collection, by its FQCN, against every host."""
        return run_playbook(f"{COLLECTION}.site", self.inventory, "all", {}, self.runs, timeout=1200,
                            collections_path=self.collections)

    def events(self, kind: str, drone: str | None = None, after: float = 0.0) -> list[Event]:
        return [e for e in Events(self.client).since("0-0")
                if e.kind == kind and (drone is None or e.drone == drone) and e.ts > after]


def inventory_vars(bed: TestBed, password: str, cronie_prefix: Path) -> dict[int, dict[str, object]]:
    binhost = bed.host(1).address
    drone = {
        "swarm_drone_enroll_host": "h2",
        "swarm_drone_redis_host": binhost,
        "swarm_drone_redis_password": password,
        "swarm_drone_binhost_url": f"http://{binhost}:8770",
        "swarm_drone_builder": "portage",
        "swarm_drone_config_extra": {"breaker": {"failures": 3, "ground_seconds": 900},
                                     "queue": {"max_attempts": 10000, "block_after_drones": 100},
                                     "orchestrator": {"offline_after": 30.0}},
        "swarm_drone_stop_timeout": 15,
        "swarm_drone_verify_delay": 1,
        # The bed's host key (sshd's own, not /etc/ssh's) and how a bed host reboots.
        "reboot_command": "/bin/kill -TERM 1",
        "boot_time_command": "cat /run/fake_boot_id",
    }
    # The nightly job of the role's defaults, every minute; the bed's tree (the overlay in the
    # venv) needs no sync.
    nightly = yaml.safe_load((ROOT / "roles/swarm_cron/defaults/main.yml").read_text())["swarm_cron_jobs"][0]
    per_host: dict[int, dict[str, object]] = {
        1: {"swarm_binhost_redis_password": password,
            "swarm_binhost_redis_bind": f"127.0.0.1 {binhost}",
            # The key lives under /var (private to the host; /root is the machine's).
            "swarm_binhost_settings": {
                "binhost": {"gnupg_home": "/var/lib/build-swarm/binhost-gnupg"},
                # What the nightly queues: the sample world, resolved in the client's prefix.
                "targets": {"default": {"world": list(DEFAULT_WORLD), "prefix": CLIENT}}},
            "swarm_cron_install_method": "prefix", "swarm_cron_prefix": str(cronie_prefix),
            "swarm_cron_nightly_playbook_dir": "/var/lib/build-swarm/playbooks",
            "swarm_cron_jobs": [{**nightly, "minute": "*", "hour": "*"}],
            # (No drift check: the binhost has no inventory of, nor SSH access to, the others.)
            "swarm_cron_nightly_vars": {"swarm_nightly_sync_command": "true", "swarm_nightly_drift": False},
            "swarm_swarmctl_command": f"{SWARMCTL} --config {BINHOST_CONFIG}",
            "swarm_client_binhost_url": f"http://{binhost}:8770",
            "swarm_client_prefix": CLIENT,
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
    for i in (3, 4, 5):
        settings: dict[str, object] = {"heartbeat_interval": 1.0, "poll_interval": 0.5,
                                       "prefix": "/var/lib/build-swarm/prefix", "repo": OVERLAY}
        if i == 5:  # a broken builder setting: every emerge it runs fails at once
            settings["emerge_args"] = ["--swarm-broken-on-purpose"]
        per_host[i] = {**drone, "protected": i == 4,
                       "swarm_ssh_host_key_file": str(bed.host(i).hostdir / "ssh_host_ed25519_key.pub"),
                       "swarm_drone_settings": settings}
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
    collections = install_collection(work / "collection")
    password = "site-e2e-" + wheel.stat().st_mtime_ns.to_bytes(8, "little").hex()
    with TestBed(5, "swsite", boot_timeout=60) as bed:
        inventory = bed.inventory(
            work / "hosts.yml",
            {"swarm_venv": VENV, "swarm_wheel": str(wheel), "swarm_wheel_extras": "portage",
             "swarm_wheelhouse": str(wheelhouse)},
            groups={"binhost": [1], "orchestrator": [2], "drones": [3, 4, 5], "clients": [1]},
            host_vars=inventory_vars(bed, password, cronie),
        )
        site = Site(bed, inventory, None, work / "runs", collections)  # type: ignore[arg-type]
        result = site.converge()
        assert result.ok, result.summary
        site.client = redis.Redis(host=bed.host(1).address, port=6379, password=password, decode_responses=True)
        try:
            yield site
        finally:
            site.client.close()


@pytest.mark.timeout(1200)
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
    for name in ("h3", "h4", "h5"):  # (cron may have queued the world already: building, or h5 grounded)
        wait_for(lambda n=name: client.hget(keys.drone(n), "status") not in (None, "misconfigured"), 40,
                 f"{name} to heartbeat with a working portage prefix")
    binhost = f"http://{bed.host(1).address}:8770"
    assert _http_status(f"{binhost}/Packages") in (200, 404)  # no published index before the first promote
    # The binhost role made the signing key (in its configured home) and publishes it.
    key = json.loads(bed.run(1, [SWARMCTL, "--config", BINHOST_CONFIG, "binhost", "key", "show", "--json"],
                             check=True).stdout)
    assert key["signing"] and key["home"] == "/var/lib/build-swarm/binhost-gnupg", key

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

    # Cron fires the nightly playbook, which queues the world (nobody runs `queue add`); the
    # drones build it; h5 is grounded and restarted by the orchestrator.
    grounded = wait_for(lambda: site.events("grounded", BROKEN), 240,
                        "the nightly's jobs and the breaker to ground h5")[0]
    wait_for(lambda: site.events("restarted", BROKEN, grounded.ts), 120, "the orchestrator to restart h5 over SSH")
    history = [(e.ts, e.kind, e.drone, e.reason) for e in Events(client).since("0-0")]
    restarting = site.events("restarting", BROKEN, grounded.ts - 1)
    assert restarting and restarting[0].reason.startswith("level 2, by orchestrator"), history
    # The service really restarted: h5's drone process (the one heartbeating) was started after the
    # orchestrator's restart began. Compared by start time, not with a PID taken earlier: the nightly
    # may fire (and h5 be grounded and restarted) before this test gets here.
    pid_after = wait_for(lambda: min(_pids(bed, 5, PATTERN), default=None), 20, "h5's new drone process")
    started = _started_at(bed, 5, pid_after)
    assert started is not None and started >= restarting[0].ts - 1.5, \
        f"h5's drone process {pid_after} started at {started}, before the restart; events: {history}"
    wait_for(lambda: client.hget(keys.drone(BROKEN), "pid") in {str(p) for p in _pids(bed, 5, PATTERN)}, 20,
             "the new process's heartbeat")
    assert "Accepted publickey for swarm-heal" in (bed.host(5).hostdir / "sshd.log").read_text()
    broken = [e for e in Events(client).since("0-0") if e.drone == BROKEN and "broken-on-purpose" in (e.reason or "")]
    assert broken, f"h5's builds fail for its broken setting: {history}"
    wait_for(lambda: {e.job for e in site.events("built")} >= set(DEFAULT_CPVS) or None, 300,
             "the healthy drones to build the whole world with portage")
    assert not [e for e in site.events("built") if e.drone == BROKEN]
    nightly = bed.read_file(1, "/var/log/build-swarm/nightly.log") or ""
    assert "queue sync" in nightly or "Queue what @world needs" in nightly, nightly[-3000:]

    # A later nightly run promotes the generation (its gates pass); the binhost signed every upload.
    wait_for(lambda: _published(binhost) >= set(DEFAULT_CPVS) or None, 240,
             "a nightly run to promote the built world")
    verified = bed.run(1, [SWARMCTL, "--config", BINHOST_CONFIG, "binhost", "verify", "-q"], timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr  # signatures checked against KEYS.asc

    # The client installs the world from the binhost: binaries only, signatures verified (portage's default).
    assert "verify-signature" not in (bed.read_file(1, f"{CLIENT}/etc/portage/binrepos.conf/swarm.conf") or "x")
    env = {"PORTAGE_OVERRIDE_EPREFIX": CLIENT, "PATH": f"{VENV}/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    emerge = bed.run(1, [f"{VENV}/bin/emerge", "--getbinpkgonly", "--color=n", "--nospinner", *DEFAULT_WORLD],
                     env=env, timeout=600)
    assert emerge.returncode == 0, (emerge.stdout + emerge.stderr)[-4000:]
    installed = set(bed.run(1, f"cd {CLIENT}/var/db/pkg && ls -d */*", check=True).stdout.split())
    # Binaries need no build-time-only dependencies (libgreet: DEPEND, stamp: BDEPEND).
    assert installed == set(DEFAULT_CPVS) - {"dev-libs/libgreet-1", "dev-util/stamp-1"}, installed
    assert _signature_members(binhost, "app-misc/hello-1"), "what the client verified was signed by the binhost"


@pytest.mark.timeout(900)
def test_running_site_yml_again_changes_and_restarts_nothing(site: Site) -> None:
    bed = site.bed
    before = {(i, what): _pids(bed, i, what) for i, what in DAEMONS}
    assert all(before.values()), before
    t0 = float(site.client.time()[0])
    result = site.converge()
    assert result.ok, result.summary
    assert not {host: tasks for host, tasks in result.changed.items() if tasks}, result.changed
    # The orchestrator may heal the grounded h5 on its own meanwhile: that restart is not site.yml's.
    healed = site.events("restarting", BROKEN, t0)
    after = {(i, what): _pids(bed, i, what) for i, what in DAEMONS if not (i == 5 and healed)}
    assert after == {k: v for k, v in before.items() if k in after}, f"restarted: {before} -> {after}"


def _pids(bed: TestBed, i: int, pattern: str) -> frozenset[int]:
    proc = bed.run(i, ["pgrep", "-f", "--", pattern])
    return frozenset(int(p) for p in proc.stdout.split())


def _signature_members(binhost: str, cpv: str) -> list[str]:
    """The ``.sig`` members of ``cpv``'s published gpkg (a signed gpkg carries one per data tar)."""
    with urllib.request.urlopen(f"{binhost}/Packages", timeout=10) as answer:
        entries = answer.read().decode().split("\n\n")
    entry = next(e for e in entries if f"\nCPV: {cpv}\n" in f"\n{e}\n")
    path = next(line.split(": ", 1)[1] for line in entry.splitlines() if line.startswith("PATH: "))
    with urllib.request.urlopen(f"{binhost}/{path}", timeout=30) as answer, \
            tarfile.open(fileobj=io.BytesIO(answer.read())) as gpkg:
        return [name for name in gpkg.getnames() if name.endswith(".sig")]


def _published(binhost: str) -> set[str]:
    """CPVs in the binhost's published index (empty before the first promote)."""
    try:
        with urllib.request.urlopen(f"{binhost}/Packages", timeout=10) as answer:
            text = answer.read().decode()
    except (urllib.error.URLError, OSError):
        return set()
    return {line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("CPV: ")}


def _started_at(bed: TestBed, i: int, pid: int) -> float | None:
    """When process ``pid`` of bed host ``i`` started (epoch seconds), from its age."""
    proc = bed.run(i, ["ps", "-o", "etimes=", "-p", str(pid)])
    return time.time() - int(proc.stdout) if proc.returncode == 0 and proc.stdout.strip().isdigit() else None


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
