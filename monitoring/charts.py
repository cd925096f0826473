"""HTML for the business KPIs and the uplift report: tables and inline SVG charts, nothing fetched.

The pages are self-contained (no script, no CDN), so they open from a CI artifact or an e-mail.
`kpi_section` and `uplift_section` are the monitor's hooks: they read a work directory's event
log and write `kpis.json`/`kpis.html` and `uplift.json`/`uplift.html`.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from html import escape
from pathlib import Path

from nextbest.config import ConfigError, load_bandit, load_catalogue
from nextbest.constants import DEFAULT_SEED
from nextbest.monitoring.kpi import business_kpis
from nextbest.monitoring.uplift import CONVERSION_FEEDBACK, GLOBAL, uplift

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}.muted{color:#777}.charts{display:flex;flex-wrap:wrap;gap:1.5em}
"""
BAR = "#4a7bb7"
POSITIVE, NEGATIVE, NEUTRAL = "#2e7d32", "#c62828", "#777"


# ----------------------------------------------------------------------------------------------- formatting
def num(x, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:,.{digits}f}"


def pct(x, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def interval(ci, fmt) -> str:
    return "–" if not ci else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _when(t) -> str:
    return "–" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_chart(title: str, items: list[tuple[str, float | None]], fmt=num, width: int = 440) -> str:
    """A horizontal bar chart (inline SVG) of non-negative values; None is drawn as an empty bar."""
    items = list(items)
    if not items:
        return ""
    label_w, value_w, row_h = 150, 70, 18
    plot_w = width - label_w - value_w
    top = max((v for _, v in items if v is not None), default=0) or 1
    height = 22 + row_h * len(items)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" font-size="11">',
             f'<text x="0" y="13" font-weight="bold">{escape(title)}</text>']
    for i, (label, value) in enumerate(items):
        y = 22 + i * row_h
        w = 0 if value is None else max(0.0, value) / top * plot_w
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{escape(str(label))[:24]}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 5}" fill="{BAR}"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 12}">{escape(fmt(value))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def ci_chart(title: str, rows: list[tuple[str, float | None, list | None]], fmt=num, width: int = 480) -> str:
    """A forest plot (inline SVG): each row's estimate with its interval, against a zero line."""
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return ""
    label_w, value_w, row_h = 150, 150, 20
    plot_w = width - label_w - value_w
    ends = [0.0] + [v for _, p, ci in rows for v in ([p] + (list(ci) if ci else []))]
    lo, hi = min(ends), max(ends)
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.05 * span, hi + 0.05 * span

    def x(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * plot_w

    height = 26 + row_h * len(rows)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" font-size="11">',
             f'<text x="0" y="13" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{x(0):.1f}" y1="20" x2="{x(0):.1f}" y2="{height}" stroke="#999" stroke-dasharray="3,3"/>']
    for i, (label, point, ci) in enumerate(rows):
        y = 26 + i * row_h + row_h / 2
        colour = NEUTRAL if not ci or ci[0] <= 0 <= ci[1] else (POSITIVE if ci[0] > 0 else NEGATIVE)
        parts.append(f'<text x="{label_w - 6}" y="{y + 4}" text-anchor="end">{escape(str(label))[:24]}</text>')
        if ci:
            parts.append(f'<line x1="{x(ci[0]):.1f}" y1="{y}" x2="{x(ci[1]):.1f}" y2="{y}" stroke="{colour}" '
                         f'stroke-width="2"/>')
        parts.append(f'<circle cx="{x(point):.1f}" cy="{y}" r="4" fill="{colour}"/>'
                     f'<text x="{label_w + plot_w + 8}" y="{y + 4}">{escape(fmt(point))} '
                     f'{escape(interval(ci, fmt))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>")


# ---------------------------------------------------------------------------------------------------- KPIs
KPI_HEADERS = ["", "decisions", "offers shown", "impressions", "click rate", "acceptance rate", "value (EUR)",
               "value / decision (EUR)", "explored offers"]
FEW_ACCEPTANCES = 10  # an acceptance rate on fewer acceptances is shown with its counts and a warning


def acceptance_cell(m: dict) -> str:
    """The acceptance rate, with its counts when it rests on few acceptances."""
    rate, shown = m["acceptance_rate"], m["offers_shown"]
    if rate is None or not shown:
        return "–"
    accepted = round(rate * shown)
    if accepted < FEW_ACCEPTANCES:
        return f"{pct(rate, 2)} ({accepted} of {num(shown)}: too few to read)"
    return pct(rate, 2)


def _kpi_rows(groups: dict) -> list[list[str]]:
    return [[key, num(m["decisions"]), num(m["offers_shown"]), num(m["impressions"]), pct(m["click_rate"]),
             acceptance_cell(m), num(m["value"]), num(m["value_per_decision"], 2),
             pct(m["exploration_share"])] for key, m in groups.items()]


def kpi_html(kpis: dict, full: bool = True) -> str:
    """The business KPIs (the dict of `nextbest.monitoring.kpi.business_kpis`) as HTML: a page, or a fragment."""
    period = kpis["period"]
    parts = [f'<p class="muted">Decisions from {_when(period["first_decision"])} to {_when(period["last_decision"])}'
             f'{"" if period["until"] is None else " (period ends " + _when(period["until"]) + ")"}.</p>']
    if kpis.get("empty"):
        parts.append("<p>No decisions in the period.</p>")
        return page("Business KPIs", "".join(parts)) if full else "".join(parts)
    parts.append("<h2>Totals</h2>" + html_table(KPI_HEADERS, _kpi_rows({"all decisions": kpis["totals"]})))
    for name, title in (("by_arm", "Policy arm (per decision)"), ("by_offer_kind", "Explored and exploited offers"),
                        ("by_policy", "Policy"), ("by_channel", "Channel"), ("by_segment", "Segment"),
                        ("by_product", "Product")):
        parts.append(f"<h2>{escape(title)}</h2>" + html_table(KPI_HEADERS, _kpi_rows(kpis[name])))
        if name in ("by_arm", "by_channel", "by_segment"):
            parts.append('<div class="charts">'
                         + bar_chart("Value per decision",
                                     [(k, m["value_per_decision"]) for k, m in kpis[name].items()],
                                     lambda v: num(v, 2))
                         + bar_chart("Acceptance rate", [(k, m["acceptance_rate"]) for k, m in kpis[name].items()],
                                     lambda v: pct(v, 2)) + "</div>")
        if name == "by_product":
            ranked = sorted(kpis[name].items(), key=lambda kv: -kv[1]["offers_shown"])
            parts.append('<div class="charts">'
                         + bar_chart("Offers shown", [(k, m["offers_shown"]) for k, m in ranked])
                         + bar_chart("Acceptance rate", [(k, m["acceptance_rate"]) for k, m in ranked],
                                     lambda v: pct(v, 2)) + "</div>")
    ex = kpis["exploration"]
    parts.append("<h2>Exploration</h2>" + html_table(["", "share", "count"], [
        ["offers explored", pct(ex["offer_share"]), num(ex["offers_explored"])],
        ["decisions exploring", pct(ex["decision_share"]), num(ex["decisions_exploring"])]]))
    sup = kpis["suppression"]
    parts.append("<h2>Rules</h2>" + html_table(["rule", "offers removed", "decisions", "share of decisions"], [
        [rule, num(r["offers"]), num(r["decisions"]), pct(r["decision_share"])]
        for rule, r in sup["rules"].items()]))
    parts.append(bar_chart("Offers removed per rule", [(rule, r["offers"]) for rule, r in sup["rules"].items()]))
    if sup["blocked"]:
        parts.append("<h3>Decisions blocked on the whole channel</h3>" + html_table(
            ["reason", "decisions", "share of decisions"],
            [[k, num(b["decisions"]), pct(b["decision_share"])] for k, b in sup["blocked"].items()]))
    cp = kpis["contact_pressure"]
    parts.append(f"<h2>Contact pressure</h2><p class=\"muted\">{num(cp['customers'])} customers over "
                 f"{num(cp['weeks'], 1)} weeks.</p>" + html_table(["per customer", "mean", "p50", "p90", "max"], [
                     [label, *(num(cp[key][s], 2) for s in ("mean", "p50", "p90", "max"))]
                     for label, key in (("offers per week", "offers_per_week"),
                                        ("contacts per week", "contacts_per_week"),
                                        ("offers in the busiest week", "max_offers_in_a_week"))]))
    body = "".join(parts)
    return page("Business KPIs", body) if full else body


# -------------------------------------------------------------------------------------------------- uplift
UPLIFT_HEADERS = ["", "control", "treatment", "rate control", "rate treatment", "uplift (pp)", "CI",
                  "relative", "value / customer control (EUR)", "value / customer treatment (EUR)",
                  "value uplift (EUR)", "CI"]


def uplift_row(label: str, s: dict) -> list[str]:
    pp = lambda v: num(None if v is None else 100 * v, 2)  # noqa: E731
    return [label, num(s["n_control"]), num(s["n_treatment"]), pct(s["rate_control"], 2),
            pct(s["rate_treatment"], 2), pp(s["uplift"]), interval(s["uplift_ci"], pp),
            pct(s["relative_uplift"]), num(s["value_control"], 2), num(s["value_treatment"], 2),
            num(s["value_uplift"], 2), interval(s["value_uplift_ci"], lambda v: num(v, 2))]


def uplift_html(result: dict, full: bool = True) -> str:
    """The uplift result (the dict of `nextbest.monitoring.uplift.uplift`) as HTML: a page, or a fragment."""
    conf = f"{100 * result['confidence']:g}%"
    since, until = result["period"]["since"], result["period"]["until"]
    parts = [f'<p class="muted">Customers first exposed from '
             f'{"the start of the log" if since is None else _when(since)} to '
             f'{"now" if until is None else _when(until)}; outcome: acquired a campaign product within '
             f'{num(result["window_days"])} days, mature by {_when(result["as_of"])}; {conf} intervals '
             f'(conversion: Newcombe score; value: bootstrap).</p>']
    if result.get("empty") or not result["campaigns"]:
        parts.append("<p>No exposures in the period.</p>")
    for name, camp in result["campaigns"].items():
        products = "every product" if camp["products"] == GLOBAL else ", ".join(camp["products"])
        imm = camp["immature"]
        parts.append(f"<h2>Campaign {escape(name)}</h2><p class=\"muted\">Products: {escape(products)}. "
                     f"{num(camp['assigned'])} customers assigned; not yet mature: {num(imm['control'])} control, "
                     f"{num(imm['treatment'])} treatment; unassigned: {num(camp['unassigned'])}; in the global "
                     f"control group: {num(camp['in_global_control'])}.</p>")
        rows = [("overall", camp["overall"]), *camp["by_segment"].items()]
        o = camp["overall"]
        if not (o["n_control"] and o["n_treatment"]):
            parts.append(f"<p>No uplift yet: it needs customers in both groups whose {num(result['window_days'])}-day "
                         f"window after their first exposure has passed ({num(o['n_control'])} control and "
                         f"{num(o['n_treatment'])} treatment so far; {num(imm['control'] + imm['treatment'])} "
                         "still within their window).</p>")
        elif not o["significant"]:
            parts.append("<p>The difference between the groups is within what chance gives: the interval "
                         "includes zero.</p>")
        parts.append(html_table(UPLIFT_HEADERS, [uplift_row(k, s) for k, s in rows]))
        parts.append('<div class="charts">'
                     + ci_chart("Uplift in conversion (pp)",
                                [(k, None if s["uplift"] is None else 100 * s["uplift"],
                                  None if not s["uplift_ci"] else [100 * v for v in s["uplift_ci"]]) for k, s in rows],
                                lambda v: num(v, 2))
                     + ci_chart("Uplift in value per customer", [(k, s["value_uplift"], s["value_uplift_ci"])
                                                                  for k, s in rows], lambda v: num(v, 2))
                     + "</div>")
    body = "".join(parts)
    return page("Control groups and uplift", body) if full else body


# ------------------------------------------------------------------------------------------ monitor hooks
def parse_time(value) -> float | None:
    """Epoch seconds from None, a number, or an ISO date/time (UTC when no zone is given)."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def holdout_campaigns(bandit_yaml: Path | None = None) -> dict[str, list[str] | str]:
    """Campaigns to measure: the global holdout ("all"), the validated `holdout.campaigns` of bandit.yaml and
    the outbound campaigns of campaigns.yaml."""
    from nextbest.config import load_campaigns

    cfg = load_bandit(bandit_yaml, catalogue=load_catalogue())
    outbound = {name: list(c.products) for name, c in load_campaigns().campaigns.items()}
    return {GLOBAL: GLOBAL, **{name: list(c.products) for name, c in cfg.holdout.campaigns.items()}, **outbound}


def clean(x):
    """JSON-safe: non-finite floats become null."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_atomic(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder and `os.replace`."""
    from nextbest.io import atomic_write

    atomic_write(Path(path), lambda t: Path(t).write_text(text, encoding="utf-8"))


def section_config(config, key: str) -> dict:
    """The `key` part of the monitoring config, whatever the caller holds.

    `config` may be that part already (a dict), the whole configs/monitoring.yaml as a dict, or the
    monitor's pydantic `MonitoringConfig` (which may not have the key: then the defaults apply).
    """
    if config is None:
        return {}
    if not isinstance(config, dict):
        part = getattr(config, key, None)
        if part is None:
            return {}
        return part.model_dump() if hasattr(part, "model_dump") else dict(part)
    part = config.get(key)
    return dict(part or {}) if key in config else config


def _action_values() -> dict[str, float]:
    try:
        return {name: float(a.value) for name, a in load_bandit().actions.items()}
    except ConfigError:  # bandit.yaml ahead of its model (a new key): actions are then worth 0
        return {}


def kpi_section(paths, config, out_dir: Path) -> tuple[str, dict, Path]:
    """Business KPIs of `paths.events_db` into `out_dir/kpis.json` and `kpis.html`.

    Args:
        paths: `nextbest.settings.Paths` of the work directory.
        config: the `kpi` part of configs/monitoring.yaml (or the whole config, see `section_config`):
            optional `since`, `until` (epoch seconds or ISO dates). Empty or None: the whole log.
        out_dir: the report folder.

    Returns:
        ("kpis", a short summary, the HTML path).
    """
    config = section_config(config, "kpi")
    kpis = clean(business_kpis(paths.events_db, load_catalogue(), parse_time(config.get("since")),
                                parse_time(config.get("until")), action_values=_action_values()))
    out_dir = Path(out_dir)
    write_atomic(out_dir / "kpis.json", json.dumps(kpis, indent=1))
    html_path = out_dir / "kpis.html"
    write_atomic(html_path, kpi_html(kpis))
    t, cp = kpis["totals"], kpis["contact_pressure"]
    summary = {"empty": kpis["empty"], "decisions": t["decisions"], "offers_shown": t["offers_shown"],
               "click_rate": t["click_rate"], "acceptance_rate": t["acceptance_rate"],
               "value_per_decision": t["value_per_decision"], "exploration_share": t["exploration_share"],
               "offers_per_customer_week_p90": cp["offers_per_week"]["p90"],
               "offers_per_customer_week_max": cp["offers_per_week"]["max"]}
    return "kpis", summary, html_path


def uplift_section(paths, config, out_dir: Path) -> tuple[str, dict, Path]:
    """Control-group uplift of `paths.events_db` into `out_dir/uplift.json` and `uplift.html`.

    Args:
        paths: `nextbest.settings.Paths` of the work directory.
        config: the `uplift` part of configs/monitoring.yaml (or the whole config), all optional: `window_days` (30),
            `confidence` (0.95), `n_boot` (1000), `seed`, `conversion_feedback` (["convert"]),
            `since`, `until`, and `campaigns` (else bandit.yaml `holdout.campaigns` plus "all").
        out_dir: the report folder.

    Returns:
        ("uplift", per-campaign overall uplift and interval, the HTML path).
    """
    config = section_config(config, "uplift")
    campaigns = config.get("campaigns") or holdout_campaigns()
    result = clean(uplift(paths.events_db, load_catalogue(), campaigns,
                           window_days=float(config.get("window_days", 30)),
                           since=parse_time(config.get("since")), until=parse_time(config.get("until")),
                           confidence=float(config.get("confidence", 0.95)), n_boot=int(config.get("n_boot", 1000)),
                           seed=int(config.get("seed", DEFAULT_SEED)),
                           conversion_feedback=tuple(config.get("conversion_feedback", CONVERSION_FEEDBACK))))
    out_dir = Path(out_dir)
    write_atomic(out_dir / "uplift.json", json.dumps(result, indent=1))
    html_path = out_dir / "uplift.html"
    write_atomic(html_path, uplift_html(result))
    summary = {"empty": result["empty"], "as_of": result["as_of"], "campaigns": {
        name: {k: c["overall"][k] for k in ("n_control", "n_treatment", "uplift", "uplift_ci", "value_uplift",
                                           "value_uplift_ci", "significant")} | {"immature": c["immature"]}
        for name, c in result["campaigns"].items()}}
    return "uplift", summary, html_path
