"""Build targets and tree revisions (issue 15): config, per-target jobs, claims, status, drones."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import redis

from swarmctl import keys, metrics, tree
from swarmctl.cli.queue_cmd import _retree
from swarmctl.config import Config, load_config
from swarmctl.drone.builders import CommandBuilder
from swarmctl.drone.daemon import DroneDaemon
from swarmctl.events import Events
from swarmctl.exceptions import ConfigError
from swarmctl.graph import JobSpec
from swarmctl.integrity import suspects
from swarmctl.queue import Queue, for_target
from swarmctl.registry import DroneRegistry
from swarmctl.resolver import Resolution, ResolvedPackage
from swarmctl.status import as_json, gather_status
from swarmctl.target_status import record_sync
from swarmctl.targets import DEFAULT_TARGET
from tests.helpers import Spawner, run_cli, wait_until

TWO_TARGETS = """
targets:
  desktop:
    profile: default/linux/amd64
    make_conf: {USE: "X gtk"}
  server:
    chost: x86_64-pc-linux-gnu
    accept_keywords: "amd64 ~amd64"
    make_conf: {USE: "-X"}
    package_files: {package.use: ["app-misc/a -doc"]}
    world: [app-misc/a]
"""


@pytest.fixture
def farm(tmp_path: Path, swarm_env: dict[str, str]) -> tuple[Config, dict[str, str]]:
    """A two-target config (desktop, server) on the test Redis, and the env that names it."""
    path = tmp_path / "swarm.yml"
    path.write_text(TWO_TARGETS)
    env = {**swarm_env, "SWARM_CONFIG": str(path)}
    return load_config(environ=env), env


def test_config_mistakes_one_line_each_and_cli_exits_cleanly(tmp_path: Path, swarm_env: dict[str, str]) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("""
targets:
  Desktop: {}
  server:
    chost: "not a triple"
    make_conf: {USE: "a\\"b", lower: x}
    package_files: {package.foo: []}
    world: ["not an atom!"]
    colour: blue
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    lines = str(caught.value).splitlines()
    for needle in ("'Desktop'", "server.chost", "make_conf.USE", "'lower'", "package.foo", "server.world",
                   "'colour'"):
        assert sum(needle in line for line in lines) == 1, (needle, lines)
    assert len(lines) == 7
    done = run_cli(["queue", "list"], {**swarm_env, "SWARM_CONFIG": str(path)}, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr and "server.chost" in done.stderr


def test_jobs_per_target_claims_only_declared_targets_and_history_borrows(
        redis_client: redis.Redis, farm: tuple[Config, dict[str, str]]) -> None:
    config, _ = farm
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    specs = [JobSpec("app-misc/lib-1"), JobSpec("app-misc/app-1", build=["app-misc/lib-1"])]
    queue.add(for_target(specs, "desktop"), tree="abc123")
    queue.add(for_target(specs, "server"), tree="abc123")
    assert queue.counts()["needed"] == 4  # the same CPVs, once per target
    tokens = {n: registry.enroll(n) for n in ("dsk", "srv")}
    for name, token in tokens.items():
        registry.heartbeat(name, token, {"status": "idle"})
    claim = queue.claim("srv", tokens["srv"], targets=["server"])
    assert claim is not None and (claim.package, claim.target, claim.tree) == ("app-misc/lib-1", "server", "abc123")
    # The server's app waits for the server's lib only: nothing else of the server's is ready.
    assert queue.claim("srv", tokens["srv"], targets=["server"]) is None
    assert queue.complete(claim.cpv, "srv", tokens["srv"], claim.lease, 100.0) == "ok"
    desktop = queue.claim("dsk", tokens["dsk"], targets=["desktop"])
    assert desktop is not None and desktop.cpv == "app-misc/lib-1@desktop"
    built = queue.claim("srv", tokens["srv"], targets=["server"])
    assert built is not None and built.cpv == "app-misc/app-1@server"
    # A target with no history of a package borrows the other targets', marked as such.
    estimates = queue.history.target_estimates(["app-misc/lib-1@desktop", "app-misc/lib-1@server"])
    assert estimates["app-misc/lib-1@server"] == (100.0, "")
    assert estimates["app-misc/lib-1@desktop"] == (100.0, "borrowed from target server")
    # A target the config does not have is refused in one line, nothing queued.
    with pytest.raises(Exception, match="no target 'laptop'"):
        queue.add(for_target(specs, "laptop"))
    jobs = {j.cpv: j for j in queue.jobs(target="server")}
    assert set(jobs) == {"app-misc/lib-1@server", "app-misc/app-1@server"}
    assert jobs["app-misc/lib-1@server"].tree == "abc123"


def test_status_and_metrics_show_each_target_and_a_stalled_one(
        redis_client: redis.Redis, farm: tuple[Config, dict[str, str]]) -> None:
    config, _ = farm
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    queue.add(for_target([JobSpec("app-misc/a-1"), JobSpec("app-misc/b-1")], "desktop")
              + for_target([JobSpec("app-misc/a-1")], "server"))
    token = registry.enroll("dsk")
    assert queue.claim("dsk", token, targets=["desktop"]) is not None
    registry.heartbeat("dsk", token, {"status": "building", "targets": "desktop", "tree": "rev-b"})
    record_sync(redis_client, "desktop", 2, 0, "rev-a")
    report = as_json(gather_status(redis_client, config))
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["desktop"]["queue"]["delegated"] == 1 and targets["desktop"]["stalled"] is None
    assert targets["server"]["queue"]["needed"] == 1 and targets["server"]["drones"] == []
    assert "no drone declares it" in targets["server"]["stalled"]
    assert [a["code"] for a in report["attention"]].count("target_stalled") == 1
    assert targets["desktop"]["tree_mismatch"] == {"dsk": "rev-b"} and targets["desktop"]["world"] == 2
    assert any(a["code"] == "tree_mismatch" and "dsk is at rev-b" in a["message"] for a in report["attention"])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in metrics.SwarmCollector(redis_client, config).collect() for s in family.samples}
    assert samples[("swarm_target_jobs", (("state", "needed"), ("target", "server")))] == 1
    assert samples[("swarm_target_stalled", (("target", "server"),))] == 1
    assert samples[("swarm_target_stalled", (("target", "desktop"),))] == 0


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "HOME": "/nonexistent"}
                          ).stdout.strip()


def _git_repo(path: Path) -> tuple[Path, str, str]:
    """A git repository with two commits (old, new) of one file ``eb``; HEAD at new."""
    path.mkdir()
    _git(path, "init", "-q")
    (path / "eb").write_text("old\n")
    _git(path, "add", "eb")
    _git(path, "commit", "-qm", "old")
    old = _git(path, "rev-parse", "HEAD")
    (path / "eb").write_text("new\n")
    _git(path, "commit", "-qam", "new")
    return path, old, _git(path, "rev-parse", "HEAD")


def test_tree_revision_asks_git_only_when_the_tree_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo, old, new = _git_repo(tmp_path / "repo")
    branch = _git(repo, "symbolic-ref", "--short", "HEAD")
    calls: list[tuple[str, ...]] = []
    real_git = tree._git

    def counted(where: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
        calls.append(args)
        return real_git(where, *args)

    monkeypatch.setattr(tree, "_git", counted)
    assert [tree.tree_revision(repo) for _ in range(5)] == [new] * 5
    assert len(calls) == 1  # an unchanged tree: stats, not a subprocess per heartbeat
    (repo / "eb").write_text("newer\n")
    _git(repo, "commit", "-qam", "newer")  # changes done from outside are seen at once
    newer = _git(repo, "rev-parse", "HEAD")
    assert tree.tree_revision(repo) == newer
    _git(repo, "checkout", "-q", "--detach", old)
    assert tree.tree_revision(repo) == old
    _git(repo, "checkout", "-q", branch)
    assert tree.tree_revision(repo) == newer
    _git(repo, "pack-refs", "--all")  # the ref moves into packed-refs, then is moved there
    _git(repo, "update-ref", f"refs/heads/{branch}", new)
    assert tree.tree_revision(repo) == new == tree.tree_revision(repo)
    assert len(calls) == 5


def test_drone_builds_only_at_the_planned_tree(redis_client: redis.Redis, config: Config, tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo, old, new = _git_repo(tmp_path / "repo")
    _git(repo, "checkout", "-q", "--detach", old)  # the drone's tree is a revision behind
    config = config.with_overrides(drone__repo=str(repo), drone__poll_interval=0.05)
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    witness = tmp_path / "witness"
    builder = CommandBuilder(["sh", "-c", f"cat {repo}/eb >> {witness}"])
    queue.add([JobSpec("app-misc/caught-up-1")], tree=new)
    queue.add([JobSpec("app-misc/unknown-1")], tree="f" * 40)  # a revision no repository has
    daemon = DroneDaemon(redis_client, config, "izar", registry.enroll("izar"), builder, tmp_path / "state")
    runner = threading.Thread(target=daemon.run, kwargs={"max_builds": 3})
    runner.start()
    try:
        assert wait_until(lambda: queue.get("app-misc/caught-up-1").state == "built", 30)
        assert wait_until(lambda: redis_client.hget(keys.STATS, "tree-mismatch"), 30)
    finally:
        daemon.stopping.set()
        runner.join(30)
    assert witness.read_text() == "new\n"  # read at the job's revision, which the drone caught up to
    unknown = queue.get("app-misc/unknown-1")
    assert unknown.state == "needed" and unknown.attempts == 0  # handed back, never a failure
    assert "izar" in unknown.failed_on


def test_two_slots_never_move_the_tree_under_a_running_build(redis_client: redis.Redis, config: Config,
                                                             tmp_path: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo, old, new = _git_repo(tmp_path / "repo")
    _git(repo, "checkout", "-q", "--detach", old)
    witness, release = tmp_path / "witness", tmp_path / "release"
    script = tmp_path / "build.sh"  # reads the ebuild when it starts and again when it ends
    script.write_text(f'echo "$1 start $(cat {repo}/eb)" >> {witness}\n'
                      f'while [ ! -e {release} ]; do sleep 0.05; done\n'
                      f'echo "$1 end $(cat {repo}/eb)" >> {witness}\n')
    config = config.with_overrides(drone__repo=str(repo), drone__poll_interval=0.05, drone__slots=2)
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    queue.add([JobSpec("app-misc/at-old-1")], tree=old)
    queue.add([JobSpec("app-misc/at-new-1")], tree=new)
    daemon = DroneDaemon(redis_client, config, "izar", registry.enroll("izar"),
                         CommandBuilder(["sh", str(script), "{pn}"]), tmp_path / "state")
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        # Both slots took a job; the one that came second was given back, not checked out.
        assert wait_until(lambda: witness.exists() and redis_client.hget(keys.STATS, "tree-mismatch"), 30)
        (first,) = [line.split()[0] for line in witness.read_text().splitlines()]
        assert _git(repo, "rev-parse", "HEAD") == (old if first == "at-old" else new)
        release.touch()
        assert wait_until(lambda: queue.counts()["built"] == 2, 30)
    finally:
        release.touch()
        daemon.stopping.set()
        runner.join(30)
    # Each build read its own revision from start to end; the second caught up once the first ended.
    assert sorted(witness.read_text().splitlines()) == [
        "at-new end new", "at-new start new", "at-old end old", "at-old start old"]


def test_a_new_tree_retires_the_waiting_jobs_it_lacks_and_restamps_the_rest(
        redis_client: redis.Redis, config: Config, tmp_path: Path) -> None:
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    token = registry.enroll("izar")
    queue.add([JobSpec("app-misc/running-1")], tree="rev-a")
    running = queue.claim("izar", token)
    assert running is not None  # a running build keeps the revision its drone was handed
    queue.add([JobSpec("dev-libs/old-1"), JobSpec("app-misc/top-1", build=["dev-libs/old-1"]),
               JobSpec("app-misc/kept-1"), JobSpec("app-misc/gone-1")], tree="rev-a")
    repo = tmp_path / "repo"  # the new tree: kept-1 is not in world but its ebuild is still there
    (repo / "app-misc/kept").mkdir(parents=True)
    (repo / "app-misc/kept/kept-1.ebuild").write_text("EAPI=8\n")
    # Resolved at rev-b: top-1 now build-depends on new-1, old-1 is gone.
    resolution = Resolution(needed=(ResolvedPackage("dev-libs/new-1"),
                                    ResolvedPackage("app-misc/top-1", build_deps=("dev-libs/new-1",))))
    specs = resolution.job_specs()
    queue.add(specs, tree="rev-b")  # as queue sync does: add, then move what waits to the new tree
    report = _retree(queue, [(DEFAULT_TARGET, resolution, "rev-b", repo)], specs)
    assert sorted(report.retired) == ["app-misc/gone-1", "dev-libs/old-1"] and report.restored == []
    assert sorted(report.restamped) == ["app-misc/kept-1", "app-misc/top-1"]
    jobs = {j.cpv: j for j in queue.jobs()}
    assert {c: (j.state, j.tree) for c, j in jobs.items()} == {
        "app-misc/running-1": ("delegated", "rev-a"), "dev-libs/old-1": ("retired", "rev-a"),
        "app-misc/gone-1": ("retired", "rev-a"), "app-misc/kept-1": ("needed", "rev-b"),
        "app-misc/top-1": ("needed", "rev-b"), "dev-libs/new-1": ("needed", "rev-b")}
    assert jobs["dev-libs/old-1"].reason == "gone from the tree at rev-b (planned at rev-a)"
    retired = [e for e in Events(redis_client).since() if e.kind == "retired"]
    assert sorted(e.job for e in retired) == ["app-misc/gone-1", "dev-libs/old-1"]
    assert queue.counts()["retired"] == 2 == int(redis_client.hget(keys.STATS, "retired"))
    # top-1 waits for new-1 (its edge in the new tree), never for the retired old-1.
    assert not jobs["app-misc/top-1"].ready
    built = []
    while (claim := queue.claim("izar", token)) is not None:
        built.append(claim.cpv)
        queue.complete(claim.cpv, "izar", token, claim.lease, 1.0)
    assert built.index("dev-libs/new-1") < built.index("app-misc/top-1") and "app-misc/gone-1" not in built
    # A CPV back in a later tree is needed again; the running job is untouched throughout.
    (repo / "app-misc/gone").mkdir()
    (repo / "app-misc/gone/gone-1.ebuild").write_text("EAPI=8\n")
    again = _retree(queue, [(DEFAULT_TARGET, Resolution(needed=()), "rev-c", repo)], [])
    assert again.restored == ["app-misc/gone-1"] and again.retired == [] and again.restamped == []
    assert queue.get("app-misc/gone-1").state == "needed" and queue.get("app-misc/running-1").tree == "rev-a"
    assert suspects(redis_client)[0] == []  # the bookkeeping agrees with the facts


def test_drones_declaring_targets_build_only_those(spawn: Spawner, redis_client: redis.Redis,
                                                   farm: tuple[Config, dict[str, str]], tmp_path: Path) -> None:
    config, env = farm
    fast = {**env, "SWARM_DRONE_HEARTBEAT_INTERVAL": "0.3", "SWARM_DRONE_POLL_INTERVAL": "0.1"}
    run_cli(["queue", "add", "app-misc/a-1", "app-misc/b-1"], fast)  # every target
    run_cli(["queue", "add", "--target", "server", "app-misc/c-1"], fast)
    registry = DroneRegistry(redis_client, config)
    witness = tmp_path / "witness"
    for name, targets in (("dsk", ["desktop"]), ("both", ["desktop", "server"])):
        token = registry.enroll(name)
        spawn(["drone", "run", "--name", name, "--token", token, "--command",
               f"sh -c 'echo {name} {{target}} {{cpv}} >> {witness}'", *[f"--target={t}" for t in targets]],
              env=fast, name=name)
    queue = Queue(redis_client, config)
    assert wait_until(lambda: queue.counts()["built"] == 5, 60)
    lines = [line.split() for line in witness.read_text().splitlines()]
    assert sorted((t, c) for _, t, c in lines) == sorted(
        [("desktop", "app-misc/a-1"), ("desktop", "app-misc/b-1"), ("server", "app-misc/a-1"),
         ("server", "app-misc/b-1"), ("server", "app-misc/c-1")])
    assert all(target == "desktop" for drone, target, _ in lines if drone == "dsk")
    listed = json.loads(run_cli(["queue", "list", "--target", "server", "--json"], fast).stdout)
    assert sorted(j["cpv"] for j in listed) == ["app-misc/a-1@server", "app-misc/b-1@server", "app-misc/c-1@server"]
    refused = run_cli(["drone", "run", "--name", "dsk", "--token", "x"], fast, check=False)
    assert refused.returncode != 0 and "several targets" in (refused.stderr + refused.stdout)
