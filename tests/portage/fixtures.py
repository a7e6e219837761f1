"""Fixtures for tests with real portage (tests/portage, tests/security): the overlay, a drone, gpkg files.

Builds are the expensive part (about 3 s per trivial package), so one session-scoped
drone builds the packages every test reuses: ``app-misc/hello-1`` and
``app-misc/greeter-1`` (which also builds its dependencies ``dev-libs/libgreet-1`` and
``app-misc/greet-data-1`` into the drone's PKGDIR).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swarmctl.binhost.server import Gate, ServerSettings
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.overlay import install_overlay
from swarmctl.portage_env.prefix import make_prefix
from tests.portage.helpers import Drone, ServerThread


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


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(pkgdir: Path, gate: Gate, settings: ServerSettings | None = None) -> ServerThread:
        server = ServerThread(pkgdir, gate, settings)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def pkgdir(tmp_path: Path) -> Path:
    path = tmp_path / "binhost"
    path.mkdir()
    return path
