"""Models and data: champion and challenger of each registered model with their test metrics and
promotion history, feature drift per feature table (drifted first), and the monitor's reports."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape

from nextbest.monitoring.charts import html_table, num, pct
from nextbest.monitoring.console import files
from nextbest.monitoring.console.layout import frame, missing
from nextbest.monitoring.index_page import REPORTS

OTHER = "other features"


def models_page(ctx) -> str:
    parts = [_registry(ctx), _drift(ctx), _reports(ctx)]
    return frame("Models and data", "".join(parts), "/models")


def _registry(ctx) -> str:
    parts = ["<h2>Models</h2>"]
    uri = ctx.mlflow_uri()
    reg, problem = ctx.registry()
    if problem:
        return "".join(parts) + f'<p class="error">{escape(problem)}</p>'
    if reg is None:
        if not uri.startswith("sqlite:///"):
            return "".join(parts) + missing(f"The registry is an MLflow server ({escape(uri)}): open its own pages "
                                            "for the models.")
        return "".join(parts) + missing("No model registry yet: <code>nextbest train</code> (or "
                                        "<code>nextbest quickstart</code>) registers <code>nbp</code> and "
                                        "<code>churn</code>.")
    for name in files.MODELS:
        model = reg.get(name)
        parts.append(f"<h3>{escape(name)}</h3>")
        if not model or not model["versions"]:
            parts.append(missing(f"No version of <code>{escape(name)}</code> registered yet."))
            continue
        shown = [v for v in model["versions"] if v["aliases"]] or model["versions"][:1]
        parts.append(html_table(["version", "alias", "registered", "why"], [
            [v["version"], ", ".join(sorted(v["aliases"])) or "–", _ms(v["created_ms"]),
             v["tags"].get("promoted_reason") or v["tags"].get("gate") or "–"] for v in shown]))
        metrics = sorted({k for v in shown for k in v["metrics"]})
        if metrics:
            heads = [f"version {v['version']} ({', '.join(sorted(v['aliases'])) or '–'})" for v in shown]
            parts.append(html_table(["test metric", *heads],
                                    [[m, *(_metric(m, v["metrics"].get(m)) for v in shown)] for m in metrics]))
        else:
            parts.append('<p class="muted">No test metrics logged with these versions.</p>')
        if not any("challenger" in v["aliases"] and "champion" not in v["aliases"] for v in shown):
            parts.append('<p class="muted">No challenger apart from the champion.</p>')
        history = model["history"]
        if history:
            parts.append("<details><summary>Promotion history (" + str(len(history)) + ")</summary>" + html_table(
                ["when", "action", "version", "previous", "by", "why"],
                [[str(h.get("at", "–")), str(h.get("action", "–")), str(h.get("version", "–")),
                  str(h.get("previous") or "–"), str(h.get("by", "–")), str(h.get("reason", "–"))]
                 for h in reversed(history)]) + "</details>")
    return "".join(parts)


def _metric(name: str, value) -> str:
    if value is None:
        return "–"
    return num(value) if name == "rows" else num(value, 4)


def _ms(ms) -> str:
    return "–" if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _groups(ctx) -> dict[str, str]:
    """Feature column -> the feature table it comes from (read from the parquet files' schemas)."""
    out = {}
    folder = ctx.paths.features
    if not folder.is_dir():
        return out
    import pyarrow.parquet as pq

    for path in sorted(folder.glob("*.parquet")):
        try:
            names = pq.read_schema(path).names
        except (OSError, ValueError):
            continue
        out.update({c: path.stem for c in names if c not in ("customer_id", "event_timestamp")})
    return out


def _drift(ctx) -> str:
    head = "<h2>Feature drift</h2>"
    report = files.latest_report(ctx.root)
    summary = files.report_json(report, "summary.json")
    if summary is None:
        return head + missing("No drift measured yet: <code>nextbest monitor</code> compares the features now with "
                              "the champion's training months.")
    columns = summary.get("columns") if isinstance(summary.get("columns"), dict) else {}
    if not columns:
        return head + missing(f"The report of {escape(report.name)} measured no feature column.")
    groups = _groups(ctx)
    by_group: dict[str, list] = {}
    for col, c in columns.items():
        by_group.setdefault(groups.get(col, OTHER), []).append((col, c if isinstance(c, dict) else {}))
    order = sorted(by_group, key=lambda g: (-sum(bool(c.get("drifted")) for _, c in by_group[g]), g))
    drifted = sum(bool(c.get("drifted")) for cols in by_group.values() for _, c in cols)
    parts = [head, f"<p>{num(drifted)} of {num(len(columns))} feature columns drifted in the report of "
                   f"{escape(report.name)} (share {pct(summary.get('share_drifted'), 1)}), grouped by feature table; "
                   "tables with drift first, each drifted column first.</p>"]
    for g in order:
        cols = sorted(by_group[g], key=lambda x: -(x[1].get("score") or 0))
        moved = [x for x in cols if x[1].get("drifted")]
        calm = [x for x in cols if not x[1].get("drifted")]
        label = f"{escape(g)}: {len(moved)} of {len(cols)} columns drifted"
        inner = _drift_table(moved) if moved else ""
        if calm:
            inner += (f"<details><summary>{len(calm)} column{'s' if len(calm) != 1 else ''} within their "
                      f"threshold</summary>{_drift_table(calm)}</details>")
        parts.append(f"<details{' open' if moved else ''}><summary>{label}</summary>{inner}</details>")
    return "".join(parts)


def _drift_table(cols: list[tuple[str, dict]]) -> str:
    return html_table(["column", "drifted", "score", "threshold", "test", "rows now", "rows reference"], [
        [col, "yes" if c.get("drifted") else "no", num(c.get("score"), 4), num(c.get("threshold"), 4),
         str(c.get("test", "–")), num(c.get("current_rows")), num(c.get("reference_rows"))] for col, c in cols])


def _reports(ctx) -> str:
    head = "<h2>Reports</h2>"
    report = files.latest_report(ctx.root)
    if report is None:
        return head + missing("No report under <code>reports/</code> yet.")
    present = sorted(p.name for p in report.iterdir() if p.suffix in (".html", ".json"))
    items = [f'<li><a href="/reports/{escape(report.name)}/{escape(n)}">{escape(n)}</a>: '
             f'{escape(REPORTS.get(n, "the monitor index" if n == "index.html" else "report"))}</li>' for n in present]
    return head + f"<p>The latest report, {escape(report.name)}:</p><ul>{''.join(items)}</ul>"
