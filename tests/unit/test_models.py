import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from nextbest.artifact import RowScorer, load_scorer
from nextbest.config import TrainConfig
from nextbest.training.models import (ModelMeta, Preprocessor, build_model, from_checkpoint, numpy_state, predict_proba,
                                      save_checkpoint)
from nextbest.training.train import fit, masked_scores, nbp_task, predict_logits

PRODUCTS = ["a", "b", "c"]


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    held_a = rng.random(n) < 0.5
    df = pd.DataFrame({"x": x, "held_a": held_a.astype(int), "held_b": 0, "held_c": 0,
                       "seg": rng.choice(["u", "v"], n)})
    # b is acquired when x is high; c when x is low; a is held by half and never acquired then.
    df["label_a"] = ((rng.random(n) < 0.3) & ~held_a).astype(int)
    df["label_b"] = (x + rng.normal(0, 0.3, n) > 0.8).astype(int)
    df["label_c"] = (x + rng.normal(0, 0.3, n) < -0.8).astype(int)
    return df


def _meta(pre):
    return ModelMeta(task="nbp", feature_service="test_v1", preprocessor=pre, outputs=PRODUCTS,
                     hidden=[16], embedding_dim=2, dropout=0.0)


def test_loss_falls_and_model_learns_direction():
    df = _data()
    pre = Preprocessor.fit(df, ["x", "held_a", "held_b", "held_c"], ["seg"])
    data = nbp_task(df, pre, PRODUCTS)
    cfg = TrainConfig(hidden=[16], max_epochs=15, patience=15, batch_size=64, lr=0.01)
    result = fit("nbp", _meta(pre), data, data, cfg)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.8
    hi = pd.DataFrame({"x": [2.0], "held_a": [0], "held_b": [0], "held_c": [0], "seg": ["u"]})
    lo = hi.assign(x=-2.0)
    p_hi, p_lo = predict_proba(result.model, _meta(pre), hi)[0], predict_proba(result.model, _meta(pre), lo)[0]
    assert p_hi[1] > p_lo[1] and p_lo[2] > p_hi[2]


def test_held_products_are_masked_from_loss_and_ranking():
    df = _data()
    pre = Preprocessor.fit(df, ["x"], [])
    data = nbp_task(df, pre, PRODUCTS)
    assert torch.equal(data.mask[:, 0], torch.from_numpy(1.0 - df.held_a.to_numpy(dtype=np.float32)))
    scores = masked_scores(torch.zeros(len(df), 3), data.mask)
    assert np.isneginf(scores[df.held_a.to_numpy() == 1, 0]).all()


@pytest.mark.parametrize("encoding", ["standard", "piecewise"])
def test_checkpoint_roundtrip_without_pickle(tmp_path, encoding):
    df = _data(100)
    pre = Preprocessor.fit(df, ["x", "held_a"], ["seg"], encoding, bins=4)
    meta = _meta(pre)
    cfg = TrainConfig(hidden=[16], max_epochs=2, patience=2)
    model = fit("nbp", meta, nbp_task(df, pre, PRODUCTS), nbp_task(df, pre, PRODUCTS), cfg).model
    save_checkpoint(tmp_path, model, meta)
    assert json.loads((tmp_path / "model.json").read_text())["preprocessor"]["vocabs"]["seg"] == ["u", "v"]
    loaded, meta2 = from_checkpoint(tmp_path)
    np.testing.assert_allclose(predict_proba(loaded, meta2, df), predict_proba(model, meta, df), rtol=1e-6)
    # An unseen category maps to the reserved index instead of failing.
    unseen = df.head(2).assign(seg="w")
    assert predict_proba(loaded, meta2, unseen).shape == (2, 3)


def test_weights_file_refuses_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    df = _data(50)
    pre = Preprocessor.fit(df, ["x"], [])
    meta = _meta(pre)
    save_checkpoint(tmp_path, fit("nbp", meta, nbp_task(df, pre, PRODUCTS), nbp_task(df, pre, PRODUCTS),
                                  TrainConfig(hidden=[16], max_epochs=1, patience=1)).model, meta)
    torch.save({"evil": Evil()}, tmp_path / "weights.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported"):
        from_checkpoint(tmp_path)


def test_behaviour_mortgage_page_views_and_salary_rise_rank_the_mortgage_higher():
    """Directional check on data where, as in the simulator, page views and a salary rise signal intent."""
    rng = np.random.default_rng(4)
    n = 6000
    views = rng.poisson(0.15, n).astype(float)
    rise = (rng.random(n) < 0.1).astype(float)
    income = rng.lognormal(10, 0.4, n)
    logit = -3.5 + 1.4 * np.log1p(views) + 1.2 * rise
    df = pd.DataFrame({"views_mortgage_30d": views, "inflow_trend": rise * income / 12 * 0.15, "income": income,
                       "held_mortgage": 0, "held_savings": 0, "seg": rng.choice(["u", "v"], n)})
    df["label_mortgage"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    df["label_savings"] = (rng.random(n) < 0.06).astype(int)
    products = ["mortgage", "savings"]
    pre = Preprocessor.fit(df, ["views_mortgage_30d", "inflow_trend", "income", "held_mortgage", "held_savings"],
                           ["seg"])
    meta = ModelMeta(task="nbp", feature_service="t", preprocessor=pre, outputs=products, hidden=[32], embedding_dim=2,
                     dropout=0.0)
    data = nbp_task(df, pre, products)
    model = fit("nbp", meta, data, data, TrainConfig(hidden=[32], max_epochs=20, patience=20, batch_size=256,
                                                    lr=0.005)).model
    plain = df.head(1).assign(views_mortgage_30d=0.0, inflow_trend=0.0, income=22000.0, seg="u")
    keen = plain.assign(views_mortgage_30d=2.0, inflow_trend=22000.0 / 12 * 0.15)
    p_plain, p_keen = predict_proba(model, meta, plain)[0], predict_proba(model, meta, keen)[0]
    assert p_keen[0] > 2 * p_plain[0]
    assert p_keen[0] > p_keen[1] and p_plain[0] < p_plain[1]  # the mortgage moves from second to first


@pytest.mark.parametrize("encoding", ["standard", "piecewise"])
def test_row_scorer_equals_torch_on_frames_and_online_rows(encoding):
    """Serving's numpy forward pass gives the trained model's probabilities (frames, dict rows, unseen values)."""
    df = _data(300, seed=3)
    pre = Preprocessor.fit(df, ["x", "held_a", "held_b"], ["seg"], encoding)
    meta = ModelMeta(task="nbp", feature_service="test_v1", preprocessor=pre, outputs=PRODUCTS,
                     hidden=[16, 8], embedding_dim=2, dropout=0.2, temperature=1.7)
    cfg = TrainConfig(hidden=[16, 8], max_epochs=3, patience=3, dropout=0.2)
    model = fit("nbp", meta, nbp_task(df, pre, PRODUCTS), nbp_task(df, pre, PRODUCTS), cfg).model
    scorer = RowScorer(numpy_state(model), meta)
    np.testing.assert_allclose(scorer.predict_proba(df), predict_proba(model, meta, df), rtol=1e-5, atol=1e-7)
    row = {"x": [None], "held_a": [1], "held_b": [0], "seg": ["never_seen"]}
    np.testing.assert_allclose(scorer.predict_proba(row), predict_proba(model, meta, row), rtol=1e-5, atol=1e-7)
    assert not np.allclose(scorer.predict_proba(df.head(1)), scorer.predict_proba(df.head(1).assign(x=5.0)))
    one = {c: v[0] for c, v in row.items()}
    np.testing.assert_allclose(scorer.predict_row(one), scorer.predict_proba(row)[0], rtol=1e-12)
    first = df.iloc[0].to_dict()
    np.testing.assert_allclose(scorer.predict_row(first), predict_proba(model, meta, df.head(1))[0],
                               rtol=1e-5, atol=1e-7)


def test_piecewise_encoding_against_hand_computed_values():
    """Each numeric feature: its standardised value, then one input per quantile bin, clipped to [0, 1]."""
    x = np.arange(9, dtype=float)  # 0..8
    df = pd.DataFrame({"x": x, "flag": [0, 1] * 4 + [1], "const": 5.0, "seg": "u"})
    pre = Preprocessor.fit(df, ["x", "flag", "const"], ["seg"], "piecewise", bins=4)
    z = np.log1p(x)
    z = (z - z.mean()) / z.std()
    np.testing.assert_allclose(pre.edges[0], np.quantile(z, [0, 0.25, 0.5, 0.75, 1]))
    assert len(pre.edges[1]) == 2  # a 0/1 flag: its quantile edges merge into one bin
    assert pre.edges[2] == []  # a constant gets no bins
    assert pre.width == 3 + 4 + 1
    out, _ = pre.arrays(pd.DataFrame({"x": [3.0, None], "flag": [1, 0], "const": [5.0, 5.0], "seg": ["u", "u"]}))
    assert out.shape == (2, 8)
    e = np.asarray(pre.edges[0])
    v = (np.log1p(3.0) - np.log1p(x).mean()) / np.log1p(x).std()
    np.testing.assert_allclose(out[0, 0], v)
    np.testing.assert_allclose(out[0, 3:7], np.clip((v - e[:-1]) / np.diff(e), 0, 1))
    assert out[0, 3] == 1.0 and out[0, 6] == 0.0  # 3 of 0..8: above the first bin, below the last
    np.testing.assert_allclose(out[0, 7], 1.0)  # flag 1 sits at the top edge
    # A missing value sits at the training mean (0 after standardising), encoded like any other 0.
    np.testing.assert_allclose(out[1, 3:7], np.clip((0 - e[:-1]) / np.diff(e), 0, 1))
    # Online rows take the same path.
    row, _ = pre.row_arrays({"x": 3.0, "flag": 1, "const": 5.0, "seg": "u"})
    np.testing.assert_allclose(row[0], out[0])


def test_a_checkpoint_with_inconsistent_encoding_is_refused():
    df = _data(50)
    pre = Preprocessor.fit(df, ["x", "held_a"], [], "piecewise")
    data = json.loads(_meta(pre).to_json())
    data["preprocessor"]["edges"] = data["preprocessor"]["edges"][:1]
    with pytest.raises(ValueError, match="1 lists of edges for 2 numeric features"):
        ModelMeta.from_json(json.dumps(data))
    data["preprocessor"]["encoding"] = "quantum"
    with pytest.raises(ValueError, match="numeric encoding 'quantum'"):
        ModelMeta.from_json(json.dumps(data))
    with pytest.raises(ValueError, match="numeric_encoding"):
        TrainConfig(numeric_encoding="quantum")


@pytest.mark.parametrize("select_on", ["metric", "loss"])
def test_early_stopping_keeps_the_epoch_it_selects_on(select_on):
    """The kept model is the epoch with the best validation metric, or the lowest validation loss;
    both are recorded every epoch, and the kept model's validation scores are that epoch's."""
    from nextbest.training.train import validation_scores

    train, val = _data(400, seed=1), _data(300, seed=2)
    pre = Preprocessor.fit(train, ["x", "held_a", "held_b", "held_c"], ["seg"])
    cfg = TrainConfig(hidden=[16], max_epochs=12, patience=12, batch_size=32, lr=0.05, select_on=select_on)
    t, v = nbp_task(train, pre, PRODUCTS), nbp_task(val, pre, PRODUCTS)
    result = fit("nbp", _meta(pre), t, v, cfg)
    hist = result.history
    assert len(hist) == 12 and all({"val_loss", "val_metric", "train_loss"} <= set(h) for h in hist)
    if select_on == "loss":
        want = min(range(len(hist)), key=lambda i: hist[i]["val_loss"])
    else:
        want = max(range(len(hist)), key=lambda i: hist[i]["val_metric"])
    assert result.best_epoch == want
    metric, loss = validation_scores("nbp", result.model, v)
    assert metric == pytest.approx(hist[want]["val_metric"]) and loss == pytest.approx(hist[want]["val_loss"])


def _count_steps(monkeypatch) -> list[int]:
    """A list that grows by one at each optimiser step."""
    steps: list[int] = []
    original = torch.optim.Adam.step

    def counting(self, *args, **kwargs):
        steps.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting)
    return steps


def _small_task():
    df = _data(600)
    pre = Preprocessor.fit(df, ["x", "held_a", "held_b", "held_c"], ["seg"])
    return pre, nbp_task(df, pre, PRODUCTS)


def test_a_small_training_set_still_gets_the_minimum_number_of_steps(monkeypatch):
    """A batch larger than the data would make one step per epoch: the batch shrinks to keep
    `min_steps_per_epoch` optimiser steps, so settings chosen on a large bank train on a small one."""
    from nextbest.training.train import effective_batch_size

    assert effective_batch_size(TrainConfig(batch_size=2048, min_steps_per_epoch=32), 600) == 19
    assert effective_batch_size(TrainConfig(batch_size=2048, min_steps_per_epoch=32), 1_000_000) == 2048
    assert effective_batch_size(TrainConfig(batch_size=64, min_steps_per_epoch=32), 10) == 1

    steps = _count_steps(monkeypatch)
    pre, data = _small_task()
    fit("nbp", _meta(pre), data, data, TrainConfig(hidden=[16], max_epochs=2, patience=5, batch_size=4096,
                                                   min_steps_per_epoch=32))
    assert len(steps) == 2 * 32  # ceil(600 / 19) = 32 steps in each of the 2 epochs


def test_a_large_training_set_is_validated_every_max_steps_per_epoch_steps_through_one_shuffled_pass(monkeypatch):
    """With `max_steps_per_epoch`, an epoch ends after that many steps and the next one goes on where it
    stopped: every row is seen once per pass, and early stopping counts steps, not passes."""
    from nextbest.training.train import _shuffled_batches

    gen = torch.Generator().manual_seed(0)
    batches = _shuffled_batches(10, 4, gen)
    first = torch.cat([next(batches) for _ in range(3)])  # one pass: 4 + 4 + 2 rows
    second = torch.cat([next(batches) for _ in range(3)])
    assert sorted(first.tolist()) == list(range(10)) and sorted(second.tolist()) == list(range(10))
    assert first.tolist() != second.tolist()  # each pass in a new order

    steps, validations = _count_steps(monkeypatch), []
    pre, data = _small_task()
    fit("nbp", _meta(pre), data, data, TrainConfig(hidden=[16], max_epochs=3, patience=5, batch_size=19,
                                                   max_steps_per_epoch=5),
        on_epoch=lambda epoch, metrics: validations.append(len(steps)))
    assert validations == [5, 10, 15]  # 32 steps make a pass; validation came every 5
    steps.clear()
    full = fit("nbp", _meta(pre), data, data, TrainConfig(hidden=[16], max_epochs=2, patience=5, batch_size=19))
    assert len(steps) == 2 * 32 and len(full.history) == 2  # unset: an epoch is a full pass


def test_target_mask_drops_held_and_ineligible_products_from_loss_and_ranking():
    """nbp predicts and ranks what serving may offer: not held, age within range, prerequisite held."""
    from nextbest.config import Catalogue
    from nextbest.training.datasets import target_mask

    catalogue = Catalogue(version=1, products=[
        {"product_id": "a", "name": "A", "category": "account", "margin": 1},
        {"product_id": "b", "name": "B", "category": "card", "margin": 1,
         "eligibility": {"min_age": 21, "requires": ["a"]}},
        {"product_id": "c", "name": "C", "category": "loan", "margin": 1, "eligibility": {"max_age": 65}},
    ])
    df = pd.DataFrame({"age": [30, 19, 70, np.nan, 30], "held_a": [1, 1, 0, 1, 0], "held_b": [0, 0, 0, 0, 1],
                       "held_c": [0, 0, 0, 0, 0], "x": 0.0, "label_a": 0, "label_b": 0, "label_c": 0})
    expected = np.array([[0, 1, 1],   # holds a: b allowed (age 30, requires a), c allowed
                         [0, 0, 1],   # 19: too young for b
                         [1, 0, 0],   # 70: b needs a, c too old
                         [0, 1, 1],   # unknown age counts as within range (as in serving)
                         [1, 0, 1]])  # b held (its prerequisite gone: still masked, as held)
    np.testing.assert_array_equal(target_mask(df, PRODUCTS, catalogue), expected)
    np.testing.assert_array_equal(target_mask(df, PRODUCTS), 1 - df[["held_a", "held_b", "held_c"]].to_numpy())
    pre = Preprocessor.fit(df, ["x"], [])
    data = nbp_task(df, pre, PRODUCTS, catalogue)
    np.testing.assert_array_equal(data.mask.numpy(), expected)
    # A masked cell contributes nothing to the loss: changing its label leaves the gradient unchanged.
    torch.manual_seed(0)
    model = build_model(_meta(pre))
    grads = []
    for label in (0.0, 1.0):
        data.y[2, 1] = label  # row 2, product b: ineligible
        model.zero_grad()
        logits = model(data.x_num, data.x_cat)
        (nn.functional.binary_cross_entropy_with_logits(logits, data.y, reduction="none") * data.mask).sum().backward()
        grads.append(model.mlp[0].weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_an_ensemble_averages_networks_of_consecutive_seeds_and_round_trips(tmp_path):
    """ensemble: 3 trains three networks with seeds 7, 8, 9; the model's logit is their mean; the
    checkpoint, the numpy scorer and the history all carry the three."""
    from nextbest.training.models import Ensemble
    from nextbest.training.train import fit_ensemble

    df = _data(400, seed=5)
    pre = Preprocessor.fit(df, ["x", "held_a", "held_b", "held_c"], ["seg"], "piecewise", bins=4)
    data = nbp_task(df, pre, PRODUCTS)
    cfg = TrainConfig(hidden=[16], max_epochs=3, patience=3, seed=7, ensemble=3)
    meta = ModelMeta(task="nbp", feature_service="test_v1", preprocessor=pre, outputs=PRODUCTS, hidden=[16],
                     embedding_dim=2, dropout=0.0, members=3, temperature=1.3)
    result = fit_ensemble("nbp", meta, data, data, cfg)
    assert isinstance(result.model, Ensemble) and len(result.model.members) == 3
    # Each member is the network a single run with its seed gives.
    for i, member in enumerate(result.model.members):
        alone = fit("nbp", _meta(pre), data, data, cfg.model_copy(update={"seed": 7 + i, "ensemble": 1})).model
        torch.testing.assert_close(predict_logits(member, data), predict_logits(alone, data))
    logits = [predict_logits(m, data) for m in result.model.members]
    assert not torch.allclose(logits[0], logits[1])
    torch.testing.assert_close(predict_logits(result.model, data), torch.stack(logits).mean(0))
    # Epochs number on across members, so MLflow steps and the progress bar never restart.
    assert [h["epoch"] for h in result.history] == list(range(len(result.history)))
    assert [h["member"] for h in result.history] == sorted(h["member"] for h in result.history)
    assert {h["member"] for h in result.history} == {0, 1, 2} and len(result.member_epochs) == 3

    save_checkpoint(tmp_path, result.model, meta)
    loaded, meta2 = from_checkpoint(tmp_path)
    assert meta2.members == 3
    np.testing.assert_allclose(predict_proba(loaded, meta2, df), predict_proba(result.model, meta, df), rtol=1e-6)
    # Serving's scorer, from model.json and weights.npz alone, averages the members the same way.
    scorer, _ = load_scorer(tmp_path)
    np.testing.assert_allclose(scorer.predict_proba(df), predict_proba(loaded, meta2, df), rtol=1e-5, atol=1e-7)
    row = df.iloc[3].to_dict()
    np.testing.assert_allclose(scorer.predict_row(row), predict_proba(loaded, meta2, df.iloc[[3]])[0],
                               rtol=1e-5, atol=1e-7)

    with pytest.raises(ValueError, match="3 members, config asks for ensemble 2"):
        fit_ensemble("nbp", meta, data, data, cfg.model_copy(update={"ensemble": 2}))
    # A checkpoint whose member count does not match its weights is refused, not half-loaded.
    bad = json.loads((tmp_path / "model.json").read_text())
    bad["members"] = 2
    (tmp_path / "model.json").write_text(json.dumps(bad))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="3 networks, model.json says members=2"):
        load_scorer(tmp_path)
    bad["members"] = 0
    (tmp_path / "model.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="members must be at least 1, got 0"):
        from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="members must be at least 1, got 0"):
        load_scorer(tmp_path)
