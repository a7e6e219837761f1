"""The whole swarm with real portage: drones in prefixes build the sample overlay through the queue."""

from __future__ import annotations

import calendar
import itertools
import json
import time
from pathlib import Path

import pytest

from swarmctl.binhost.index import verify
from tests.helpers import run_cli

pytestmark = pytest.mark.portage

def test_demo_builds_everything_once_blocks_the_broken_package_and_serves_a_client(
        swarm_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in swarm_env.items() if k != "SWARM_REDIS_URL"}  # the demo's own embedded Redis
    workdir = tmp_path / "demo"
    # Two drones of two slots each: portage builds run concurrently on one drone (in one prefix).
    proc = run_cli(["demo", "--workdir", str(workdir), "--with-broken", "--drones", "2",
                    "--drone-env", "SWARM_DRONE_SLOTS=2"], env, check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "built exactly once │ yes" in out and "app-broken/broken-1" in out
    assert "installed app-misc/swarm-world from the binhost" in out
    packages = (workdir / "binhost" / "Packages").read_text()
    for field in ("MD5:", "SHA1:", "SIZE:", "SHA256:"):
        assert field in packages
    assert "CPV: app-broken/broken-1" not in packages
    # The demo ran the gates and promoted: clients get generation 1, which lists every package.
    assert "SWARM_GENERATION: 1" in packages and "dependency closure and a smoke install passed" in out
    listed = json.loads(run_cli(["binhost", "generations", "--json", "--dir", str(workdir / "binhost")], env).stdout)
    assert [(g["id"], g["published"], g["packages"]) for g in listed] == [(1, True, packages.count("\nCPV: "))]
    assert verify(workdir / "binhost", check_signatures=True).ok  # every package signed by KEYS.asc's key
    assert (workdir / "binhost" / "KEYS.asc").read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert "signatures verified" in out and "altered after signing was refused" in out
    assert "verify-signature" not in (workdir / "client/etc/portage/binrepos.conf").read_text()
    assert not (workdir / "redis" / "redis.sock").exists()  # the demo stopped its Redis
    logs = {p.parent.parent.parent.name for p in (workdir / "drones").glob("*/state/logs/*.log")}
    assert len(logs) >= 2  # the work was spread over several drones
    assert any(_overlapping(d) for d in (workdir / "drones").iterdir())  # and ran side by side on one


def _overlapping(drone: Path) -> bool:
    """Did two of the drone's builds run at once? A log is named by its start (to the second)
    and last written at its end."""
    spans = []
    for log in (drone / "state" / "logs").glob("*.log"):
        started = calendar.timegm(time.strptime(log.name[:15], "%Y%m%dT%H%M%S"))  # named in UTC
        spans.append((started, log.stat().st_mtime))
    spans.sort()
    return any(later[0] + 1 < earlier[1] for earlier, later in itertools.pairwise(spans))
