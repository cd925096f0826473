"""A plan's files: one contact list per channel (parquet and CSV), the plan's figures (JSON) and
an HTML report a marketer reads (contacts by channel, product and segment, capacity use, expected
value beside the LP bound and greedy, what the rules suppressed, the control group).

Everything lands in a temporary folder that is renamed into place once complete, after the
decisions are committed to the log: a failed run leaves neither half a folder nor half a log.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from pathlib import Path

from nextbest.io import write_json
from nextbest.serving.eventlog import EventLog

_STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{padding:.25rem .75rem;border-bottom:1px solid #ddd;
text-align:right}td:first-child,th:first-child{text-align:left}.warn{color:#a40;font-weight:600}
.bar{background:#4a7;height:.8rem;display:inline-block}"""


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if str(c).startswith('<span') else html.escape(str(c))}</td>"
                                    for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _bar(share: float) -> str:
    return f'<span class="bar" style="width:{max(0.0, min(share, 1.0)) * 8:.2f}rem"></span> {share:.0%}'


def render_html(plan) -> str:
    """The plan report (no customer identifiers: counts and sums only)."""
    s, c = plan.summary, plan.contacts
    v = s["value"]
    parts = [f"<h1>Campaign {html.escape(plan.campaign)}, {plan.day.isoformat()}</h1>",
             f"<p>{s['contacts']:,} contacts to send ({s['explored']:,} exploring), {s['control_withheld']:,} "
             f"withheld from the control group, out of {s['audience']:,} customers in the audience "
             f"({s['customers']:,} in the bank).</p>"]
    if s["unfilled_channels"]:
        parts.append(f'<p class="warn">Capacity not filled on {", ".join(s["unfilled_channels"])}: not enough '
                     "customers the rules allow with an offer worth its contact cost.</p>")
    parts.append("<h2>Expected value</h2>")
    parts.append(_table(["", "EUR", "share of the LP bound"], [
        ["this plan", f"{v['plan']:,.2f}", f"{v['plan_over_bound']:.4f}"],
        ["greedy by score (same limits)", f"{v['greedy']:,.2f}", f"{v['greedy_over_bound']:.4f}"],
        ["LP upper bound", f"{v['lp_bound']:,.2f}", "1"]]))
    parts.append("<h2>Channels</h2>")
    parts.append(_table(["channel", "capacity", "contacts", "control (not sent)", "use", "customers allowed",
                         "cost/contact"],
                        [[ch, f"{d['capacity']:,}", f"{d['contacts']:,}", f"{d['withheld']:,}",
                          _bar(d['contacts'] / d['capacity'] if d['capacity'] else 0.0),
                          f"{d['eligible_customers']:,}", f"{d['cost_per_contact']:.2f}"]
                         for ch, d in s["channels"].items()]))
    if s["quotas"]:
        parts.append("<h2>Quotas</h2>")
        parts.append(_table(["product", "quota", "contacts"], [[p, q["quota"], q["contacts"]]
                                                             for p, q in s["quotas"].items()]))
    if s["budget"] is not None:
        parts.append(f"<p>Contact cost {s['cost']:,.2f} EUR of a budget of {s['budget']:,.2f} EUR.</p>")
    if len(c):
        parts.append("<h2>Contacts by product</h2>")
        by = c.groupby("product_id").agg(contacts=("decision_id", "size"), value=("expected_value", "sum"),
                                         p=("probability", "mean")).sort_values("contacts", ascending=False)
        parts.append(_table(["product", "contacts", "expected value", "mean P(accept)"],
                            [[p, f"{r.contacts:,}", f"{r.value:,.2f}", f"{r.p:.3f}"] for p, r in by.iterrows()]))
        parts.append("<h2>Contacts by segment and send hour</h2>")
        seg = c.groupby("segment").size().sort_values(ascending=False)
        parts.append(_table(["segment", "contacts"], [[k, f"{n:,}"] for k, n in seg.items()]))
        hours = c["send_at"].dt.hour.value_counts().sort_index()
        parts.append(_table(["send hour (UTC)", "contacts"], [[f"{h:02d}:00", f"{n:,}"] for h, n in hours.items()]))
    parts.append("<h2>What the rules and the audience removed</h2>")
    rows = [[f"audience: {k}", f"{n:,}"] for k, n in s["audience_left_out"].items()]
    rows += [[k, f"{n:,}"] for k, n in sorted(s["suppressed"].items(), key=lambda kv: -kv[1])]
    parts.append(_table(["rule", "customers"], rows))
    parts.append("<h2>Control group</h2>")
    parts.append(f"<p>{s['control_withheld']:,} customers of the campaign's control group would have been "
                 "contacted at the plan's prices (they take no capacity); they are logged with their withheld "
                 "offer and not sent anything, so the "
                 "monitor's uplift compares them with the contacted customers.</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Plan {html.escape(plan.plan_id)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")


def write_plan(plan, out_dir: Path, events_db: Path) -> dict[str, Path]:
    """Logs the plan's decisions, then moves its files into `out_dir` (which must not exist yet).

    Returns:
        kind -> path of what was written.
    """
    if out_dir.exists():
        raise ValueError(f"{out_dir} already exists; a plan is written once")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = {}
        for channel, rows in plan.contacts.groupby("channel"):
            for ext in ("parquet", "csv"):
                path = tmp / f"contacts_{channel}.{ext}"
                rows.to_parquet(path, index=False) if ext == "parquet" else rows.to_csv(path, index=False)
                files[f"{channel} ({ext})"] = path
        if len(plan.withheld):
            plan.withheld.to_parquet(tmp / "control_withheld.parquet", index=False)
            files["control group"] = tmp / "control_withheld.parquet"
        write_json(tmp / "plan.json", {"plan": plan.plan_id, **plan.summary})
        (tmp / "report.html").write_text(render_html(plan))
        files["figures"], files["report"] = tmp / "plan.json", tmp / "report.html"
        log = EventLog(events_db)
        try:
            log.log_decisions(plan.decisions)
        finally:
            log.close()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {k: out_dir / p.name for k, p in files.items()}

