"""Customer portrait: one customer looked up by id, read from the raw and feature tables and from the
event log under the id's pseudonym (the log never holds the id itself).

The id typed is the only customer id the page shows; the log's rows are found by pseudonymising it
with the service's key, so the log stays pseudonymised.
"""

from __future__ import annotations

from html import escape

import pandas as pd

from nextbest.monitoring.charts import html_table, num, pct
from nextbest.monitoring.console import files, queries
from nextbest.monitoring.console.decisions import decisions_table
from nextbest.monitoring.console.layout import eur, facts, frame, missing, plural, when
from nextbest.monitoring.console.offers_now import offers_now
from nextbest.serving.privacy import pseudonymise

MAX_ID = 64
SNAPSHOTS = 12  # months of the holdings timeline
CONSENTS = ("marketing_opt_out", "consent_email", "consent_push", "consent_sms", "consent_call")


def check_id(customer_id: str) -> str | None:
    """Why a typed id cannot be looked up, or None."""
    if len(customer_id) > MAX_ID:
        return f"A customer id has at most {MAX_ID} characters."
    if not customer_id.isprintable():
        return "A customer id holds printable characters only."
    return None


def customer_page(ctx, customer_id: str, channel: str = "mobile_app") -> str:
    form = ('<form class="search" method="get" action="/customer">Customer id <input name="id" value="'
            f'{escape(customer_id)}" size="20" autofocus> <button>Look up</button></form>')
    customer_id = customer_id.strip()
    if not customer_id:
        return frame("Customer portrait", form + '<p class="muted">Type a customer id as the bank knows it. The '
                     "console finds the customer's decisions in the log by the id's pseudonym.</p>", "/customer")
    problem = check_id(customer_id)
    if problem:
        return frame("Customer portrait", form + f'<p class="error">{escape(problem)}</p>', "/customer")
    parts = [form]
    profile = files.customer_rows(ctx.paths.raw / "customers.parquet", customer_id)
    segments = files.customer_rows(ctx.paths.features / "customer_segments.parquet", customer_id)
    holdings = files.customer_rows(ctx.paths.raw / "holdings.parquet", customer_id)
    key = files.pseudonym_key(ctx.root)
    pseudonym = pseudonymise(customer_id, key) if key is not None else None
    conn = ctx.connect()
    try:
        decisions, n_decisions = (queries.customer_decisions(conn, pseudonym) if conn is not None and pseudonym
                                  else ([], 0))
        events = conn.events_of(pseudonym) if conn is not None and pseudonym else []
    finally:
        if conn is not None:
            conn.close()
    known = (profile is not None and len(profile)) or n_decisions or events
    if not known:
        where = "raw/customers.parquet" if profile is not None else "the raw tables (no raw/customers.parquet)"
        parts.append(missing(f"No customer with id <b>{escape(customer_id)}</b>: not in {where}, and no decision is "
                             "logged for it."))
        return frame("Customer portrait", "".join(parts), "/customer")
    parts.append(f"<h2>Customer {escape(customer_id)}</h2>")
    parts.append(_profile(profile, segments, decisions))
    parts.append(_segments_by_month(segments))
    parts.append(_holdings(holdings))
    parts.append(offers_now(ctx, customer_id, channel))
    parts.append("<h2>Decisions and outcomes</h2>")
    if pseudonym is None:
        parts.append(missing("No pseudonymisation key yet (<code>secrets/pseudonym.key</code>): the service has "
                             "logged nothing."))
    elif not decisions:
        parts.append(missing("No decision logged for this customer yet."))
    else:
        parts.append(f'<p class="muted">{plural(n_decisions, "decision")} logged; the newest '
                     f"{len(decisions)} below.</p>"
                     + decisions_table(decisions))
    if events:
        parts.append("<h3>Customer events</h3>" + html_table(["occurred", "event", "details"], [
            [when(t), e, ", ".join(f"{k}: {v}" for k, v in p.items() if k != "customer_id")] for e, p, t in events]))
    return frame("Customer portrait", "".join(parts), "/customer")


def _profile(profile: pd.DataFrame | None, segments: pd.DataFrame | None, decisions: list) -> str:
    rows = []
    if profile is not None and len(profile):
        p = profile.iloc[-1]
        for col, label in (("status", "status"), ("join_date", "customer since"), ("birth_date", "born"),
                           ("region", "region"), ("income", "income (EUR a year)")):
            if col in p.index:
                value = p[col]
                rows.append([label, num(float(value)) if col == "income" and pd.notna(value) else
                             str(value)[:10] if pd.notna(value) else "–"])
        consents = [c.replace("consent_", "") for c in CONSENTS[1:] if c in p.index and bool(p[c])]
        rows.append(["consents", ", ".join(consents) or "none"])
        if "marketing_opt_out" in p.index:
            rows.append(["marketing opt-out", "yes" if bool(p["marketing_opt_out"]) else "no"])
    if segments is not None and len(segments):
        s = segments.sort_values("event_timestamp").iloc[-1] if "event_timestamp" in segments else segments.iloc[-1]
        for col in s.index:
            if col in ("customer_id", "event_timestamp"):
                continue
            value = s[col]
            label = col.replace("_", " ") + (" (EUR)" if col == "yearly_margin" else "")
            rows.append([label, num(float(value), 2) if col == "yearly_margin" else str(value)])
        if "event_timestamp" in s.index:
            rows.append(["segments as of", str(s["event_timestamp"])[:10]])
    risk = next((d.context.get("churn_risk") for d in decisions if d.context.get("churn_risk") is not None), None)
    rows.append(["churn risk (3 months)", pct(float(risk)) + " (churn model, at the latest decision)"
                 if isinstance(risk, (int, float)) else "not scored yet (the churn model scores at decision time)"])
    return "<h2>Lifecycle and segments</h2>" + facts(rows)


def _segments_by_month(segments: pd.DataFrame | None) -> str:
    """The lifecycle state and segments at each of the last months' snapshots, a month per column; a
    change from the month before is in bold."""
    if segments is None or segments.empty or "event_timestamp" not in segments.columns:
        return ""
    s = segments.sort_values("event_timestamp").tail(SNAPSHOTS)
    months = pd.to_datetime(s["event_timestamp"]).dt.strftime("%Y-%m").tolist()
    fields = [c for c in s.columns if c not in ("customer_id", "event_timestamp", "yearly_margin")]
    rows = []
    for col in fields:
        values = ["–" if pd.isna(v) else str(v) for v in s[col]]
        cells = [f"<b>{escape(v)}</b>" if i and v != values[i - 1] else escape(v) for i, v in enumerate(values)]
        rows.append(f"<tr><td>{escape(col.replace('_', ' '))}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{m}</th>" for m in ["", *months])
    return ("<h3>Lifecycle and segments by month</h3>"
            '<p class="muted">At each month-end snapshot; a change from the month before in bold.</p>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _holdings(holdings: pd.DataFrame | None) -> str:
    head = "<h2>Holdings and balances</h2>"
    if holdings is None:
        return head + missing("No holdings table (raw/holdings.parquet) in the work directory.")
    if holdings.empty:
        return head + missing("No holdings recorded for this customer.")
    h = holdings.copy()
    h["month"] = pd.to_datetime(h["snapshot_date"]).dt.strftime("%Y-%m")
    months = sorted(h["month"].unique())[-SNAPSHOTS:]
    h = h[h["month"].isin(months)]
    has_balance = "balance" in h.columns
    grid = h.pivot_table(index="product_id", columns="month", values="balance" if has_balance else "snapshot_date",
                         aggfunc="sum" if has_balance else "count")
    rows = [[product, *(("–" if pd.isna(grid.at[product, m]) else (num(grid.at[product, m]) if has_balance else "held"))
                        if m in grid.columns else "–" for m in months)] for product in grid.index]
    latest = h[h["month"] == months[-1]]
    total = float(latest["balance"].sum()) if has_balance else None
    return (head + f"<p>Holds {plural(len(latest), 'product')} as of {months[-1]}"
            + (f", balances {escape(eur(total, 0))} in all" if total is not None else "") + ".</p>"
            + '<p class="muted">Balance at each month end (EUR); – not held.</p>'
            + html_table(["product", *months], rows))
