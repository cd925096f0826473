"""Uplift of a campaign file: intervals that cover the true effect, uplift models that find who the
offer changes, curves that rank, and bad files refused with the column and value named."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from nextbest.monitoring.uplift_file import campaign_uplift, write_report
from nextbest.schema import SchemaError
from nextbest.training.uplift import curves
from tests.conftest import REPO_ROOT


def campaign(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """A three-arm campaign whose arms change different customers: e-mail the young, a call the old.

    Returns:
        (table, true uplift of e-mail, true uplift of a call) per row, in probability.
    """
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    balance = rng.gamma(2, 2000, n)
    arm = rng.choice(["control", "email", "call"], n, p=[0.34, 0.33, 0.33])
    base = -3 + 0.01 * (age - 50) + 0.00005 * balance
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    true_email = sig(base + 0.9 * (age < 35)) - sig(base)
    true_call = sig(base + 1.1 * (age > 55)) - sig(base)
    p = sig(base) + np.where(arm == "email", true_email, 0) + np.where(arm == "call", true_call, 0)
    y = rng.random(n) < p
    table = pd.DataFrame({"customer_id": [f"K{i:07d}" for i in range(n)], "age": age, "balance": balance.round(2),
                          "region": rng.choice(list("ABCDE"), n), "arm": arm, "bought": np.where(y, "yes", "no"),
                          "revenue": np.where(y, rng.gamma(2, 100, n).round(2), 0.0)})
    return table, true_email, true_call


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    table, true_email, true_call = campaign(15_000)
    path = tmp_path_factory.mktemp("uplift") / "campaign.csv"
    table.to_csv(path, sep=";", index=False)
    result, scores = campaign_uplift(path, "arm", "bought", value="revenue", segment="region", id_column="customer_id")
    return table, true_email, true_call, result, scores, path


def test_the_uplift_of_each_arm_is_measured_with_an_interval_that_covers_the_truth(measured):
    table, true_email, true_call, result, _, _ = measured
    assert result["control"] == "control" and sorted(result["arms"]) == ["call", "email"]
    for arm, truth in (("email", true_email), ("call", true_call)):
        o = result["comparisons"][arm]["overall"]
        rows = (table.arm == arm).to_numpy()
        assert o["n_treatment"] == rows.sum() and o["n_control"] == (table.arm == "control").sum()
        assert o["uplift_ci"][0] <= truth.mean() <= o["uplift_ci"][1]
        assert o["significant"]
        assert set(result["comparisons"][arm]["by_segment"]) == set("ABCDE")
    assert "customer_id" not in result["features"]  # an identifier is never a model input
    assert result["warnings"] == []  # a randomised assignment passes the balance check


def test_uplift_models_rank_customers_by_what_the_offer_changes(measured):
    table, true_email, true_call, result, scores, _ = measured
    for arm, truth in (("email", true_email), ("call", true_call)):
        c = result["comparisons"][arm]
        pair = table.arm.isin(["control", arm]).to_numpy()
        y = (table.bought == "yes").to_numpy(float)[pair]
        oracle = curves(truth[pair], y, (table.arm == arm).to_numpy()[pair]).qini_coefficient
        for learner in ("t_learner", "x_learner", "dr_learner"):
            assert c["models"][learner]["qini_coefficient"] > 0.5 * oracle > 0
        fifths = c["by_predicted_uplift"]
        assert fifths[0]["uplift"] > fifths[-1]["uplift"] + 0.03  # the top fifth is changed, the bottom is not
        # the scores are the customers' predicted uplift, keyed by their id, and rank like the truth
        assert list(scores.customer_id) == list(table.customer_id)
        assert np.corrcoef(scores[f"uplift_{arm}"], truth)[0, 1] > 0.3


def test_a_score_that_ranks_backwards_has_a_negative_qini_and_a_constant_one_none():
    rng = np.random.default_rng(1)
    n = 40_000
    effect = rng.random(n) * 0.2
    treated = rng.random(n) < 0.5
    y = (rng.random(n) < 0.05 + treated * effect).astype(float)
    right, wrong, flat = curves(effect, y, treated), curves(-effect, y, treated), curves(np.zeros(n), y, treated)
    # Half the rows treated, uplift 0.2 (1 - s) at rank share s: q(s) = 0.1 (s - s^2 / 2), q(1) = 0.05, and
    # the area between q and the random line is 0.1 (1/2 - 1/6) - 0.05 / 2 = 1/120.
    assert right.qini_coefficient == pytest.approx(1 / 120, abs=0.002)
    assert wrong.qini_coefficient == pytest.approx(-1 / 120, abs=0.002)
    assert abs(flat.qini_coefficient) < 0.3 * right.qini_coefficient
    assert right.qini[-1] == pytest.approx(wrong.qini[-1]) == pytest.approx(flat.qini[-1])  # same total uplift
    assert right.auuc > flat.auuc > wrong.auuc


def test_the_report_names_no_customer_and_every_file_is_written(measured, tmp_path):
    _, _, _, result, scores, _ = measured
    files = write_report(result, scores, tmp_path / "out")
    page = files["report"].read_text()
    for text in ("email against control", "Qini coefficient", "Who to target next", "dr-learner"):
        assert text in page
    assert not re.search(r"K\d{7}", page)
    curve = pd.read_csv(files["Qini curve email"])
    assert set(curve.columns) >= {"share", "qini_t_learner", "qini_x_learner", "qini_dr_learner"}
    assert len(pd.read_parquet(files["scores"])) == result["rows"]


def test_an_assignment_that_is_not_random_is_flagged(tmp_path):
    """The real telemarketing sample: `contact` (cellular or telephone) was not randomised."""
    source = REPO_ROOT / "tests" / "data" / "uci-bank-marketing" / "bank-additional-sample.csv"
    result, _ = campaign_uplift(source, "contact", "y", control="telephone", segment="job")
    assert result["outcome_kind"] == "binary" and result["arms"] == ["cellular"]
    assert any("does not look random" in w for w in result["warnings"])


@pytest.mark.parametrize("change, args, message", [
    (lambda t: t.assign(arm="email"), {}, r"'arm' \(treatment\) has one arm only: 'email'"),
    (lambda t: t.assign(bought=t.bought.where(t.index != 7, "maybe")), {}, r"'bought' \(outcome\) has the value "
                                                                          r"'maybe' \(line 9\)"),
    (lambda t: t.assign(bought=t.bought.where(t.index != 3, None)), {}, r"'bought' has 1 empty values \(lines \[5\]\)"),
    (lambda t: t.assign(revenue=t.revenue.astype(object).where(t.index != 2, "unknown")), {"value": "revenue"},
     r"'revenue' \(value\) has the value 'unknown' \(line 4\)"),
    (lambda t: t.assign(revenue=t.revenue.where(t.index != 2, None)), {"value": "revenue"},
     r"'revenue' \(value\) has an empty value \(line 4\)"),
    (lambda t: t, {"control": "nobody"}, r"has no value 'nobody' \(--control\)"),
    (lambda t: t.assign(arm=t.arm.replace("control", "base")), {}, r"which value of column 'arm' is the control"),
    (lambda t: t, {"segment": "branch"}, r"no column 'branch' \(--segment\)"),
])
def test_a_bad_file_is_refused_naming_the_column_and_value(tmp_path, change, args, message):
    table = change(campaign(300)[0])
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    with pytest.raises(SchemaError, match=message):
        campaign_uplift(path, "arm", "bought", **args)
