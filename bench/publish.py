"""Benchmark: binhost publish latency and throughput, index serving, signing, swarm overhead.

Run: ``.venv/bin/python bench/publish.py`` (a few minutes; real portage builds, real gpg).
Prints the figures and writes them to ``bench/results/publish.json``.

* concurrent publishing (issue 12 targets): a binhost holding 1,000 and then 50,000
  synthetic index entries receives signed-at-the-binhost uploads from 8 concurrent
  uploaders (real gpkg files: one built package re-stamped with distinct BUILD_IDs by
  portage's own ``update_metadata``). Reported side by side: published/s, p50/p95
  latency, index commits (group commit: changes per write), the bytes of a client's
  refresh of an unchanged index (one 304), Packages.gz / Packages size, and the cost
  of signing one package. Targets: >= 20/s at 50,000; p50(50,000) <= 2 x p50(1,000);
  304 under 1 KB; Packages.gz < 20% of Packages.

* publish latency: a binhost already holding N synthetic index entries (100 or 5,000)
  receives real gpkg files over HTTP (``BinhostClient`` -> server -> verify -> index
  update); the median/max per upload is reported. Incremental indexing means the
  5,000 case should only add the cost of rewriting a bigger ``Packages`` text.
* swarm overhead: the same trivial package built with bare ``emerge --buildpkg``
  vs. ``PortageBuilder.build`` + upload + publish.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from swarmctl.binhost.client import BinhostClient
from swarmctl.binhost.index import PackagesIndex
from swarmctl.binhost.server import make_server
from swarmctl.binhost.signing import Keyring, sign_gpkg
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


def bench_publish(artifacts: list[Artifact], work: Path, count: int, keyring: Keyring) -> dict[str, float]:
    pkgdir = work / f"binhost-{count}"
    pkgdir.mkdir()
    synthetic_index(pkgdir, count)
    server = make_server(pkgdir, "127.0.0.1:0", TrustingGate(), keyring=keyring)
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


UPLOADERS = 8
#: 400 uploads: about 20 s of sustained publishing at the target rate.
UPLOADS_PER_UPLOADER = 50


def variants(source: Path, work: Path, count: int) -> list[Path]:
    """``count`` copies of a built package, each with its own BUILD_ID (portage's update_metadata)."""
    from portage.gpkg import gpkg

    from swarmctl.binhost.gpkg import _ReaderSettings

    settings = _ReaderSettings(MAKEOPTS="-j1", BINPKG_COMPRESS="zstd")
    settings.features = frozenset()
    out = []
    for build_id in range(100, 100 + count):
        target = work / f"hello-1-{build_id}.gpkg.tar"
        shutil.copy(source, target)
        package = gpkg(settings, None, str(target))
        metadata = package.get_metadata()
        metadata["BUILD_ID"] = f"{build_id}\n".encode()
        package.update_metadata(metadata, new_basename=f"hello-1-{build_id}")
        out.append(target)
    return out


def refresh_bytes(url: str, path: str) -> tuple[int, int]:
    """(status, bytes on the wire) of a client's refresh with If-Modified-Since = Last-Modified."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("HEAD", path)
    stamp = conn.getresponse()
    stamp.read()
    last = stamp.getheader("Last-Modified") or ""
    conn.close()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: {last}\r\n"
                     "Connection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1]), len(reply)


def bench_concurrent(files: list[Path], work: Path, count: int, keyring: Keyring) -> dict[str, object]:
    pkgdir = work / f"binhost-concurrent-{count}"
    pkgdir.mkdir()
    synthetic_index(pkgdir, count)
    server = make_server(pkgdir, "127.0.0.1:0", TrustingGate(), keyring=keyring)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    shas = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def uploader(part: list[Path]) -> None:
        client = BinhostClient(server.url, "bench", "token", attempts=1, timeout=120)
        for path in part:
            started = time.perf_counter()
            verdict = client.upload(path, "app-misc/hello-1", "lease", sha256=shas[path])
            with lock:
                latencies.append(time.perf_counter() - started)
                if not verdict.accepted:
                    failures.append(verdict.reason)

    store = server.publisher.store
    try:
        server.publisher.signing_key()
        started = time.perf_counter()
        threads = [threading.Thread(target=uploader, args=(files[i::UPLOADERS],)) for i in range(UPLOADERS)]
        for worker in threads:
            worker.start()
        for worker in threads:
            worker.join()
        wall = time.perf_counter() - started
        status, wire = refresh_bytes(server.url, "/Packages.gz")
    finally:
        server.shutdown()
        server.server_close()
    assert not failures, failures[:3]
    plain, packed = (pkgdir / "Packages").stat().st_size, (pkgdir / "Packages.gz").stat().st_size
    latencies.sort()
    return {"existing_packages": count, "uploaders": UPLOADERS, "uploads": len(files),
            "published_per_s": round(len(files) / wall, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 1),
            "index_commits": store.commits,
            "changes_per_commit": round(store.committed_changes / max(1, store.commits), 1),
            "unchanged_refresh_status": status, "unchanged_refresh_bytes": wire,
            "packages_bytes": plain, "packages_gz_bytes": packed,
            "gz_ratio": round(packed / plain, 3)}


def signing_cost(source: Path, work: Path, keyring: Keyring, rounds: int = 10) -> float:
    """Median seconds to sign one package (portage's update_signature, three gpg signatures)."""
    timings = []
    for i in range(rounds):
        target = work / f"sign-{i}.gpkg.tar"
        shutil.copy(source, target)
        started = time.perf_counter()
        sign_gpkg(target, keyring)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="swarm-bench-") as tmp:
        work = Path(tmp)
        # gpg-agent's socket must fit a short path: the key lives in its own mkdtemp under /tmp.
        keyring = Keyring(Path(tempfile.mkdtemp(prefix="swb-", dir="/tmp")) / "home")
        keyring.init("bench <bench@build-swarm.invalid>", 30)
        try:
            figures = run(work, keyring)
        finally:
            keyring.stop_agent()
            shutil.rmtree(keyring.home.parent, ignore_errors=True)
    report(figures)


def run(work: Path, keyring: Keyring) -> dict[str, object]:
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

    publish = [bench_publish(artifacts, work, count, keyring) for count in (100, 5000)]
    hello = next(a.path for a in artifacts if a.cpv == "app-misc/hello-1")
    (work / "variants").mkdir()
    files = variants(hello, work / "variants", UPLOADERS * UPLOADS_PER_UPLOADER)
    concurrent = [bench_concurrent(files, work, count, keyring) for count in (1000, 50000)]
    sign_s = signing_cost(hello, work, keyring)

    # Bare emerge vs. the swarm path for one trivial package, alternating, each in a fresh prefix.
    pkgdir = work / "binhost-overhead"
    pkgdir.mkdir()
    server = make_server(pkgdir, "127.0.0.1:0", TrustingGate(), keyring=keyring)
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
    return {"publish": publish, "concurrent": concurrent, "signing_ms_per_package": round(sign_s * 1000, 1),
            "overhead": overhead, "trivial_build_seconds": [round(s, 2) for s in build_seconds]}


def report(figures: dict) -> None:  # type: ignore[type-arg]
    publish, concurrent, overhead = figures["publish"], figures["concurrent"], figures["overhead"]
    for row in publish:
        print(f"publish into {row['existing_packages']:>5} packages: median {row['median_ms']} ms, "
              f"max {row['max_ms']} ms over {row['uploads']} uploads (index {row['index_bytes']} bytes)")
    for row in concurrent:
        print(f"{row['uploaders']} uploaders into {row['existing_packages']:>6} packages: "
              f"{row['published_per_s']} published/s, p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, "
              f"{row['index_commits']} index writes ({row['changes_per_commit']} packages each); "
              f"unchanged refresh: {row['unchanged_refresh_status']} in {row['unchanged_refresh_bytes']} bytes; "
              f"Packages.gz {row['packages_gz_bytes']} / Packages {row['packages_bytes']} bytes "
              f"= {row['gz_ratio'] * 100:.1f}%")
    small, big = concurrent
    print(f"p50 at {big['existing_packages']} / p50 at {small['existing_packages']}: "
          f"{big['p50_ms'] / small['p50_ms']:.2f}x; signing costs {figures['signing_ms_per_package']} ms "
          "per package")
    print(f"trivial package (median of {ROUNDS}): bare emerge {overhead['bare_emerge_s']} s, swarm build "
          f"{overhead['swarm_build_s']} s + upload/publish {overhead['upload_publish_s']} s "
          f"-> overhead {overhead['overhead_s']} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
