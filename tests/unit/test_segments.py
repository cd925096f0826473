import numpy as np
import pandas as pd
import pytest

from nextbest.config import ConfigError, Rule, SegmentGroup, load_segments
from nextbest.features.segments import assign_group, evaluate_rule, lifecycle_states, value_tier


def _customers() -> pd.DataFrame:
    """Hand-made customers, one per shipped relationship segment."""
    base = {"tenure_months": 40.0, "n_products": 2, "held_salary_project": 0, "held_payroll_account": 0,
            "total_balance": 1000.0, "months_since_closure": 99.0}
    rows = {
        "newbie": {**base, "tenure_months": 2.0},
        "salaried": {**base, "held_salary_project": 1, "total_balance": 90000.0},  # social wins over status
        "rich": {**base, "total_balance": 75000.0},
        "stayed": {**base, "months_since_closure": 4.0},
        "plain": base,
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def test_shipped_relationship_rules_first_match_wins():
    group = load_segments().groups["relationship"]
    df = _customers()
    assert dict(zip(df.index, assign_group(df, "relationship", group))) == {
        "newbie": "new", "salaried": "social", "rich": "status", "stayed": "loyal", "plain": "regular"}


def test_rule_any_all_and_missing_values():
    df = pd.DataFrame({"x": [1.0, np.nan, 5.0], "c": ["a", "b", "c"]})
    rule = Rule(name="r", all=[{"feature": "x", "op": ">=", "value": 1}],
                any=[{"feature": "c", "op": "in", "value": ["a", "c"]}])
    assert evaluate_rule(df, rule).tolist() == [True, False, True]
    assert (evaluate_rule(df, Rule(name="ne", all=[{"feature": "x", "op": "!=", "value": 1}])).tolist()
            == [False, False, True])


def test_unknown_feature_in_a_rule_is_named():
    group = SegmentGroup(default="d", rules=[Rule(name="vip", all=[{"feature": "wealth", "op": ">", "value": 1}])])
    with pytest.raises(ConfigError, match=r"group 'g' rule 'vip' uses unknown feature\(s\) \['wealth'\]"):
        assign_group(pd.DataFrame({"x": [1]}), "g", group)


def test_lifecycle_states_over_time():
    # 4 customers x 6 months, 1 product.  P: prospect seen from month 2.  N: joins at month 3.
    # D: holds throughout, activity stops after month 1.  F: leaves at month 2 and comes back at month 5.
    held = np.zeros((4, 6, 1), bool)
    held[1, 3:] = True
    held[2, :] = True
    held[3, [0, 1, 5]] = True
    active = np.ones((4, 6), bool)
    active[2, 2:] = False
    known = np.ones((4, 6), bool)
    known[0, :2] = False
    known[1, :3] = False
    states = lifecycle_states(held, active, known, new_months=2, dormant_months=3)
    assert list(states[0]) == ["", "", "prospect", "prospect", "prospect", "prospect"]
    assert list(states[1]) == ["", "", "", "new", "new", "active"]
    assert list(states[2]) == ["active", "active", "active", "active", "dormant", "dormant"]
    assert list(states[3]) == ["active", "active", "former", "former", "former", "active"]


def test_value_tier_is_per_month_top_share():
    margin = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 0.0, 100.0, 1.0])
    months = np.array([1, 1, 1, 1, 1, 1, 2, 2])
    tiers = value_tier(margin, months, top_share=0.2)
    assert tiers.tolist() == ["rest", "rest", "rest", "rest", "top", "rest", "top", "rest"]
