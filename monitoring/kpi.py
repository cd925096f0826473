"""Business KPIs from the decision log: what was shown, to whom, how often, and what it earned.

Per product, channel, segment, policy and policy arm: offers shown, impressions, click and
acceptance rates, conversion value per decision, exploration share; how often each rule
suppressed offers; contact pressure per customer (offers per week). Everything is an aggregate:
no per-customer row leaves this module, and customers are only ever seen as pseudonyms.

The time of a decision is the business time it was made for, `context.request.at` (the request's
timestamp; equal to `created_at` in live serving, the simulated clock in replays), else `created_at`.

The log is read in bulk through `nextbest.eventlog.EventLogReader`, three reads at once on their
own read-only connections: the decision-level fields (SQLite's JSON functions, which parse each
row's context once), the offers, and the feedback. The grouping is numpy on integer codes.
Most of the time is SQLite parsing the JSON contexts: about 30 s of CPU for 1,000,000 decisions.
"""

from __future__ import annotations

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.eventlog import ACCEPTED, EventLogReader

WEEK = 7 * 86400.0
# Decision-level policy arms: every decision is in exactly one.
ARMS = ("holdout", "degraded", "exploring", "exploiting")
OFFER_KINDS = ("explored", "exploited")
DIMENSIONS = ("by_product", "by_channel", "by_segment", "by_policy", "by_arm", "by_offer_kind")
UNKNOWN = "unknown"
RULE = re.compile(r'"rule":\s*"([^"]*)"')

# What each of the three reads asks of the log (`nextbest.eventlog` names the fields).
DECISION_COLUMNS = ("rowid", "at", "customer_pseudonym", "channel", "n_offers", "policy", "exploring", "degraded",
                    "segment", "blocked", "holdout", "suppressed_json")
OFFER_COLUMNS = ("decision_rowid", "product_id", "explored")
FEEDBACK_COLUMNS = ("decision_rowid", "product_id", "event", "value")


def bounds(since: float | None, until: float | None) -> tuple[float, float]:
    return (-np.inf if since is None else float(since)), (np.inf if until is None else float(until))


def business_kpis(events_db: Path, catalogue, since: float | None = None, until: float | None = None,
                  action_values: dict[str, float] | None = None) -> dict:
    """Business KPIs of the decisions made in `[since, until)` (epoch seconds; None: unbounded).

    Args:
        events_db: the event log (`<workdir>/events.db`); a missing or empty log gives an empty result.
        catalogue: `nextbest.config.Catalogue`; a taken offer without an explicit value is worth the
            product's yearly margin.
        action_values: value of a taken non-product action (e.g. bandit.yaml `actions.*.value`); 0 if absent.

    Returns:
        A JSON-ready dict: `period`, `totals`, one dict of metrics per key in each of `by_product`,
        `by_channel`, `by_segment`, `by_policy`, `by_arm` (holdout|degraded|exploring|exploiting, per
        decision), `by_offer_kind` (explored|exploited, per offer); `exploration`, `suppression`,
        `contact_pressure`. Rates are None where their denominator is 0.
    """
    lo, hi = bounds(since, until)
    try:
        EventLogReader(events_db).close()
    except FileNotFoundError:
        return empty_kpis(since, until)
    reads = [lambda log: log.decisions(DECISION_COLUMNS, since=lo, until=hi),
             lambda log: log.offers(OFFER_COLUMNS),
             lambda log: log.feedback(FEEDBACK_COLUMNS, until=hi)]
    # The three reads run at once on their own connections: SQLite parses JSON without the GIL.
    with ThreadPoolExecutor(3) as pool:
        decisions, offers, feedback = pool.map(lambda read: _read(events_db, read), reads)
    if decisions.empty:
        return empty_kpis(since, until)
    dec = _decisions(decisions)
    del decisions
    off = _offers(offers, feedback, dec, catalogue, action_values or {})
    del offers, feedback

    n_dec = len(dec.t)
    start = float(dec.t.min()) if since is None else float(since)
    end = float(dec.t.max()) if until is None else float(until)
    result = {
        "empty": False,
        "period": {"since": since, "until": until, "first_decision": float(dec.t.min()),
                   "last_decision": float(dec.t.max())},
        "totals": _table(["all"], np.zeros(n_dec, np.int64), dec, off)["all"],
    }
    for name, key in (("by_channel", dec.channel), ("by_segment", dec.segment), ("by_policy", dec.policy),
                      ("by_arm", dec.arm)):
        result[name] = _table(key[1], key[0], dec, off)
    result["by_product"] = _table(off.product[1], None, dec, off, off.product[0])
    result["by_offer_kind"] = _table(list(OFFER_KINDS), None, dec, off, np.where(off.explored, 0, 1))
    result["exploration"] = {
        "offer_share": _rate(int(off.explored.sum()), len(off.pos)),
        "decision_share": _rate(int(dec.exploring.sum()), n_dec),
        "decisions_exploring": int(dec.exploring.sum()),
        "offers_explored": int(off.explored.sum()),
    }
    result["suppression"] = _suppression(dec)
    result["contact_pressure"] = _pressure(dec, start, end)
    return result


def _read(events_db: Path, read) -> pd.DataFrame:
    with EventLogReader(events_db) as log:
        return read(log)


def empty_kpis(since: float | None = None, until: float | None = None) -> dict:
    """The result for a log with no decisions in the period: same keys, zero counts, no rates."""
    return {"empty": True, "period": {"since": since, "until": until, "first_decision": None, "last_decision": None},
            "totals": _row(0, 0, 0, 0, 0, 0, 0.0, 0), **{d: {} for d in DIMENSIONS},
            "exploration": {"offer_share": None, "decision_share": None, "decisions_exploring": 0,
                            "offers_explored": 0},
            "suppression": {"rules": {}, "blocked": {}, "decisions_with_suppression": 0},
            "contact_pressure": {"customers": 0, "weeks": 0.0, "offers_per_week": _stats(np.zeros(0)),
                                 "contacts_per_week": _stats(np.zeros(0)), "max_offers_in_a_week": _stats(np.zeros(0))}}


Coded = tuple[np.ndarray, list[str]]  # integer codes per row, and the label of each code


def _coded(values) -> Coded:
    codes, labels = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
    labels = [UNKNOWN if x is None else str(x) for x in labels]
    if len(set(labels)) < len(labels):  # None and a literal "unknown", or 1 and "1": merge them
        codes, labels = pd.factorize(np.asarray(labels, dtype=object)[codes])
        labels = list(labels)
    return codes.astype(np.int64), labels


@dataclass
class _Decisions:
    """The period's decisions as columns; string keys as integer codes."""

    rowid: np.ndarray
    t: np.ndarray
    customer: Coded
    channel: Coded
    n_offers: np.ndarray
    policy: Coded
    exploring: np.ndarray
    segment: Coded
    arm: Coded
    blocked: list
    suppressed: list


@dataclass
class _Offers:
    """One row per offer of the period's decisions: its decision's position, product, outcome."""

    pos: np.ndarray
    product: Coded
    explored: np.ndarray
    impression: np.ndarray
    click: np.ndarray
    accepted: np.ndarray
    value: np.ndarray


def _decisions(rows: pd.DataFrame) -> _Decisions:
    holdout, exploring = rows["holdout"].to_numpy(bool), rows["exploring"].to_numpy(bool)
    degraded = rows["degraded"].notna().to_numpy()
    arm = np.select([holdout, degraded, exploring], [0, 1, 2], 3)
    return _Decisions(rows["rowid"].to_numpy(np.int64), rows["at"].to_numpy(float),
                      _coded(rows["customer_pseudonym"]), _coded(rows["channel"]), rows["n_offers"].to_numpy(np.int64),
                      _coded(rows["policy"]), exploring, _coded(rows["segment"]), (arm, list(ARMS)),
                      rows["blocked"].tolist(), rows["suppressed_json"].tolist())


def _offers(offers: pd.DataFrame, feedback: pd.DataFrame, dec: _Decisions, catalogue, action_values: dict) -> _Offers:
    """The period's offers joined to their decision (by position) and to their feedback."""
    o_rowid = offers["decision_rowid"].to_numpy(np.int64)
    f_rowid = feedback["decision_rowid"].to_numpy(np.int64)
    top = max(int(dec.rowid.max()), *(int(r.max()) for r in (o_rowid, f_rowid) if len(r)))
    pos = np.full(top + 1, -1, np.int64)  # decision position by rowid, -1 outside the period
    pos[dec.rowid] = np.arange(len(dec.rowid))
    o_pos = pos[o_rowid]
    keep = o_pos >= 0
    codes, labels = _coded(offers["product_id"].to_numpy(object)[keep])
    o_pos = o_pos[keep]
    explored = offers["explored"].to_numpy(bool)[keep]
    n = len(o_pos)
    impression, click, accepted = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    explicit = np.full(n, np.nan)
    if len(f_rowid) and n:
        f_pos = pos[f_rowid]
        f_code = pd.Categorical(feedback["product_id"], categories=labels).codes.astype(np.int64)
        f_event = feedback["event"].to_numpy(object)
        f_value = feedback["value"].to_numpy(float)
        # Feedback on a product its decision did not show has no offer to attach to: dropped.
        ok = (f_pos >= 0) & (f_code >= 0)
        offer_key = pd.Index(o_pos * len(labels) + codes)
        where = offer_key.get_indexer((f_pos * len(labels) + f_code)[ok]) if offer_key.is_unique else None
        if where is None:  # a product twice in one decision: attach by a join instead
            where = pd.Series(np.arange(n), index=offer_key).groupby(level=0).first().reindex(
                (f_pos * len(labels) + f_code)[ok]).fillna(-1).to_numpy(np.int64)
        event, value = f_event[ok], f_value[ok]
        hit = where >= 0
        where, event, value = where[hit], event[hit], value[hit]
        impression[where[event == "impression"]] = True
        click[where[event == "click"]] = True
        taken = np.isin(event, ACCEPTED)
        accepted[where[taken]] = True
        # The largest explicit value given with an accept or convert of the offer.
        np.fmax.at(explicit, where[taken], value[taken])
    values = {**action_values, **{p.product_id: float(p.margin) for p in catalogue.products}}
    margin = np.array([values.get(label, 0.0) for label in labels] or [0.0])[codes] if n else np.zeros(0)
    value = np.where(accepted, np.where(np.isnan(explicit), margin, explicit), 0.0)
    return _Offers(o_pos, (codes, labels), explored, impression, click, accepted, value)


def _rate(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _row(decisions: int, exploring: int, offers: int, impressions: int, clicks: int, accepted: int,
         value: float, explored: int) -> dict:
    return {"decisions": int(decisions), "offers_shown": int(offers), "impressions": int(impressions),
            "clicks": int(clicks), "accepted": int(accepted), "value": float(value),
            "click_rate": _rate(clicks, offers), "acceptance_rate": _rate(accepted, offers),
            "value_per_decision": _rate(value, decisions), "value_per_offer": _rate(value, offers),
            "exploration_share": _rate(explored, offers), "exploring_decision_share": _rate(exploring, decisions)}


def _table(labels: list[str], dec_code: np.ndarray | None, dec: _Decisions, off: _Offers,
           off_code: np.ndarray | None = None) -> dict:
    """Metrics per label of a decision-level key (a decision's offers inherit it) or of an offer-level
    key (`off_code`; its decisions are those that showed such an offer)."""
    k = len(labels)
    if dec_code is not None:
        off_code = dec_code[off.pos]
        decisions = np.bincount(dec_code, minlength=k)
        exploring = np.bincount(dec_code, weights=dec.exploring, minlength=k)
    else:
        pairs = np.unique(off_code * len(dec.t) + off.pos)
        codes, pos = pairs // len(dec.t), pairs % len(dec.t)
        decisions = np.bincount(codes, minlength=k)
        exploring = np.bincount(codes, weights=dec.exploring[pos], minlength=k)
    sums = [np.bincount(off_code, weights=w, minlength=k) for w in
            (None, off.impression, off.click, off.accepted, off.value, off.explored)]
    order = sorted(range(k), key=lambda i: labels[i])
    return {labels[i]: _row(decisions[i], exploring[i], *(s[i] for s in sums)) for i in order if decisions[i] > 0}


def _suppression(dec: _Decisions) -> dict:
    """Offers each rule removed, and decisions it touched; channel-wide blocks (product `*`) included."""
    offers, decisions = Counter(), Counter()
    # Many decisions share the same suppression list: read each distinct text once. The text is
    # SQLite's minified JSON of [{product_id, rule}], and a rule name is an identifier (no quotes).
    texts = Counter(dec.suppressed)
    for text, times in texts.items():
        if not text:
            continue
        for rule, n in Counter(RULE.findall(text)).items():
            offers[rule] += n * times
            decisions[rule] += times
    n_dec = len(dec.t)
    touched = n_dec - texts.get("[]", 0) - texts.get(None, 0)
    blocked = Counter(b for b in dec.blocked if b is not None)
    return {
        "rules": {rule: {"offers": int(offers[rule]), "decisions": int(decisions[rule]),
                         "decision_share": _rate(decisions[rule], n_dec)} for rule in sorted(offers)},
        "blocked": {str(k): {"decisions": int(v), "decision_share": _rate(int(v), n_dec)}
                    for k, v in sorted(blocked.items())},
        "decisions_with_suppression": int(touched),
    }


def _stats(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {"mean": None, "p50": None, "p90": None, "max": None}
    p50, p90 = np.percentile(x, [50, 90])
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "max": float(x.max())}


def _pressure(dec: _Decisions, start: float, end: float) -> dict:
    """Offers per customer per week, over the customers (pseudonyms) with a decision in the period.

    A customer's rate is their offers over the period's length in weeks (at least one week, so a
    short period is not extrapolated); `max_offers_in_a_week` is each customer's busiest 7-day bin
    counted from the period's start. Contacts are decisions that showed at least one offer, the unit
    of the frequency caps.
    """
    weeks = max((end - start) / WEEK, 1.0)
    customer, labels = dec.customer
    n = len(labels)
    offers = np.bincount(customer, weights=dec.n_offers, minlength=n)
    contacts = np.bincount(customer, weights=dec.n_offers > 0, minlength=n)
    week = np.floor((dec.t - start) / WEEK).astype(np.int64)
    week -= week.min()
    n_weeks = int(week.max()) + 1
    cells, cell = np.unique(customer * n_weeks + week, return_inverse=True)  # (customer, week) pairs seen
    per_cell = np.bincount(cell.ravel(), weights=dec.n_offers, minlength=len(cells))
    busiest = np.zeros(n)
    np.maximum.at(busiest, cells // n_weeks, per_cell)
    return {"customers": int(n), "weeks": float(weeks),
            "offers_per_week": _stats(offers / weeks),
            "contacts_per_week": _stats(contacts / weeks),
            "max_offers_in_a_week": _stats(busiest)}
