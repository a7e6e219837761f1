"""The monitor's live loop: keys from the terminal, a fresh frame every interval, q quits."""

from __future__ import annotations

import logging
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from rich.console import Console
from rich.live import Live

from swarmctl.cli.views.monitor import error_frame, render_frame
from swarmctl.connection import TRANSIENT
from swarmctl.monitor import BuiltRate, Snapshot

log = logging.getLogger("swarmctl.cli.live")


class KeyReader:
    """Single key presses from a terminal's stdin (cbreak mode), or none when stdin is not one."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def wait(self, timeout: float) -> str | None:
        """The key pressed within ``timeout`` seconds, else None."""
        if self.fd is None:
            time.sleep(timeout)
            return None
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return None
        data = os.read(self.fd, 32)
        if not data:  # stdin closed: nobody can press q any more, so stop reading it
            self.fd = None
            return None
        return data.decode(errors="replace")[:1]


@contextmanager
def keyboard() -> Iterator[KeyReader]:
    """Keys from stdin in cbreak mode (echo off, no line buffering), restored on exit."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if fd is None:
        yield KeyReader(None)
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield KeyReader(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_live(read: Callable[[BuiltRate], Snapshot], console: Console, interval: float,
             screen: bool = True, window: float = 3600.0) -> None:
    """Refresh the frame in place every ``interval`` seconds until q (or Ctrl-C).

    The frame follows the terminal's size on every refresh; a Redis outage shows
    an error frame and is retried, it does not end the view.
    """
    rate = BuiltRate(window)
    with keyboard() as keys_in, Live(console=console, screen=screen, auto_refresh=False,
                                     redirect_stdout=False, redirect_stderr=False) as live, \
            suppress(KeyboardInterrupt):
        while True:
            width, height = console.size
            try:
                snapshot = read(rate)
                snapshot.interval = interval
                frame = render_frame(snapshot, width, height if screen else None)
            except TRANSIENT as exc:
                log.debug("frame failed: %s", exc)
                frame = error_frame(str(exc) or type(exc).__name__, width, interval)
            live.update(frame, refresh=True)
            key = keys_in.wait(interval)
            if key in ("q", "Q"):
                return
