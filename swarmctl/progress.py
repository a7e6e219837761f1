"""Progress of long work, told through a callback so that core modules never draw anything.

A long operation calls ``progress(stage, done, total)``: ``stage`` says what it is doing
("queuing"), ``done`` how many of ``total`` it has finished (``total`` None while unknown,
e.g. while portage resolves). The CLI turns the calls into a bar on a terminal
(swarmctl.cli.terminal.progress) and into nothing when piped or quiet.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, "int | None"], None]

#: How often a loop reports (every this many items, and at its end).
EVERY = 500


def no_progress(stage: str, done: int, total: int | None) -> None:
    """The default: nobody is watching."""


def tick(progress: ProgressFn, stage: str, done: int, total: int) -> None:
    """Report every ``EVERY`` items and the last one, so a 100,000-item loop costs 200 calls."""
    if done % EVERY == 0 or done == total:
        progress(stage, done, total)
