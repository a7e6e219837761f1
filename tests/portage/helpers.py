"""Helpers for tests with real portage: the session drone's record, PKGDIR snapshots, a threaded binhost."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from swarmctl.binhost.server import BinhostServer, Gate, ServerSettings, make_server
from swarmctl.drone.builders import BuildResult
from swarmctl.drone.portage_builder import PortageBuilder
from swarmctl.portage_env.prefix import PortagePrefix


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

    def __init__(self, pkgdir: Path, gate: Gate, settings: ServerSettings | None = None) -> None:
        self.server: BinhostServer = make_server(pkgdir, "127.0.0.1:0", gate, settings)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def copy_overlay_with(repo: Path, dest: Path, ebuilds: dict[str, str]) -> Path:
    """A copy of the sample overlay plus extra ebuilds ``{"cat/pn/pn-1.ebuild": text}``."""
    shutil.copytree(repo, dest)
    for rel, text in ebuilds.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return dest
