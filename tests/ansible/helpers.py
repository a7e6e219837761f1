"""Helpers for the Ansible tests: the repo paths and a real swarm on the multi-host test bed.

:class:`BedSwarm` is the swarm side of the end-to-end tests: a password-protected Redis on the
bed's bridge (``10.77.0.1``, the only address the bed's hosts can reach), the ``swarmctl`` CLI
and orchestrator in the root namespace (the control host), and the inventory variables that make
the ``swarm_drone`` role install the real ``swarmctl drone run`` on test-bed hosts (the hosts
share the machine's filesystem, so this checkout's venv runs inside them).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from swarmctl import keys  # noqa: E402
from swarmctl.events import Event, Events  # noqa: E402
from tests.helpers import RedisProcess, Spawner, isolated_env  # noqa: E402
from tests.testbed import GATEWAY, TestBed  # noqa: E402

#: The swarmctl the test-bed hosts run (this checkout's venv, visible inside every host).
SWARMCTL_BIN = str(Path(sys.executable).parent / "swarmctl")
#: The collection galaxy.yml makes of this checkout, and the FQCN prefix of its playbooks.
COLLECTION = "build_swarm.swarm"


def install_collection(work: Path) -> Path:
    """Build this checkout into a collection artifact (``ansible-galaxy collection build``) and
    install it under ``work``; returns the collections path to run its playbooks by FQCN from."""
    tools = Path(sys.executable).parent
    env = {"PATH": f"{tools}:/usr/bin:/bin", "HOME": str(work), "LC_ALL": "C.UTF-8"}
    work.mkdir(parents=True, exist_ok=True)

    def galaxy(*args: str) -> None:
        proc = subprocess.run([str(tools / "ansible-galaxy"), "collection", *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    galaxy("build", "--output-path", str(work), str(ROOT))
    galaxy("install", "-p", str(work / "collections"), str(next(work.glob("build_swarm-swarm-*.tar.gz"))))
    return work / "collections"


def build_wheel(dest: Path) -> tuple[Path, Path]:
    """A wheel of this checkout, and a tar of its dependencies' wheels with portage (the bed has no index).

    What the roles install with ``swarm_wheel`` and ``swarm_wheelhouse`` (the ``swarm_wheel``
    fixture of tests/ansible/conftest.py builds them once per test session).
    """
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(dest), f"{ROOT}[portage]"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheelhouse = dest.parent / "wheels.tar"
    subprocess.run(["tar", "-cf", str(wheelhouse), "-C", str(dest), "."], check=True)
    return next(dest.glob("build_swarm-*.whl")), wheelhouse


class BedSwarm:
    """A real swarm around a test bed: Redis on the bridge, the CLI and orchestrator on the controller.

    Args:
        bed: A started test bed (its bridge must exist before Redis can bind to it).
        work: A private directory (configs, logs, XDG dirs).
        settings: Config sections for the controller's config file (orchestrator, healing, ...).
    """

    def __init__(self, bed: TestBed, work: Path, settings: dict[str, Any] | None = None) -> None:
        self.bed = bed
        self.work = work
        self.password = secrets.token_urlsafe(18)
        self.redis = RedisProcess(work / "redis", bind=GATEWAY, password=self.password).start()
        self.settings = settings or {}
        self.config_path = self.write_config(work / "swarm.yml", self.settings)
        self.env = isolated_env(work)
        self.client = redis.Redis(host=GATEWAY, port=self.redis.port, password=self.password,
                                  decode_responses=True)
        self.spawn = Spawner(self.env, work)

    # -- configuration -------------------------------------------------------------------------

    @property
    def redis_section(self) -> dict[str, Any]:
        return {"url": f"redis://{GATEWAY}:{self.redis.port}/0", "password": self.password}

    def write_config(self, path: Path, sections: dict[str, Any]) -> Path:
        """A controller config file: this swarm's Redis plus ``sections`` (mode 0600)."""
        data = {"redis": self.redis_section, **sections}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        path.chmod(0o600)
        return path

    def drone_vars(self, settings: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                   **overrides: Any) -> dict[str, Any]:
        """Inventory variables that make swarm_drone run the real drone against this swarm.

        Args:
            settings: Keys of the drone section (builder, command, heartbeat_interval, ...).
            extra: Other config sections for the drones (breaker, queue, orchestrator).
        """
        values: dict[str, Any] = {
            "swarm_drone_install_method": "path",
            "swarm_drone_swarmctl_path": SWARMCTL_BIN,
            "swarm_drone_redis_host": GATEWAY,
            "swarm_drone_redis_port": self.redis.port,
            "swarm_drone_redis_password": self.password,
            "swarm_drone_settings": {"heartbeat_interval": 1.0, "poll_interval": 0.5, **(settings or {})},
            "swarm_drone_config_extra": extra or {},
            "swarm_drone_stop_timeout": 15,
            "swarm_drone_verify_delay": 1,
            # How the bed's hosts reboot and tell one boot from the next.
            "reboot_command": "/bin/kill -TERM 1",
            "boot_time_command": "cat /run/fake_boot_id",
            "reboot_timeout": 60,
        }
        values.update(overrides)
        return values

    # -- the CLI and the orchestrator ----------------------------------------------------------

    def cli(self, *args: str, check: bool = True, timeout: float = 120,
            config: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``swarmctl --config CONFIG ARGS`` on the controller."""
        argv = [sys.executable, "-m", "swarmctl", "--config", str(config or self.config_path), *args]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=tempfile.gettempdir())
        if check and proc.returncode != 0:
            raise AssertionError(f"swarmctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def enroll(self, host: int, machine_id: str | None = None) -> str:
        """Enroll ``hN`` with its real machine id (or ``machine_id``); return the token."""
        h = self.bed.host(host)
        out = self.cli("drone", "enroll", h.name, "--machine-id", machine_id or h.machine_id).stdout
        return out.strip().splitlines()[-1]

    def start_orchestrator(self, config: Path | None = None, name: str = "orchestrator") -> subprocess.Popen[bytes]:
        return self.spawn(["--config", str(config or self.config_path), "orchestrator", "run"], name=name)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
        """SIGTERM a process we started and wait for it (a running playbook finishes first)."""
        self.spawn.stop(proc, timeout)

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return self.spawn.output(proc)

    # -- reading the swarm ---------------------------------------------------------------------

    def events(self, kind: str | None = None, drone: str | None = None) -> list[Event]:
        found = Events(self.client).since("0-0")
        return [e for e in found if (kind is None or e.kind == kind) and (drone is None or e.drone == drone)]

    def drone(self, name: str) -> dict[str, str]:
        """The drone's hash: status, pid, built, grounded_until, ..."""
        return self.client.hgetall(keys.drone(name))

    def close(self) -> None:
        for proc in self.spawn.procs:
            self.stop(proc, timeout=30)
        self.client.close()
        self.redis.stop()
