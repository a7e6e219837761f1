# ruff: noqa: F811 - the portage fixtures imported below are used as test parameters
"""Threat family: secrets at rest and in output. A real flow, then a grep for its tokens.

Two drones are enrolled through the CLI; one runs as a daemon process, the other
uploads real packages through the binhost client (accepted and refused uploads);
operators read ``drones``, ``events``, ``queue list/show`` as JSON; an Ansible playbook
gets a token as an extra var. Then every file written under the test's directories,
every captured output, every Redis value and ansible-runner's artifacts are searched
for the tokens. The only places a token may be: the enroll command's stdout (that is
its job), the playbook's own destination file, and ansible-runner's private
``env/extravars`` input (mode 0600 inside a 0700 dir; see docs/security.md).
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.metadata
import io
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from swarmctl.ansible_exec import run_playbook
from swarmctl.binhost.client import BinhostClient
from swarmctl.build_env import build_environment
from swarmctl.portage_env.prefix import make_prefix
from swarmctl.queue import Queue
from tests.helpers import RedisProcess, Spawner, free_port, isolated_env, run_cli, wait_until
from tests.portage.fixtures import drone, sample_repo  # noqa: F401 - fixtures
from tests.portage.helpers import copy_overlay_with

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


def test_tokens_never_appear_in_logs_events_json_or_artifacts(
        drone, swarm_env: dict[str, str], spawn: Spawner, redis_client: redis.Redis, config, tmp_path: Path) -> None:
    env = {**swarm_env, "SWARM_LOG_FILE": str(tmp_path / "logs" / "swarmctl.log")}
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


# -- builds cannot read the farm's secrets ----------------------------------------------------------

#: The attack from issue 11, exactly: a build that records the drone's SWARM_* variables and ships them.
ENV_SPY = """\
EAPI=8
DESCRIPTION="Records the SWARM_* variables its build sees and installs them"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"

src_compile() {
	env | grep ^SWARM_ > seen.txt
	echo "env-spy ran as $(id -u)" > ran.txt
}

src_install() {
	insinto /usr/share/env-spy
	doins seen.txt ran.txt
}
"""

#: Worse: every process's environment and command line, and the drone's config file.
THIEF = """\
EAPI=8
DESCRIPTION="Reads what a build should not be able to read"
HOMEPAGE="https://example.invalid/build-swarm"
LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
S="${WORKDIR}"

src_compile() {
	env | grep ^SWARM_ > seen.txt
	echo "thief ran as $(id -u)" > ran.txt
	{
		cat "@CONFIG@"
		for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do tr '\\\\0' '\\\\n' < "$f"; echo; done
	} > stolen.txt 2>/dev/null
	true
}

src_install() {
	insinto /usr/share/thief
	doins seen.txt ran.txt stolen.txt
}
"""


def blobs(path: Path, name: str = "") -> Iterator[tuple[str, bytes]]:
    """A file's bytes and, recursively, the decompressed contents of its archives (tar, zstd, bz2)."""
    data = path.read_bytes() if name == "" else b""
    yield from _unpacked(name or str(path), data)


def _unpacked(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    yield name, data
    if name.endswith(".bz2"):
        yield from _unpacked(name[:-4], bz2.decompress(data))
    elif name.endswith(".zst"):
        plain = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout
        yield from _unpacked(name[:-4], plain)
    elif name.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                handle = archive.extractfile(member)
                if handle is not None:
                    yield from _unpacked(f"{name}!{member.name}", handle.read())


@pytest.fixture(scope="session")
def portage_for_nobody() -> Iterator[Path]:
    """A venv with portage that the unprivileged build user can run.

    The test venv's interpreter may live where that user cannot reach it (e.g. pyenv under
    /root): then one is made from the system Python, with the same portage version.
    """
    if os.geteuid() != 0:
        pytest.skip("running builds as another user needs root")
    nobody = pwd.getpwnam("nobody")
    try:
        usable = subprocess.run([sys.executable, "-c", "import portage"], user=nobody.pw_uid,
                                group=nobody.pw_gid, extra_groups=[], cwd="/", capture_output=True,
                                check=False).returncode == 0
    except OSError:
        usable = False
    if usable:
        yield Path(sys.prefix)
        return
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system is None:
        pytest.skip("no system python3 for the build user's portage")
    venv = Path(tempfile.mkdtemp(prefix="swarm-build-venv-", dir="/var/tmp"))
    try:
        venv.chmod(0o755)
        subprocess.run([system, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
        subprocess.run([str(venv / "bin/pip"), "install", "-q", f"portage=={importlib.metadata.version('portage')}"],
                       check=True, capture_output=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.skip(f"cannot make a portage venv the build user can run: {exc}")
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the build user can enter (pytest's tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="swarm-secrets-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("mode", ["own-user", "build-user"])
def test_a_build_cannot_read_the_drone_token_or_the_redis_password(
        mode: str, sample_repo: Path, request: pytest.FixtureRequest, open_dir: Path, tmp_path: Path) -> None:
    """A real drone builds a hostile ebuild with real portage; no secret reaches the package or any file.

    own-user: the drone builds as itself (root here) with its secrets in its environment, the
    issue's setup; the build's environment is the allowlist. build-user: a root drone builds as
    ``nobody``; the thief also reads the drone's 0600 config file and every process's environment
    and command line, and gets nothing.
    """
    venv = request.getfixturevalue("portage_for_nobody") if mode == "build-user" else Path(sys.prefix)
    password, cpv = secrets.token_hex(16), ("app-misc/thief-1" if mode == "build-user" else "app-misc/env-spy-1")
    server = RedisProcess(tmp_path / "redis", password=password).start()
    try:
        _spy_run(mode, cpv, password, server.url, venv, sample_repo, open_dir, tmp_path)
    finally:
        server.stop()


def _spy_run(mode: str, cpv: str, password: str, redis_url: str, venv: Path, sample_repo: Path,
             base: Path, tmp_path: Path) -> None:
    env = {**isolated_env(tmp_path), "SWARM_LOG_FILE": str(tmp_path / "logs" / "swarmctl.log"),
           "SWARM_REDIS_URL": redis_url}
    token = run_cli(["drone", "enroll", "spy"], env).stdout.strip()
    run_cli(["queue", "add", cpv], env)
    pkgdir = base / "binhost"
    pkgdir.mkdir()
    port = free_port()
    spawn = Spawner(env, tmp_path)
    try:
        spawn(["binhost", "serve", "--dir", str(pkgdir), "--listen", f"127.0.0.1:{port}"], name="binhost")
        config = tmp_path / "drone.yml"
        drone_env = {"SWARM_DRONE_TOKEN": token}
        settings = {"drone": {"name": "spy", "builder": "portage", "prefix": str(base / "prefix"),
                              "state_dir": str(base / "state"), "poll_interval": 0.2,
                              "build_user": "nobody" if mode == "build-user" else ""},
                    "binhost": {"url": f"http://127.0.0.1:{port}"}}
        if mode == "build-user":
            settings["redis"] = {"url": redis_url}  # the password in the 0600 file, the token in the env
        overlay = copy_overlay_with(sample_repo, base / "overlay", {
            "app-misc/env-spy/env-spy-1.ebuild": ENV_SPY,
            "app-misc/thief/thief-1.ebuild": THIEF.replace("@CONFIG@", str(config))})
        make_prefix(base / "prefix", overlay, f"http://127.0.0.1:{port}", venv=venv)
        config.write_text(json.dumps(settings))
        config.chmod(0o600)
        if mode == "build-user":
            env_for_drone = {k: v for k, v in env.items() if k != "SWARM_REDIS_URL"}
            spawn.env = env_for_drone
        drone = spawn(["--config", str(config), "drone", "run", "--max-builds", "1"], env=drone_env, name="drone")
        assert drone.wait(240) == 0, spawn.output(drone)
        drone_output = spawn.output(drone)
    finally:
        spawn.stop_all()
    published = sorted(pkgdir.rglob("*.gpkg.tar"))
    assert len(published) == 1, drone_output

    # What the build saw and shipped, read back from the published package itself.
    shipped = dict(blobs(published[0]))
    pn = cpv.split("/")[1].rsplit("-", 1)[0]

    def installed(name: str) -> bytes:  # the image holds the prefix's path: match the end
        found = [data for member, data in shipped.items() if member.endswith(f"/usr/share/{pn}/{name}")]
        assert len(found) == 1, sorted(shipped)
        return found[0]

    ran = installed("ran.txt").decode()
    assert ran.split()[-1] == ("65534" if mode == "build-user" else str(os.geteuid())), ran
    assert installed("seen.txt") == b"", "the build saw SWARM_* variables"
    if mode == "build-user":
        stolen = installed("stolen.txt")
        assert b"ebuild.sh" in stolen  # positive control: the thief did read what it was allowed to
        assert config.read_text().count(password) == 1  # ... and the password was in the file it tried

    # Everything the run wrote: the prefix (vdb, build dirs, saved environments), PKGDIRs, logs, state.
    searched = 0
    for root in (base, tmp_path):
        for path in root.rglob("*"):
            if not path.is_file() or path.is_symlink() or path == config:
                continue
            for name, data in blobs(path):
                searched += 1
                assert token.encode() not in data, f"the drone token is in {name}"
                assert password.encode() not in data, f"the Redis password is in {name}"
    assert searched > 50


def test_build_environment_is_an_allowlist_and_never_passes_swarm_variables() -> None:
    base = {"PATH": "/bin", "HOME": "/root", "SWARM_DRONE_TOKEN": "t", "SWARM_REDIS_PASSWORD": "p",
            "AWS_SECRET_ACCESS_KEY": "k", "LD_PRELOAD": "/x.so", "MAKEOPTS": "-j2", "swarm_redis_url": "u"}
    assert build_environment(base) == {"PATH": "/bin", "HOME": "/root"}
    assert build_environment(base, ["MAKEOPTS", "SWARM_DRONE_TOKEN", "swarm_redis_url"]) == {
        "PATH": "/bin", "HOME": "/root", "MAKEOPTS": "-j2"}


def test_a_config_file_with_secrets_readable_by_others_is_warned_about(
        swarm_env: dict[str, str], registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token = registry.enroll("izar")
    config = tmp_path / "drone.yml"
    config.write_text(json.dumps({"drone": {"name": "izar", "token": token, "command": ["true"]}}))
    config.chmod(0o644)
    env = {**swarm_env, "SWARM_DRONE_POLL_INTERVAL": "0.1"}
    proc = run_cli(["--config", str(config), "drone", "run", "--max-builds", "0"], env, check=False)
    assert f"{config} holds secrets but is mode 0644" in proc.stderr and f"chmod 600 {config}" in proc.stderr
    config.chmod(0o600)
    proc = run_cli(["--config", str(config), "drone", "run", "--max-builds", "0"], env, check=False)
    assert "holds secrets" not in proc.stderr
    proc = run_cli(["drone", "run", "--name", "izar", "--token", token, "--command", "true", "--max-builds", "0"],
                   env, check=False)
    assert "--token is visible to every local user in ps" in proc.stderr


def test_a_build_user_that_cannot_reach_the_prefix_stops_the_drone_in_one_line(
        swarm_env: dict[str, str], registry, sample_repo: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Secure by default: a root drone does not quietly fall back to building as root."""
    if os.geteuid() != 0:
        pytest.skip("switching the build user needs root")
    private = tmp_path / "private"  # pytest's tmp dirs are 0700 root: nobody cannot enter them
    private.mkdir(mode=0o700)
    make_prefix(private / "prefix", sample_repo)
    token = registry.enroll("izar")
    proc = run_cli(["drone", "run", "--name", "izar", "--builder", "portage", "--max-builds", "0"],
                   {**swarm_env, "SWARM_DRONE_TOKEN": token, "SWARM_DRONE_PREFIX": str(private / "prefix"),
                    "SWARM_DRONE_BUILD_USER": "nobody"}, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"error: drone.build_user: nobody cannot reach {private}" in proc.stderr, proc.stderr
    assert (private / "prefix").stat().st_uid == 0  # nothing was handed over
