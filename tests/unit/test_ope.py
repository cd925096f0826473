"""Off-policy evaluation recovers a candidate policy's true value from decisions logged by another."""

from __future__ import annotations

import numpy as np
import pytest

from nextbest.monitoring.ope import Logged, direct_method, doubly_robust, dr_shrunk, from_event_log, ips, snips
from nextbest.serving.bandit import Context, Featuriser, Posterior, choose, sigmoid, slot_propensities
from nextbest.serving.eventlog import EventLog

ARMS = ["savings_account", "term_deposit", "credit_card", "mortgage", "investment_funds"]
VALUE = np.array([45.0, 120.0, 140.0, 1400.0, 520.0])
CHANNELS = ["mobile_app", "email", "push", "branch"]


def _world(seed: int):
    f = Featuriser(ARMS)
    rng = np.random.default_rng(seed)
    truth = np.zeros(f.dim)
    truth[:2] = (1.0, 1.0)
    truth[f.offsets["arm"]:f.offsets["arm"] + len(ARMS)] = rng.normal(0, 0.8, len(ARMS))
    truth[f.offsets["channel"]:f.offsets["channel"] + len(f.channels)] = rng.normal(0, 0.5, len(f.channels))
    truth[f.offsets["arm"] + ARMS.index("mortgage")] = -3.5  # the prior's favourite (by value) rarely sells
    logging = Posterior.prior(f, intercept=1.0, score_weight=1.0, variance=0.5)
    target = Posterior(truth.copy(), np.eye(f.dim) * 0.05)  # a better model, as a challenger would be
    return f, truth, logging, target, rng


def _context(rng) -> tuple[Context, np.ndarray]:
    ctx = Context(CHANNELS[rng.integers(len(CHANNELS))], int(rng.integers(24)), int(rng.integers(7)),
                  float(rng.uniform(0, 3)))
    return ctx, rng.uniform(0.002, 0.05, len(ARMS))


@pytest.mark.parametrize("seed", [0, 1])
def test_ips_and_doubly_robust_recover_the_true_value(seed):
    f, truth, logging, target_post, rng = _world(seed)
    n, k, share = 50_000, 2, 0.3
    served, prop, reward = np.full((n, k), -1), np.ones((n, k)), np.zeros((n, k))
    target, predicted, true_values = np.zeros((n, len(ARMS), k)), np.zeros((n, len(ARMS))), np.zeros(n)
    exact = np.zeros((n, len(ARMS)))  # the true expected reward of every candidate
    for i in range(n):
        ctx, base = _context(rng)
        x = f.matrix(ARMS, base, np.zeros(len(ARMS)), ctx)
        p_true = sigmoid(x @ truth)
        c = choose(logging, x, VALUE, k, share, rng, samples=256)  # as served (bandit.yaml)
        for j, (arm, p) in enumerate(zip(c.order, c.propensity)):
            served[i, j], prop[i, j] = arm, p
            reward[i, j] = float(rng.random() < p_true[arm]) * VALUE[arm]
        target[i] = slot_propensities(target_post, x, VALUE, k, 0.0, rng, 1)  # greedy: exact
        predicted[i] = sigmoid(x @ logging.mean) * VALUE  # a wrong reward model: DR must correct it
        exact[i] = p_true * VALUE
        true_values[i] = (target[i] * exact[i][:, None]).sum()
    logged = Logged(served, prop, reward)
    truth_value = true_values.mean()
    logging_value = reward.sum(1).mean()
    assert truth_value > 1.2 * logging_value  # the candidate is genuinely different and better
    # Unbiased estimators: the truth lies in their 95% intervals, and the intervals are informative.
    for est in (doubly_robust(logged, target, predicted), ips(logged, target)):
        assert est.low < truth_value < est.high, (est, truth_value)
        assert (est.high - est.low) / 2 < 0.2 * truth_value, est
    # Self-normalised IPS trades bias for variance; here it only has to be in the right region.
    est = snips(logged, target)
    assert est.low < est.value < est.high and abs(est.value - truth_value) / truth_value < 0.25
    # The direct method alone (the wrong reward model) would be far off: the correction matters.
    dm_error = abs(direct_method(logged, target, predicted).value - truth_value) / truth_value
    assert dm_error > 0.1
    # Shrinking the weights keeps enough of that correction: far closer than the direct method.
    shrunk, _ = dr_shrunk(logged, target, predicted)
    assert abs(shrunk.value - truth_value) / truth_value < min(0.1, dm_error / 2), shrunk
    # With the true reward model the direct method is the truth itself, and shrinking the weights
    # narrows DR's interval while staying close to the truth.
    assert np.isclose(direct_method(logged, target, exact).value, truth_value, rtol=1e-12)
    dr_exact, (shrunk_exact, lam_exact) = doubly_robust(logged, target, exact), dr_shrunk(logged, target, exact)
    assert np.isfinite(lam_exact) and shrunk_exact.high - shrunk_exact.low < dr_exact.high - dr_exact.low
    assert abs(shrunk_exact.value - truth_value) / truth_value < 0.05, shrunk_exact


def test_the_event_log_gives_the_same_arrays(tmp_path):
    f, truth, logging, target_post, rng = _world(1)
    events = EventLog(tmp_path / "events.db")
    for i in range(300):
        ctx, base = _context(rng)
        x = f.matrix(ARMS, base, np.zeros(len(ARMS)), ctx)
        c = choose(logging, x, VALUE, 2, 0.3, rng, samples=64)
        offers = [{"product_id": ARMS[a], "rank": j + 1, "propensity": p}
                  for j, (a, p) in enumerate(zip(c.order, c.propensity))]
        context = {"request": ctx.as_dict(), "candidates": [
            {"arm": a, "base_prob": float(b), "value": float(v), "viewed": False}
            for a, b, v in zip(ARMS, base, VALUE)]}
        events.log_decision(f"d{i}", "p", ctx.channel, 2, offers, {}, context)
        if i % 7 == 0:
            events.log_feedback(f"d{i}", ARMS[c.order[0]], "accept", None)
    logged, target, predicted = from_event_log(tmp_path / "events.db", target_post, f, 0.0, samples=1)
    assert logged.served.shape == (300, 2) and (logged.served >= 0).all()
    assert (logged.reward > 0).sum() == len(range(0, 300, 7))
    assert np.allclose(target.sum(1), 1.0)  # each slot filled by exactly one candidate under greedy
    assert 0 < logged.propensity.min() and logged.propensity.max() <= 1
    assert doubly_robust(logged, target, predicted).n == 300
    assert predicted.shape == (300, len(ARMS)) and (predicted > 0).all()
    assert ips(logged, target).value >= 0


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_slot_probabilities_are_a_distribution(share):
    f, _, logging, _, rng = _world(2)
    ctx, base = _context(rng)
    probs = slot_propensities(logging, f.matrix(ARMS, base, np.zeros(5), ctx), VALUE, 3, share, rng, 500)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(0), 1.0) and (probs.sum(1) <= 1 + 1e-9).all()


def test_cli_evaluates_the_saved_policy_on_the_log(tmp_path):
    from typer.testing import CliRunner

    from nextbest.cli import app
    from nextbest.config import load_bandit, load_catalogue

    catalogue = load_catalogue()
    cfg = load_bandit(catalogue=catalogue)
    f = Featuriser.for_catalogue(catalogue, cfg.actions)
    post = Posterior.prior(f, 1.0, 1.0, 0.25)
    events = EventLog(tmp_path / "events.db")
    rng = np.random.default_rng(3)
    arms, value = ARMS, VALUE
    for i in range(200):
        ctx, base = _context(rng)
        c = choose(post, f.matrix(arms, base, np.zeros(len(arms)), ctx), value, 2, 0.2, rng, samples=64)
        offers = [{"product_id": arms[a], "rank": j + 1, "propensity": p}
                  for j, (a, p) in enumerate(zip(c.order, c.propensity))]
        events.log_decision(f"d{i}", "p", ctx.channel, 2, offers, {}, {"request": ctx.as_dict(), "candidates": [
            {"arm": a, "base_prob": float(b), "value": float(v), "viewed": False}
            for a, b, v in zip(arms, base, value)]})
        events.log_feedback(f"d{i}", arms[c.order[0]], "accept" if i % 5 == 0 else "reject", None)
    runner = CliRunner()
    empty = runner.invoke(app, ["ope", "--workdir", str(tmp_path)])
    assert empty.exit_code != 0 and "no saved state" in empty.output
    events.save_policy(cfg.policy, f.signature, 200, 0, post.mean, post.cov)
    result = runner.invoke(app, ["ope", "--workdir", str(tmp_path), "--explore-share", "0"])
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(next((tmp_path / "reports").glob("*/ope-champion-explore0.json")).read_text())
    assert report["logged_value"] > 0 and {"ips", "snips", "dr", "dr_os", "dm"} <= set(report)
    assert "DR, shrunk weights" in result.output and "direct method" in result.output
    assert report["dr"]["ci95"][0] <= report["dr"]["value"] <= report["dr"]["ci95"][1]


def test_weight_diagnostics_flag_a_candidate_far_from_the_logging_policy():
    from nextbest.monitoring.ope import Logged, diagnostics

    n = 1000
    served = np.zeros((n, 1), dtype=int)
    logged = Logged(served, np.full((n, 1), 0.5), np.zeros((n, 1)))
    same = np.zeros((n, 2, 1))
    same[:, 0, 0] = 0.5
    d = diagnostics(logged, same)
    assert d["effective_sample_size"] == pytest.approx(n) and d["max_weight"] == pytest.approx(1.0)
    far = np.zeros((n, 2, 1))
    far[:10, 0, 0] = 1.0  # the candidate almost never plays what was logged
    d = diagnostics(logged, far)
    assert d["effective_sample_size"] == pytest.approx(10) and d["ess_share"] == pytest.approx(0.01)
    assert d["max_weight"] == pytest.approx(2.0) and d["share_weights_over_10"] == 0.0
