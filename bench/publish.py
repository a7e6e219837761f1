"""Benchmark: binhost publish latency (100 vs 5,000 packages) and swarm overhead per build.

Run: ``.venv/bin/python bench/publish.py`` (about 40 s; real portage builds).
Prints the figures and writes them to ``bench/results/publish.json``.

* publish latency: a binhost already holding N synthetic index entries (100 or 5,000)
  receives real gpkg files over HTTP (``BinhostClient`` -> server -> verify -> index
  update); the median/max per upload is reported. Incremental indexing means the
  5,000 case should only add the cost of rewriting a bigger ``Packages`` text.
* swarm overhead: the same trivial package built with bare ``emerge --buildpkg``
  vs. ``PortageBuilder.build`` + upload + publish.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from swarmctl.binhost.client import BinhostClient
from swarmctl.binhost.index import PackagesIndex
from swarmctl.binhost.server import make_server
from swarmctl.drone.builders import Artifact
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.overlay import install_overlay
from swarmctl.portage_env.prefix import make_prefix

PACKAGES = ("app-misc/hello-1", "app-misc/greet-data-1", "dev-util/stamp-1", "dev-libs/libgreet-1",
            "app-misc/hello-extras-1")
ROUNDS = 3
RESULTS = Path(__file__).parent / "results" / "publish.json"


class TrustingGate:
    """Every drone owns every job (the bench measures the binhost, not Redis)."""

    def authenticate(self, drone: str, token: str) -> bool:
        return True

    def owner_of(self, cpv: str) -> tuple[str, str]:
        return "bench", "lease"

    def complete(self, *args: object) -> str:
        return "ok"


def synthetic_index(pkgdir: Path, count: int) -> None:
    index = PackagesIndex(header={"CHOST": "x86_64-pc-linux-gnu"})
    for i in range(count):
        path = f"app-synth/pkg{i}/pkg{i}-1-1.gpkg.tar"
        index.entries[path] = {
            "CPV": f"app-synth/pkg{i}-1", "BUILD_ID": "1", "BUILD_TIME": "1700000000", "EAPI": "8",
            "DEPEND": "dev-libs/libgreet", "RDEPEND": "app-misc/greet-data", "KEYWORDS": "amd64",
            "LICENSE": "MIT", "PATH": path, "SIZE": "10240", "MD5": "0" * 32, "SHA1": "0" * 40,
            "SHA256": "0" * 64, "REPO": "swarm-sample", "SLOT": "0",
        }
    index.write(pkgdir / "Packages")


def bench_publish(artifacts: list[Artifact], work: Path, count: int) -> dict[str, float]:
    pkgdir = work / f"binhost-{count}"
    pkgdir.mkdir()
    synthetic_index(pkgdir, count)
    server = make_server(pkgdir, "127.0.0.1:0", TrustingGate())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = BinhostClient(server.url, "bench", "token", attempts=1)
    timings = []
    try:
        for artifact in artifacts:
            started = time.perf_counter()
            verdict = client.upload(artifact.path, artifact.cpv, "lease", sha256=artifact.sha256)
            timings.append(time.perf_counter() - started)
            assert verdict.accepted, verdict.reason
    finally:
        server.shutdown()
        server.server_close()
    return {"existing_packages": count, "uploads": len(timings),
            "median_ms": round(statistics.median(timings) * 1000, 1),
            "max_ms": round(max(timings) * 1000, 1),
            "index_bytes": (pkgdir / "Packages").stat().st_size}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as tmp:
        work = Path(tmp)
        repo = install_overlay(work / "repo")
        builder = PortageBuilder(make_prefix(work / "drone", repo))
        artifacts = []
        build_seconds = []
        for cpv in PACKAGES:
            started = time.perf_counter()
            result = builder.build(cpv, work / "logs" / f"{cpv.replace('/', '_')}.log", threading.Event())
            build_seconds.append(time.perf_counter() - started)
            assert result.ok, result.reason
            artifacts.extend(result.artifacts)

        publish = [bench_publish(artifacts, work, count) for count in (100, 5000)]

        # Bare emerge vs. the swarm path for one trivial package, alternating, each in a fresh prefix.
        pkgdir = work / "binhost-overhead"
        pkgdir.mkdir()
        server = make_server(pkgdir, "127.0.0.1:0", TrustingGate())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        bare, swarm_build, upload = [], [], []
        try:
            for round_ in range(ROUNDS):
                bare_prefix = make_prefix(work / f"bare{round_}", repo)
                started = time.perf_counter()
                subprocess.run([bare_prefix.tool("emerge"), "--buildpkg", "--oneshot", "--color=n",
                                "--nospinner", "=app-misc/hello-1"], env=bare_prefix.env(), check=True,
                               capture_output=True)
                bare.append(time.perf_counter() - started)
                swarm_prefix = make_prefix(work / f"swarm{round_}", repo)
                started = time.perf_counter()
                result = PortageBuilder(swarm_prefix).build("app-misc/hello-1", work / "swarm.log",
                                                            threading.Event())
                built = time.perf_counter()
                artifact = result.artifacts[0]
                verdict = BinhostClient(server.url, "bench", "token").upload(
                    artifact.path, artifact.cpv, "lease", sha256=artifact.sha256)
                assert verdict.accepted or verdict.code == "duplicate", verdict.reason
                swarm_build.append(built - started)
                upload.append(time.perf_counter() - built)
        finally:
            server.shutdown()
            server.server_close()
        med = statistics.median
        overhead = {
            "rounds": ROUNDS,
            "bare_emerge_s": round(med(bare), 2),
            "swarm_build_s": round(med(swarm_build), 2),
            "upload_publish_s": round(med(upload), 3),
            "overhead_s": round(med(swarm_build) + med(upload) - med(bare), 2),
        }
    figures = {"publish": publish, "overhead": overhead,
               "trivial_build_seconds": [round(s, 2) for s in build_seconds]}
    for row in publish:
        print(f"publish into {row['existing_packages']:>5} packages: median {row['median_ms']} ms, "
              f"max {row['max_ms']} ms over {row['uploads']} uploads (index {row['index_bytes']} bytes)")
    print(f"trivial package (median of {ROUNDS}): bare emerge {overhead['bare_emerge_s']} s, swarm build "
          f"{overhead['swarm_build_s']} s + upload/publish {overhead['upload_publish_s']} s "
          f"-> overhead {overhead['overhead_s']} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
