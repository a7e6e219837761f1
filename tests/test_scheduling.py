"""What gates a binary build, cycles, and critical-path priority, through the real queue and drones."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
import redis

from swarmctl import keys
from swarmctl.config import Config
from swarmctl.events import Events
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import Spawner, run_cli, wait_until


@pytest.fixture
def token(redis_client: redis.Redis, config: Config) -> str:
    registry = DroneRegistry(redis_client, config)
    value = registry.enroll("izar")
    registry.heartbeat("izar", value, {"status": "idle"})
    return value


def ready(queue: Queue) -> set[str]:
    return set(queue.redis.zrange(keys.READY, 0, -1))


def build(queue: Queue, token: str, cpv: str) -> None:
    """Claim until ``cpv`` comes up (it must be ready), then complete it; others are released."""
    taken = []
    while (claim := queue.claim("izar", token)) is not None and claim.cpv != cpv:
        taken.append(claim)
    assert claim is not None, f"{cpv} is not ready"
    assert queue.complete(cpv, "izar", token, claim.lease, 1.0) == "ok"
    for other in taken:
        queue.release(other.cpv, "izar", token, other.lease, "test")


def build_everything(queue: Queue, token: str) -> list[str]:
    order = []
    while (claim := queue.claim("izar", token)) is not None:
        assert queue.complete(claim.cpv, "izar", token, claim.lease, 1.0) == "ok"
        order.append(claim.cpv)
    return order


def test_build_waits_for_the_runtime_closure_of_its_build_deps(queue: Queue, token: str) -> None:
    queue.add([
        JobSpec("app-misc/x-1", build=["dev-libs/a-1"], run=["dev-libs/own-1"]),
        JobSpec("dev-libs/a-1", run=["dev-libs/b-1"]),
        JobSpec("dev-libs/b-1", post=["dev-libs/c-1"]),
        JobSpec("dev-libs/c-1"),
        JobSpec("dev-libs/own-1", build=["dev-util/slow-1"]),
        JobSpec("dev-util/slow-1"),
    ])
    assert "app-misc/x-1" not in ready(queue)
    build(queue, token, "dev-libs/a-1")
    assert "app-misc/x-1" not in ready(queue)  # installing a's binary needs b
    build(queue, token, "dev-libs/b-1")
    assert "app-misc/x-1" not in ready(queue)  # ... and b's post dependency c
    build(queue, token, "dev-libs/c-1")
    # x's own run-time dependency (and what that needs to build) does not gate x.
    assert queue.get("dev-libs/own-1").state == "needed"
    assert "app-misc/x-1" in ready(queue)


def test_own_runtime_and_post_edges_do_not_gate(queue: Queue, token: str) -> None:
    queue.add([JobSpec("app-misc/x-1", run=["dev-libs/r-1"], post=["dev-libs/p-1"]),
               JobSpec("dev-libs/r-1", build=["dev-libs/p-1"]), JobSpec("dev-libs/p-1")])
    assert ready(queue) == {"app-misc/x-1", "dev-libs/p-1"}


def test_cycle_is_reported_broken_and_everything_is_built(queue: Queue, token: str) -> None:
    report = queue.add([
        JobSpec("sys-libs/glibc-2.19", build=["sys-devel/gcc-4.7"]),
        JobSpec("sys-devel/gcc-4.7", build=["sys-libs/glibc-2.19"], run=["sys-libs/zlib-1.2"]),
        JobSpec("sys-libs/zlib-1.2", build=["dev-lang/perl-5.18"]),
        JobSpec("dev-lang/perl-5.18", build=["sys-libs/glibc-2.19"], post=["perl-core/mod-1"]),
        JobSpec("perl-core/mod-1", build=["dev-lang/perl-5.18"]),
        JobSpec("app-misc/top-1", build=["sys-devel/gcc-4.7", "dev-lang/perl-5.18"]),
    ])
    assert len(report.added) == 6 and report.broken
    assert any(e.kind == "build" for e in report.broken)  # gcc <-> glibc has only build edges
    cycle_events = [e for e in Events(queue.redis).tail(50) if e.kind == "cycle"]
    assert len(cycle_events) == len(report.broken)
    order = build_everything(queue, token)
    assert sorted(order) == sorted(report.added)
    assert order.index("app-misc/top-1") > max(order.index(d) for d in ("sys-devel/gcc-4.7", "dev-lang/perl-5.18"))


def test_cycle_across_batches_keeps_the_earlier_gates(queue: Queue, token: str) -> None:
    queue.add([JobSpec("sys-libs/glibc-2.19", build=["sys-devel/gcc-4.7"])])
    report = queue.add([JobSpec("sys-devel/gcc-4.7", build=["sys-libs/glibc-2.19"])])
    assert [(e.job, e.gate) for e in report.broken] == [("sys-devel/gcc-4.7", "sys-libs/glibc-2.19")]
    assert build_everything(queue, token) == ["sys-devel/gcc-4.7", "sys-libs/glibc-2.19"]


def test_cli_add_takes_edge_kinds(swarm_env: dict[str, str], redis_client: redis.Redis, config: Config) -> None:
    run_cli(["queue", "add", "dev-libs/b-1"], swarm_env)
    run_cli(["queue", "add", "dev-libs/a-1", "--run", "dev-libs/b-1", "--post", "dev-libs/c-1"], swarm_env)
    run_cli(["queue", "add", "app-misc/x-1", "--after", "dev-libs/a-1"], swarm_env)
    queue = Queue(redis_client, config)
    job = queue.get("app-misc/x-1")
    assert (job.after, job.pending) == (["dev-libs/a-1"], 1)  # one gate: a, until a and b are built
    assert queue.get("dev-libs/a-1").run == ["dev-libs/b-1"]
    registry = DroneRegistry(redis_client, config)
    token = registry.enroll("izar")
    registry.heartbeat("izar", token, {"status": "idle"})
    build(queue, token, "dev-libs/a-1")
    assert "app-misc/x-1" not in ready(queue)  # installing a's binary needs b, queued before x
    build(queue, token, "dev-libs/b-1")
    assert "app-misc/x-1" in ready(queue)


def test_cli_import_dag(swarm_env: dict[str, str], redis_client: redis.Redis, config: Config,
                        tmp_path: Path) -> None:
    dag = {"nodes": [{"cpv": c, "seconds": None} for c in ("sys-devel/gcc-4.7", "sys-libs/glibc-2.19",
                                                           "app-misc/top-1")],
           "edges": [["sys-libs/glibc-2.19", "sys-devel/gcc-4.7", "build"],
                     ["sys-devel/gcc-4.7", "sys-libs/glibc-2.19", "build"],
                     ["sys-devel/gcc-4.7", "app-misc/top-1", "build"]],
           "edges_removed_to_make_acyclic": [["sys-devel/gcc-4.7", "sys-libs/glibc-2.19", "build"]]}
    path = tmp_path / "graph.dag.json"
    path.write_text(json.dumps(dag))
    out = run_cli(["queue", "import", str(path)], swarm_env)
    assert "queued 3 package(s) with 2 edge(s)" in out.stdout
    assert "1 edge(s) the resolver removed" in out.stderr
    redis_client.flushall()
    kept = json.loads(run_cli(["queue", "import", str(path), "--keep-cycle-edges", "--json"], swarm_env).stdout)
    assert kept["added"] == 3 and len(kept["cycle_gates_dropped"]) == 1
    assert Queue(redis_client, config).counts()["ready"] == 1


@pytest.mark.slow
def test_two_drones_start_the_long_chain_first(redis_client: redis.Redis, config: Config,
                                              spawn: Spawner) -> None:
    """Two real drone processes; each job sleeps its version in seconds (``sleep {pv}``)."""
    chain = [f"dev-lang/chain-{c}-0.6" for c in "abcd"]
    shorts = [f"app-misc/short-{c}-0.2" for c in "abcdefghijkl"]
    specs = [JobSpec(s, estimate=0.2) for s in shorts]  # queued first: FIFO would take them first
    specs += [JobSpec(chain[0], estimate=0.6)]
    specs += [JobSpec(c, build=[prev], estimate=0.6) for prev, c in pairwise(chain)]
    queue = Queue(redis_client, config)
    queue.add(specs)
    registry = DroneRegistry(redis_client, config)
    env = {"SWARM_DRONE_POLL_INTERVAL": "0.05"}
    for name in ("izar", "tarn"):
        spawn(["drone", "run", "--name", name, "--token", registry.enroll(name), "--command", "sleep {pv}"],
              env=env, name=name)
    assert wait_until(lambda: queue.counts()["built"] == len(specs), timeout=60, step=0.1)
    jobs = {j.cpv: j for j in queue.jobs("built")}
    first = min(jobs.values(), key=lambda j: j.claimed_at or 0)
    assert first.cpv == chain[0]
    finished = {c: int(redis_client.hget(keys.job(c), "finished_at")) / 1000.0 for c in jobs}
    for prev, nxt in pairwise(chain):  # each link starts as soon as it can
        assert jobs[nxt].claimed_at - finished[prev] < 0.5
    makespan = max(finished.values()) - first.claimed_at
    assert makespan < 2.4 + 1.5  # the chain (2.4 s) bounds it; the short jobs fit beside it
