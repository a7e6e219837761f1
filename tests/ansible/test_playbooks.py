"""Self-healing playbooks through swarmctl.ansible_exec.run_playbook on real test-bed hosts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmctl.ansible_exec import PlaybookResult, run_playbook
from tests.ansible.helpers import SWARMCTL_BIN, BedSwarm
from tests.testbed import TestBed
from tests.testbed.fixtures import require_testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: The drone service's stand-in daemon (until `swarmctl drone run` is plugged in).
STANDIN = ["/bin/sleep", "1000005"]
PATTERN = "sleep 1000005"
SECRET = "tok-3c1f9e-not-for-logs"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestBed, Path, Path]]:
    """Two drones with the swarm_drone role applied; h2 is protected."""
    require_testbed()
    work = tmp_path_factory.mktemp("playbooks")
    with TestBed(2, "swpb") as testbed:
        inventory = testbed.inventory(
            work / "hosts.yml",
            {
                "swarm_drone_token": SECRET,
                "swarm_drone_install_method": "path",
                "swarm_drone_swarmctl_path": STANDIN[0],
                "swarm_drone_command": STANDIN,
                "swarm_drone_process_pattern": PATTERN,
                "swarm_drone_stop_timeout": 5,
                "swarm_drone_verify_delay": 1,
                "reboot_command": "/bin/kill -TERM 1",
                "boot_time_command": "cat /run/fake_boot_id",
                "reboot_timeout": 60,
            },
            groups={"drones": [1, 2]},
            host_vars={1: {"protected": False}, 2: {"protected": True}},
        )
        result = run_playbook("site.yml", inventory, "drones", {}, work / "runs")
        assert result.ok, result.summary
        yield testbed, inventory, work / "runs"


@pytest.fixture(scope="module")
def swarm(bed: tuple[TestBed, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BedSwarm]:
    """A swarm (Redis on the bridge) the nightly run reports to."""
    swarm = BedSwarm(bed[0], tmp_path_factory.mktemp("playbooks-swarm"))
    yield swarm
    swarm.close()


def _drone_pid(testbed: TestBed, i: int) -> int | None:
    proc = testbed.run(i, ["pgrep", "-f", PATTERN])
    return int(proc.stdout.split()[0]) if proc.returncode == 0 else None


def _run(bed: tuple[TestBed, Path, Path], playbook: str, limit: str, **extra: object) -> PlaybookResult:
    _, inventory, runs = bed
    return run_playbook(playbook, inventory, limit, extra, runs)


def test_site_installed_the_drone_with_a_private_token(bed: tuple[TestBed, Path, Path]) -> None:
    testbed, _, runs = bed
    assert _drone_pid(testbed, 1) and _drone_pid(testbed, 2)
    stat = testbed.run(1, ["stat", "-c", "%a", "/etc/build-swarm/swarm.yml"]).stdout.strip()
    assert stat == "600"
    # The token is in the host's config file, and nowhere in what ansible-runner kept.
    for path in runs.rglob("*"):
        if path.is_file() and path.name != "extravars":
            assert SECRET not in path.read_text(errors="replace"), path


def test_drone_restart_restarts_the_service(bed: tuple[TestBed, Path, Path]) -> None:
    testbed, _, _ = bed
    before = _drone_pid(testbed, 1)
    result = _run(bed, "drone-restart.yml", "h1", target="h1")
    assert result.ok, result.summary
    assert result.hosts["h1"].startswith("changed")
    after = _drone_pid(testbed, 1)
    assert after is not None and after != before


def test_drone_restart_refuses_a_protected_host(bed: tuple[TestBed, Path, Path]) -> None:
    testbed, _, _ = bed
    before = _drone_pid(testbed, 2)
    result = _run(bed, "drone-restart.yml", "h2", target="h2")
    assert not result.ok
    assert "REFUSED" in result.hosts["h2"] and "protected" in result.hosts["h2"], result.summary
    assert _drone_pid(testbed, 2) == before


def test_drone_reboot_refuses_a_protected_host(bed: tuple[TestBed, Path, Path]) -> None:
    testbed, _, _ = bed
    boot = testbed.boot_id(2)
    result = _run(bed, "drone-reboot.yml", "h2", target="h2", expected_machine_id=testbed.host(2).machine_id)
    assert not result.ok
    assert "REFUSED" in result.hosts["h2"] and "protected" in result.hosts["h2"]
    assert testbed.boot_id(2) == boot


def test_drone_reboot_refuses_an_identity_mismatch(bed: tuple[TestBed, Path, Path]) -> None:
    testbed, _, _ = bed
    boot = testbed.boot_id(1)
    # h2's identity expected behind h1's address: the wrong machine.
    result = _run(bed, "drone-reboot.yml", "h1", target="h1", expected_machine_id=testbed.host(2).machine_id)
    assert not result.ok
    line = result.hosts["h1"]
    assert "REFUSED: identity mismatch on h1" in line
    assert testbed.host(1).machine_id in line and testbed.host(2).machine_id in line
    assert testbed.boot_id(1) == boot


def test_drone_reboot_reboots_and_the_service_comes_back(bed: tuple[TestBed, Path, Path]) -> None:
    testbed, _, _ = bed
    boot = testbed.boot_id(1)
    pid_before = _drone_pid(testbed, 1)
    result = _run(bed, "drone-reboot.yml", "h1", target="h1", expected_machine_id=testbed.host(1).machine_id)
    assert result.ok, result.summary
    assert testbed.boot_id(1) not in (None, boot)
    pid_after = _drone_pid(testbed, 1)
    assert pid_after is not None and pid_after != pid_before


def test_nightly_logs_started_then_finished_or_failed(bed: tuple[TestBed, Path, Path], swarm: BedSwarm) -> None:
    testbed, _, _ = bed
    status = "/var/lib/build-swarm/nightly.status"
    swarmctl = f"{SWARMCTL_BIN} --config {swarm.config_path}"
    common = {
        "target": "h1",
        "swarm_nightly_sync_command": "false",
        "swarm_nightly_sync_retries": 1,
        "swarm_nightly_sync_delay": 0,
        "swarm_nightly_webrsync_command": "true",
        "swarm_nightly_swarmctl": swarmctl,
    }
    # The "queue" step snapshots what the swarm knows mid-run: STARTED, and the good sync.
    midway = swarm.work / "midway.json"
    snapshot = f"sh -c '{swarmctl} status --json > {midway}; true'"
    ok = _run(bed, "nightly.yml", "h1", **common, swarm_nightly_queue_command=snapshot)
    assert ok.ok, ok.summary
    during = json.loads(midway.read_text())
    assert during["sync"]["nightly"]["event"] == "STARTED" and during["sync"]["nightly"]["detail"] == "h1"
    assert during["sync"]["time"] is not None, "SYNCED was reported after the good (webrsync) sync"
    after = json.loads(swarm.cli("status", "--json", check=False).stdout)
    assert after["sync"]["nightly"]["event"] == "FINISHED" and after["sync"]["nightly"]["detail"] == "sync: webrsync"
    assert after["sync"]["ok"] is True
    # The previous run's picture is drawn beside the status file (a page with its figures).
    page = testbed.run(1, ["cat", "/var/lib/build-swarm/nightly-report.html"]).stdout
    assert "<svg" in page and "makespan" in page

    bad = _run(bed, "nightly.yml", "h1", **common, swarm_nightly_queue_command="false")
    assert not bad.ok
    proc = swarm.cli("status", "--json", check=False)
    after = json.loads(proc.stdout)
    assert after["sync"]["nightly"]["event"] == "FAILED" and "Queue" in after["sync"]["nightly"]["detail"]
    assert "nightly_failed" in [a["code"] for a in after["attention"]] and proc.returncode == 2

    # Reporting to the swarm must never stop the run: an unreachable swarm, the run still finishes.
    unreachable = _run(bed, "nightly.yml", "h1", **{**common, "swarm_nightly_swarmctl": "/nonexistent/swarmctl"},
                       swarm_nightly_queue_command="echo queued")
    assert unreachable.ok, unreachable.summary

    events = [json.loads(line) for line in testbed.run(1, ["cat", status]).stdout.splitlines()]
    assert [e["event"] for e in events] == ["STARTED", "FINISHED", "STARTED", "FAILED", "STARTED", "FINISHED"]
    assert events[1]["sync"] == "webrsync", "emerge --sync failed, the fallback ran"
    assert "Queue" in events[3]["task"]


def test_nightly_promotes_only_when_the_gates_pass(bed: tuple[TestBed, Path, Path], swarm: BedSwarm) -> None:
    """On a binhost (binhost.dir set) the nightly promotes staging; a failing gate fails the run
    with the gate's reason (status red) and clients keep the published generation."""
    from swarmctl.binhost import generations
    from swarmctl.binhost.index import IndexStore

    pkgdir = swarm.work / "binhost"
    store = IndexStore(pkgdir)

    def stage(cpv: str, rdepend: str) -> None:
        category, rest = cpv.split("/")
        rel = f"{category}/{rest.rsplit('-', 1)[0]}/{rest}-1.gpkg.tar"
        (pkgdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkgdir / rel).write_bytes(b"x")
        store.commit(lambda index: index.add({"CPV": cpv, "PATH": rel, "SIZE": "1", "MD5": "m", "SHA1": "s",
                                              "RDEPEND": rdepend}))

    stage("app-misc/lonely-1", "dev-libs/missing")
    # The smoke install needs real packages (tests/portage covers it): this run checks the closure gate.
    config = swarm.write_config(swarm.work / "binhost.yml", {"binhost": {"dir": str(pkgdir), "smoke_install": False}})
    common = {"target": "h1", "swarm_nightly_sync_command": "true", "swarm_nightly_queue_command": "true",
              "swarm_nightly_swarmctl": f"{SWARMCTL_BIN} --config {config}"}
    bad = _run(bed, "nightly.yml", "h1", **common)
    assert not bad.ok
    proc = swarm.cli("status", "--json", check=False)
    nightly = json.loads(proc.stdout)["sync"]["nightly"]
    assert nightly["event"] == "FAILED" and "Promote" in nightly["detail"]
    assert "app-misc/lonely-1 needs dev-libs/missing" in nightly["detail"] and proc.returncode == 2
    assert generations.published_id(pkgdir) is None  # nothing promoted: no generation was published

    stage("dev-libs/missing-1", "")
    good = _run(bed, "nightly.yml", "h1", **common)
    assert good.ok, good.summary
    assert generations.published_id(pkgdir) == 2
    assert [g["state"] for g in generations.listing(pkgdir)] == ["rejected", "ready"]
