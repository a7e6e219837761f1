"""A whole swarm on one machine: the demo, and the end-to-end tests' harness.

Embedded Redis (its own data dir), a verifying binhost on loopback, an
orchestrator, and N drone processes each building with real portage in its
own prefix, from the bundled sample overlay (or any repository).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from swarmctl.binhost.index import verify
from swarmctl.binhost.server import BinhostServer, QueueGate, make_server
from swarmctl.config import Config, load_config
from swarmctl.embedded import EmbeddedRedis
from swarmctl.events import Events
from swarmctl.orchestrator import Orchestrator
from swarmctl.overlay import DEFAULT_WORLD, install_overlay
from swarmctl.portage_env.prefix import PortagePrefix, make_prefix
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from swarmctl.resolver import PackageResolver

log = logging.getLogger("swarmctl.demo")


@dataclass
class SwarmSummary:
    """What a run achieved, checked against the binhost and the event stream."""

    jobs: int
    built: list[str]
    blocked: list[str]
    failed: list[str]
    builds_per_job: dict[str, int]
    index_ok: bool
    index_problems: list[str]
    seconds: float
    client_ok: bool | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class LocalSwarm:
    """Start, watch and stop a local swarm under ``workdir``."""

    def __init__(self, workdir: Path, drones: int = 3, repo: Path | None = None,
                 world: tuple[str, ...] = DEFAULT_WORLD, extra_jobs: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir.absolute()
        self.n_drones = drones
        self.repo_source = repo
        self.world = world
        self.extra_jobs = extra_jobs
        self.extra_env = env or {}
        self.redis_server = EmbeddedRedis(self.workdir / "redis")
        self.pkgdir = self.workdir / "binhost"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.server: BinhostServer | None = None
        self.orchestrator: Orchestrator | None = None
        self._threads: list[threading.Thread] = []
        self.started = 0.0

    @property
    def redis_url(self) -> str:
        return f"unix://{self.redis_server.socket}"

    def config(self) -> Config:
        return load_config(environ={"SWARM_REDIS_URL": self.redis_url, "SWARM_ORCHESTRATOR_INTERVAL": "1",
                                    "SWARM_ORCHESTRATOR_OFFLINE_AFTER": "10"})

    def start(self) -> None:
        self.started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis_server.ensure_running()
        self.client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.client.flushall()
        cfg = self.config()
        self.queue = Queue(self.client, cfg)
        self.registry = DroneRegistry(self.client, cfg)
        self.repo = install_overlay(self.workdir / "overlay") if self.repo_source is None else self.repo_source
        self.pkgdir.mkdir(parents=True, exist_ok=True)
        self.server = make_server(self.pkgdir, "127.0.0.1:0", QueueGate(self.registry, self.queue))
        self._thread(self.server.serve_forever, "binhost")
        self.orchestrator = Orchestrator(self.client, cfg)
        self._thread(self.orchestrator.run, "orchestrator")
        for i in range(1, self.n_drones + 1):
            self.start_drone(f"drone-{i}")

    def _thread(self, target: Callable[[], object], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def drone_prefix(self, name: str) -> PortagePrefix:
        assert self.server is not None
        return make_prefix(self.workdir / "drones" / name, self.repo, self.server.url,
                           make_conf={"MAKEOPTS": "-j1"})

    def start_drone(self, name: str) -> subprocess.Popen[bytes]:
        prefix = self.drone_prefix(name)
        token = self.registry.enroll(name)
        env = {**os.environ, **self.extra_env, "SWARM_REDIS_URL": self.redis_url, "SWARM_DRONE_TOKEN": token,
               "SWARM_DRONE_BUILDER": "portage", "SWARM_DRONE_PREFIX": str(prefix.root),
               "SWARM_BINHOST_URL": self.server.url if self.server else "",
               "SWARM_DRONE_STATE_DIR": str(self.workdir / "drones" / name / "state"),
               "SWARM_DRONE_POLL_INTERVAL": "0.3", "SWARM_DRONE_HEARTBEAT_INTERVAL": "1"}
        log_file = open(self.workdir / "drones" / name / "daemon.log", "ab")  # noqa: SIM115 (lives with the process)
        proc = subprocess.Popen([sys.executable, "-m", "swarmctl", "drone", "run", "--name", name], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        return proc

    def queue_world(self) -> int:
        """Resolve the world against the binhost and queue what it lacks; returns jobs queued."""
        resolver = PackageResolver(self.drone_prefix("drone-1"))
        resolution = resolver.resolve(list(self.world), self.pkgdir)
        specs = resolution.job_specs()
        from swarmctl.graph import JobSpec

        specs += [JobSpec(cpv) for cpv in self.extra_jobs]
        report = self.queue.add(specs)
        return len(report.added)

    def settled(self) -> bool:
        counts = self.queue.counts()
        return counts["needed"] == 0 and counts["delegated"] == 0

    def wait(self, timeout: float, on_tick: Callable[[], None] | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_tick is not None:
                on_tick()
            if self.settled():
                return True
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if len(dead) == len(self.procs):
                log.error("every drone exited")
                return False
            time.sleep(0.5)
        return self.settled()

    def summary(self) -> SwarmSummary:
        jobs = self.queue.jobs()
        built_events = Counter(e.job for e in Events(self.client).since() if e.kind == "built")
        report = verify(self.pkgdir, check_manifests=True)
        summary = SwarmSummary(
            jobs=len(jobs), built=sorted(j.cpv for j in jobs if j.state == "built"),
            blocked=sorted(j.cpv for j in jobs if j.state == "blocked"),
            failed=sorted(j.cpv for j in jobs if j.state == "failed"),
            builds_per_job=dict(built_events), index_ok=report.ok,
            index_problems=[str(p) for p in report.problems], seconds=time.monotonic() - self.started)
        twice = [cpv for cpv, n in built_events.items() if n != 1]
        if twice:
            summary.problems.append(f"built more than once: {', '.join(twice)}")
        if not report.ok:
            summary.problems.append(f"binhost index: {'; '.join(summary.index_problems[:3])}")
        return summary

    def install_on_client(self, atom: str) -> tuple[bool, str]:
        """A fresh prefix installs ``atom`` from the binhost only (emerge --getbinpkgonly)."""
        assert self.server is not None
        client = make_prefix(self.workdir / "client", self.repo, self.server.url)
        proc = subprocess.run([str(client.tool("emerge")), "--getbinpkgonly", "--oneshot", "--quiet-build=y",
                               "--color=n", "--nospinner", atom], env=client.env(), capture_output=True,
                              text=True, timeout=600)
        return proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.orchestrator is not None:
            self.orchestrator.stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self.redis_server.stop()
