"""swarm_cron: cronie built from Debian's source, the nightly job applied and proven scheduled."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from swarmctl.ansible_exec import PlaybookResult, run_playbook
from tests.ansible.helpers import SWARMCTL_BIN, BedSwarm
from tests.testbed import TestBed
from tests.testbed.fixtures import require_testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
#: Built once and reused between runs (the script skips an existing build).
CRONIE_PREFIX = Path(os.environ.get("SWARM_CRONIE_PREFIX", "/opt/cronie"))
CRON_FILE = "/etc/cron.d/build-swarm"
PLAYBOOK_DIR = "/var/lib/build-swarm/playbooks"
INVENTORY = "/etc/build-swarm/inventory.yml"
ANSIBLE_PLAYBOOK = str(Path(SWARMCTL_BIN).parent / "ansible-playbook")


def _load_verify_module():
    path = ROOT / "roles/swarm_cron/library/swarm_cron_verify.py"
    spec = importlib.util.spec_from_file_location("swarm_cron_verify", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cronie() -> Path:
    """cronie 1.7.2 under CRONIE_PREFIX, built by scripts/build-cronie.sh when missing."""
    require_testbed()
    proc = subprocess.run(
        [str(ROOT / "scripts/build-cronie.sh"), str(CRONIE_PREFIX)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = subprocess.run([str(CRONIE_PREFIX / "sbin/crond"), "-V"], capture_output=True, text=True)
    assert "cronie 1.7.2" in out.stdout + out.stderr
    return CRONIE_PREFIX


@pytest.fixture(scope="module")
def bed(cronie: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestBed, Path, Path]]:
    """One binhost with swarm_cron applied (cronie from the prefix, started by sysvinit)."""
    work = tmp_path_factory.mktemp("cron")
    with TestBed(1, "swcron") as testbed:
        inventory = testbed.inventory(
            work / "hosts.yml",
            {"swarm_cron_install_method": "prefix", "swarm_cron_prefix": str(cronie),
             # /etc and /var are private to a bed host (/opt is the controller's): deploy there.
             "swarm_cron_nightly_playbook_dir": PLAYBOOK_DIR,
             "swarm_cron_ansible_playbook": ANSIBLE_PLAYBOOK,
             "swarm_swarmctl_command": "/usr/bin/swarmctl-stand-in --config /etc/build-swarm/x.yml"},
            groups={"binhost": [1]},
        )
        playbook = work / "cron.yml"
        playbook.write_text(
            "---\n- name: Apply swarm_cron.\n  hosts: binhost\n  gather_facts: false\n"
            "  roles:\n    - role: swarm_cron\n"
        )
        result = run_playbook(str(playbook), inventory, "binhost", {}, work / "runs")
        assert result.ok, result.summary
        yield testbed, inventory, work / "runs"


def _verify(bed: tuple[TestBed, Path, Path], **extra: object) -> PlaybookResult:
    _, inventory, runs = bed
    return run_playbook("cron-verify.yml", inventory, "binhost", extra, runs)


@pytest.fixture(scope="module")
def swarm(bed: tuple[TestBed, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BedSwarm]:
    """A swarm (Redis on the bridge) the binhost's cron check reports to."""
    swarm = BedSwarm(bed[0], tmp_path_factory.mktemp("cron-swarm"))
    yield swarm
    swarm.close()


@pytest.fixture
def cron_file(bed: tuple[TestBed, Path, Path]) -> Iterator[str]:
    """The applied crontab's text; whatever a test does to the file is undone after it."""
    testbed = bed[0]
    original = testbed.run(1, ["cat", CRON_FILE], check=True).stdout
    yield original
    testbed.run(1, ["sh", "-c", f"cat > {CRON_FILE}"], input=original, check=True)


def test_cronie_runs_and_the_good_job_is_scheduled(bed: tuple[TestBed, Path, Path], cron_file: str) -> None:
    testbed = bed[0]
    comm = testbed.run(1, ["pgrep", "-a", "crond"]).stdout
    assert str(CRONIE_PREFIX / "sbin/crond") in comm, comm  # cronie's crond runs, not another cron
    assert " root " in cron_file.splitlines()[-1], "cronie format: the line has a user field"
    result = _verify(bed)
    assert result.ok, result.summary


def test_the_job_calls_a_playbook_and_inventory_that_exist(bed: tuple[TestBed, Path, Path]) -> None:
    testbed = bed[0]
    # What cron would run: the deployed playbook against the deployed inventory, on this host.
    listed = testbed.run(1, [ANSIBLE_PLAYBOOK, "-i", INVENTORY, "-l", "binhost", f"{PLAYBOOK_DIR}/nightly.yml",
                             "--list-hosts"], check=True).stdout
    assert testbed.host(1).name in listed
    inventory = yaml.safe_load(testbed.run(1, ["cat", INVENTORY], check=True).stdout)
    host = inventory["all"]["children"]["binhost"]["hosts"][testbed.host(1).name]
    assert host["ansible_connection"] == "local"
    assert host["swarm_swarmctl_command"] == "/usr/bin/swarmctl-stand-in --config /etc/build-swarm/x.yml"
    # A job whose playbook is gone fails the verification, naming the file.
    testbed.run(1, ["mv", f"{PLAYBOOK_DIR}/nightly.yml", f"{PLAYBOOK_DIR}/nightly.yml.away"], check=True)
    try:
        result = _verify(bed)
        assert not result.ok
        assert f"{PLAYBOOK_DIR}/nightly.yml, which does not exist" in result.summary
    finally:
        testbed.run(1, ["mv", f"{PLAYBOOK_DIR}/nightly.yml.away", f"{PLAYBOOK_DIR}/nightly.yml"], check=True)
    assert _verify(bed).ok


def test_a_bad_line_fails_the_verification(bed: tuple[TestBed, Path, Path], cron_file: str) -> None:
    bed[0].run(1, ["sh", "-c", f"echo '61 2 * * * root /bin/true' >> {CRON_FILE}"], check=True)
    result = _verify(bed)
    assert not result.ok
    assert "does not parse" in result.summary and "bad minute" in result.summary


def test_a_dcron_style_line_fails_the_verification(bed: tuple[TestBed, Path, Path], cron_file: str) -> None:
    # The nightly job written the dcron way (no user field): cronie would never run it.
    bed[0].run(1, ["sed", "-i", "s/^30 2 \\* \\* \\* root /30 2 * * * /", CRON_FILE], check=True)
    result = _verify(bed)
    assert not result.ok
    assert "dcron-style" in result.summary
    assert "not a user" in result.summary


def test_a_daemon_that_is_not_cronie_fails_the_verification(bed: tuple[TestBed, Path, Path], cron_file: str) -> None:
    testbed = bed[0]
    testbed.run(1, ["/etc/init.d/cronie", "stop"], check=True)
    try:
        assert "no cron daemon is running" in _verify(bed).summary
        # An impostor named crond (as a dcron would be): not cronie.
        testbed.run(
            1,
            "mkdir -p /run/fake && cp /bin/sleep /run/fake/crond && "
            "(setsid /run/fake/crond 300 </dev/null >/dev/null 2>&1 & echo $! > /run/fake/pid)",
            check=True,
        )
        result = _verify(bed)
        assert not result.ok
        assert "not cronie" in result.summary
    finally:
        testbed.run(1, "[ -f /run/fake/pid ] && kill $(cat /run/fake/pid); /etc/init.d/cronie start")
    assert _verify(bed).ok


def test_line_checks_tell_cronie_and_dcron_formats_apart(tmp_path: Path) -> None:
    module = _load_verify_module()
    crontab = tmp_path / "jobs"
    crontab.write_text("SHELL=/bin/sh\n# comment\n30 2 * * * root /usr/bin/nightly\n@daily /usr/bin/other\n")
    problems, stripped = module.check_lines(str(crontab), "cronie")
    assert len(problems) == 1 and "dcron-style" in problems[0] and "@daily" in problems[0]
    assert "30 2 * * * /usr/bin/nightly" in stripped
    problems, _ = module.check_lines(str(crontab), "dcron")
    assert len(problems) == 1 and "cronie-style line (user field 'root') under dcron" in problems[0]


def test_cronnext_output_is_parsed() -> None:
    module = _load_verify_module()
    text = (
        'crontabs:\n  - user: "*system*"\n    entries:\n      - user: root\n'
        '        cmd: "/usr/bin/nightly --x \\"y\\""\n        next: 1795919400\n'
    )
    assert module.parse_cronnext(text) == [{"user": "root", "cmd": '/usr/bin/nightly --x "y"', "next": 1795919400}]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_build_script_is_idempotent(cronie: Path) -> None:
    proc = subprocess.run([str(ROOT / "scripts/build-cronie.sh"), str(cronie)], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "already built" in proc.stderr


def test_the_verification_is_recorded_in_the_swarm(bed: tuple[TestBed, Path, Path], cron_file: str,
                                                    swarm: BedSwarm) -> None:
    # The role was applied with the default swarmctl path, which this host lacks: recording
    # failed, and that did not fail the play (the bed fixture asserted it passed).
    report = {"swarm_cron_swarmctl": f"{SWARMCTL_BIN} --config {swarm.config_path}"}
    assert _verify(bed, **report).ok
    status = json.loads(swarm.cli("status", "--json", check=False).stdout)
    cron = status["sync"]["cron"]
    assert cron["ok"] is True and "cron verification passed" in cron["detail"]
    assert "cron_failed" not in [a["code"] for a in status["attention"]]

    bed[0].run(1, ["sh", "-c", f"echo '61 2 * * * root /bin/true' >> {CRON_FILE}"], check=True)
    result = _verify(bed, **report)
    assert not result.ok and "bad minute" in result.summary, "still fails loudly"
    proc = swarm.cli("status", "--json", check=False)
    status = json.loads(proc.stdout)
    cron = status["sync"]["cron"]
    assert cron["ok"] is False and "does not parse" in cron["detail"]
    assert "cron_failed" in [a["code"] for a in status["attention"]]
    assert proc.returncode == 2 == status["exit_code"], "a job that will not run is critical"
