"""The command line as a user runs it: one-line errors, stable JSON, exit codes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import redis

from swarmctl import keys
from swarmctl.embedded import EmbeddedRedis
from swarmctl.registry import DroneRegistry
from tests.helpers import free_port, run_cli


def test_queue_add_list_json(swarm_env: dict[str, str]) -> None:
    run_cli(["queue", "add", "sys-libs/zlib-1.3"], swarm_env)
    run_cli(["queue", "add", "dev-libs/libxml2-2.13", "--after", "sys-libs/zlib-1.3"], swarm_env)
    jobs = json.loads(run_cli(["queue", "list", "--json"], swarm_env).stdout)
    by_cpv = {j["cpv"]: j for j in jobs}
    assert by_cpv["dev-libs/libxml2-2.13"]["after"] == ["sys-libs/zlib-1.3"]
    for job in jobs:
        assert {"cpv", "state", "drone", "attempts", "after"} <= job.keys()
        assert job["state"] == "needed" and job["drone"] is None and job["attempts"] == 0
    needed = json.loads(run_cli(["queue", "list", "--state", "built", "--json"], swarm_env).stdout)
    assert needed == []


def test_bad_atom_is_one_line_and_nothing_is_added(swarm_env: dict[str, str]) -> None:
    proc = run_cli(["queue", "add", "app-misc/ok-1", "app-misc/x-1;reboot"], swarm_env, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "not a valid Gentoo package" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(run_cli(["queue", "list", "--json"], swarm_env).stdout) == []


def test_unreachable_redis_is_one_clear_line(swarm_env: dict[str, str]) -> None:
    env = {**swarm_env, "SWARM_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (["queue", "list"], ["drones", "--json"], ["drone", "enroll", "x"]):
        proc = run_cli(args, env, check=False)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: cannot reach redis://127.0.0.1:")
        assert proc.stderr.count("\n") == 1, proc.stderr


def test_password_never_shown_in_errors(swarm_env: dict[str, str]) -> None:
    env = {**swarm_env, "SWARM_REDIS_URL": f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"}
    proc = run_cli(["queue", "list"], env, check=False)
    assert proc.returncode == 2 and "hunter2secret" not in proc.stderr + proc.stdout


def test_malformed_config_names_the_key(swarm_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "swarm.yml"
    bad.write_text("breaker:\n  failures: five\n")
    proc = run_cli(["--config", str(bad), "queue", "list"], swarm_env, check=False)
    assert proc.returncode == 1 and "breaker.failures must be int" in proc.stderr
    bad.write_text("breaker:\n  falures: 5\n")
    proc = run_cli(["--config", str(bad), "queue", "list"], swarm_env, check=False)
    assert "unknown key breaker.falures" in proc.stderr
    bad.write_text("breaker: [\n")
    proc = run_cli(["--config", str(bad), "queue", "list"], swarm_env, check=False)
    assert proc.returncode == 1 and "not valid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_enroll_revoke_and_drones_json(swarm_env: dict[str, str]) -> None:
    token = run_cli(["drone", "enroll", "drone-Izar"], swarm_env).stdout.strip()
    assert len(token) >= 40
    fleet = json.loads(run_cli(["drones", "--json"], swarm_env).stdout)
    assert [d["name"] for d in fleet] == ["drone-Izar"]
    keys = {"name", "status", "task", "cpu", "mem", "heartbeat_age", "failures", "grounded_until"}
    assert keys <= fleet[0].keys() and fleet[0]["status"] == "offline"
    assert token not in json.dumps(fleet)
    run_cli(["drone", "revoke", "drone-Izar"], swarm_env)
    proc = run_cli(["drone", "run", "--name", "drone-Izar", "--token", token, "--command", "true"],
                   swarm_env, check=False)
    assert proc.returncode != 0 and "not enrolled, revoked" in proc.stderr


def test_ground_and_release(swarm_env: dict[str, str]) -> None:
    run_cli(["drone", "enroll", "tarn"], swarm_env)
    run_cli(["drone", "ground", "tarn", "--minutes", "5"], swarm_env)
    fleet = json.loads(run_cli(["drones", "--json"], swarm_env).stdout)
    assert fleet[0]["grounded_until"] is not None
    run_cli(["drone", "release", "tarn"], swarm_env)
    assert json.loads(run_cli(["drones", "--json"], swarm_env).stdout)[0]["grounded_until"] is None
    proc = run_cli(["drone", "ground", "nobody"], swarm_env, check=False)
    assert proc.returncode == 1 and "no drone named 'nobody'" in proc.stderr


def test_clear_needs_yes(swarm_env: dict[str, str]) -> None:
    run_cli(["queue", "add", "app-misc/a-1"], swarm_env)
    proc = run_cli(["queue", "clear"], swarm_env, check=False)
    assert proc.returncode != 0 and "--yes" in proc.stderr
    assert len(json.loads(run_cli(["queue", "list", "--json"], swarm_env).stdout)) == 1
    run_cli(["queue", "clear", "--yes"], swarm_env)
    assert json.loads(run_cli(["queue", "list", "--json"], swarm_env).stdout) == []


def test_events_json(swarm_env: dict[str, str]) -> None:
    run_cli(["queue", "add", "app-misc/a-1"], swarm_env)
    lines = run_cli(["events", "--json"], swarm_env).stdout.splitlines()
    event = json.loads(lines[-1])
    assert event["kind"] == "added" and event["job"] == "app-misc/a-1"


def test_embedded_server_is_shared_persistent_and_stoppable(swarm_env: dict[str, str], tmp_path: Path) -> None:
    env = {k: v for k, v in swarm_env.items() if k != "SWARM_REDIS_URL"}
    run_cli(["queue", "add", "app-misc/a-1"], env)
    sock = tmp_path / "xdg-data" / "build-swarm" / "redis" / "redis.sock"
    try:
        assert sock.exists()
        listed = json.loads(run_cli(["queue", "list", "--json"], env).stdout)  # a second process sees it
        assert [j["cpv"] for j in listed] == ["app-misc/a-1"]
        assert "stopped" in run_cli(["local", "stop"], env).stdout
        assert run_cli(["local", "status"], env, check=False).returncode == 1
        listed = json.loads(run_cli(["queue", "list", "--json"], env).stdout)  # restarted from its AOF
        assert [j["cpv"] for j in listed] == ["app-misc/a-1"]
    finally:
        run_cli(["local", "stop"], env, check=False)


def test_a_stopped_embedded_server_is_an_error_never_a_second_server(
        swarm_env: dict[str, str], tmp_path: Path) -> None:
    """SIGSTOP the real embedded server: a command fails in one line; its socket and AOF stay its own."""
    env = {k: v for k, v in swarm_env.items() if k != "SWARM_REDIS_URL"}
    run_cli(["queue", "add", "app-misc/a-1"], env)
    server = EmbeddedRedis(tmp_path / "xdg-data" / "build-swarm" / "redis")
    pid = server.pid()
    assert pid is not None and server.held()
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        proc = run_cli(["queue", "add", "app-misc/phantom-1"], env, check=False)
        took = time.monotonic() - started
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "stopped" in lines[0] and f"kill -CONT {pid}" in lines[0]
        assert took < 10, took
        assert server.socket.exists() and server.pid() == pid  # the live server's socket was not unlinked
        assert "stopped" in run_cli(["local", "stop"], env, check=False).stderr
        servers = [p for p in psutil.process_iter(["cmdline"])
                   if str(server.socket) in " ".join(p.info["cmdline"] or [])]
        assert [p.pid for p in servers] == [pid]  # no second server on the same data
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        assert "stopped" in run_cli(["local", "stop"], env).stdout
        listed = json.loads(run_cli(["queue", "list", "--json"], env).stdout)  # restarted from its AOF
        assert [j["cpv"] for j in listed] == ["app-misc/a-1"]  # no phantom job
    finally:
        run_cli(["local", "stop"], env, check=False)


def test_redis_on_the_network_without_password_is_refused(swarm_env: dict[str, str]) -> None:
    # Refused before any connection is attempted (nothing is sent to that address).
    env = {**swarm_env, "SWARM_REDIS_URL": "redis://192.0.2.10:6379/0"}
    proc = run_cli(["queue", "list"], env, check=False)
    assert proc.returncode == 1 and "needs a password" in proc.stderr


def test_open_server_check_passes_loopback_passwords_and_override() -> None:
    from swarmctl.config import load_config
    from swarmctl.connection import refuse_open_server

    for env in ({"SWARM_REDIS_URL": "redis://127.0.0.1:6379/0"}, {"SWARM_REDIS_URL": "redis://localhost/0"},
                {"SWARM_REDIS_URL": "redis://:pw@192.0.2.10:6379/0"}, {"SWARM_REDIS_URL": "unix:///run/r.sock"},
                {"SWARM_REDIS_URL": "redis://192.0.2.10/0", "SWARM_REDIS_ALLOW_NO_PASSWORD": "yes"}):
        refuse_open_server(load_config(environ=env))


def test_enroll_with_a_token_file(swarm_env: dict[str, str], redis_client: redis.Redis, registry: DroneRegistry,
                                  tmp_path: Path) -> None:
    # Generated: written 0600 to the file, not printed; the daemon's token works.
    made = tmp_path / "drone-a.token"
    proc = run_cli(["drone", "enroll", "drone-a", "--token-file", str(made)], swarm_env)
    token = made.read_text().strip()
    assert len(token) >= 40 and token not in proc.stdout + proc.stderr
    assert made.stat().st_mode & 0o777 == 0o600
    # Pre-generated: the file's token is the one enrolled (re-enrolling with it is idempotent).
    given = tmp_path / "given.token"
    given.write_text("pre-generated-token-from-a-vault-0123456789\n")
    given.chmod(0o600)
    mid = "0123456789abcdef0123456789abcdef"
    for _ in range(2):
        run_cli(["drone", "enroll", "drone-b", "--machine-id", mid, "--token-file", str(given)], swarm_env)
    assert given.read_text() == "pre-generated-token-from-a-vault-0123456789\n"
    stdin = run_cli(["drone", "enroll", "drone-c", "--token-file", "-"], swarm_env,
                    input="another-pre-generated-token-0123456789abc\n")
    assert "another" not in stdin.stdout
    for name, tok in (("drone-a", token), ("drone-b", "pre-generated-token-from-a-vault-0123456789"),
                      ("drone-c", "another-pre-generated-token-0123456789abc")):
        assert registry.authenticate(name, tok), name
    assert redis_client.hget(keys.drone("drone-b"), "machine_id") == mid
    # Bad input: one line, nothing written, nothing enrolled.
    for args, message in ((["drone-d", "--token-file", str(given), "--machine-id", "nope"], "invalid machine id"),
                          (["bad name", "--token-file", str(tmp_path / "x")], "invalid"),
                          (["drone-e", "--token-file", str(tmp_path / "no" / "dir")], "cannot write the token file")):
        proc = run_cli(["drone", "enroll", *args], swarm_env, check=False)
        assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    short = tmp_path / "short.token"
    short.write_text("short\n")
    proc = run_cli(["drone", "enroll", "drone-f", "--token-file", str(short)], swarm_env, check=False)
    assert proc.returncode == 1 and "invalid token" in proc.stderr
    names = {d["name"] for d in json.loads(run_cli(["drones", "--json"], swarm_env).stdout)}
    assert names == {"drone-a", "drone-b", "drone-c"}
    assert not (tmp_path / "x").exists()
