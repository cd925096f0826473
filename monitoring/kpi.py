"""Business KPIs from the decision log: what was shown, to whom, how often, and what it earned.

Per product, channel, segment, policy and policy arm: offers shown, impressions, click and
acceptance rates, conversion value per decision, exploration share; how often each rule
suppressed offers; contact pressure per customer (offers per week). Everything is an aggregate:
no per-customer row leaves this module, and customers are only ever seen as pseudonyms.

The time of a decision is the business time it was made for, `context.request.at` (the request's
timestamp; equal to `created_at` in live serving, the simulated clock in replays), else `created_at`.

The log is read in bulk, three queries at once on their own read-only connections: one scan of
`decisions` for the decision-level fields (SQLite's JSON functions, which parse each row's context
once), one for the offers (`json_each`), one of `feedback`. The grouping is numpy on integer codes.
Most of the time is SQLite parsing the JSON contexts: about 30 s of CPU for 1,000,000 decisions.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import numpy as np
import pandas as pd

WEEK = 7 * 86400.0
ACCEPTED = ("accept", "convert")  # feedback that means the offer was taken
# Decision-level policy arms: every decision is in exactly one.
ARMS = ("holdout", "degraded", "exploring", "exploiting")
OFFER_KINDS = ("explored", "exploited")
DIMENSIONS = ("by_product", "by_channel", "by_segment", "by_policy", "by_arm", "by_offer_kind")
UNKNOWN = "unknown"
RULE = re.compile(r'"rule":\s*"([^"]*)"')

# Decision time and the decision-level context fields; SQLite caches the parsed context per row.
TIME_SQL = "COALESCE(context ->> '$.request.at', created_at)"
DECISIONS_SQL = f"""
SELECT rowid, {TIME_SQL} AS t, customer_pseudonym, channel, json_array_length(offers),
       context ->> '$.policy', context ->> '$.exploring', context ->> '$.degraded', context ->> '$.segment',
       context ->> '$.blocked', context ->> '$.holdout', context -> '$.suppressed'
FROM decisions WHERE t >= ? AND t < ?
"""
OFFERS_SQL = """
SELECT d.rowid, o.value ->> 'product_id', o.value ->> 'explored'
FROM decisions d, json_each(d.offers) o
"""
FEEDBACK_SQL = """
SELECT d.rowid, f.product_id, f.event, f.value
FROM feedback f JOIN decisions d USING (decision_id) WHERE f.created_at < ?
"""


def connect(events_db: Path) -> sqlite3.Connection | None:
    """A read-only connection to the event log, or None when there is none yet."""
    events_db = Path(events_db)
    if not events_db.exists():
        return None
    conn = sqlite3.connect(f"file:{events_db}?mode=ro", uri=True)
    has = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "decisions" not in has:
        conn.close()
        return None
    return conn


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
    conn = connect(events_db)
    if conn is None:
        return empty_kpis(since, until)
    conn.close()
    # The three scans run at once on their own connections: SQLite parses JSON without the GIL.
    with ThreadPoolExecutor(3) as pool:
        drows, orows, frows = pool.map(lambda q: _fetch(events_db, *q), [
            (DECISIONS_SQL, (lo, hi)), (OFFERS_SQL, ()), (FEEDBACK_SQL, (hi,))])
    if not drows:
        return empty_kpis(since, until)
    dec = _decisions(drows)
    del drows
    off = _offers(orows, frows, dec, catalogue, action_values or {})
    del orows, frows

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


def _fetch(events_db: Path, sql: str, params: tuple) -> list[tuple]:
    with closing(sqlite3.connect(f"file:{Path(events_db)}?mode=ro", uri=True)) as conn:
        return conn.execute(sql, params).fetchall()


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


def _columns(rows: list[tuple], n: int) -> list[list]:
    """Columns of a fetched result (zip(*rows) is slow for millions of rows)."""
    return [list(map(itemgetter(i), rows)) for i in range(n)]


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


def _decisions(rows: list[tuple]) -> _Decisions:
    rowid, t, customer, channel, n_offers, policy, exploring, degraded, segment, blocked, holdout, suppressed = (
        _columns(rows, 12))
    holdout = np.array(holdout, dtype=object) == 1
    exploring = np.array(exploring, dtype=object) == 1
    degraded = np.array([d is not None for d in degraded])
    arm = np.select([holdout, degraded, exploring], [0, 1, 2], 3)
    return _Decisions(np.array(rowid, np.int64), np.array(t, float), _coded(customer), _coded(channel),
                      np.array([n or 0 for n in n_offers], np.int64), _coded(policy), exploring, _coded(segment),
                      (arm, list(ARMS)), list(blocked), list(suppressed))


def _offers(orows: list[tuple], frows: list[tuple], dec: _Decisions, catalogue, action_values: dict) -> _Offers:
    """The period's offers joined to their decision (by position) and to their feedback."""
    o_rowid, o_product, o_explored = _columns(orows, 3)
    o_rowid = np.array(o_rowid, np.int64)
    f_rowid, f_product, f_event, f_value = _columns(frows, 4)
    f_rowid = np.array(f_rowid, np.int64)
    top = max(int(dec.rowid.max()), *(int(r.max()) for r in (o_rowid, f_rowid) if len(r)))
    pos = np.full(top + 1, -1, np.int64)  # decision position by rowid, -1 outside the period
    pos[dec.rowid] = np.arange(len(dec.rowid))
    o_pos = pos[o_rowid]
    keep = o_pos >= 0
    codes, labels = _coded(np.array(o_product, dtype=object)[keep])
    o_pos = o_pos[keep]
    explored = (np.array(o_explored, dtype=object) == 1)[keep]
    n = len(o_pos)
    impression, click, accepted = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    explicit = np.full(n, np.nan)
    if len(f_rowid) and n:
        f_pos = pos[f_rowid]
        f_code = pd.Categorical(pd.Series(f_product, dtype=object), categories=labels).codes.astype(np.int64)
        f_event = np.array(f_event, dtype=object)
        f_value = np.array([np.nan if v is None else v for v in f_value], float)
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
