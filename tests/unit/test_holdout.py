"""Control groups: stable, the configured size, independent per campaign, and enforced by the rules."""

from __future__ import annotations

import numpy as np
import pytest

from nextbest.config import ConfigError, HoldoutConfig, load_bandit
from nextbest.serving.decide import (CHANNEL_WIDE, CONTROL, TREATMENT, Suppression, apply_holdout, holdout_groups,
                                     make_profile)
from nextbest.settings import default_config_dir

CFG = HoldoutConfig(salt="s1", share=0.05, campaigns={"deposits": {"products": ["savings_account", "term_deposit"],
                                                                   "share": 0.2}})
IDS = [f"C{i:07d}" for i in range(20_000)]


def test_groups_are_stable_and_of_the_configured_size():
    groups = [holdout_groups(CFG, c) for c in IDS]
    assert groups[:50] == [holdout_groups(CFG, c) for c in IDS[:50]]  # same customer, same group
    for name, share in (("all", 0.05), ("deposits", 0.2)):
        got = np.mean([g[name] == CONTROL for g in groups])
        sigma = np.sqrt(share * (1 - share) / len(IDS))
        assert abs(got - share) < 4 * sigma, (name, got)


def test_campaign_groups_are_independent_and_follow_the_salt():
    groups = [holdout_groups(CFG, c) for c in IDS]
    a = np.array([g["all"] == CONTROL for g in groups], float)
    d = np.array([g["deposits"] == CONTROL for g in groups], float)
    assert abs(np.corrcoef(a, d)[0, 1]) < 0.03
    other = HoldoutConfig(salt="s2", share=0.05, campaigns=CFG.campaigns)
    moved = np.mean([holdout_groups(other, c)["all"] != g["all"] for c, g in zip(IDS, groups)])
    assert 0.05 < moved < 0.15  # a new salt redraws the groups (2 x 0.05 x 0.95 expected)


def test_global_control_gets_nothing_and_campaign_control_loses_its_products():
    allowed = ["savings_account", "term_deposit", "credit_card"]
    left, removed, blocked = apply_holdout(CFG, {"all": CONTROL, "deposits": TREATMENT}, allowed)
    assert (left, blocked) == ([], "holdout:all") and removed == [Suppression(CHANNEL_WIDE, "holdout:all")]
    left, removed, blocked = apply_holdout(CFG, {"all": TREATMENT, "deposits": CONTROL}, allowed)
    assert left == ["credit_card"] and blocked is None
    assert removed == [Suppression("savings_account", "holdout:deposits"),
                       Suppression("term_deposit", "holdout:deposits")]
    assert apply_holdout(CFG, {"all": TREATMENT, "deposits": TREATMENT}, allowed) == (allowed, [], None)


def test_config_is_validated(tmp_path, catalogue):
    path = tmp_path / "bandit.yaml"
    base = (default_config_dir() / "bandit.yaml").read_text()
    path.write_text(base + "\n")
    assert load_bandit(path, catalogue).holdout.share == pytest.approx(0.05)
    bad = base.replace("products: [savings_account, term_deposit]", "products: [savings_acount]")
    path.write_text(bad)
    with pytest.raises(ConfigError, match="savings_acount"):
        load_bandit(path, catalogue)
    path.write_text(base.replace("  share: 0.05", "  share: 1.5"))
    with pytest.raises(ConfigError, match="share"):
        load_bandit(path, catalogue)
    with pytest.raises(ValueError, match="reserved"):
        HoldoutConfig(campaigns={"all": {"products": ["e_account"], "share": 0.1}})


def test_an_acquired_product_counts_as_held_from_the_event_on():
    fields = {"marketing_opt_out": False, "held": ["current_account"], "age": 40.0}
    snapshot = 1_000_000.0
    events = [("product_acquired", {"product_id": "credit_card"}, snapshot + 10),
              ("product_acquired", {"product_id": "mortgage"}, snapshot - 10)]  # already in the snapshot's data
    profile = make_profile(fields, events, snapshot + 100, snapshot)
    assert profile.held == frozenset({"current_account", "credit_card"})
