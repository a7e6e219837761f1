"""Where the swarm's playbooks, roles and Ansible modules are found.

They ship inside the package (``swarmctl/ansible/``: package data in the wheel; in a checkout the
entries there are links to the top-level ``playbooks/``, ``roles/`` and ``plugins/``), so a
pip-installed orchestrator runs its healing playbooks without a checkout. A system install may
put them under ``/usr/share/build-swarm`` instead; ``swarmctl doctor`` reports which one is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Inside the installed package (a wheel) or, through links, the checkout.
PACKAGE_DIR = Path(__file__).resolve().parent / "ansible"
#: Where a distribution package may install them.
SYSTEM_DIR = Path("/usr/share/build-swarm")
#: What must be there for a directory to count.
_MARKER = Path("playbooks") / "drone-restart.yml"


@dataclass(frozen=True)
class Assets:
    """The directory holding ``playbooks/``, ``roles/`` and ``plugins/``, and how it was found."""

    base: Path
    source: str  # "package" or "system"

    @property
    def playbooks(self) -> Path:
        return self.base / "playbooks"

    @property
    def roles(self) -> Path:
        return self.base / "roles"

    @property
    def modules(self) -> Path:
        return self.base / "plugins" / "modules"

    @property
    def module_utils(self) -> Path:
        return self.base / "plugins" / "module_utils"


def find_assets() -> Assets | None:
    """The package's copy first, then the system one; None when neither has the playbooks."""
    for base, source in ((PACKAGE_DIR, "package"), (SYSTEM_DIR, "system")):
        if (base / _MARKER).is_file():
            return Assets(base.resolve(), source)
    return None


def playbook_dir() -> Path:
    """Where bare playbook names are looked up (the package's, even if it is missing: the error names it)."""
    found = find_assets()
    return found.playbooks if found else PACKAGE_DIR / "playbooks"
