"""The contextual bandit: propensities match what the policy does, it learns, its state survives restarts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nextbest.config import load_bandit
from nextbest.serving.bandit import (Context, Featuriser, OnlinePolicy, Posterior, _thompson_hits, choose, sigmoid,
                                     slot_propensities)
from nextbest.serving.decide import Candidate
from nextbest.serving.eventlog import EventLog

ARMS = ["savings_account", "term_deposit", "credit_card", "mortgage", "retention_call"]
GROUPS = {"savings_account": "deposit", "term_deposit": "deposit", "credit_card": "card", "mortgage": "loan"}


def _setup(seed=0):
    f = Featuriser(ARMS)
    post = Posterior.prior(f, intercept=1.0, score_weight=1.0, variance=0.5)
    x = f.matrix(ARMS[:4], np.array([0.02, 0.03, 0.01, 0.005]), np.zeros(4), Context("web", 20, 2, 1.5))
    value = np.array([45.0, 120.0, 140.0, 1400.0])
    return f, post, x, value


@pytest.mark.parametrize("uniform", [0.0, 0.1])
def test_logged_propensities_match_the_policy_empirically(uniform):
    _, post, x, value = _setup()
    rng = np.random.default_rng(1)
    share, k, n = 0.3, 2, 4000
    counts = np.zeros((x.shape[0], k))
    logged = {}
    for _ in range(n):
        c = choose(post, x, value, k, share, rng, samples=256, uniform_share=uniform)
        for slot, (i, p) in enumerate(zip(c.order, c.propensity)):
            counts[i, slot] += 1
            logged.setdefault((i, slot), []).append(p)
            assert 0 < p <= 1
    empirical = counts / n
    for (i, slot), ps in logged.items():
        # Each logged propensity estimates P(offer i in this slot); MC error ~ 0.03 for 256 draws.
        assert abs(np.mean(ps) - empirical[i, slot]) < 0.03, (i, slot, np.mean(ps), empirical[i, slot])
    exact = slot_propensities(post, x, value, k, share, np.random.default_rng(2), samples=20_000,
                              uniform_share=uniform)
    np.testing.assert_allclose(exact, empirical, atol=0.03)
    np.testing.assert_allclose(exact.sum(0), 1.0, atol=1e-9)  # every slot is filled by someone
    assert (exact >= uniform / x.shape[0] - 1e-12).all()


def test_the_weight_of_a_rarely_explored_offer_is_unbiased():
    """Off-policy evaluation weighs a served offer by 1 / its logged propensity, so that weight must
    be unbiased for an offer the posterior rarely ranks first (here in 0.15% of its draws), and the
    propensity must be what `choose` logs. 256 draws with the served one counted put the weight's
    mean at about a third of the truth: (1 - (1 - p)^257) / p."""
    _, post, x, value = _setup()
    value = value.copy()
    value[0] = 27.0
    exact = np.mean([slot_propensities(post, x, value, 1, 1.0, np.random.default_rng(s), samples=500_000)[0, 0]
                     for s in (3, 4)])
    assert 0.0008 < exact < 0.003  # rarer than one in 256 draws
    rng = np.random.default_rng(4)
    sampler = post.logit_sampler(x)
    weights = [1 / _thompson_hits(sampler, value, 1, np.array([0]), rng, 256, rare=np.array([True]))[0]
               for _ in range(200)]
    # Each weight is within about 25% of 1 / p (16 hits); the mean of 200 within about 2%, and the
    # exact figure within about 3%.
    np.testing.assert_allclose(np.mean(weights), 1 / exact, rtol=0.1)
    # The logged propensity of an explored offer is that estimate, times the exploring share.
    rng = np.random.default_rng(5)
    seen = [c for c in (choose(post, x, value, 1, 1.0, rng, samples=256) for _ in range(3000)) if c.order[0] == 0]
    assert seen and all(c.explored[0] and 0 < c.propensity[0] < 0.01 for c in seen)


def test_uniform_exploration_gives_every_offer_an_exact_floor():
    """An offer the posterior never ranks (worth almost nothing) is still served now and then, and
    then logged with exactly the uniform part's probability: no Monte-Carlo floor on its weight."""
    _, post, x, value = _setup()
    value = value.copy()
    value[0] = 1e-6
    rng = np.random.default_rng(5)
    seen = [c.propensity[0] for c in (choose(post, x, value, 1, 0.1, rng, samples=256, uniform_share=0.04)
                                      for _ in range(3000)) if c.order[0] == 0]
    assert 20 < len(seen) < 60  # 3000 x 0.04 / 4 = 30 expected
    np.testing.assert_allclose(seen, 0.04 / 4)
    without = [c.order[0] for c in (choose(post, x, value, 1, 0.1, rng, samples=256) for _ in range(3000))]
    assert 0 not in without


def test_uniform_share_is_part_of_the_exploration_share():
    from pydantic import ValidationError

    cfg = load_bandit()
    with pytest.raises(ValidationError, match="uniform_share"):
        type(cfg).model_validate({**cfg.model_dump(), "explore_share": 0.05, "uniform_share": 0.1})


def test_without_exploration_the_ranking_is_greedy_with_propensity_one():
    _, post, x, value = _setup()
    c = choose(post, x, value, 3, 0.0, np.random.default_rng(0), samples=64)
    assert c.propensity == [1.0, 1.0, 1.0] and not any(c.explored)
    assert list(c.order) == list(np.argsort(-c.expected_value)[:3])


def test_posterior_learns_from_rewards():
    f, post, _, _ = _setup()
    ctx = Context("email", 9, 1, 0.5)
    x_good = f.matrix(["term_deposit"], np.array([0.02]), np.zeros(1), ctx)[0]
    x_bad = f.matrix(["credit_card"], np.array([0.02]), np.zeros(1), ctx)[0]
    before = (float(x_good @ post.mean), float(x_bad @ post.mean))
    rng = np.random.default_rng(3)
    for _ in range(400):
        post.update(x_good, float(rng.random() < 0.4))
        post.update(x_bad, float(rng.random() < 0.02))
    p_good = 1 / (1 + np.exp(-(x_good @ post.mean)))
    p_bad = 1 / (1 + np.exp(-(x_bad @ post.mean)))
    assert p_good > p_bad
    assert abs(p_good - 0.4) < 0.1 and p_bad < 0.08
    assert x_good @ post.cov @ x_good < 0.5 * 0.5 * len(x_good)  # uncertainty shrank
    assert before[0] == before[1]  # equal before feedback: the difference was learnt


def test_state_survives_a_restart_exactly(tmp_path):
    cfg = load_bandit().model_copy(update={"snapshot_every": 7})
    events = EventLog(tmp_path / "events.db")
    cands = [Candidate("savings_account", "S", 0.02, 45.0), Candidate("mortgage", "M", 0.004, 1400.0)]
    ctx = Context("push", 18, 5, 2.0)
    policy = OnlinePolicy(Featuriser(ARMS, groups=GROUPS), cfg, events)
    for n in range(30):
        c = policy.choose(cands, ctx, 2)
        context = {"request": ctx.as_dict(), "candidates": [{"arm": x.arm, "base_prob": x.base_prob, "viewed": False}
                                                           for x in cands]}
        offers = [{"product_id": cands[i].arm} for i in c.order]
        events.log_decision(f"d{n}", "p", "push", 2, offers, {}, context)
        events.log_feedback(f"d{n}", cands[c.order[0]].arm, "accept" if n % 3 == 0 else "reject", None)
        policy.learn()
    assert policy.posterior.n_updates == 30
    # A new process: loads the snapshot taken at 28 updates, then replays the two after it.
    restarted = OnlinePolicy(Featuriser(ARMS, groups=GROUPS), cfg, EventLog(tmp_path / "events.db"))
    assert restarted.replayed == 2
    assert restarted.posterior.n_updates == 30
    np.testing.assert_allclose(restarted.posterior.mean, policy.posterior.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(restarted.posterior.cov, policy.posterior.cov, rtol=1e-10, atol=1e-12)


def test_duplicate_and_late_feedback_count_once(tmp_path):
    events = EventLog(tmp_path / "events.db")
    events.log_decision("d1", "p", "web", 1, [{"product_id": "mortgage"}], {}, {})
    assert events.log_feedback("d1", "mortgage", "click", None) == (True, None)
    assert events.log_feedback("d1", "mortgage", "accept", 1400.0) == (True, 1.0)
    assert events.log_feedback("d1", "mortgage", "accept", 1400.0) == (False, None)
    assert events.log_feedback("d1", "mortgage", "convert", 1400.0) == (True, None)  # the reward is already set
    assert events.counts()["rewards"] == 1


def test_featuriser_layout_is_fixed_by_its_signature():
    a, b = Featuriser(ARMS), Featuriser(ARMS[:-1])
    assert a.signature != b.signature and len(a.names) == a.dim
    x = a.matrix(["mortgage"], np.array([0.5]), np.ones(1), Context("branch", 12, 6, 1.0))[0]
    named = dict(zip(a.names, x))
    assert named["arm=mortgage"] == 1 and named["channel=branch"] == 1 and named["viewed"] == 1
    assert named["base_logit"] == pytest.approx(0.0) and named["weekend|staffed"] == 1
    assert named["engagement|other"] == 1 and named["engagement|digital"] == 0
    json.dumps(a.names)


def test_channel_fit_block_is_shared_by_a_category_and_absent_for_actions():
    f = Featuriser(ARMS, groups=GROUPS)
    assert f.dim == Featuriser(ARMS).dim + 3 * len(f.channels) and f.signature != Featuriser(ARMS).signature
    x = f.matrix(["savings_account", "term_deposit", "mortgage", "retention_call"], np.full(4, 0.01), np.zeros(4),
                 Context("branch", 11, 2, 1.0))
    named = [dict(zip(f.names, row)) for row in x]
    fit = [{k: v for k, v in row.items() if k.startswith("fit|") and v} for row in named]
    assert fit == [{"fit|deposit|branch": 1.0}, {"fit|deposit|branch": 1.0}, {"fit|loan|branch": 1.0}, {}]


def test_policy_learns_which_category_sells_in_which_channel():
    """Loans are taken in the branch, cards in the app; the model score says nothing of it. After
    feedback the posterior-mean ranking follows the channel, which a ranking by score cannot."""
    f = Featuriser(ARMS, groups=GROUPS)
    post = Posterior.prior(f, intercept=1.0, score_weight=1.0, variance=0.25)
    rng = np.random.default_rng(4)
    truth = {("mortgage", "branch"): 0.12, ("mortgage", "mobile_app"): 0.02,
             ("credit_card", "branch"): 0.02, ("credit_card", "mobile_app"): 0.12}
    rows = {(a, c): f.matrix([a], np.array([0.01]), np.zeros(1), Context(c, 12, 2, 1.0))[0] for a, c in truth}
    for _ in range(600):
        for key, p in truth.items():
            post.update(rows[key], float(rng.random() < p))
    value = np.array([1.0, 1.0])
    for channel, best in (("branch", "mortgage"), ("mobile_app", "credit_card")):
        x = f.matrix(["mortgage", "credit_card"], np.array([0.01, 0.01]), np.zeros(2), Context(channel, 12, 2, 1.0))
        c = choose(post, x, value, 1, 0.0, rng, samples=16)
        assert ["mortgage", "credit_card"][c.order[0]] == best
        assert c.probability.max() > 2 * c.probability.min()


def test_prior_variance_by_block_and_what_a_small_score_variance_buys():
    """`score_variance` and `fit_variance` set their blocks' prior variance; the rest keep `variance`.
    The score input is large (logit of a small probability), so with the common variance one early
    acceptance swings the odds of every offer; a small score variance keeps the champion's ranking."""
    from nextbest.config import BanditPrior

    f = Featuriser(ARMS, groups=GROUPS)
    post = Posterior.from_config(f, BanditPrior(intercept=1.0, score_weight=1.0, variance=0.25, score_variance=0.01,
                                                fit_variance=0.5), viewed_weight=0.7)
    var = np.diag(post.cov)
    assert var[1] == 0.01 and np.all(var[f.offsets["fit"]:] == 0.5) and f.dim > f.offsets["fit"]
    assert np.all(np.delete(var[:f.offsets["fit"]], 1) == 0.25)
    assert post.mean[:3].tolist() == [1.0, 1.0, 0.7]
    assert np.array_equal(Posterior.from_config(f, BanditPrior(variance=0.25)).cov, np.eye(f.dim) * 0.25)

    ctx = Context("web", 20, 2, 1.5)
    x = f.matrix(ARMS[:4], np.array([0.02, 0.03, 0.01, 0.005]), np.zeros(4), ctx)
    moved = {}
    for score_variance in (None, 0.01):
        p = Posterior.from_config(f, BanditPrior(intercept=1.0, variance=0.25, score_variance=score_variance))
        before = sigmoid(x @ p.mean)
        p.update(x[0], 1.0)  # one acceptance of the savings account
        after = sigmoid(x @ p.mean)
        moved[score_variance] = np.abs(np.log(after[1:] / before[1:])).max()  # the other offers' odds
    assert moved[0.01] < 0.5 * moved[None]


def test_uplift_arbitration_ranks_by_what_an_offer_adds():
    from types import SimpleNamespace

    from nextbest.serving.bandit import unprompted, utility

    prob, value = np.array([0.30, 0.12, 0.05]), np.array([100.0, 100.0, 100.0])
    base = np.array([0.28, 0.02, 0.06])  # the first would mostly buy anyway; the third adds nothing
    assert list(np.argsort(-utility(prob, value))) == [0, 1, 2]
    assert list(np.argsort(-utility(prob, value, base))) == [1, 0, 2]
    np.testing.assert_allclose(utility(prob, value, base), [2.0, 10.0, 0.0], atol=1e-6)
    # the propensities stay those of the policy that ranks by it
    _, post, x, v = _setup()
    b = np.array([0.02, 0.9, 0.0, 0.0])  # term_deposit would be bought anyway
    greedy = choose(post, x, v, 1, 0.0, np.random.default_rng(0), 64, base=b)
    assert greedy.order[0] != 1 and greedy.propensity == [1.0]
    probs = slot_propensities(post, x, v, 2, 0.3, np.random.default_rng(1), 4000, base=b)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-9)
    # a product's unprompted probability is the model's score; an action's is 0; propensity: none
    cands = [Candidate("savings_account", "S", 0.04, 45.0), Candidate("retention_call", "R", 0.3, 80.0)]
    cfg = SimpleNamespace(arbitration="uplift", actions={"retention_call": None})
    np.testing.assert_allclose(unprompted(cfg, cands), [0.04, 0.0])
    assert unprompted(SimpleNamespace(arbitration="propensity", actions={}), cands) is None


def test_an_unknown_arbitration_is_refused(tmp_path):
    from nextbest.config import ConfigError
    from nextbest.settings import default_config_dir

    text = (default_config_dir() / "bandit.yaml").read_text().replace("arbitration: propensity",
                                                                       "arbitration: incremental")
    (tmp_path / "bandit.yaml").write_text(text)
    with pytest.raises(ConfigError, match="arbitration"):
        load_bandit(tmp_path / "bandit.yaml")
