"""swarmctl.logtail: the one bounded reader of log ends."""

from __future__ import annotations

from pathlib import Path

from swarmctl.logtail import tail


def test_whole_small_file_and_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    assert tail(log) == log.read_text()
    assert tail(log, lines=3) == "line 7\nline 8\nline 9"


def test_reads_at_most_the_limit_and_drops_the_cut_line(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"x" * 1000 + b"\nfirst whole\nlast\n")
    assert tail(log, max_bytes=20) == "first whole\nlast\n"


def test_undecodable_bytes_and_missing_files_never_raise(tmp_path: Path) -> None:
    log = tmp_path / "odd.log"
    log.write_bytes(b"ok \xff\xfe end\n")
    assert tail(log) == "ok \ufffd\ufffd end\n"
    assert tail(tmp_path / "gone.log") == ""
