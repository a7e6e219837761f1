"""swarm_cron_verify run by ansible for real: its documented job suboptions, and a failing cronnext."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LIBRARY = ROOT / "roles/swarm_cron/library"


def _env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": str(tmp_path),
            "ANSIBLE_LIBRARY": str(LIBRARY), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
            "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
            "ANSIBLE_NOCOLOR": "1"}


def _run(tmp_path: Path, args: dict[str, object]) -> tuple[int, dict[str, object]]:
    done = subprocess.run([str(BIN / "ansible"), "localhost", "-m", "swarm_cron_verify", "-a", json.dumps(args),
                           "-e", f"ansible_python_interpreter={sys.executable}"],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    try:  # ad-hoc output: "localhost | FAILED! => {...}"
        return done.returncode, json.loads(done.stdout[done.stdout.index("=>") + 2:])
    except ValueError:
        raise AssertionError(f"ansible output not understood:\n{done.stdout}\n{done.stderr}") from None


def test_a_failing_cronnext_fails_the_verification(tmp_path: Path) -> None:
    cron_file = tmp_path / "build-swarm"
    cron_file.write_text("30 2 * * * root /bin/true nightly\n")
    cronnext = tmp_path / "cronnext"
    cronnext.write_text("#!/bin/sh\necho 'cronnext: cannot read the spool' >&2\nexit 1\n")
    cronnext.chmod(0o755)
    # The role's job entries, passed as they are: schedule keys are documented suboptions.
    job = {"name": "nightly", "minute": "30", "hour": "2", "day": "*", "month": "*", "weekday": "*", "user": "root",
           "job": "/bin/true nightly", "match": "nightly", "requires": ["/bin/true"]}
    args = {"cron_file": str(cron_file), "jobs": [job], "expect_daemon": "any", "crontab": "/bin/true",
            "cronnext": str(cronnext)}
    rc, result = _run(tmp_path, args)
    assert rc != 0 and "cronnext -c failed (exit 1): cronnext: cannot read the spool" in str(result["msg"]), result
    assert "is not scheduled" not in str(result["msg"])  # the cause, not its consequence
    # An unknown key in a job (a typo) is refused instead of silently ignored.
    rc, typo = _run(tmp_path, {**args, "jobs": [{"match": "nightly", "requries": ["/bin/true"]}]})
    assert rc != 0 and "requries" in str(typo["msg"]), typo


def test_the_suboptions_are_documented(tmp_path: Path) -> None:
    done = subprocess.run([str(BIN / "ansible-doc"), "-M", str(LIBRARY), "swarm_cron_verify"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    jobs = done.stdout[done.stdout.index("jobs"):]
    assert all(key in jobs for key in ("match", "requires", "user")), done.stdout
