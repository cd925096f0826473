"""The monitor's `index.html`: the page a scheduler mails, written for the people who read it.

It says in words whether the gate passed and why, gives every check its value and limit with their
units, warns where a figure rests on too few rows, names what could not be computed and why, and
links each report once with a line on what it shows. Styled like the KPI and uplift pages, with
nothing fetched.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from nextbest.monitoring.charts import STYLE, html_table

# Served-feature drift on fewer requests than this is reported with a warning.
FEW_SERVED_ROWS = 500

REPORTS = {  # file name -> what it shows
    "data_drift.html": "Feature drift: each feature's distribution now against the reference months (Evidently)",
    "data_drift.json": "Feature drift, as data",
    "served_feature_drift.html": "Drift of the features the service actually read, against the same reference",
    "served_feature_drift.json": "Served-feature drift, as data",
    "prediction_drift.html": "Model score drift: the next-best-product scores now against the reference",
    "prediction_drift.json": "Model score drift, as data",
    "kpis.html": "Business KPIs: offers, acceptances, value, rule suppressions, contact pressure",
    "kpis.json": "Business KPIs, as data",
    "uplift.html": "Control groups: what the offers changed, with intervals",
    "uplift.json": "Control-group uplift, as data",
    "ope.json": "Off-policy evaluation: what the current policy and the challenger model would have earned",
    "summary.json": "Every figure of this page, as data",
}


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def _names(values) -> str:
    return ", ".join(map(str, values)) if values else "none"


def describe(check: dict) -> tuple[str, str, str]:
    """(what is checked, its value, its limit) in words and units."""
    name, value, limit = check["check"], check["value"], check["limit"]
    served = name.startswith("served_feature_drift")
    where = "served features" if served else "features"
    if name.endswith("share of drifted columns"):
        return f"Share of {where} that drifted", _pct(value), f"at most {_pct(limit)}"
    if name.endswith("columns that must never drift"):
        return f"Protected {where} that drifted", _names(value), f"none of {_names(limit)}"
    if name.startswith("prediction_drift"):
        what = "Products whose served scores drifted" if "served" in name else "Products whose model scores drifted"
        return what, _names(value), f"at most {limit} product{'s' if limit != 1 else ''}"
    if name == "acceptance":
        return ("Drop in the offer acceptance rate against the reference", "–" if value is None else _pct(value),
                "–" if limit is None else f"at most {_pct(limit)}")
    if name == "churn":
        return ("Churn model calibration gap (predicted against realised churn rate)",
                "–" if value is None else f"{100 * value:.2f} percentage points",
                "–" if limit is None else f"at most {100 * limit:.2f} points")
    shown = f"{value:.4g}" if isinstance(value, float) else ("–" if value is None else str(value))
    return name.replace("_", " "), shown, "–" if limit is None else str(limit)


def warnings(summary: dict) -> list[str]:
    out = []
    served = summary["sections"].get("served_feature_drift") or {}
    rows = (served.get("current") or {}).get("rows")
    if rows is not None and rows < FEW_SERVED_ROWS:
        out.append(f"Served-feature drift rests on {rows:,} served request{'s' if rows != 1 else ''} only (fewer "
                   f"than {FEW_SERVED_ROWS:,}): read it as a first look, not a verdict.")
    return out


def index_html(summary: dict, files: dict[str, Path]) -> str:
    """The page (`summary`: the monitor's summary.json; `files`: what the run wrote, by kind)."""
    checks = summary["gate"]["checks"]
    failed = [c for c in checks if not c["passed"]]
    day = summary.get("created_at", "")[:10]
    if not checks:
        verdict = "No check could be run."
    elif failed:
        verdict = (f"The gate <b>failed</b>: {len(failed)} of {len(checks)} checks did not pass ("
                   + "; ".join(escape(describe(c)[0].lower()) for c in failed) + ").")
    else:
        verdict = f"The gate <b>passed</b>: all {len(checks)} checks are within their limits."
    parts = [f"<p>{verdict}</p>"]
    parts += [f'<p style="color:#a40;font-weight:600">{escape(w)}</p>' for w in warnings(summary)]
    drifted = summary.get("drifted_columns") or []
    columns = summary.get("columns") or {}
    parts.append(f"<p>{len(drifted):,} of {len(columns) if isinstance(columns, (dict, list)) else columns:,} "
                 "feature columns drifted"
                 + (f": {escape(', '.join(drifted[:12]))}{' and more' if len(drifted) > 12 else ''}" if drifted else "")
                 + ".</p>")
    parts.append("<h2>Checks</h2>")
    parts.append(html_table(["check", "now", "limit", "result"],
                            [[*describe(c), "pass" if c["passed"] else "FAIL"] for c in checks]))
    missing = [(k, v["status"]) for k, v in summary["sections"].items() if isinstance(v, dict) and "status" in v]
    if missing:
        parts.append("<h2>Not computed</h2><ul>" + "".join(
            f"<li>{escape(k.replace('_', ' '))}: {escape(str(s))}</li>" for k, s in missing) + "</ul>")
    folder = files["summary"].parent if "summary" in files else None
    names = {p.name for k, p in files.items() if p.suffix in (".html", ".json") and p.name != "index.html"}
    if folder is not None and (folder / "ope.json").exists():
        names.add("ope.json")
    names.add("summary.json")
    order = [n for n in REPORTS if n in names] + sorted(n for n in names if n not in REPORTS)
    parts.append("<h2>Reports</h2><ul>" + "".join(
        f"<li><a href='{escape(n)}'>{escape(n)}</a>: {escape(REPORTS.get(n, 'report'))}</li>" for n in order)
        + "</ul>")
    title = f"Monitoring, {day}: {'passed' if not failed else 'failed'}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{''.join(parts)}</body></html>")
