"""The night's picture: a self-contained SVG timeline (one row per drone) and an HTML page around it.

No script and no network: colours, hatching and tooltips (``<title>``) are plain SVG, so the
page reads the same in any browser, a mail client or a file viewer. Up to ``DETAIL_LIMIT``
attempts every one is its own bar; above that, neighbouring attempts of the same outcome on
the same drone that are closer than a pixel merge into one bar that says how many it holds,
so 20,000 jobs still draw as a readable picture of bounded size.
"""

from __future__ import annotations

import time
from html import escape

from swarmctl.humanize import seconds
from swarmctl.report import OUTCOMES, Bar, Night

#: One colour per outcome, told apart also in grey scale (green light, red dark).
OUTCOME_COLOUR = {
    "built": "#2ca02c",
    "failed": "#d62728",
    "released": "#8c8c8c",
    "reclaimed": "#ff7f0e",
    "hung": "#9467bd",
    "running": "#1f77b4",
}
#: Outcomes that are the normal course of things; the others are drawn over them.
QUIET = ("built", "running")
GROUNDED_COLOUR = "#d62728"
CRITICAL_COLOUR = "#000000"
WIDTH = 1200
ROW = 18
GAP = 6
AXIS = 34
CHAR = 7.2  # width of a character of the 12 px monospace labels
DETAIL_LIMIT = 4000
FAILURES_SHOWN = 200


def _clock(epoch: float, precise: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if precise else "%Y-%m-%d %H:%M", time.localtime(epoch))


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


class _Scale:
    def __init__(self, begin: float, end: float, left: float, width: float) -> None:
        self.begin, self.left = begin, left
        self.span = max(end - begin, 1.0)
        self.width = width

    def x(self, t: float) -> float:
        return self.left + (t - self.begin) / self.span * self.width

    @property
    def per_pixel(self) -> float:
        return self.span / self.width


def _ticks(begin: float, end: float) -> list[float]:
    """Round clock times across the window, about ten of them."""
    span = max(end - begin, 1.0)
    steps = [1, 2, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
    step = next((s for s in steps if span / s <= 10), steps[-1])
    first = (int(begin) // step + 1) * step
    return [float(t) for t in range(first, int(end) + 1, step)]


def _merge(bars: list[Bar], per_pixel: float) -> list[tuple[Bar, int]]:
    """Neighbouring bars of one outcome closer than a pixel, merged (bar, how many it holds)."""
    merged: list[tuple[Bar, int]] = []
    for bar in sorted(bars, key=lambda b: b.start):
        if merged:
            last, count = merged[-1]
            if last.outcome == bar.outcome and bar.start - last.end < per_pixel:
                merged[-1] = (Bar(last.drone, last.job, last.start, max(last.end, bar.end), last.outcome), count + 1)
                continue
        merged.append((bar, 1))
    return merged


def _tooltip(bar: Bar, count: int) -> str:
    if count > 1:
        return f"{count} {bar.outcome} builds on {bar.drone}, {_clock(bar.start)} to {_clock(bar.end)}"
    tip = f"{bar.job} on {bar.drone}: {bar.outcome} after {seconds(bar.seconds)} (from {_clock(bar.start, True)})"
    return f"{tip}: {bar.reason}" if bar.reason else tip


def render_svg(night: Night, width: int = WIDTH) -> str:
    """The timeline: a row per drone, a bar per attempt, grounded spans hatched, the critical path outlined."""
    util = night.figures.utilisation
    labels = {d: f"{d} {util.get(d, 0.0) * 100:.0f}%" for d in night.drones}
    left = 12 + CHAR * max((len(t) for t in labels.values()), default=8)
    # The axis spans the work done (a window asked as "the last day" may hold an hour of it).
    busy = [(b.start, b.end) for b in night.bars] + [(s.start, s.end) for s in night.grounded]
    begin = min((s for s, _ in busy), default=night.since)
    end = max((e for _, e in busy), default=night.until)
    scale = _Scale(begin, end, left, width - left - 12)
    top = AXIS + 22  # the legend sits between the axis labels and the first row
    height = top + len(night.drones) * (ROW + GAP) + 10
    row_of = {d: top + i * (ROW + GAP) for i, d in enumerate(night.drones)}
    detailed = len(night.bars) <= DETAIL_LIMIT
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">',
           "<defs><pattern id=\"grounded\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
           "patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#fbe3e3\"/>"
           f"<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"{GROUNDED_COLOUR}\" stroke-width=\"2\" "
           "stroke-opacity=\"0.45\"/></pattern></defs>",
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>']
    ticks = _ticks(begin, end)
    clock = "%H:%M:%S" if len(ticks) > 1 and ticks[1] - ticks[0] < 60 else "%H:%M"
    for t in ticks:
        x = scale.x(t)
        out.append(f'<line class="tick" x1="{x:.1f}" y1="{AXIS - 6}" x2="{x:.1f}" y2="{height - 6}" '
                   'stroke="#dddddd"/>')
        out.append(f'<text x="{x:.1f}" y="{AXIS - 10}" text-anchor="middle" fill="#444444">'
                   f'{time.strftime(clock, time.localtime(t))}</text>')
    legend_x = left
    for outcome in OUTCOMES:
        out.append(f'<rect class="legend" data-outcome="{outcome}" x="{legend_x:.0f}" y="{AXIS + 2}" width="12" '
                   f'height="12" fill="{OUTCOME_COLOUR[outcome]}"/>')
        out.append(f'<text x="{legend_x + 16:.0f}" y="{AXIS + 12}">{outcome}</text>')
        legend_x += 16 + CHAR * len(outcome) + 18
    out.append(f'<rect x="{legend_x:.0f}" y="{AXIS + 2}" width="12" height="12" fill="url(#grounded)"/>')
    out.append(f'<text x="{legend_x + 16:.0f}" y="{AXIS + 12}">grounded</text>')
    legend_x += 16 + CHAR * 8 + 18
    out.append(f'<rect x="{legend_x:.0f}" y="{AXIS + 2}" width="12" height="12" fill="none" '
               f'stroke="{CRITICAL_COLOUR}" stroke-width="2"/>')
    out.append(f'<text x="{legend_x + 16:.0f}" y="{AXIS + 12}">critical path</text>')
    for drone in night.drones:
        y = row_of[drone]
        out.append(f'<g class="drone" data-drone="{_attr(drone)}">')
        out.append(f'<text class="label" x="6" y="{y + ROW - 5}">{escape(labels[drone])}</text>')
        out.append(f'<rect class="lane" x="{left:.1f}" y="{y}" width="{scale.width:.1f}" height="{ROW}" '
                   'fill="#f4f4f4"/>')
        out.append("</g>")
    for span in night.grounded:
        x0, x1 = scale.x(span.start), scale.x(span.end)
        out.append(f'<rect class="grounded" data-drone="{_attr(span.drone)}" x="{x0:.1f}" y="{row_of[span.drone]}" '
                   f'width="{max(x1 - x0, 2):.1f}" height="{ROW}" fill="url(#grounded)">'
                   f"<title>{escape(span.drone)} grounded {_clock(span.start)} to {_clock(span.end)}: "
                   f"{escape(span.reason)}</title></rect>")
    by_drone: dict[str, list[Bar]] = {d: [] for d in night.drones}
    for bar in night.bars:
        by_drone[bar.drone].append(bar)
    for drone, bars in by_drone.items():
        pieces = [(b, 1) for b in bars] if detailed else _merge(bars, scale.per_pixel)
        # Trouble is drawn last and at least a few pixels wide, so a night of thousands still shows it.
        pieces.sort(key=lambda p: p[0].outcome not in QUIET)
        for bar, count in pieces:
            x0, x1 = scale.x(bar.start), scale.x(bar.end)
            w = max(x1 - x0, 1.0 if bar.outcome in QUIET else 3.0)
            data = f'data-count="{count}"' if count > 1 else f'data-job="{_attr(bar.job)}"'
            out.append(f'<rect class="bar {bar.outcome}" data-drone="{_attr(drone)}" {data} x="{x0:.1f}" '
                       f'y="{row_of[drone] + 2}" width="{w:.1f}" height="{ROW - 4}" '
                       f'fill="{OUTCOME_COLOUR[bar.outcome]}"><title>{escape(_tooltip(bar, count))}</title></rect>')
            if count == 1 and w > CHAR * (len(bar.job) + 1):  # a name is shown whole or not at all
                out.append(f'<text x="{x0 + 3:.1f}" y="{row_of[drone] + ROW - 5}" fill="#ffffff" font-size="11">'
                           f"{escape(bar.job)}</text>")
    critical = set(night.critical)
    for bar in night.bars:
        if bar.outcome == "built" and bar.job in critical:
            x0, x1 = scale.x(bar.start), scale.x(bar.end)
            out.append(f'<rect class="critical" data-job="{_attr(bar.job)}" x="{x0:.1f}" y="{row_of[bar.drone] + 1}" '
                       f'width="{max(x1 - x0, 2):.1f}" height="{ROW - 2}" fill="none" stroke="{CRITICAL_COLOUR}" '
                       'stroke-width="2"/>')
    out.append("</svg>")
    return "\n".join(out)


def figure_rows(night: Night) -> list[tuple[str, str]]:
    """The run's headline figures, label and value, every value with its units."""
    f = night.figures
    ratio = f"{f.ratio:.2f}" if f.ratio is not None else "unknown (nothing built)"
    drones = len(night.drones)
    return [
        ("window", f"{_clock(night.since)} to {_clock(night.until)}"),
        ("makespan", seconds(f.makespan)),
        ("lower bound", f"{seconds(f.lower_bound)} (critical path {seconds(f.chain)}; "
                        f"{seconds(f.work)} of building over {drones} drone{'s' if drones != 1 else ''})"),
        ("makespan / lower bound", ratio),
        ("builds", f"{f.built} built, {f.failed} failed, {f.attempts} attempts on {f.jobs} packages"),
        ("builds per hour", f"{f.builds_per_hour:.1f}"),
        ("grounded", f"{len(night.grounded)} time{'s' if len(night.grounded) != 1 else ''}"),
    ] + ([("incomplete", f"the event stream starts at {_clock(night.trimmed_at)}: earlier builds are missing "
                         "(raise queue.events_max)")] if night.trimmed_at is not None else [])


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { padding: 2px 10px 2px 0; text-align: left; vertical-align: top; }
th { font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures td:first-child { font-weight: 600; }
.timeline { display: block; margin-top: 1em; }
code { font-size: 0.95em; }
"""


def render_html(night: Night, title: str = "Build swarm: the night's work") -> str:
    """A page that needs nothing but itself: figures, the timeline, slowest packages, failures."""
    f = night.figures
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>", '<table class="figures">']
    parts += [f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in figure_rows(night)]
    parts.append("</table>")
    parts.append(render_svg(night))
    parts.append('<h2>Utilisation per drone</h2><table class="utilisation"><tr><th>drone</th><th>busy</th></tr>')
    parts += [f'<tr><td>{escape(d)}</td><td class="num">{u * 100:.0f}%</td></tr>' for d, u in f.utilisation.items()]
    parts.append("</table>")
    parts.append('<h2>Slowest packages</h2><table class="slowest"><tr><th>package</th><th>drone</th>'
                 "<th>took</th><th>usually</th></tr>")
    for slow in f.slowest:
        parts.append(f"<tr><td><code>{escape(slow.job)}</code></td><td>{escape(slow.drone)}</td>"
                     f'<td class="num">{seconds(slow.seconds)}</td><td class="num">{seconds(slow.usual)}</td></tr>')
    parts.append("</table>")
    parts.append(f'<h2>Failures ({len(f.failures)})</h2><table class="failures"><tr><th>time</th><th>package</th>'
                 "<th>drone</th><th>outcome</th><th>reason</th></tr>")
    for failure in f.failures[:FAILURES_SHOWN]:
        parts.append(f"<tr><td>{_clock(failure.time, precise=True)}</td><td><code>{escape(failure.job)}</code></td>"
                     f"<td>{escape(failure.drone)}</td><td>{failure.outcome}</td><td>{escape(failure.reason)}</td></tr>")
    parts.append("</table>")
    if len(f.failures) > FAILURES_SHOWN:
        parts.append(f"<p>and {len(f.failures) - FAILURES_SHOWN} more (swarmctl report --json lists them all)</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
