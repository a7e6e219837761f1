"""Fixtures for tests with real portage: the sample overlay, a drone prefix, real gpkg files.

Builds are the expensive part (about 3 s per trivial package), so one session-scoped
drone builds the packages every test reuses: ``app-misc/hello-1`` and
``app-misc/greeter-1`` (which also builds its dependencies ``dev-libs/libgreet-1`` and
``app-misc/greet-data-1`` into the drone's PKGDIR).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from swarmctl.binhost.server import BinhostServer, Gate, ServerSettings, make_server
from swarmctl.binhost.signing import Keyring
from swarmctl.drone.builders import BuildResult
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.overlay import install_overlay
from swarmctl.portage_env.prefix import PortagePrefix, make_prefix
from tests.portage.signing_fixtures import keyring, keyrings  # noqa: F401 - fixtures

pytestmark = pytest.mark.portage


@dataclass
class Drone:
    """The session's drone prefix and what it built."""

    prefix: PortagePrefix
    builder: PortageBuilder
    results: dict[str, BuildResult]
    logs: Path

    def gpkg(self, cpv: str) -> Path:
        """A built package file for ``cpv`` (the target's artifact or a dependency's file)."""
        if cpv in self.results:
            return self.results[cpv].artifacts[0].path
        category, rest = cpv.split("/")
        pn = rest.rsplit("-", 1)[0]
        found = sorted((self.prefix.pkgdir / category / pn).glob(f"{rest}-*.gpkg.tar"))
        assert found, f"no package built for {cpv}"
        return found[0]


@pytest.fixture(scope="session")
def sample_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_overlay(tmp_path_factory.mktemp("overlay") / "swarm-sample")


@pytest.fixture(scope="session")
def drone(tmp_path_factory: pytest.TempPathFactory, sample_repo: Path) -> Drone:
    root = tmp_path_factory.mktemp("drone")
    prefix = make_prefix(root / "prefix", sample_repo)
    builder = PortageBuilder(prefix)
    results = {}
    for cpv in ("app-misc/hello-1", "app-misc/greeter-1"):
        result = builder.build(cpv, root / "logs" / f"{cpv.replace('/', '_')}.log", threading.Event())
        assert result.ok, f"{cpv}: {result.fault}: {result.reason}"
        results[cpv] = result
    return Drone(prefix=prefix, builder=builder, results=results, logs=root / "logs")


def snapshot(pkgdir: Path) -> dict[str, bytes | None]:
    """Every visible file under PKGDIR with its content (the index included)."""
    state: dict[str, bytes | None] = {}
    for path in sorted(pkgdir.rglob("*")):
        rel = path.relative_to(pkgdir).as_posix()
        if rel.startswith(".swarm-index.lock") or rel == ".swarm-tmp":
            continue
        state[rel] = path.read_bytes() if path.is_file() else None
    return state


class ServerThread:
    """A BinhostServer running in a thread, always shut down at teardown."""

    def __init__(self, pkgdir: Path, gate: Gate, settings: ServerSettings | None = None,
                 signing: Keyring | None = None) -> None:
        self.server: BinhostServer = make_server(pkgdir, "127.0.0.1:0", gate, settings, keyring=signing)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def serve() -> Iterator[type[ServerThread]]:
    started: list[ServerThread] = []

    def start(pkgdir: Path, gate: Gate, settings: ServerSettings | None = None,
              signing: Keyring | None = None) -> ServerThread:
        server = ServerThread(pkgdir, gate, settings, signing)
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.stop()


@pytest.fixture
def pkgdir(tmp_path: Path) -> Path:
    path = tmp_path / "binhost"
    path.mkdir()
    return path


def copy_overlay_with(repo: Path, dest: Path, ebuilds: dict[str, str]) -> Path:
    """A copy of the sample overlay plus extra ebuilds ``{"cat/pn/pn-1.ebuild": text}``."""
    shutil.copytree(repo, dest)
    for rel, text in ebuilds.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return dest
