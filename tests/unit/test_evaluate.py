import numpy as np
import pandas as pd
import pytest

from nextbest.training import evaluate as ev
from nextbest.training.models import Preprocessor


def test_popularity_per_segment_with_fallback():
    y = np.array([[1, 0], [0, 0], [0, 1], [0, 1]] * 30, float)
    mask = np.ones_like(y)
    seg = np.array(["a", "a", "b", "b"] * 30)
    seg[-2:] = "tiny"
    out = ev.popularity_scores(y, mask, seg, np.array(["a", "b", "tiny", "new"]))
    assert out[0] == pytest.approx([0.5, 0.0])
    assert out[1, 1] == pytest.approx(1.0)
    overall = (y * mask).sum(0) / mask.sum(0)
    assert out[2] == pytest.approx(overall) and out[3] == pytest.approx(overall)  # too small / unseen: overall


def test_masked_rankers_and_per_segment_map():
    y = np.array([[0, 1, 0], [1, 0, 0]], float)
    mask = np.array([[1, 1, 0], [1, 1, 1]], float)
    scores = {"good": np.array([[0.1, 0.9, 5.0], [0.8, 0.1, 0.2]]), "bad": np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.9]])}
    res = ev.evaluate_rankers(ev.NbpEvaluation(y, mask, scores, ["a", "b", "c"], np.array(["s1", "s2"])))
    assert res.metrics["good_map_at_7"] == pytest.approx(1.0)  # the held product c (score 5.0) is ignored
    assert res.metrics["bad_map_at_7"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert res.per_segment_map["bad"] == pytest.approx({"s1": 0.5, "s2": 1 / 3})
    assert res.per_product_auc["good"]["a"] == pytest.approx(1.0)


def test_calibration_and_gains_tables():
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    y = rng.random(5000) < p
    cal = ev.calibration_table(y, p, bins=5)
    np.testing.assert_allclose(cal.observed, cal.predicted, atol=0.05)
    gains = ev.gains_table(y, p, points=10)
    assert gains.captured.iloc[-1] == pytest.approx(1.0) and gains.lift.iloc[0] > 1.5
    assert (np.diff(gains.captured) >= 0).all()


def test_lightgbm_nbp_learns_a_signal():
    rng = np.random.default_rng(1)
    n = 3000
    df = pd.DataFrame({"x": rng.normal(size=n), "c": rng.choice(["u", "v"], n)})
    y = np.stack([(df.x + rng.normal(0, 0.5, n) > 1).astype(float),
                  (df.c == "u") & (rng.random(n) < 0.3)], 1).astype(float)
    mask = np.ones_like(y)
    pre = Preprocessor(["x"], ["c"], vocabs={"c": ["u", "v"]})
    x, names, cats = ev.lightgbm_matrix(df, pre)
    assert names == ["x", "c"] and cats == [1]
    scores = ev.lightgbm_nbp(x[:2000], y[:2000], mask[:2000], x[2000:2500], y[2000:2500], mask[2000:2500],
                             x[2500:], cats)
    from nextbest.training.metrics import roc_auc

    assert roc_auc(y[2500:, 0], scores[:, 0]) > 0.85
    assert roc_auc(y[2500:, 1], scores[:, 1]) > 0.6
