"""``swarmctl binhost serve|reindex|verify`` as a user runs them."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from swarmctl.binhost.publish import Publisher
from tests.helpers import free_port, run_cli, wait_until

pytestmark = pytest.mark.portage


def test_verify_and_reindex(drone, pkgdir: Path, swarm_env: dict[str, str]) -> None:
    Publisher(pkgdir).publish_file(drone.gpkg("app-misc/hello-1"), "app-misc/hello-1")
    ok = run_cli(["binhost", "verify", "--dir", str(pkgdir), "--manifests"], swarm_env)
    assert "1 package(s) verified" in ok.stdout + ok.stderr
    (pkgdir / "Packages").unlink()
    bad = run_cli(["binhost", "verify", "--dir", str(pkgdir)], swarm_env, check=False)
    assert bad.returncode != 0 and "no index" in bad.stdout + bad.stderr
    done = run_cli(["binhost", "reindex", "--dir", str(pkgdir)], swarm_env)
    assert "indexed 1 package(s)" in done.stdout + done.stderr
    run_cli(["binhost", "verify", "--dir", str(pkgdir)], swarm_env)


def test_long_binhost_work_shows_progress_on_a_terminal_only(  # type: ignore[no-untyped-def]
        drone, pkgdir: Path, swarm_env: dict[str, str]) -> None:
    Publisher(pkgdir).publish_file(drone.gpkg("app-misc/hello-1"), "app-misc/hello-1")
    tty = {**swarm_env, "TTY_COMPATIBLE": "1", "COLUMNS": "120"}
    shown = run_cli(["binhost", "verify", "--dir", str(pkgdir), "--manifests"], tty).stdout
    assert "verifying with manifests" in shown and "1 of 1" in shown, shown
    shown = run_cli(["binhost", "reindex", "--dir", str(pkgdir)], tty).stdout
    assert "indexing with emaint" in shown and "hashing" in shown, shown
    for args in (["verify", "--manifests"], ["reindex"]):
        piped = run_cli(["binhost", *args, "--dir", str(pkgdir)], swarm_env).stdout
        quiet = run_cli(["binhost", *args, "--quiet", "--dir", str(pkgdir)], tty).stdout
        for out in (piped, quiet):
            assert "verifying" not in out and "hashing" not in out and len(out.splitlines()) == 1, out


def test_missing_dir_is_one_line(swarm_env: dict[str, str], tmp_path: Path) -> None:
    done = run_cli(["binhost", "reindex", "--dir", str(tmp_path / "nope")], swarm_env, check=False)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1


def test_serve_answers_portage_clients(drone, pkgdir: Path, spawn) -> None:
    Publisher(pkgdir).publish_file(drone.gpkg("app-misc/hello-1"), "app-misc/hello-1")
    port = free_port()
    proc = spawn(["binhost", "serve", "--dir", str(pkgdir), "--listen", f"127.0.0.1:{port}"], name="binhost")

    def fetch() -> bytes | None:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/Packages", timeout=2).read()
        except OSError:
            return None

    index = wait_until(fetch, timeout=15)
    assert index and b"CPV: app-misc/hello-1" in index, spawn.output(proc)
