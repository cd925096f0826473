"""The batch decision path: every customer of the latest feature snapshot through the rules that
`/recommend` applies to one, as arrays.

The inputs are the ones serving reads: the feature snapshot the online store holds (the rule
inputs come from `nextbest.serving.fallback.profile_fields`'s columns), the customer's real-time
events (opt-outs, consent changes, loans, products acquired since the snapshot: such customers
go through `make_profile` itself), and the decision log's contact history (weekly caps per
channel, rejection cool-down). The rules are those of `nextbest.serving.decide.apply_rules` and
`apply_holdout`, vectorised; a test holds the two to the same answers customer by customer.
Privacy rules fail closed as there: an unknown opt-out flag or consent is a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nextbest.config import GLOBAL_HOLDOUT, BanditConfig, Catalogue, RulesConfig
from nextbest.constants import CUSTOMER_ID
from nextbest.serving.decide import CONTROL, holdout_unit, is_credit, make_profile
from nextbest.serving.fallback import DAYS_PER_MONTH, NEVER, profile_fields

DAY = 86400.0


@dataclass
class Rules:
    """What the rules allow, per customer, channel and product.

    Attributes:
        channel_ok: (n, C) the customer may be contacted on the channel (opt-out, consent, weekly caps).
        product_ok: (n, P) the product may be offered (held, eligibility, cool-downs, control groups).
        global_control: (n,) in the global control group: no offer at all.
        suppressed: rule -> customers it removed something from (for the plan report).
    """

    channel_ok: np.ndarray
    product_ok: np.ndarray
    global_control: np.ndarray
    groups: list[dict[str, str]]
    suppressed: dict[str, int] = field(default_factory=dict)


def _flag(frame: pd.DataFrame, column: str) -> np.ndarray:
    """1.0 / 0.0 / NaN (unknown) of a boolean feature column; a missing column is unknown everywhere."""
    if column not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(float)


def number(frame: pd.DataFrame, column: str, default: float = np.nan) -> np.ndarray:
    """A numeric feature column as float64 (missing values NaN; a missing column: `default` everywhere)."""
    if column not in frame:
        return np.full(len(frame), default)
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(float)


@dataclass
class RuleInputs:
    """The rule inputs of `profile_fields`, as arrays over the snapshot's customers."""

    opt_out: np.ndarray          # (n,) 1, 0 or NaN
    consents: dict[str, np.ndarray]  # flag -> (n,) 1, 0 or NaN
    held: np.ndarray             # (n, P) bool
    age: np.ndarray              # (n,) NaN: unknown
    days_since_loan: np.ndarray  # (n,) NaN: none


def rule_inputs(snapshot: pd.DataFrame, catalogue: Catalogue, rules: RulesConfig, now: float, taken_at: float,
                events: dict[str, list[tuple[str, dict, float]]] | None = None,
                pseudonyms: np.ndarray | None = None) -> RuleInputs:
    """The rule inputs of every customer, overlaid with their real-time events as serving does.

    Args:
        snapshot: the latest feature snapshot, one row per customer.
        now: epoch seconds of the decision (the plan's day).
        taken_at: epoch seconds of the snapshot.
        events: pseudonym -> (event, payload, occurred_at) oldest first, for customers that have any.
        pseudonyms: (n,) the customers' pseudonyms (needed with `events`).
    """
    ids = catalogue.ids
    held = np.column_stack([np.nan_to_num(number(snapshot, f"held_{p}"), nan=0.0) != 0 for p in ids]) \
        if ids else np.zeros((len(snapshot), 0), bool)
    credit = [p.product_id for p in catalogue.products if is_credit(p, rules)]
    months = np.full(len(snapshot), np.inf)
    for p in credit:
        m = number(snapshot, f"months_since_acq_{p}")
        months = np.fmin(months, np.where(m < NEVER, m, np.inf))
    days = np.where(np.isfinite(months), months * DAYS_PER_MONTH + max(0.0, now - taken_at) / DAY, np.nan)
    out = RuleInputs(_flag(snapshot, "marketing_opt_out"),
                     {c: _flag(snapshot, c) for c in sorted(set(rules.channel_consent.values()))},
                     held, number(snapshot, "age"), days)
    if events and pseudonyms is not None:
        index = {p: i for i, p in enumerate(pseudonyms)}
        records = snapshot.iloc[[index[p] for p in events if p in index]].to_dict("records")
        for pseudonym, rec in zip([p for p in events if p in index], records):
            i = index[pseudonym]
            profile = make_profile(profile_fields(rec, catalogue, rules), events[pseudonym], now, taken_at)
            out.opt_out[i] = np.nan if profile.marketing_opt_out is None else float(profile.marketing_opt_out)
            for c in out.consents:
                v = profile.consents.get(c)
                out.consents[c][i] = np.nan if v is None else float(v)
            out.held[i] = [p in profile.held for p in ids]
            out.days_since_loan[i] = np.nan if profile.days_since_loan is None else profile.days_since_loan
    return out


def apply_batch_rules(inputs: RuleInputs, catalogue: Catalogue, rules: RulesConfig, channels: list[str],
                      contacts: np.ndarray, rejected: np.ndarray, weekly_cap: int | None = None,
                      outbound_contacts: np.ndarray | None = None,
                      within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """`apply_rules` for every customer and channel.

    Args:
        channels: the channels planned on, C of them.
        contacts: (n, C) decisions with offers per channel in the last 7 days.
        rejected: (n, P) offers rejected or dismissed within the rejection cool-down.
        weekly_cap: the campaign's cap on outbound contacts per customer in 7 days, all channels.
        outbound_contacts: (n,) those contacts.
        within: (n,) count suppressions among these customers only (the campaign's audience).

    Returns:
        (channel_ok (n, C), product_ok (n, P), customers each rule removed something from).
    """
    n = len(inputs.opt_out)
    suppressed: dict[str, int] = {}

    def note(rule: str, hit: np.ndarray) -> None:
        if within is not None:
            hit = hit & within
        if hit.any():
            suppressed[rule] = suppressed.get(rule, 0) + int(hit.sum())

    refused = ~(inputs.opt_out == 0)  # NaN (unknown) refuses too
    note("marketing_opt_out", refused)
    channel_ok = np.zeros((n, len(channels)), dtype=bool)
    for j, channel in enumerate(channels):
        ok = ~refused
        consent = rules.channel_consent.get(channel)
        if consent is not None:
            flag = inputs.consents.get(consent, np.full(n, np.nan))
            no = ok & ~(flag == 1)
            note(f"no_{consent}", no)
            ok &= ~no
        cap = rules.frequency_caps_per_week.get(channel)
        if cap is not None:
            capped = ok & (contacts[:, j] >= cap)
            note(f"frequency_cap_{channel}", capped)
            ok &= ~capped
        channel_ok[:, j] = ok
    if weekly_cap is not None and outbound_contacts is not None:
        capped = channel_ok.any(1) & (outbound_contacts >= weekly_cap)
        note("campaign_weekly_cap", capped)
        channel_ok &= ~capped[:, None]
    products = catalogue.products
    held = inputs.held
    ok = ~held
    note("already_held", held.any(1))
    if rules.eligibility:
        age = inputs.age
        known_age = ~np.isnan(age) & (age >= 0)
        lo = np.array([p.eligibility.min_age for p in products], dtype=float)
        hi = np.array([p.eligibility.max_age for p in products], dtype=float)
        outside = known_age[:, None] & ((np.nan_to_num(age)[:, None] < lo) | (np.nan_to_num(age)[:, None] > hi)) & ok
        note("age_eligibility", outside.any(1))
        ok &= ~outside
        index = {p: i for i, p in enumerate(catalogue.ids)}
        for j, p in enumerate(products):
            if p.eligibility.requires:
                has = held[:, [index[r] for r in p.eligibility.requires if r in index]].any(1)
                missing = ok[:, j] & ~has
                note("requires_product", missing)
                ok[:, j] &= ~missing
    cooldown = ~np.isnan(inputs.days_since_loan) & (inputs.days_since_loan < rules.credit_cooldown.days)
    credit = np.array([is_credit(p, rules) for p in products], dtype=bool)
    hit = ok & cooldown[:, None] & credit[None, :]
    note("credit_cooldown", hit.any(1))
    ok &= ~hit
    hit = ok & rejected
    note("rejection_cooldown", hit.any(1))
    ok &= ~hit
    return channel_ok, ok, suppressed


def holdout_masks(policy: BanditConfig, catalogue: Catalogue, customer_ids: list[str]) -> tuple[np.ndarray, np.ndarray,
                                                                                                 list[dict[str, str]]]:
    """`holdout_groups` and `apply_holdout` for every customer.

    Returns:
        (global control (n,), products each customer's campaign control groups withhold (n, P), groups per customer).
    """
    cfg = policy.holdout
    n = len(customer_ids)
    in_global = np.array([holdout_unit(cfg.salt, GLOBAL_HOLDOUT, c) < cfg.share for c in customer_ids], dtype=bool)
    withheld = np.zeros((n, len(catalogue.ids)), dtype=bool)
    groups = [{GLOBAL_HOLDOUT: CONTROL if g else "treatment"} for g in in_global]
    index = {p: i for i, p in enumerate(catalogue.ids)}
    for name, campaign in cfg.campaigns.items():
        control = np.array([holdout_unit(cfg.salt, name, c) < campaign.share for c in customer_ids], dtype=bool)
        for g, c in zip(groups, control):
            g[name] = CONTROL if c else "treatment"
        cols = [index[p] for p in campaign.products if p in index]
        withheld[np.ix_(control, cols)] = True
    return in_global, withheld, groups


def history_arrays(pseudonyms: np.ndarray, products: list[str], channels: list[str],
                   contacts: list[tuple[str, str, int]], rejected: list[tuple[str, str]],
                   outbound: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The log's contact history as arrays: contacts (n, C), outbound contacts (n,), rejected (n, P)."""
    index = {p: i for i, p in enumerate(pseudonyms)}
    ch = {c: j for j, c in enumerate(channels)}
    prod = {p: j for j, p in enumerate(products)}
    per_channel = np.zeros((len(pseudonyms), len(channels)), dtype=np.int64)
    out = np.zeros(len(pseudonyms), dtype=np.int64)
    for who, channel, count in contacts:
        i = index.get(who)
        if i is None:
            continue
        if channel in ch:
            per_channel[i, ch[channel]] += count
        if channel in outbound:
            out[i] += count
    rej = np.zeros((len(pseudonyms), len(products)), dtype=bool)
    for who, product in rejected:
        i, j = index.get(who), prod.get(product)
        if i is not None and j is not None:
            rej[i, j] = True
    return per_channel, out, rej


def audience_mask(snapshot: pd.DataFrame, audience, churn: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Customers in the campaign's audience, and how many each condition left out."""
    keep = np.ones(len(snapshot), dtype=bool)
    out: dict[str, int] = {}

    def cut(name: str, ok: np.ndarray) -> None:
        nonlocal keep
        out[name] = int((keep & ~ok).sum())
        keep &= ok

    if audience.lifecycle:
        cut("lifecycle", snapshot["lifecycle"].astype(str).isin(audience.lifecycle).to_numpy())
    for group, values in audience.segments.items():
        cut(f"segment {group}", snapshot[group].astype(str).isin(values).to_numpy())
    if audience.needs:
        cut("needs", np.column_stack([number(snapshot, f"need_{n}", 0.0) > 0 for n in audience.needs]).any(1))
    if audience.value_tiers:
        cut("value tier", snapshot["value_tier"].astype(str).isin(audience.value_tiers).to_numpy())
    risk = audience.churn_risk
    if risk.min is not None:
        cut("churn risk", churn >= risk.min)
    if risk.max is not None:
        cut("churn risk", churn <= risk.max)
    return keep, out


def customer_events(reader_frame: pd.DataFrame) -> dict[str, list[tuple[str, dict, float]]]:
    """The event log's customer events by pseudonym, oldest first, as `make_profile` takes them."""
    out: dict[str, list[tuple[str, dict, float]]] = {}
    for who, event, payload, at in reader_frame[["customer_pseudonym", "event", "payload", "occurred_at"]] \
            .itertuples(index=False):
        out.setdefault(who, []).append((event, payload or {}, float(at)))
    for events in out.values():
        events.sort(key=lambda e: e[2])
    return out


def customer_ids(snapshot: pd.DataFrame) -> list[str]:
    return snapshot[CUSTOMER_ID].astype(str).tolist()
