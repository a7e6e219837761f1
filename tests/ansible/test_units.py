"""The service definitions the roles render: systemd units pass `systemd-analyze verify`, and the
init system follows the host's facts (ansible_facts.service_mgr) unless the inventory overrides it.

The real roles (swarm_binhost, swarm_orchestrator, swarm_drone) run through ansible-runner in
check and diff mode against localhost: nothing on this machine is written, and each template
task's diff holds the definition a real run would install. Two hosts: one whose facts say systemd,
one whose facts say systemd but whose inventory overrides the manager (sysvinit for every role,
OpenRC for the drone alone). The units are then checked by systemd's own verifier (it fails a
unit whose ExecStart binary does not exist, so ExecStart points at this venv's swarmctl).
swarm_cron joins on the overriding host (with systemd it uses the distribution's cronie unit and
writes none). The OpenRC side (a fresh host whose facts say openrc, all four roles) is covered by
test_openrc.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SWARMCTL = str(Path(sys.executable).parent / "swarmctl")
SERVICES = ("swarm-binhost", "swarm-orchestrator", "swarm-drone")
#: The roles' tasks that write a service definition (swarm_unit's, swarm_cron's).
DEFINITION_TASKS = ("Install the service definition.", "Install our init script for crond.")

PLAYBOOK = [{
    "name": "Apply the daemon roles (run in check mode: nothing is written).",
    "hosts": "all",
    "gather_facts": False,
    "pre_tasks": [{"name": "Facts as a systemd host reports them.",
                   "ansible.builtin.set_fact": {"service_mgr": "systemd", "cacheable": True}}],
    "roles": [
        {"role": "swarm_binhost", "vars": {"swarm_binhost_install_method": "path",
                                           "swarm_binhost_swarmctl_path": SWARMCTL,
                                           "swarm_binhost_redis_manage": False,
                                           "swarm_binhost_firewall_manage": False}},
        {"role": "swarm_orchestrator", "vars": {"swarm_orchestrator_install_method": "path",
                                                "swarm_orchestrator_swarmctl_path": SWARMCTL,
                                                "swarm_orchestrator_healing": False}},
        {"role": "swarm_drone", "vars": {"swarm_drone_install_method": "path", "swarm_drone_swarmctl_path": SWARMCTL,
                                         "swarm_drone_token": "check-mode-token"}},
        # cronie's own package brings its systemd unit: the role writes a script for OpenRC and
        # sysvinit only (here for a cronie in a prefix; check mode never runs its crond).
        {"role": "swarm_cron", "when": "inventory_hostname == 'override'", "vars": {
            "swarm_cron_install_method": "prefix", "swarm_cron_prefix": "{{ cron_prefix }}",
            "swarm_cron_nightly_deploy": False, "swarm_cron_verify": False}},
    ],
}]


def _rendered(tmp_path: Path) -> dict[str, dict[str, str]]:
    """Per host, the definitions the roles would install: destination -> content."""
    import ansible_runner

    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = {"all": {"hosts": {
        "facts": dict(local),
        "override": {**local, "swarm_service_manager": "sysvinit", "swarm_drone_service_manager": "openrc",
                     "cron_prefix": str(tmp_path / "cronie")}}}}
    (tmp_path / "cronie/sbin").mkdir(parents=True)
    (tmp_path / "cronie/sbin/crond").touch()
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "runner").mkdir()
    (tmp_path / "units.yml").write_text(yaml.safe_dump(PLAYBOOK, sort_keys=False))
    runner = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"), playbook=str(tmp_path / "units.yml"),
        inventory=str(tmp_path / "inventory.yml"), cmdline="--check --diff", quiet=True,
        envvars={"ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
                 "ANSIBLE_NOCOLOR": "1", "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"})
    rendered: dict[str, dict[str, str]] = {"facts": {}, "override": {}}
    failures = []
    for event in runner.events:
        data: dict[str, Any] = event.get("event_data", {})
        if event.get("event") == "runner_on_failed":
            failures.append(f"{data.get('host')}: {data.get('task')}: {json.dumps(data.get('res'))[:500]}")
        if event.get("event") != "runner_on_ok" or data.get("task") not in DEFINITION_TASKS:
            continue
        dest = data["res"]["invocation"]["module_args"]["dest"]
        rendered[data["host"]][dest] = "".join(diff["after"] for diff in data["res"]["diff"])
    assert runner.rc == 0 and not failures, "\n".join(failures) or runner.stdout.read()[-3000:]
    return rendered


def test_units_verify_and_the_manager_follows_facts_unless_overridden(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (Debian: systemd)")
    rendered = _rendered(tmp_path)

    # Facts say systemd: every role renders a systemd unit, and systemd's verifier accepts each.
    assert sorted(rendered["facts"]) == sorted(f"/etc/systemd/system/{s}.service" for s in SERVICES)
    units = tmp_path / "units"
    units.mkdir()
    for dest, text in rendered["facts"].items():
        (units / Path(dest).name).write_text(text)
        assert f"ExecStart={SWARMCTL} --config " in text
    drone = (units / "swarm-drone.service").read_text()
    assert "TimeoutStopSec=3600" in drone and "KillMode=mixed" in drone  # the drone's graceful stop
    verify = subprocess.run([analyze, "verify", "--man=no", *sorted(map(str, units.iterdir()))],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "swarm-" not in verify.stderr, verify.stderr
    # The verifier does fail a unit whose program is missing (so the check above can fail).
    broken = units / "swarm-broken.service"
    broken.write_text(drone.replace(SWARMCTL, str(tmp_path / "no-such-swarmctl")))
    refused = subprocess.run([analyze, "verify", "--man=no", str(broken)], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode != 0 and "no-such-swarmctl" in refused.stderr, refused.stderr

    # The inventory overrides the facts: sysvinit for all, OpenRC for the drone alone.
    override = rendered["override"]
    assert sorted(override) == sorted(f"/etc/init.d/{s}" for s in (*SERVICES, "cronie"))
    for name in ("swarm-binhost", "swarm-orchestrator", "cronie"):
        assert "### BEGIN INIT INFO" in override[f"/etc/init.d/{name}"]
    assert override["/etc/init.d/swarm-drone"].startswith("#!/sbin/openrc-run")
