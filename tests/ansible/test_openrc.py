"""The services under real OpenRC: the swarm_unit role applied with swarm_unit_manager=openrc.

Debian's openrc cannot be installed beside this machine's init (it conflicts with sysv-rc), so
scripts/unpack-openrc.sh unpacks Debian's OpenRC 0.45 and openrc_host.sh mounts it over /usr in
private mount and PID namespaces (with private /etc, /var, /run). There the role (Ansible, local
connection) writes the OpenRC script of a real `swarmctl binhost serve`, starts it and adds it to
the default runlevel through rc-service/rc-update; then the service is checked, restarted,
killed (supervise-daemon respawns it), stopped, and started again by `openrc default` after a
fresh /run, as at boot. Not covered here: the drone's and cronie's OpenRC scripts (the same
supervise-daemon form), Gentoo's own OpenRC build.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
OPENRC = Path(os.environ.get("SWARM_OPENRC_TREE", "/opt/openrc-debian"))
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_swarm_unit_runs_a_real_daemon_under_openrc(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None or shutil.which("unshare") is None:
        pytest.skip("needs root, unshare and apt-get (Debian's OpenRC is unpacked from its .debs)")
    unpack = subprocess.run([str(ROOT / "scripts/unpack-openrc.sh"), str(OPENRC)], capture_output=True, text=True,
                            timeout=300)
    assert unpack.returncode == 0, unpack.stderr[-2000:]
    port = _free_port()
    pkgdir = tmp_path / "pkg"
    pkgdir.mkdir()
    playbook = tmp_path / "openrc.yml"
    playbook.write_text(f"""---
- name: Apply swarm_unit with OpenRC.
  hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: /usr/bin/python3
  roles:
    - role: swarm_unit
      vars:
        swarm_unit_name: swarm-ortest
        swarm_unit_description: build-swarm binhost (OpenRC test)
        swarm_unit_command: ["{BIN / 'swarmctl'}", binhost, serve, --dir, "{pkgdir}", --listen, "127.0.0.1:{port}"]
        swarm_unit_manager: openrc
        swarm_unit_stop_timeout: 10
        swarm_unit_log_file: /var/log/build-swarm/ortest.log
""")
    env = {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(tmp_path),
           "ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
           "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-tmp"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    proc = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private",
         str(Path(__file__).with_name("openrc_host.sh")), str(tmp_path), str(OPENRC), str(BIN / "ansible-playbook"),
         str(playbook)],
        capture_output=True, text=True, timeout=600, env={**env, "PATTERN": f"swarmctl binhost serve --dir {pkgdir}"},
        cwd=tmp_path)
    steps = {line.split()[1]: line.split()[2:] for line in proc.stdout.splitlines() if line.startswith("STEP ")}
    logs = "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("*.log"))
    context = f"{proc.stdout}\n{proc.stderr[-2000:]}\n{logs}"
    assert steps.get("converge", ["?"])[0] == "0", context
    assert steps["reconverge"] == ["0", "changed=0"], context  # nothing restarted when nothing changed
    for name in ("status_running", "pid", "restart", "restarted", "respawned", "stop", "stopped", "boot",
                 "started_at_boot"):
        assert steps.get(name, ["?"])[0] == "0", f"{name}: {context}"
    assert steps["status_stopped"][0] == "3", context  # OpenRC's "stopped"
    script = (tmp_path / "etc.upper/init.d/swarm-ortest").read_text()
    assert script.startswith("#!/sbin/openrc-run") and "supervisor=supervise-daemon" in script
    assert (tmp_path / "etc.upper/runlevels/default/swarm-ortest").is_symlink()
