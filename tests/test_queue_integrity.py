"""The queue never half-applies a change, keeps gates linear in the edges, and repairs its counts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmctl import integrity, keys
from swarmctl.binhost.server import _float
from swarmctl.config import Config
from swarmctl.events import Events
from swarmctl.exceptions import ConfigError
from swarmctl.graph import JobSpec, gates_of, plan_batch
from swarmctl.orchestrator import Orchestrator
from swarmctl.queue import InvalidArgument, PartialAdd, Queue
from swarmctl.registry import DroneRegistry
from swarmctl.scripts import Scripts, decode
from tests.helpers import run_cli


def snapshot(client: redis.Redis) -> dict[str, bytes]:
    raw = redis.Redis(connection_pool=redis.ConnectionPool(**{**client.connection_pool.connection_kwargs,
                                                              "decode_responses": False}))
    try:
        return {k: raw.dump(k) for k in raw.keys("*")}
    finally:
        raw.close()


@pytest.fixture
def token(registry: DroneRegistry) -> str:
    value = registry.enroll("izar")
    registry.heartbeat("izar", value, {"status": "idle"})
    return value


def ready(queue: Queue) -> set[str]:
    return set(queue.redis.zrange(keys.READY, 0, -1))


def build(queue: Queue, token: str, cpv: str) -> None:
    """Claim until ``cpv`` comes up (it must be ready), complete it, give the others back."""
    taken = []
    while (claim := queue.claim("izar", token)) is not None and claim.cpv != cpv:
        taken.append(claim)
    assert claim is not None, f"{cpv} is not ready"
    assert queue.complete(cpv, "izar", token, claim.lease, 1.0) == "ok"
    for other in taken:
        queue.release(other.cpv, "izar", token, other.lease, "test")


# -- no script fails halfway ------------------------------------------------------------------

ADD_OK = ["app-misc/a-1", "10", "", "[]", "[]", "[]", "100", "[]", "", "[]"]
BAD_ARGS = [
    ("add", [*ADD_OK[:1], "inf", *ADD_OK[2:]]),
    ("add", [*ADD_OK[:1], "nan", *ADD_OK[2:]]),
    ("add", [*ADD_OK[:6], "-5", *ADD_OK[7:]]),
    ("add", [*ADD_OK[:3], "{not json", *ADD_OK[4:]]),
    ("add", [*ADD_OK[:5], "[1, 2]", *ADD_OK[6:]]),
    ("add", [*ADD_OK[:2], "1e999", *ADD_OK[3:]]),
    ("add", ["", *ADD_OK[1:]]),
    ("complete", ["app-misc/a-1", "izar", "sha", "lease", "inf", "{}", "100", "10"]),
    ("complete", ["app-misc/a-1", "izar", "sha", "lease", "1", "[[[", "100", "10"]),
    ("complete", ["app-misc/a-1", "izar", "sha", "lease", "1", "{}", "-5", "10"]),
    ("complete", ["app-misc/a-1", "izar", "sha", "lease", "1", "{}", "100", "0"]),
    ("fail", ["app-misc/a-1", "izar", "sha", "lease", "build", "r", "", "2", "6", "5", "1000", "1", "nan", "100"]),
    ("fail", ["app-misc/a-1", "izar", "sha", "lease", "oops", "r", "", "2", "6", "5", "1000", "1", "9", "100"]),
    ("fail", ["app-misc/a-1", "izar", "sha", "lease", "build", "r", "", "2", "6", "5", "1000", "1", "9", "2.5"]),
    ("release", ["app-misc/a-1", "izar", "sha", "lease", "r", "-5"]),
    ("reclaim", ["izar", "-1", "r", "100"]),
    ("reclaim", ["izar", "0", "r", "x"]),
    ("reset", ["app-misc/a-1", "failed", "retried", "-5"]),
    ("reset", ["app-misc/a-1", "", "retried", "100"]),
    ("repair", ["app-misc/a-1", "inf"]),
]


@pytest.mark.parametrize(("script", "args"), BAD_ARGS)
def test_every_script_refuses_bad_arguments_before_writing(queue: Queue, token: str, script: str,
                                                           args: list[str]) -> None:
    queue.add([JobSpec("app-misc/a-1", estimate=1)])
    claim = queue.claim("izar", token)
    assert claim is not None
    before = snapshot(queue.redis)
    reply = decode(getattr(Scripts(queue.redis), script)(keys=[*keys.QUEUE_KEYS, keys.history("x")],
                                                       args=args))
    assert reply[0] == "invalid", reply
    assert snapshot(queue.redis) == before  # not one write


@pytest.mark.parametrize("args", [["", "1000"], ["me", "0"], ["me", "nan"]])
def test_leader_scripts_refuse_bad_arguments(redis_client: redis.Redis, args: list[str]) -> None:
    scripts = Scripts(redis_client)
    assert decode(scripts.leader(keys=[keys.LEADER], args=args))[0] == "invalid"
    assert decode(scripts.resign(keys=[keys.LEADER], args=[""]))[0] == "invalid"
    assert redis_client.keys("*") == []


def test_infinite_duration_is_refused_and_the_job_can_still_complete(queue: Queue, token: str) -> None:
    queue.add([JobSpec("sys-libs/zlib-1"), JobSpec("dev-libs/libxml2-2", build=["sys-libs/zlib-1"])])
    claim = queue.claim("izar", token)
    assert claim is not None
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(InvalidArgument, match="duration"):
            queue.complete(claim.cpv, "izar", token, claim.lease, bad)
    assert queue.get(claim.cpv).state == "delegated"
    assert queue.complete(claim.cpv, "izar", token, claim.lease, 2.0) == "ok"
    assert ready(queue) == {"dev-libs/libxml2-2"}  # the dependent is released, not waiting forever


def test_binhost_never_passes_a_non_finite_duration() -> None:
    assert [_float(v) for v in ("inf", "-inf", "nan", "-3", "junk", None, "12.5")] == [0, 0, 0, 0, 0, 0, 12.5]


def test_negative_events_max_is_refused_before_anything_is_added(redis_client: redis.Redis, config: Config,
                                                                 swarm_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"queue\.events_max"):
        Queue(redis_client, config.with_overrides(queue__events_max=-5))
    proc = run_cli(["queue", "add", "app-misc/a-1"], {**swarm_env, "SWARM_QUEUE_EVENTS_MAX": "-5"}, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "events_max" in proc.stderr
    assert redis_client.keys(keys.JOB_PREFIX + "*") == []


# -- gates linear in the edges, readiness exact ---------------------------------------------------

def wide_dag(width: int, chain: int) -> list[JobSpec]:
    """``width`` packages build-depending on a root whose run-time chain is ``chain`` long."""
    links = [f"dev-libs/link{i}-1" for i in range(chain)]
    specs = [JobSpec("dev-libs/root-1", run=[links[0]])]
    specs += [JobSpec(c, run=[links[i + 1]] if i + 1 < chain else []) for i, c in enumerate(links)]
    specs += [JobSpec(f"app-misc/leaf{i}-1", build=["dev-libs/root-1"]) for i in range(width)]
    return specs


def gate_entries(client: redis.Redis) -> int:
    return sum(client.scard(k) for k in client.scan_iter(match=keys.JOB_PREFIX + "*:*", count=1000)
               if k.endswith((keys.JOB_GATES, keys.JOB_DEPENDENTS, keys.JOB_NEEDS, keys.JOB_HOLDERS)))


def test_redis_holds_the_edges_not_the_closure(queue: Queue, token: str) -> None:
    queue.add(wide_dag(200, 200))
    edges = 200 + 200  # 200 build edges to the root, 200 run edges along the chain
    assert gate_entries(queue.redis) == 2 * edges  # each edge once forward, once back
    assert ready(queue) == {"dev-libs/root-1"} | {f"dev-libs/link{i}-1" for i in range(200)}
    for i in reversed(range(200)):  # from the chain's end: nothing settles until the root is built
        build(queue, token, f"dev-libs/link{i}-1")
    assert ready(queue) == {"dev-libs/root-1"}
    build(queue, token, "dev-libs/root-1")
    assert len(ready(queue)) == 200 and queue.get("app-misc/leaf7-1").pending == 0


CPVS = [f"cat-{c}/p{c}-1" for c in "abcdefgh"]


@st.composite
def graphs(draw: st.DrawFn) -> list[JobSpec]:
    """Random graphs without cycles through a build edge (those get broken, differently by design)."""
    rank = {c: i for i, c in enumerate(CPVS)}
    specs = []
    for cpv in CPVS:
        lower = [c for c in CPVS if rank[c] < rank[cpv]]
        build = draw(st.lists(st.sampled_from(lower), unique=True, max_size=3)) if lower else []
        run = draw(st.lists(st.sampled_from(CPVS), unique=True, max_size=2))
        specs.append(JobSpec(cpv, build=build, run=[r for r in run if r != cpv]))
    # Keep the run edges only when no job would wait for itself through them (a build cycle).
    if plan_batch({s.cpv: s for s in specs}, {}, {}).broken:
        return [JobSpec(s.cpv, build=s.build) for s in specs]
    return specs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=graphs(), seed=st.integers(0, 2**16), split=st.integers(1, 8))
def test_readiness_matches_the_runtime_closure(redis_client: redis.Redis, config: Config, specs: list[JobSpec],
                                               seed: int, split: int) -> None:
    redis_client.flushall()
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    token = registry.enroll("izar")
    registry.heartbeat("izar", token, {"status": "idle"})
    first = queue.add(specs[:split])  # in two batches: the second joins what is stored
    second = queue.add(specs[split:])
    # A run-time cycle closed through a job named before it was queued is broken at its new edge
    # (settle groups never merge across batches) and reported: then only liveness is checked.
    exact = not first.broken and not second.broken
    closure = gates_of({s.cpv: s for s in specs})
    built: set[str] = set()
    rng = random.Random(seed)
    while len(built) < len(specs):
        expected = {c for c in closure if c not in built and set(closure[c]) <= built}
        if exact:
            assert ready(queue) == expected
        else:
            assert ready(queue) >= expected and ready(queue)
            expected = ready(queue)
        pick = rng.choice(sorted(expected))
        build(queue, token, pick)
        built.add(pick)
    assert integrity.suspects(redis_client)[0] == []


def test_run_cycle_settles_as_one_group(queue: Queue, token: str) -> None:
    report = queue.add([JobSpec("dev-perl/a-1", run=["dev-perl/b-1"]), JobSpec("dev-perl/b-1", run=["dev-perl/a-1"]),
                        JobSpec("app-misc/user-1", build=["dev-perl/b-1"])])
    assert report.broken == []  # a run-time cycle is no cycle for building
    for _ in ("dev-perl/a-1", "dev-perl/b-1"):
        assert "app-misc/user-1" not in ready(queue)
        claim = queue.claim("izar", token)
        assert claim is not None
        queue.complete(claim.cpv, "izar", token, claim.lease, 1)
    assert ready(queue) == {"app-misc/user-1"}


def test_own_build_dependency_that_installs_the_package_is_a_reported_cycle(queue: Queue, token: str) -> None:
    report = queue.add([JobSpec("dev-lang/python-3", build=["dev-python/setuptools-70"]),
                        JobSpec("dev-python/setuptools-70", run=["dev-lang/python-3"])])
    assert [(e.job, e.gate, e.kind) for e in report.broken] == [("dev-lang/python-3", "dev-python/setuptools-70",
                                                                 "run")] or report.broken
    built = []
    while (claim := queue.claim("izar", token)) is not None:
        queue.complete(claim.cpv, "izar", token, claim.lease, 1)
        built.append(claim.cpv)
    assert sorted(built) == ["dev-lang/python-3", "dev-python/setuptools-70"]


# -- large writes ------------------------------------------------------------------------------

def test_an_add_that_fails_partway_says_how_many_were_queued(queue: Queue, redis_client: redis.Redis,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("swarmctl.queue.WRITE_SLICE_SECONDS", 0.0001)  # many small slices
    specs = [JobSpec(f"app-misc/m{i}-1", estimate=1) for i in range(3000)]
    used = int(redis_client.info("memory")["used_memory"])
    redis_client.config_set("maxmemory", used + 400_000)  # room for some of them only
    try:
        with pytest.raises(PartialAdd) as failed:
            queue.add(specs)
    finally:
        redis_client.config_set("maxmemory", 0)
    queued = queue.counts()["needed"]
    assert 0 < queued < 3000
    assert failed.value.done == queued and f"queued {queued} of 3000" in str(failed.value)
    report = queue.add(specs)  # the same batch again queues the rest
    assert len(report.added) == 3000 - queued and queue.counts()["needed"] == 3000


def test_queue_clear_leaves_no_keys_behind(queue: Queue, swarm_env: dict[str, str], redis_client: redis.Redis) -> None:
    queue.add([JobSpec("app-misc/top-1", build=["app-misc/never-queued-1"]),
               JobSpec("dev-perl/a-1", run=["dev-perl/b-1"]), JobSpec("dev-perl/b-1", run=["dev-perl/a-1"])])
    assert redis_client.exists(keys.job_dependents("app-misc/never-queued-1"))
    run_cli(["queue", "clear", "--yes"], swarm_env)
    assert redis_client.keys(keys.JOB_PREFIX + "*") == [] and redis_client.keys(keys.state_set("*")) == [keys.SEQ]


def test_queue_list_pages(queue: Queue, swarm_env: dict[str, str]) -> None:
    queue.add([JobSpec(f"app-misc/l{i:02d}-1", estimate=i + 1) for i in range(30)])
    everything = json.loads(run_cli(["queue", "list", "--json"], swarm_env).stdout)
    assert [j["cpv"] for j in everything] == [f"app-misc/l{i:02d}-1" for i in reversed(range(30))]
    page = json.loads(run_cli(["queue", "list", "--json", "--limit", "10", "--offset", "5"], swarm_env).stdout)
    assert page == everything[5:15]
    table = run_cli(["queue", "list", "--limit", "3"], swarm_env)
    assert "jobs 1-3 of 30" in table.stdout and "--offset 3" in table.stderr


@pytest.mark.parametrize(("content", "message"), [
    (b'{"nodes": [], "edges": []}\xff\xfe', "not UTF-8"),
    (json.dumps({"nodes": [], "edges": [], "edges_removed_to_make_acyclic": {"a": 1}}).encode(), "must be a list"),
    (json.dumps({"nodes": [], "edges": [], "edges_removed_to_make_acyclic": 5}).encode(), "must be a list"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_bad_dag_files_give_one_line(swarm_env: dict[str, str], tmp_path: Path, content: bytes,
                                     message: str) -> None:
    path = tmp_path / "bad.dag.json"
    path.write_bytes(content)
    proc = run_cli(["queue", "import", str(path)], swarm_env, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


# -- the integrity check ---------------------------------------------------------------------

def test_corrupted_counts_and_sets_are_repaired_and_reported(queue: Queue, token: str,
                                                             redis_client: redis.Redis, config: Config) -> None:
    queue.add([JobSpec("sys-libs/zlib-1", run=["app-misc/rt-1"]), JobSpec("app-misc/rt-1"),
               JobSpec("dev-libs/libxml2-2", build=["sys-libs/zlib-1"]), JobSpec("app-misc/free-1")])
    for cpv in ("sys-libs/zlib-1", "app-misc/rt-1"):
        build(queue, token, cpv)
    assert integrity.suspects(redis_client)[0] == []
    # What a script failing halfway, or a hand edit, leaves behind:
    redis_client.hset(keys.job("dev-libs/libxml2-2"), "pending", 1)        # waits for a built gate
    redis_client.zrem(keys.READY, "dev-libs/libxml2-2")
    redis_client.hset(keys.job("sys-libs/zlib-1"), "unsettled", 2)         # group stuck open
    redis_client.smove(keys.state_set("needed"), keys.state_set("failed"), "app-misc/free-1")
    redis_client.sadd(keys.state_set("blocked"), "app-misc/ghost-1")        # listed, no job
    orchestrator = Orchestrator(redis_client, config.with_overrides(orchestrator__integrity_interval=60))
    report = orchestrator.sweep()
    fixed = {r.job: r.fixed for r in report.repaired}
    assert set(fixed) == {"dev-libs/libxml2-2", "sys-libs/zlib-1", "app-misc/free-1", "app-misc/ghost-1"}
    assert ready(queue) == {"dev-libs/libxml2-2", "app-misc/free-1"}
    assert queue.get("app-misc/free-1").state == "needed" and queue.counts()["failed"] == 0
    assert not redis_client.sismember(keys.state_set("blocked"), "app-misc/ghost-1")
    repaired = [e for e in Events(redis_client).tail(50) if e.kind == "repaired"]
    assert {e.job for e in repaired} == set(fixed)
    assert integrity.suspects(redis_client)[0] == []
    assert orchestrator.sweep().repaired == []  # next check waits for the interval


def test_nothing_is_repaired_on_a_healthy_queue(queue: Queue, token: str, redis_client: redis.Redis) -> None:
    queue.add(wide_dag(20, 20))
    assert integrity.check(redis_client, 1000) == []
    assert not [e for e in Events(redis_client).tail(100) if e.kind == "repaired"]


def test_pages_agree_with_the_full_order_whatever_the_path(queue: Queue, token: str, redis_client: redis.Redis,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    queue.add([JobSpec(f"app-misc/s{i:02d}-1", estimate=(i % 7) + 1) for i in range(40)])
    for _ in range(6):  # some delegated, in between the needed ones
        assert queue.claim("izar", token) is not None
    for state in (None, "needed", "delegated"):
        order = queue.job_order(state)
        for walk_min in (0, 10**9):  # walking the listing index, or reading every job
            monkeypatch.setattr("swarmctl.queue.INDEX_WALK_MIN", walk_min)
            assert queue.page(state, 3, 10) == (order[3:13], len(order))
            assert queue.page(state, 0, None) == (order, len(order))
            assert queue.page(state, len(order), 5) == ([], len(order))
    redis_client.delete(keys.LISTING)  # jobs queued before the index existed: still right, just slower
    assert queue.page(None, 5, 5) == (queue.job_order()[5:10], 40)
