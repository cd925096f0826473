"""Learning the bandit from history: the batch Laplace fit, the rows of an offer history and of a
decision log, and the saved warm posterior the service starts from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.config import load_bandit, load_catalogue
from nextbest.monitoring.rescore import Rescorer
from nextbest.monitoring.warm_start import log_history, offer_history, warm_start
from nextbest.serving.bandit import Context, Featuriser, OnlinePolicy, Posterior, sigmoid
from nextbest.serving.eventlog import EventLog
from nextbest.serving.privacy import load_key, pseudonymise
from nextbest.settings import Paths


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.ones(n), rng.normal(size=(n, 3)), np.zeros(n)])
    truth = np.array([-2.0, 1.0, -0.5, 0.3, 0.0])
    return x, (rng.random(n) < sigmoid(x @ truth)).astype(float), truth


def test_the_fit_recovers_the_weights_and_keeps_the_prior_where_data_is_silent():
    x, y, truth = _data(20_000)
    prior = Posterior(np.array([0.0, 0.0, 0.0, 0.0, 0.7]), np.eye(5) * 4.0)
    post = prior.fit(x, y)
    assert np.abs(post.mean[:4] - truth[:4]).max() < 0.1
    assert np.diag(post.cov)[:4].max() < 0.01 and post.n_updates == 20_000
    # The last input is always 0: the data says nothing of its weight, which keeps its prior.
    assert post.mean[4] == pytest.approx(0.7) and post.cov[4, 4] == pytest.approx(4.0)
    assert prior.fit(x[:0], y[:0]).mean == pytest.approx(prior.mean)


def test_a_weight_counts_as_that_many_repeats():
    x, y, _ = _data(400, seed=1)
    prior = Posterior(np.zeros(5), np.eye(5))
    twice = prior.fit(x, y, np.full(len(y), 2.0))
    repeated = prior.fit(np.vstack([x, x]), np.concatenate([y, y]))
    assert np.allclose(twice.mean, repeated.mean, atol=1e-8) and np.allclose(twice.cov, repeated.cov, atol=1e-10)
    assert not np.allclose(twice.mean, prior.fit(x, y).mean, atol=1e-3)


def test_the_fit_agrees_with_the_online_updates_on_the_same_answers():
    x, y, _ = _data(3_000, seed=2)
    prior = Posterior(np.zeros(5), np.eye(5))
    online = Posterior(prior.mean.copy(), prior.cov.copy())
    for row, answer in zip(x, y):
        online.update(row, answer)
    batch = prior.fit(x, y)
    assert np.abs(batch.mean - online.mean).max() < 0.05


def _policy():
    catalogue = load_catalogue()
    cfg = load_bandit(catalogue=catalogue)
    return cfg, Featuriser.for_catalogue(catalogue, cfg.actions)


def _log(path, featuriser, n: int = 120, propensities=(0.5, 0.05)):
    """A decision log of n decisions of two candidates each; the first offered, answered."""
    events = EventLog(path)
    arms = [featuriser.arms[0], featuriser.arms[1]]
    for i in range(n):
        ctx = Context("email" if i % 2 else "mobile_app", i % 24, i % 7, 0.5)
        served = arms[i % 2]
        offers = [{"product_id": served, "rank": 1, "propensity": propensities[i % 2]}]
        cands = [{"arm": a, "base_prob": 0.02 + 0.01 * j, "value": 100.0, "viewed": False} for j, a in enumerate(arms)]
        events.log_decision(f"d{i}", "p", ctx.channel, 1, offers, {}, {"request": ctx.as_dict(), "candidates": cands})
        events.log_feedback(f"d{i}", served, "accept" if i % 4 == 0 else "reject", None)
    events.log_decision("other", "p", "email", 1, [{"product_id": "not_a_product", "rank": 1, "propensity": 1.0}], {},
                        {"request": Context("email", 9, 1, 0.0).as_dict(),
                         "candidates": [{"arm": "not_a_product", "base_prob": 0.1, "value": 1.0, "viewed": False}]})
    events.log_feedback("other", "not_a_product", "accept", None)
    events.close()
    return arms


def test_a_decision_log_gives_its_rows_weighted_by_inverse_propensity(tmp_path):
    _, featuriser = _policy()
    _log(tmp_path / "events.db", featuriser)
    history = log_history(tmp_path / "events.db", featuriser, max_weight=10.0)
    assert len(history.reward) == 120 and history.reward.sum() == 30
    assert history.skipped == {"decision scored by another catalogue or layout": 1}
    # 1/0.5 = 2 and 1/0.05 = 20, clipped at 10: a ratio of 5, scaled to average 1.
    assert history.weight.mean() == pytest.approx(1.0)
    assert history.weight[1] / history.weight[0] == pytest.approx(5.0)
    rebuilt = featuriser.matrix([featuriser.arms[0], featuriser.arms[1]], np.array([0.02, 0.03]), np.zeros(2),
                                Context("mobile_app", 0, 0, 0.5))[0]
    assert np.array_equal(history.x[0], rebuilt)  # the row the decision scored its offer with
    assert history.last_reward_rowid == 121
    with pytest.raises(ValueError, match="max_weight"):
        log_history(tmp_path / "events.db", featuriser, max_weight=0.5)


def test_the_warm_posterior_is_saved_and_the_service_starts_from_it(tmp_path):
    cfg, featuriser = _policy()
    other = tmp_path / "earlier" / "events.db"
    _log(other, featuriser, n=400)
    paths = Paths.from_workdir(tmp_path / "wd")
    with pytest.raises(LookupError, match="nothing to learn from"):
        warm_start(paths, offers=True)  # no offer history, no log
    report = warm_start(paths, offers=True, logs=(other,))
    assert report["observations"] == 400 and report["accepted"] == 100 and report["replay_from"] == 0
    assert "no offer history" in report["notes"][0]
    # The prior's acceptance (about 6%) moves towards the log's 25%.
    assert report["acceptance_before"] < 0.1 < 0.2 < report["acceptance_after"] < 0.3
    policy = OnlinePolicy(featuriser, cfg, EventLog(paths.events_db))
    assert policy.posterior.n_updates == 400 and policy.replayed == 0
    with pytest.raises(LookupError, match="--force"):
        warm_start(paths, offers=False, logs=(other,))
    # Its own log, already learnt from, is not replayed on top of the warm posterior.
    _log(paths.events_db, featuriser, n=40)
    again = warm_start(paths, offers=False, logs=(other, paths.events_db), force=True)
    assert again["replay_from"] == 41
    assert OnlinePolicy(featuriser, cfg, EventLog(paths.events_db)).replayed == 0


def _offers_workdir(tmp_path, featuriser, responses):
    paths = Paths.from_workdir(tmp_path)
    paths.raw.mkdir(parents=True)
    paths.features.mkdir(parents=True)
    arm = featuriser.arms[0]
    n = len(responses)
    offers = pd.DataFrame({"offer_id": [f"O{i}" for i in range(n)], "customer_id": ["C1", "C2"] * (n // 2),
                           "product_id": [arm] * n, "channel": ["branch"] * n,
                           "offered_at": pd.date_range("2026-03-02 10:00", periods=n, freq="D"),
                           "response": responses})
    pd.DataFrame({"customer_id": ["C1", "C1"], "event_timestamp": pd.to_datetime(["2026-02-28", "2026-03-31"],
                                                                                  utc=True),
                  "logins_app_30d": [3.0, 0.0], "logins_web_30d": [1.0, 0.0],
                  f"views_{arm}_30d": [2.0, 0.0]}).to_parquet(paths.features / "customer_activity.parquet")
    key = load_key(paths.root)
    known = pseudonymise("C1", key)

    def score(who, at):
        out = np.full((len(who), 1), np.nan)
        out[[w == known for w in who]] = 0.04
        return out

    return paths, offers, Rescorer("nbp", "1", [arm], score)


def test_the_offer_history_is_scored_point_in_time(tmp_path):
    _, featuriser = _policy()
    paths, offers, rescorer = _offers_workdir(tmp_path, featuriser, ["accept", "reject", "no_response", "reject"])
    history = offer_history(paths, featuriser, offers, rescorer)
    # C2 has no feature snapshot: left out, and said so.
    assert history.skipped == {"no feature snapshot at or before the offer": 2}
    assert history.reward.tolist() == [1.0, 0.0] and history.weight.tolist() == [1.0, 1.0]
    first = featuriser.matrix([featuriser.arms[0]], np.array([0.04]), np.array([1.0]),
                              Context("branch", 10, 0, float(np.log1p(4.0))))[0]
    assert np.allclose(history.x[0], first)  # the snapshot of 28 February: 4 logins, the page viewed
    latest = offer_history(paths, featuriser, offers, rescorer, max_rows=3)
    assert latest.skipped == {"older than the latest 3 offers": 1, "no feature snapshot at or before the offer": 2}
    assert latest.reward.tolist() == [0.0]  # the first offer (accepted) is the one left out
    actions = offers.assign(product_id=[featuriser.arms[-1]] * len(offers))  # an action, not a product
    assert offer_history(paths, featuriser, actions, rescorer).skipped == {
        "not a product the champion scores (an action)": 4}


@pytest.mark.parametrize("change, message", [
    (lambda o: o.assign(response=["accept", "maybe", "reject", "reject"]), "column 'response' has value(s) 'maybe'"),
    (lambda o: o.drop(columns=["channel"]), "missing column(s) channel"),
])
def test_a_malformed_offer_history_is_named(tmp_path, change, message):
    _, featuriser = _policy()
    paths, offers, rescorer = _offers_workdir(tmp_path, featuriser, ["accept", "reject", "reject", "reject"])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        offer_history(paths, featuriser, change(offers), rescorer)


def test_a_history_weight_below_one_leaves_the_posterior_wider(tmp_path):
    from nextbest.monitoring.warm_start import warm_posterior

    cfg, featuriser = _policy()
    _log(tmp_path / "events.db", featuriser, n=400)
    history = log_history(tmp_path / "events.db", featuriser)
    prior = Posterior.from_config(featuriser, cfg.prior)
    full, half = warm_posterior(prior, [history]), warm_posterior(prior, [history], 0.5)
    assert np.allclose(half.mean, prior.fit(history.x, history.reward, 0.5 * history.weight).mean)
    assert np.trace(half.cov) > np.trace(full.cov) and np.trace(half.cov) < np.trace(prior.cov)
    with pytest.raises(ValueError, match="history_weight"):
        warm_posterior(prior, [history], 0.0)
