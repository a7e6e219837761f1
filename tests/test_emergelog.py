"""emerge.log parsing, history import and estimates, on logs in real portage format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from swarmctl.config import Config
from swarmctl.emergelog import jobs_option, parse_file, parse_lines
from swarmctl.history import BuildRecord, History
from tests.helpers import run_cli

DATA = Path(__file__).parent / "data"


def durations(report) -> dict[str, list[tuple[int, bool]]]:
    out: dict[str, list[tuple[int, bool]]] = {}
    for merge in report.merges:
        out.setdefault(merge.cpv, []).append((merge.seconds, merge.parallel))
    return out


def test_serial_log_pairs_merges_and_skips_binaries_unmerges_and_syncs() -> None:
    report = parse_file(DATA / "emerge-serial.log")
    assert durations(report) == {
        "sys-libs/zlib-1.3-r2": [(42, False), (50, False)],  # repeated version: both recorded
        "dev-libs/libxml2-2.11.5": [(120, False)],
    }
    assert report.binary == 1  # app-misc/hello came from a binary package
    assert (report.malformed, report.interrupted, report.unpaired) == (0, 0, 0)


def test_interleaved_jobs_session_is_paired_by_package_and_marked_parallel() -> None:
    report = parse_file(DATA / "emerge-jobs.log")
    found = durations(report)
    assert found["dev-lang/rust-1.75.0"] == [(3600, True)]
    assert found["dev-libs/icu-74.1"] == [(389, True)]
    assert found["media-libs/libpng-1.6.40"] == [(78, True)]
    assert found["sys-apps/less-643-r1"] == [(40, True), (30, False)]  # -1: a serial session
    # No --jobs on the command line (EMERGE_DEFAULT_OPTS), but the merges overlapped.
    assert found["x11-libs/gtk+-3.24.41"] == [(899, True)]
    assert found["x11-libs/pango-1.50.14"] == [(298, True)]
    assert report.malformed == 0


def test_interrupted_merges_are_counted_never_recorded() -> None:
    report = parse_file(DATA / "emerge-interrupted.log")
    assert durations(report) == {"www-client/firefox-128.0": [(2700, False)]}  # the retry, serial
    assert report.interrupted == 2  # firefox's first attempt, vim cut off by the terminating session


def test_garbage_and_truncated_lines_are_counted_not_fatal() -> None:
    report = parse_file(DATA / "emerge-garbage.log")
    assert durations(report) == {"dev-util/cmake-3.28.3": [(59, False)],
                                 "dev-util/ninja-1.11.1-r2": [(7, False)],
                                 "app-misc/jq-1.7.1": [(9, False)]}
    assert report.malformed == 7  # junk, a bare number, cut-off lines, a bad CPV, a bad timestamp
    assert report.malformed_lines == [3, 6, 7, 8, 9, 13, 14]
    assert report.unpaired == 1  # meson completed without a start in this log


def test_empty_and_truncated_final_line() -> None:
    report = parse_lines(["1700000000:  >>> emerge (1 of 1) app-misc/a-1 to /\n", "1700000009:  ::: compl"])
    assert report.merges == [] and report.malformed == 1 and report.interrupted == 1
    assert parse_lines([]).merges == []


@pytest.mark.parametrize(("command", "jobs"), [
    ("--update @world", 1), ("--jobs=4 -uDN @world", 4), ("--jobs 3 @world", 3), ("--jobs @world", 0),
    ("-j5 @world", 5), ("-avj @world", 0), ("-j 2 x", 2), ("-1 sys-apps/less", 1),
])
def test_jobs_option(command: str, jobs: int) -> None:
    assert jobs_option(command) == jobs


def test_estimate_prefers_same_version_then_package_then_default(redis_client: redis.Redis) -> None:
    history = History(redis_client, default_estimate=321.0)
    for cpv, seconds, parallel in [("dev-lang/rust-1.74.1", 3000, False), ("dev-lang/rust-1.74.1", 3400, False),
                                   ("dev-lang/rust-1.75.0", 3600, False), ("dev-lang/rust-1.75.0", 9000, True)]:
        history.record(BuildRecord(cpv, seconds, parallel))
    assert history.estimate("dev-lang/rust-1.75.0") == 3600  # serial sample of the same version
    assert history.estimate("dev-lang/rust-1.76.0") == 3400  # median of the package's serial builds
    assert history.estimate("dev-lang/go-1.22") == 321.0
    assert history.estimate("dev-lang/rust") == 3400  # the package as a whole: every version's serial builds
    assert history.estimate("dev-lang/go") == 321.0


def test_cli_import_and_show(redis_client: redis.Redis, swarm_env: dict[str, str], config: Config) -> None:
    files = [str(DATA / name) for name in ("emerge-serial.log", "emerge-jobs.log", "emerge-garbage.log")]
    proc = run_cli(["history", "import", *files, "--json"], swarm_env)
    report = json.loads(proc.stdout)
    assert report[files[2]]["malformed"] == 7 and report[files[2]]["merges"] == 3
    assert report[files[1]]["parallel"] == 6
    shown = json.loads(run_cli(["history", "show", "sys-apps/less-643-r1", "--json"], swarm_env).stdout)
    assert shown["estimate"] == 30  # the serial build beats the faster-looking --jobs one
    assert {(r["seconds"], r["parallel"]) for r in shown["records"]} == {(30.0, False), (40.0, True)}
    text = run_cli(["history", "show", "dev-lang/rust"], swarm_env)
    assert "3600 s (--jobs)" in text.stdout and "estimate for dev-lang/rust: 3600 s" in text.stdout
    unknown = run_cli(["history", "show", "app-misc/nothing-1"], swarm_env)
    assert "no recorded builds" in unknown.stdout and "600 s" in unknown.stdout
    human = run_cli(["history", "import", files[2]], swarm_env)
    assert human.returncode == 0 and "7 malformed line(s)" in human.stderr


def test_importing_a_log_again_records_nothing_twice(swarm_env: dict[str, str]) -> None:
    log = str(DATA / "emerge-serial.log")
    run_cli(["history", "import", log], swarm_env)
    before = json.loads(run_cli(["history", "show", "sys-libs/zlib-1.3-r2", "--json"], swarm_env).stdout)
    again = run_cli(["history", "import", log], swarm_env)
    assert "imported before and are not recorded again" in again.stderr
    after = json.loads(run_cli(["history", "show", "sys-libs/zlib-1.3-r2", "--json"], swarm_env).stdout)
    assert after["records"] == before["records"] and len(after["records"]) >= 1
