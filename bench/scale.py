"""Scale: 20,000 queued jobs with dependencies and 500 registered drones.

Claim latency at 1,000 vs 20,000 queued jobs (claim cost must not grow with
queue length), `queue list --json` and `drones --json` wall times (real CLI
processes), add time, and Redis memory. Writes bench/results/scale.json.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import private_redis, swarm_env
from swarmctl.config import load_config
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry

DRONES = 500
CLAIMS = 2000
RESULTS = Path(__file__).resolve().parent / "results"


def graph(n: int, seed: int = 7) -> list[JobSpec]:
    """A layered random DAG: each job builds against up to 3 earlier ones; a third are ready."""
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        deps = rng.sample(range(i), k=min(i, rng.randint(0, 3))) if i >= n // 3 else []
        specs.append(JobSpec(f"cat-{i % 50}/pkg{i}-1", build=[f"cat-{d % 50}/pkg{d}-1" for d in deps],
                             estimate=rng.choice([30, 60, 300, 1200, 3600])))
    return specs


def claim_latency(queue: Queue, registry: DroneRegistry, tokens: dict[str, str]) -> dict[str, float]:
    names = list(tokens)
    samples = []
    for i in range(CLAIMS):
        name = names[i % len(names)]
        t0 = time.perf_counter()
        claim = queue.claim(name, tokens[name])
        samples.append(time.perf_counter() - t0)
        assert claim is not None
        queue.release(claim.cpv, name, tokens[name], claim.lease, "bench")
    samples.sort()
    return {"p50_ms": round(statistics.median(samples) * 1000, 3),
            "p99_ms": round(samples[int(len(samples) * 0.99)] * 1000, 3)}


def timed_cli(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "swarmctl", *args], env=env, capture_output=True, check=True)
    return time.perf_counter() - t0, len(json.loads(proc.stdout))


def main() -> None:
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp) / "redis") as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        config = load_config(environ={"SWARM_REDIS_URL": url})
        queue, registry = Queue(client, config), DroneRegistry(client, config)
        tokens = {f"drone-{i:03d}": registry.enroll(f"drone-{i:03d}") for i in range(DRONES)}
        for name, token in tokens.items():
            registry.heartbeat(name, token, {"status": "idle", "cpu": 3.0, "mem": 20.0})
        for size in (1_000, 20_000):
            client.delete(*client.keys("swarm:job:*") or ["-"])
            queue.clear()
            t0 = time.perf_counter()
            queue.add(graph(size))
            added = time.perf_counter() - t0
            latency = claim_latency(queue, registry, tokens)
            result[f"jobs_{size}"] = {"add_s": round(added, 2), "claim": latency,
                                      "ready": queue.counts()["ready"]}
            print(f"{size:>6} jobs: add {added:.2f} s; claim p50 {latency['p50_ms']:.2f} ms "
                  f"p99 {latency['p99_ms']:.2f} ms")
        env = swarm_env(url, Path(tmp))
        list_s, n_jobs = timed_cli(["queue", "list", "--json"], env)
        drones_s, n_drones = timed_cli(["drones", "--json"], env)
        memory = client.info("memory")["used_memory"]
        result.update({"queue_list_json_s": round(list_s, 2), "queue_list_jobs": n_jobs,
                       "drones_json_s": round(drones_s, 2), "drones": n_drones,
                       "redis_used_memory_mb": round(memory / 2**20, 1)})
        print(f"queue list --json ({n_jobs} jobs): {list_s:.2f} s; drones --json ({n_drones}): {drones_s:.2f} s; "
              f"Redis memory {memory / 2**20:.1f} MiB")
    small, large = result["jobs_1000"]["claim"]["p50_ms"], result["jobs_20000"]["claim"]["p50_ms"]  # type: ignore[index]
    result["claim_p50_growth_ratio"] = round(large / small, 2)
    print(f"claim p50 at 20,000 / at 1,000 jobs: {large / small:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
