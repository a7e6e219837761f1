# ruff: noqa: F811 - the portage fixtures imported below are used as test parameters
"""Threat family: what reaches the binhost. Ownership, replays, traversal, size, slow clients.

Every refused upload leaves PKGDIR, its index and the directories around it byte-for-byte
unchanged; slow or idle clients never hold the server: other uploads and downloads are
still answered promptly while they try.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from swarmctl.binhost.client import BinhostClient
from swarmctl.binhost.publish import Publisher, PublishRefused
from swarmctl.binhost.server import ServerSettings
from swarmctl.config import Config
from tests.portage.fixtures import drone, pkgdir, sample_repo, serve  # noqa: F401 - fixtures
from tests.portage.test_publish import GREETER, HELLO, Swarm, headers_for, raw_put, sha
from tests.security.forge import forged_gpkg

pytestmark = pytest.mark.portage

#: Tight limits so slow clients are cut within a second or two.
SETTINGS = ServerSettings(max_upload_bytes=1024 * 1024, read_timeout=1.0, min_upload_rate=256 * 1024,
                          header_timeout=1.5, max_connections=48, max_connections_per_address=8)


@pytest.fixture
def swarm(redis_client: redis.Redis, config: Config) -> Swarm:
    return Swarm(redis_client, config)


@pytest.fixture
def binhost(swarm: Swarm, pkgdir: Path, serve):
    (pkgdir / "probe.txt").write_text("a file to GET while attackers try to hold the server\n")
    return serve(pkgdir, swarm.gate, SETTINGS)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def up(url: str, drone_name: str = "d1", token: str = "") -> BinhostClient:
    return BinhostClient(url, drone_name, token, attempts=1, timeout=10)


def whole_tree(root: Path) -> dict[str, bytes | None]:
    """Every file under ``root`` (PKGDIR's parent: catches anything written beside PKGDIR)."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*")) if ".swarm-index.lock" not in p.name}


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(address(url), timeout=10, source_address=(source, 0))
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or goes quiet for a second)."""
    sock.settimeout(1.0)
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except TimeoutError:
        pass
    return reply


def get_seconds(url: str, path: str = "/probe.txt") -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url + path, timeout=10) as reply:
        reply.read()
    return time.monotonic() - started


# -- ownership and replays -------------------------------------------------------------------------

def test_upload_for_a_job_the_drone_does_not_own(drone, swarm, binhost, pkgdir) -> None:
    hello = drone.gpkg(HELLO)
    before = whole_tree(pkgdir.parent)
    lease = swarm.leases[HELLO]
    verdicts = [up(binhost.url, "d2", swarm.other_token).upload(hello, HELLO, lease, sha256=sha(hello)),
                up(binhost.url, "d2", swarm.other_token).upload(hello, HELLO, "guess", sha256=sha(hello)),
                up(binhost.url, "d1", swarm.other_token).upload(hello, HELLO, lease, sha256=sha(hello))]
    # Another drone with its lease or a guess: not the owner; the owner's name with a wrong token: not it.
    assert [(v.code, v.status) for v in verdicts] == [("not_owner", 409), ("not_owner", 409), ("unauthorized", 401)]
    assert whole_tree(pkgdir.parent) == before
    assert swarm.queue.get(HELLO).state == "delegated"


def test_replayed_upload_after_the_job_moved_on(drone, swarm, binhost, pkgdir) -> None:
    """An old upload (old lease) replayed after the job was reclaimed and re-delegated."""
    hello = drone.gpkg(HELLO)
    old_lease = swarm.leases[HELLO]
    swarm.queue.reclaim("d1", None, "test: drone went silent")
    fresh = swarm.queue.claim("d2", swarm.other_token)
    assert fresh is not None and fresh.cpv in (HELLO, GREETER)
    if fresh.cpv != HELLO:
        fresh = swarm.queue.claim("d2", swarm.other_token)
    assert fresh is not None and fresh.cpv == HELLO
    before = whole_tree(pkgdir.parent)
    replay = up(binhost.url, token=swarm.token).upload(hello, HELLO, old_lease, sha256=sha(hello))
    assert (replay.status, replay.code) == (409, "not_owner")
    assert whole_tree(pkgdir.parent) == before
    # The rightful owner's upload is accepted; replaying it afterwards changes nothing.
    ok = up(binhost.url, "d2", swarm.other_token).upload(hello, HELLO, fresh.lease, sha256=sha(hello))
    assert ok.accepted, ok.reason
    after = whole_tree(pkgdir.parent)
    for drone_name, token, lease in (("d2", swarm.other_token, fresh.lease), ("d1", swarm.token, old_lease)):
        again = up(binhost.url, drone_name, token).upload(hello, HELLO, lease, sha256=sha(hello))
        assert again.status == 409 and again.code in ("duplicate", "not_owner"), again
    assert whole_tree(pkgdir.parent) == after
    assert swarm.queue.get(HELLO).built_by == "d2"


def test_keep_alive_request_does_not_inherit_the_previous_checks(drone, swarm, binhost, pkgdir) -> None:
    """Two requests on one connection: the second is checked on its own headers."""
    hello = drone.gpkg(HELLO)
    body = hello.read_bytes()
    good = headers_for(swarm, HELLO, hello)
    with connect(binhost.url) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in good.items())
        sock.sendall(f"PUT /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n{head}\r\n".encode())
        assert sock.recv(64).startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            reply += sock.recv(65536)
        assert b" 201 " in reply.split(b"\r\n", 1)[0]
        forged = {**good, "X-Swarm-Token": "wrong", "X-Swarm-Cpv": GREETER, "X-Swarm-Sha256": "a" * 64}
        head = "".join(f"{k}: {v}\r\n" for k, v in forged.items())
        sock.sendall(f"PUT /upload HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
        second = read_reply(sock)
    assert second.startswith(b"HTTP/1.1 401"), second[:200]


# -- traversal ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cpv", [
    "../../../etc/passwd-1", "app-misc/../../../x-1", "app-misc/hello-1/../../../../tmp/x-1", "/etc/passwd-1",
    "app-misc/..%2f..%2fx-1", "app-misc/hello-1\\..\\..\\x", "./app-misc/hello-1", "app-misc/.hidden-1",
    "app-misc/hello-1/", "app-misc//hello-1", "app-misc/hel lo-1", "..\\x/y-1", ".../x-1", "..-1/x-1",
])
def test_traversal_in_the_cpv_header(cpv: str, drone, swarm, binhost, pkgdir) -> None:
    hello = drone.gpkg(HELLO)
    before = whole_tree(pkgdir.parent)
    status, reply = raw_put(binhost.url, headers_for(swarm, HELLO, hello, **{"X-Swarm-Cpv": cpv}), hello.read_bytes())
    assert (status, reply["code"]) in ((400, "bad_request"), (409, "not_owner")), (status, reply)
    assert whole_tree(pkgdir.parent) == before


def test_forged_gpkg_helper_makes_packages_that_verify(drone, tmp_path: Path) -> None:
    """The control for the next test: a re-packed, unchanged package is still accepted."""
    same = forged_gpkg(drone.gpkg(HELLO), tmp_path / "hello-1-1.gpkg.tar")
    published = Publisher(tmp_path / "pkgdir").publish_file(same, HELLO)
    assert published.rel_path == "app-misc/hello/hello-1-1.gpkg.tar"


@pytest.mark.parametrize("case", ["category", "pf", "build_id", "top_dir", "metadata_member", "absolute_member"])
def test_traversal_in_names_inside_the_gpkg(case: str, drone, swarm, binhost, pkgdir, tmp_path) -> None:
    forged: dict[str, Any] = {
        "category": {"metadata": {"CATEGORY": "../../../tmp"}},
        "pf": {"metadata": {"PF": "../../../hello-1"}},
        "build_id": {"metadata": {"BUILD_ID": "1/../../../../escape"}},
        "top_dir": {"top": "../../../escape-1-1"},
        "metadata_member": {"extra_member": "../../../../escape-member"},
        "absolute_member": {"extra_member": f"{tmp_path}/absolute-escape"},
    }[case]
    bad = forged_gpkg(drone.gpkg(HELLO), tmp_path / "forged.gpkg.tar", **forged)
    before = whole_tree(pkgdir.parent)
    outside = {p.name for p in tmp_path.parent.iterdir()}
    verdict = up(binhost.url, token=swarm.token).upload(bad, HELLO, swarm.leases[HELLO], sha256=sha(bad))
    # Since the content policy, a metadata tar with members outside metadata/ is refused too.
    assert not verdict.accepted, verdict
    assert verdict.code in ("bad_package", "cpv_mismatch", "policy"), verdict
    assert whole_tree(pkgdir.parent) == before
    assert not (tmp_path / "absolute-escape").exists()
    assert {p.name for p in tmp_path.parent.iterdir()} == outside
    assert not list(tmp_path.parent.parent.glob("escape*"))


# -- size ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("length", "code"), [
    (str(2 * 1024 * 1024), "too_large"), ("99999999999999999999999", "too_large"), ("-5", "bad_request"),
    ("0", "bad_request"), ("1e9", "bad_request"), ("0x10", "bad_request"),
])
def test_oversize_and_bogus_lengths_are_refused_before_the_body(length: str, code: str, drone, swarm,
                                                                binhost, pkgdir, sockets) -> None:
    hello = drone.gpkg(HELLO)
    before = whole_tree(pkgdir.parent)
    sock = connect(binhost.url)
    sockets.append(sock)
    headers = headers_for(swarm, HELLO, hello, **{"Content-Length": length})
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    started = time.monotonic()
    sock.sendall(f"PUT /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n{head}\r\n".encode())
    reply = read_reply(sock)
    assert time.monotonic() - started < 1.0
    assert b"100 Continue" not in reply and f'"code": "{code}"'.encode() in reply, reply[:300]
    assert whole_tree(pkgdir.parent) == before


def test_body_longer_than_declared_is_not_read_past_the_declaration(drone, swarm, binhost, pkgdir) -> None:
    hello = drone.gpkg(HELLO)
    with connect(binhost.url) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers_for(swarm, HELLO, hello).items())
        sock.sendall(f"PUT /upload HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + hello.read_bytes()
                     + b"\0" * 4096 * 64)
        first = read_reply(sock).split(b"\r\n\r\n", 1)[1].split(b"\n", 1)[0]  # the rest answers the excess
    reply = json.loads(first)
    assert reply["status"] == "accepted" and reply["size"] == hello.stat().st_size
    assert (pkgdir / reply["path"]).read_bytes() == hello.read_bytes()


def test_chunked_upload_is_refused(drone, swarm, binhost, pkgdir) -> None:
    hello = drone.gpkg(HELLO)
    headers = headers_for(swarm, HELLO, hello)
    del headers["Content-Length"]
    headers["Transfer-Encoding"] = "chunked"
    status, reply = raw_put(binhost.url, headers, b"5\r\nhello\r\n0\r\n\r\n")
    assert (status, reply["code"]) == (411, "length_required")


# -- slow and idle clients -----------------------------------------------------------------------------

def _trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    for byte in data:
        if stop.wait(every):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (TimeoutError, OSError) as exc:
        return not isinstance(exc, TimeoutError)


def test_slow_loris_headers_are_cut_and_do_not_hold_the_server(drone, swarm, binhost, pkgdir, sockets) -> None:
    """Six clients trickle their headers a byte every 0.2 s; everyone else is served meanwhile."""
    hello = drone.gpkg(HELLO)
    stop = threading.Event()
    head = ("PUT /upload HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers_for(swarm, HELLO, hello).items())).encode()
    threads = []
    started = time.monotonic()
    for _ in range(6):
        sock = connect(binhost.url, "127.0.0.2")
        sockets.append(sock)
        thread = threading.Thread(target=_trickle, args=(sock, head, 0.2, stop), daemon=True)
        thread.start()
        threads.append(thread)
    try:
        time.sleep(0.3)
        latencies = [get_seconds(binhost.url) for _ in range(5)]
        verdict = up(binhost.url, token=swarm.token).upload(hello, HELLO, swarm.leases[HELLO], sha256=sha(hello))
        assert verdict.accepted, verdict.reason
        assert max(latencies) < 0.5, latencies
        cut = [_closed_by_server(sock, SETTINGS.header_timeout + 2.0) for sock in sockets]
        assert all(cut), "a header trickler was still connected after the header deadline"
        assert time.monotonic() - started < SETTINGS.header_timeout + 3.0
        assert wait_for(lambda: binhost.server.open_connections() == 0, 3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_slow_loris_body_is_cut_and_does_not_hold_the_server(drone, swarm, binhost, pkgdir, sockets) -> None:
    """The owner itself trickles its body (authenticated: the only way to reach the body stage);
    an unauthenticated client trickling a body is dropped after the refusal's short linger."""
    hello, greeter = drone.gpkg(HELLO), drone.gpkg(GREETER)
    before = whole_tree(pkgdir.parent)
    stop = threading.Event()
    owner = connect(binhost.url, "127.0.0.2")
    stranger = connect(binhost.url, "127.0.0.3")
    sockets += [owner, stranger]
    for sock, token in ((owner, swarm.token), (stranger, "wrong")):
        headers = headers_for(swarm, HELLO, hello, **{"X-Swarm-Token": token})
        sock.sendall(("PUT /upload HTTP/1.1\r\nHost: x\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
    threads = [threading.Thread(target=_trickle, args=(s, hello.read_bytes(), 0.1, stop), daemon=True)
               for s in (owner, stranger)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        latencies = [get_seconds(binhost.url) for _ in range(5)]
        assert max(latencies) < 0.5, latencies
        verdict = up(binhost.url, token=swarm.token).upload(greeter, GREETER, swarm.leases[GREETER],
                                                             sha256=sha(greeter))
        assert verdict.accepted, verdict.reason
        owner.settimeout(SETTINGS.read_timeout + 3)
        reply = owner.recv(65536)
        while b"}" not in reply:
            reply += owner.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408") and b'"timeout"' in reply, reply[:200]
        assert _closed_by_server(owner, 3) and _closed_by_server(stranger, 4)
        assert time.monotonic() - started < SETTINGS.read_timeout + 5
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    after = whole_tree(pkgdir.parent)
    assert set(after) - set(before) == {"binhost/app-misc/greeter", "binhost/app-misc/greeter/greeter-1-1.gpkg.tar",
                                        "binhost/Packages"} - set(before) | ({"binhost/app-misc"} - set(before))
    assert swarm.queue.get(HELLO).state == "delegated"
    assert list((pkgdir / ".swarm-tmp").iterdir()) == []


def test_many_idle_connections_cost_no_threads_and_lock_nobody_out(swarm, binhost, pkgdir, sockets) -> None:
    """200 idle sockets from one host: it gets its per-address share, the rest an instant 503;
    other hosts are served throughout; the idle ones are closed at the header deadline."""
    threads_before = threading.active_count()
    for _ in range(200):
        sockets.append(connect(binhost.url, "127.0.0.2"))
    time.sleep(0.3)
    assert threading.active_count() - threads_before <= SETTINGS.max_connections_per_address + 1
    assert binhost.server.open_connections() <= SETTINGS.max_connections_per_address
    latencies = [get_seconds(binhost.url) for _ in range(10)]
    assert max(latencies) < 0.5, latencies
    answers = []
    for sock in sockets:  # every socket ends: an instant 503, or closed unanswered at the header deadline
        sock.settimeout(SETTINGS.header_timeout + 2)
        answers.append(sock.recv(4096)[:12])
    assert set(answers) <= {b"HTTP/1.1 503", b""}, set(answers)
    assert answers.count(b"HTTP/1.1 503") >= 150, answers.count(b"HTTP/1.1 503")
    assert wait_for(lambda: binhost.server.open_connections() == 0, SETTINGS.header_timeout + 2)
    assert get_seconds(binhost.url) < 0.5


def test_a_nonpositive_build_id_is_refused(drone, tmp_path: Path) -> None:
    bad = forged_gpkg(drone.gpkg(HELLO), tmp_path / "neg.gpkg.tar", metadata={"BUILD_ID": "-1"})
    with pytest.raises(PublishRefused):
        Publisher(tmp_path / "pkgdir").publish_file(bad, HELLO)
