"""Choosing offers for one customer (pure): filter what may not be offered, rank the rest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nextbest.config import Product

# Channels that contact the customer outside our own app, web and branch need that consent.
CHANNEL_CONSENT = {"email": "consent_email", "push": "consent_push", "sms": "consent_sms",
                   "call_center": "consent_call"}


@dataclass(frozen=True)
class Suppression:
    product_id: str
    rule: str


def contact_allowed(channel: str, profile: dict) -> str | None:
    """Returns the rule that forbids contacting this customer on this channel, or None.

    An unknown opt-out flag or consent counts as a refusal: privacy rules fail closed.
    """
    if profile.get("marketing_opt_out") is None or profile["marketing_opt_out"]:
        return "marketing_opt_out"
    consent = CHANNEL_CONSENT.get(channel)
    if consent is not None and not profile.get(consent):
        return f"no_{consent}"
    return None


def eligible_products(products: list[Product], held: dict[str, bool], age: float | None) -> tuple[list[bool], list[Suppression]]:
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


def rank_offers(products: list[Product], scores: np.ndarray, allowed: list[bool], k: int) -> list[dict]:
    """Top-k allowed products by score, as `{product_id, name, score, rank}` (rank 1 = best)."""
    order = [i for i in np.argsort(-scores, kind="stable") if allowed[i]][:k]
    return [{"product_id": products[i].product_id, "name": products[i].name, "score": round(float(scores[i]), 6),
             "rank": r + 1} for r, i in enumerate(order)]
