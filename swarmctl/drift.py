"""Drift: a host whose portage configuration is not the target's.

The target (``swarm_target`` in the inventory) is rendered by the swarm_target role into the
binhost's and every client's ``/`` and every drone's build root. ``playbooks/target-drift.yml``
runs that role in check mode: nothing is changed, and every task that *would* change names a
part of the configuration (make.conf, a package.* file, the profile) that differs on that host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swarmctl.ansible_exec import run_playbook
from swarmctl.exceptions import SwarmError

#: The playbook `swarmctl drift` runs (in the repo's playbooks/ or healing.playbook_dir).
DRIFT_PLAYBOOK = "target-drift.yml"


@dataclass
class DriftReport:
    """What the check found.

    Attributes:
        drifted: Host -> the tasks that would change its configuration.
        current: Hosts whose configuration is the target's.
        failed: Host -> why it could not be checked (unreachable, a task failed).
    """

    drifted: dict[str, list[str]] = field(default_factory=dict)
    current: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def check_drift(inventory: Path, limit: str, data_dir: Path, playbook_dir: Path | None = None,
                timeout: int | None = 900) -> DriftReport:
    """Run the drift playbook (check mode) on ``limit`` and sort the hosts by outcome.

    Raises:
        SwarmError: The playbook did not run at all (no host matched, Ansible missing).
    """
    try:
        result = run_playbook(DRIFT_PLAYBOOK, inventory, limit, {"target": limit}, data_dir, timeout=timeout,
                              playbook_dir=playbook_dir)
    except FileNotFoundError as exc:
        raise SwarmError(f"drift check: {exc}") from None
    if not result.hosts:
        raise SwarmError(f"drift check did not run: {result.summary}")
    report = DriftReport()
    for host, line in sorted(result.hosts.items()):
        if line.startswith(("failed", "unreachable")):
            report.failed[host] = line
        elif result.changed.get(host):
            report.drifted[host] = result.changed[host]
        else:
            report.current.append(host)
    return report
