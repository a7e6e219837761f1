"""Threat family: hostile text reaching emerge, a shell, ssh or Ansible.

Package atoms and drone names are refused at every door (CLI, ``Queue.add``,
``DroneRegistry.enroll``) unless they are plain; builders run argv lists, never a
shell, so even a value with metacharacters from the config stays one argv item; and a
CPV that somehow got past the doors (written straight into Redis) is refused again
before any command is built from it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
import redis

from swarmctl import keys
from swarmctl.atoms import validate_cpv
from swarmctl.config import Config, load_config
from swarmctl.drone.builders import CommandBuilder, substitute
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.exceptions import InvalidAtom, SwarmError
from swarmctl.graph import JobSpec
from swarmctl.healing import Healer
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from swarmctl.scripts import HEARTBEAT_FIELD_MAX
from tests.helpers import Spawner, run_cli, wait_until

HOSTILE_ATOMS = [
    "app-misc/x-1;touch /tmp/pwned", "app-misc/x-1 && id", "app-misc/$(id)-1", "app-misc/`id`-1",
    "app-misc/x-1\ntouch pwned", "app-misc/x 1", "-app-misc/x-1", "--config=/etc/passwd", "app-misc/x-1|sh",
    "app-misc/x-1>out", "app-misc/x-${IFS}1", "app-misc/x-1'", '"app-misc/x-1"', "app-misc/x-1\x00",
    "{{lookup('pipe','id')}}/x-1", "app-misc/x-1 --root=/", "app-misc/-x-1", "../x/y-1",
]
HOSTILE_NAMES = [
    "evil;reboot", "$(id)", "`id`", "a b", "-rf", "--help", "a\nb", "a/../b", "..", ".hidden", "x" * 64,
    "{{lookup('pipe','id')}}", "a|b", "a>b", "a'b", "a\"b", "", "a*", "all,!h2", "drone\tx",
]


@pytest.mark.parametrize("atom", HOSTILE_ATOMS)
def test_hostile_atoms_are_refused_by_the_queue(atom: str, queue: Queue) -> None:
    with pytest.raises(InvalidAtom):
        validate_cpv(atom)
    with pytest.raises(InvalidAtom):
        queue.add([JobSpec(atom)])
    with pytest.raises(InvalidAtom):
        queue.add([JobSpec("app-misc/ok-1", build=[atom])])
    assert queue.jobs() == []


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_drone_names_are_refused_at_enrollment(name: str, registry: DroneRegistry) -> None:
    with pytest.raises(SwarmError):
        registry.enroll(name)
    assert registry.names() == []
    assert not registry.authenticate(name, "anything")


def test_hostile_values_are_refused_by_the_cli(swarm_env: dict[str, str], queue: Queue) -> None:
    for atom in ("app-misc/x-1;touch /tmp/pwned", "app-misc/$(id)-1", "--root=/"):
        proc = run_cli(["queue", "add", "--", atom], swarm_env, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    for name in ("evil;reboot", "$(id)", "-rf"):
        proc = run_cli(["drone", "enroll", "--", name], swarm_env, check=False)
        assert proc.returncode != 0 and "invalid drone name" in proc.stderr, proc.stderr
    assert queue.jobs() == [] and DroneRegistry(queue.redis, queue.config).names() == []


def test_a_trailing_newline_does_not_slip_through_the_name_check(registry: DroneRegistry) -> None:
    with pytest.raises(SwarmError):
        registry.enroll("evil\n")


def test_machine_id_must_look_like_one(registry: DroneRegistry) -> None:
    with pytest.raises(SwarmError):
        registry.enroll("izar", machine_id="{{ lookup('pipe', 'id') }}")


def test_substitution_fills_argv_items_and_refuses_invalid_cpvs(tmp_path: Path) -> None:
    template = ["sh", "-c", "echo {cpv} > " + str(tmp_path / "out")]
    assert substitute(template, "app-misc/x-1")[2] == f"echo app-misc/x-1 > {tmp_path / 'out'}"
    for atom in HOSTILE_ATOMS:
        with pytest.raises(InvalidAtom):
            substitute(template, atom)
    builder = CommandBuilder(["sh", "-c", f"touch {tmp_path}/ran; echo {{cpv}}"])
    # Refused as the job's fault, like the portage builder does (a drone fault would retry it forever).
    result = builder.build(f"app-misc/x-1;touch {tmp_path}/pwned", tmp_path / "log", threading.Event())
    assert (result.ok, result.fault) == (False, "build") and "not a valid" in result.reason
    assert not (tmp_path / "ran").exists() and not (tmp_path / "pwned").exists()


def test_portage_builder_never_builds_argv_from_an_invalid_cpv(tmp_path: Path) -> None:
    builder = PortageBuilder(None, extra_args=["--jobs=2; rm -rf /", "$(id)"])
    argv = builder.emerge_argv("app-misc/x-1")
    assert argv[-3:] == ["--jobs=2; rm -rf /", "$(id)", "=app-misc/x-1"]  # items, never a command line
    for atom in HOSTILE_ATOMS:
        with pytest.raises(InvalidAtom):
            builder.emerge_argv(atom)
        result = builder.build(atom, tmp_path / "log", threading.Event())
        assert not result.ok and result.fault == "build" and not (tmp_path / "log").exists()


def test_config_values_with_metacharacters_stay_single_argv_items(tmp_path: Path, redis_url: str) -> None:
    items = ["a;b", "$(touch pwned)", "`touch pwned`", "x y", "'q'", "--z", "{cpv}"]
    config_file = tmp_path / "swarm.yml"
    config_file.write_text("drone:\n  command: " + json.dumps(["printf", "%s\\n", *items]) + "\n")
    for config in (load_config(config_file, environ={}),
                   load_config(environ={"SWARM_DRONE_COMMAND": json.dumps(["printf", "%s\\n", *items])})):
        log = tmp_path / "build.log"
        log.unlink(missing_ok=True)
        result = CommandBuilder(config.drone.command).build("app-misc/x-1", log, threading.Event())
        assert result.ok, result.reason
        assert log.read_text().splitlines() == [*items[:-1], "app-misc/x-1"]
    assert not list(tmp_path.rglob("pwned")) and not list(Path.cwd().glob("pwned"))


def test_a_cpv_written_straight_into_redis_never_reaches_the_command(
        queue: Queue, registry: DroneRegistry, spawn: Spawner, tmp_path: Path) -> None:
    """Someone with Redis access plants a job whose CPV carries a command: the drone refuses it."""
    marker = tmp_path / "pwned"
    bad = f"app-misc/x-1;touch {marker}"
    planted = queue.scripts.add(keys=[*keys.QUEUE_KEYS, keys.LISTING],  # no CPV validation in Lua
                                args=[bad, 1, 1, "[]", "[]", "[]", 1000, "[]", "", "[]"])
    assert planted[0] == "added"
    token = registry.enroll("izar")
    spawn(["drone", "run", "--name", "izar", "--command", f"sh -c 'touch {tmp_path}/ran-{{pn}}; echo {{cpv}}'"],
          env={"SWARM_DRONE_TOKEN": token, "SWARM_DRONE_POLL_INTERVAL": "0.1"}, name="izar")
    assert wait_until(lambda: queue.redis.hget(keys.job(bad), "attempts") not in (None, "0")
                      and queue.redis.hget(keys.job(bad), "state") != "delegated", 20)
    assert queue.redis.hget(keys.job(bad), "state") != "built"
    assert not marker.exists() and not list(tmp_path.glob("ran-*"))


def test_a_drone_planted_identity_is_never_templated_by_ansible(
        registry: DroneRegistry, redis_client: redis.Redis, config: Config, tmp_path: Path) -> None:
    """A drone heartbeats a Jinja expression as its machine id; the reboot's identity check
    must compare it as text, never run it on the control node.

    A stand-in reboot playbook on localhost compares the identity the way
    playbooks/drone-reboot.yml does (it reboots nothing).
    """
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "drone-reboot.yml").write_text(
        "- hosts: \"{{ target }}\"\n  gather_facts: false\n  tasks:\n"
        "    - name: Refuse a host that is not the expected drone.\n"
        "      ansible.builtin.fail:\n        msg: \"REFUSED: identity mismatch\"\n"
        "      when: (expected_machine_id | string | trim) != 'not-this'\n")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"tarn": {
        "ansible_connection": "local", "ansible_python_interpreter": __import__("sys").executable}}}}))
    marker = tmp_path / "templated-on-the-controller"
    token = registry.enroll("tarn", machine_id="0123456789abcdef0123456789abcdef")
    registry.heartbeat("tarn", token, {"status": "idle",
                                       "machine_id": f"{{{{ lookup('pipe', 'touch {marker}') }}}}"})
    cfg = config.with_overrides(healing__inventory=str(inventory), healing__playbook_dir=str(playbooks))
    healer = Healer(redis_client, cfg)
    healer.data_root = tmp_path / "runs"
    outcome = healer.act("tarn", "reboot", operator=True)
    assert not marker.exists(), "a machine id from Redis was run as a template on the control node"
    assert not outcome.ok and "REFUSED" in outcome.summary


# -- what a drone writes about itself ----------------------------------------------------------------

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m\r\x08\x00\u009b6n\u202e"


def test_heartbeat_fields_are_cleaned_and_capped_where_redis_writes_them(
        registry: DroneRegistry, redis_client: redis.Redis, swarm_env: dict[str, str]) -> None:
    """A drone calls the HEARTBEAT script itself (it is untrusted): escapes, non-ASCII and 100 KB never land."""
    token = registry.enroll("izar")
    fields = {"status": "idle" + ESCAPES, "task": "app-misc/x-1" + ESCAPES + "A" * 100_000,
              "host": ESCAPES + "h" * 1000, "version": "[bold red]1.0[/]" + ESCAPES,
              "cpu": "12.5" + ESCAPES, "mem": "9" * 5000, "pid": "1" + ESCAPES, "machine_id_seen": ESCAPES * 50,
              "clock": "1" * 1000, "task_started": "2" * 1000, "hung": "0" + ESCAPES}
    flat: list[str | bytes] = [item for pair in fields.items() for item in pair]
    flat += ["host", b"\xff\xfe" + "h\u00e9".encode() * 200]  # not UTF-8, and a cut inside a character
    # Straight to the script, as a hostile drone would: no Python of ours on the drone's side.
    registry.scripts.heartbeat(keys=list(keys.QUEUE_KEYS), args=["izar", hashlib.sha256(token.encode()).hexdigest(),
                                                                 "", "", 100, "s1", 0, *flat])
    stored = redis_client.hgetall(keys.drone("izar"))
    for field in fields:
        value = stored[field]
        assert all(0x20 <= ord(ch) < 0x7f for ch in value), (field, value[:80])
        assert len(value.encode()) <= HEARTBEAT_FIELD_MAX[field], (field, len(value))
    assert stored["task"].startswith("app-misc/x-1]0;owned[2J[31m")
    assert len(stored["task"]) == 256 and stored["hung"] == "0"

    table = run_cli(["drones"], {**swarm_env, "COLUMNS": "200"}).stdout
    assert "\x1b" not in table and "\u009b" not in table and "\u202e" not in table
    assert len(table) < 4000
    listed = json.loads(run_cli(["drones", "--json"], swarm_env).stdout)
    assert len(json.dumps(listed)) < 4000


def test_readers_clean_drone_fields_written_past_the_script(
        registry: DroneRegistry, redis_client: redis.Redis, swarm_env: dict[str, str]) -> None:
    """Data already in Redis (an older version, a direct write) is cleaned when read and shown."""
    registry.enroll("izar")
    redis_client.hset(keys.drone("izar"), mapping={"task": "[/]" + ESCAPES + "B" * 100_000,
                                                   "host": ESCAPES, "last_seen": int(time.time() * 1000)})
    info = registry.list()[0]
    assert info.task is not None and len(info.task) <= 256 and "\x1b" not in info.task
    assert info.host == "]0;owned[2J[31m6n"
    proc = run_cli(["drones"], {**swarm_env, "COLUMNS": "200"})
    assert "\x1b" not in proc.stdout and "[/]" in proc.stdout  # shown as text, not parsed as markup
