"""The console's page frame and small pieces every page uses: navigation, notes, dates, trends.

Pages are self-contained HTML styled like the monitor's reports (`nextbest.monitoring.charts`),
with inline SVG charts and no script.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from html import escape
from statistics import NormalDist

from nextbest.monitoring.charts import STYLE, num, pct
from nextbest.monitoring.uplift import wilson

NAV = (("/", "Overview"), ("/campaigns", "Campaigns"), ("/customer", "Customer"), ("/decisions", "Decisions"),
       ("/models", "Models and data"))
CONSOLE_STYLE = STYLE + """
nav{margin:-.5em 0 1em;padding:.4em 0;border-bottom:1px solid #ddd}nav a{margin-right:1.2em;color:#245}
nav a.here{font-weight:bold;text-decoration:none;color:#111}.warn{color:#a40;font-weight:600}
.missing{background:#f7f3e8;border-left:4px solid #c9a227;padding:.5em .8em}.error{background:#fbeaea;
border-left:4px solid #c62828;padding:.5em .8em}form.search input,form.search select{margin:0 .6em .4em 0}
.figures{display:flex;flex-wrap:wrap;gap:1em}.figure{border:1px solid #ddd;padding:.5em .9em;min-width:9em}
.figure b{display:block;font-size:1.3em}.figure span{color:#666;font-size:.85em}
details{margin:.4em 0}td.l,th.l{text-align:left}th.l{font-weight:normal}
"""
FEW_EVENTS = 10  # a rate or uplift resting on fewer events than this is shown with a warning
Z95 = NormalDist().inv_cdf(0.975)


def frame(title: str, body: str, here: str = "") -> str:
    """A whole console page: navigation, title, body."""
    links = "".join(f'<a href="{href}"{" class=here" if href == here else ""}>{escape(label)}</a>'
                    for href, label in NAV)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · nextbest'
            f'</title><style>{CONSOLE_STYLE}</style></head><body><nav>{links}</nav><h1>{escape(title)}</h1>'
            f"{body}</body></html>")


def missing(text: str) -> str:
    """A note saying what is not there yet and how to get it (`text` is HTML)."""
    return f'<p class="missing">{text}</p>'


def error(text: str) -> str:
    return f'<p class="error">{escape(text)}</p>'


def when(t: float | None) -> str:
    return "–" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def day(t: float | None) -> str:
    return "–" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d")


def eur(x, digits: int = 2) -> str:
    return "–" if x is None else f"{num(x, digits)} EUR"


def plural(n: int, word: str) -> str:
    """'1 decision', '2 decisions'."""
    return f"{num(n)} {word}{'' if n == 1 else 's'}"


def facts(rows: list[tuple[str, str]]) -> str:
    """A two-column table of labels and values, without a header."""
    body = "".join(f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(v)}</td></tr>' for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def figure(label: str, value: str, note: str = "") -> str:
    return (f'<div class="figure"><span>{escape(label)}</span><b>{escape(value)}</b>'
            f'{"<span>" + escape(note) + "</span>" if note else ""}</div>')


def rate_with_interval(successes: int, n: int, warn: bool = True) -> str:
    """A rate with its 95% Wilson interval, and (with `warn`) a warning when it rests on few events."""
    if not n:
        return "–"
    lo, hi = wilson(successes, n, Z95)
    text = f"{pct(successes / n, 2)} [{pct(lo, 2)}, {pct(hi, 2)}]"
    if warn and successes < FEW_EVENTS:
        text += f" (only {successes} of {num(n)}: too few to read)"
    return text


def parse_day(value: str | None, name: str) -> float | None:
    """Epoch seconds of a YYYY-MM-DD date (UTC midnight); None when empty.

    Raises:
        ValueError: the value is not such a date (the message names the field).
    """
    if value is None or not value.strip():
        return None
    try:
        d = date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None
    return datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()


def line_chart(title: str, points: list[tuple[str, float]], fmt=num, width: int = 460, height: int = 150) -> str:
    """A line chart (inline SVG) of a weekly series, labelled at its ends and its highest point."""
    if not points:
        return ""
    left, right, top, bottom = 8, 70, 22, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, v in points]
    hi = max(values) or 1.0
    step = plot_w / max(1, len(points) - 1)
    offset = plot_w / 2 if len(points) == 1 else 0.0  # one week so far: in the middle
    xy = [(left + offset + i * step, top + plot_h - (v / hi) * plot_h) for i, v in enumerate(values)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    peak = values.index(max(values))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" font-size="11">',
             f'<text x="0" y="13" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#ccc"/>',
             f'<polyline points="{path}" fill="none" stroke="#4a7bb7" stroke-width="2"/>']
    parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#4a7bb7"><title>{escape(label)}: '
              f'{escape(fmt(v))}</title></circle>' for (x, y), (label, v) in zip(xy, points)]
    for i in sorted({0, len(points) - 1}):
        anchor = "middle" if len(points) == 1 else "start" if i == 0 else "end"
        parts.append(f'<text x="{xy[i][0]:.1f}" y="{height - 6}" text-anchor="{anchor}" fill="#666">'
                     f'{escape(points[i][0])}</text>')
    parts.append(f'<text x="{xy[peak][0] + 4:.1f}" y="{max(xy[peak][1] - 4, top):.1f}">'
                 f'{escape(fmt(values[peak]))}</text>')
    if len(points) > 1 and peak != len(points) - 1:
        parts.append(f'<text x="{left + plot_w + 6}" y="{xy[-1][1] + 4:.1f}">{escape(fmt(values[-1]))}</text>')
    parts.append("</svg>")
    return "".join(parts)
