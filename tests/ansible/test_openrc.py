"""The swarm's services under real OpenRC: binhost, orchestrator, drone and cronie on one host.

Debian's openrc cannot be installed beside this machine's init (it conflicts with sysv-rc), so
scripts/unpack-openrc.sh unpacks Debian's OpenRC 0.45 and openrc_host.sh mounts it over /usr in
private mount and PID namespaces (private /etc, /var and /run; the network is the machine's, so
the test's real Redis on 127.0.0.1 is reachable). There the real roles (swarm_binhost,
swarm_orchestrator, swarm_drone, swarm_cron with cronie from scripts/build-cronie.sh) are applied
by Ansible with a local connection and no service manager set: the facts say openrc (PID 1 is no
init Ansible knows, /sbin/openrc exists), so every role writes an OpenRC script, starts it and
adds it to the default runlevel. Then, through rc-service: every service runs and works (the
binhost answers, the orchestrator holds the leader lease, the drone heartbeats, cronie has the
job scheduled), restarts, is respawned by supervise-daemon when killed; the drone, stopped in the
middle of a build, finishes and reports it before it exits (SIGTERM, well inside its stop
timeout, never SIGKILL); after a power cycle (every process killed, a fresh /run) `openrc
default` starts all four again. Not covered: Gentoo's own OpenRC build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
import yaml

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import free_port, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
OPENRC = Path(os.environ.get("SWARM_OPENRC_TREE", "/opt/openrc-debian"))
CRONIE = Path(os.environ.get("SWARM_CRONIE_PREFIX", "/opt/cronie"))
BIN = Path(sys.executable).parent
SWARMCTL = str(BIN / "swarmctl")
HOST_SCRIPT = Path(__file__).with_name("openrc_host.sh")
#: pgrep -f patterns of each daemon. supervise-daemon's own command line holds the daemon's argv
#: after a "--", so these never match it.
DAEMONS = {
    "swarm-binhost": f"{SWARMCTL} --config /etc/build-swarm/binhost.yml binhost serve",
    "swarm-orchestrator": f"{SWARMCTL} --config /etc/build-swarm/orchestrator.yml orchestrator run",
    "swarm-drone": f"{SWARMCTL} --config /etc/build-swarm/swarm.yml drone run",
    "cronie": f"{CRONIE}/sbin/crond -n",
}


class OpenRCHost:
    """The namespaces of openrc_host.sh; commands run inside them through nsenter."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private",
             str(HOST_SCRIPT), "hold", str(work), str(OPENRC)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=work)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        assert ready.strip() == "READY", f"{ready}{self.proc.stderr.read() if self.proc.stderr else ''}"
        (init,) = psutil.Process(self.proc.pid).children()
        self.init = init.pid

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "--target", str(self.init), "--mount", "--pid", "--", *argv],
                              capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.work)

    def rc(self, service: str, action: str, timeout: float = 120) -> int:
        return self.run("/sbin/rc-service", service, action, timeout=timeout).returncode

    def pid(self, service: str) -> int | None:
        found = self.run("pgrep", "-f", "--", DAEMONS[service]).stdout.split()
        return int(found[0]) if found else None

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()  # its PID 1 exits: the kernel kills the rest of the namespace
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def openrc_host(tmp_path: Path) -> Iterator[OpenRCHost]:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("apt-get", "unshare", "nsenter")):
        pytest.skip("needs root, unshare, nsenter and apt-get (Debian's OpenRC is unpacked from its .debs)")
    for script, dest in (("unpack-openrc.sh", OPENRC), ("build-cronie.sh", CRONIE)):
        done = subprocess.run([str(ROOT / "scripts" / script), str(dest)], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
    env = {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(tmp_path),
           "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
           "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1"}
    host = OpenRCHost(tmp_path, env)
    yield host
    host.close()


def _playbook(redis_port: int, binhost_port: int, token: str, pkgdir: Path, release: Path) -> list[dict[str, object]]:
    redis_vars = {"redis_host": "127.0.0.1", "redis_port": redis_port}
    fast = {"heartbeat_interval": 0.5, "poll_interval": 0.2}
    return [{
        "name": "A swarm host under OpenRC (no service manager set: the facts decide).",
        "hosts": "localhost",
        "gather_facts": True,
        "gather_subset": ["!all", "!min", "service_mgr"],
        "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
        "roles": [
            {"role": "swarm_binhost", "vars": {
                "swarm_binhost_install_method": "path", "swarm_binhost_swarmctl_path": SWARMCTL,
                "swarm_binhost_redis_manage": False, "swarm_binhost_firewall_manage": False,
                "swarm_binhost_redis_url": f"redis://127.0.0.1:{redis_port}/0", "swarm_binhost_pkgdir": str(pkgdir),
                "swarm_binhost_listen_address": "127.0.0.1", "swarm_binhost_port": binhost_port,
                # The services are the point here; the signing key is test_site_e2e's.
                "swarm_binhost_key_init": False}},
            {"role": "swarm_orchestrator", "vars": {
                "swarm_orchestrator_install_method": "path", "swarm_orchestrator_swarmctl_path": SWARMCTL,
                "swarm_orchestrator_healing": False,
                **{f"swarm_orchestrator_{k}": v for k, v in redis_vars.items()},
                "swarm_orchestrator_settings": {"orchestrator": {"interval": 0.5, "leader_ttl": 2}}}},
            {"role": "swarm_drone", "vars": {
                "swarm_drone_name": "openrc-drone", "swarm_drone_token": token,
                "swarm_drone_install_method": "path", "swarm_drone_swarmctl_path": SWARMCTL,
                **{f"swarm_drone_{k}": v for k, v in redis_vars.items()},
                "swarm_drone_builder": "command", "swarm_drone_stop_timeout": 60,
                # A build lasts until the test lets it finish (creates ``release``).
                "swarm_drone_settings": {**fast, "command": [
                    "sh", "-c", f"while [ ! -e {release} ]; do sleep 0.1; done"]}}},
            {"role": "swarm_cron", "vars": {
                "swarm_cron_install_method": "prefix", "swarm_cron_prefix": str(CRONIE),
                "swarm_cron_nightly_deploy": False, "swarm_cron_report_to_swarm": False,
                "swarm_cron_jobs": [{"name": "openrc test", "minute": "*/5", "hour": "*", "day": "*", "month": "*",
                                     "weekday": "*", "user": "root", "job": "/bin/true openrc-test",
                                     "match": "openrc-test", "requires": ["/bin/true"]}]}},
        ],
    }]


def _drone_status(client: redis.Redis) -> str:
    return str(client.hget(keys.drone("openrc-drone"), "status") or "")


def test_the_swarm_services_run_under_openrc(openrc_host: OpenRCHost, redis_client: redis.Redis, config: Config,
                                             redis_url: str, tmp_path: Path) -> None:
    host = openrc_host
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    token = registry.enroll("openrc-drone")
    binhost_port = free_port()
    (tmp_path / "pkg").mkdir()
    playbook = tmp_path / "openrc.yml"
    release = tmp_path / "release"
    release.touch()  # builds finish at once until the drone's stop is tested
    playbook.write_text(yaml.safe_dump(_playbook(int(redis_url.rsplit(":", 1)[1].split("/")[0]), binhost_port,
                                                 token, tmp_path / "pkg", release), sort_keys=False))
    ansible = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)]
    converge = host.run(*ansible, timeout=600)
    assert converge.returncode == 0, converge.stdout[-4000:] + converge.stderr[-2000:]
    again = host.run(*ansible, timeout=600)
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-4000:]  # nothing restarted

    # Every role chose OpenRC from the facts: supervise-daemon scripts, in the default runlevel.
    for service in DAEMONS:
        script = (tmp_path / "etc.upper/init.d" / service).read_text()
        assert script.startswith("#!/sbin/openrc-run") and "supervisor=supervise-daemon" in script
        assert (tmp_path / "etc.upper/runlevels/default" / service).is_symlink()

    def working() -> bool:
        """Each daemon does its job: the binhost answers, the orchestrator leads, the drone heartbeats."""
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{binhost_port}/Packages", timeout=5).close()
        except urllib.error.HTTPError:
            pass  # it answered (an empty PKGDIR has no index yet)
        except OSError:
            return False
        return bool(redis_client.get(keys.LEADER)) and _drone_status(redis_client) == "idle"

    assert wait_until(working, 60), host.run("sh", "-c", "tail -n 20 /var/log/build-swarm/*.log").stdout
    for service in DAEMONS:
        assert host.rc(service, "status") == 0, service
        first = host.pid(service)
        assert first, service
        assert host.rc(service, "restart") == 0, service
        assert wait_until(lambda: host.pid(service) not in (None, first), 20), service  # noqa: B023
        second = host.pid(service)
        assert second
        host.run("kill", "-KILL", str(second))  # a crash (pids are the namespace's): supervise-daemon restarts it
        assert wait_until(lambda: host.pid(service) not in (None, second), 20), service  # noqa: B023
    assert wait_until(working, 60)

    # The drone is stopped in the middle of a build: SIGTERM, and supervise-daemon waits (the stop
    # timeout, 60 s) while the drone finishes the build; it reports it, then exits by itself.
    release.unlink()
    queue.add([JobSpec("app-misc/openrc-1")])
    assert wait_until(lambda: queue.get("app-misc/openrc-1").state == "delegated", 30)
    drone_pid = host.pid("swarm-drone")
    stop = subprocess.Popen(["nsenter", "--target", str(host.init), "--mount", "--pid", "--",
                             "/sbin/rc-service", "swarm-drone", "stop"], env=host.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: _drone_status(redis_client) == "stopping", 30)
        assert host.pid("swarm-drone") == drone_pid and stop.poll() is None  # still building, still waited for
        release.touch()  # the build finishes
        started = time.monotonic()
        assert stop.wait(timeout=60) == 0
    finally:
        if stop.poll() is None:
            stop.kill()
    assert queue.get("app-misc/openrc-1").state == "built"
    assert time.monotonic() - started < 30  # the drone exited after its build, not at the SIGKILL deadline
    log = (tmp_path / "var.upper/log/build-swarm/drone.log").read_text()
    assert "finishing the current build" in log, log[-2000:]
    assert host.pid("swarm-drone") is None and host.rc("swarm-drone", "status") == 3  # OpenRC's "stopped"
    assert _drone_status(redis_client) == "offline"

    for service in DAEMONS:
        assert host.rc(service, "stop") == 0 and host.pid(service) is None, service

    # A power cycle: every process dies, /run starts empty, OpenRC boots the default runlevel.
    redis_client.delete(keys.LEADER)  # the stopped drone's heartbeat already says "offline"
    boot = host.run(str(HOST_SCRIPT), "boot", timeout=300)
    assert boot.returncode == 0, boot.stdout[-2000:] + boot.stderr[-2000:]
    assert wait_until(lambda: all(host.pid(s) for s in DAEMONS), 30), boot.stdout
    assert wait_until(working, 60)
    assert all(host.rc(s, "status") == 0 for s in DAEMONS)
