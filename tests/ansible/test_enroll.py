"""Enrollment as part of provisioning: site.yml enrolls a drone with no token pasted anywhere.

The swarm_drone role, with no token in the inventory, enrolls the drone on the control plane
host (here the Ansible controller, delegated) under the machine id it read from the host, keeps
the token only in the drone's mode-0600 config file, and the real `swarmctl drone run` started by
the role authenticates with it. A second converge keeps the token (no re-enrollment, so it never
undoes a revoke); swarm_drone_enroll_force issues a new one and the old one stops working.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from swarmctl.ansible_exec import run_playbook
from swarmctl.config import load_config
from swarmctl.registry import DroneRegistry
from tests.ansible.helpers import SWARMCTL_BIN, BedSwarm
from tests.helpers import wait_for
from tests.testbed import TestBed
from tests.testbed.fixtures import require_testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestBed, BedSwarm, Path]]:
    require_testbed()
    work = tmp_path_factory.mktemp("enroll")
    with TestBed(1, "swen") as bed:
        swarm = BedSwarm(bed, work / "swarm")
        try:
            inventory = bed.inventory(
                work / "hosts.yml",
                swarm.drone_vars(settings={"builder": "command", "command": ["true", "{cpv}"]},
                                 swarm_drone_enroll_host="localhost",
                                 swarm_drone_enroll_swarmctl=f"{SWARMCTL_BIN} --config {swarm.config_path}"),
                groups={"drones": [1]},
            )
            result = run_playbook("site.yml", inventory, "drones", {}, work / "runs")
            assert result.ok, result.summary
            yield bed, swarm, inventory
        finally:
            swarm.close()


def _token(bed: TestBed) -> str:
    return str(yaml.safe_load(bed.run(1, ["cat", "/etc/build-swarm/swarm.yml"]).stdout)["drone"]["token"])


def test_site_enrolls_the_drone_with_its_machine_id(enrolled: tuple[TestBed, BedSwarm, Path]) -> None:
    bed, swarm, _ = enrolled
    name = bed.host(1).name
    token = _token(bed)
    assert DroneRegistry(swarm.client, load_config(swarm.config_path, environ={})).authenticate(name, token)
    assert swarm.drone(name)["machine_id"] == bed.host(1).machine_id
    assert bed.run(1, ["stat", "-c", "%a", "/etc/build-swarm/swarm.yml"]).stdout.strip() == "600"
    # The real drone started by the role works with it: it heartbeats.
    wait_for(lambda: swarm.drone(name).get("status") in ("idle", "building"), 30, "the drone heartbeats")


def test_a_second_converge_keeps_the_token_and_force_replaces_it(enrolled: tuple[TestBed, BedSwarm, Path],
                                                                  tmp_path: Path) -> None:
    bed, swarm, inventory = enrolled
    name = bed.host(1).name
    before = _token(bed)
    again = run_playbook("site.yml", inventory, "drones", {}, tmp_path / "again")
    assert again.ok, again.summary
    assert _token(bed) == before
    assert len(swarm.events("enrolled", drone=name)) == 1
    forced = run_playbook("site.yml", inventory, "drones", {"swarm_drone_enroll_force": True}, tmp_path / "forced")
    assert forced.ok, forced.summary
    after = _token(bed)
    registry = DroneRegistry(swarm.client, load_config(swarm.config_path, environ={}))
    assert after != before and registry.authenticate(name, after) and not registry.authenticate(name, before)
    # Neither token is in anything ansible-runner kept.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert before not in text and after not in text, path
