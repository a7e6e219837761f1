"""A whole swarm on one machine: the demo, and the end-to-end tests' harness.

Embedded Redis (its own data dir), a verifying binhost on loopback, an
orchestrator, and N drone processes each building with real portage in its
own prefix, from the bundled sample overlay (or any repository).

:meth:`LocalSwarm.watch` always ends: when the queue settles, or with a :class:`Halt`
naming why not (a job failed for good, no drone can build, nothing progressed, out of
time); :meth:`LocalSwarm.stop` stops every process the swarm started.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from swarmctl import keys
from swarmctl.binhost.gates import GateSettings, run_gates
from swarmctl.binhost.generations import PromoteResult, promote, staging_url
from swarmctl.binhost.index import INDEX_NAME, FileDigests, PackagesIndex, verify
from swarmctl.binhost.server import BinhostServer, QueueGate, make_server
from swarmctl.binhost.signing import KEYS_NAME, MAX_HOME_CHARS, Keyring, NoSigningKey
from swarmctl.config import Config, load_config
from swarmctl.embedded import EmbeddedRedis
from swarmctl.events import Event, Events
from swarmctl.logtail import tail
from swarmctl.orchestrator import Orchestrator
from swarmctl.overlay import DEFAULT_WORLD, install_overlay
from swarmctl.portage_env.prefix import PortagePrefix, make_prefix
from swarmctl.queue import Queue, for_target
from swarmctl.registry import DroneInfo, DroneRegistry
from swarmctl.resolver import PackageResolver
from swarmctl.tree import tree_revision

log = logging.getLogger("swarmctl.demo")

#: Events that show the swarm moving (a heartbeat alone is not progress).
PROGRESS_EVENTS = frozenset({"claimed", "built", "requeued", "failed", "blocked", "released", "reattached",
                             "preflight-ok"})
#: Lines of a build log or daemon log a halt shows.
TAIL_LINES = 15
#: The two targets of ``swarmctl demo --multi-target``: the sample world built with two make.conf settings.
MULTI_TARGETS: dict[str, dict[str, str]] = {"speed": {"CFLAGS": "-O2 -pipe"}, "size": {"CFLAGS": "-Os -pipe"}}


@dataclass(frozen=True)
class Halt:
    """Why a run stopped before the queue settled: one line, and the evidence (a log tail)."""

    reason: str
    detail: str = ""


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
                 env: dict[str, str] | None = None, targets: dict[str, dict[str, str]] | None = None) -> None:
        """``targets``: build targets (name -> make.conf variables); each gets its binhost area
        (``binhost/<target>/``) and its drones (they take turns: drone-1 the first target, ...)."""
        self.workdir = workdir.absolute()
        self.targets = dict(targets or {})
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
        self._scratch: list[Path] = []
        self.keyring: Keyring | None = None
        self.started = 0.0

    @property
    def redis_url(self) -> str:
        return f"unix://{self.redis_server.socket}"

    def config(self) -> Config:
        return load_config(environ={"SWARM_REDIS_URL": self.redis_url, "SWARM_ORCHESTRATOR_INTERVAL": "1",
                                    "SWARM_ORCHESTRATOR_OFFLINE_AFTER": "10", **self._target_env()})

    def _target_env(self) -> dict[str, str]:
        """SWARM_CONFIG naming a file with the build targets (written once), or nothing."""
        if not self.targets:
            return {}
        path = self.workdir / "swarm.yml"
        if not path.exists():
            import yaml

            path.write_text(yaml.safe_dump({"targets": {name: {"make_conf": conf}
                                                        for name, conf in self.targets.items()}}))
        return {"SWARM_CONFIG": str(path)}

    def target_of_drone(self, name: str) -> str | None:
        """The target a demo drone builds (they take turns), None without targets."""
        if not self.targets:
            return None
        names = list(self.targets)
        return names[(int(name.rsplit("-", 1)[1]) - 1) % len(names)]

    def _target_names(self) -> list[str | None]:
        """The build targets, or [None] for a demo without them."""
        return [*self.targets] or [None]

    def area(self, target: str | None) -> Path:
        """A target's binhost area (PKGDIR itself without targets)."""
        return self.pkgdir / target if target else self.pkgdir

    def area_url(self, target: str | None) -> str:
        assert self.server is not None
        return f"{self.server.url}/{target}/" if target else self.server.url

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
        self.keyring = self._signing_keyring()
        self.server = make_server(self.pkgdir, "127.0.0.1:0", QueueGate(self.registry, self.queue),
                                  keyring=self.keyring, targets=cfg.targets)
        self.server.publish_keys(self.keyring)
        self._thread(self.server.serve_forever, "binhost")
        self.orchestrator = Orchestrator(self.client, cfg)
        self._thread(self.orchestrator.run, "orchestrator")
        for i in range(1, self.n_drones + 1):
            self.start_drone(f"drone-{i}")

    def _signing_keyring(self) -> Keyring:
        """The binhost's key (made once per work dir); KEYS.asc published in PKGDIR."""
        home = self.workdir / "binhost-gnupg"
        if len(str(home)) > MAX_HOME_CHARS:  # gpg-agent's socket must fit: a short private dir instead
            home = Path(tempfile.mkdtemp(prefix="swarm-demo-gnupg-", dir="/tmp")) / "home"
            self._scratch.append(home.parent)
        keyring = Keyring(home)
        try:
            keyring.signing_key()
        except NoSigningKey:
            keyring.init("build-swarm demo binhost <demo@build-swarm.invalid>", 30)
        keyring.publish(self.pkgdir)
        return keyring

    @property
    def keys_asc(self) -> str:
        return (self.pkgdir / KEYS_NAME).read_text(encoding="ascii")

    def _thread(self, target: Callable[[], object], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def drone_prefix(self, name: str) -> PortagePrefix:
        target = self.target_of_drone(name)
        return make_prefix(self.workdir / "drones" / name, self.repo, staging_url(self.area_url(target)),
                           make_conf={"MAKEOPTS": "-j1", **self.targets.get(target or "", {})},
                           binhost_keys=self.keys_asc)

    def start_drone(self, name: str) -> subprocess.Popen[bytes]:
        prefix = self.drone_prefix(name)
        target = self.target_of_drone(name)
        token = self.registry.enroll(name)
        env = {**os.environ, **self.extra_env, "SWARM_REDIS_URL": self.redis_url, "SWARM_DRONE_TOKEN": token,
               "SWARM_DRONE_BUILDER": "portage", "SWARM_DRONE_PREFIX": str(prefix.root),
               "SWARM_BINHOST_URL": self.server.url if self.server else "",
               "SWARM_BINHOST_KEYS_FILE": str(self.pkgdir / KEYS_NAME),
               "SWARM_DRONE_STATE_DIR": str(self.workdir / "drones" / name / "state"),
               "SWARM_DRONE_POLL_INTERVAL": "0.3", "SWARM_DRONE_HEARTBEAT_INTERVAL": "1", **self._target_env()}
        log_file = open(self.workdir / "drones" / name / "daemon.log", "ab")  # noqa: SIM115 (lives with the process)
        argv = [sys.executable, "-m", "swarmctl", "drone", "run", "--name", name]
        proc = subprocess.Popen(argv + (["--target", target] if target else []), env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        return proc

    def queue_world(self) -> int:
        """Resolve the world against the binhost and queue what it lacks (for every target, each
        resolved in a prefix of its own configuration, against its own area); returns jobs queued."""
        from swarmctl.graph import JobSpec

        specs: list[JobSpec] = []
        for target in self._target_names():
            drone = next(f"drone-{i}" for i in range(1, max(self.n_drones, len(self.targets)) + 1)
                         if self.target_of_drone(f"drone-{i}") == target)
            resolution = PackageResolver(self.drone_prefix(drone)).resolve(list(self.world), self.area(target))
            wanted = resolution.job_specs() + [JobSpec(cpv) for cpv in self.extra_jobs]
            specs += for_target(wanted, target) if target else wanted
        report = self.queue.add(specs)
        return len(report.added)

    def settled(self) -> bool:
        counts = self.queue.counts()
        return counts["needed"] == 0 and counts["delegated"] == 0

    def watch(self, timeout: float, stall: float, expected_blocked: tuple[str, ...] = (),
              on_tick: Callable[[], None] | None = None,
              on_event: Callable[[Event], None] | None = None, step: float = 0.5) -> Halt | None:
        """Wait for the queue to settle: None when it did, else the :class:`Halt` that ended the wait.

        Ends at once when a job fails for good (or is blocked unexpectedly), when no drone can
        build (each grounded, misconfigured or exited), when nothing progressed for ``stall``
        seconds, or ``timeout`` seconds after the swarm started.
        """
        deadline = self.started + timeout
        events = Events(self.client)
        cursor = "0-0"
        last_progress = time.monotonic()
        while True:
            if on_tick is not None:
                on_tick()
            for event in events.since(cursor):
                cursor = event.id
                if event.kind in PROGRESS_EVENTS:
                    last_progress = time.monotonic()
                if on_event is not None:
                    on_event(event)
            halt = self.failed_for_good(expected_blocked) or self.nobody_can_build()
            if halt is not None:
                return halt
            if self.settled():
                return None
            fleet = self.registry.list()
            if any(d.status == "building" and not d.hung for d in fleet):
                last_progress = time.monotonic()
            now = time.monotonic()
            if now - last_progress >= stall:
                return Halt(f"nothing progressed for {stall:.0f} s (no build started or finished); "
                            f"stopping ({self._open_jobs()})", self._fleet_lines(fleet))
            if now >= deadline:
                return Halt(f"timed out: the demo's {timeout:.0f} s are up ({self._open_jobs()})",
                            self._fleet_lines(fleet))
            time.sleep(step)

    def _open_jobs(self) -> str:
        counts = self.queue.counts()
        return f"{counts['needed']} job(s) waiting, {counts['delegated']} building, {counts['built']} built"

    def failed_for_good(self, expected_blocked: tuple[str, ...] = ()) -> Halt | None:
        """A Halt naming the package, the drone, the reason and the log tail of a job that failed for good."""
        cpvs = sorted(self.client.smembers(keys.state_set("failed")))
        cpvs += sorted(set(self.client.smembers(keys.state_set("blocked"))) - set(expected_blocked))
        if not cpvs:
            return None
        cpv = cpvs[0]
        state, drone, reason = self.client.hmget(keys.job(cpv), "state", "last_failed_by", "reason")
        drone = drone or "?"
        log_tail = self.queue.tails(cpv).get(drone) or self.build_log_tail(drone, cpv)
        more = f" (and {len(cpvs) - 1} more)" if len(cpvs) > 1 else ""
        return Halt(f"{cpv} {state} on {drone}: {reason}{more}", log_tail)

    def nobody_can_build(self) -> Halt | None:
        """A Halt when every drone is grounded, misconfigured, low on disk or exited (a drone not yet seen is
        neither)."""
        fleet = {d.name: d for d in self.registry.list()}
        down = []
        for name, proc in self.procs.items():
            drone = fleet.get(name)
            if proc.poll() is not None:
                down.append((f"{name} exited ({proc.returncode})", self.daemon_log_tail(name)))
            elif drone is not None and drone.status in ("misconfigured", "low-disk"):
                what = "misconfigured" if drone.status == "misconfigured" else "low on disk"
                down.append((f"{name} {what}: {drone.problem}", self.daemon_log_tail(name, 4)))
            elif drone is not None and drone.status == "grounded":
                why = self._last_failure(name)
                down.append((f"{name} grounded (breaker){': ' + why[0] if why else ''}", why[1] if why else ""))
            else:
                return None
        if not down:
            return None
        detail = next((d for _, d in down if d), "")
        return Halt("no drone can build: " + "; ".join(line for line, _ in down), detail)

    def _last_failure(self, drone: str) -> tuple[str, str] | None:
        """The drone's most recent failure report (reason, log tail), from the event stream."""
        for event in reversed(Events(self.client).tail(200)):
            if event.drone == drone and event.kind in ("requeued", "failed", "blocked") and event.job:
                return f"{event.job}: {event.reason}", self.build_log_tail(drone, event.job)
        return None

    def build_log_tail(self, drone: str, cpv: str) -> str:
        """The end of ``drone``'s newest build log of ``cpv``."""
        logs = sorted((self.workdir / "drones" / drone / "state" / "logs").glob(f"*-{cpv.replace('/', '--')}.log"))
        return tail(logs[-1], TAIL_LINES) if logs else ""

    def daemon_log_tail(self, drone: str, lines: int = TAIL_LINES) -> str:
        return tail(self.workdir / "drones" / drone / "daemon.log", lines)

    @staticmethod
    def _fleet_lines(fleet: list[DroneInfo]) -> str:
        return "\n".join(f"{d.name}: {d.status} {d.problem or d.task or ''}".rstrip() for d in fleet)

    def summary(self) -> SwarmSummary:
        jobs = self.queue.jobs()
        built_events = Counter(e.job for e in Events(self.client).since() if e.kind == "built")
        reports = [verify(self.area(t), check_signatures=True) for t in self._target_names()]
        summary = SwarmSummary(
            jobs=len(jobs), built=sorted(j.cpv for j in jobs if j.state == "built"),
            blocked=sorted(j.cpv for j in jobs if j.state == "blocked"),
            failed=sorted(j.cpv for j in jobs if j.state == "failed"),
            builds_per_job=dict(built_events), index_ok=all(r.ok for r in reports),
            index_problems=[str(p) for r in reports for p in r.problems], seconds=time.monotonic() - self.started)
        twice = [cpv for cpv, n in built_events.items() if n != 1]
        if twice:
            summary.problems.append(f"built more than once: {', '.join(twice)}")
        if not summary.index_ok:
            summary.problems.append(f"binhost index: {'; '.join(summary.index_problems[:3])}")
        return summary

    def promote(self, target: str | None = None) -> PromoteResult:
        """Run the gates (dependency closure, a smoke install) on what the drones staged and,
        if they pass, publish it: the area's ``Packages`` becomes a promoted generation."""
        settings = GateSettings(repo=self.repo)
        assert self.keyring is not None
        area = self.area(target)
        return promote(area, gates=run_gates(area, settings), tree=tree_revision(self.repo) or None,
                       signing_key=self.keyring.signing_key().fingerprint)

    def install_on_client(self, atom: str, name: str = "client", url: str | None = None,
                          target: str | None = None) -> tuple[bool, str]:
        """A fresh default client installs ``atom`` from the binhost only (emerge --getbinpkgonly).

        Its binrepos.conf leaves verify-signature at portage's default (on); its keyring
        trusts the binhost's KEYS.asc (locally signed, as getuto does), and as root
        portage verifies as nobody when the work dir lets nobody in.
        """
        assert self.server is not None
        root = self.workdir / name
        client = make_prefix(root, self.repo, url or self.area_url(target), binhost_keys=self.keys_asc,
                             make_conf=self.targets.get(target or ""), verify_as_nobody=_others_can_enter(root))
        proc = subprocess.run([str(client.tool("emerge")), "--getbinpkgonly", "--oneshot", "--quiet-build=y",
                               "--color=n", "--nospinner", atom], env=client.env(), capture_output=True,
                              text=True, timeout=600)
        return proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    def tampered_is_refused(self) -> tuple[bool, str]:
        """A copy of the binhost with one package altered after signing (its index entry made to
        match, so only the signature can tell) is served; a fresh default client must refuse it.

        Returns:
            (refused for the signature's sake, what the client said).
        """
        copy = self.workdir / "tampered-binhost"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(self.pkgdir, copy, ignore=shutil.ignore_patterns(".swarm-*"))
        index = PackagesIndex.read(copy / INDEX_NAME)
        rel_path, entry = sorted(index.entries.items())[0]
        _flip_image_byte(copy / rel_path)
        digests = FileDigests.of(copy / rel_path)
        entry.update(SIZE=str(digests.size), MD5=digests.md5, SHA1=digests.sha1, SHA256=digests.sha256)
        index.write(copy / INDEX_NAME)
        server = make_server(copy, "127.0.0.1:0", QueueGate(self.registry, self.queue))
        thread = threading.Thread(target=server.serve_forever, name="tampered-binhost", daemon=True)
        thread.start()
        try:
            ok, output = self.install_on_client(f"={entry['CPV']}", name="client-tampered", url=server.url)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
        refused = not ok and "verification failed" in output
        return refused, f"{rel_path}: " + output

    def stop(self) -> None:
        """Stop everything this swarm started: drones, binhost, orchestrator, embedded Redis.

        Drones get two SIGTERMs: the second aborts a running build (its emerge is killed and
        the job given back) instead of waiting for it to finish.
        """
        for _ in range(2):
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
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
        if self.keyring is not None:
            self.keyring.stop_agent()
        for scratch in self._scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        self.redis_server.stop()


def _others_can_enter(path: Path) -> bool:
    """Whether every existing directory above ``path`` lets other users (nobody) through."""
    return all(parent.stat().st_mode & 0o001 for parent in Path(path).absolute().parents if parent.exists())


def _flip_image_byte(path: Path) -> None:
    """Change one byte in the middle of a gpkg's image member (the tar stays readable)."""
    with tarfile.open(path, "r:") as container:
        image = next(m for m in container.getmembers() if m.name.endswith("/image.tar.zst"))
    with open(path, "r+b") as handle:
        handle.seek(image.offset_data + image.size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
