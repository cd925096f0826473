"""The contact assignment: never over a limit, never above its bound, and as good as the full LP."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from scipy.sparse import csr_matrix, vstack

from nextbest.serving.outbound import assign


def random_problem(seed: int, n: int, channels: int = 3, quotas: int = 2, budget: bool = True,
                   tight: float = 0.05) -> assign.Problem:
    rng = np.random.default_rng(seed)
    k_per = 1 + quotas
    value = rng.gamma(1.0, 1.0, (n, channels, k_per)) * rng.random((n, 1, 1)) * 10
    cost = rng.uniform(0.01, 2.0, channels)
    value = (value - cost[:, None]).reshape(n, channels * k_per)
    value[rng.random(value.shape) < 0.3] = -np.inf
    channel = np.repeat(np.arange(channels), k_per)
    quota_of = np.tile(np.array([assign.NONE, *range(quotas)]), channels)
    capacity = np.floor(rng.uniform(0.2, 2.0, channels) * tight * n)
    quota = np.floor(rng.uniform(0.1, 1.0, quotas) * tight * n)
    return assign.Problem(value, channel, quota_of, capacity, cost, quota,
                          float(rng.uniform(0.1, 1.0) * tight * n) if budget else np.inf)


def full_lp(problem: assign.Problem) -> float:
    """The LP relaxation over every customer and option, solved by HiGHS directly."""
    n = len(problem.value)
    ok = np.isfinite(problem.value) & (problem.value > 0)
    ri, rk = np.nonzero(ok)
    one = csr_matrix((np.ones(len(ri)), (ri, np.arange(len(ri)))), shape=(n, len(ri)))
    finite = np.isfinite(problem.rhs)
    limits = csr_matrix(problem.usage[:, rk])[np.flatnonzero(finite)]
    res = linprog(-problem.value[ri, rk], A_ub=vstack([one, limits]), bounds=(0, 1), method="highs",
                  b_ub=np.concatenate([np.ones(n), problem.rhs[finite]]))
    assert res.status == 0
    return -res.fun


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), n=st.integers(0, 400), channels=st.integers(1, 4), quotas=st.integers(0, 3),
       budget=st.booleans(), tight=st.floats(0.0, 1.5))
def test_no_plan_exceeds_a_capacity_quota_or_budget_and_none_beats_its_bound(seed, n, channels, quotas, budget,
                                                                            tight):
    problem = random_problem(seed, n, channels, quotas, budget, tight)
    plan = assign.solve(problem)
    greedy = assign.greedy(problem)
    for choice in (plan.choice, greedy):
        assert assign.feasible(problem, choice)
        assert (np.bincount(np.flatnonzero(choice >= 0), minlength=n) <= 1).all()  # one contact per customer
    scale = max(1.0, abs(plan.bound))
    assert plan.value <= plan.bound + 1e-6 * scale
    assert assign.plan_value(problem, greedy) <= plan.bound + 1e-6 * scale


@pytest.mark.parametrize("seed", range(6))
def test_the_plan_reaches_the_full_lp_and_its_bound_is_the_lp_optimum(seed):
    problem = random_problem(seed, 3000, budget=seed % 2 == 0)
    plan = assign.solve(problem)
    lp = full_lp(problem)
    assert plan.bound >= lp - 1e-6 * lp  # a dual value bounds the LP from above
    assert plan.bound <= lp * (1 + 1e-4)  # and the prices found are (nearly) optimal
    # A vertex of the LP leaves at most one customer per limit fractional; dropping those costs at most
    # one contact's value each.
    assert plan.value >= lp - len(problem.rhs) * problem.value[np.isfinite(problem.value)].max()
    assert plan.value >= 0.99 * lp
    assert plan.value > assign.plan_value(problem, assign.greedy(problem))


def test_without_binding_limits_everyone_takes_their_best_option():
    problem = random_problem(1, 500, tight=100.0, budget=False)
    plan = assign.solve(problem)
    best = np.where(np.isfinite(problem.value), problem.value, -np.inf).max(1)
    assert plan.value == pytest.approx(best[best > 0].sum())


def test_a_negative_capacity_is_refused():
    with pytest.raises(ValueError, match="capacities"):
        assign.Problem(np.zeros((2, 1)), np.array([0]), np.array([assign.NONE]), np.array([-1.0]), np.array([0.0]),
                       np.zeros(0))


def reference_greedy(problem: assign.Problem) -> np.ndarray:
    """Greedy by score in its plainest form: every positive cell, best first, taken if it fits."""
    n, k = problem.value.shape
    choice = np.full(n, assign.NONE)
    room, a = problem.rhs.copy(), problem.usage
    flat = problem.value.ravel()
    cells = np.flatnonzero(np.isfinite(flat) & (flat > 0))
    for cell in cells[np.argsort(-flat[cells], kind="stable")]:
        i, col = divmod(int(cell), k)
        if choice[i] == assign.NONE and (room >= a[:, col] - 1e-9).all():
            room -= a[:, col]
            choice[i] = col
    return choice


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(0, 300), channels=st.integers(1, 4), quotas=st.integers(0, 2),
       budget=st.booleans(), tight=st.floats(0.0, 1.5))
def test_greedy_takes_the_cells_best_first_while_they_fit(seed, n, channels, quotas, budget, tight):
    problem = random_problem(seed, n, channels, quotas, budget, tight)
    assert np.array_equal(assign.greedy(problem), reference_greedy(problem))


def test_at_prices_gives_each_customer_their_best_option_net_of_its_price():
    problem = random_problem(3, 400)
    plan = assign.solve(problem)
    rows = np.arange(400)
    reduced = problem.value - (plan.prices @ problem.usage)[None, :]
    best = assign.at_prices(problem, plan.prices, rows)
    for i in rows:
        if best[i] == assign.NONE:
            assert not (reduced[i] > 0).any()
        else:
            assert reduced[i, best[i]] == reduced[i].max() > 0
    # a customer clear of the margin gets at the prices what the plan gave them
    assert (best == plan.choice).mean() > 0.9
