"""Valuing and choosing one day's outbound contacts (pure: arrays in, arrays out).

Each allowed (customer, offer, channel) is worth P(accept) x value - contact cost at the customer's
send hour on that channel (with `arbitration: uplift` in bandit.yaml, max(P(accept) - P(acquire
unprompted), 0) x value - contact cost, P(acquire unprompted) being the next-best-product model's),
where P(accept) is the served policy's posterior mean (the featuriser of `nextbest.serving.bandit`,
the same numbers `/recommend` ranks by) and value is the product's margin times its business levers
(`nextbest.serving.decide.candidates`). Only the best product per channel can be chosen unless a
product has a quota, so the assignment sees, per channel, that product and each quota'd one
(`options`): the plan is the same as over every product, in far fewer columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nextbest.serving.bandit import sigmoid
from nextbest.serving.decide import holdout_unit
from nextbest.serving.outbound.assign import NONE, Problem


@dataclass(frozen=True)
class Valued:
    """Expected value of every (customer, product, channel): (n, P, C); -inf where not allowed.

    Attributes:
        probability: P(accept), (n, P, C).
        value: net expected value, (n, P, C).
    """

    probability: np.ndarray
    value: np.ndarray


def value_offers(featuriser, weights: np.ndarray, products: list[str], margins: np.ndarray, base_prob: np.ndarray,
                 viewed: np.ndarray, engagement: np.ndarray, channels: list[str], costs: np.ndarray,
                 hours: np.ndarray, weekday: int, allowed: np.ndarray, uplift: bool = False) -> Valued:
    """P(accept) x value - cost per customer, product and channel; with `uplift` (bandit.yaml's
    `arbitration: uplift`), the incremental value max(P(accept) - base_prob, 0) x value - cost.

    Args:
        margins: (P,) value if accepted, levers applied.
        base_prob, viewed: (n, P) the model's P(acquire) and recent page views.
        engagement: (n,) log1p(logins in 30 days).
        costs: (C,) per contact.
        hours: (n, C) the send hour of each customer on each channel.
        allowed: (n, P, C) what the rules allow.
    """
    n, p, c = allowed.shape
    prob = np.zeros((n, p, c), dtype=np.float32)
    value = np.full((n, p, c), -np.inf, dtype=np.float64)
    for j, channel in enumerate(channels):
        z = featuriser.logits(weights, products, base_prob, viewed, channel, hours[:, j], weekday, engagement)
        pj = sigmoid(z)
        prob[:, :, j] = pj
        gain = np.maximum(pj - base_prob, 0.0) if uplift else pj
        value[:, :, j] = np.where(allowed[:, :, j] & (margins[None, :] > 0), gain * margins[None, :] - costs[j],
                                  -np.inf)
    return Valued(prob, value)


@dataclass(frozen=True)
class Options:
    """The assignment's columns: per channel, the best product without a quota, then each quota'd product.

    Attributes:
        problem: the assignment over these columns.
        product: (n, K) the product index each column stands for, per customer (NONE: none allowed).
    """

    problem: Problem
    product: np.ndarray


def options(valued: Valued, capacity: np.ndarray, costs: np.ndarray, quota_products: list[int], quotas: np.ndarray,
            budget: float) -> Options:
    """Columns for the assignment (see the module docstring for why they lose nothing)."""
    n, p, c = valued.value.shape
    free = np.setdiff1d(np.arange(p), quota_products)
    cols, channel, quota_of, product = [], [], [], []
    for j in range(c):
        if len(free):
            best = free[valued.value[:, free, j].argmax(1)]
            cols.append(valued.value[np.arange(n), best, j])
            product.append(np.where(np.isfinite(cols[-1]), best, NONE))
            channel.append(j)
            quota_of.append(NONE)
        for q, pi in enumerate(quota_products):
            cols.append(valued.value[:, pi, j])
            product.append(np.where(np.isfinite(cols[-1]), pi, NONE))
            channel.append(j)
            quota_of.append(q)
    value = np.column_stack(cols) if cols else np.zeros((n, 0))
    prod = np.column_stack(product) if product else np.zeros((n, 0), dtype=int)
    return Options(Problem(value, np.array(channel, dtype=int), np.array(quota_of, dtype=int), capacity, costs,
                           quotas, budget), prod)


@dataclass(frozen=True)
class Served:
    """What each planned contact gets after exploration: product, exploration flag, exact propensity."""

    product: np.ndarray
    explored: np.ndarray
    propensity: np.ndarray


def explore(salt: str, key: str, customer_ids: list[str], planned: np.ndarray, channel: np.ndarray,
            valued: Valued, share: float, quota_products: list[int]) -> Served:
    """Exploration with exact propensities: with probability `share` (a stable draw per customer and
    plan), a contact's offer is drawn uniformly among the customer's allowed products on its channel
    (products with a quota only as the planned one, so a quota never overflows).

    The logged propensity of the served offer is then exactly (1 - share) [served = planned] + share / m,
    m the number of products the draw was among.

    Args:
        planned: (n,) planned product per customer (NONE: no contact).
        channel: (n,) the contact's channel index.
    """
    n = len(planned)
    product, explored = planned.copy(), np.zeros(n, dtype=bool)
    propensity = np.where(planned >= 0, 1.0, 0.0)
    if share <= 0:
        return Served(product, explored, propensity)
    quota = np.zeros(valued.value.shape[1], dtype=bool)
    quota[quota_products] = True
    for i in np.flatnonzero(planned >= 0):
        cid = customer_ids[i]
        pool = np.flatnonzero(np.isfinite(valued.value[i, :, channel[i]]) & (~quota | (np.arange(len(quota))
                                                                                      == planned[i])))
        m = len(pool)
        drawn = pool[min(int(holdout_unit(salt, f"{key}:pick", cid) * m), m - 1)]
        if holdout_unit(salt, f"{key}:explore", cid) < share:
            product[i], explored[i] = drawn, True
        propensity[i] = (1 - share) * float(product[i] == planned[i]) + share / m
    return Served(product, explored, propensity)
