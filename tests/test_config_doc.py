"""docs/configuration.md is generated from swarmctl.defaults and must match it."""

from __future__ import annotations

import subprocess
import sys

from swarmctl.defaults import SETTINGS
from tests.helpers import REPO

SCRIPT = REPO / "scripts" / "gen_config_doc.py"


def test_configuration_doc_is_up_to_date() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + "\n(run: python scripts/gen_config_doc.py)"


def test_every_setting_is_documented() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    for setting in SETTINGS:
        assert f"`{setting.name}`" in text and f"`{setting.env}`" in text, setting.name


def test_check_notices_a_stale_doc(tmp_path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check", "--output", str(stale)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "out of date" in proc.stderr
