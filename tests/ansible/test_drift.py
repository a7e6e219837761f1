"""`swarmctl drift`: the target rendered into two roots, one edited by hand, and drift names exactly that one.

The swarm_target role runs for real through ansible-runner with a local connection; each host's
root is a directory of the test's own (the role touches nothing else).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from swarmctl.ansible_exec import run_playbook
from tests.helpers import run_cli

TARGET = {"make_conf": {"USE": "-doc", "MAKEOPTS": "-j2"}, "package_use": ["app-misc/hello loud"],
          "profile": "default/linux/amd64"}


def test_drift_names_the_host_whose_configuration_differs(tmp_path: Path, swarm_env: dict[str, str]) -> None:
    hosts = {name: {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
                    "swarm_target_root": str(tmp_path / name)} for name in ("client-a", "client-b")}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "vars": {"swarm_target": TARGET, "swarm_target_profile_repo": str(tmp_path / "repo")},
        "children": {"clients": {"hosts": hosts}}}}))
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump([{"name": "Render the target.", "hosts": "clients", "gather_facts": False,
                                         "roles": [{"role": "swarm_target"}]}]))
    rendered = run_playbook(str(playbook), inventory, "clients", {}, tmp_path / "runs")
    assert rendered.ok, rendered.summary
    make_conf = (tmp_path / "client-a/etc/portage/make.conf").read_text()
    assert 'USE="-doc"' in make_conf and 'MAKEOPTS="-j2"' in make_conf
    assert (tmp_path / "client-a/etc/portage/make.profile").readlink() == tmp_path / "repo/profiles/default/linux/amd64"
    edited = tmp_path / "client-b/etc/portage/package.use/zz-build-swarm-target"
    edited.write_text(edited.read_text() + "app-misc/hello -loud\n")
    proc = run_cli(["drift", "--inventory", str(inventory), "--limit", "clients", "--json"], swarm_env, check=False)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["current"] == ["client-a"] and report["failed"] == {}
    assert report["drifted"] == {"client-b": ["Write the target's package.* lines."]}
    assert "-loud" in edited.read_text()  # the check changed nothing
