"""Choosing what may be offered to one customer (pure): rules first, then the candidates to rank.

Everything here takes plain values and returns plain values; the service gathers the inputs
(online features, the policy store, the decision log) and the bandit ranks what is left.
Privacy rules fail closed: an unknown opt-out flag or consent counts as a refusal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from nextbest.config import GLOBAL_HOLDOUT, BanditConfig, Catalogue, HoldoutConfig, Product, RulesConfig

# Default consent per outbound channel; `configs/rules.yaml` is the business's copy.
CHANNEL_CONSENT = {"email": "consent_email", "push": "consent_push", "sms": "consent_sms",
                   "call_center": "consent_call"}
CHANNEL_WIDE = "*"  # product_id of a suppression that removed every offer on the channel


@dataclass(frozen=True)
class Suppression:
    product_id: str
    rule: str


@dataclass(frozen=True)
class Profile:
    """What the rules and the policy need to know about one customer."""

    known: bool
    marketing_opt_out: bool | None
    consents: dict[str, bool | None]
    age: float | None = None
    held: frozenset[str] = frozenset()
    days_since_loan: float | None = None
    lifecycle: str = "prospect"
    segment: str = "prospect"
    customer_value: float = 0.0  # yearly margin of what is held, EUR
    engagement: float = 0.0      # log1p(app + web logins over 30 days)
    viewed: frozenset[str] = frozenset()  # product pages viewed recently


@dataclass(frozen=True)
class History:
    """The customer's recent contacts and answers, from the decision log."""

    contacts_this_week: dict[str, int] = field(default_factory=dict)
    rejected: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Candidate:
    """An offer the rules allow, with what the policy needs to score it."""

    arm: str
    name: str
    base_prob: float  # the model's probability (or an action's configured acceptance)
    value: float      # EUR if accepted, business lever applied
    viewed: bool = False


def contact_allowed(channel: str, profile: dict, channel_consent: dict[str, str] | None = None) -> str | None:
    """Returns the rule that forbids contacting this customer on this channel, or None.

    Args:
        channel: the request's channel.
        profile: `marketing_opt_out` and the consent flags (missing or None counts as a refusal).
        channel_consent: channel -> consent flag; defaults to CHANNEL_CONSENT.
    """
    if profile.get("marketing_opt_out") is None or profile["marketing_opt_out"]:
        return "marketing_opt_out"
    consent = (channel_consent or CHANNEL_CONSENT).get(channel)
    if consent is not None and not profile.get(consent):
        return f"no_{consent}"
    return None


def eligible_products(products: list[Product], held: dict[str, bool],
                      age: float | None) -> tuple[list[bool], list[Suppression]]:
    """Which products may be offered: not held, age within range, prerequisite product held."""
    ok, removed = [], []
    for p in products:
        rule = None
        if held.get(p.product_id):
            rule = "already_held"
        elif age is not None and age >= 0 and not (p.eligibility.min_age <= age <= p.eligibility.max_age):
            rule = "age_eligibility"
        elif p.eligibility.requires and not any(held.get(r) for r in p.eligibility.requires):
            rule = "requires_product"
        ok.append(rule is None)
        if rule:
            removed.append(Suppression(p.product_id, rule))
    return ok, removed


def is_credit(product: Product, rules: RulesConfig) -> bool:
    cooldown = rules.credit_cooldown
    return product.category in cooldown.categories or product.product_id in cooldown.products


def apply_rules(rules: RulesConfig, catalogue: Catalogue, profile: Profile, history: History,
                channel: str) -> tuple[list[str], list[Suppression], str | None, bool]:
    """Applies every rule of `configs/rules.yaml` to the catalogue for one customer and channel.

    Returns:
        (allowed product ids in catalogue order, suppressions naming the rule per removed offer,
        the channel-wide rule that blocked everything or None, whether the credit cool-down is on).
    """
    flags = {"marketing_opt_out": profile.marketing_opt_out, **profile.consents}
    blocked = contact_allowed(channel, flags, rules.channel_consent)
    if blocked is None:
        cap = rules.frequency_caps_per_week.get(channel)
        if cap is not None and history.contacts_this_week.get(channel, 0) >= cap:
            blocked = f"frequency_cap_{channel}"
    if blocked is not None:
        return [], [Suppression(CHANNEL_WIDE, blocked)], blocked, False
    cooldown = (profile.days_since_loan is not None and profile.days_since_loan < rules.credit_cooldown.days)
    if rules.eligibility:
        ok, removed = eligible_products(catalogue.products, dict.fromkeys(profile.held, True), profile.age)
    else:  # only the held-product rule stays
        ok = [p.product_id not in profile.held for p in catalogue.products]
        removed = [Suppression(p.product_id, "already_held") for p in catalogue.products
                   if p.product_id in profile.held]
    allowed = []
    for p, fine in zip(catalogue.products, ok):
        if not fine:
            continue
        if cooldown and is_credit(p, rules):
            removed.append(Suppression(p.product_id, "credit_cooldown"))
        elif p.product_id in history.rejected:
            removed.append(Suppression(p.product_id, "rejection_cooldown"))
        else:
            allowed.append(p.product_id)
    return allowed, removed, None, cooldown


def candidates(catalogue: Catalogue, policy: BanditConfig, rules: RulesConfig, profile: Profile,
               allowed: list[str], probs: dict[str, float], churn_risk: float | None,
               credit_cooldown: bool, history: History, blocked: str | None, actions: bool = True) -> list[Candidate]:
    """The offers to rank: allowed products weighed by margin and levers, plus the actions that apply.

    A customer at churn risk gets the retention action, valued at the expected saved margin
    (churn risk x yearly margin held); a customer in the credit cool-down gets its alternative.
    Nothing at all when a channel-wide rule (`blocked`: opt-out, consent, cap) applies.
    """
    if blocked is not None:
        return []
    by_id = catalogue.by_id()
    levers = policy.levers
    out = []
    for pid in allowed:
        p = by_id[pid]
        lever = levers.products.get(pid, 1.0) * levers.categories.get(p.category, 1.0)
        value = p.margin * lever
        if value > 0:
            out.append(Candidate(pid, p.name, float(probs[pid]), value, pid in profile.viewed))
    if not actions:
        return out
    retention = policy.actions[policy.retention.action]
    if (churn_risk is not None and churn_risk >= policy.retention.churn_threshold and profile.customer_value > 0
            and policy.retention.action not in history.rejected):
        out.append(Candidate(policy.retention.action, retention.name, retention.acceptance,
                             churn_risk * profile.customer_value))
    alternative = rules.credit_cooldown.alternative
    if credit_cooldown and alternative and alternative not in history.rejected:
        action = policy.actions[alternative]
        if action.value > 0:
            out.append(Candidate(alternative, action.name, action.acceptance, action.value))
    return out


def rank_offers(products: list[Product], scores: np.ndarray, allowed: list[bool], k: int) -> list[dict]:
    """Top-k allowed products by score, as `{product_id, name, score, rank}` (rank 1 = best).

    The ranking of the degraded path and of the popularity baseline.
    """
    order = [i for i in np.argsort(-scores, kind="stable") if allowed[i]][:k]
    return [{"product_id": products[i].product_id, "name": products[i].name, "score": round(float(scores[i]), 6),
             "rank": r + 1} for r, i in enumerate(order)]


CONTROL, TREATMENT = "control", "treatment"


def holdout_unit(salt: str, campaign: str, customer_id: str) -> float:
    """A stable uniform number in [0, 1) per (salt, campaign, customer): the customer's draw for that group."""
    digest = hashlib.sha256(f"{salt}\x1f{campaign}\x1f{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def holdout_groups(cfg: HoldoutConfig, customer_id: str) -> dict[str, str]:
    """The customer's group in the global control group and in each campaign's: control or treatment."""
    groups = {GLOBAL_HOLDOUT: CONTROL if holdout_unit(cfg.salt, GLOBAL_HOLDOUT, customer_id) < cfg.share else TREATMENT}
    for name, campaign in cfg.campaigns.items():
        groups[name] = CONTROL if holdout_unit(cfg.salt, name, customer_id) < campaign.share else TREATMENT
    return groups


def apply_holdout(cfg: HoldoutConfig, groups: dict[str, str],
                  allowed: list[str]) -> tuple[list[str], list[Suppression], str | None]:
    """Removes what the customer's control groups must not get.

    Returns:
        (allowed products left, suppressions with rule `holdout:<campaign>`, the channel-wide rule
        `holdout:all` when the customer is in the global control group, else None).
    """
    if groups.get(GLOBAL_HOLDOUT) == CONTROL:
        return [], [Suppression(CHANNEL_WIDE, f"holdout:{GLOBAL_HOLDOUT}")], f"holdout:{GLOBAL_HOLDOUT}"
    held_out = {p: name for name, c in cfg.campaigns.items() if groups.get(name) == CONTROL for p in c.products}
    removed = [Suppression(p, f"holdout:{held_out[p]}") for p in allowed if p in held_out]
    return [p for p in allowed if p not in held_out], removed, None


CONSENT_EVENTS = {"consent_granted": True, "consent_withdrawn": False}
PAGE_VIEW_DAYS = 7  # a product page viewed this recently counts as interest


def make_profile(fields: dict | None, events: list[tuple[str, dict, float]], now: float,
                 snapshot: float | None) -> Profile:
    """The rule inputs: features (online or fallback) overlaid with the customer's real-time events.

    Args:
        fields: `nextbest.serving.fallback.profile_fields` of the customer's features, or None for a customer
            the bank does not know (a prospect: not opted out, no consent given).
        events: (event, payload, occurred_at) oldest first, from the event log.
        now: epoch seconds of the decision.
        snapshot: epoch seconds of the feature snapshot the fields come from.
    """
    if fields is None:
        opt_out, consents, days_since_loan = False, {}, None
        fields = {}
    else:
        opt_out = fields.get("marketing_opt_out")
        consents = {c: fields.get(c) for c in CHANNEL_CONSENT.values()}
        months = fields.get("loan_months")
        days_since_loan = None if months is None else months * 30.44 + max(0.0, now - (snapshot or now)) / 86400
    viewed = set(fields.get("viewed", []))
    held = set(fields.get("held", []))
    for event, payload, at in events:  # later events override earlier ones and the snapshot
        if event == "opt_out":
            opt_out = True
        elif event == "opt_in":
            opt_out = False
        elif event in CONSENT_EVENTS:
            consents[f"consent_{payload['consent']}"] = CONSENT_EVENTS[event]
        elif event == "loan_disbursed":
            days = max(0.0, now - at) / 86400
            days_since_loan = days if days_since_loan is None else min(days_since_loan, days)
        elif event == "product_page_view" and now - at <= PAGE_VIEW_DAYS * 86400:
            viewed.add(payload["product_id"])
        elif event == "product_acquired" and snapshot is not None and at > snapshot:
            held.add(payload["product_id"])  # opened since the snapshot: held from now on
    return Profile(known=bool(fields), marketing_opt_out=opt_out, consents=consents, age=fields.get("age"),
                   held=frozenset(held), days_since_loan=days_since_loan,
                   lifecycle=fields.get("lifecycle", "prospect"), segment=fields.get("segment", "prospect"),
                   customer_value=fields.get("customer_value", 0.0), engagement=fields.get("engagement", 0.0),
                   viewed=frozenset(viewed))
