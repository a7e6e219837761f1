"""Serving the index to many clients: Packages.gz, If-Modified-Since, TTL, emaint's own check."""

from __future__ import annotations

import gzip
import http.client
import urllib.parse
from pathlib import Path

import pytest

from swarmctl.binhost.index import PackagesIndex, emaint_check
from swarmctl.binhost.publish import Publisher
from swarmctl.binhost.server import ServerSettings
from tests.helpers import wait_until
from tests.portage.test_portage_client import GREETER_CLOSURE, OpenGate

pytestmark = pytest.mark.portage


def request(url: str, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes, int]:
    """Status, headers, body and the reply's size on the wire (status line + headers + body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        reply = conn.getresponse()
        body = reply.read()
        head = f"HTTP/1.1 {reply.status} {reply.reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in reply.getheaders()) + "\r\n"
        return reply.status, dict(reply.getheaders()), body, len(head.encode()) + len(body)
    finally:
        conn.close()


def test_index_is_served_compressed_with_last_modified_304_and_ttl(drone, pkgdir: Path, serve, keyring) -> None:  # type: ignore[no-untyped-def]
    server = serve(pkgdir, OpenGate(), ServerSettings(index_ttl=900), signing=keyring)
    publisher = server.server.publisher
    publisher.publish_file(drone.gpkg(GREETER_CLOSURE[0]), GREETER_CLOSURE[0])
    status, headers, plain, _ = request(server.url, "/Packages")
    assert status == 200
    status, gz_headers, packed, _ = request(server.url, "/Packages.gz")
    assert status == 200 and gzip.decompress(packed) == plain
    index = PackagesIndex.parse(plain.decode())
    assert index.header["TTL"] == "900"
    assert headers["Last-Modified"] == gz_headers["Last-Modified"]
    for name in ("/Packages", "/Packages.gz"):
        for method in ("GET", "HEAD"):
            status, _, body, wire = request(server.url, name, method, **{"If-Modified-Since": headers["Last-Modified"]})
            assert (status, body) == (304, b"") and wire < 1024
    publisher.publish_file(drone.gpkg(GREETER_CLOSURE[1]), GREETER_CLOSURE[1])
    # A write within the same second keeps its Last-Modified: it is written again, newer,
    # once the second is over (the restamp), so a client sees it within about a second.
    assert wait_until(lambda: request(server.url, "/Packages.gz", **{
        "If-Modified-Since": headers["Last-Modified"]})[0] == 200, timeout=3)
    status, newer, packed, _ = request(server.url, "/Packages.gz", **{"If-Modified-Since": headers["Last-Modified"]})
    assert status == 200 and newer["Last-Modified"] != headers["Last-Modified"]
    assert len(PackagesIndex.parse(gzip.decompress(packed).decode()).entries) == 2
    assert request(server.url, "/KEYS.asc")[0] == 404  # the CLI publishes it; this bare server has none yet
    keyring.publish(pkgdir)
    status, _, keys, _ = request(server.url, "/KEYS.asc")
    assert status == 200 and keys.startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_emaint_binhost_check_is_clean_after_publishes_and_a_reindex(drone, pkgdir: Path, keyring) -> None:  # type: ignore[no-untyped-def]
    from swarmctl.binhost.index import reindex

    publisher = Publisher(pkgdir, keyring=keyring)
    publisher.store.close()  # no restamp: the index may change only through this test's own writes
    keyring.publish(pkgdir)
    for cpv in GREETER_CLOSURE:
        publisher.publish_file(drone.gpkg(cpv), cpv)
        before = (pkgdir / "Packages").read_bytes()
        assert emaint_check(pkgdir, prefix_root=drone.prefix.root) == []
        assert (pkgdir / "Packages").read_bytes() == before  # the check never rewrites the real index
    assert reindex(pkgdir, prefix_root=drone.prefix.root) == 3
    assert emaint_check(pkgdir, prefix_root=drone.prefix.root) == []
    index = PackagesIndex.read(pkgdir / "Packages")  # negative control: a file the index lacks
    index.remove(next(path for path in index.entries if "greeter-1" in path))
    index.write(pkgdir / "Packages")
    problems = emaint_check(pkgdir, prefix_root=drone.prefix.root)
    assert any("app-misc/greeter-1' is not in Packages" in p for p in problems), problems
