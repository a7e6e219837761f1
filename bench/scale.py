"""Scale: 20,000 queued jobs with dependencies and 500 registered drones, and large writes.

Claim latency at 1,000 vs 20,000 queued jobs (claim cost must not grow with
queue length), `queue list --json` and `drones --json` wall times (real CLI
processes), add time, and Redis memory. Then the large writes: importing a
100,000-job DAG with `swarmctl queue import` while another client PINGs Redis
every 10 ms (the longest PING is how long Redis was blocked; target ~100 ms),
the 700 x 700 DAG (700 packages build-depending on a root whose run-time chain
is 700 long: keys, gate entries and memory stay linear in the edges), and
`queue list` over 200,000 jobs (one page and all as JSON). Writes
bench/results/scale.json. ``--large-only`` runs only the large writes.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import private_redis, swarm_env
from swarmctl import keys
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


class PingWatch:
    """A thread PINGing Redis every 10 ms; ``worst`` is the longest reply in seconds."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=30)
        self.worst = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            self.client.ping()
            self.worst = max(self.worst, time.perf_counter() - t0)
            self.stop.wait(0.01)

    def __enter__(self) -> PingWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.client.close()


def dag_file(path: Path, specs: list[JobSpec]) -> Path:
    edges = [[d, s.cpv, kind] for s in specs for kind, deps in (("build", s.build), ("run", s.run)) for d in deps]
    path.write_text(json.dumps({"nodes": [{"cpv": s.cpv} for s in specs], "edges": edges}))
    return path


def wide_dag(width: int, chain: int) -> list[JobSpec]:
    """``width`` packages build-depending on a root whose run-time chain is ``chain`` long."""
    links = [f"dev-libs/link{i}-1" for i in range(chain)]
    specs = [JobSpec("dev-libs/root-1", run=[links[0]])]
    specs += [JobSpec(c, run=[links[i + 1]] if i + 1 < chain else []) for i, c in enumerate(links)]
    specs += [JobSpec(f"app-misc/leaf{i}-1", build=["dev-libs/root-1"]) for i in range(width)]
    return specs


def longest_command_ms(client: redis.Redis) -> float | None:
    """Redis's own record of its longest command (an EXEC counts whole) since the last reset."""
    for event, _when, _last, worst in client.execute_command("LATENCY", "LATEST"):
        if event == "command":
            return float(worst)
    return None


def timed_import(path: Path, url: str, env: dict[str, str]) -> dict[str, object]:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.config_set("latency-monitor-threshold", 1)
    client.execute_command("LATENCY", "RESET")
    client.config_resetstat()
    with PingWatch(url) as watch:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "swarmctl", "queue", "import", str(path), "--json"],
                              env=env, capture_output=True, text=True)
        took = time.perf_counter() - t0
    summary = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr.strip()}
    longest = longest_command_ms(client)
    execs = client.info("commandstats").get("cmdstat_exec", {})
    client.close()
    return {"exit": proc.returncode, "wall_s": round(took, 2), "max_ping_ms": round(watch.worst * 1000, 1),
            "longest_command_ms": longest, "slices": execs.get("calls"),
            "slice_mean_ms": round(execs.get("usec_per_call", 0) / 1000, 1),
            "added": summary.get("added"), "error": summary.get("error")}


def large_writes(tmp: Path) -> dict[str, object]:
    result: dict[str, object] = {}
    with private_redis(tmp / "large") as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        env = swarm_env(url, tmp)
        config = load_config(environ={"SWARM_REDIS_URL": url})
        queue = Queue(client, config)
        big = timed_import(dag_file(tmp / "100k.dag.json", graph(100_000)), url, env)
        big["queued"] = queue.counts()["needed"]
        result["import_100k"] = big
        print(f"import 100,000 jobs: exit {big['exit']}, {big['wall_s']} s, {big['queued']} queued, "
              f"longest PING {big['max_ping_ms']} ms, longest Redis command {big['longest_command_ms']} ms "
              f"({big['slices']} slices, mean {big['slice_mean_ms']} ms)")
        queue.clear()
        before = client.info("memory")["used_memory"]
        wide = timed_import(dag_file(tmp / "700.dag.json", wide_dag(700, 700)), url, env)
        gate_keys = [k for k in client.scan_iter(match=keys.JOB_PREFIX + "*:*", count=5000)
                     if k.endswith((":gates", ":dependents", ":needs", ":holders"))]
        with client.pipeline(transaction=False) as pipe:
            for key in gate_keys:
                pipe.scard(key)
            entries = sum(pipe.execute())
        wide.update(keys=client.dbsize(), gate_entries=entries,
                    memory_mb=round((client.info("memory")["used_memory"] - before) / 2**20, 2))
        result["dag_700x700"] = wide
        print(f"700x700 DAG: {wide['gate_entries']} gate entries, {wide['keys']} keys, "
              f"{wide['memory_mb']} MiB, longest PING {wide['max_ping_ms']} ms, "
              f"longest Redis command {wide['longest_command_ms']} ms")
        queue.clear()
        t0 = time.perf_counter()
        for start in range(0, 200_000, 50_000):
            queue.add([JobSpec(f"cat-{i % 50}/many{i}-1", estimate=60) for i in range(start, start + 50_000)])
        added = time.perf_counter() - t0
        page_s, _ = timed_cli(["queue", "list", "--json", "--limit", "50"], env)
        all_s, n_jobs = timed_cli(["queue", "list", "--json"], env)
        result["list_200k"] = {"add_s": round(added, 1), "page_json_s": round(page_s, 2),
                               "all_json_s": round(all_s, 2), "jobs": n_jobs}
        print(f"queue list over {n_jobs} jobs: one page {page_s:.2f} s, all as JSON {all_s:.2f} s "
              f"(adding them took {added:.1f} s)")
        client.close()
    return result


def main() -> None:
    large_only = "--large-only" in sys.argv[1:]
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        result["large_writes"] = large_writes(Path(tmp))
    if large_only:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "scale-large.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp) / "redis") as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        config = load_config(environ={"SWARM_REDIS_URL": url})
        queue, registry = Queue(client, config), DroneRegistry(client, config)
        tokens = {f"drone-{i:03d}": registry.enroll(f"drone-{i:03d}") for i in range(DRONES)}
        for name, token in tokens.items():
            registry.heartbeat(name, token, {"status": "idle", "cpu": 3.0, "mem": 20.0})
        for size in (1_000, 20_000):
            client.delete(*client.keys(keys.JOB_PREFIX + "*") or ["-"])
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
    small, large = result["jobs_1000"]["claim"]["p50_ms"], result["jobs_20000"]["claim"]["p50_ms"]
    result["claim_p50_growth_ratio"] = round(large / small, 2)
    print(f"claim p50 at 20,000 / at 1,000 jobs: {large / small:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
