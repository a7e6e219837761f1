"""The swarm_build and swarm_upload modules, run for real by ansible against localhost."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from swarmctl.binhost.server import QueueGate, ServerSettings
from swarmctl.graph import JobSpec
from swarmctl.queue import Queue
from swarmctl.registry import DroneRegistry
from tests.helpers import REPO

pytestmark = pytest.mark.portage
BIN = Path(sys.executable).parent


def ansible_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_LIBRARY": str(REPO / "plugins/modules"),
        "ANSIBLE_MODULE_UTILS": str(REPO / "plugins/module_utils"),
        "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"), "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{BIN}:{env.get('PATH', '')}",
    })
    return env


def run_module(tmp_path: Path, module: str, args: dict[str, object], check: bool = False) -> tuple[int, dict[str, Any]]:
    argv = [str(BIN / "ansible"), "localhost", "-m", module, "-a", json.dumps(args),
            "-e", f"ansible_python_interpreter={sys.executable}"]
    if check:
        argv.append("--check")
    done = subprocess.run(argv, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    try:  # ad-hoc output: "localhost | CHANGED => {...}"
        result = json.loads(done.stdout[done.stdout.index("=>") + 2:])
    except ValueError:
        raise AssertionError(f"ansible output not understood:\n{done.stdout}\n{done.stderr}") from None
    return done.returncode, result


@pytest.mark.parametrize("module", ["swarm_build", "swarm_upload"])
def test_ansible_doc(module: str, tmp_path: Path) -> None:
    done = subprocess.run([str(BIN / "ansible-doc"), "-M", str(REPO / "plugins/modules"), module],
                          capture_output=True, text=True, env=ansible_env(tmp_path), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "EXAMPLES" in done.stdout and "RETURN VALUES" in done.stdout and "check_mode" in done.stdout


def test_swarm_build_check_mode_then_build(sample_repo: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    rc, plan = run_module(tmp_path, "swarm_build", {"cpv": "app-misc/hello-1", "prefix": str(prefix),
                                                   "repo": str(sample_repo)}, check=True)
    # check mode on a host without the prefix: a real run would create it and build; nothing is made
    assert not prefix.exists()
    assert rc == 0 and plan["changed"] and plan["would_build"] == ["app-misc/hello-1"] and plan["plan"] == [], plan
    rc, missing = run_module(tmp_path, "swarm_build", {"cpv": "app-misc/hello-1", "prefix": str(prefix)}, check=True)
    # without a repo a real run fails too: check mode says so, in one line
    assert rc != 0 and "prefix" in missing["msg"] and "Traceback" not in json.dumps(missing)
    rc, built = run_module(tmp_path, "swarm_build", {"cpv": "app-misc/hello-1", "prefix": str(prefix),
                                                    "repo": str(sample_repo)})
    assert rc == 0 and built["changed"] and built["ok"], built
    (artifact,) = built["artifacts"]
    assert artifact["cpv"] == "app-misc/hello-1" and Path(artifact["path"]).is_file()
    rc, plan = run_module(tmp_path, "swarm_build", {"cpv": "app-misc/hello-extras-1", "prefix": str(prefix)},
                          check=True)
    assert rc == 0 and plan["would_build"] == ["app-misc/hello-extras-1"], plan
    rc, failed = run_module(tmp_path, "swarm_build", {"cpv": "app-broken/broken-1", "prefix": str(prefix)})
    assert rc != 0 and failed["fault"] == "build" and "broken on purpose" in failed["msg"]


def test_swarm_upload(drone, redis_client, config, pkgdir: Path, serve, tmp_path: Path) -> None:
    queue, registry = Queue(redis_client, config), DroneRegistry(redis_client, config)
    token = registry.enroll("d1")
    queue.add([JobSpec("app-misc/hello-1")])
    claim = queue.claim("d1", token)
    server = serve(pkgdir, QueueGate(registry, queue), ServerSettings())
    package = tmp_path / "hello-1-1.gpkg.tar"
    shutil.copy(drone.gpkg("app-misc/hello-1"), package)
    args = {"path": str(package), "cpv": "app-misc/hello-1", "binhost_url": server.url, "drone": "d1",
            "token": token, "lease": claim.lease, "duration": 2.5}
    rc, would = run_module(tmp_path, "swarm_upload", args, check=True)
    assert rc == 0 and would["changed"] and would["code"] == "check_mode" and not (pkgdir / "Packages").exists()
    rc, sent = run_module(tmp_path, "swarm_upload", args)
    assert rc == 0 and sent["changed"] and sent["code"] == "published" and sent["queue"] == "ok", sent
    assert token not in json.dumps(sent)  # no_log
    assert queue.get("app-misc/hello-1").state == "built"
    rc, again = run_module(tmp_path, "swarm_upload", args)
    assert rc == 0 and not again["changed"] and again["code"] == "duplicate"
    # check mode asks the binhost: the same content is there, so a real run would change nothing ...
    rc, checked = run_module(tmp_path, "swarm_upload", args, check=True)
    assert rc == 0 and not checked["changed"] and checked["code"] == "duplicate", checked
    # ... while other bytes for the same CPV would be uploaded (a tar padded with one more block)
    other = tmp_path / "other.gpkg.tar"
    other.write_bytes(package.read_bytes() + bytes(512))
    rc, differs = run_module(tmp_path, "swarm_upload", {**args, "path": str(other)}, check=True)
    assert rc == 0 and differs["changed"] and differs["code"] == "check_mode", differs
    rc, refused = run_module(tmp_path, "swarm_upload", {**args, "token": "wrong", "attempts": 1})
    assert rc != 0 and refused["code"] == "unauthorized"
