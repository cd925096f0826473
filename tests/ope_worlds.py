"""Small synthetic worlds for off-policy evaluation: a true acceptance model, a logging policy (the
prior) and a better candidate, with request contexts drawn at random (shared by the OPE tests)."""

from __future__ import annotations

import numpy as np

from nextbest.serving.bandit import Context, Featuriser, Posterior

ARMS = ["savings_account", "term_deposit", "credit_card", "mortgage", "investment_funds"]
VALUE = np.array([45.0, 120.0, 140.0, 1400.0, 520.0])
CHANNELS = ["mobile_app", "email", "push", "branch"]


def world(seed: int):
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


def draw_context(rng) -> tuple[Context, np.ndarray]:
    ctx = Context(CHANNELS[rng.integers(len(CHANNELS))], int(rng.integers(24)), int(rng.integers(7)),
                  float(rng.uniform(0, 3)))
    return ctx, rng.uniform(0.002, 0.05, len(ARMS))


