"""swarm_drone's build root tasks: a missing root is unpacked from a stage3 and configured.

Run for real through ansible-runner with a local connection on a directory of the test's own
(the tasks touch nothing but the root and the bound directories they are given); the stage3 is
a small tarball the test makes, fetched through get_url like the real one.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import yaml

from swarmctl.ansible_exec import run_playbook

PLAY = [{
    "name": "Make a build root.", "hosts": "localhost", "gather_facts": False,
    "tasks": [{"name": "Run the role's build root tasks.",
               "ansible.builtin.include_role": {"name": "swarm_drone", "tasks_from": "build_root.yml"}}],
}]


def test_stage3_unpacked_and_configured(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    (stage / "etc/portage").mkdir(parents=True)
    (stage / "etc/portage/make.conf").write_text('COMMON_FLAGS="-O2 -pipe"\nMAKEOPTS="-j1"\n')
    (stage / "usr/bin").mkdir(parents=True)
    (stage / "usr/bin/emerge").write_text("#!/bin/sh\n")
    tarball = tmp_path / "stage3-amd64-openrc-test.tar.xz"
    with tarfile.open(tarball, "w:xz") as tar:
        tar.add(stage, arcname=".")
    root, repos = tmp_path / "root", tmp_path / "repos"
    playbook = tmp_path / "build-root.yml"
    playbook.write_text(yaml.safe_dump(PLAY, sort_keys=False))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3"}}}}))
    extra = {"swarm_drone_build_root": str(root), "swarm_drone_build_root_stage3_url": tarball.as_uri(),
             "swarm_drone_build_root_binds": [str(repos)], "swarm_drone_binhost_url": "http://10.77.0.1:8770",
             "swarm_drone_build_root_make_conf": {"MAKEOPTS": "-j2"}}
    first = run_playbook(str(playbook), inventory, "localhost", extra, tmp_path / "runs")
    assert first.ok, first.summary
    assert (root / "usr/bin/emerge").is_file() and repos.is_dir()
    assert not Path(f"{root}.stage3.tar.xz").exists()  # the tarball is not kept
    make_conf = (root / "etc/portage/make.conf").read_text()
    assert 'MAKEOPTS="-j2"' in make_conf and "-j1" not in make_conf and "COMMON_FLAGS" in make_conf
    binrepo = (root / "etc/portage/binrepos.conf/build-swarm.conf").read_text()
    assert "sync-uri = http://10.77.0.1:8770" in binrepo
