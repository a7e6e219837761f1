"""`swarmctl drift`: site.yml (and the clients' target) in check + diff mode, per host the tasks that would change.

First the target rendered into two client roots, one edited by hand, and drift names exactly that
one (the swarm_target role for real through ansible-runner with a local connection; each host's
root is a directory of the test's own). Then a drone converged by site.yml on the test bed: no
drift, until its config is edited by hand and its service stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from swarmctl import keys
from swarmctl.ansible_exec import run_playbook
from tests.ansible.helpers import SWARMCTL_BIN, BedSwarm
from tests.helpers import run_cli
from tests.testbed import TestBed
from tests.testbed.fixtures import require_testbed

TARGET = {"make_conf": {"USE": "-doc", "MAKEOPTS": "-j2"}, "package_use": ["app-misc/hello loud"],
          "profile": "default/linux/amd64"}


def test_drift_names_the_host_whose_configuration_differs(tmp_path: Path, swarm_env: dict[str, str]) -> None:
    hosts = {name: {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
                    "swarm_target_root": str(tmp_path / name)} for name in ("client-a", "client-b")}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "vars": {"swarm_target": TARGET, "swarm_target_profile_repo": str(tmp_path / "repo")},
        "children": {"clients": {"hosts": hosts}}}}))
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([{"name": "Render the target.", "hosts": "clients", "gather_facts": False,
                                         "roles": [{"role": "swarm_target"}]}]))
    rendered = run_playbook(str(playbook), inventory, "clients", {}, tmp_path / "runs")
    assert rendered.ok, rendered.summary
    make_conf = (tmp_path / "client-a/etc/portage/make.conf").read_text()
    assert 'USE="-doc"' in make_conf and 'MAKEOPTS="-j2"' in make_conf
    assert (tmp_path / "client-a/etc/portage/make.profile").readlink() == tmp_path / "repo/profiles/default/linux/amd64"
    edited = tmp_path / "client-b/etc/portage/package.use/zz-build-swarm-target"
    edited.write_text(edited.read_text() + "app-misc/hello -loud\n")
    proc = run_cli(["drift", "--inventory", str(inventory), "--limit", "clients", "--json"], swarm_env, check=False)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["current"] == ["client-a"] and report["failed"] == {}
    assert report["drifted"] == {"client-b": ["Write the target's package.* lines."]}
    assert report["diffs"] == {"client-b": {"Write the target's package.* lines.": [f"{edited}: +0 -1 lines"]}}
    assert "-loud" in edited.read_text()  # the check changed nothing


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_drift_of_a_converged_drone_is_none_until_its_config_is_edited_and_its_service_stopped(
        tmp_path: Path) -> None:
    """One drone converged by site.yml: no drift; then its config edited by hand and its service
    stopped: `swarmctl drift` names both tasks, exits 1, and `swarmctl status` shows it."""
    require_testbed()
    with TestBed(1, "swdrift") as bed:
        swarm = BedSwarm(bed, tmp_path)
        try:
            inventory = bed.inventory(
                tmp_path / "hosts.yml",
                swarm.drone_vars(settings={"builder": "command", "command": ["true", "{cpv}"]}),
                groups={"drones": [1]}, host_vars={1: {"swarm_drone_token": swarm.enroll(1)}})
            converged = run_playbook("site.yml", inventory, "drones", {}, tmp_path / "runs")
            assert converged.ok, converged.summary

            clean = swarm.cli("drift", "--inventory", str(inventory), "--json", check=False)
            assert clean.returncode == 0, clean.stdout + clean.stderr
            assert json.loads(clean.stdout) == {"current": ["h1"], "drifted": {}, "failed": {}, "diffs": {}}
            assert "Drift" not in swarm.cli("status", check=False).stdout  # clean: not a word

            config = "/etc/build-swarm/swarm.yml"
            edited = (bed.read_file(1, config) or "") + "# edited by hand\n"
            bed.run(1, ["sh", "-c", f"printf '%s' \"$1\" > {config}", "sh", edited], check=True)
            bed.run(1, ["/etc/init.d/swarm-drone", "stop"], check=True)
            drifted = swarm.cli("drift", "--inventory", str(inventory), "--json", check=False)
            assert drifted.returncode == 1, drifted.stdout + drifted.stderr
            report = json.loads(drifted.stdout)
            assert report["current"] == [] and report["failed"] == {}
            assert report["drifted"]["h1"] == ["Write the drone's config file (holds the token).",
                                               "Ensure the service is started and enabled at boot."]
            assert bed.read_file(1, config) == edited  # the check changed nothing
            assert bed.run(1, ["/etc/init.d/swarm-drone", "status"]).returncode != 0

            status = json.loads(swarm.cli("status", "--json", check=False).stdout)
            assert status["drift"]["drifted"] == report["drifted"] and status["drift"]["failed"] == {}

            # The nightly (here on h1 itself, as on a binhost) runs the check too and records it; drift
            # does not fail the run. Its runs stay in h1's own /var.
            swarm.client.hdel(keys.FACTS, "drift_last")
            swarmctl = f"env XDG_CACHE_HOME=/var/cache/drift-test {SWARMCTL_BIN} --config {swarm.config_path}"
            nightly = run_playbook("nightly.yml", inventory, "h1", {
                "target": "h1", "swarm_nightly_swarmctl": swarmctl, "swarm_nightly_sync_command": "true",
                "swarm_nightly_queue_command": "true", "swarm_nightly_drift_inventory": str(inventory)},
                tmp_path / "runs")
            assert nightly.ok, nightly.summary
            status = json.loads(swarm.cli("status", "--json", check=False).stdout)
            assert status["drift"] is not None and status["drift"]["drifted"] == report["drifted"], status["drift"]
            line = swarm.cli("status", check=False).stdout
            assert "Drift: 1 host(s) drifted since" in line and "h1: Write the drone's config file" in line
        finally:
            swarm.close()
