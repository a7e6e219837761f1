"""Output that survives pipes and narrow terminals: every value --json has, nothing cut, units everywhere."""

from __future__ import annotations

import json
import re
import time

import pytest
import redis

from swarmctl.facts import FactStore
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import run_cli

LONG = "dev-python/a-package-with-a-rather-long-name-indeed-1.2.3_p20261130"
WIDTHS = (60, 80, 200)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    """What a terminal shows, less its colours."""
    return ANSI.sub("", text)


@pytest.fixture
def fleet(queue: Queue, registry: DroneRegistry, redis_client: redis.Redis) -> None:
    """Jobs in several states (one tried twice), drones building, idle and grounded, with cpu and mem."""
    tokens = {name: registry.enroll(name) for name in ("drone-Tarn", "drone-Izar-with-a-long-name", "drone-Meridian")}
    queue.add([JobSpec("app-misc/tried-1")])
    tried = queue.claim("drone-Tarn", tokens["drone-Tarn"])
    assert tried is not None
    queue.fail(tried.cpv, "drone-Tarn", tokens["drone-Tarn"], tried.lease, "build", "command exited 1", "tail")
    queue.add([JobSpec(LONG), JobSpec("sys-devel/gcc-14.2.1", build=[LONG]), JobSpec("app-misc/jq-1.7.1")])
    built = queue.claim("drone-Izar-with-a-long-name", tokens["drone-Izar-with-a-long-name"])
    assert built is not None
    queue.complete(built.cpv, "drone-Izar-with-a-long-name", tokens["drone-Izar-with-a-long-name"], built.lease,
                   8.038)
    busy = queue.claim("drone-Izar-with-a-long-name", tokens["drone-Izar-with-a-long-name"])
    assert busy is not None
    registry.heartbeat("drone-Izar-with-a-long-name", tokens["drone-Izar-with-a-long-name"],
                       {"status": "building", "task": busy.cpv, "cpu": 87.4, "mem": 45.2})
    registry.heartbeat("drone-Tarn", tokens["drone-Tarn"], {"status": "idle", "cpu": 3, "mem": 12})
    registry.heartbeat("drone-Meridian", tokens["drone-Meridian"], {"status": "idle", "cpu": 0, "mem": 7})
    registry.ground("drone-Meridian", 130, queue)
    FactStore(redis_client).set_sync_time(time.time() - 30 * 3600)  # old: status has long messages to say


@pytest.fixture
def cli_env(swarm_env: dict[str, str]) -> dict[str, str]:
    """The swarm's environment with heartbeats that stay fresh across a dozen CLI runs on a loaded machine."""
    return {**swarm_env, "SWARM_ORCHESTRATOR_OFFLINE_AFTER": "600"}


def _runs(args: list[str], env: dict[str, str]) -> dict[str, str]:
    """The command's stdout through a pipe, and on a (pretend) terminal, at each width."""
    out = {}
    for width in WIDTHS:
        out[f"pipe{width}"] = run_cli(args, {**env, "COLUMNS": str(width)}, check=False).stdout
        out[f"tty{width}"] = plain(run_cli(args, {**env, "COLUMNS": str(width), "TTY_COMPATIBLE": "1"},
                                           check=False).stdout)
    return out


def test_queue_list_keeps_every_value(fleet: None, cli_env: dict[str, str]) -> None:
    jobs = json.loads(run_cli(["queue", "list", "--json"], cli_env).stdout)
    assert len(jobs) == 4 and {j["attempts"] for j in jobs} >= {0, 1}
    for mode, text in _runs(["queue", "list"], cli_env).items():
        assert "…" not in text, mode
        for job in jobs:
            line = next((x for x in text.splitlines() if x.startswith(job["cpv"] + " ")), None)
            assert line is not None, f"{mode}: {job['cpv']} not whole at the start of a line:\n{text}"
            assert f" {job['state']} " in line and f" {job['attempts']} " in line + " ", f"{mode}: {line}"
        if mode.startswith("pipe"):
            assert "not shown" not in text and "WAITS FOR" in text.splitlines()[0], mode
    narrow = _runs(["queue", "list"], cli_env)["tty60"]
    footer = narrow.splitlines()[-1]  # the footer says what was left out, first the least needed
    assert footer.startswith("not shown for width: WHY, WAITS FOR, PRIORITY, DRONE"), narrow
    wide = _runs(["queue", "list"], cli_env)["tty200"]  # only the free-text reasons may not fit
    assert "not shown" not in wide or wide.splitlines()[-1].startswith("not shown for width: WHY ("), wide


def test_queue_list_tsv(fleet: None, cli_env: dict[str, str]) -> None:
    lines = run_cli(["queue", "list", "--tsv"], cli_env).stdout.splitlines()
    assert lines[0].split("\t") == ["PACKAGE", "STATE", "DRONE", "TRIES", "PRIORITY", "WAITS FOR", "WHY"]
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[1:]}
    assert rows["sys-devel/gcc-14.2.1"][5] == LONG and len(rows) == 4


def test_drones_keep_every_value(fleet: None, cli_env: dict[str, str]) -> None:
    drones = json.loads(run_cli(["drones", "--json"], cli_env).stdout)
    for mode, text in _runs(["drones"], cli_env).items():
        assert "…" not in text, mode
        for drone in drones:
            line = next((x for x in text.splitlines() if x.startswith(drone["name"] + " ")), None)
            assert line is not None, f"{mode}: {drone['name']} not whole:\n{text}"
            assert f" {drone['status']} " in line, f"{mode}: {line}"
            assert f" {drone['cpu']:.0f}%" in line and f" {drone['mem']:.0f}%" in line, f"{mode}: {line}"
        if mode.startswith("pipe"):
            assert "not shown" not in text and "GROUNDED" in text and "FREE" in text
            assert "for 2 min" in text and " s ago" in text  # durations carry their units
    narrow = _runs(["drones"], cli_env)
    assert narrow["tty60"].splitlines()[-1].startswith("not shown for width: FREE, GROUNDED, SEEN"), narrow["tty60"]
    assert "not shown" not in narrow["tty200"]


def test_drones_tsv_has_one_record_per_line(fleet: None, cli_env: dict[str, str]) -> None:
    lines = run_cli(["drones", "--tsv"], cli_env).stdout.splitlines()
    assert len(lines) == 4 and all(len(line.split("\t")) == 9 for line in lines)


def test_status_and_doctor_say_one_line_per_message_through_a_pipe(fleet: None, cli_env: dict[str, str]) -> None:
    status = json.loads(run_cli(["status", "--json"], cli_env, check=False).stdout)
    doctor = json.loads(run_cli(["doctor", "--json"], cli_env, check=False).stdout)
    messages = [a["message"] for a in status["attention"]]
    checks = doctor["checks"] if isinstance(doctor, dict) else doctor
    summaries = [c["summary"] for c in checks if c["name"] != "clock"]  # the clock's reading moves between runs
    assert any(len(m) > 60 for m in messages + summaries), "nothing long enough to be wrapped"
    for width in WIDTHS:
        env = {**cli_env, "COLUMNS": str(width)}
        text = run_cli(["status"], env, check=False).stdout
        for message in messages:
            assert any(message in line for line in text.splitlines()), f"{width}: {message!r} broken:\n{text}"
        text = run_cli(["doctor"], env, check=False).stdout
        for summary in summaries:
            assert any(summary in line for line in text.splitlines()), f"{width}: {summary!r} broken:\n{text}"
    # On a narrow terminal the same messages wrap at words, continuation indented, nothing lost.
    tty = plain(run_cli(["status"], {**cli_env, "COLUMNS": "60", "TTY_COMPATIBLE": "1"}, check=False).stdout)
    assert all(len(line) <= 60 for line in tty.splitlines()), tty
    assert any(line.startswith("    ") for line in tty.splitlines()), tty
    flat = " ".join(line.strip() for line in tty.splitlines())
    for message in messages:
        assert message in flat


def test_events_carry_units_and_no_placeholders(fleet: None, cli_env: dict[str, str]) -> None:
    events = json.loads("[" + ",".join(run_cli(["events", "--json"], cli_env).stdout.splitlines()) + "]")
    for width in WIDTHS:
        text = run_cli(["events", "-n", "100"], {**cli_env, "COLUMNS": str(width)}).stdout
        lines = text.splitlines()
        assert len(lines) == len(events)  # one per line, none wrapped
        built = next(line for line in lines if " built " in line)
        assert "in 8.0 s" in built and "on drone-Izar-with-a-long-name" in built
        assert " - " not in text and "- @" not in text
        enrolled = next(line for line in lines if "enrolled" in line)
        assert enrolled.split()[-1] in {"drone-Tarn", "drone-Izar-with-a-long-name", "drone-Meridian"}
