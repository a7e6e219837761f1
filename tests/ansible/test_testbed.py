"""The multi-host test bed: hosts answer over real ssh, survive power cuts, leave nothing behind."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.testbed import REGISTRY_DIR, TestBed, _net
from tests.testbed.fixtures import require_testbed

pytestmark = [pytest.mark.root]


def _reachable(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1):
            return True
    except OSError:
        return False


def _traces(prefix: str) -> list[str]:
    found = [n for n in _net.netns_names() if n.startswith(f"{prefix}-h")]
    found += [n for n in _net.link_names() if n.startswith(f"{prefix}v-h") or n == f"{prefix}br0"]
    if (REGISTRY_DIR / f"{prefix}.json").exists():
        found.append(str(REGISTRY_DIR / f"{prefix}.json"))
    return found


def test_three_hosts_ssh_power_cut_and_network_cut(testbed: TestBed, tmp_path: Path) -> None:
    ids = set()
    for host in testbed.hosts:
        proc = testbed.ssh(host.index, "hostname; cat /etc/machine-id; cat /run/fake_boot_id")
        assert proc.returncode == 0, proc.stderr
        name, machine_id, boot_id = proc.stdout.split()
        assert name == host.name
        assert machine_id == host.machine_id
        assert boot_id == testbed.boot_id(host.index)
        ids.add(machine_id)
    assert len(ids) == 3, "each host has its own /etc/machine-id"

    # A file written on one host stays private to it and survives a power cut.
    testbed.run(2, "echo kept > /etc/build-swarm-marker", check=True)
    assert testbed.run(1, ["cat", "/etc/build-swarm-marker"]).returncode != 0
    before = testbed.boot_id(2)
    testbed.power_cut(2)
    assert not _reachable(testbed.host(2).address)
    after = testbed.wait_booted(2, before, timeout=20)
    assert after != before
    assert testbed.ssh(2, "cat /etc/build-swarm-marker").stdout.strip() == "kept"
    assert testbed.ssh(1, "true").returncode == 0, "other hosts are untouched"

    testbed.net_down(3)
    assert not _reachable(testbed.host(3).address)
    testbed.net_up(3)
    _net.wait_for(lambda: _reachable(testbed.host(3).address), 10, what="h3 back on the network")

    inv = yaml.safe_load(testbed.inventory(tmp_path / "hosts.yml", {"x": 1}, groups={"drones": [1, 2]}).read_text())
    all_vars = inv["all"]["vars"]
    assert all_vars["ansible_user"] == "root"
    assert all_vars["swarm_service_manager"] == "sysvinit"
    assert "StrictHostKeyChecking=yes" in all_vars["ansible_ssh_common_args"]
    assert inv["all"]["hosts"]["h2"]["ansible_host"] == "10.77.0.12"
    assert set(inv["all"]["children"]["drones"]["hosts"]) == {"h1", "h2"}


def test_teardown_leaves_no_trace_and_stale_leftovers_are_cleaned() -> None:
    require_testbed()
    root = Path(__file__).resolve().parents[2]
    # A bed left running by another (crashed) process: started detached through the CLI.
    subprocess.run(
        [
            sys.executable,
            str(root / "tests/testbed/cli.py"),
            "up",
            "--hosts",
            "2",
            "--prefix",
            "swt",
            "--inventory",
            "/dev/null",
        ],
        check=True,
        capture_output=True,
    )
    assert _traces("swt")
    with TestBed(2, "swt") as bed:  # cleans the leftovers, then starts afresh
        workdir = bed.workdir
        assert bed.ssh(1, "true").returncode == 0
        pids = [bed.pid1(1), bed.pid1(2)]
    assert workdir is not None and not workdir.exists()
    assert _traces("swt") == []
    assert all(p is not None and not _net.is_live(p) for p in pids)
    assert _net.address_owner("10.77.0.1") is None


def test_missing_requirements_skip_locally_and_fail_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.testbed import fixtures

    monkeypatch.setattr(fixtures, "missing_requirements", lambda: "the test bed needs root")
    monkeypatch.delenv("SWARM_REQUIRE_ALL", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        fixtures.require_testbed()
    monkeypatch.setenv("SWARM_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception, match="SWARM_REQUIRE_ALL=1 but the test bed needs root"):
        fixtures.require_testbed()
