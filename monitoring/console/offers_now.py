"""The portrait's "offers now": what the decision service would rank for the customer at this moment,
from a read-only decision engine over the same work directory (the models, rules, control groups
and the policy's current state), with nothing logged and nothing explored.

Each offer shows what its score rests on; each offer the rules or control groups hold back shows the
rule, in words.
"""

from __future__ import annotations

from html import escape

from nextbest.constants import CHANNELS
from nextbest.monitoring.charts import html_table, pct
from nextbest.monitoring.console.layout import eur, missing

ALL_OFFERS = "*"  # a suppression's product when a rule held back everything on the channel

RULES = {
    "already_held": "already held",
    "age_eligibility": "outside the product's age range",
    "requires_product": "needs a product the customer does not hold",
    "credit_cooldown": "a loan was opened recently (credit cool-down)",
    "rejection_cooldown": "declined recently (rejection cool-down)",
    "marketing_opt_out": "the customer opted out of marketing",
    "cold_start_entry_products": "not an entry product, and the bank does not know this customer yet",
}


def rule_words(rule: str) -> str:
    """A rule as the decision log names it, in words."""
    if rule in RULES:
        return RULES[rule]
    if rule.startswith("no_consent_"):
        return f"no consent to be contacted by {rule.removeprefix('no_consent_')}"
    if rule.startswith("frequency_cap_"):
        return f"this week's contacts on {rule.removeprefix('frequency_cap_').replace('_', ' ')} are used up"
    if rule.startswith("holdout:"):
        return f"in the control group of {rule.removeprefix('holdout:')} (kept from offers to measure uplift)"
    return rule.replace("_", " ")


def channel_form(customer_id: str, channel: str) -> str:
    options = "".join(f'<option value="{c}"{" selected" if c == channel else ""}>{c.replace("_", " ")}</option>'
                      for c in CHANNELS)
    return ('<form class="search" method="get" action="/customer">'
            f'<input type="hidden" name="id" value="{escape(customer_id)}"> On '
            f'<select name="channel">{options}</select> <button>Show</button></form>')


def offers_now(ctx, customer_id: str, channel: str) -> str:
    """The section, or what keeps it from being shown."""
    head = "<h2>Offers now</h2>" + channel_form(customer_id, channel)
    engine, status = ctx.engine()
    if engine is None:
        return head + missing(status)
    try:
        preview = engine.preview(customer_id, channel)
    except Exception as exc:  # noqa: BLE001 - the rest of the portrait stands; the page says what failed
        return head + missing(f"The decision engine could not rank offers for this customer ({escape(str(exc))}).")
    return head + render(preview)


def render(p: dict) -> str:
    channel = p["channel"].replace("_", " ")
    models = ", ".join(f"{escape(name)} v{escape(str(v))}" for name, v in p["model_versions"].items())
    parts = [f'<p class="muted">What the service would answer on {escape(channel)} now, ranked by the policy\'s '
             f"current estimate ({escape(p['policy']['name'])}, {p['policy']['updates']:,} rewards learnt; "
             f"arbitration by {escape(p['policy']['arbitration'])}; champions {models} as loaded when the console "
             "started). Nothing is logged and nothing explored: a real request explores on a share of "
             "decisions.</p>"]
    if p["degraded"]:
        parts.append(missing(f"The answer would be degraded: {escape(p['degraded'])}."))
    if not p["known"]:
        parts.append(missing("The bank's data does not know this customer: ranked as a prospect."))
    if p["suppressed_by"]:
        parts.append(f"<p><b>Nothing would be offered on {escape(channel)}</b>: "
                     f"{escape(rule_words(p['suppressed_by']))}.</p>")
    elif not p["offers"]:
        parts.append("<p>No offer is left after the rules.</p>")
    else:
        rows = []
        for o in p["offers"]:
            why = ["viewed recently"] if o["viewed"] else []
            rows.append([str(o["rank"]), o["name"], pct(o["base_probability"], 2), pct(o["probability"], 2),
                         eur(o["value"], 0), eur(o["expected_value"], 2), ", ".join(why) or "–"])
        parts.append(html_table(["rank", "offer", "P(acquire), model", "P(accept), policy now", "value if accepted",
                                 "expected value", "also"], rows))
        parts.append('<p class="muted">Ranked by expected value: P(accept) x value if accepted (with uplift '
                     "arbitration, the part of it the offer adds). P(acquire) is the next-best-product model's "
                     "probability, the policy's starting point.</p>")
    held = [s for s in p["suppressed"] if s["product_id"] != ALL_OFFERS]
    if held:
        parts.append("<h3>Held back</h3>" + html_table(
            ["offer", "rule"], [[s["product_id"], rule_words(s["rule"])] for s in held]))
    if p["churn_risk"] is not None:
        parts.append(f"<p>Churn risk now (3 months): {pct(p['churn_risk'])}.</p>")
    return "".join(parts)
