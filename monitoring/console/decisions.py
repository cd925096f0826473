"""Decisions: a searchable, paged list of the log's decisions, newest first.

Search by customer id (looked up by its pseudonym), channel, product, logging date and flags;
pages follow the log's time index, so the hundredth page costs what the first does.
"""

from __future__ import annotations

from html import escape
from typing import get_args
from urllib.parse import urlencode

from nextbest.config.policy import Channel
from nextbest.monitoring.charts import num, pct
from nextbest.monitoring.console import queries
from nextbest.monitoring.console.layout import frame, missing, when

CHANNELS = get_args(Channel)


def search_form(values: dict, products: list[str]) -> str:
    def select(name: str, options, label: str) -> str:
        opts = "".join(f'<option value="{escape(o)}"{" selected" if values.get(name) == o else ""}>{escape(o)}</option>'
                       for o in options)
        return f'{label} <select name="{name}"><option value="">any</option>{opts}</select>'

    flags = "".join(f'<label><input type="checkbox" name="flag" value="{k}"'
                    f'{" checked" if k in values.get("flags", ()) else ""}> {escape(label)}</label> '
                    for k, label in queries.FLAGS.items())
    return ('<form class="search" method="get" action="/decisions">'
            f'Customer id <input name="customer" value="{escape(values.get("customer", ""))}" size="14"> '
            + select("channel", CHANNELS, "channel") + select("product", products, "product")
            + f'from <input name="from" placeholder="YYYY-MM-DD" value="{escape(values.get("from", ""))}" size="11"> '
            f'to <input name="to" placeholder="YYYY-MM-DD" value="{escape(values.get("to", ""))}" size="11"><br>'
            + flags + "<button>Search</button></form>")


def _offers(row: queries.DecisionRow) -> str:
    if not row.offers:
        return "no offer"
    out = []
    for o in row.offers:
        if not isinstance(o, dict):
            continue
        bits = [str(o.get("product_id"))]
        if o.get("propensity") is not None:
            bits.append(f"propensity {pct(o['propensity'])}")
        if o.get("probability") is not None:
            bits.append(f"P(accept) {pct(o['probability'], 2)}")
        if o.get("explored"):
            bits.append("explored")
        out.append(f"{o.get('rank', '')}. " + ", ".join(bits))
    return "<br>".join(escape(x) for x in out)


def _feedback(row: queries.DecisionRow) -> str:
    if not row.feedback:
        return "–"
    return "<br>".join(escape(f"{p}: {e}" + (f" ({num(v, 2)} EUR)" if v is not None else ""))
                       for p, e, v, _ in row.feedback)


def _notes(row: queries.DecisionRow) -> str:
    c, notes = row.context, []
    if c.get("holdout"):
        notes.append("control group: nothing shown")
    if c.get("exploring"):
        notes.append("exploring")
    if c.get("degraded"):
        notes.append(f"degraded: {c['degraded']}")
    if c.get("blocked"):
        notes.append(f"channel blocked by {c['blocked']}")
    if c.get("plan"):
        notes.append(f"plan {c['plan']}")
    suppressed = [s for s in c.get("suppressed") or [] if isinstance(s, dict)]
    if suppressed:
        notes.append("suppressed: " + ", ".join(f"{s.get('product_id')} ({s.get('rule')})" for s in suppressed[:8])
                     + (f" and {len(suppressed) - 8} more" if len(suppressed) > 8 else ""))
    return "<br>".join(escape(n) for n in notes) or "–"


def decisions_table(rows: list[queries.DecisionRow]) -> str:
    head = "".join(f'<th class="l">{h}</th>' for h in ("logged", "decision", "customer (pseudonym)", "channel",
                                                       "policy", "offers", "feedback", "notes"))
    body = "".join(
        f'<tr><td>{escape(when(r.created_at))}</td><td class="l"><code>{escape(r.decision_id[:12])}</code></td>'
        f'<td class="l"><code>{escape(r.pseudonym)}</code></td><td class="l">{escape(r.channel)}</td>'
        f'<td class="l">{escape(str(r.context.get("policy") or "–"))}</td><td class="l">{_offers(r)}</td>'
        f'<td class="l">{_feedback(r)}</td><td class="l">{_notes(r)}</td></tr>' for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def decisions_page(ctx, values: dict, filters: queries.Filters | None, before: int | None, problem: str = "") -> str:
    """The search form and one page of matching decisions (`filters` None: the search could not be read)."""
    parts = [search_form(values, ctx.product_ids())]
    if problem:
        parts.append(f'<p class="error">{escape(problem)}</p>')
    conn = ctx.connect()
    if conn is None:
        parts.append(missing("No decisions yet: there is no event log (<code>events.db</code>) in the work "
                             "directory."))
        return frame("Decisions", "".join(parts), "/decisions")
    try:
        if filters is None:
            return frame("Decisions", "".join(parts), "/decisions")
        rows, next_before = queries.decisions_page(conn, filters, before)
    finally:
        conn.close()
    if not rows:
        searched = any(values.get(k) for k in ("customer", "channel", "product", "from", "to", "flags"))
        parts.append(missing("No decision matches this search." if searched or before is not None else
                             "No decisions yet: the log is empty."))
    else:
        parts.append(f'<p class="muted">{len(rows)} decisions, newest first. Customers are shown by their '
                     "pseudonym, as the log keeps them.</p>" + decisions_table(rows))
    links = []
    if before is not None:
        links.append(f'<a href="/decisions?{_query(values)}">newest</a>')
    if next_before is not None:
        links.append(f'<a href="/decisions?{_query(values, before=next_before)}">older →</a>')
    if links:
        parts.append("<p>" + " · ".join(links) + "</p>")
    return frame("Decisions", "".join(parts), "/decisions")


def _query(values: dict, **more) -> str:
    pairs = [(k, v) for k, v in values.items() if k != "flags" and v]
    pairs += [("flag", f) for f in values.get("flags", ())]
    pairs += [(k, str(v)) for k, v in more.items()]
    return escape(urlencode(pairs))
