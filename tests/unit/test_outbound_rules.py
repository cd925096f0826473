"""The batch decision path gives `/recommend`'s answers: the same rules, control groups and scores,
customer by customer; exploration logs exact propensities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextbest.config import load_bandit, load_catalogue, load_rules
from nextbest.constants import CHANNELS
from nextbest.serving.bandit import Context, Featuriser
from nextbest.serving.decide import History, apply_holdout, apply_rules, holdout_groups, make_profile
from nextbest.serving.fallback import profile_fields
from nextbest.serving.outbound.audience import apply_batch_rules, holdout_masks, rule_inputs
from nextbest.serving.outbound.plan import Valued, explore

CATALOGUE = load_catalogue()
POLICY = load_bandit(catalogue=CATALOGUE)
RULES = load_rules(catalogue=CATALOGUE, bandit=POLICY)
IDS = CATALOGUE.ids
CREDIT = ["consumer_loan", "car_loan", "mortgage", "credit_card", "cashback_card"]
OUT = ["email", "push", "sms", "call_center", "branch"]


def snapshot(seed: int, n: int) -> pd.DataFrame:
    """Feature rows as the feature tables hold them, unknown values (NaN) included."""
    rng = np.random.default_rng(seed)

    def flags():
        return rng.choice([1.0, 0.0, np.nan], n, p=[0.6, 0.3, 0.1])

    cols = {"customer_id": [f"C{i:05d}" for i in range(n)], "age": np.where(rng.random(n) < 0.1, np.nan,
                                                                           rng.uniform(14, 90, n)),
            "marketing_opt_out": rng.choice([0.0, 1.0, np.nan], n, p=[0.8, 0.15, 0.05])}
    for c in ("consent_email", "consent_push", "consent_sms", "consent_call"):
        cols[c] = flags()
    for p in IDS:
        cols[f"held_{p}"] = (rng.random(n) < 0.25).astype(float)
        cols[f"months_since_acq_{p}"] = np.where(rng.random(n) < 0.5, 99.0, rng.integers(0, 12, n).astype(float))
    return pd.DataFrame(cols)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), n=st.integers(1, 60), cap=st.one_of(st.none(), st.integers(0, 3)),
       lag_days=st.floats(0, 40))
def test_batch_rules_allow_exactly_what_apply_rules_allows(seed, n, cap, lag_days):
    rng = np.random.default_rng(seed)
    frame = snapshot(seed, n)
    taken_at = 1.7e9
    now = taken_at + lag_days * 86400
    pseudonyms = np.array([f"p{i}" for i in range(n)], dtype=object)
    # real-time events for some customers: opt-outs, consents, loans, acquisitions since the snapshot
    events = {}
    for i in rng.choice(n, min(n, 5), replace=False):
        kinds = [("opt_out", {}), ("opt_in", {}), ("consent_granted", {"consent": "email"}),
                 ("consent_withdrawn", {"consent": "push"}), ("loan_disbursed", {}),
                 ("product_acquired", {"product_id": str(rng.choice(IDS))})]
        picked = [kinds[j] for j in rng.choice(len(kinds), 2, replace=False)]
        events[pseudonyms[i]] = [(e, p, taken_at + (k + 1) * 3600.0) for k, (e, p) in enumerate(picked)]
    contacts = rng.integers(0, 3, (n, len(OUT)))
    outbound = contacts.sum(1)
    rejected = rng.random((n, len(IDS))) < 0.1
    inputs = rule_inputs(frame, CATALOGUE, RULES, now, taken_at, events, pseudonyms)
    channel_ok, product_ok, _ = apply_batch_rules(inputs, CATALOGUE, RULES, OUT, contacts, rejected, cap, outbound)
    for i, rec in enumerate(frame.to_dict("records")):
        profile = make_profile(profile_fields(rec, CATALOGUE, RULES), events.get(pseudonyms[i], []), now, taken_at)
        for j, channel in enumerate(OUT):
            history = History(dict(zip(OUT, contacts[i].tolist())),
                              frozenset(p for p, r in zip(IDS, rejected[i]) if r))
            allowed, _, blocked, _ = apply_rules(RULES, CATALOGUE, profile, history, channel)
            if cap is not None and blocked is None and outbound[i] >= cap:
                blocked = "campaign_weekly_cap"  # the campaign's own cap, on top of rules.yaml
            assert channel_ok[i, j] == (blocked is None), (i, channel, blocked)
            if blocked is None:
                assert set(allowed) == {p for p, ok in zip(IDS, product_ok[i]) if ok}, (i, channel)


def test_control_groups_are_the_ones_serving_draws():
    ids = [f"C{i:05d}" for i in range(3000)]
    in_global, withheld, groups = holdout_masks(POLICY, CATALOGUE, ids)
    assert 0.02 < in_global.mean() < 0.08  # bandit.yaml's global share is 5%
    for i, cid in enumerate(ids[:400]):
        expected = holdout_groups(POLICY.holdout, cid)
        assert groups[i] == expected
        left, _, blocked = apply_holdout(POLICY.holdout, expected, IDS)
        assert in_global[i] == (blocked is not None)
        if blocked is None:
            assert set(left) == {p for p, w in zip(IDS, withheld[i]) if not w}


@pytest.mark.parametrize("channel", CHANNELS)
def test_batch_logits_are_the_featurisers_rows_times_the_weights(channel):
    rng = np.random.default_rng(3)
    featuriser = Featuriser.for_catalogue(CATALOGUE, POLICY.actions)
    w = rng.normal(0, 1, featuriser.dim)
    arms = IDS[:7] + ["retention_call"]
    n = 20
    base, viewed = rng.uniform(1e-5, 0.5, (n, len(arms))), rng.random((n, len(arms))) < 0.3
    hour, engagement = rng.integers(0, 24, n), rng.uniform(0, 9, n)
    batch = featuriser.logits(w, arms, base, viewed, channel, hour, 5, engagement)
    for i in range(n):
        rows = featuriser.matrix(arms, base[i], viewed[i], Context(channel, int(hour[i]), 5, float(engagement[i])))
        np.testing.assert_allclose(batch[i], rows @ w, rtol=1e-10, atol=1e-10)


def test_exploration_propensities_are_exact():
    n, products, share = 40_000, 5, 0.2
    rng = np.random.default_rng(0)
    value = np.where(rng.random((n, products, 1)) < 0.7, rng.random((n, products, 1)), -np.inf)
    value[:, 0, 0] = 1.0  # product 0 always allowed and planned
    planned = np.zeros(n, dtype=int)
    served = explore("salt", "camp@day", [f"C{i}" for i in range(n)], planned, np.zeros(n, dtype=int),
                     Valued(np.zeros_like(value), value), share, quota_products=[4])
    assert served.product[~served.explored].tolist() == [0] * int((~served.explored).sum())
    assert abs(served.explored.mean() - share) < 0.01
    assert not (served.product == 4).any()  # a quota'd product is never explored into
    pool = (np.isfinite(value[:, :4, 0])).sum(1)  # allowed, without the quota'd product
    expected = (1 - share) * (served.product == 0) + share / pool
    np.testing.assert_allclose(served.propensity, expected)
    # Inverse-propensity weights average to one per product: the logged propensities are the real ones.
    for p in range(4):
        weights = (served.product == p) / served.propensity
        has = np.isfinite(value[:, p, 0])
        assert weights[has].mean() == pytest.approx(1.0, abs=0.05)
