"""``swarmctl demo``: a real local swarm building the sample overlay end to end."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Group
from rich.live import Live

from swarmctl.cli import terminal

if TYPE_CHECKING:
    from swarmctl.demo import LocalSwarm


def _frame(swarm: LocalSwarm) -> Group:
    return terminal.demo_frame(swarm.queue.counts(), swarm.registry.list(), swarm.registry.server_time(),
                               time.monotonic() - swarm.started)


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep everything here (default: a temp dir).")
@click.option("--drones", default=3, show_default=True, help="How many drones.")
@click.option("--with-broken", is_flag=True, help="Also queue a package that always fails (it gets blocked).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for the builds.")
def demo(workdir: str | None, drones: int, with_broken: bool, timeout: float) -> None:
    """Run a local swarm: embedded Redis, binhost, drones with real portage, then a client install."""
    from swarmctl.demo import LocalSwarm
    from swarmctl.overlay import BROKEN_CPV

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="swarm-demo-"))
    swarm = LocalSwarm(root, drones=drones, extra_jobs=(BROKEN_CPV,) if with_broken else ())
    try:
        terminal.note(f"work dir: {root}")
        swarm.start()
        queued = swarm.queue_world()
        terminal.note(f"queued {queued} package(s) for {', '.join(swarm.world)} on {drones} drone(s)")
        if terminal.console.is_terminal:
            with Live(_frame(swarm), console=terminal.console, refresh_per_second=2) as live:
                finished = swarm.wait(timeout, on_tick=lambda: live.update(_frame(swarm)))
        else:
            finished = swarm.wait(timeout)
        summary = swarm.summary()
        if not finished:
            summary.problems.append(f"builds did not finish within {timeout:.0f} s")
        expected_blocked = [BROKEN_CPV] if with_broken else []
        if summary.blocked != expected_blocked or summary.failed:
            summary.problems.append(f"blocked {summary.blocked}, failed {summary.failed}")
        terminal.console.print(terminal.demo_summary(summary))
        if not summary.problems:
            top = swarm.world[0]
            ok, output = swarm.install_on_client(top)
            summary.client_ok = ok
            if ok:
                terminal.ok(f"a fresh portage client installed {top} from the binhost (emerge --getbinpkgonly)")
            else:
                summary.problems.append(f"client install of {top} failed:\n{output}")
    finally:
        swarm.stop()
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    for problem in summary.problems:
        terminal.error(problem)
    if summary.problems:
        raise SystemExit(1)
    terminal.ok(f"demo passed in {summary.seconds:.0f} s")


COMMANDS = [demo]
