"""A plan on random campaign configs (hypothesis): whatever the capacities, quotas, budget, products,
audience, control group and exploration, no sent contact breaks a limit, consent, opt-out or holding,
and no control-group customer is sent anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.test_plan import _first_weekday_after, _latest
from tests.servers import tight_campaign_project

pytestmark = pytest.mark.slow

PRODUCTS = ["savings_account", "term_deposit", "investment_funds", "pension_plan", "brokerage", "credit_card",
            "mortgage", "consumer_loan"]
CHANNELS = ["email", "push", "sms", "call_center"]
CONSENT = {"email": "consent_email", "push": "consent_push", "sms": "consent_sms", "call_center": "consent_call"}
COST = {"email": 0.02, "push": 0.01, "sms": 0.08, "call_center": 4.0}


@pytest.fixture(scope="module")
def project(quickstart_workdir, tmp_path_factory) -> tuple[Path, Path]:
    return tight_campaign_project(quickstart_workdir, tmp_path_factory.mktemp("random-plans"))


@st.composite
def campaigns(draw):
    products = draw(st.lists(st.sampled_from(PRODUCTS), min_size=1, max_size=5, unique=True))
    channels = draw(st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=4, unique=True))
    quota = draw(st.none() | st.sampled_from(products))
    return {
        "products": products,
        "audience": {"lifecycle": draw(st.lists(st.sampled_from(["new", "active", "dormant"]), min_size=1,
                                                max_size=3, unique=True))},
        "channels": {c: {"capacity": draw(st.integers(0, 60)), "cost": COST[c]} for c in channels},
        **({"quotas": {quota: draw(st.integers(0, 8))}} if quota else {}),
        **({"budget": draw(st.floats(0, 40).map(lambda b: round(b, 2)))} if draw(st.booleans()) else {}),
        "window": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "hours": [9, 13, 18]},
        "holdout_share": draw(st.floats(0, 0.5).map(lambda v: round(v, 3))),
        "explore_share": draw(st.floats(0, 0.5).map(lambda v: round(v, 3))),
        "max_contacts_per_week": draw(st.integers(1, 3)),
    }


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(camp=campaigns())
def test_no_plan_breaks_a_limit_or_a_rule_on_any_campaign(project, camp, monkeypatch):
    from nextbest.serving.outbound.campaign import plan_campaign
    from nextbest.settings import Paths

    bank, wd = project
    path = bank / "configs" / "campaigns.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["campaigns"] = {"random": camp}
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("NEXTBEST_PROJECT", str(bank))
    plan = plan_campaign(Paths.from_workdir(wd), "random", _first_weekday_after(wd).date())
    sent, held = plan.contacts, plan.withheld
    assert sent.customer_id.is_unique and not set(sent.customer_id) & set(held.customer_id)
    counts = sent.channel.value_counts()
    for channel, c in camp["channels"].items():
        assert counts.get(channel, 0) <= c["capacity"]
    for product, quota in camp.get("quotas", {}).items():
        assert (sent.product_id == product).sum() <= quota
    assert sent.channel.map(COST).sum() <= camp.get("budget", np.inf) + 1e-9
    assert set(sent.product_id) <= set(camp["products"]) and set(sent.channel) <= set(camp["channels"])
    if len(sent):
        latest = _latest(wd).loc[sent.customer_id]
        assert (latest.marketing_opt_out == 0).all()
        assert all(latest.iloc[i][CONSENT[c]] == 1 for i, c in enumerate(sent.channel))
        assert all(latest.iloc[i][f"held_{p}"] == 0 for i, p in enumerate(sent.product_id))
        segments = pd.read_parquet(wd / "features" / "customer_segments.parquet", columns=["customer_id",
                                                                                          "event_timestamp",
                                                                                          "lifecycle"])
        segments = segments[segments.event_timestamp == segments.event_timestamp.max()].set_index("customer_id")
        assert segments.loc[sent.customer_id, "lifecycle"].astype(str).isin(camp["audience"]["lifecycle"]).all()
        assert ((sent.propensity > 0) & (sent.propensity <= 1)).all()
    # the control group is the campaign's share of the audience, by a stable hash, and never sent anything
    control = {cid for cid, flag in zip(plan.inputs.customer_ids, plan.inputs.control) if flag}
    assert not control & set(sent.customer_id)
    assert set(held.customer_id) <= control
    assert pd.Series(list(control)).isin(plan.inputs.customer_ids).all()


def test_with_uplift_arbitration_a_contact_is_valued_by_what_it_adds(project, monkeypatch, tmp_path):
    from nextbest.config import load_catalogue
    from nextbest.serving.outbound.campaign import plan_campaign
    from nextbest.settings import Paths, default_config_dir

    bank, wd = project
    path = bank / "configs" / "campaigns.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["campaigns"] = {"random": {"products": PRODUCTS[:5], "audience": {"lifecycle": ["new", "active", "dormant"]},
                                   "channels": {"email": {"capacity": 60, "cost": 0.02}},
                                   "window": {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                                              "hours": [9, 13, 18]},
                                   "holdout_share": 0.0, "explore_share": 0.0}}
    path.write_text(yaml.safe_dump(cfg))
    bandit = (default_config_dir() / "bandit.yaml").read_text().replace("arbitration: propensity",
                                                                        "arbitration: uplift")
    (bank / "configs" / "bandit.yaml").write_text(bandit)
    monkeypatch.setenv("NEXTBEST_PROJECT", str(bank))
    try:
        plan = plan_campaign(Paths.from_workdir(wd), "random", _first_weekday_after(wd).date())
    finally:
        (bank / "configs" / "bandit.yaml").unlink()
    assert len(plan.contacts) > 0
    margin = {p.product_id: p.margin for p in load_catalogue().products}
    base = {}
    for row in plan.decisions:
        offer, context = row[5][0], row[7]
        base[row[0]] = next(c["base_prob"] for c in context["candidates"] if c["arm"] == offer["product_id"])
    for rec in plan.contacts.itertuples():
        expected = max(rec.probability - base[rec.decision_id], 0.0) * margin[rec.product_id] - 0.02
        assert rec.expected_value == pytest.approx(expected, abs=1e-4)
