"""Exponential backoff with jitter, for Redis, SSH and binhost retries.

Not "full jitter": each delay is at least half the base, so a retry never comes back at once.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def delays(base: float = 0.5, cap: float = 30.0, factor: float = 2.0,
           rng: random.Random | None = None) -> Iterator[float]:
    """Endless delays: a random value in [base/2, min(cap, base * factor^n)] for try n."""
    pick = (rng or random).uniform
    ceiling = base
    while True:
        yield pick(base / 2, ceiling)
        ceiling = min(cap, ceiling * factor)
