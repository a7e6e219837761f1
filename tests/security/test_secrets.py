# ruff: noqa: F811 - the portage fixtures imported below are used as test parameters
"""Threat family: secrets at rest and in output. A real flow, then a grep for its tokens.

The binhost makes its signing key and serves signed packages; two drones are
enrolled through the CLI; one runs as a daemon process, the other uploads real
packages through the binhost client (accepted and refused uploads); operators
read ``drones``, ``events``, ``queue list/show`` as JSON; an Ansible playbook gets
a token as an extra var. Then every file written under the test's directories,
every captured output, every Redis value and ansible-runner's artifacts are searched
for the tokens, and for the signing key's secret and its revocation certificate
(which may live only in the binhost's GnuPG home). The only places a token may be:
the enroll command's stdout (that is its job), the playbook's own destination file,
and ansible-runner's private ``env/extravars`` input (mode 0600 inside a 0700 dir;
see docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import stat
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from swarmctl.ansible_exec import run_playbook
from swarmctl.binhost.client import BinhostClient
from swarmctl.embedded import free_port
from swarmctl.queue import Queue
from tests.conftest import Spawner, run_cli, wait_until
from tests.portage.conftest import drone, sample_repo  # noqa: F401 - fixtures
from tests.portage.signing_fixtures import keyrings  # noqa: F401 - fixture

pytestmark = pytest.mark.portage
HELLO, GREETER = "app-misc/hello-1", "app-misc/greeter-1"

PLAYBOOK = """\
- name: Use a drone token the way provisioning does.
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Write the token to the drone's config.
      ansible.builtin.copy:
        content: "token: {{ swarm_drone_token }}\\n"
        dest: "{{ swarm_token_dest }}"
        mode: "0600"
      no_log: true
    - name: Fail while handling the token (the failure must not show it).
      ansible.builtin.command: "false {{ swarm_drone_token }}"
      no_log: true
      ignore_errors: true
"""


def redis_values(client: redis.Redis) -> str:
    """Every key and value in Redis, as one string."""
    parts = []
    for key in client.scan_iter("*"):
        kind = client.type(key)
        value = {"string": lambda k: client.get(k), "hash": client.hgetall, "set": client.smembers,
                 "list": lambda k: client.lrange(k, 0, -1), "zset": lambda k: client.zrange(k, 0, -1),
                 "stream": lambda k: client.xrange(k)}[kind](key)
        parts.append(f"{key} {value}")
    return "\n".join(parts)


def signing_secrets(home: Path) -> dict[str, bytes]:
    """The binhost's secret key scalar (hex and raw) and its revocation certificate's body."""
    secrets = {}
    for key_file in (home / "private-keys-v1.d").glob("*.key"):
        scalar = re.search(r"\(d\s+#([0-9A-Fa-f]+)#\)", key_file.read_text())
        assert scalar, f"no secret scalar found in {key_file.name}"
        secrets[f"{key_file.name} hex"] = scalar.group(1).encode()
        secrets[f"{key_file.name} hex lower"] = scalar.group(1).lower().encode()
        secrets[f"{key_file.name} raw"] = bytes.fromhex(scalar.group(1))
    for cert in (home / "openpgp-revocs.d").glob("*.rev"):
        body = [line for line in cert.read_text().splitlines() if len(line) > 40 and " " not in line]
        assert body, "no revocation certificate body"
        secrets[f"{cert.name} body"] = max(body, key=len).encode()
    assert len(secrets) >= 4
    return secrets


def test_tokens_never_appear_in_logs_events_json_or_artifacts(  # type: ignore[no-untyped-def]
        drone, swarm_env: dict[str, str], spawn: Spawner, redis_client: redis.Redis, config, tmp_path: Path,
        keyrings) -> None:
    signing_home = keyrings(with_key=False).home  # the binhost's private GnuPG home, outside tmp_path
    env = {**swarm_env, "SWARM_LOG_FILE": str(tmp_path / "logs" / "swarmctl.log"),
           "SWARM_BINHOST_GNUPG_HOME": str(signing_home)}
    spawn.env = env
    outputs: list[str] = []

    def cli(*args: str) -> str:
        proc = run_cli(["-vv", *args], env)
        outputs.append(proc.stdout + proc.stderr)
        return proc.stdout

    tokens = {}
    for name in ("d1", "d2"):
        proc = run_cli(["-vv", "drone", "enroll", name, "--machine-id", hashlib.md5(name.encode()).hexdigest()], env)
        tokens[name] = proc.stdout.strip()
        outputs.append(proc.stderr)  # stdout is the token itself: printing it is enroll's job
    assert all(len(t) >= 40 for t in tokens.values())

    # d1 holds the two portage jobs; d2 runs as a daemon and builds three command jobs.
    cli("queue", "add", HELLO, GREETER)
    queue = Queue(redis_client, config)
    leases = {}
    for _ in range(2):
        claim = queue.claim("d1", tokens["d1"])
        assert claim is not None
        leases[claim.cpv] = claim.lease
    cli("queue", "add", "app-misc/cmd-1", "app-misc/cmd-2", "app-misc/cmd-3")
    daemon = spawn(["-vv", "drone", "run", "--name", "d2", "--command", "true", "--state-dir",
                    str(tmp_path / "d2-state")], env={"SWARM_DRONE_TOKEN": tokens["d2"],
                                                      "SWARM_DRONE_POLL_INTERVAL": "0.1"}, name="d2")

    pkgdir = tmp_path / "binhost"
    pkgdir.mkdir()
    cli("binhost", "key", "init", "--dir", str(pkgdir))
    port = free_port()
    spawn(["-vv", "binhost", "serve", "--dir", str(pkgdir), "--listen", f"127.0.0.1:{port}"], name="binhost")
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        try:
            urllib.request.urlopen(url + "/nothing", timeout=1)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    assert wait_until(answering, 20)
    hello, greeter = drone.gpkg(HELLO), drone.gpkg(GREETER)
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (hello, greeter)}
    d1 = BinhostClient(url, "d1", tokens["d1"], attempts=1)
    assert d1.upload(hello, HELLO, leases[HELLO], sha256=sha[hello]).accepted
    assert BinhostClient(url, "d2", tokens["d2"], attempts=1).upload(
        greeter, GREETER, leases[GREETER], sha256=sha[greeter]).code == "not_owner"
    assert BinhostClient(url, "d1", tokens["d2"], attempts=1).upload(
        greeter, GREETER, leases[GREETER], sha256=sha[greeter]).code == "unauthorized"
    assert d1.upload(greeter, GREETER, leases[GREETER], sha256="0" * 64).code == "checksum_mismatch"
    assert d1.upload(greeter, GREETER, leases[GREETER], sha256=sha[greeter]).accepted

    assert wait_until(lambda: queue.counts()["built"] == 5, 30), queue.counts()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0

    fleet = json.loads(cli("drones", "--json"))
    assert {d["name"] for d in fleet} == {"d1", "d2"}
    assert cli("events", "--json", "-n", "1000").count("\n") > 10
    assert len(json.loads(cli("queue", "list", "--json"))) == 5
    assert json.loads(cli("queue", "show", HELLO, "--json"))["built_by"] == "d1"

    playbook = tmp_path / "provision.yml"
    playbook.write_text(PLAYBOOK)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    dest = tmp_path / "secret-dest"
    dest.mkdir()
    result = run_playbook(playbook, inventory, "localhost", {"swarm_drone_token": tokens["d1"],
                                                             "swarm_token_dest": str(dest / "swarm.yml")},
                          tmp_path / "runs")
    assert result.ok, result.summary
    assert (dest / "swarm.yml").read_text() == f"token: {tokens['d1']}\n"  # the token did get used
    outputs.append(result.summary + json.dumps(result.hosts))
    assert result.artifact_dir is not None and result.artifact_dir.is_dir()

    # -- the search ------------------------------------------------------------------------------
    allowed = {dest / "swarm.yml"}
    # The secrets file is deleted once the run is over; the run dir stays private.
    assert list((tmp_path / "runs").rglob("env/extravars")) == []
    assert stat.S_IMODE(result.artifact_dir.parent.parent.stat().st_mode) == 0o700
    assert tokens["d1"].encode() in (dest / "swarm.yml").read_bytes()  # positive control: the search finds it
    searched = 0
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink() and path not in allowed:
            data = path.read_bytes()
            searched += 1
            for name, token in tokens.items():
                assert token.encode() not in data, f"{name}'s token is in {path.relative_to(tmp_path)}"
    assert searched > 20, "the flow wrote fewer files than expected; is the search looking in the right place?"
    assert (tmp_path / "logs" / "swarmctl.log").stat().st_size > 0
    assert list((tmp_path / "d2-state" / "logs").glob("*.log"))
    assert list(result.artifact_dir.rglob("job_events/*.json"))
    text = "\n".join(outputs) + redis_values(redis_client)
    for name, token in tokens.items():
        assert token not in text, f"{name}'s token is in an output or in Redis"

    # The signing key: used (the published packages are signed), never written anywhere else.
    assert b"-----BEGIN PGP SIGNATURE-----" in next(pkgdir.rglob("hello-1-*.gpkg.tar")).read_bytes()
    secrets = signing_secrets(signing_home)
    blob = text.encode()
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for name, secret in secrets.items():
                assert secret not in data, f"signing secret ({name}) is in {path.relative_to(tmp_path)}"
    for name, secret in secrets.items():
        assert secret not in blob, f"signing secret ({name}) is in an output or in Redis"
