"""Drift: a host that is no longer what the playbooks made it.

``playbooks/site.yml`` runs in check and diff mode: nothing is changed, and every task that
*would* change names what differs on that host -- a drone config edited by hand, a service
stopped, a package missing, a portage file of the target (swarm_target, which the binhost and
drone roles include). Clients are not in site.yml: ``playbooks/target-drift.yml`` checks their
target configuration, and only theirs, so no role is checked twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from swarmctl.ansible_exec import PlaybookResult, run_playbook
from swarmctl.exceptions import SwarmError

#: The playbooks `swarmctl drift` runs (in the repo's playbooks/ or healing.playbook_dir).
SITE_PLAYBOOK = "site.yml"
DRIFT_PLAYBOOK = "target-drift.yml"
#: The hosts target-drift.yml checks: those whose target site.yml does not already cover.
TARGET_ONLY = "clients:!binhost:!drones"


@dataclass
class DriftReport:
    """What the check found.

    Attributes:
        drifted: Host -> the tasks that would change it.
        current: Hosts that are what the playbooks made them.
        failed: Host -> why it could not be checked (unreachable, a task failed).
        diffs: Host -> task -> one line per file or state the task would change (``--diff``).
    """

    drifted: dict[str, list[str]] = field(default_factory=dict)
    current: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    diffs: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def add(self, result: PlaybookResult) -> None:
        """Fold one check-mode run in (a host in both runs keeps its worst outcome)."""
        for host, line in result.hosts.items():
            if line.startswith(("failed", "unreachable")):
                self.failed[host] = line
            elif result.changed.get(host):
                tasks = self.drifted.setdefault(host, [])
                tasks += [t for t in result.changed[host] if t not in tasks]
                self.diffs.setdefault(host, {}).update(result.diffs.get(host, {}))
            else:
                self.current.append(host)
        for host in list(self.drifted):
            if host in self.failed:
                del self.drifted[host]
                self.diffs.pop(host, None)
        self.current = sorted({h for h in self.current if h not in self.failed and h not in self.drifted})
        self.drifted = dict(sorted(self.drifted.items()))
        self.failed = dict(sorted(self.failed.items()))


def check_drift(inventory: Path, limit: str, data_dir: Path, playbook_dir: Path | None = None,
                timeout: int | None = 900) -> DriftReport:
    """Run site.yml (and the clients' target check) in check + diff mode on ``limit``.

    Raises:
        SwarmError: Nothing ran at all (no host matched, Ansible missing).
    """
    report = DriftReport()
    for playbook, extra in ((SITE_PLAYBOOK, {}), (DRIFT_PLAYBOOK, {"target": TARGET_ONLY})):
        try:
            result = run_playbook(playbook, inventory, limit, extra, data_dir, timeout=timeout,
                                  playbook_dir=playbook_dir, check=True)
        except FileNotFoundError as exc:
            raise SwarmError(f"drift check: {exc}") from None
        if not result.ok and not result.hosts:  # e.g. the limit matches no host, a playbook is broken
            raise SwarmError(f"drift check did not run: {result.summary}")
        report.add(result)
    if not (report.drifted or report.current or report.failed):
        raise SwarmError(f"drift check did not run: no host of {limit!r} is in a play")
    return report
