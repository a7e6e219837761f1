"""The chaos harness: a real swarm on test-bed hosts, random faults, and the checks after them.

Shared by the short CI form (tests/chaos/test_chaos.py) and the soak (bench/soak.py); both
build a :class:`ChaosRun` with a fault plan (:func:`ci_plan` or :func:`soak_plan`) and call
:meth:`ChaosRun.execute`, which returns the report (a JSON-able dict, ``problems`` empty when
every check held).

The swarm (needs root: it runs on a :class:`tests.testbed.TestBed`)
    - hosts h1..hD are drones, host h(D+1) is the Redis host. Redis runs *inside* that host
      (AOF on, ``appendfsync always``, a password), so "cut the Redis host's network" is a real
      ``net_down`` of its bridge port and a restart is a SIGKILL of redis-server (a crash, not a
      clean shutdown) followed by a start that replays the AOF.
    - each drone host runs ``swarmctl drone run`` under a tiny service supervisor
      (``drone-loop.sh``: start it, wait, start it again a second after it exits, like
      ``Restart=always``) that an init script enabled in the host's ``/etc/rc2.d`` starts at
      boot. A SIGKILLed drone is therefore restarted within ~1 s, and a power-cut host boots
      (~3 s later) and starts its drone again, exactly like a real build machine.
    - the drone's state dir (its build logs, and the build's scratch space) is a 2 MiB tmpfs
      mounted inside the host at boot, so "fill the drone's disk" is ``dd`` into it.
    - two orchestrators run as processes in the controller (the root namespace): a leader and
      a hot standby; killing the leader is a SIGKILL, and a replacement standby is started.
    - the build command is ``build.sh {cpv}``: it sleeps 0.2-0.5 s (from the CPV's hash), needs
      a few KiB of scratch space in the state dir (so it fails on a full disk, as a real build
      would), fails at once when ``/etc/swarm-chaos/rogue`` exists in its host (the rogue
      drone), and when it finishes appends ``cpv drone pid time`` to the *witness* file with
      O_APPEND. The witness lives on the filesystem the hosts share with the controller, outside
      the swarm: it counts every finished build, whoever reports it (an orphaned build of a
      killed drone still finishes and is counted; a power-cut one is not).

Faults (:data:`KINDS`), each run by its own thread so they overlap:
    drone_kill      SIGKILL the drone process (its supervisor restarts it)
    power_cut       SIGKILL the drone host's PID 1 (it reboots ~3 s later and starts its drone)
    net_cut_short   the drone's network down for 0.3 x orchestrator.offline_after (no reclaim expected)
    net_cut_long    ... for 1.3-1.8 x offline_after (its work must be reclaimed)
    leader_kill     SIGKILL the leading orchestrator (the standby must take the lease)
    redis_restart   SIGKILL redis-server and start it again from its AOF
    redis_net_cut   the Redis host's network down (2 s .. 1.5 x offline_after)
    disk_full       fill the drone's state dir; freed after a while (and the drone released if
                    its breaker grounded it, as an operator would)
    rogue           the drone fails every build until grounded by its breaker; then healed
                    (the fault removed and the drone released), it must build again
    lost_reply      the last drone reaches Redis through a TCP proxy (tests.chaos_engine.proxy);
                    armed, it drops every Redis->drone reply for ~1.5 s from the drone's next
                    claim: the claim runs in Redis and its reply never arrives. The drone must
                    end up building that job (its retried claim gets it back) or the orchestrator
                    must give it back, within :meth:`ChaosRun.lost_reply_bound` seconds

Recovery, per fault: ``detect_s`` is injection -> the swarm's defence (work reclaimed, drone
grounded, lease taken over); ``recover_s`` is the moment the fault ended (injection for the
instant ones, the lift for the others) -> the affected part is serving again: the drone
heartbeats again and none of the work it held is still tied to it (killed/cut drones), Redis
answers and every drone and a leader are back on it (Redis faults), the new leader holds the
lease, or the drone claims work again (disk, rogue).

Checks after the run (each failure is a line in ``report["problems"]``):
    - every job is built, none needed/delegated/failed/blocked (nothing stuck);
    - exactly one ``built`` event per job, from the drone the job records as its builder;
    - the witness saw every job built at least once, and saw the publishing drone build it;
    - no stale completion applied: replaying the event stream, every ``built`` comes from the
      drone that held the job at that moment (claimed/reattached, not reclaimed since);
    - the rogue drone was grounded and, once healed, built again;
    - churn 0: every ``reclaimed`` event names a drone that was under a fault at the time;
    - no short net cut caused a reclaim; no drone/orchestrator process crashed (tracebacks).

Extra builds (witness count - 1) and interrupted jobs (reclaimed/released/requeued while a
fault was on) are attributed to the fault that caused them and reported per kind.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import random
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from swarmctl import keys  # noqa: E402
from swarmctl.config import load_config  # noqa: E402
from swarmctl.connection import TRANSIENT  # noqa: E402
from swarmctl.embedded import redis_server_binary  # noqa: E402
from swarmctl.events import Event, _event  # noqa: E402
from swarmctl.graph import JobSpec  # noqa: E402
from swarmctl.queue import PartialAdd, Queue  # noqa: E402
from swarmctl.registry import DroneRegistry  # noqa: E402
from swarmctl.scripts import CLAIM  # noqa: E402
from tests.chaos_engine.proxy import ReplyDropper  # noqa: E402
from tests.testbed import GATEWAY, SUBNET, TestBed, missing_requirements  # noqa: E402

KINDS = ("drone_kill", "power_cut", "net_cut_short", "net_cut_long", "leader_kill",
         "redis_restart", "redis_net_cut", "disk_full", "rogue", "lost_reply")
DRONE_KINDS = {"drone_kill", "power_cut", "net_cut_short", "net_cut_long", "disk_full", "rogue", "lost_reply"}
#: What a claim looks like on the wire (redis-py sends EVALSHA with the script's SHA-1).
CLAIM_SHA = hashlib.sha1(CLAIM.encode()).hexdigest().encode()
REDIS_KINDS = {"redis_restart", "redis_net_cut"}
REDIS_PORT = 6379
STATE_DIR = "/var/lib/chaos-drone"  # inside each drone host; a tmpfs mounted at boot
DISK_KB = 2048
ROGUE_FLAG = "/etc/swarm-chaos/rogue"
ENV_FILE = "/etc/swarm-chaos/drone.env"
RECOVER_TIMEOUT = 60.0

BUILD_SH = r"""#!/bin/sh
# Stand-in build (see tests/chaos_engine/harness.py): 0.2-0.5 s, needs scratch space in the drone's state
# dir, fails at once on a rogue drone, and tells the external witness about every finished build.
cpv=$1
if [ -e /etc/swarm-chaos/rogue ]; then echo "rogue drone: failing $cpv"; exit 1; fi
echo "building $cpv on $(hostname) as $CHAOS_DRONE"
h=$(printf '%s' "$cpv" | cksum | cut -d' ' -f1)
ms=$(( CHAOS_BUILD_MIN_MS + h % (CHAOS_BUILD_MAX_MS - CHAOS_BUILD_MIN_MS + 1) ))
work="$CHAOS_STATE/work.$$"
if ! head -c 16384 /dev/zero > "$work"; then echo "cannot write $work"; rm -f "$work"; exit 1; fi
sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
rm -f "$work"
printf '%s %s %s %s\n' "$cpv" "$CHAOS_DRONE" "$$" "$(date +%s.%N)" >> "$CHAOS_WITNESS"
echo "built $cpv"
"""

DRONE_LOOP_SH = r"""#!/bin/sh
# A tiny service supervisor (Restart=always): runs the drone, starts it again 1 s after it
# exits. Started at boot by /etc/init.d/chaos-drone, so it dies with the host on a power cut.
echo $$ > /run/chaos-drone-loop.pid
. /etc/swarm-chaos/drone.env
mkdir -p "$CHAOS_STATE"
mountpoint -q "$CHAOS_STATE" || mount -t tmpfs -o "size=${CHAOS_DISK_KB}k" chaos-state "$CHAOS_STATE"
while :; do
  . /etc/swarm-chaos/drone.env
  "$CHAOS_PYTHON" -m swarmctl drone run --name "$SWARM_DRONE_NAME" --builder command \
      --command "$CHAOS_COMMAND" --state-dir "$CHAOS_STATE" &
  child=$!
  echo $child > /run/chaos-drone.pid
  wait $child
  echo "$(date +%T.%N) drone-loop: drone $child exited $?; restarting in 1 s"
  sleep 1
done
"""

INIT_SH = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          chaos-drone
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: build-swarm drone under a restart loop (chaos harness)
### END INIT INFO
case "$1" in
  start) setsid -f /bin/sh {loop} </dev/null >>{log} 2>&1 ;;
  stop)
    [ -f /run/chaos-drone-loop.pid ] && kill "$(cat /run/chaos-drone-loop.pid)" 2>/dev/null
    [ -f /run/chaos-drone.pid ] && kill -TERM "$(cat /run/chaos-drone.pid)" 2>/dev/null
    ;;
esac
exit 0
"""


# ----------------------------------------------------------------------------------- plans
@dataclass
class Planned:
    """A fault to inject ``at`` seconds into the run, lasting ``duration`` (if it lasts)."""

    at: float
    kind: str
    duration: float = 0.0


def ci_plan(rng: random.Random, offline_after: float) -> list[Planned]:
    """The short form: every kind once plus a second kill and power cut, ~7 s apart with
    jitter, so the lasting ones (long net cut, Redis cut, full disk, rogue) overlap others."""
    kinds = [*KINDS, "drone_kill", "power_cut"]
    rng.shuffle(kinds)
    # The rogue goes early, so there is work left to prove it healed.
    kinds.remove("rogue")
    kinds.insert(rng.randrange(0, 3), "rogue")
    plan = []
    for k, kind in enumerate(kinds):
        duration = fault_duration(kind, rng, offline_after)
        if kind == "redis_net_cut":  # the case that matters: Redis gone for longer than offline_after
            duration = round(offline_after * rng.uniform(1.1, 1.5), 2)
        plan.append(Planned(at=4 + 6.5 * k + rng.uniform(0, 3), kind=kind, duration=duration))
    return plan


def soak_plan(rng: random.Random, seconds: float, offline_after: float, mean_gap: float = 12.0) -> list[Planned]:
    """The soak: faults as a Poisson process (mean gap ``mean_gap`` s) for ``seconds``, kinds
    drawn uniformly; the first len(KINDS) arrivals are every kind once (shuffled)."""
    first = list(KINDS)
    rng.shuffle(first)
    plan, t = [], 3.0
    while True:
        t += rng.expovariate(1.0 / mean_gap)
        if t > seconds:
            return plan
        kind = first.pop() if first else rng.choice(KINDS)
        plan.append(Planned(at=t, kind=kind, duration=fault_duration(kind, rng, offline_after)))


def fault_duration(kind: str, rng: random.Random, offline_after: float) -> float:
    if kind == "net_cut_short":
        return round(offline_after * rng.uniform(0.2, 0.3), 2)
    if kind == "net_cut_long":
        return round(offline_after * rng.uniform(1.3, 1.8), 2)
    if kind == "redis_net_cut":
        return round(rng.uniform(2.0, 1.5 * offline_after), 2)
    if kind == "redis_restart":
        return round(rng.uniform(0.5, 3.0), 2)  # down time between the kill and the start
    if kind == "disk_full":
        return round(rng.uniform(5.0, 15.0), 2)
    if kind == "rogue":
        return round(rng.uniform(2.0, 6.0), 2)  # how long it stays grounded before the heal
    if kind == "lost_reply":
        return round(rng.uniform(1.2, 1.8), 2)  # how long replies are dropped
    return 0.0


# ----------------------------------------------------------------------------------- faults
@dataclass
class Fault:
    kind: str
    target: str
    planned_at: float
    duration: float
    injected: float | None = None   # wall clock (same clock as Redis TIME and the witness)
    lifted: float | None = None
    detected: float | None = None
    recovered: float | None = None
    held: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def end(self) -> float:
        """When the fault's effects can no longer be blamed on it."""
        return (self.recovered or self.lifted or self.injected or 0.0)

    def summary(self, t0: float) -> dict[str, Any]:
        def rel(t: float | None) -> float | None:
            return round(t - t0, 2) if t else None

        base = self.lifted or self.injected
        return {
            "kind": self.kind, "target": self.target, "duration": self.duration,
            "injected_at": rel(self.injected), "lifted_at": rel(self.lifted),
            "detect_s": round(self.detected - self.injected, 2) if self.detected and self.injected else None,
            "recover_s": round(self.recovered - base, 2) if self.recovered and base else None,
            "held_jobs": len(self.held), "notes": self.notes, "problems": self.problems, "error": self.error,
        }


def _quiet(call: Callable[[], Any], default: Any = None) -> Any:
    try:
        return call()
    except TRANSIENT:
        return default


# ----------------------------------------------------------------------------------- the run
class ChaosRun:
    """A swarm on a test bed, a workload, a fault plan, and the checks. See the module doc.

    Args:
        rundir: Where logs, the witness, Redis data and the report go (kept after the run).
        plan: Faults to inject (offsets from the start of the workload).
        drones: Drone hosts (the Redis host comes on top).
        seed: Seeds target choice and the workload's dependency graph.
        min_jobs: Jobs added before the faults start (in batches); the workload is topped up
            while faults run, and a final batch is added after the last fault so healed drones
            get work.
        build_ms: Range of a build's duration.
        settings: Extra SWARM_* settings for every swarm process (the defaults otherwise).
        slots: Builds each drone runs at once, drone by drone in turn (``(1, 2)``: every other
            drone runs two), so every guarantee is checked on multi-slot drones too.
        log: Where the timeline goes (print by default).
    """

    def __init__(self, rundir: Path, plan: list[Planned], *, drones: int = 4, seed: int = 1,
                 min_jobs: int = 200, open_target: int = 60, final_jobs: int = 40,
                 build_ms: tuple[int, int] = (200, 500), settings: dict[str, str] | None = None,
                 prefix: str = "chaos", drain_timeout: float = 180.0,
                 log: Callable[[str], None] = print, slots: Sequence[int] = (1,)) -> None:
        self.rundir = Path(rundir)
        self.plan = sorted(plan, key=lambda p: p.at)
        self.n_drones = drones
        self.slots = list(slots) or [1]
        self.rng = random.Random(seed)
        self.seed = seed
        self.min_jobs = min_jobs
        self.open_target = open_target
        self.final_jobs = final_jobs
        self.build_ms = build_ms
        self.prefix = prefix
        self.drain_timeout = drain_timeout
        self._log = log
        self.password = secrets.token_hex(16)
        self.redis_index = drones + 1
        self.redis_addr = f"{SUBNET}.{10 + self.redis_index}"
        self.url = f"redis://:{self.password}@{self.redis_addr}:{REDIS_PORT}/0"
        # The drones' state dir is a 2 MiB tmpfs: the low-disk floor sits inside it (0.5 MiB), so a
        # disk_full fault drives a drone low-disk and freeing the space brings it back.
        self.settings = {"SWARM_QUEUE_EVENTS_MAX": "2000000", "SWARM_DRONE_MIN_FREE_GB": str(0.5 / 1024),
                         **(settings or {})}
        self.env = self._env()
        self.config = load_config(environ=self.env)
        self.offline_after = self.config.orchestrator.offline_after
        self.names = [f"d{i}" for i in range(1, drones + 1)]
        self.proxied = self.names[-1]  # reaches Redis through the reply-dropping proxy
        self.proxy: ReplyDropper | None = None
        self.workload_error: str | None = None
        self.witness = self.rundir / "witness.log"
        self.bed: TestBed | None = None
        self.orchestrators: list[subprocess.Popen[bytes]] = []
        self.events: list[Event] = []
        self._event_ts: list[float] = []
        self.faults: list[Fault] = []
        self.jobs: list[str] = []
        self._busy: set[str] = set()   # drones and "redis"/"leader" under a fault right now
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._faults_over = threading.Event()
        self._threads: list[threading.Thread] = []
        self._batch = 0
        self.t0 = 0.0
        self.client: redis.Redis | None = None
        self.queue: Queue | None = None
        self.registry: DroneRegistry | None = None

    # ------------------------------------------------------------------ plumbing
    def log(self, text: str) -> None:
        stamp = f"{time.time() - self.t0:7.2f}" if self.t0 else "  setup"
        self._log(f"[chaos {stamp}] {text}")

    def _env(self) -> dict[str, str]:
        home = self.rundir / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
        env.update({
            "SWARM_REDIS_URL": self.url, "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_DATA_HOME": str(home / "data"), "XDG_STATE_HOME": str(home / "state"),
            "XDG_CACHE_HOME": str(home / "cache"), "PYTHONUNBUFFERED": "1", "LC_ALL": "C.UTF-8",
        })
        env.update(self.settings)
        return env

    def _retry(self, call: Callable[[], Any], timeout: float = 90.0) -> Any:
        """A controller-side Redis call, retried through the outages the run causes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return call()
            except (*TRANSIENT, PartialAdd):  # adding the same batch again queues the rest
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def _wait(self, predicate: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            value = _quiet(predicate, None)
            if value:
                return value
            if time.monotonic() > deadline:
                return None
            time.sleep(step)
        return None

    def now_redis_ms(self) -> float:
        return time.time() * 1000

    # ------------------------------------------------------------------ setup
    def start(self) -> None:
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        self.rundir.mkdir(parents=True, exist_ok=True)
        (self.rundir / "logs").mkdir(exist_ok=True)
        self.witness.touch()
        (self.rundir / "build.sh").write_text(BUILD_SH)
        (self.rundir / "drone-loop.sh").write_text(DRONE_LOOP_SH)
        os.chmod(self.rundir, 0o755)
        self.log(f"bringing up {self.n_drones} drone hosts + a Redis host (seed {self.seed})")
        self.bed = TestBed(self.n_drones + 1, self.prefix, workdir=self.rundir / "bed")
        self.bed.start()
        self._start_redis()
        self.proxy = ReplyDropper((self.redis_addr, REDIS_PORT), (GATEWAY, 0)).start()
        self.client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=3,
                                           socket_connect_timeout=3)
        self.queue = Queue(self.client, self.config)
        self.registry = DroneRegistry(self.client, self.config)
        for i, name in enumerate(self.names, start=1):
            self._install_drone(i, name)
        for _ in range(2):
            self._start_orchestrator()
        tail = threading.Thread(target=self._tail_events, name="events", daemon=True)
        tail.start()
        ok = self._wait(lambda: all(self._heartbeat_age(n) < 5 for n in self.names), 60)
        if not ok:
            raise RuntimeError("drones did not come up; see " + str(self.rundir / "logs"))
        self.log("swarm up: drones " + ", ".join(self.names) + "; 2 orchestrators; Redis in h"
                 + str(self.redis_index))

    def close(self) -> None:
        self._stop.set()
        for proc in self.orchestrators:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.orchestrators:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.bed is not None:
            self.bed.close()
            self.bed = None
        if self.proxy is not None:
            self.proxy.close()
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> ChaosRun:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_redis(self) -> None:
        assert self.bed is not None
        data = self.rundir / "redis"
        data.mkdir(exist_ok=True)
        argv = [redis_server_binary(), "--port", str(REDIS_PORT), "--bind", self.redis_addr,
                "--requirepass", self.password, "--dir", str(data), "--appendonly", "yes",
                "--appendfsync", "always", "--save", "", "--daemonize", "no",
                "--pidfile", "/run/chaos-redis.pid"]
        cmd = f"setsid -f {shlex.join(argv)} </dev/null >>{shlex.quote(str(self.rundir / 'logs' / 'redis.log'))} 2>&1"
        self.bed.run(self.redis_index, cmd, check=True)
        probe = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            if not self._wait(lambda: probe.ping(), 20, 0.05):
                raise RuntimeError("Redis did not start in its host")
        finally:
            probe.close()

    def _kill_redis(self) -> None:
        assert self.bed is not None
        self.bed.run(self.redis_index, "p=$(cat /run/chaos-redis.pid) && kill -9 $p && "
                     "while kill -0 $p 2>/dev/null; do sleep 0.02; done; rm -f /run/chaos-redis.pid", check=True)

    def _install_drone(self, i: int, name: str) -> None:
        assert self.bed is not None and self.registry is not None
        host = self.bed.host(i)
        token = self.registry.enroll(name, host.machine_id)
        pid1 = self.bed.pid1(i)
        root = Path(f"/proc/{pid1}/root")
        values = {
            **{k: v for k, v in self.env.items() if k.startswith(("SWARM_", "XDG_"))},
            "SWARM_DRONE_NAME": name, "SWARM_DRONE_TOKEN": token,
            "SWARM_DRONE_SLOTS": str(self.slots[(i - 1) % len(self.slots)]),
            **({"SWARM_REDIS_URL": self._proxied_url()} if name == self.proxied else {}),
            "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1", "HOME": "/root",
            "CHAOS_PYTHON": sys.executable, "CHAOS_DRONE": name, "CHAOS_WITNESS": str(self.witness),
            "CHAOS_STATE": STATE_DIR, "CHAOS_DISK_KB": str(DISK_KB),
            "CHAOS_BUILD_MIN_MS": str(self.build_ms[0]), "CHAOS_BUILD_MAX_MS": str(self.build_ms[1]),
            "CHAOS_COMMAND": f"/bin/sh {self.rundir / 'build.sh'} {{cpv}}",
            # Builds get an allowlisted environment only: pass build.sh what it needs.
            "SWARM_DRONE_BUILD_ENV": "CHAOS_DRONE CHAOS_WITNESS CHAOS_STATE CHAOS_BUILD_MIN_MS CHAOS_BUILD_MAX_MS",
        }
        etc = root / "etc" / "swarm-chaos"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "drone.env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))
        init = root / "etc" / "init.d" / "chaos-drone"
        init.write_text(INIT_SH.format(loop=shlex.quote(str(self.rundir / "drone-loop.sh")),
                                       log=shlex.quote(str(self.rundir / "logs" / f"{name}.log"))))
        init.chmod(0o755)
        link = root / "etc" / "rc2.d" / "S20chaos-drone"
        if not link.is_symlink():
            os.symlink("../init.d/chaos-drone", link)
        self.bed.run(i, ["/etc/init.d/chaos-drone", "start"], check=True)

    def _proxied_url(self) -> str:
        assert self.proxy is not None
        host, port = self.proxy.address
        return f"redis://:{self.password}@{host}:{port}/0"

    def _start_orchestrator(self) -> subprocess.Popen[bytes]:
        n = len(self.orchestrators)
        log = open(self.rundir / "logs" / f"orchestrator-{n}.log", "wb")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen([sys.executable, "-m", "swarmctl", "orchestrator", "run"], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(self.rundir))
        log.close()
        self.orchestrators.append(proc)
        return proc

    def _tail_events(self) -> None:
        client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=3, socket_connect_timeout=2)
        last = "0-0"
        while not self._stop.is_set():
            try:
                reply = client.xread({keys.EVENTS: last}, block=500, count=2000)
            except TRANSIENT:
                time.sleep(0.2)
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    event = _event(entry_id, fields)
                    self.events.append(event)
                    self._event_ts.append(event.ts)

    # ------------------------------------------------------------------ observation
    def _drone(self, name: str) -> dict[str, str]:
        assert self.client is not None
        return self.client.hgetall(keys.drone(name))

    def _heartbeat_age(self, name: str) -> float:
        seen = self._drone(name).get("last_seen")
        return (time.time() * 1000 - int(seen)) / 1000 if seen else 1e9

    def _beat_after(self, name: str, t: float) -> bool:
        seen = self._drone(name).get("last_seen")
        return bool(seen) and int(seen) / 1000 > t

    def _held(self, name: str) -> dict[str, str]:
        """Jobs delegated to ``name`` right now, with their leases."""
        assert self.client is not None
        held = {}
        for cpv in self.client.smembers(keys.drone_jobs(name)):
            state, drone, lease = self.client.hmget(keys.job(cpv), "state", "drone", "lease")
            if state == "delegated" and drone == name:
                held[cpv] = lease or ""
        return held

    def _still_held(self, name: str, held: dict[str, str]) -> list[str]:
        assert self.client is not None
        left = []
        for cpv, lease in held.items():
            state, drone, now_lease = self.client.hmget(keys.job(cpv), "state", "drone", "lease")
            if state == "delegated" and drone == name and now_lease == lease:
                left.append(cpv)
        return left

    def _event_after(self, kind: str, drone: str | None, t: float) -> Event | None:
        """The first ``kind`` event (of ``drone``) at or after ``t``."""
        events = self.events
        start = bisect.bisect_left(self._event_ts, t - 0.001, hi=min(len(self._event_ts), len(events)))
        for event in events[start:]:
            if event.ts >= t and event.kind == kind and (drone is None or event.drone == drone):
                return event
        return None

    def _leader(self) -> str | None:
        assert self.client is not None
        return self.client.get(keys.LEADER)

    def _healthy(self, since: float) -> bool:
        """Redis answers, a leader holds the lease, every drone not under another fault beat after ``since``."""
        assert self.client is not None
        self.client.ping()
        if not self._leader():
            return False
        with self._lock:
            busy = set(self._busy)
        return all(self._beat_after(n, since) for n in self.names if n not in busy)

    # ------------------------------------------------------------------ workload
    def add_batch(self, size: int) -> list[str]:
        """Queue ``size`` jobs as one batch with dependencies (each on up to 3 earlier ones)."""
        assert self.queue is not None
        self._batch += 1
        cat = f"chaos-w{self._batch:03d}"
        cpvs = [f"{cat}/p{i:03d}-1" for i in range(size)]
        specs = []
        for i, cpv in enumerate(cpvs):
            pool = cpvs[max(0, i - 25):i]
            deps = self.rng.sample(pool, k=min(len(pool), self.rng.choice((0, 0, 1, 1, 2, 3))))
            specs.append(JobSpec(cpv, build=deps, estimate=sum(self.build_ms) / 2000))
        self._retry(lambda: self.queue.add(specs))  # type: ignore[union-attr]
        self.jobs += cpvs
        self.log(f"workload: queued batch {cat} ({size} jobs, {len(self.jobs)} in all)")
        return cpvs

    def _workload(self) -> None:
        """Top the queue up while faults run: never fewer than open_target open jobs.

        A workload that dies is a failed run (recorded in ``workload_error``), never a quiet one:
        faults injected into an idle swarm prove nothing."""
        try:
            while not self._faults_over.is_set() and not self._stop.is_set():
                counts = _quiet(lambda: self.queue.counts(), None)  # type: ignore[union-attr]
                if counts is not None and counts["needed"] + counts["delegated"] < self.open_target // 2:
                    with contextlib.suppress(*TRANSIENT):
                        self.add_batch(self.open_target)
                self._faults_over.wait(1.0)
        except Exception as exc:
            self.workload_error = f"{type(exc).__name__}: {exc}"
            self.log(f"WORKLOAD DIED at {time.time() - self.t0:.1f} s: {self.workload_error}")

    # ------------------------------------------------------------------ fault runners
    def _pick_target(self, kind: str) -> str | None:
        with self._lock:
            if kind in DRONE_KINDS:
                free = [n for n in self.names if n not in self._busy]
                # Never fault the last healthy drone: someone has to build.
                if len(free) <= 1:
                    return None
                target = self.proxied if kind == "lost_reply" else self.rng.choice(free)
            elif kind in REDIS_KINDS:
                target = "redis"
            else:
                target = "leader"
            if target in self._busy:
                return None
            self._busy.add(target)
            return target

    def _release_target(self, target: str) -> None:
        with self._lock:
            self._busy.discard(target)

    def _scheduler(self) -> None:
        for planned in self.plan:
            due = self.t0 + planned.at
            while time.time() < due and not self._stop.is_set():
                time.sleep(min(0.2, max(0.0, due - time.time())))
            target = None
            while target is None and not self._stop.is_set():
                target = self._pick_target(planned.kind)
                if target is None:
                    time.sleep(0.5)
            if target is None:
                return
            fault = Fault(planned.kind, target, planned.at, planned.duration)
            self.faults.append(fault)
            thread = threading.Thread(target=self._run_fault, args=(fault,), name=f"fault-{planned.kind}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run_fault(self, fault: Fault) -> None:
        try:
            getattr(self, f"_fault_{fault.kind}")(fault)
        except Exception as exc:  # a harness error is reported, never hangs the run
            fault.error = f"{type(exc).__name__}: {exc}"
            self.log(f"fault {fault.kind} on {fault.target} errored: {fault.error}")
        finally:
            r = fault.summary(self.t0)
            self.log(f"recovered from {fault.kind} on {fault.target}: detect {r['detect_s']} s, "
                     f"recover {r['recover_s']} s {'; '.join(fault.notes)}")
            self._release_target(fault.target)

    def _index(self, name: str) -> int:
        return self.names.index(name) + 1

    def _snapshot_held(self, fault: Fault, held: dict[str, str] | None = None) -> dict[str, str]:
        """The target's delegated jobs; called before and again right after the injection (a
        claim can land in between), so ``held`` accumulates."""
        held = dict(held or {})
        held.update(_quiet(lambda: self._held(fault.target), {}) or {})
        fault.held = sorted(held)
        return held

    def _await_recovered_drone(self, fault: Fault, held: dict[str, str], since: float) -> None:
        """Drone back: beating after ``since``, and none of the work it held still tied to it."""
        def back() -> bool:
            return self._beat_after(fault.target, since) and not self._still_held(fault.target, held)

        if self._wait(back, RECOVER_TIMEOUT):
            fault.recovered = time.time()
        else:
            left = _quiet(lambda: self._still_held(fault.target, held), "?")
            fault.problems.append(f"not recovered after {RECOVER_TIMEOUT:.0f} s (still held: {left})")

    def _note_detect(self, fault: Fault, kind: str = "reclaimed") -> None:
        event = self._event_after(kind, fault.target, fault.injected or 0)
        if event and (fault.recovered is None or event.ts <= fault.recovered + 1):
            fault.detected = event.ts

    def _fault_drone_kill(self, fault: Fault) -> None:
        assert self.bed is not None
        held = self._snapshot_held(fault)
        self.log(f"INJECT drone_kill {fault.target} (holding {len(held)})")
        fault.injected = time.time()
        self.bed.run(self._index(fault.target), "p=$(cat /run/chaos-drone.pid) && kill -9 $p && "
                     "while kill -0 $p 2>/dev/null; do sleep 0.02; done", check=True)
        fault.lifted = fault.injected
        held = self._snapshot_held(fault, held)
        self._await_recovered_drone(fault, held, time.time())
        self._note_detect(fault)

    def _fault_power_cut(self, fault: Fault) -> None:
        assert self.bed is not None
        i = self._index(fault.target)
        held = self._snapshot_held(fault)
        boot = self.bed.boot_id(i)
        self.log(f"INJECT power_cut h{i} ({fault.target}, holding {len(held)})")
        fault.injected = time.time()
        self.bed.power_cut(i)
        fault.lifted = fault.injected
        held = self._snapshot_held(fault, held)
        self.bed.wait_booted(i, boot, timeout=60)
        fault.notes.append(f"host back after {time.time() - fault.injected:.1f} s")
        self._await_recovered_drone(fault, held, time.time())
        self._note_detect(fault)

    def _net_cut(self, fault: Fault) -> dict[str, str]:
        assert self.bed is not None
        i = self._index(fault.target)
        held = self._snapshot_held(fault)
        self.log(f"INJECT {fault.kind} {fault.target} for {fault.duration:.1f} s (holding {len(held)})")
        fault.injected = time.time()
        self.bed.net_down(i)
        try:
            self._stop.wait(min(0.5, fault.duration))
            held = self._snapshot_held(fault, held)
            self._stop.wait(max(0.0, fault.duration - 0.5))
        finally:
            self.bed.net_up(i)
            fault.lifted = time.time()
        return held

    def _fault_net_cut_short(self, fault: Fault) -> None:
        self._net_cut(fault)
        if self._wait(lambda: self._beat_after(fault.target, fault.lifted or 0), RECOVER_TIMEOUT):
            fault.recovered = time.time()
        reclaimed = [e for e in self.events if e.kind == "reclaimed" and e.drone == fault.target
                     and (fault.injected or 0) <= e.ts <= (fault.recovered or time.time())]
        if reclaimed:
            fault.problems.append(f"a cut shorter than the offline threshold reclaimed {len(reclaimed)} job(s)")

    def _fault_net_cut_long(self, fault: Fault) -> None:
        self._net_cut(fault)
        if self._wait(lambda: self._beat_after(fault.target, fault.lifted or 0), RECOVER_TIMEOUT):
            fault.recovered = time.time()
        self._note_detect(fault)
        reattached = [e.job for e in self.events if e.kind == "reattached" and e.drone == fault.target
                      and (fault.injected or 0) <= e.ts <= (fault.recovered or time.time()) + 1]
        if reattached:
            fault.notes.append(f"reattached after the cut: {' '.join(reattached)}")
        if fault.held and not fault.detected:
            self._explain_unreclaimed(fault)

    def _explain_unreclaimed(self, fault: Fault) -> None:
        """A long cut whose held work saw no reclaim: a problem unless the work was finished
        before the cut bit, or the orchestrator rightly could not judge the silence (a Redis
        fault or a leader change overlapping the cut: see Orchestrator.can_judge_silence)."""
        t0, t1 = fault.injected or 0.0, fault.lifted or time.time()
        history = {cpv: [e for e in self.events if e.job == cpv and t0 - 1 <= e.ts <= t1 + 1] for cpv in fault.held}
        done = {"built", "failed", "requeued", "released", "blocked"}
        unfinished = [c for c, evs in history.items()
                      if not any(e.kind in done and e.drone == fault.target and e.ts <= t0 + 1 for e in evs)]
        if not unfinished:
            fault.notes.append("held work finished before the cut bit")
            return
        blind = [f for f in self.faults if f is not fault and f.injected and f.kind in (*REDIS_KINDS, "leader_kill")
                 and f.injected <= t1 and f.end + self.offline_after >= t0 - self.offline_after]
        detail = "; ".join(f"{c}: " + (", ".join(f"{e.kind}@{e.ts - self.t0:.1f}/{e.drone}" for e in history[c])
                                       or "no events") for c in unfinished)
        if blind:
            overlap = ", ".join(f"{f.kind}@{(f.injected or 0) - self.t0:.0f}s" for f in blind)
            fault.notes.append(f"held work not reclaimed while the orchestrator could not judge silence "
                               f"({overlap}): {detail}")
        else:
            fault.problems.append(f"held work was not reclaimed ({detail})")

    def _fault_leader_kill(self, fault: Fault) -> None:
        leader = self._wait(self._leader, 60)
        victim = next((p for p in self.orchestrators if leader and f":{p.pid}:" in leader and p.poll() is None), None)
        if victim is None:
            fault.error = f"leader {leader!r} is not one of ours"
            return
        self.log(f"INJECT leader_kill orchestrator pid {victim.pid}")
        fault.injected = fault.lifted = time.time()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        if self._wait(lambda: (self._leader() or leader) != leader, RECOVER_TIMEOUT, 0.05):
            fault.recovered = fault.detected = time.time()
            fault.notes.append(f"new leader {self._leader()}")
        self._start_orchestrator()  # a new standby

    def _fault_redis_restart(self, fault: Fault) -> None:
        self.log(f"INJECT redis_restart (SIGKILL, {fault.duration:.1f} s down, AOF replay)")
        fault.injected = time.time()
        self._kill_redis()
        self._stop.wait(fault.duration)
        self._start_redis()
        fault.lifted = time.time()
        if self._wait(lambda: self._healthy(fault.lifted or 0), RECOVER_TIMEOUT):
            fault.recovered = time.time()

    def _fault_redis_net_cut(self, fault: Fault) -> None:
        assert self.bed is not None
        self.log(f"INJECT redis_net_cut for {fault.duration:.1f} s")
        fault.injected = time.time()
        self.bed.net_down(self.redis_index)
        try:
            self._stop.wait(fault.duration)
        finally:
            self.bed.net_up(self.redis_index)
            fault.lifted = time.time()
        if self._wait(lambda: self._healthy(fault.lifted or 0), RECOVER_TIMEOUT):
            fault.recovered = time.time()

    def _claims_again(self, name: str, since: float) -> bool:
        if self._event_after("claimed", name, since):
            return True
        info = self._drone(name)
        grounded = int(info.get("grounded_until") or 0) / 1000 > time.time()
        ready = self.client.zcard(keys.READY) if self.client else 1
        return not grounded and not ready and self._beat_after(name, since)

    def _operator_release(self, fault: Fault) -> None:
        assert self.registry is not None
        info = self._retry(lambda: self._drone(fault.target))
        if int(info.get("grounded_until") or 0) / 1000 > time.time():
            self._retry(lambda: self.registry.release(fault.target))  # type: ignore[union-attr]
            fault.notes.append("grounded; released by the operator")

    def _fault_disk_full(self, fault: Fault) -> None:
        assert self.bed is not None
        i = self._index(fault.target)
        self.log(f"INJECT disk_full {fault.target} for {fault.duration:.1f} s")
        fault.injected = time.time()
        self.bed.run(i, f"dd if=/dev/zero of={STATE_DIR}/fill bs=64k 2>/dev/null; df -k {STATE_DIR} | tail -1",
                     check=False)
        self._stop.wait(fault.duration)
        self.bed.run(i, f"rm -f {STATE_DIR}/fill", check=True)
        faults = Counter(e.reason.split(":", 1)[0] for e in self.events
                         if e.kind in ("requeued", "failed") and e.drone == fault.target and e.ts >= fault.injected)
        fault.notes.append("failures reported as " + (", ".join(f"{k} x{v}" for k, v in faults.items()) or "none"))
        self._operator_release(fault)
        fault.lifted = time.time()
        grounded = self._event_after("grounded", fault.target, fault.injected)
        if grounded:
            fault.detected = grounded.ts
        if self._wait(lambda: self._claims_again(fault.target, fault.lifted or 0), RECOVER_TIMEOUT):
            fault.recovered = time.time()

    def _fault_rogue(self, fault: Fault) -> None:
        assert self.bed is not None
        i = self._index(fault.target)
        self.log(f"INJECT rogue {fault.target}: it fails every build")
        fault.injected = time.time()
        self.bed.run(i, f"touch {ROGUE_FLAG}", check=True)
        grounded = self._wait(lambda: self._event_after("grounded", fault.target, fault.injected or 0), 90)
        if grounded:
            fault.detected = grounded.ts
            fault.notes.append(f"grounded after {grounded.reason}")
        else:
            fault.problems.append("not grounded")
        self._stop.wait(fault.duration)
        # Heal: the command is fixed and the operator lifts the grounding.
        self.bed.run(i, f"rm -f {ROGUE_FLAG}", check=True)
        self._operator_release(fault)
        fault.lifted = time.time()
        if self._wait(lambda: self._claims_again(fault.target, fault.lifted or 0), RECOVER_TIMEOUT):
            fault.recovered = time.time()

    def lost_reply_bound(self, window: float) -> float:
        """Longest a job may stay delegated to a drone that does not know it holds it, after a
        reply lost at the start of a ``window``-second drop: the claim's timeout and retry
        (which gets the job back), else the drone's next heartbeat and the orchestrator's next
        sweep (which give it back), plus slack for a loaded machine."""
        cfg = self.config
        return (window + cfg.redis.socket_timeout + 2 * cfg.drone.heartbeat_interval
                + 2 * cfg.orchestrator.interval + 5.0)

    def _known_to_drone(self, name: str, jobs: list[str]) -> bool:
        """Every one of ``jobs`` is either no longer delegated to ``name`` or in the jobs its last
        heartbeat said it holds."""
        assert self.client is not None
        held = set((self.client.hget(keys.drone(name), "held") or "").split())
        for cpv in jobs:
            state, drone = self.client.hmget(keys.job(cpv), "state", "drone")
            if state == "delegated" and drone == name and cpv not in held:
                return False
        return True

    def _fault_lost_reply(self, fault: Fault) -> None:
        assert self.proxy is not None
        self.log(f"INJECT lost_reply {fault.target}: replies dropped for {fault.duration:.1f} s from its next claim")
        armed = time.time()
        self.proxy.arm(CLAIM_SHA, fault.duration)
        fault.injected = self.proxy.wait_triggered(RECOVER_TIMEOUT)
        if fault.injected is None:
            self.proxy.disarm()
            fault.injected = armed
            fault.error = f"{fault.target} sent no claim within {RECOVER_TIMEOUT:.0f} s"
            return
        self._stop.wait(max(0.0, fault.injected + fault.duration - time.time()))
        fault.lifted = fault.injected + fault.duration
        self._stop.wait(0.5)  # the claim events reach the tail
        claimed = sorted({e.job for e in self.events if e.kind == "claimed" and e.drone == fault.target
                          and fault.injected - 0.05 <= e.ts <= fault.lifted})
        fault.held = claimed
        fault.notes.append(f"{len(claimed)} claim(s) lost their reply ({' '.join(claimed) or 'none'}), "
                           f"{self.proxy.dropped_chunks} reply chunk(s) dropped in all")
        bound = self.lost_reply_bound(fault.duration)

        def settled() -> bool:
            return self._beat_after(fault.target, fault.lifted or 0) and self._known_to_drone(fault.target, claimed)

        if self._wait(settled, bound + RECOVER_TIMEOUT):
            fault.recovered = time.time()
        for kind in ("claim_replayed", "reclaimed"):
            event = self._event_after(kind, fault.target, fault.injected)
            if event and (fault.recovered is None or event.ts <= fault.recovered + 1):
                fault.detected = min(fault.detected or event.ts, event.ts)
        if fault.recovered is None or fault.recovered - fault.injected > bound:
            left = _quiet(lambda: [c for c in claimed if not self._known_to_drone(fault.target, [c])], "?")
            fault.problems.append(f"a job stayed delegated to {fault.target}, which did not hold it, for over "
                                  f"{bound:.0f} s (still: {left})")

    # ------------------------------------------------------------------ the whole run
    def execute(self) -> dict[str, Any]:
        """Start, run the workload and the plan, drain, verify; always tears down."""
        started = time.monotonic()
        try:
            self.start()
            self.t0 = time.time()
            first = max(self.open_target, 1)
            while len(self.jobs) < self.min_jobs:
                self.add_batch(min(first, self.min_jobs - len(self.jobs)))
            work = threading.Thread(target=self._workload, name="workload", daemon=True)
            work.start()
            sched = threading.Thread(target=self._scheduler, name="scheduler", daemon=True)
            sched.start()
            sched.join()
            for thread in self._threads:
                thread.join(timeout=RECOVER_TIMEOUT * 2 + 60)
            self._faults_over.set()
            work.join()
            self.log("every fault lifted; final batch so healed drones get work")
            self.add_batch(self.final_jobs)
            done = self._wait(lambda: self.queue.counts()["built"] >= len(self.jobs), self.drain_timeout, 0.5)  # type: ignore[union-attr]
            self.log("drained" if done else f"NOT drained after {self.drain_timeout:.0f} s")
            time.sleep(max(3.0, self.config.drone.heartbeat_interval * 2))  # late (stale) reports land
            report = self.verify()
        finally:
            self.close()
        report["wall_seconds"] = round(time.monotonic() - started, 1)
        (self.rundir / "report.json").write_text(json.dumps(report, indent=1))
        return report

    # ------------------------------------------------------------------ verification
    def _witness(self) -> list[tuple[str, str, int, float]]:
        rows = []
        for line in self.witness.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:
                rows.append((parts[0], parts[1], int(parts[2]), float(parts[3])))
        return rows

    def _fault_for(self, drone: str | None, t: float, after: float, before: float = 0.5) -> Fault | None:
        """The fault behind something that happened on ``drone`` at ``t``: one on that drone whose
        window [injected - before, end + after] holds ``t`` (latest injected first), else a Redis
        fault whose window does (Redis faults touch every drone)."""
        best = None
        for f in self.faults:
            if f.injected is None or f.kind == "leader_kill":
                continue
            if f.kind in DRONE_KINDS and f.target != drone:
                continue
            if not f.injected - before <= t <= f.end + after:
                continue
            rank = (f.kind in DRONE_KINDS, f.injected)
            if best is None or rank > (best.kind in DRONE_KINDS, best.injected):
                best = f
        return best

    def verify(self) -> dict[str, Any]:
        assert self.client is not None and self.queue is not None
        problems: list[str] = []
        if self.workload_error:
            problems.append(f"the workload stopped topping up the queue: {self.workload_error}")
        events = list(self.events)
        counts = self.queue.counts()
        total = len(self.jobs)
        if counts["built"] != total or counts["needed"] or counts["delegated"] or counts["failed"] or counts["blocked"]:
            problems.append(f"queue not fully built: {counts} of {total} jobs")
            stuck = [j for j in self.queue.jobs() if j.state != "built"]
            problems += [f"  {j.cpv}: {j.state} drone={j.drone} attempts={j.attempts} reason={j.reason!r}"
                         for j in stuck[:10]]
        stats = self.client.hgetall(keys.STATS)

        # Exactly one built event per job, from the drone the job names.
        built_events: dict[str, list[Event]] = defaultdict(list)
        for e in events:
            if e.kind == "built":
                built_events[e.job].append(e)
        built_by = {}
        with self.client.pipeline(transaction=False) as pipe:
            for cpv in self.jobs:
                pipe.hget(keys.job(cpv), "built_by")
            for cpv, by in zip(self.jobs, pipe.execute(), strict=True):
                built_by[cpv] = by
        for cpv in self.jobs:
            got = built_events.get(cpv, [])
            if len(got) != 1:
                problems.append(f"{cpv}: {len(got)} built events (want exactly 1)")
            elif got[0].drone != built_by[cpv]:
                problems.append(f"{cpv}: built event by {got[0].drone} but the job says {built_by[cpv]}")

        # The witness: every job built at least once, and by its publisher.
        witness = self._witness()
        by_cpv: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
        for cpv, drone, pid, ts in witness:
            by_cpv[cpv].append((drone, pid, ts))
        extra: list[tuple[str, str, float]] = []
        for cpv in self.jobs:
            seen = sorted(by_cpv.get(cpv, []), key=lambda r: r[2])
            if not seen:
                problems.append(f"{cpv}: published but the witness never saw it built")
                continue
            pub = built_events.get(cpv, [None])[0]
            if pub is None:
                continue
            mine = [r for r in seen if r[0] == pub.drone and r[2] <= pub.ts + 1.0]
            if not mine:
                problems.append(f"{cpv}: published by {pub.drone}, which the witness never saw build it")
                continue
            published = mine[-1]
            extra += [(cpv, r[0], r[2]) for r in seen if r is not published]

        # Replay ownership: a built event must come from the job's current holder.
        owner: dict[str, str | None] = {}
        stale_applied = 0
        for e in events:
            if e.kind in ("claimed", "reattached"):
                owner[e.job] = e.drone
            elif e.kind in ("reclaimed", "released", "requeued", "failed", "blocked"):
                owner[e.job] = None
            elif e.kind == "built":
                if owner.get(e.job) != e.drone:
                    stale_applied += 1
                    problems.append(f"{e.job}: built by {e.drone} while held by {owner.get(e.job)} (stale applied)")
                owner[e.job] = None

        # Faults: each recovered; the rogue grounded and healed; short cuts reclaimed nothing.
        margin = self.offline_after + 2 * self.config.orchestrator.interval + 3
        for f in self.faults:
            if f.error:
                problems.append(f"fault {f.kind} on {f.target}: harness error {f.error}")
            elif f.recovered is None:
                problems.append(f"fault {f.kind} on {f.target} at {f.planned_at:.0f} s never recovered")
            problems += [f"fault {f.kind} on {f.target}: {p}" for p in f.problems]
            if f.kind == "rogue" and f.lifted:
                if not any(e.kind == "grounded" and e.drone == f.target and e.ts >= (f.injected or 0) for e in events):
                    problems.append(f"rogue {f.target} was never grounded")
                if not any(e.kind == "built" and e.drone == f.target and e.ts >= f.lifted for e in events):
                    problems.append(f"rogue {f.target} did not build again after it was healed")
        for kind in KINDS:
            if not any(f.kind == kind and f.injected for f in self.faults):
                problems.append(f"no {kind} fault was injected")

        # Churn: reclaims only from drones under a fault at the time.
        churn = []
        for e in events:
            if e.kind != "reclaimed":
                continue
            f = self._fault_for(e.drone, e.ts, margin)
            if f is None or f.kind in REDIS_KINDS:
                churn.append(e)
        for e in churn[:10]:
            problems.append(f"churn: {e.job} reclaimed from healthy {e.drone} at {e.ts - self.t0:.1f} s ({e.reason})")
        if len(churn) > 10:
            problems.append(f"churn: {len(churn) - 10} more")

        # Crashes: a traceback in any swarm process's log.
        tracebacks = {}
        for path in sorted((self.rundir / "logs").glob("*.log")):
            n = path.read_text(errors="replace").count("Traceback (most recent call last)")
            if n:
                tracebacks[path.name] = n
                problems.append(f"{path.name}: {n} traceback(s)")

        # Attribution per fault kind.
        per_kind: dict[str, dict[str, Any]] = {}
        for f in self.faults:
            k = per_kind.setdefault(f.kind, {"count": 0, "recover_s": [], "detect_s": [],
                                             "jobs_interrupted": 0, "extra_builds": 0})
            s = f.summary(self.t0)
            k["count"] += 1
            if s["recover_s"] is not None:
                k["recover_s"].append(s["recover_s"])
            if s["detect_s"] is not None:
                k["detect_s"].append(s["detect_s"])
        unattributed_extra = 0
        build_max = self.build_ms[1] / 1000 + 2
        for _cpv, drone, ts in extra:
            f = self._fault_for(drone, ts, margin + build_max, before=build_max)
            if f is None:
                unattributed_extra += 1
            else:
                per_kind[f.kind]["extra_builds"] += 1
        unattributed_interrupts = 0
        for e in events:
            if e.kind in ("reclaimed", "released", "requeued") and e.job:
                f = self._fault_for(e.drone, e.ts, margin)
                if f is None:
                    unattributed_interrupts += 1
                else:
                    per_kind[f.kind]["jobs_interrupted"] += 1
        if unattributed_extra:
            problems.append(f"{unattributed_extra} extra build(s) not explained by any fault")
        recover_all = [r for k in per_kind.values() for r in k["recover_s"]]
        for k in per_kind.values():
            k["median_recover_s"] = round(statistics.median(k["recover_s"]), 2) if k["recover_s"] else None
            k["max_recover_s"] = max(k["recover_s"]) if k["recover_s"] else None
        ev_counts = Counter(e.kind for e in events)
        return {
            "seed": self.seed,
            "settings": {"offline_after": self.offline_after, "sweep_interval": self.config.orchestrator.interval,
                         "heartbeat_interval": self.config.drone.heartbeat_interval,
                         "leader_ttl": self.config.orchestrator.leader_ttl,
                         "breaker_failures": self.config.breaker.failures, "drones": self.n_drones,
                         "build_ms": list(self.build_ms)},
            "run_seconds": round(time.time() - self.t0, 1),
            "jobs": total, "queue": counts,
            "builds_witnessed": len(witness), "extra_builds": len(extra),
            "unattributed_extra_builds": unattributed_extra,
            "unattributed_interruptions": unattributed_interrupts,
            "stale_completions_refused": int(stats.get("stale", 0)), "stale_completions_applied": stale_applied,
            "churn": len(churn), "stats": stats, "events": dict(ev_counts),
            "faults_injected": len([f for f in self.faults if f.injected]),
            "by_kind": per_kind,
            "median_recover_s": round(statistics.median(recover_all), 2) if recover_all else None,
            "max_recover_s": max(recover_all) if recover_all else None,
            "faults": [f.summary(self.t0) for f in self.faults],
            "tracebacks": tracebacks,
            "problems": problems,
        }


def format_report(report: dict[str, Any]) -> str:
    """The human summary printed by the test and the soak."""
    lines = [
        f"chaos report (seed {report['seed']}): {report['jobs']} jobs, {report['builds_witnessed']} builds witnessed "
        f"({report['extra_builds']} extra), {report['faults_injected']} faults in {report['run_seconds']} s",
        f"  queue {report['queue']}",
        f"  stale completions refused {report['stale_completions_refused']}, applied "
        f"{report['stale_completions_applied']}; churn {report['churn']}; "
        f"median recovery {report['median_recover_s']} s (max {report['max_recover_s']} s)",
        f"  {'fault':<15}{'n':>3}{'median rec s':>14}{'max rec s':>11}{'median detect s':>17}"
        f"{'interrupted':>13}{'extra':>7}",
    ]
    for kind, k in sorted(report["by_kind"].items()):
        detect = f"{statistics.median(k['detect_s']):.2f}" if k["detect_s"] else "-"
        lines.append(f"  {kind:<15}{k['count']:>3}{k['median_recover_s'] or '-':>14}{k['max_recover_s'] or '-':>11}"
                     f"{detect:>17}{k['jobs_interrupted']:>13}{k['extra_builds']:>7}")
    lines.append("  timeline:")
    for f in report["faults"]:
        lines.append(f"    {f['injected_at']!s:>7} s {f['kind']:<14} {f['target']:<7} dur {f['duration']:>5} "
                     f"detect {f['detect_s']!s:>6} recover {f['recover_s']!s:>6} held {f['held_jobs']} "
                     f"{'; '.join(f['notes'] + [p.upper() for p in f['problems']])}"
                     f"{' ERROR ' + f['error'] if f['error'] else ''}")
    if report["problems"]:
        lines.append("  PROBLEMS:")
        lines += [f"    {p}" for p in report["problems"]]
    else:
        lines.append("  all checks held")
    return "\n".join(lines)


def skip_reason() -> str | None:
    """Why the chaos harness cannot run here (it needs the test bed: root, ip, sshd), or None."""
    return missing_requirements()


def asdict_plan(plan: list[Planned]) -> list[dict[str, Any]]:
    return [asdict(p) for p in plan]

