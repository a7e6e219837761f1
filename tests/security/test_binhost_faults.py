# ruff: noqa: F811 - the portage fixtures imported below are used as test parameters
"""Threat family: an unlucky binhost. kill -9 in the middle of a publish, a full disk.

A real ``swarmctl binhost serve`` process is killed (SIGKILL) at the two points where a
publish is half done -- the file linked but not indexed, and indexed but the job not yet
completed -- while a drone's client is uploading with its usual retries. The restarted
binhost recovers what was left, the drone's retry is accepted and the job is built. On a
full disk (a small tmpfs) the upload is refused with ``io_error`` (the drone keeps the job
and retries), nothing half-written is left, and once there is room again it is accepted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from swarmctl.binhost.client import BinhostClient, UploadVerdict, outcome_of
from swarmctl.binhost.index import UPLOAD_SHA256_KEY, FileDigests, PackagesIndex, verify
from swarmctl.binhost.server import ServerSettings
from swarmctl.binhost.signing import Keyring, sign_gpkg, signature_present
from swarmctl.config import Config
from tests.helpers import wait_until
from tests.portage.fixtures import drone, pkgdir, sample_repo, serve  # noqa: F401 - fixtures
from tests.portage.helpers import snapshot
from tests.portage.signing_fixtures import keyring, keyrings  # noqa: F401 - fixtures
from tests.portage.test_publish import HELLO, Swarm, sha

pytestmark = pytest.mark.portage

DEST = "app-misc/hello/hello-1-1.gpkg.tar"


@pytest.fixture
def swarm(redis_client: redis.Redis, config: Config) -> Swarm:
    return Swarm(redis_client, config)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answering(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/Packages", timeout=1).read()
    except urllib.error.HTTPError:
        return True  # 404 before the first publish: it answers
    except OSError:
        return False
    return True


def upload_in_background(url: str, path: Path, swarm: Swarm) -> tuple[threading.Thread, list[UploadVerdict]]:
    """The drone's upload with its retries (as the daemon runs it), in a thread."""
    verdicts: list[UploadVerdict] = []
    client = BinhostClient(url, "d1", swarm.token, attempts=12, base_delay=0.3, max_delay=1.5, timeout=30)
    thread = threading.Thread(target=lambda: verdicts.append(
        client.upload(path, HELLO, swarm.leases[HELLO], sha256=sha(path))), daemon=True)
    thread.start()
    return thread, verdicts


@pytest.mark.parametrize("point", ["linked", "indexed"])
def test_binhost_killed_mid_publish_recovers_and_the_retry_succeeds(point: str, drone, swarm, pkgdir, spawn,  # type: ignore[no-untyped-def]
                                                                   keyring: Keyring) -> None:
    hello = drone.gpkg(HELLO)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = ["binhost", "serve", "--dir", str(pkgdir), "--listen", f"127.0.0.1:{port}"]
    signing = {"SWARM_BINHOST_GNUPG_HOME": str(keyring.home)}
    first = spawn(args, env={**signing, "SWARM_TEST_BINHOST_PAUSE": point}, name="binhost-paused")
    assert wait_until(lambda: answering(url), timeout=20), spawn.output(first)
    thread, verdicts = upload_in_background(url, hello, swarm)
    assert wait_until(lambda: f"paused at {point}" in spawn.output(first), timeout=30), spawn.output(first)
    first.kill()  # SIGKILL, mid-publish
    first.wait(10)

    # What the crash left: the signed file in place, a .part upload file, and the index without
    # it ("linked") or with it but the job never completed ("indexed").
    assert signature_present(pkgdir / DEST) and not signature_present(hello)
    assert [p.suffix for p in (pkgdir / ".swarm-tmp").iterdir()] == [".part"]
    indexed = DEST in PackagesIndex.read(pkgdir / "Packages").entries
    assert indexed == (point == "indexed")
    assert swarm.queue.get(HELLO).state == "delegated"

    second = spawn(args, env=signing, name="binhost-restarted")
    thread.join(60)
    assert verdicts, "the drone's upload never finished"
    verdict = verdicts[0]
    assert verdict.accepted and verdict.attempts > 1, (verdict, spawn.output(second))
    assert outcome_of(verdict) == "ok"
    assert swarm.queue.get(HELLO).state == "built"
    assert list((pkgdir / ".swarm-tmp").iterdir()) == []
    entry = PackagesIndex.read(pkgdir / "Packages").entries[DEST]
    # The entry describes the signed bytes and still knows the drone's upload (its retry).
    assert entry["SHA256"] == FileDigests.of(pkgdir / DEST).sha256 != sha(hello)
    assert entry[UPLOAD_SHA256_KEY] == sha(hello)
    report = verify(pkgdir, check_manifests=True, check_signatures=True)
    assert report.ok, report.problems
    if point == "linked":
        assert "1 unindexed package(s) indexed" in spawn.output(second)
    assert "Traceback" not in spawn.output(first) + spawn.output(second)


def test_an_unindexed_file_that_does_not_verify_is_quarantined(drone, swarm, pkgdir, serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A leftover that is not a good package (here: one flipped byte) is moved aside, not published."""
    bad = pkgdir / DEST
    bad.parent.mkdir(parents=True)
    data = bytearray(drone.gpkg(HELLO).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    stale = pkgdir / ".swarm-tmp" / "upload-stale.part"
    stale.parent.mkdir()
    stale.write_bytes(b"half an upload")
    server = serve(pkgdir, swarm.gate)
    assert server.server.recovery.quarantined == [DEST]
    assert not bad.exists() and (pkgdir / ".swarm-quarantine" / DEST).read_bytes() == bytes(data)
    assert not stale.exists()
    assert DEST not in PackagesIndex.read(pkgdir / "Packages").entries
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{server.url}/.swarm-quarantine/{DEST}", timeout=5)


@pytest.mark.parametrize("signer", ["unsigned", "other_key", "own_key"])
def test_an_unindexed_file_is_indexed_only_if_the_binhost_signed_it(signer: str, drone, swarm, pkgdir, serve,  # type: ignore[no-untyped-def]
                                                                    keyrings) -> None:
    """A power cut took the upload's temp file (and with it the SHA256 the drone declared),
    the linked file stayed: it is indexed only if it verifies with the binhost's own key (an
    intact package unsigned or signed by another key is moved aside), and then the drone's
    retry is known by its content, accepted and the job built."""
    leftover = pkgdir / DEST
    leftover.parent.mkdir(parents=True)
    shutil.copyfile(drone.gpkg(HELLO), leftover)
    own = keyrings()
    if signer != "unsigned":
        sign_gpkg(leftover, own if signer == "own_key" else keyrings())
    data = leftover.read_bytes()
    own.publish(pkgdir)
    server = serve(pkgdir, swarm.gate, signing=own)
    if signer != "own_key":
        assert server.server.recovery.quarantined == [DEST]
        assert (pkgdir / ".swarm-quarantine" / DEST).read_bytes() == data and not leftover.exists()
        assert DEST not in PackagesIndex.read(pkgdir / "Packages").entries
        return
    assert server.server.recovery.indexed == [DEST]
    client = BinhostClient(server.url, "d1", swarm.token, attempts=1, timeout=30)
    verdict = client.upload(drone.gpkg(HELLO), HELLO, swarm.leases[HELLO], sha256=sha(drone.gpkg(HELLO)))
    assert outcome_of(verdict) == "ok" and verdict.accepted, verdict
    assert swarm.queue.get(HELLO).state == "built"
    assert leftover.read_bytes() == data  # nothing signed or written again
    assert verify(pkgdir, check_manifests=True, check_signatures=True).ok


# -- a full disk -------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs as the binhost's PKGDIR (root only; always unmounted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "swarm-test-full", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` so that ``leave`` bytes stay free (rounded down to pages)."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as out:
        out.write(b"\0" * max(0, free - leave))
    assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize <= leave
    return filler


@pytest.mark.parametrize("where", ["body", "signing", "index"])
def test_a_full_disk_is_io_error_and_the_drone_keeps_the_job(where: str, drone, swarm, small_disk, serve,  # type: ignore[no-untyped-def]
                                                            keyring: Keyring) -> None:
    hello = drone.gpkg(HELLO)
    # "index" publishes unsigned: signing frees the upload's pages when it renames its copy
    # over it, which would leave room for the index.
    binhost = serve(small_disk, swarm.gate, ServerSettings(max_upload_bytes=1024 * 1024, read_timeout=5.0),
                    signing=None if where == "index" else keyring)
    if where != "index":
        keyring.publish(small_disk)  # KEYS.asc, as `binhost serve` writes it
    page = os.statvfs(small_disk).f_frsize
    body_pages = -(-hello.stat().st_size // page)
    # "body": no room at all; "signing", "index": room for the upload's pages only (not for the
    # signed copy, not for Packages).
    filler = fill(small_disk, 0 if where == "body" else body_pages * page)
    before = snapshot(small_disk)
    client = BinhostClient(binhost.url, "d1", swarm.token, attempts=1, timeout=10)
    verdict = client.upload(hello, HELLO, swarm.leases[HELLO], sha256=sha(hello))
    assert (verdict.status, verdict.code) == (500, "io_error"), verdict
    assert "disk is full" in verdict.reason
    assert verdict.retryable and outcome_of(verdict) == "retry-later"  # not a failed build
    assert snapshot(small_disk) == before
    assert list((small_disk / ".swarm-tmp").iterdir()) == []
    assert swarm.queue.get(HELLO).state == "delegated"
    with contextlib.suppress(FileNotFoundError):
        filler.unlink()
    again = client.upload(hello, HELLO, swarm.leases[HELLO], sha256=sha(hello))
    assert again.accepted, again
    assert verify(small_disk, check_manifests=True, check_signatures=where != "index").ok
