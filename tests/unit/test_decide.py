import numpy as np
import pytest

from nextbest.serving.decide import contact_allowed, eligible_products, rank_offers


def test_held_products_are_never_offered(catalogue):
    products = catalogue.products
    held = {"current_account": True, "credit_card": True}
    allowed, removed = eligible_products(products, held, age=40)
    scores = np.linspace(1, 0, len(products))  # the held ones score high
    offers = rank_offers(products, scores, allowed, k=10)
    offered = {o["product_id"] for o in offers}
    assert not offered & set(held)
    assert {"current_account", "credit_card"} <= {r.product_id for r in removed if r.rule == "already_held"}
    assert [o["rank"] for o in offers] == list(range(1, len(offers) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(offers, offers[1:]))


def test_age_and_prerequisites(catalogue):
    products = catalogue.products
    allowed, removed = eligible_products(products, {}, age=19)
    rules = {r.product_id: r.rule for r in removed}
    assert rules["mortgage"] == "age_eligibility"
    assert rules["debit_card"] == "requires_product"  # no account held
    assert dict(zip([p.product_id for p in products], allowed))["savings_account"]


@pytest.mark.parametrize("channel,profile,expected", [
    ("mobile_app", {"marketing_opt_out": 1, "consent_email": 1}, "marketing_opt_out"),
    ("email", {"marketing_opt_out": 0, "consent_email": 0}, "no_consent_email"),
    ("email", {"marketing_opt_out": 0, "consent_email": 1}, None),
    ("branch", {"marketing_opt_out": 0}, None),
    ("sms", {"marketing_opt_out": None, "consent_sms": 1}, "marketing_opt_out"),
    ("sms", {"marketing_opt_out": 0, "consent_sms": 1}, None),
    ("call_center", {"marketing_opt_out": 0, "consent_call": None}, "no_consent_call"),
])
def test_opt_out_and_consent(channel, profile, expected):
    assert contact_allowed(channel, profile) == expected
