"""Binhost generations with real portage: promote, rollback, the gates, gc (issue 14).

One signed binhost per test: the greeter closure is generation 1; the session drone
builds app-misc/hello-1 once more (a second BUILD_ID), so a later generation can carry a rebuild.
"""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from swarmctl.binhost import generations as gens
from swarmctl.binhost import retention
from swarmctl.binhost.index import FileDigests, IndexStore, PackagesIndex, emaint_check, index_paths, reindex, verify
from swarmctl.binhost.publish import Publisher
from swarmctl.binhost.retention import gc
from swarmctl.binhost.signing import KEYS_NAME, Keyring
from swarmctl.portage_env.prefix import PortagePrefix, make_prefix
from tests.helpers import run_cli
from tests.portage.signing_fixtures import world_traversable_dir
from tests.portage.test_portage_client import GREETER_CLOSURE, OpenGate, emerge_binary
from tests.portage.test_signing import flip_in_image

pytestmark = pytest.mark.portage
HELLO = "app-misc/hello-1"


@pytest.fixture(scope="module")
def hello_builds(drone, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """Two builds of app-misc/hello-1 with different BUILD_IDs: the session drone's, and one more by it."""
    result = drone.builder.build(HELLO, tmp_path_factory.mktemp("rebuild") / "hello.log", threading.Event())
    assert result.ok, result.reason
    first, second = drone.gpkg(HELLO), result.artifacts[0].path
    assert first != second
    return first, second


@pytest.fixture
def binhost(drone, pkgdir: Path, keyring: Keyring) -> Publisher:  # type: ignore[no-untyped-def]
    """Generation 1 published: the greeter closure, signed; KEYS.asc in PKGDIR."""
    publisher = Publisher(pkgdir, keyring=keyring)
    for cpv in GREETER_CLOSURE:
        publisher.publish_file(drone.gpkg(cpv), cpv)
    keyring.publish(pkgdir)
    assert gens.promote(pkgdir).published
    return publisher


@pytest.fixture
def client_root() -> Iterator[Path]:
    root = world_traversable_dir("swarm-lc-client-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def fresh_client(root: Path, repo: Path, url: str, pkgdir: Path) -> PortagePrefix:
    return make_prefix(root, repo, url, binhost_keys=(pkgdir / KEYS_NAME).read_text(), verify_as_nobody=True)


def installed_build_id(client: PortagePrefix, cpv: str) -> str:
    return (client.vdb / cpv / "BUILD_ID").read_text().strip()


def test_promote_while_a_client_fetches_never_shows_a_mixed_view(binhost, hello_builds, pkgdir, serve,  # type: ignore[no-untyped-def]
                                                                  sample_repo, client_root) -> None:
    publisher = binhost
    publisher.publish_file(hello_builds[0], HELLO)
    assert gens.promote(pkgdir).published  # 2: closure + hello build A
    publisher.publish_file(hello_builds[1], HELLO)
    assert gens.promote(pkgdir).published  # 3: closure + both hello builds
    views = {frozenset(PackagesIndex.read(gens.resolve(pkgdir, str(n))).entries) for n in (2, 3)}
    served = serve(pkgdir, OpenGate())
    problems: list[str] = []
    stop = threading.Event()

    fetched: list[str] = []

    def fetch_once() -> None:
        for name in ("Packages", "Packages.gz"):
            with urllib.request.urlopen(f"{served.url}/{name}", timeout=10) as reply:
                data = reply.read()
            index = PackagesIndex.parse((gzip.decompress(data) if name.endswith(".gz") else data).decode())
            if frozenset(index.entries) not in views or index.header["PACKAGES"] != str(len(index.entries)):
                problems.append(f"{name}: a mixed or partial index ({len(index.entries)} entries)")
            for path in index.entries:  # every file it names is there
                head = urllib.request.Request(f"{served.url}/{path}", method="HEAD")
                with urllib.request.urlopen(head, timeout=10):
                    pass
            fetched.append(index.header[gens.GENERATION_KEY])

    def fetch() -> None:
        try:
            while not stop.is_set():
                fetch_once()
        except Exception as exc:  # a 404 or a broken body fails the test, never the thread silently
            problems.append(repr(exc))

    fetcher = threading.Thread(target=fetch)
    fetcher.start()
    client = fresh_client(client_root / "during", sample_repo, served.url, pkgdir)
    installing = threading.Thread(target=lambda: problems.extend(
        [] if (done := emerge_binary(client, "=app-misc/greeter-1")).returncode == 0 else [done.stdout[-2000:]]))
    installing.start()
    flips = 0
    while installing.is_alive():  # flip between generations 2 and 3 while both clients read
        gens.rollback(pkgdir)
        flips += 1
        time.sleep(0.05)
    stop.set()
    fetcher.join(60)
    assert problems == []
    assert flips >= 3 and {"2", "3"} <= set(fetched)
    assert (client.vdb / "app-misc/greeter-1").is_dir()
    # Drones read the staging index at URL/staging/, over the same files.
    with urllib.request.urlopen(f"{served.url}/staging/Packages", timeout=10) as reply:
        staging = PackagesIndex.parse(reply.read().decode())
    assert set(staging.entries) == set(PackagesIndex.read(gens.staging_index(pkgdir)).entries)
    some_path = next(iter(staging.entries))
    with urllib.request.urlopen(f"{served.url}/staging/{some_path}", timeout=10) as reply:
        assert reply.read() == (pkgdir / some_path).read_bytes()


def test_rollback_restores_what_a_client_installs(binhost, hello_builds, pkgdir, serve, sample_repo,  # type: ignore[no-untyped-def]
                                                  client_root, swarm_env) -> None:
    publisher = binhost
    first = publisher.publish_file(hello_builds[0], HELLO)
    assert gens.promote(pkgdir).published  # 2: hello build A
    second = publisher.publish_file(hello_builds[1], HELLO)
    assert gens.promote(pkgdir).published  # 3: hello build B too (portage picks the newest)
    served = serve(pkgdir, OpenGate())
    client = fresh_client(client_root / "before", sample_repo, served.url, pkgdir)
    assert emerge_binary(client, f"={HELLO}").returncode == 0
    assert installed_build_id(client, HELLO) == str(second.build_id)

    proc = run_cli(["binhost", "rollback", "--dir", str(pkgdir)], swarm_env)
    assert "generation 2 published again" in proc.stdout + proc.stderr
    client = fresh_client(client_root / "after", sample_repo, served.url, pkgdir)
    done = emerge_binary(client, f"={HELLO}")
    assert done.returncode == 0, done.stdout[-2000:]
    assert installed_build_id(client, HELLO) == str(first.build_id)
    listed = json.loads(run_cli(["binhost", "generations", "--json", "--dir", str(pkgdir)], swarm_env).stdout)
    assert [(g["id"], g["published"]) for g in listed] == [(1, False), (2, True), (3, False)]
    changes = json.loads(run_cli(["binhost", "diff", "2", "3", "--json", "--dir", str(pkgdir)], swarm_env).stdout)
    assert changes == {"added": [], "removed": [], "rebuilt": [HELLO]}


def test_a_failing_smoke_install_blocks_the_promote(binhost, hello_builds, pkgdir, swarm_env, config) -> None:  # type: ignore[no-untyped-def]
    published = binhost.publish_file(hello_builds[0], HELLO)
    # Altered after signing, its staging entry made to match: only a client's signature check can tell.
    target = pkgdir / published.rel_path
    target.write_bytes(flip_in_image(target.read_bytes()))
    store = IndexStore(pkgdir)
    with store.locked() as index:
        digests = FileDigests.of(target)
        index.entries[published.rel_path].update(SIZE=str(digests.size), MD5=digests.md5, SHA1=digests.sha1,
                                                 SHA256=digests.sha256)
        store.save(index)
    for writer in (binhost.store, store):
        writer.close()  # no restamp: only the promote below could change what clients get
    before = (pkgdir / "Packages").read_bytes()

    proc = run_cli(["binhost", "promote", "--dir", str(pkgdir)], swarm_env, check=False, timeout=600)
    assert proc.returncode == 1
    assert "NOT promoted" in proc.stderr and "smoke install" in proc.stderr and HELLO in proc.stderr
    assert "verification failed" in proc.stderr
    assert (pkgdir / "Packages").read_bytes() == before  # clients still get generation 1
    newest = gens.load(pkgdir, gens.generation_ids(pkgdir)[-1])
    assert newest.state == "rejected" and gens.published_id(pkgdir) == 1
    from swarmctl.status import binhost_attention

    config.binhost.dir = str(pkgdir)
    attention = binhost_attention(config)
    assert [a.code for a in attention if a.severity == "critical"] == ["promotion_blocked"]
    assert "smoke install" in attention[0].message


def test_gc_deletes_only_what_no_kept_generation_names(binhost, hello_builds, pkgdir, swarm_env,  # type: ignore[no-untyped-def]
                                                        monkeypatch) -> None:
    publisher = binhost
    old = publisher.publish_file(hello_builds[0], HELLO)
    assert gens.promote(pkgdir).published  # 2: build A
    publisher.publish_file(hello_builds[1], HELLO)
    assert gens.promote(pkgdir).published  # 3: builds A and B
    plan = gc(pkgdir, keep_generations=1, keep_instances=1)
    # A leaves staging but stays on disk: the published (3) and previous (2) generations name it.
    assert (plan.unstaged, plan.files, plan.generations) == ([old.rel_path], [], [1])
    assert gens.promote(pkgdir).published and gens.promote(pkgdir).published  # 4, 5: B only
    everything = {p.relative_to(pkgdir).as_posix() for p in pkgdir.rglob("*.gpkg.tar") if ".swarm" not in str(p)}

    proc = run_cli(["binhost", "gc", "--keep-generations", "1", "--keep-instances", "1", "--dry-run",
                    "--dir", str(pkgdir)], swarm_env)
    size = (pkgdir / old.rel_path).stat().st_size
    assert f"would delete {old.rel_path}" in proc.stdout and f"({size} bytes) freed" in proc.stdout
    assert (pkgdir / old.rel_path).exists() and gens.generation_ids(pkgdir) == [2, 3, 4, 5]

    plan = gc(pkgdir, keep_generations=1, keep_instances=1)
    assert plan.generations == [2, 3] and [p for p, _ in plan.files] == [old.rel_path]
    left = {p.relative_to(pkgdir).as_posix() for p in pkgdir.rglob("*.gpkg.tar") if ".swarm" not in str(p)}
    assert left == everything - {old.rel_path}
    assert verify(pkgdir, check_signatures=True).problems == []
    assert emaint_check(pkgdir) == []
    gens.rollback(pkgdir)  # the previous generation is whole
    assert gens.published_id(pkgdir) == 4 and verify(pkgdir).problems == []
    # A reindex of a staged binhost rebuilds staging (with portage) and leaves what clients see.
    published = (pkgdir / "Packages").read_bytes()
    staged = set(PackagesIndex.read(gens.staging_index(pkgdir)).entries)
    assert reindex(pkgdir) == len(staged) == 4
    assert set(PackagesIndex.read(gens.staging_index(pkgdir)).entries) == staged
    assert (pkgdir / "Packages").read_bytes() == published

    # gc unlinks with the index lock released: a publish (of the very file it deletes) goes on meanwhile.
    publisher.publish_file(hello_builds[0], HELLO)  # build A staged again: unstaged and deleted below
    unlinking, proceed = threading.Event(), threading.Event()
    real_discard = retention._discard

    def slow_discard(*args: Path | list[Path]) -> None:
        unlinking.set()
        assert proceed.wait(60)
        real_discard(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(retention, "_discard", slow_discard)
    with ThreadPoolExecutor(2) as pool:
        collecting = pool.submit(gc, pkgdir, keep_generations=1, keep_instances=1)
        try:
            assert unlinking.wait(60) and not (pkgdir / old.rel_path).exists()
            again = pool.submit(publisher.publish_file, hello_builds[0], HELLO).result(timeout=60)
        finally:
            proceed.set()
        assert [p for p, _ in collecting.result(timeout=60).files] == [old.rel_path] == [again.rel_path]
    assert not list((pkgdir / retention.GC_DIR).iterdir())
    indexes = [pkgdir / "Packages", gens.staging_index(pkgdir),
               *(gens.gen_dir(pkgdir, i) / "Packages" for i in gens.generation_ids(pkgdir))]
    assert old.rel_path in index_paths(gens.staging_index(pkgdir))
    assert all((pkgdir / rel_path).is_file() for index in indexes for rel_path in index_paths(index))
    assert verify(pkgdir, check_signatures=True).problems == []
