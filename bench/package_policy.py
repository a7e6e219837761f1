"""Benchmark: what the binhost's content policy costs per publish, and what a bomb costs it.

Run: ``.venv/bin/python bench/package_policy.py`` (about a minute; one real portage build).
Prints the figures and writes them to ``bench/results/package_policy.json``.

* ``inspect + policy`` on the real ``app-misc/hello-1`` package (median of 9);
* the same on that package with 256 MiB of incompressible data added to its image
  (streamed through zstd: the cost of a big, honest package);
* the refusal of a ~34 KB package that unpacks to 1 GiB (the issue's bomb): seconds
  until refused, and how much the process's peak RSS grew.

The malicious packages come from the security tests' forging helper (tests/security/forge.py).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swarmctl.binhost.gpkg import PolicyViolation, inspect_gpkg
from swarmctl.binhost.policy import ContentPolicy
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.overlay import install_overlay
from swarmctl.portage_env.prefix import make_prefix
from tests.security.forge import forged_gpkg, member

RESULTS = Path(__file__).parent / "results" / "package_policy.json"
HELLO = "app-misc/hello-1"


def check(path: Path, policy: ContentPolicy) -> float:
    started = time.perf_counter()
    policy.check(path, inspect_gpkg(path, limits=policy.limits))
    return time.perf_counter() - started


def main() -> None:
    policy = ContentPolicy.default()
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as scratch:
        root = Path(scratch)
        builder = PortageBuilder(make_prefix(root / "prefix", install_overlay(root / "repo")))
        result = builder.build(HELLO, root / "hello.log", threading.Event())
        assert result.ok, result.reason
        hello = result.artifacts[0].path
        small = statistics.median(check(hello, policy) for _ in range(9))

        # The bomb first: ru_maxrss is a high-water mark, and the big package below is built in memory.
        bomb = forged_gpkg(hello, root / "bomb.gpkg.tar", image_members=[member("image/usr/share/bench/z", 1024**3)])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        started = time.perf_counter()
        try:
            check(bomb, policy)
            refused = False
        except PolicyViolation:
            refused = True
        bomb_seconds = time.perf_counter() - started
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak

        big = forged_gpkg(hello, root / "big.gpkg.tar", image_members=[
            member("image/usr/share/bench/noise", os.urandom(256 * 1024 * 1024))])
        big_seconds = check(big, policy)
        figures = {
            "hello_inspect_and_policy_ms_median": round(small * 1000, 1),
            "big_image_256MiB_packed_bytes": big.stat().st_size,
            "big_image_256MiB_inspect_and_policy_s": round(big_seconds, 2),
            "bomb_packed_bytes": bomb.stat().st_size,
            "bomb_refused": refused,
            "bomb_refusal_s": round(bomb_seconds, 2),
            "bomb_peak_rss_growth_MiB": round(grew / 1024**2, 1),
        }
    for key, value in figures.items():
        print(f"{key:40} {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
