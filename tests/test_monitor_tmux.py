"""The live monitor in a real terminal: tmux runs it, capture-pane reads the screen.

Checks what a unit test cannot: the alternate screen is drawn and redrawn in
place, a finished job shows up on the next refresh, the frame follows a resize,
and q really quits (the terminal is restored and the exit status is 0).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from swarmctl.config import Config
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import REPO, wait_until

TMUX = shutil.which("tmux") or ("/usr/bin/tmux" if Path("/usr/bin/tmux").exists() else None)
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")


class Pane:
    """One detached tmux session on a private server socket."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        self.env = env
        self.session = f"mon-{uuid.uuid4().hex[:6]}"

    def tmux(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([TMUX or "tmux", "-S", str(self.socket), *args], env=self.env, capture_output=True,
                              text=True, timeout=20)
        if check and proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def start(self, command: str, width: int, height: int) -> None:
        """Run ``command`` in a new session; its exit status is echoed after it (tmux 3.3 can lose
        #{pane_dead_status} when the pty closes before the process is reaped)."""
        conf = self.socket.with_suffix(".conf")
        conf.write_text("set -g remain-on-exit on\nset -g status off\n")  # keep a dead pane's last screen
        self.tmux("-f", str(conf), "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
                  f"{command}; echo EXIT=$?")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def everything(self) -> str:
        """Screen plus scrollback (a quick process may print before tmux settles the pane's size)."""
        return self.tmux("capture-pane", "-p", "-S", "-", "-t", self.session)

    def wait_for(self, text: str, timeout: float) -> str:
        """The screen once it shows ``text`` ('' on timeout)."""
        return wait_until(lambda: next((s for s in [self.screen()] if text in s), ""), timeout=timeout)

    def exit_status(self) -> str:
        """The command's exit status once it has ended, else ''."""
        found = re.search(r"EXIT=(\d+)", self.everything())
        return found.group(1) if found else ""

    def kill(self) -> None:
        self.tmux("kill-server", check=False)


@pytest.fixture
def pane(swarm_env: dict[str, str], tmp_path: Path) -> Iterator[Pane]:
    env = {**swarm_env, "TERM": "xterm-256color", "PYTHONPATH": str(REPO)}
    env.pop("TMUX", None)
    pane = Pane(tmp_path / "tmux.sock", env)
    yield pane
    pane.kill()


def test_monitor_in_tmux(pane: Pane, redis_client: redis.Redis, config: Config) -> None:
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    queue.add([JobSpec("sys-devel/llvm-19.1.7", estimate=600), JobSpec("dev-qt/qtbase-6.8.2", estimate=300)])
    izar, tau = registry.enroll("drone-Izar"), registry.enroll("drone-Tau-Beta")
    claim = queue.claim("drone-Izar", izar)
    assert claim is not None

    def heartbeats() -> None:
        registry.heartbeat("drone-Izar", izar, {"status": "building", "task": claim.cpv, "cpu": 87.3, "mem": 45.2},
                           claim.cpv, claim.lease)
        registry.heartbeat("drone-Tau-Beta", tau, {"status": "idle", "cpu": 2.0, "mem": 12.0})

    heartbeats()
    command = f"{sys.executable} -m swarmctl monitor --interval 0.3"
    pane.start(command, 110, 30)

    screen = pane.wait_for("drone-Tau-Beta", timeout=20)
    assert screen, pane.screen()
    assert "Build Swarm Monitor" in screen
    izar_row = next(line for line in screen.splitlines() if "drone-Izar" in line and "BUILDING" in line)
    assert "sys-devel/llvm-19.1.7" in izar_row and "87%" in izar_row
    assert any("drone-Tau-Beta" in line and "IDLE" in line for line in screen.splitlines())
    assert "Built: 0" in screen

    # the job finishes: the next refresh shows it, in place
    assert queue.complete(claim.cpv, "drone-Izar", izar, claim.lease, 42.0) == "ok"
    registry.heartbeat("drone-Izar", izar, {"status": "idle", "task": "", "cpu": 5.0, "mem": 20.0})
    screen = pane.wait_for("Built: 1", timeout=10)
    assert screen, pane.screen()
    assert any("drone-Izar" in line and "IDLE" in line for line in screen.splitlines())
    assert any("built" in line and "sys-devel/llvm-19.1.7" in line for line in screen.splitlines())
    assert screen.count("Build Swarm Monitor") == 1  # redrawn in place, not scrolled

    # a narrower terminal: the frame follows, no line wider than the pane
    pane.tmux("resize-window", "-t", pane.session, "-x", "60", "-y", "30")

    def narrow() -> str:
        screen = pane.screen()
        fits = all(len(line.rstrip()) <= 60 for line in screen.splitlines())
        return screen if fits and "CPU" not in screen and "drone-Izar" in screen else ""

    assert wait_until(narrow, timeout=10), pane.screen()

    # q quits cleanly
    pane.tmux("send-keys", "-t", pane.session, "q")
    assert wait_until(pane.exit_status, timeout=10) == "0", pane.everything()
    assert "Build Swarm Monitor" not in pane.screen()  # the alternate screen is gone: terminal restored


def test_monitor_with_unreachable_redis(pane: Pane, swarm_env: dict[str, str]) -> None:
    """A wrong address is one clear error line and a non-zero exit, not a broken screen."""
    pane.env = {**pane.env, "SWARM_REDIS_URL": "redis://127.0.0.1:1/0", "SWARM_REDIS_SOCKET_TIMEOUT": "1"}
    pane.start(f"{sys.executable} -m swarmctl monitor --interval 0.3", 100, 20)
    assert wait_until(pane.exit_status, timeout=20) == "2", pane.everything()
    assert "cannot reach" in pane.everything()

