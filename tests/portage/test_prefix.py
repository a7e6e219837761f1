"""swarmctl.portage_env.prefix: layout, idempotence, the shared venv links, a real build."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from swarmctl.portage_env.prefix import load_prefix, make_prefix

pytestmark = pytest.mark.portage
VENV_GLOBALS = Path(sys.prefix) / "share/portage/config/make.globals"


def test_layout_env_and_binrepos(tmp_path: Path, sample_repo: Path) -> None:
    prefix = make_prefix(tmp_path / "e", sample_repo, "http://127.0.0.1:9/")
    conf = (prefix.config_dir / "make.conf").read_text()
    assert f'PKGDIR="{prefix.pkgdir}"' in conf and 'BINPKG_FORMAT="gpkg"' in conf
    assert "-sandbox" in conf and "-binpkg-signing" in conf
    assert os.readlink(prefix.config_dir / "make.profile").endswith("profiles/default/linux/amd64")
    binrepos = (prefix.config_dir / "binrepos.conf").read_text()
    assert "sync-uri = http://127.0.0.1:9\n" in binrepos and "verify-signature" not in binrepos
    # portage's shipped default (verify-signature = true) reaches the prefix
    assert "verify-signature = true" in (prefix.root / "share/portage/config/binrepos.conf").read_text()
    assert f'BINPKG_GPG_VERIFY_GPG_HOME="{prefix.gnupg_home}"' in conf
    env = prefix.env({"PATH": "/usr/bin:/bin", "PKGDIR": "/elsewhere", "ROOT": "/mnt"})
    assert env["PORTAGE_OVERRIDE_EPREFIX"] == str(prefix.root)
    assert env["PATH"].split(":")[0] == str(Path(sys.prefix) / "bin")
    assert "PKGDIR" not in env and "ROOT" not in env
    assert prefix.world_file.read_text() == "" and (prefix.root / "var/cache/edb/counter").read_text() == "100"


def test_make_prefix_is_idempotent_and_keeps_state(tmp_path: Path, sample_repo: Path) -> None:
    prefix = make_prefix(tmp_path / "e", sample_repo, "http://127.0.0.1:9")
    prefix.world_file.write_text("app-misc/hello\n")
    (prefix.vdb / "marker").write_text("kept")
    again = make_prefix(tmp_path / "e", sample_repo)  # binhost dropped: binrepos.conf goes
    assert again.world_file.read_text() == "app-misc/hello\n"
    assert (again.vdb / "marker").read_text() == "kept"
    assert not (again.config_dir / "binrepos.conf").exists()
    assert load_prefix(tmp_path / "e") == again


def test_global_config_links_are_shared_and_race_free(tmp_path: Path, sample_repo: Path) -> None:
    before = VENV_GLOBALS.read_bytes()
    roots = [tmp_path / f"e{i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:  # many prefixes at once, twice each
        list(pool.map(lambda root: make_prefix(root, sample_repo), roots * 2))
    for root in roots:
        link = root / "share/portage/config/make.globals"
        assert link.is_symlink() and Path(os.readlink(link)) == VENV_GLOBALS
        assert (root / "share/portage/config/sets/portage.conf").resolve().is_file()
        assert not [p for p in link.parent.iterdir() if p.name.startswith(".")]  # no temp links left
    assert VENV_GLOBALS.read_bytes() == before  # the shared file is never written


def test_stale_link_is_replaced(tmp_path: Path, sample_repo: Path) -> None:
    link = tmp_path / "e/share/portage/config/make.globals"
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "gone")
    make_prefix(tmp_path / "e", sample_repo)
    assert Path(os.readlink(link)) == VENV_GLOBALS


def test_bad_repo_and_url_are_refused(tmp_path: Path, sample_repo: Path) -> None:
    with pytest.raises(FileNotFoundError, match="repo_name"):
        make_prefix(tmp_path / "e", tmp_path)
    with pytest.raises(ValueError, match="binhost URL"):
        make_prefix(tmp_path / "e", sample_repo, "ftp://x")


def test_the_module_makes_a_client_prefix_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    made = subprocess.run([sys.executable, "-m", "swarmctl.portage_env.prefix", str(tmp_path / "c"),
                           "--verify-as-nobody"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and made.stdout.strip() == str(tmp_path / "c"), made.stderr
    prefix = load_prefix(tmp_path / "c")
    assert prefix.repo_name == "swarm-sample" and prefix.binhost_url is None  # the bundled overlay, no binhost yet
    assert "GPG_VERIFY_USER_DROP" not in (prefix.config_dir / "make.conf").read_text()  # gpg as nobody, as portage
    bad = subprocess.run([sys.executable, "-m", "swarmctl.portage_env.prefix", str(tmp_path / "d"),
                          "--repo", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (f"prefix {tmp_path / 'd'}: {tmp_path} is not an ebuild repository "
                                  "(no profiles/repo_name)")


def test_prefix_builds_real_package_whose_elf_runs(drone) -> None:
    greeter = drone.results["app-misc/greeter-1"].artifacts[0]
    assert greeter.path.name == "greeter-1-1.gpkg.tar" and greeter.size > 0
    elf = drone.prefix.root / "usr/bin/greeter"
    assert elf.read_bytes()[:4] == b"\x7fELF"
    assert subprocess.run([str(elf), "swarm"], capture_output=True, text=True).stdout == "hello, swarm\n"
    assert (drone.prefix.root / "usr/share/greet/message.txt").is_file()  # the run-time dep is installed
