"""ansible-lint (production profile) and yamllint are clean over roles, playbooks and inventory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        LC_ALL="C.UTF-8",
        NO_COLOR="1",
        ANSIBLE_LOCAL_TEMP=str(ROOT / "build" / "ansible-tmp"),
    )
    return subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )


def test_yamllint_is_clean() -> None:
    proc = _run([str(BIN / "yamllint"), "--strict", "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint_production_profile_is_clean() -> None:
    proc = _run([str(BIN / "ansible-lint"), "--profile", "production", "--nocolor"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
