"""How close Redis is to its ``maxmemory``: status and doctor warn before writes start failing.

At maxmemory a server with the ``noeviction`` policy refuses every write (claims, heartbeats,
reports): the swarm stops. Any other policy silently evicts keys, which loses queue state.
Nothing is said when maxmemory is 0 (no limit) or the server does not tell.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from swarmctl.config import Config
from swarmctl.humanize import size

#: What to do about it, for status and doctor alike.
HINT = ("raise maxmemory (redis.conf, or CONFIG SET maxmemory then CONFIG REWRITE), or keep fewer "
        "events (queue.events_max)")


@dataclass(frozen=True)
class MemoryUse:
    used: int
    limit: int
    policy: str = ""

    @property
    def fraction(self) -> float:
        return self.used / self.limit

    def severity(self, config: Config) -> str | None:
        """None, ``warning`` or ``critical`` (redis.memory_warn / redis.memory_critical)."""
        if self.fraction >= config.redis.memory_critical:
            return "critical"
        if self.fraction >= config.redis.memory_warn:
            return "warning"
        return None

    def message(self) -> str:
        text = f"Redis uses {size(self.used)} of its maxmemory {size(self.limit)} ({self.fraction:.0%})"
        if self.policy and self.policy != "noeviction":
            text += f"; its policy {self.policy} evicts keys when full, losing queue state"
        else:
            text += "; when full it refuses every write and the swarm stops"
        return text


def memory_use(client: redis.Redis) -> MemoryUse | None:
    """Used memory against maxmemory, from INFO memory; None when there is no limit (or no answer)."""
    try:
        info = client.info("memory")
    except redis.ResponseError:  # INFO disabled (some managed servers)
        return None
    try:
        used, limit = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    except (TypeError, ValueError):
        return None
    if limit <= 0:
        return None
    return MemoryUse(used, limit, str(info.get("maxmemory_policy", "")))
