"""The demo always ends, says why, and leaves nothing running (real swarm, real portage).

Drones are made misconfigured by a PATH without zstd or gcc (``--drone-env PATH=...``), the
demo's own prerequisites check by a private mount namespace that hides zstd from everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from swarmctl.demo import LocalSwarm
from swarmctl.events import Events
from swarmctl.graph import JobSpec
from swarmctl.overlay import BROKEN_CPV
from tests.helpers import SWARMCTL
from tests.hidetools import path_without, processes_using
from tests.portage.test_preflight_portage import HIDE

pytestmark = pytest.mark.portage


def demo_env(swarm_env: dict[str, str], tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in swarm_env.items() if k != "SWARM_REDIS_URL"}  # the demo's own embedded Redis
    return {**env, "TMPDIR": str(tmp)}  # its temporary work dir lands here, where the test can look


def start_demo(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([*SWARMCTL, "demo", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=tempfile.gettempdir())


def assert_nothing_left(workdir: Path) -> None:
    deadline = time.monotonic() + 10  # the daemonized redis-server exits just after its SHUTDOWN reply
    while (left := processes_using(workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"still running: {left}"


@pytest.mark.parametrize("tool", ["zstd", "gcc"])
def test_drones_missing_a_tool_are_misconfigured_claim_nothing_and_the_run_stops_naming_it(
        tool: str, tmp_path: Path) -> None:
    path = path_without(HIDE[tool], tmp_path / "bin")
    swarm = LocalSwarm(tmp_path / "swarm", drones=2, env={"PATH": path})
    try:
        swarm.start()
        assert swarm.queue_world() > 0
        halt = swarm.watch(timeout=120, stall=60)
        fleet = swarm.registry.list()
        kinds = {e.kind for e in Events(swarm.client).since()}
        counts = swarm.queue.counts()
        elapsed = time.monotonic() - swarm.started
    finally:
        swarm.stop()
    assert halt is not None and halt.reason.startswith("no drone can build")
    assert f"{tool} not found" in halt.reason, halt
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert [d.status for d in fleet] == ["misconfigured"] * 2
    assert all(f"{tool} not found" in (d.problem or "") for d in fleet)
    assert "claimed" not in kinds and counts["failed"] == counts["blocked"] == counts["delegated"] == 0
    assert_nothing_left(tmp_path / "swarm")


def test_a_job_that_fails_for_good_stops_the_run_naming_package_drone_reason_and_log(tmp_path: Path) -> None:
    swarm = LocalSwarm(tmp_path / "swarm", drones=2)
    try:
        swarm.start()
        swarm.queue.add([JobSpec(BROKEN_CPV)])
        halt = swarm.watch(timeout=300, stall=120)
    finally:
        swarm.stop()
    assert halt is not None and halt.reason.startswith(f"{BROKEN_CPV} blocked on drone-"), halt
    assert "broken on purpose" in halt.reason and "broken on purpose" in halt.detail


def test_the_demo_command_exits_within_a_minute_naming_the_missing_tool(
        swarm_env: dict[str, str], tmp_path: Path) -> None:
    path = path_without(HIDE["zstd"], tmp_path / "bin")
    started = time.monotonic()
    proc = start_demo(["--drones", "2", "--drone-env", f"PATH={path}"], demo_env(swarm_env, tmp_path),
                      tmp_path / "demo.log")
    code = proc.wait(timeout=120)
    elapsed = time.monotonic() - started
    out = (tmp_path / "demo.log").read_text()
    assert code == 1 and elapsed < 60, f"exit {code} after {elapsed:.0f} s:\n{out}"
    assert "error: no drone can build: drone-1 misconfigured: zstd not found" in out
    assert "misconfigured: zstd not found" in out.split("error:")[0]  # the piped line per stage
    assert not list(tmp_path.glob("swarm-demo-*")), "the temporary work dir was not removed"


@pytest.mark.skipif(os.geteuid() != 0, reason="hiding zstd with a bind mount needs root (a private mount namespace)")
def test_the_demo_checks_its_prerequisites_first(swarm_env: dict[str, str], tmp_path: Path) -> None:
    zstd = subprocess.run(["sh", "-c", "command -v zstd"], capture_output=True, text=True).stdout.strip()
    if not zstd:
        pytest.skip("zstd is not installed here, so there is nothing to hide")
    # In a private mount namespace (gone with its last process: nothing to clean up), zstd is /dev/null.
    script = f'mount --bind /dev/null "$(readlink -f {zstd})" && exec "$@"'
    started = time.monotonic()
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           *SWARMCTL, "demo"], env=demo_env(swarm_env, tmp_path), capture_output=True, text=True,
                          timeout=60, cwd=tempfile.gettempdir())
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert elapsed < 15, f"{elapsed:.0f} s"
    assert "missing: zstd" in proc.stderr and "apt-get install -y zstd" in proc.stderr.replace("\n", " ")
    assert "work dir" not in proc.stderr and not list(tmp_path.glob("swarm-demo-*"))  # nothing was started
    assert Path(zstd).stat().st_size > 0  # the host's zstd was never touched


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_stops_everything_the_demo_started(sig: signal.Signals, swarm_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    keep = tmp_path / "kept" if sig == signal.SIGHUP else None  # one run with --workdir: kept, but stopped
    args = ["--drones", "2"] + (["--workdir", str(keep)] if keep else [])
    log = tmp_path / "demo.log"
    proc = start_demo(args, demo_env(swarm_env, tmp_path), log)
    try:
        deadline = time.monotonic() + 120
        while "queued" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        workdir = keep or next(tmp_path.glob("swarm-demo-*"))
        time.sleep(2)  # drones claiming and building
        assert processes_using(workdir), "the demo's processes should be running before the signal"
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert code == 128 + sig, out
    assert f"stopped by {sig.name}" in out
    assert_nothing_left(workdir)
    assert workdir.exists() == bool(keep)


def test_a_run_that_stops_progressing_or_runs_out_of_time_ends_saying_so(tmp_path: Path) -> None:
    swarm = LocalSwarm(tmp_path / "swarm", drones=0)  # nobody will ever take the job
    try:
        swarm.start()
        swarm.queue.add([JobSpec("app-misc/hello-1")])
        started = time.monotonic()
        stalled = swarm.watch(timeout=600, stall=2, step=0.1)
        stalled_after = time.monotonic() - started
        timed_out = swarm.watch(timeout=time.monotonic() - swarm.started + 1, stall=600, step=0.1)
    finally:
        swarm.stop()
    assert stalled is not None and stalled.reason.startswith("nothing progressed for 2 s"), stalled
    assert "1 job(s) waiting" in stalled.reason and 2 <= stalled_after < 5
    assert timed_out is not None and timed_out.reason.startswith("timed out: the demo's"), timed_out
    assert_nothing_left(tmp_path / "swarm")
