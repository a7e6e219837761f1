"""The repository is an installable Ansible collection (galaxy.yml): build it, install it, use it by name."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from tests.ansible.helpers import COLLECTION, install_collection

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(argv: list[str], cwd: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), "LC_ALL": "C.UTF-8", **(env_extra or {})}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_the_collection_builds_installs_and_its_playbooks_and_modules_work_by_name(tmp_path: Path) -> None:
    installed = install_collection(tmp_path)
    artifact = next(tmp_path.glob("build_swarm-swarm-*.tar.gz"))
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
    assert "roles/swarm_drone/tasks/heal_access.yml" in names and "plugins/modules/swarm_build.py" in names
    assert "playbooks/site.yml" in names and not [n for n in names if n.startswith(("swarmctl/", "tests/", ".venv"))]
    # From a directory with no checkout in sight: the playbooks (and the roles they name) and the
    # modules are found by their fully qualified names.
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("---\nall:\n  children:\n    drones:\n      hosts:\n        d1: {}\n")
    env = {"ANSIBLE_COLLECTIONS_PATH": str(installed)}
    # (A playbook's FQCN must be a Python identifier: drone-restart.yml is run by path, as swarmctl does.)
    for playbook in ("site", "nightly"):
        _run([str(BIN / "ansible-playbook"), "-i", str(inventory), "--syntax-check", f"{COLLECTION}.{playbook}"],
             tmp_path, env)
    for module in ("swarm_build", "swarm_upload", "swarm_cron_verify"):
        doc = _run([str(BIN / "ansible-doc"), "-t", "module", f"{COLLECTION}.{module}"], tmp_path, env)
        assert f"{COLLECTION}.{module}" in doc.stdout
