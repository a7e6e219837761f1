"""Progress on long work: a bar on a terminal (what, n of m, rate, time left), nothing extra when piped."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.helpers import run_cli

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
JOBS = 6000  # above PROGRESS_FROM: smaller adds end before a bar would help


def _dag(tmp_path: Path) -> Path:
    nodes = [{"cpv": f"app-misc/p{i}-1"} for i in range(JOBS)]
    edges = [[f"app-misc/p{i - 1}-1", f"app-misc/p{i}-1", "build"] for i in range(1, JOBS, 3)]
    path = tmp_path / "big.dag.json"
    path.write_text(json.dumps({"nodes": nodes, "edges": edges}))
    return path


def test_import_shows_a_bar_on_a_terminal_and_nothing_when_piped(swarm_env: dict[str, str], tmp_path: Path,
                                                                  redis_client: object) -> None:
    dag = _dag(tmp_path)
    tty = {**swarm_env, "TTY_COMPATIBLE": "1", "COLUMNS": "120"}
    shown = ANSI.sub("", run_cli(["queue", "import", str(dag)], tty).stdout)
    # The stages by name, with "n of m" as it went.
    assert "queuing" in shown, shown
    assert f"{JOBS:,} of {JOBS:,}" in shown, shown
    assert f"queued {JOBS} package(s)" in shown

    run_cli(["queue", "clear", "--yes"], swarm_env, check=False)
    piped = run_cli(["queue", "import", str(dag)], swarm_env).stdout
    assert piped.splitlines() == [f"queued {JOBS} package(s) with {JOBS // 3} edge(s) from {dag}"], piped

    run_cli(["queue", "clear", "--yes"], swarm_env, check=False)
    quiet = ANSI.sub("", run_cli(["queue", "import", "--quiet", str(dag)], tty).stdout)
    assert [line for line in quiet.splitlines() if line.strip()] == piped.splitlines(), quiet
