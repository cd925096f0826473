"""One reward never rewrites the policy: no offer's odds of acceptance, for any customer, channel or
moment, change by more than `max_step_odds` (configs/bandit.yaml) on a single accept or reject."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nextbest.config import load_bandit, load_catalogue
from nextbest.constants import CHANNELS
from nextbest.serving.bandit import Context, Featuriser, Posterior, sigmoid


@pytest.fixture(scope="module")
def policy():
    catalogue = load_catalogue()
    cfg = load_bandit(catalogue=catalogue)
    return catalogue, cfg, Featuriser.for_catalogue(catalogue, cfg.actions)


def _rows(featuriser, arms, n, seed):
    """Customers on every channel and hour, engagement from none to heavy, model scores from 0.01% to 60%."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ctx = Context(str(rng.choice(CHANNELS)), int(rng.integers(0, 24)), int(rng.integers(0, 7)),
                      float(np.log1p(rng.integers(0, 400))))
        base = np.exp(rng.uniform(np.log(1e-4), np.log(0.6), len(arms)))
        rows.append(featuriser.matrix(arms, base, rng.integers(0, 2, len(arms)), ctx))
    return np.vstack(rows)


@pytest.mark.parametrize("reward", [1.0, 0.0])
def test_one_reward_moves_no_probability_by_more_than_the_configured_factor(policy, reward):
    catalogue, cfg, featuriser = policy
    arms = featuriser.arms
    rows = _rows(featuriser, arms, 300, seed=1)
    observed = _rows(featuriser, arms, 1, seed=2)[0]
    cap = math.log(cfg.max_step_odds)
    assert cfg.max_step_odds == 1.5
    for bounded in (True, False):
        post = Posterior.from_config(featuriser, cfg.prior, math.log(cfg.cold_start.page_boost))
        before = sigmoid(rows @ post.mean)
        post.update(observed, reward, featuriser.max_logit_change if bounded else None, cap if bounded else None)
        ratio = sigmoid(rows @ post.mean) / before
        worst = max(ratio.max(), 1 / ratio.min())
        if bounded:
            assert worst <= cfg.max_step_odds + 1e-9, worst
        elif reward == 1.0:
            assert worst > 3  # the full step: one accept moves other customers' offers many-fold


def test_the_bound_holds_for_any_row_and_weight_change(policy):
    _, _, featuriser = policy
    rng = np.random.default_rng(3)
    rows = _rows(featuriser, featuriser.arms, 200, seed=4)
    for _ in range(50):
        delta = rng.normal(0, 1, featuriser.dim) * rng.uniform(0, 1, featuriser.dim) ** 3
        assert np.abs(rows @ delta).max() <= featuriser.max_logit_change(delta) + 1e-9


def test_steps_under_the_cap_are_the_full_laplace_step(policy):
    _, cfg, featuriser = policy
    x = _rows(featuriser, featuriser.arms, 1, seed=5)[0]
    a = Posterior.from_config(featuriser, cfg.prior)
    b = Posterior.from_config(featuriser, cfg.prior)
    assert a.update(x, 0.0, featuriser.max_logit_change, 10.0) == 1.0  # a wide cap changes nothing
    b.update(x, 0.0)
    assert np.allclose(a.mean, b.mean) and np.allclose(a.cov, b.cov)
