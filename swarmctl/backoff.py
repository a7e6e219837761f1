"""Exponential backoff with full jitter, for Redis, SSH and binhost retries."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


def delays(base: float = 0.5, cap: float = 30.0, factor: float = 2.0,
           rng: random.Random | None = None) -> Iterator[float]:
    """Endless delays: a random value in [base/2, min(cap, base * factor^n)] for try n."""
    pick = (rng or random).uniform
    ceiling = base
    while True:
        yield pick(base / 2, ceiling)
        ceiling = min(cap, ceiling * factor)


def retry(call: Callable[[], T], *, retry_on: tuple[type[BaseException], ...], attempts: int = 5,
          base: float = 0.5, cap: float = 30.0,
          on_retry: Callable[[int, BaseException, float], None] | None = None,
          sleep: Callable[[float], None] = time.sleep) -> T:
    """Call until it succeeds or ``attempts`` calls failed (then the last error is raised)."""
    waits = delays(base, cap)
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except retry_on as exc:
            if attempt == attempts:
                raise
            wait = next(waits)
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            sleep(wait)
    raise AssertionError("unreachable")
