"""Property-based: over random customers, histories and requests, no decision ever breaks a rule."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.config import load_bandit, load_catalogue, load_rules
from nextbest.constants import CHANNELS
from nextbest.serving.bandit import Context, Featuriser, Posterior, choose
from nextbest.serving.decide import CHANNEL_WIDE, History, Profile, apply_rules, candidates, is_credit, make_profile

CATALOGUE = load_catalogue()
POLICY = load_bandit(catalogue=CATALOGUE)
RULES = load_rules(catalogue=CATALOGUE, bandit=POLICY)
IDS = CATALOGUE.ids
BY_ID = CATALOGUE.by_id()
ARMS = IDS + list(POLICY.actions)
FEATURISER = Featuriser(ARMS)
POSTERIOR = Posterior.prior(FEATURISER, 1.0, 1.0, 0.5)
CONSENTS = ("consent_email", "consent_push", "consent_sms", "consent_call")
flag = st.sampled_from([True, False, None])

profiles = st.builds(
    Profile,
    known=st.booleans(),
    marketing_opt_out=flag,
    consents=st.fixed_dictionaries({c: flag for c in CONSENTS}),
    age=st.one_of(st.none(), st.floats(16, 95)),
    held=st.frozensets(st.sampled_from(IDS)),
    days_since_loan=st.one_of(st.none(), st.floats(0, 400)),
    segment=st.sampled_from(["new", "regular", "loyal", "status", "social"]),
    customer_value=st.floats(0, 5000),
    engagement=st.floats(0, 5),
    viewed=st.frozensets(st.sampled_from(IDS)),
)
histories = st.builds(History, contacts_this_week=st.dictionaries(st.sampled_from(CHANNELS), st.integers(0, 20)),
                      rejected=st.frozensets(st.sampled_from(ARMS)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=profiles, history=histories, channel=st.sampled_from(CHANNELS), k=st.integers(1, 10),
       churn=st.one_of(st.none(), st.floats(0, 1)), seed=st.integers(0, 2**32 - 1),
       probs=st.lists(st.floats(1e-6, 0.999), min_size=len(IDS), max_size=len(IDS)))
def test_no_decision_breaks_a_rule(profile, history, channel, k, churn, seed, probs):
    allowed, suppressed, blocked, cooldown = apply_rules(RULES, CATALOGUE, profile, history, channel)
    cands = candidates(CATALOGUE, POLICY, RULES, profile, allowed, dict(zip(IDS, probs)), churn, cooldown, history,
                       blocked)
    offered = []
    if cands:
        x = FEATURISER.matrix([c.arm for c in cands], np.array([c.base_prob for c in cands]),
                              np.array([c.viewed for c in cands]), Context(channel, 12, 3, profile.engagement))
        choice = choose(POSTERIOR, x, np.array([c.value for c in cands]), k, POLICY.explore_share,
                        np.random.default_rng(seed), 32)
        offered = [cands[i].arm for i in choice.order]
        assert all(0 < p <= 1 for p in choice.propensity)
        assert len(offered) == len(set(offered)) == min(k, len(cands))
    products = [a for a in offered if a in BY_ID]

    # Opt-out and consent fail closed: unknown counts as no.
    consent = RULES.channel_consent.get(channel)
    if profile.marketing_opt_out is not False or (consent and profile.consents.get(consent) is not True):
        assert offered == [] and blocked is not None
        assert suppressed == [type(suppressed[0])(CHANNEL_WIDE, blocked)]
    cap = RULES.frequency_caps_per_week.get(channel)
    if cap is not None and history.contacts_this_week.get(channel, 0) >= cap:
        assert offered == []
    assert not set(products) & profile.held
    assert not set(offered) & history.rejected
    if profile.days_since_loan is not None and profile.days_since_loan < RULES.credit_cooldown.days:
        assert not any(is_credit(BY_ID[p], RULES) for p in products)
    for p in products:
        product = BY_ID[p]
        if profile.age is not None:
            assert product.eligibility.min_age <= profile.age <= product.eligibility.max_age
        if product.eligibility.requires:
            assert set(product.eligibility.requires) & profile.held
    # Every removed product names its rule.
    removed = {s.product_id for s in suppressed}
    if blocked is None:
        assert removed | set(allowed) == set(IDS)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from(["opt_out", "opt_in", "consent_granted", "consent_withdrawn"]),
                                 st.sampled_from(["email", "push", "sms", "call"])), max_size=8),
       opted_out=flag)
def test_latest_privacy_event_wins(events, opted_out):
    fields = {"marketing_opt_out": opted_out, **{c: True for c in CONSENTS}, "held": [], "viewed": []}
    log = [(e, {"consent": c}, float(t)) for t, (e, c) in enumerate(events)]
    profile = make_profile(fields, log, now=100.0, snapshot=0.0)
    expected_out = opted_out
    consents = {c: True for c in CONSENTS}
    for e, c in events:
        if e == "opt_out":
            expected_out = True
        elif e == "opt_in":
            expected_out = False
        else:
            consents[f"consent_{c}"] = e == "consent_granted"
    assert profile.marketing_opt_out == expected_out
    assert profile.consents == consents


def test_a_recent_loan_blocks_credit_and_offers_payment_help():
    profile = Profile(known=True, marketing_opt_out=False, consents={c: True for c in CONSENTS}, age=40,
                      held=frozenset({"current_account", "consumer_loan"}), days_since_loan=10)
    allowed, suppressed, _, cooldown = apply_rules(RULES, CATALOGUE, profile, History(), "email")
    assert cooldown
    assert {"car_loan", "mortgage", "credit_card"} <= {s.product_id for s in suppressed if s.rule == "credit_cooldown"}
    cands = candidates(CATALOGUE, POLICY, RULES, profile, allowed, dict.fromkeys(IDS, 0.01), None, cooldown, History(),
                       None)
    assert RULES.credit_cooldown.alternative in [c.arm for c in cands]


def test_loan_disbursed_event_starts_the_cooldown_even_without_features():
    profile = make_profile({"marketing_opt_out": False, "held": [], "loan_months": None}, [
        ("loan_disbursed", {"product_id": "car_loan"}, 1000.0)], now=1000.0 + 5 * 86400, snapshot=0.0)
    assert profile.days_since_loan == 5
