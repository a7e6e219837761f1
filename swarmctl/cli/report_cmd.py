"""``swarmctl report``: the night's work as a picture (HTML or SVG) and its figures."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import click

from swarmctl.cli import terminal
from swarmctl.cli.context import AppContext, pass_app

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d)$")
_UNIT = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float) -> float:
    """An ISO date and time (local unless it says otherwise), or an age such as 12h, 90m, 2d."""
    match = _AGO.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither a time like 2026-11-30T22:00 nor an age like 12h") from None


@click.command("report", short_help="The night's work: a timeline per drone and the run's figures.")
@click.option("--since", metavar="TIME", help="Start (ISO time or an age like 12h; default: the last nightly start).")
@click.option("--until", metavar="TIME", help="End (ISO time or an age; default: now).")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML page here.")
@click.option("--svg", "svg_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the timeline alone as an SVG file here.")
@click.option("--json", "as_json", is_flag=True, help="The figures and every build attempt as JSON.")
@pass_app
def report(app: AppContext, since: str | None, until: str | None, html_file: Path | None, svg_file: Path | None,
           as_json: bool) -> None:
    """What ran where, what failed, where the time went: from the event stream and the build history.

    Without --html or --svg the figures print as text.
    """
    from swarmctl.atomicfile import write_atomic
    from swarmctl.cli.views.report import figure_rows, render_html, render_svg
    from swarmctl.facts import FactStore
    from swarmctl.humanize import stamp
    from swarmctl.nightly import last_started, nightly_status_path, read_nightly_file
    from swarmctl.report import gather_night

    now = time.time()
    start = parse_time(since, now) if since else last_started(FactStore(app.client).read(),
                                                               read_nightly_file(nightly_status_path(app.config)))
    end = parse_time(until, now) if until else None
    if start is not None and end is not None and end <= start:
        raise click.BadParameter("--until must be later than --since")
    night = gather_night(app.client, start, end, app.config.queue.default_estimate,
                         app.config.queue.events_max)
    if night.trimmed_at is not None:
        terminal.note(f"the event stream starts at {stamp(night.trimmed_at)} (queue.events_max = "
                      f"{app.config.queue.events_max}): earlier builds are not in the report")
    for path, text in ((html_file, render_html(night) if html_file else ""),
                       (svg_file, render_svg(night) if svg_file else "")):
        if path is not None:
            if not path.parent.is_dir():
                raise click.BadParameter(f"{path.parent} is not a directory")
            write_atomic(path, text, fsync=False)
            terminal.note(f"wrote {path}")
    if as_json:
        terminal.print_json(night.as_dict())
    elif html_file is None and svg_file is None:
        terminal.print_fields(dict(figure_rows(night)))


COMMANDS = [report]
