"""Uploads end to end: real gpkg files, the HTTP binhost, the Redis queue and registry.

Every refused upload must leave PKGDIR and its Packages index byte-for-byte
unchanged and no temp file behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from swarmctl import keys
from swarmctl.binhost.client import BinhostClient, BinhostPublisher
from swarmctl.binhost.index import PackagesIndex, verify
from swarmctl.binhost.publish import Publisher
from swarmctl.binhost.server import QueueGate, ServerSettings
from swarmctl.config import Config
from swarmctl.drone.builders import BuildResult, artifact_for
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.portage.helpers import snapshot

pytestmark = pytest.mark.portage
HELLO, GREETER = "app-misc/hello-1", "app-misc/greeter-1"


class Swarm:
    """A queue with two claimed jobs (hello and greeter, both owned by drone d1)."""

    def __init__(self, client: redis.Redis, config: Config) -> None:
        self.queue = Queue(client, config)
        self.registry = DroneRegistry(client, config)
        self.token = self.registry.enroll("d1")
        self.other_token = self.registry.enroll("d2")
        self.queue.add([JobSpec(HELLO), JobSpec(GREETER)])
        self.leases = {}
        for _ in range(2):
            claim = self.queue.claim("d1", self.token)
            assert claim is not None
            self.leases[claim.cpv] = claim.lease
        self.gate = QueueGate(self.registry, self.queue)


@pytest.fixture
def swarm(redis_client: redis.Redis, config: Config) -> Swarm:
    return Swarm(redis_client, config)


@pytest.fixture
def binhost(swarm: Swarm, pkgdir: Path, serve):
    return serve(pkgdir, swarm.gate, ServerSettings(max_upload_bytes=1024 * 1024, read_timeout=5.0))


def client(url: str, drone: str = "d1", token: str = "") -> BinhostClient:
    return BinhostClient(url, drone, token, attempts=1, timeout=10)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_untouched(pkgdir: Path, before: dict[str, bytes | None]) -> None:
    assert snapshot(pkgdir) == before
    assert list((pkgdir / ".swarm-tmp").iterdir()) == []


def test_real_gpkg_is_accepted_published_indexed_and_completed(drone, swarm, binhost, pkgdir) -> None:
    path = drone.gpkg(HELLO)
    verdict = client(binhost.url, token=swarm.token).upload(path, HELLO, swarm.leases[HELLO], sha256=sha(path),
                                                            duration=3.5)
    assert verdict.accepted and verdict.status == 201, verdict.reason
    assert verdict.payload["path"] == "app-misc/hello/hello-1-1.gpkg.tar" and verdict.payload["queue"] == "ok"
    published = pkgdir / "app-misc/hello/hello-1-1.gpkg.tar"
    assert published.read_bytes() == path.read_bytes()
    entry = PackagesIndex.read(pkgdir / "Packages").entries["app-misc/hello/hello-1-1.gpkg.tar"]
    assert entry["CPV"] == HELLO and entry["SIZE"] == str(path.stat().st_size)
    assert entry["SHA256"] == sha(path) and entry["MD5"] and entry["SHA1"] and entry["BUILD_ID"] == "1"
    assert swarm.queue.get(HELLO).state == "built"
    assert verify(pkgdir, check_manifests=True).ok
    assert list((pkgdir / ".swarm-tmp").iterdir()) == []


def flipped_copy(path: Path, dest: Path) -> Path:
    """A copy with one bit flipped in the middle of the image member (its content, not a header)."""
    import tarfile

    with tarfile.open(path) as tar:
        image = next(m for m in tar.getmembers() if "/image.tar" in m.name)
    data = bytearray(path.read_bytes())
    data[image.offset_data + image.size // 2] ^= 0x01
    dest.write_bytes(bytes(data))
    return dest


def raw_put(url: str, headers: dict[str, str], body: bytes, close_early: bool = False) -> tuple[int, dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = "PUT /upload HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(head.encode() + b"\r\n" + body)
        if close_early:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1])


def headers_for(swarm: Swarm, cpv: str, path: Path, **over: str) -> dict[str, str]:
    values = {"X-Swarm-Drone": "d1", "X-Swarm-Token": swarm.token, "X-Swarm-Lease": swarm.leases.get(cpv, "x"),
              "X-Swarm-Cpv": cpv, "X-Swarm-Sha256": sha(path), "Content-Length": str(path.stat().st_size)}
    values.update(over)
    return values


@pytest.mark.parametrize("case", ["truncated", "flipped_byte", "wrong_checksum", "oversize", "cpv_escape",
                                  "cpv_mismatch", "wrong_token", "not_owner", "stale_lease", "duplicate"])
def test_refused_uploads_leave_no_trace(case: str, drone, swarm, binhost, pkgdir, tmp_path) -> None:
    hello = drone.gpkg(HELLO)
    if case == "duplicate":  # the same build id, other bytes, is already there (the job is still delegated)
        Publisher(pkgdir).publish_file(repacked(hello, tmp_path / hello.name), HELLO)
    before = snapshot(pkgdir)
    up = client(binhost.url, token=swarm.token)
    lease = swarm.leases[HELLO]
    if case == "truncated":
        body = hello.read_bytes()
        status, reply = raw_put(binhost.url, headers_for(swarm, HELLO, hello), body[: len(body) // 2],
                                close_early=True)
        assert (status, reply["code"]) == (400, "truncated")
    elif case == "flipped_byte":
        bad = flipped_copy(hello, tmp_path / hello.name)
        verdict = up.upload(bad, HELLO, lease, sha256=sha(bad))  # the checksum matches the damaged file
        assert (verdict.status, verdict.code) == (422, "bad_package") and "mismatch" in verdict.reason
    elif case == "wrong_checksum":
        verdict = up.upload(hello, HELLO, lease, sha256="0" * 64)
        assert (verdict.status, verdict.code) == (422, "checksum_mismatch")
    elif case == "oversize":
        big = tmp_path / "big.gpkg.tar"
        big.write_bytes(b"\0" * (2 * 1024 * 1024))
        verdict = up.upload(big, HELLO, lease, sha256=sha(big))
        assert (verdict.status, verdict.code) == (413, "too_large")
    elif case == "cpv_escape":
        status, reply = raw_put(binhost.url, headers_for(swarm, HELLO, hello, **{
            "X-Swarm-Cpv": "../../../etc/passwd-1"}), hello.read_bytes())
        assert (status, reply["code"]) == (400, "bad_request")
    elif case == "cpv_mismatch":  # hello's package declared as greeter's job (which d1 owns)
        verdict = up.upload(hello, GREETER, swarm.leases[GREETER], sha256=sha(hello))
        assert (verdict.status, verdict.code) == (422, "cpv_mismatch")
    elif case == "wrong_token":
        verdict = client(binhost.url, token="not-the-token").upload(hello, HELLO, lease, sha256=sha(hello))
        assert (verdict.status, verdict.code) == (401, "unauthorized")
    elif case == "not_owner":
        verdict = client(binhost.url, "d2", swarm.other_token).upload(hello, HELLO, lease, sha256=sha(hello))
        assert (verdict.status, verdict.code) == (409, "not_owner")
    elif case == "stale_lease":
        verdict = up.upload(hello, HELLO, "an-old-lease", sha256=sha(hello))
        assert (verdict.status, verdict.code) == (409, "not_owner")
    elif case == "duplicate":
        verdict = up.upload(hello, HELLO, lease, sha256=sha(hello))
        assert (verdict.status, verdict.code) == (409, "duplicate") and not verdict.payload["same_content"]
    assert_untouched(pkgdir, before)
    assert swarm.queue.get(HELLO).state == "delegated"
    refusals = {k: int(v) for k, v in swarm.queue.redis.hgetall(keys.STATS).items()
                if k.startswith("upload_rejected:")}
    assert sum(refusals.values()) >= 1, "the refusal was not counted for the metrics"


def repacked(path: Path, dest: Path) -> Path:
    """The same package with other container bytes (member times), so a different file that verifies."""
    with tarfile.open(path) as source, tarfile.open(dest, "w", format=tarfile.GNU_FORMAT) as out:
        for member in source.getmembers():
            member.mtime += 1000
            out.addfile(member, source.extractfile(member))
    return dest


def test_retry_of_a_publish_whose_completion_was_lost_is_accepted(drone, swarm, binhost, pkgdir) -> None:
    """The file is published and indexed but the job was never completed (the binhost died
    in between): the owner's retry of the same file is accepted and completes the job."""
    hello = drone.gpkg(HELLO)
    Publisher(pkgdir).publish_file(hello, HELLO)
    before = snapshot(pkgdir)
    verdict = client(binhost.url, token=swarm.token).upload(hello, HELLO, swarm.leases[HELLO], sha256=sha(hello))
    assert verdict.accepted and verdict.payload["queue"] == "ok", verdict
    assert snapshot(pkgdir) == before
    assert swarm.queue.get(HELLO).state == "built"


def test_replayed_upload_is_an_idempotent_duplicate(drone, swarm, binhost, pkgdir) -> None:
    """The reply to an accepted upload got lost; the drone sends it again after the job is built."""
    hello = drone.gpkg(HELLO)
    up = client(binhost.url, token=swarm.token)
    assert up.upload(hello, HELLO, swarm.leases[HELLO], sha256=sha(hello)).accepted
    before = snapshot(pkgdir)
    again = up.upload(hello, HELLO, swarm.leases[HELLO], sha256=sha(hello))
    assert (again.status, again.code, again.payload["same_content"]) == (409, "duplicate", True)
    assert_untouched(pkgdir, before)
    other = client(binhost.url, "d2", swarm.other_token).upload(hello, HELLO, "x", sha256="1" * 64)
    assert other.code == "not_owner"


def test_refusal_arrives_before_the_body_is_read(drone, swarm, binhost, pkgdir) -> None:
    """A wrong token on a huge declared upload is refused at once; no body is sent or stored."""
    host, port = binhost.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"PUT /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nX-Swarm-Drone: d1\r\n"
                     b"X-Swarm-Token: wrong\r\nX-Swarm-Lease: l\r\nX-Swarm-Cpv: app-misc/hello-1\r\n"
                     b"X-Swarm-Sha256: " + b"a" * 64 + b"\r\nContent-Length: 1000\r\n\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 401") and b"100 Continue" not in reply


def test_daemon_publisher_maps_verdicts(drone, swarm, binhost) -> None:
    from swarmctl.queue import Claim

    publisher = BinhostPublisher(client(binhost.url, token=swarm.token))
    result = BuildResult(ok=True, artifacts=[artifact_for(drone.gpkg(HELLO), HELLO)])
    claim = Claim(cpv=HELLO, lease=swarm.leases[HELLO], estimate=1.0, attempts=1)
    assert publisher.publish(claim, result, 2.0) == "ok"
    assert publisher.publish(claim, result, 2.0) == "ok"  # a replay: same content already there
    stale = Claim(cpv=GREETER, lease="old", estimate=1.0, attempts=1)
    greeter = BuildResult(ok=True, artifacts=[artifact_for(drone.gpkg(GREETER), GREETER)])
    assert publisher.publish(stale, greeter, 2.0) == "stale"


def test_concurrent_publishes_serialize_the_index(drone, pkgdir: Path) -> None:
    cpvs = [HELLO, GREETER, "dev-libs/libgreet-1", "app-misc/greet-data-1"]
    publishers = [Publisher(pkgdir) for _ in cpvs]  # separate stores: the file lock must serialize them
    errors: list[BaseException] = []

    def publish(pair: tuple[Publisher, str]) -> None:
        try:
            pair[0].publish_file(drone.gpkg(pair[1]), pair[1])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(pair,)) for pair in zip(publishers, cpvs, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    index = PackagesIndex.read(pkgdir / "Packages")
    assert index.cpvs() == set(cpvs) and index.header["PACKAGES"] == "4"
    assert verify(pkgdir).ok


def test_published_file_can_be_fetched_but_nothing_else(drone, swarm, binhost, pkgdir) -> None:
    import urllib.error
    import urllib.request

    Publisher(pkgdir).publish_file(drone.gpkg(HELLO), HELLO)
    data = urllib.request.urlopen(binhost.url + "/app-misc/hello/hello-1-1.gpkg.tar").read()
    assert data == drone.gpkg(HELLO).read_bytes()
    shutil.copy(drone.gpkg(HELLO), pkgdir / ".swarm-tmp" / "secret")
    for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/.swarm-tmp/secret", "/.swarm-index.lock",
                 "/app-misc/", "/app-misc/hello/..%2f..%2fPackages"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(binhost.url + path)
        assert info.value.code == 404, path


_UPLOADER = r"""
import http.client, sys, time
host, port, drone, token, lease, cpv, sha, path = sys.argv[1:9]
body = open(path, "rb").read()
conn = http.client.HTTPConnection(host, int(port))
conn.putrequest("PUT", "/upload")
for k, v in {"X-Swarm-Drone": drone, "X-Swarm-Token": token, "X-Swarm-Lease": lease, "X-Swarm-Cpv": cpv,
             "X-Swarm-Sha256": sha, "Content-Length": str(len(body))}.items():
    conn.putheader(k, v)
conn.endheaders()
conn.send(body[: len(body) // 2])
print("half sent", flush=True)
time.sleep(60)
"""



def test_uploader_killed_mid_body_leaves_no_partial_file(drone, swarm, binhost, pkgdir: Path) -> None:
    path = drone.gpkg(HELLO)
    before = snapshot(pkgdir)
    host, port = binhost.server.server_address[:2]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    uploader = subprocess.Popen([sys.executable, "-c", _UPLOADER, host, str(port), "d1", swarm.token,
                                 swarm.leases[HELLO], HELLO, sha, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert uploader.stdout is not None and uploader.stdout.readline().strip() == "half sent"
        uploader.send_signal(signal.SIGKILL)
        uploader.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and list((pkgdir / ".swarm-tmp").iterdir()):
            time.sleep(0.1)
        assert_untouched(pkgdir, before)
        assert swarm.queue.get(HELLO).state == "delegated"  # nothing was marked built
    finally:
        if uploader.poll() is None:
            uploader.kill()
            uploader.wait()
    assert json.dumps(snapshot(pkgdir), default=str) == json.dumps(before, default=str)


def test_upload_below_the_free_space_floor_is_refused_507_and_the_job_kept(drone, swarm, pkgdir, serve) -> None:
    """A binhost short of disk refuses before the body (507, with the free space); the drone's
    publisher gives the job back to be built later (not a failure) and the job is still its own."""
    from swarmctl.queue import Claim

    full = serve(pkgdir, swarm.gate, ServerSettings(min_free_bytes=2**60))
    before = snapshot(pkgdir)
    publisher = BinhostPublisher(client(full.url, token=swarm.token))
    result = BuildResult(ok=True, artifacts=[artifact_for(drone.gpkg(HELLO), HELLO)])
    claim = Claim(cpv=HELLO, lease=swarm.leases[HELLO], estimate=1.0, attempts=1)
    assert publisher.publish(claim, result, 2.0) == "retry-later"
    verdict = publisher.last_verdict
    assert verdict is not None and (verdict.status, verdict.code) == (507, "insufficient_storage")
    assert "MiB free" in verdict.reason and "binhost.min_free_mb" in verdict.reason
    assert_untouched(pkgdir, before)
    assert swarm.queue.owner_of(HELLO) == ("d1", swarm.leases[HELLO])


def test_the_drone_deletes_its_copy_once_the_binhost_has_accepted_it(drone, swarm, binhost, pkgdir, config,
                                                                     redis_client, tmp_path: Path) -> None:
    from swarmctl.drone.builders import CommandBuilder
    from swarmctl.drone.daemon import DroneDaemon
    from swarmctl.queue import Claim

    local = tmp_path / "drone-pkgdir"
    copies = {}
    for cpv in (HELLO, GREETER):
        copies[cpv] = local / drone.gpkg(cpv).name
        copies[cpv].parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(drone.gpkg(cpv), copies[cpv])
    daemon = DroneDaemon(redis_client, config, "d1", swarm.token, CommandBuilder(["true"]), tmp_path / "state",
                         publisher=BinhostPublisher(client(binhost.url, token=swarm.token)))

    accepted = Claim(cpv=HELLO, lease=swarm.leases[HELLO], estimate=1.0, attempts=1)
    assert daemon._deliver(accepted, BuildResult(ok=True, artifacts=[artifact_for(copies[HELLO], HELLO)]), 2.0).ok
    assert not copies[HELLO].exists() and (pkgdir / "app-misc/hello/hello-1-1.gpkg.tar").exists()
    refused = Claim(cpv=GREETER, lease="old", estimate=1.0, attempts=1)  # not ours: the binhost refuses it
    daemon._deliver(refused, BuildResult(ok=True, artifacts=[artifact_for(copies[GREETER], GREETER)]), 2.0)
    assert copies[GREETER].exists()
