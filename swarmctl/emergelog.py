"""Build durations from real portage emerge.log files.

A merge starts with ``>>> emerge (i of n) CPV to ROOT`` and ends with
``::: completed emerge (i of n) CPV to ROOT``; its duration is the difference
of the two epoch timestamps. Real logs are messy, and the parser copes:

- A ``--jobs`` session interleaves the lines of its merges: starts are paired
  with completions by CPV and ROOT, not by position.
- A merge interrupted (Ctrl-C, power loss) has no completion: a later start of
  the same CPV replaces it, and whatever is left at the end is counted as
  interrupted, never recorded.
- Binary merges (``Merging Binary``) took no compile time: skipped.
- Unmerges, syncs, session banners and other lines are ignored.
- Malformed or truncated lines are counted (with their line numbers), never fatal.

A merge counts as ``parallel`` (its wall time inflated by other builds) when
its session's command line has ``--jobs``/``-j`` above 1, or when another
merge of the same session was in progress at the same time (which also
catches ``--jobs`` set in EMERGE_DEFAULT_OPTS). A merge still open when a new
session starts counts as interrupted, not as concurrent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from swarmctl.atoms import validate_cpv
from swarmctl.exceptions import InvalidAtom
from swarmctl.history import BuildRecord

log = logging.getLogger("swarmctl.emergelog")

_LINE = re.compile(r"^(\d{9,11}):\s{1,2}(.*)$")
_START = re.compile(r"^>>> emerge \((\d+) of (\d+)\) (\S+) to (\S+)$")
_DONE = re.compile(r"^::: completed emerge \((\d+) of (\d+)\) (\S+) to (\S+)$")
_BINARY = re.compile(r"^=== \((\d+) of (\d+)\) Merging Binary \((\S+?)::")
_COMMAND = re.compile(r"^\*\*\* emerge (.*)$")
_SESSION_END = ("*** terminating.", "*** exiting successfully.", "*** exiting unsuccessfully")
_SESSION_START = "Started emerge on:"
_MERGE_PREFIXES = (">>> emerge", ":::", "=== (")
#: How many malformed line numbers a report keeps (the count is always exact).
KEEP_BAD_LINES = 20


def jobs_option(arguments: str) -> int:
    """The --jobs value of an emerge command line: 1 when absent, 0 for unlimited."""
    words = arguments.split()
    for i, word in enumerate(words):
        if word.startswith("--jobs"):
            value = word.partition("=")[2] or (words[i + 1] if i + 1 < len(words) else "")
            return int(value) if value.isdigit() else 0
        if word.startswith("-") and not word.startswith("--") and "j" in word:
            tail = word[word.index("j") + 1:]
            digits = re.match(r"\d*", tail)
            number = digits.group(0) if digits else ""
            if number:
                return int(number)
            follow = words[i + 1] if i + 1 < len(words) else ""
            return int(follow) if follow.isdigit() else 0
    return 1


@dataclass
class Merge:
    """One completed build: what, when, how long."""

    cpv: str
    start: int
    end: int
    parallel: bool

    @property
    def seconds(self) -> int:
        return self.end - self.start

    def record(self, source: str = "emerge.log") -> BuildRecord:
        return BuildRecord(cpv=self.cpv, seconds=float(self.seconds), parallel=self.parallel, source=source)


@dataclass
class _Open:
    start: int
    parallel: bool
    binary: bool = False


@dataclass
class ParseReport:
    """What one log held: the merges, and everything that could not be used."""

    merges: list[Merge] = field(default_factory=list)
    lines: int = 0
    malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)
    interrupted: int = 0
    unpaired: int = 0
    binary: int = 0
    negative: int = 0

    @property
    def parallel(self) -> int:
        return sum(m.parallel for m in self.merges)

    def as_dict(self) -> dict[str, object]:
        return {"lines": self.lines, "merges": len(self.merges), "parallel": self.parallel,
                "malformed": self.malformed, "malformed_lines": self.malformed_lines,
                "interrupted": self.interrupted, "unpaired_completions": self.unpaired,
                "binary_skipped": self.binary, "negative_skipped": self.negative}


class EmergeLogParser:
    """Feed lines in order; read ``report`` at the end (after ``finish``)."""

    def __init__(self) -> None:
        self.report = ParseReport()
        self._open: dict[tuple[str, str], _Open] = {}
        self._jobs = 1
        self._live_since = 0  # merges started before the last session end are not live

    def _bad(self, number: int) -> None:
        self.report.malformed += 1
        if len(self.report.malformed_lines) < KEEP_BAD_LINES:
            self.report.malformed_lines.append(number)

    def feed(self, number: int, line: str) -> None:
        self.report.lines += 1
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        match = _LINE.match(line)
        if match is None:
            self._bad(number)
            return
        ts, text = int(match.group(1)), match.group(2).strip()
        if text.startswith(_MERGE_PREFIXES):
            self._merge_line(number, ts, text)
        elif (command := _COMMAND.match(text)) is not None:
            self._jobs = jobs_option(command.group(1))
        elif text.startswith(_SESSION_END):
            self._live_since = ts
        elif text.startswith(_SESSION_START):
            # A new session: merges still open from earlier ones were interrupted, not concurrent.
            self._live_since, self._jobs = ts, 1

    def _merge_line(self, number: int, ts: int, text: str) -> None:
        if text.startswith("=== ("):
            binary = _BINARY.match(text)
            if binary is not None:
                for key, merge in self._open.items():
                    if key[0] == binary.group(3):
                        merge.binary = True
            return
        start, done = _START.match(text), _DONE.match(text)
        found = start or done
        if found is None or int(found.group(1)) > int(found.group(2)):
            self._bad(number)
            return
        try:
            cpv = validate_cpv(found.group(3))
        except InvalidAtom:
            self._bad(number)
            return
        key = (cpv, found.group(4))
        if start is not None:
            live = [p for k, p in self._open.items() if p.start >= self._live_since and k != key]
            parallel = self._jobs != 1 or bool(live)
            for other in live:
                other.parallel = True
            if key in self._open:
                self.report.interrupted += 1
            self._open[key] = _Open(start=ts, parallel=parallel)
            return
        pending = self._open.pop(key, None)
        if pending is None:
            self.report.unpaired += 1
        elif pending.binary:
            self.report.binary += 1
        elif ts < pending.start:
            self.report.negative += 1
        else:
            self.report.merges.append(Merge(cpv, pending.start, ts, pending.parallel))

    def finish(self) -> ParseReport:
        self.report.interrupted += len(self._open)
        self._open.clear()
        return self.report


def parse_lines(lines: Iterable[str]) -> ParseReport:
    """Parse an emerge.log given as lines."""
    parser = EmergeLogParser()
    for number, line in enumerate(lines, start=1):
        parser.feed(number, line)
    return parser.finish()


def parse_file(path: str | Path) -> ParseReport:
    """Parse one emerge.log (undecodable bytes are replaced, never fatal).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8", errors="replace") as handle:
        return parse_lines(handle)
