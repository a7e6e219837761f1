"""The settle-group scripts (ADD, COMPLETE's settling, REPAIR) raced from several real processes."""

from __future__ import annotations

import redis

from swarmctl import integrity
from swarmctl.events import Events
from swarmctl.graph import JobSpec
from tests.test_races import CTX, WORKERS, _claim_and_complete, _enroll_all, _queue, _run, start_line


def _layers(offset: int) -> list[JobSpec]:
    """Leaves build-depending on roots whose run-time chains end in a shared run-time cycle."""
    specs = [JobSpec("dev-perl/loop-a-1", run=["dev-perl/loop-b-1"]),
             JobSpec("dev-perl/loop-b-1", run=["dev-perl/loop-a-1"])]
    for r in range(4):
        chain = [f"dev-libs/c{r}x{i}-1" for i in range(10)]
        specs.append(JobSpec(f"dev-libs/root{r}-1", run=[chain[0]]))
        specs += [JobSpec(c, run=[chain[i + 1] if i + 1 < len(chain) else "dev-perl/loop-a-1"])
                  for i, c in enumerate(chain)]
        specs += [JobSpec(f"app-misc/leaf{r}x{i}-1", build=[f"dev-libs/root{r}-1"]) for i in range(25)]
    return specs[offset:] + specs[:offset]  # each process adds them in its own order


def _add(url: str, offset: int, start) -> int:  # type: ignore[no-untyped-def]
    queue = _queue(url)
    start.wait()
    return len(queue.add(_layers(offset)).added)


def _check_until_built(url: str, total: int, start) -> int:  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(url, decode_responses=True)
    queue = _queue(url)
    start.wait()
    repaired = 0
    while queue.counts()["built"] < total:
        repaired += len(integrity.check(client, 100000))
    return repaired


def test_concurrent_adds_build_one_consistent_graph(redis_client: redis.Redis, redis_url: str) -> None:
    total = len(_layers(0))
    with start_line(WORKERS) as barrier:
        added = _run(_add, [(redis_url, i * 17, barrier) for i in range(WORKERS)])
    assert sum(added) == total  # each job once, whichever process won it
    assert integrity.suspects(redis_client)[0] == []  # every count agrees with the edges


def test_completions_settling_shared_groups_race_cleanly_and_repair_changes_nothing(
        redis_client: redis.Redis, redis_url: str) -> None:
    queue = _queue(redis_url)
    specs = _layers(0)
    queue.add(specs)
    tokens = _enroll_all(redis_client, WORKERS - 1)
    with start_line(WORKERS) as barrier, CTX.Pool(WORKERS) as pool:
        checker = pool.apply_async(_check_until_built, (redis_url, len(specs), barrier))
        results = pool.starmap(_claim_and_complete, [(redis_url, n, t, barrier) for n, t in tokens.items()])
        repaired = checker.get(timeout=120)
    built = [c for r in results for c in r]
    assert sorted(built) == sorted(s.cpv for s in specs)  # all built once: no leaf stuck waiting
    assert repaired == 0  # the checker, racing live completions, never "fixed" a correct count
    assert not [e for e in Events(redis_client, 100000).since() if e.kind == "repaired"]
    assert integrity.suspects(redis_client)[0] == []
