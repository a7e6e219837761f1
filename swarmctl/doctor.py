"""``swarmctl doctor``: check every moving part, one line each, with the fix.

Each check returns a :class:`Check` (ok / warn / fail / skip, what it saw,
what to do). Checks never raise: a check that cannot run says so and why. The
exit status follows ``swarmctl status``: 0 all ok, 1 warnings, 2 failures.

What is checked, in order: Redis reachable and persistent (and not near its maxmemory); an orchestrator
holding the leader lease; enrolled drones heartbeating; the nightly cron entry
verified as scheduled; the nightly run STARTED recently (and did not FAIL); the
binhost's ``Packages`` index consistent with its files (on the binhost, where
``binhost.dir`` is set); clock skew between this host, the drones and Redis; where the healing playbooks,
roles and modules were found (the package's copy, a system install, or healing.playbook_dir);
on a drone (``drone.name`` set), its builder's preflight, with the fix for each problem.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from swarmctl import ansible_assets, keys
from swarmctl.config import Config
from swarmctl.connection import TRANSIENT, describe
from swarmctl.exceptions import ConfigError, SwarmError
from swarmctl.facts import FactStore, SwarmFacts
from swarmctl.humanize import ago
from swarmctl.nightly import last_nightly, last_started, nightly_status_path, read_nightly_file
from swarmctl.redis_memory import HINT, memory_use
from swarmctl.registry import DroneRegistry

log = logging.getLogger("swarmctl.doctor")

#: The nightly run is daily; this much slack before "it did not start" is a failure.
NIGHTLY_MAX_GAP = 26 * 3600.0
#: A run that STARTED this long ago without FINISHED or FAILED probably died.
NIGHTLY_MAX_RUN = 6 * 3600.0
#: The cron verification runs with every binhost converge; older than this is stale.
CRON_VERIFY_MAX_AGE = 8 * 86400.0
#: Clock skew beyond this is a failure (leases and heartbeats are seconds long).
SKEW_FAIL = 30.0
#: Drones named in one line before "and N more".
NAMES_SHOWN = 5

STATES = ("ok", "warn", "fail", "skip")
_EXIT = {"warn": 1, "fail": 2}


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    state: str  # ok | warn | fail | skip
    summary: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def check_redis(client: redis.Redis, config: Config) -> Check:
    """Reachable (the caller connected) and persistent: AOF on, and disk writes succeeding."""
    where = describe(config)
    info = client.info("persistence")
    for status_key in ("aof_last_write_status", "aof_last_bgrewrite_status", "rdb_last_bgsave_status"):
        if info.get(status_key, "ok") != "ok":
            return Check("redis", "fail", f"{where}: {status_key} is {info[status_key]}",
                         "the server cannot write to disk: check free space and permissions of its dir")
    aof = str(info.get("aof_enabled", "0")) == "1"
    try:
        save = client.config_get("save").get("save", "")
    except redis.ResponseError:  # CONFIG disabled (managed Redis): judge from INFO alone
        save = None
    if aof:
        return Check("redis", "ok", f"{where}: reachable, append-only file on")
    if save:
        return Check("redis", "warn", f"{where}: snapshots only (save {save}); a crash loses recent queue changes",
                     "set 'appendonly yes' (appendfsync everysec) in redis.conf")
    if save is None:
        return Check("redis", "warn", f"{where}: reachable; AOF off and snapshot policy unknown (CONFIG disabled)",
                     "make sure the server persists: 'appendonly yes' in redis.conf")
    return Check("redis", "fail", f"{where}: no persistence (AOF off, no snapshots): a restart loses the queue",
                 "set 'appendonly yes' in redis.conf, or CONFIG SET appendonly yes then CONFIG REWRITE")


def check_redis_memory(client: redis.Redis, config: Config) -> Check:
    """Redis nearing its maxmemory; skipped (no line shown) when it has no limit."""
    use = memory_use(client)
    if use is None:
        return Check("redis memory", "skip", "no maxmemory set")
    severity = use.severity(config)
    if severity is None:
        return Check("redis memory", "ok", use.message().split(";")[0])
    return Check("redis memory", "fail" if severity == "critical" else "warn", use.message(), HINT)


def check_leader(client: redis.Redis) -> Check:
    with client.pipeline(transaction=False) as pipe:
        pipe.get(keys.LEADER)
        pipe.pttl(keys.LEADER)
        holder, ttl_ms = pipe.execute()
    if not holder:
        return Check("orchestrator", "fail", "no orchestrator holds the leader lease: nothing reclaims the work "
                     "of dead drones", "start one: swarmctl orchestrator run (the swarm_orchestrator role "
                     "installs it as a service); run a second for a hot standby")
    return Check("orchestrator", "ok", f"leader {holder} (lease renews within {max(ttl_ms, 0) / 1000:.1f} s)")


def check_drones(client: redis.Redis, config: Config) -> Check:
    fleet = [d for d in DroneRegistry(client, config).list() if not d.revoked]
    if not fleet:
        return Check("drones", "fail", "no drones enrolled",
                     "swarmctl drone enroll NAME, then deploy it with the swarm_drone role")
    silent = [d for d in fleet if d.status == "offline"]
    grounded = [d.name for d in fleet if d.status == "grounded"]
    misconfigured = [f"{d.name} ({d.problem})" for d in fleet if d.status == "misconfigured"]
    low_disk = [f"{d.name} ({d.problem})" for d in fleet if d.status == "low-disk"]
    hung = [d.name for d in fleet if d.hung and d.status != "offline"]
    beating = len(fleet) - len(silent)
    summary = f"{beating}/{len(fleet)} enrolled drones heartbeating"
    if beating == 0:
        return Check("drones", "fail", summary + ": none", "check the drone services (systemctl status "
                     "swarm-drone / rc-service swarm-drone status) and that they reach Redis")
    problems = []
    if silent:
        ages = [f"{d.name} ({ago(d.heartbeat_age)})" for d in silent]
        problems.append(f"silent: {_names(ages)}")
    if grounded:
        problems.append(f"grounded: {_names(grounded)}")
    if misconfigured:
        problems.append(f"misconfigured: {_names(misconfigured)}")
    if low_disk:
        problems.append(f"low on disk: {_names(low_disk)}")
    if hung:
        problems.append(f"hung builds: {_names(hung)}")
    if problems:
        return Check("drones", "warn", f"{summary}; {'; '.join(problems)}",
                     "swarmctl events shows why; restart a silent drone's service, release a grounded one "
                     "with swarmctl drone release NAME once fixed, or revoke a drone that is gone; "
                     "swarmctl doctor on a misconfigured drone's host prints its fix; free space on a drone "
                     "low on disk (it resumes by itself)")
    return Check("drones", "ok", summary)


def check_preflight(config: Config) -> Check:
    """On a drone's host: can its builder build (the check its daemon runs before claiming)?"""
    if not config.drone.name:
        return Check("preflight", "skip", "not a drone (drone.name is not set)")
    from swarmctl.drone.configured import builder_from_config

    try:
        builder = builder_from_config(config)
    except (ConfigError, OSError) as exc:  # e.g. no prefix and no repo, a build user that cannot reach it
        return Check("preflight", "fail", f"drone {config.drone.name}: its builder cannot start: {exc}",
                     "fix the drone's configuration (drone.builder, drone.prefix, drone.build_user)")
    result = builder.preflight()
    if result.ok:
        return Check("preflight", "ok", f"drone {config.drone.name}: its {config.drone.builder} builder can build")
    return Check("preflight", "fail", f"drone {config.drone.name} misconfigured: {result.reason}",
                 "; ".join(p.fix for p in result.problems) + " (the drone resumes by itself within "
                 f"drone.preflight_retry = {config.drone.preflight_retry:g} s)")


def check_cron(meta: FactStore, now: float) -> Check:
    verified = meta.read().cron_verify
    if verified is None:
        return Check("cron", "warn", "the nightly cron entry has never been verified",
                     "converge the binhost with the swarm_cron role: it checks that cronie really "
                     "scheduled the job and records the result")
    age = now - verified.time
    detail = f" ({verified.detail})" if verified.detail else ""
    if not verified.ok:
        return Check("cron", "fail", f"cron verification FAILED {ago(age)} ago{detail}",
                     "the nightly job is not scheduled: check that cronie (not dcron) runs and "
                     "crontab -l shows the entry, then converge the binhost again")
    if age > CRON_VERIFY_MAX_AGE:
        return Check("cron", "warn", f"cron last verified {ago(age)} ago{detail}",
                     "converge the binhost again to re-verify the schedule")
    return Check("cron", "ok", f"nightly cron entry verified scheduled {ago(age)} ago{detail}")


def check_nightly(meta: FactStore | None, config: Config, now: float) -> Check:
    path = nightly_status_path(config)
    marks = read_nightly_file(path)
    info = meta.read() if meta is not None else None
    if info is None and not marks:
        return Check("nightly", "skip", f"no Redis and no status file at {path}")
    info = info or SwarmFacts()
    started = last_started(info, marks)
    latest = last_nightly(info, marks)
    if started is None or latest is None:
        return Check("nightly", "fail", "the nightly run has never logged STARTED",
                     "check the cron check above, then run the nightly playbook by hand and read its log")
    if latest.event == "FAILED":
        detail = f": {latest.detail}" if latest.detail else ""
        return Check("nightly", "fail", f"last nightly FAILED {ago(now - latest.time)} ago{detail}",
                     "read the nightly log; a sync failure falls back to emerge-webrsync, so check the "
                     "network and mirrors too")
    if now - started > NIGHTLY_MAX_GAP:
        return Check("nightly", "fail", f"last nightly STARTED {ago(now - started)} ago",
                     "cron did not run it: check the cron line above and the binhost's cron log")
    if latest.event == "STARTED" and now - latest.time > NIGHTLY_MAX_RUN:
        return Check("nightly", "warn", f"nightly STARTED {ago(now - latest.time)} ago and never "
                     "finished", "the run probably died: read its log, then run it again")
    return Check("nightly", "ok", f"last nightly {latest.event} {ago(now - latest.time)} ago "
                 f"(STARTED {ago(now - started)} ago)")


def index_problems(pkgdir: Path, deep: bool = False, limit: int = 50) -> tuple[int, list[str]]:
    """(entries checked, problems) for a PKGDIR: files present with the indexed size, none unindexed.

    ``deep`` hashes every file (swarmctl.binhost.index.verify).
    """
    from swarmctl.binhost.gpkg import GPKG_SUFFIX
    from swarmctl.binhost.index import INDEX_NAME, PackagesIndex, verify

    if deep:
        report = verify(pkgdir)
        return report.checked, report.problems
    if not (pkgdir / INDEX_NAME).is_file():
        return 0, [f"{pkgdir / INDEX_NAME}: no index"]
    index = PackagesIndex.read(pkgdir / INDEX_NAME)
    problems: list[str] = []
    for rel_path, entry in sorted(index.entries.items()):
        target = (pkgdir / rel_path).resolve()
        if not target.is_relative_to(pkgdir.resolve()):
            problems.append(f"{rel_path}: PATH escapes the binhost directory")
            continue
        try:
            size = target.stat().st_size
        except OSError:
            problems.append(f"{rel_path}: in the index, file missing")
            continue
        if entry.get("SIZE") != str(size):
            problems.append(f"{rel_path}: size {size}, index says {entry.get('SIZE')}")
        if len(problems) >= limit:
            return len(index.entries), problems
    from swarmctl.binhost.generations import indexed_paths

    known = indexed_paths(pkgdir)  # staged uploads and kept generations count as indexed
    for path in pkgdir.rglob(f"*{GPKG_SUFFIX}"):
        rel = path.relative_to(pkgdir)
        if not any(part.startswith(".") for part in rel.parts) and rel.as_posix() not in known:
            problems.append(f"{rel.as_posix()}: package file not in the index")
            if len(problems) >= limit:
                break
    return len(index.entries), problems


def check_binhost_index(config: Config, deep: bool) -> Check:
    if not config.binhost.dir:
        return Check("binhost index", "skip", "binhost.dir is not set on this host (run doctor on the binhost)")
    pkgdir = Path(config.binhost.dir)
    if not pkgdir.is_dir():
        return Check("binhost index", "fail", f"binhost.dir {pkgdir} is not a directory",
                     "fix binhost.dir in swarm.yml, or converge the binhost with the swarm_binhost role")
    try:
        checked, problems = index_problems(pkgdir, deep)
    except Exception as exc:  # a corrupt index must not stop the other checks
        return Check("binhost index", "fail", f"{pkgdir}: cannot check the index: {exc}",
                     "regenerate it: emaint binhost --fix (or swarmctl binhost reindex)")
    how = "sizes and SHA-256" if deep else "sizes"
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return Check("binhost index", "fail", f"{pkgdir}: {'; '.join(problems[:3])}{more}",
                     "regenerate the index: emaint binhost --fix (or swarmctl binhost reindex); "
                     "clients reject an index that does not match its files")
    return Check("binhost index", "ok", f"{pkgdir}: {checked} entries match their files ({how})")


def check_signing(config: Config, deep: bool) -> Check:
    """The binhost's signing key (present, not expiring) and published packages verifying."""
    from swarmctl.binhost.signing import config_trust_problems

    problems = config_trust_problems(config, sample=None if deep else 3)
    if problems is None:
        return Check("signing", "skip", "binhost.dir is not set on this host (run doctor on the binhost)")
    if not problems:
        how = "every package" if deep else "the newest packages"
        return Check("signing", "ok", f"signing key usable; {how} verify against KEYS.asc")
    worst = "fail" if any(p.severity == "critical" for p in problems) else "warn"
    return Check("signing", worst, "; ".join(p.message for p in problems),
                 "see docs/operator-guide.md (signing key): key init, key rotate, binhost verify")


def drone_skews(client: redis.Redis, config: Config) -> dict[str, float]:
    """Drone clock minus Redis clock, in seconds, for the drones that reveal theirs.

    A drone that reports ``clock`` (its time at the heartbeat) is compared with
    the heartbeat's server time; a building drone's ``task_started`` (its clock)
    with the claim time Redis recorded a moment earlier.
    """
    names = sorted(client.smembers(keys.DRONES))
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hmget(keys.drone(name), "clock", "last_seen", "task", "task_started")
        rows = pipe.execute()
    offline_after = config.orchestrator.offline_after
    now_s, now_us = client.time()
    now = now_s + now_us / 1e6
    skews: dict[str, float] = {}
    claims: dict[str, str] = {}
    for name, (clock, last_seen, task, started) in zip(names, rows, strict=True):
        if not last_seen or now - int(last_seen) / 1000.0 > offline_after:
            continue
        if clock:
            skews[name] = float(clock) - int(last_seen) / 1000.0
        elif task and started:
            claims[name] = task
    if claims:
        with client.pipeline(transaction=False) as pipe:
            for task in claims.values():
                pipe.hmget(keys.job(task), "drone", "claimed_at")
            jobs = pipe.execute()
        started_of = {name: row[3] for name, row in zip(names, rows, strict=True)}
        for (name, _task), (owner, claimed) in zip(claims.items(), jobs, strict=True):
            if owner == name and claimed:
                skews[name] = float(started_of[name]) - int(claimed) / 1000.0
    return skews


def check_clock(client: redis.Redis, config: Config, max_skew: float) -> Check:
    before = time.time()
    seconds, micros = client.time()
    after = time.time()
    local = (before + after) / 2 - (seconds + micros / 1e6)  # this host minus Redis
    drones = drone_skews(client, config)
    worst = max(drones.items(), key=lambda item: abs(item[1]), default=None)
    parts = [f"this host {local:+.2f} s"]
    if worst is not None:
        parts.append(f"{len(drones)} drone(s) checked, worst {worst[0]} {worst[1]:+.2f} s")
    else:
        parts.append("no online drone reveals its clock")
    summary = "vs Redis: " + "; ".join(parts)
    off = [name for name, skew in drones.items() if abs(skew) > max_skew]
    if abs(local) > max_skew:
        off.insert(0, "this host")
    if not off:
        return Check("clock", "ok", summary)
    worst_abs = max([abs(local)] + [abs(s) for s in drones.values()])
    return Check("clock", "fail" if worst_abs > SKEW_FAIL else "warn",
                 f"{summary}; over {max_skew:g} s: {_names(off)}",
                 "run chronyd or ntpd on every host; Redis's clock is the reference for leases, "
                 "heartbeats and groundings")


def check_playbooks(config: Config) -> Check:
    """Where the healing playbooks are: a failure only when healing is on and they are missing."""
    healing = config.healing
    missing = "fail" if healing.enabled else "warn"
    if healing.playbook_dir:
        where = Path(healing.playbook_dir)
        absent = [p for p in ("drone-restart.yml", "drone-reboot.yml") if not (where / p).is_file()]
        if absent:
            return Check("playbooks", missing, f"healing.playbook_dir {where} lacks {', '.join(absent)}",
                         "point healing.playbook_dir at the playbooks, or unset it to use the package's")
        return Check("playbooks", "ok", f"{where} (healing.playbook_dir)")
    assets = ansible_assets.find_assets()
    if assets is None:
        return Check("playbooks", missing, f"no playbooks in {ansible_assets.PACKAGE_DIR} or "
                     f"{ansible_assets.SYSTEM_DIR}", "reinstall build-swarm from its wheel (they ship in it) "
                     "or set healing.playbook_dir")
    return Check("playbooks", "ok", f"playbooks, roles and modules in {assets.base} ({assets.source})")


def _guard(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except TRANSIENT as exc:
        return Check(name, "fail", f"Redis went away during the check: {exc}", "see the redis line")
    except Exception as exc:  # one broken check must not hide the others
        log.debug("check %s crashed", name, exc_info=True)
        return Check(name, "fail", f"the check itself failed: {type(exc).__name__}: {exc}",
                     "report this; run with -vv for details")


def run_checks(config: Config, connect: Callable[[], redis.Redis], deep: bool = False,
               max_skew: float = 2.0) -> list[Check]:
    """Every check, in order; ``connect`` makes (and pings) the Redis client."""
    checks: list[Check] = []
    client: redis.Redis | None
    try:
        client = connect()
        client.ping()
    except (*TRANSIENT, redis.RedisError, SwarmError) as exc:
        client = None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        checks.append(Check("redis", "fail", f"cannot reach {describe(config)}: {reason}",
                            "start it (swarmctl local start, or the redis service), or fix redis.url / "
                            "SWARM_REDIS_URL and the credentials"))
    if client is not None:
        meta = FactStore(client)
        now_s, now_us = client.time()
        now = now_s + now_us / 1e6
        checks.append(_guard("redis", lambda: check_redis(client, config)))
        memory = _guard("redis memory", lambda: check_redis_memory(client, config))
        if memory.state != "skip":  # no maxmemory: nothing to say
            checks.append(memory)
        checks.append(_guard("orchestrator", lambda: check_leader(client)))
        checks.append(_guard("drones", lambda: check_drones(client, config)))
        checks.append(_guard("cron", lambda: check_cron(meta, now)))
        checks.append(_guard("nightly", lambda: check_nightly(meta, config, now)))
    else:
        for name in ("orchestrator", "drones", "cron"):
            checks.append(Check(name, "skip", "needs Redis"))
        checks.append(_guard("nightly", lambda: check_nightly(None, config, time.time())))
    checks.append(_guard("binhost index", lambda: check_binhost_index(config, deep)))
    checks.append(_guard("signing", lambda: check_signing(config, deep)))
    if client is not None:
        checks.append(_guard("clock", lambda: check_clock(client, config, max_skew)))
    else:
        checks.append(Check("clock", "skip", "needs Redis"))
    checks.append(_guard("playbooks", lambda: check_playbooks(config)))
    checks.append(_guard("preflight", lambda: check_preflight(config)))
    return checks


def exit_code(checks: list[Check]) -> int:
    return max((_EXIT.get(c.state, 0) for c in checks), default=0)


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"checks": [c.as_dict() for c in checks], "exit_code": exit_code(checks)}
