"""``swarmctl demo``: a real local swarm building the sample overlay end to end.

It always ends: its prerequisites are checked first, it stops (non-zero, with the reason)
as soon as something cannot succeed, and SIGINT, SIGTERM or SIGHUP stop everything it
started and remove its temporary work dir.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Group
from rich.live import Live

from swarmctl.cli import terminal

#: Signals that stop the demo and everything it started.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Events worth a line when the output is not a terminal.
STAGE_EVENTS = frozenset({"built", "requeued", "failed", "blocked", "grounded", "misconfigured", "preflight-ok"})


class Stopped(Exception):
    """The demo got a stop signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def catch_stop_signals() -> dict[int, Any]:
    """Turn the first SIGINT, SIGTERM or SIGHUP into :class:`Stopped`; returns the previous handlers.

    Without this SIGTERM and SIGHUP end the process on the spot, leaving the drones and the
    embedded Redis running. Later signals are ignored: they must not cut the cleanup short.
    """
    raised = False

    def handler(signum: int, _frame: Any) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Stopped(signum)

    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


@contextmanager
def uninterrupted(previous: dict[int, Any]) -> Iterator[None]:
    """Ignore the stop signals while the demo stops what it started, then restore ``previous``.

    (Ignored rather than blocked: a blocked signal may still reach one of the other threads.)
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _stage(event: Event) -> None:
    if event.kind not in STAGE_EVENTS:
        return
    reason = f": {event.reason}" if event.reason else ""
    if event.job:
        terminal.note(f"{event.kind} {event.job}" + (f" on {event.drone}" if event.drone else "") + reason)
    else:
        terminal.note(f"{event.drone} {event.kind}{reason}")

if TYPE_CHECKING:
    from swarmctl.demo import LocalSwarm
    from swarmctl.events import Event


def _frame(swarm: LocalSwarm) -> Group:
    return terminal.demo_frame(swarm.queue.counts(), swarm.registry.list(), swarm.registry.server_time(),
                               time.monotonic() - swarm.started)


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep everything here (default: a temp dir).")
@click.option("--drones", default=3, show_default=True, help="How many drones.")
@click.option("--with-broken", is_flag=True, help="Also queue a package that always fails (it gets blocked).")
@click.option("--timeout", default=600.0, show_default=True,
              help="Seconds the whole run may take (from start to the last build).")
@click.option("--stall", default=120.0, show_default=True,
              help="Stop when no build started or finished for this many seconds.")
@click.option("--drone-env", "drone_env", multiple=True, metavar="NAME=VALUE",
              help="Extra environment for the drones (e.g. a PATH to try a drone without some tool).")
@click.option("--multi-target", is_flag=True,
              help="Build the world for two build targets (two make.conf settings), each into its own binhost "
                   "area DIR/binhost/<target>/ by its own drones, then install on a client of each.")
def demo(workdir: str | None, drones: int, with_broken: bool, timeout: float, stall: float,
         drone_env: tuple[str, ...], multi_target: bool) -> None:
    """Run a local swarm: embedded Redis, binhost, drones with real portage, then a client install."""
    from swarmctl import prereqs
    from swarmctl.demo import MULTI_TARGETS, LocalSwarm
    from swarmctl.overlay import BROKEN_CPV

    errors, _ = prereqs.check("demo")
    if errors:
        for line in errors:
            terminal.error(line)
        raise SystemExit(1)
    env = {}
    for item in drone_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--drone-env")
        env[name] = value
    targets = MULTI_TARGETS if multi_target else {}
    if drones < len(targets):
        raise click.BadParameter(f"--multi-target needs at least {len(targets)} drones (one per target)",
                                 param_hint="--drones")
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="swarm-demo-"))
    swarm = LocalSwarm(root, drones=drones, extra_jobs=(BROKEN_CPV,) if with_broken else (), env=env,
                       targets=targets)
    expected_blocked = (BROKEN_CPV,) if with_broken else ()
    stopped: Stopped | None = None
    previous = catch_stop_signals()
    try:
        terminal.note(f"work dir: {root}")
        swarm.start()
        terminal.note(f"started Redis, binhost {swarm.server.url if swarm.server else '?'}, orchestrator "
                      f"and {drones} drone(s)")
        queued = swarm.queue_world()
        terminal.note(f"queued {queued} package(s) for {', '.join(swarm.world)} on {drones} drone(s); "
                      f"stopping if nothing progresses for {stall:.0f} s, or after {timeout:.0f} s in all")
        if terminal.console.is_terminal:
            with Live(_frame(swarm), console=terminal.console, refresh_per_second=2) as live:
                halt = swarm.watch(timeout, stall, expected_blocked, on_tick=lambda: live.update(_frame(swarm)))
        else:
            halt = swarm.watch(timeout, stall, expected_blocked, on_event=_stage)
        summary = swarm.summary()
        if halt is not None:  # the one thing to fix (an empty binhost index is only its consequence)
            summary.problems = [halt.reason + (f"\n{halt.detail}" if halt.detail else "")]
        elif summary.blocked != list(expected_blocked) or summary.failed:
            summary.problems.append(f"blocked {summary.blocked}, failed {summary.failed}")
        terminal.console.print(terminal.demo_summary(summary))
        promote_targets: list[str | None] = [*targets] or [None]
        for target in promote_targets:
            if not summary.problems:
                promoted = swarm.promote(target)
                if promoted.published:
                    terminal.ok(f"generation {promoted.generation.id} promoted ({promoted.generation.packages} "
                                "package(s))" + (f" for target {target}" if target else "")
                                + ": dependency closure and a smoke install passed")
                else:
                    summary.problems.append(f"promote refused: {promoted.reason}")
        if not summary.problems and targets:
            top = swarm.world[0]
            for target in targets:
                ok, output = swarm.install_on_client(top, name=f"client-{target}", target=target)
                summary.client_ok = ok if summary.client_ok is None else summary.client_ok and ok
                if ok:
                    terminal.ok(f"a client of target {target} installed {top} from its own area "
                                f"{swarm.area_url(target)} (signatures verified)")
                else:
                    summary.problems.append(f"client of target {target}: install of {top} failed:\n{output}")
        elif not summary.problems:
            top = swarm.world[0]
            ok, output = swarm.install_on_client(top)
            summary.client_ok = ok
            if ok:
                terminal.ok(f"a fresh portage client installed {top} from the binhost (emerge --getbinpkgonly, "
                            "signatures verified)")
                refused, said = swarm.tampered_is_refused()
                if refused:
                    terminal.ok("a package altered after signing was refused by a fresh client "
                                f"({said.split(':', 1)[0]})")
                else:
                    summary.problems.append(f"a tampered package was not refused for its signature:\n{said}")
            else:
                summary.problems.append(f"client install of {top} failed:\n{output}")
    except Stopped as exc:
        stopped = exc
    finally:
        with uninterrupted(previous):
            swarm.stop()
            if workdir is None:
                shutil.rmtree(root, ignore_errors=True)
    if stopped is not None:
        kept = f"; kept {root}" if workdir else ""
        terminal.error(f"stopped by {stopped}: the demo's drones, binhost, orchestrator and Redis are stopped{kept}")
        raise SystemExit(128 + stopped.signum)
    for problem in summary.problems:
        terminal.error(problem)
    if summary.problems:
        raise SystemExit(1)
    terminal.ok(f"demo passed in {summary.seconds:.0f} s")


COMMANDS = [demo]
