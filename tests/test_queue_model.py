"""A hypothesis state machine over the real queue, checking its invariants after every step."""

from __future__ import annotations

from collections import Counter

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from swarmctl import keys
from swarmctl.config import load_config
from swarmctl.events import Events
from swarmctl.exceptions import Grounded
from swarmctl.graph import JobSpec, gates_of
from swarmctl.queue import Claim, Queue
from swarmctl.registry import DroneRegistry

DRONES = ("izar", "tarn", "meridian")
JOBS = {  # build-time dependencies
    "sys-libs/zlib-1": [],
    "dev-libs/openssl-3": ["sys-libs/zlib-1"],
    "net-misc/curl-8": ["dev-libs/openssl-3", "sys-libs/zlib-1"],
    "dev-vcs/git-2": ["net-misc/curl-8"],
    "app-misc/hello-1": [],
    "app-misc/world-1": ["app-misc/hello-1"],
    "app-misc/pair-a-1": [],
    "app-misc/pair-b-1": [],
    "app-misc/user-1": ["app-misc/pair-a-1"],
}
RUN = {  # run-time dependencies: curl's binary installs hello; pair-a and pair-b install each other
    "net-misc/curl-8": ["app-misc/hello-1"],
    "app-misc/pair-a-1": ["app-misc/pair-b-1"],
    "app-misc/pair-b-1": ["app-misc/pair-a-1"],
}
SPECS = {c: JobSpec(c, build=d, run=RUN.get(c, [])) for c, d in JOBS.items()}
#: The reference semantics: what each job waits for (its build deps' run-time closures) ...
CLOSURE = {c: set(g) for c, g in gates_of(SPECS).items()}
#: ... and what one build dependency brings: itself and its run-time closure.
BRINGS = {b: set(gates_of({**SPECS, "probe/probe-1": JobSpec("probe/probe-1", build=[b])})["probe/probe-1"])
          for b in JOBS}


@pytest.fixture
def machine_url(redis_url: str) -> str:
    QueueMachine.url = redis_url
    return redis_url


class QueueMachine(RuleBasedStateMachine):
    url = ""

    @initialize()
    def setup(self) -> None:
        self.client = redis.Redis.from_url(self.url, decode_responses=True)
        self.client.flushall()
        config = load_config(environ={"SWARM_REDIS_URL": self.url}).with_overrides(
            breaker__failures=3, queue__max_attempts=4)
        self.queue = Queue(self.client, config)
        self.registry = DroneRegistry(self.client, config)
        self.tokens = {d: self.registry.enroll(d) for d in DRONES}
        for d, t in self.tokens.items():
            self.registry.heartbeat(d, t, {"status": "idle"})
        self.queue.add([JobSpec(c, build=s.build, run=s.run, estimate=10) for c, s in SPECS.items()])
        self.held: dict[str, Claim] = {}      # drone -> its current claim (as the drone believes)
        self.old: list[tuple[str, Claim]] = []  # claims that were taken away

    @rule(drone=st.sampled_from(DRONES))
    def claim(self, drone: str) -> None:
        if drone in self.held:
            return
        try:
            claim = self.queue.claim(drone, self.tokens[drone])
        except Grounded:
            return
        if claim is not None:
            assert claim.cpv in JOBS
            self.held[drone] = claim

    @rule(drone=st.sampled_from(DRONES))
    def complete(self, drone: str) -> None:
        claim = self.held.pop(drone, None)
        if claim is not None:
            assert self.queue.complete(claim.cpv, drone, self.tokens[drone], claim.lease, 1.0) == "ok"

    @rule(drone=st.sampled_from(DRONES), fault=st.sampled_from(["build", "drone"]))
    def fail(self, drone: str, fault: str) -> None:
        claim = self.held.pop(drone, None)
        if claim is None:
            return
        outcome, grounded = self.queue.fail(claim.cpv, drone, self.tokens[drone], claim.lease, fault, "x")
        assert outcome in ("requeued", "failed", "blocked")
        if grounded:
            assert self.queue.get(claim.cpv).drone != drone

    @rule(drone=st.sampled_from(DRONES))
    def reclaim(self, drone: str) -> None:
        taken = self.queue.reclaim(drone, None, "model")
        claim = self.held.pop(drone, None)
        if claim is not None:
            assert taken == [claim.cpv]
            self.old.append((drone, claim))

    @rule(drone=st.sampled_from(DRONES))
    def release(self, drone: str) -> None:
        claim = self.held.pop(drone, None)
        if claim is not None:
            assert self.queue.release(claim.cpv, drone, self.tokens[drone], claim.lease, "model") == "ok"

    @rule(data=st.data())
    def stale_report(self, data: st.DataObject) -> None:
        if not self.old:
            return
        drone, claim = data.draw(st.sampled_from(self.old))
        before = self.queue.get(claim.cpv)
        assert self.queue.complete(claim.cpv, drone, self.tokens[drone], claim.lease, 1.0) == "stale"
        after = self.queue.get(claim.cpv)
        assert (before.state, before.drone) == (after.state, after.drone)

    @rule(drone=st.sampled_from(DRONES))
    def release_grounding(self, drone: str) -> None:
        self.registry.release(drone)

    @rule(cpv=st.sampled_from(sorted(JOBS)))
    def retry(self, cpv: str) -> None:
        if self.queue.get(cpv).state in ("failed", "blocked"):
            self.queue.retry(cpv)

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "queue"):
            return
        jobs = {j.cpv: j for j in self.queue.jobs()}
        assert set(jobs) == set(JOBS)
        members = {s: self.client.smembers(keys.state_set(s)) for s in keys.STATES}
        for cpv, job in jobs.items():
            assert [s for s in keys.STATES if cpv in members[s]] == [job.state]
            unbuilt = {g for g in CLOSURE[cpv] if jobs[g].state != "built"}
            # One pending gate per build dependency whose run-time closure is not all built yet.
            assert job.pending == sum(1 for b in JOBS[cpv] if BRINGS[b] & unbuilt)
            in_ready = self.client.zscore(keys.READY, cpv) is not None
            assert in_ready == (job.state == "needed" and not unbuilt)
            if job.state == "delegated":
                assert job.drone and cpv in self.client.smembers(keys.drone_jobs(job.drone))
                assert not unbuilt
            else:
                assert job.drone is None
        for drone, claim in self.held.items():
            job = jobs[claim.cpv]
            assert job.state == "delegated" and job.drone == drone
        for drone in DRONES:
            for cpv in self.client.smembers(keys.drone_jobs(drone)):
                assert jobs[cpv].drone == drone
        built = Counter(e.job for e in Events(self.client).since() if e.kind == "built")
        assert all(n == 1 for n in built.values())
        assert set(built) == {c for c, j in jobs.items() if j.state == "built"}

    def teardown(self) -> None:
        if hasattr(self, "client"):
            self.client.close()


QueueMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                          suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_queue_state_machine(machine_url: str) -> None:
    QueueMachine.TestCase().runTest()
