"""Campaigns: each outbound campaign of configs/campaigns.yaml with its plans (`nextbest plan` writes
`plans/<campaign>-<date>/`), contacts by channel against capacity, responses, and the uplift of
its control group with intervals."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape

from nextbest.monitoring.charts import html_table, interval, num, pct
from nextbest.monitoring.console import files, queries
from nextbest.monitoring.console.layout import FEW_EVENTS, eur, frame, missing, rate_with_interval

MAX_PLANS = 8  # plans shown per campaign, newest first


def _audience(a: dict) -> str:
    bits = []
    if a.get("lifecycle"):
        bits.append("lifecycle " + " or ".join(a["lifecycle"]))
    for group, values in (a.get("segments") or {}).items():
        bits.append(f"{group} " + " or ".join(values))
    if a.get("needs"):
        bits.append("needs " + " or ".join(a["needs"]))
    if a.get("value_tiers"):
        bits.append("value tier " + " or ".join(a["value_tiers"]))
    risk = a.get("churn_risk") or {}
    if risk.get("min") is not None:
        bits.append(f"churn risk at least {pct(risk['min'], 0)}")
    if risk.get("max") is not None:
        bits.append(f"churn risk at most {pct(risk['max'], 0)}")
    return "; ".join(bits) or "every customer"


def campaigns_page(ctx) -> str:
    parts = []
    config, problem = ctx.campaigns()
    if problem:
        parts.append(f'<p class="error">{escape(problem)}</p>')
    plans = files.plans(ctx.root)
    from nextbest.monitoring.console.overview import uplift_result

    result, source = uplift_result(ctx, None, None)
    uplift = (result or {}).get("campaigns") or {}
    names = list(config) + sorted({p["campaign"] for p in plans} - set(config))
    if not names:
        parts.append(missing("No outbound campaign: configs/campaigns.yaml names none and there are no plans under "
                             "<code>plans/</code>."))
    conn = ctx.connect()
    try:
        for name in names:
            parts.append(_campaign(ctx, conn, name, config.get(name), [p for p in plans if p["campaign"] == name],
                                   uplift.get(name), source))
    finally:
        if conn is not None:
            conn.close()
    return frame("Campaigns", "".join(parts), "/campaigns")


def _campaign(ctx, conn, name: str, cfg: dict | None, plans: list[dict], uplift: dict | None, source: str) -> str:
    parts = [f"<h2>Campaign {escape(name)}</h2>"]
    if cfg is None:
        parts.append('<p class="warn">Not in configs/campaigns.yaml any more; its plans remain.</p>')
    else:
        parts.append(f"<p>Products: {escape(', '.join(cfg['products']))}. "
                     f"Audience: {escape(_audience(cfg['audience']))}. "
                     f"Control group: {pct(cfg['holdout_share'], 0)} of the audience; exploration: "
                     f"{pct(cfg['explore_share'], 0)} of contacts"
                     + (f"; budget {escape(eur(cfg['budget']))} a day" if cfg.get("budget") is not None else "")
                     + ".</p>")
    if not plans:
        parts.append(missing(f"No plan yet: <code>nextbest plan --campaign {escape(name)} --date YYYY-MM-DD</code> "
                             "writes one."))
    else:
        parts.append(_plans(ctx, conn, name, cfg, plans[:MAX_PLANS]))
        if len(plans) > MAX_PLANS:
            parts.append(f'<p class="muted">{len(plans) - MAX_PLANS} older plans not shown.</p>')
    parts.append(_uplift(uplift, source))
    return "".join(parts)


def _plans(ctx, conn, name: str, cfg: dict | None, plans: list[dict]) -> str:
    margins = ctx.margins()
    rows, channel_rows = [], []
    for plan in plans:
        s = plan["summary"]
        start = datetime(plan["day"].year, plan["day"].month, plan["day"].day, tzinfo=timezone.utc).timestamp()
        r = (queries.plan_responses(conn, s.get("plan") or f"{name}@{plan['day'].isoformat()}", start, margins)
             if conn is not None else None)
        value = s.get("value") or {}
        rows.append([plan["day"].isoformat(), num(s.get("audience")), num(s.get("contacts")),
                     num(s.get("control_withheld")), eur(value.get("plan")),
                     "–" if r is None else num(r["responses"]),
                     "–" if r is None else rate_with_interval(r["taken"], r["contacts"]),
                     "–" if r is None else eur(r["value"])])
        for channel, d in (s.get("channels") or {}).items():
            cap = d.get("capacity")
            channel_rows.append([plan["day"].isoformat(), channel, num(d.get("contacts")), num(cap),
                                 pct(d["contacts"] / cap if cap else None, 0), num(d.get("withheld")),
                                 eur(d.get("cost_per_contact"))])
    out = ("<h3>Plans</h3>" + html_table(
        ["day", "audience", "contacts", "control (not sent)", "expected value", "contacts with feedback",
         "offers taken (95% interval)", "value of taken offers"], rows)
        + '<p class="muted">Responses are the feedback the log holds on each plan\'s contacts so far.</p>')
    if channel_rows:
        out += "<h3>Contacts by channel against capacity</h3>" + html_table(
            ["day", "channel", "contacts", "capacity a day", "use", "control (not sent)", "cost per contact"],
            channel_rows)
    return out


def _uplift(result: dict | None, source: str) -> str:
    head = "<h3>Incremental conversions</h3>"
    if result is None:
        return head + missing("Not measured yet: <code>nextbest monitor</code> measures each campaign's control "
                              "group against its contacts (uplift.json), as the console does on a small log.")
    if not result.get("assigned"):
        return head + missing("No customer in this campaign's control or treatment group yet.")
    o = result.get("overall") or {}
    n_c, n_t = o.get("n_control") or 0, o.get("n_treatment") or 0
    if not (n_c and n_t):
        imm = result.get("immature") or {}
        return head + missing(f"No uplift yet: it needs customers in both groups whose outcome window has passed "
                              f"({num(n_c)} control and {num(n_t)} treated so far; {num(imm.get('control', 0))} "
                              f"and {num(imm.get('treatment', 0))} still within it).")
    pp = lambda v: num(None if v is None else 100 * v, 2) + " pp"  # noqa: E731
    conversions = (o.get("conversions_treatment") or 0) + (o.get("conversions_control") or 0)
    incremental = None if o.get("uplift") is None else o["uplift"] * n_t
    text = (f"<p>Conversion {pct(o.get('rate_treatment'), 2)} among {num(n_t)} contacted against "
            f"{pct(o.get('rate_control'), 2)} among {num(n_c)} in the control group: uplift "
            f"<b>{escape(pp(o.get('uplift')))}</b> {escape(interval(o.get('uplift_ci'), pp))} (95%), about "
            f"{escape(num(incremental, 1))} incremental conversions; value uplift "
            f"{escape(eur(o.get('value_uplift')))} per customer {escape(interval(o.get('value_uplift_ci'), eur))}. "
            f"Uplift {escape(source)}.</p>")
    if conversions < FEW_EVENTS:
        text += (f'<p class="warn">Rests on {conversions} conversions only: too few events to read; the interval '
                 "says how little is known.</p>")
    return head + text
