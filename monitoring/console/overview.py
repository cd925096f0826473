"""Overview: the last period in plain words, weekly trends, uplift against the control groups and
the monitor's verdict."""

from __future__ import annotations

from html import escape

from nextbest.monitoring.charts import num, pct, uplift_html
from nextbest.monitoring.console import files, queries
from nextbest.monitoring.console.layout import (FEW_EVENTS, day, eur, figure, frame, line_chart, missing,
                                                 rate_with_interval, when)
from nextbest.monitoring.index_page import describe

PERIOD_DAYS = 28
TREND_WEEKS = 12
# Uplift is measured live over the period up to this many decisions; above, the monitor's report is read.
LIVE_UPLIFT_MAX = 20_000


def period_form(since_text: str, until_text: str, action: str) -> str:
    return (f'<form class="search" method="get" action="{action}">From <input name="from" placeholder="YYYY-MM-DD" '
            f'value="{escape(since_text)}" size="11"> to <input name="to" placeholder="YYYY-MM-DD" '
            f'value="{escape(until_text)}" size="11"> <button>Show</button></form>')


def overview_page(ctx, since: float | None, until: float | None, since_text: str = "", until_text: str = "") -> str:
    """The overview of decisions logged in [since, until) (None: the 28 days up to the last decision)."""
    parts = [period_form(since_text, until_text, "/")]
    conn = ctx.connect()
    span = conn.time_span() if conn is not None else None
    if span is None:
        parts.append(missing("No decisions yet: the event log (<code>events.db</code>) is "
                             + ("empty." if conn is not None else "not there.")
                             + " It fills once <code>nextbest serve</code> answers <code>POST /recommend</code> "
                             "or <code>nextbest plan</code> logs an outbound plan."))
    else:
        until = span[1] + 1e-6 if until is None else until
        since = max(span[0], until - PERIOD_DAYS * 86400.0) if since is None else since
        trend_since = max(span[0], until - TREND_WEEKS * queries.WEEK)
        totals, weeks = queries.period_and_weeks(ctx.paths.events_db, since, until, trend_since, ctx.margins())
        parts.append(_period(totals, since, until))
        parts.append(_trends(weeks))
    if conn is not None:
        conn.close()
    # Uplift needs each customer's outcome window to have passed: with no end date given, outcomes count up to now.
    parts.append(_uplift(ctx, since if span else None, until if span and until_text else None))
    parts.append(_gate(ctx))
    return frame("Overview", "".join(parts), "/")


def _period(t: queries.Totals, since: float, until: float) -> str:
    head = f"<h2>From {escape(when(since))} to {escape(when(until))}</h2>"
    if not t.decisions:
        return head + missing("No decisions in this period: choose another range.")
    words = (f"<p>The service and the outbound plans made <b>{num(t.decisions)}</b> "
             f"decision{'s' if t.decisions != 1 else ''} and showed <b>{num(t.offers)}</b> "
             f"offer{'s' if t.offers != 1 else ''}; "
             f"customers took <b>{num(t.accepted)}</b> of them "
             f"(acceptance with its 95% interval: {escape(rate_with_interval(t.accepted, t.offers, warn=False))}), "
             "worth "
             f"<b>{escape(eur(t.value))}</b> ({escape(eur(t.value / t.decisions))} per decision). "
             f"{pct(t.exploring / t.decisions)} of the decisions explored and {pct(t.degraded / t.decisions)} were "
             "degraded answers (a fallback when features or models were unavailable).</p>")
    if t.accepted < FEW_EVENTS:
        taken = "No offer taken yet" if t.accepted == 0 else f"Only {t.accepted} offer{'s' * (t.accepted > 1)} taken"
        words += (f'<p class="warn">{taken}: the acceptance rate and value rest on too few events to '
                  "read.</p>")
    boxes = ('<div class="figures">' + figure("decisions", num(t.decisions)) + figure("offers shown", num(t.offers))
             + figure("offers taken", num(t.accepted))
             + figure("acceptance", pct(t.acceptance, 2), rate_with_interval(t.accepted, t.offers, warn=False)
                      .split(" ", 1)[-1] + " (95%)")
             + figure("value", eur(t.value, 0)) + "</div>")
    return head + words + boxes


def _trends(weeks: list[dict]) -> str:
    labels = [day(w["start"]) for w in weeks]
    charts = [line_chart("Decisions per week", list(zip(labels, [w["decisions"] for w in weeks]))),
              line_chart("Offers taken per week", list(zip(labels, [w["accepted"] for w in weeks]))),
              line_chart("Acceptance per week (%)", list(zip(labels, [
                  100 * w["accepted"] / w["offers"] if w["offers"] else 0.0 for w in weeks])), lambda v: f"{v:.2f}%"),
              line_chart("Value per week (EUR)", list(zip(labels, [w["value"] for w in weeks])),
                         lambda v: f"{num(v)} EUR")]
    return ("<h2>Weekly trends</h2><p class=\"muted\">Weeks of 7 days back from the period's end, from "
            + escape(day(weeks[0]["start"])) + ", by the time each decision was logged.</p><div class=\"charts\">"
            + "".join(charts) + "</div>")


def uplift_result(ctx, since: float | None, until: float | None) -> tuple[dict | None, str]:
    """The uplift of every control group (`nextbest.monitoring.uplift.uplift`) over decisions from
    `since` (None: the whole log) to `until` (None: now), measured now when the log holds at most
    LIVE_UPLIFT_MAX of them, else the latest report's; and where it comes from, in words."""
    report = files.latest_report(ctx.root)
    result = files.report_json(report, "uplift.json")
    source = f"from the monitor's report of {report.name}" if result is not None else ""
    conn = ctx.connect()
    if conn is None:
        return result, source
    try:
        n = conn.count_decisions(since, until)
    finally:
        conn.close()
    if 0 < n <= LIVE_UPLIFT_MAX:
        from nextbest.monitoring.charts import clean
        from nextbest.monitoring.uplift import uplift

        result = clean(uplift(ctx.paths.events_db, ctx.catalogue(), ctx.campaign_products(), since=since,
                              until=until, n_boot=300))
        source = "measured now over " + ("the period" if since is not None else "the whole log")
    return result, source


def _uplift(ctx, since: float | None, until: float | None) -> str:
    head = "<h2>Uplift against the control groups</h2>"
    result, source = uplift_result(ctx, since, until) if since is not None else (None, "")
    if result is None:
        return head + missing("No uplift measured yet: <code>nextbest monitor</code> writes it (uplift.json) once the "
                              "log has decisions in control and treatment groups.")
    return head + f'<p class="muted">Uplift {escape(source)}.</p>' + uplift_html(result, full=False)


def _gate(ctx) -> str:
    head = "<h2>Monitoring gate</h2>"
    report = files.latest_report(ctx.root)
    summary = files.report_json(report, "summary.json")
    if summary is None:
        return head + missing("No monitoring report yet: run <code>nextbest monitor</code> (it writes "
                              "<code>reports/&lt;date&gt;/summary.json</code>).")
    checks = (summary.get("gate") or {}).get("checks") or []
    failed = [c for c in checks if not c.get("passed")]
    link = f'<a href="/reports/{escape(report.name)}/index.html">the full report</a>'
    if not checks:
        verdict = "No check could be run."
    elif failed:
        verdict = (f"The gate <b>failed</b> on {escape(report.name)}: {len(failed)} of {len(checks)} checks did not "
                   "pass. Why: " + "; ".join(escape(f"{what.lower()}: {value} (limit {limit})")
                                            for what, value, limit in map(_describe, failed)) + ".")
    else:
        verdict = f"The gate <b>passed</b> on {escape(report.name)}: all {len(checks)} checks are within their limits."
    return head + f"<p>{verdict} See {link}.</p>"


def _describe(check: dict) -> tuple[str, str, str]:
    try:
        return describe(check)
    except (KeyError, TypeError, ValueError):
        return str(check.get("check", "check")), str(check.get("value")), str(check.get("limit"))
