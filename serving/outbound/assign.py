"""Sharing scarce contacts: at most one contact per customer, within every channel's capacity,
every product's quota and the campaign's budget, for the most expected value.

The problem is an assignment with a handful of coupling constraints (one per channel, quota and
budget) over millions of customers. Its linear relaxation has at most as many fractional
customers as coupling constraints, so it is solved through its Lagrangian dual, whose few
variables are the constraints' prices:

    D(y) = sum_i max(0, max_k (v_ik - a_k . y)) + b . y,   y >= 0

where option k of customer i is worth v_ik (expected margin minus contact cost) and uses a_k of
the constraints' right-hand sides b. Every D(y) is an upper bound on the relaxation, and so on
any plan. The prices come from exact coordinate steps (a capacity's price is the value at which
exactly its capacity of customers still prefer that channel) polished by a trust-region cutting
plane method whose master problems HiGHS solves. The customers whose best option the final prices
leave in doubt (within a small margin of another option or of no contact) are then assigned by
HiGHS as a linear program over their residual capacities; everyone else takes the option the
prices make best. A full LP over all customers would be exact too, but HiGHS needs about 80 s for
100,000 customers x 4 options on two cores, and the campaign sizes are millions.

Options come as columns: column k belongs to one channel and, optionally, one product quota; its
value per customer is a matrix column (-inf where the option is not allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NONE = -1  # no option chosen / no quota
_EPS = 1e-9
_GREEDY_BLOCK = 65_536  # cells screened at once against the columns that still fit


@dataclass(frozen=True)
class Problem:
    """One day's assignment.

    Attributes:
        value: (n, K) expected value of each option, net of contact cost; -inf where not allowed.
        channel: (K,) channel index of each column (into `capacity` and `cost`).
        quota_of: (K,) quota index of each column (into `quota`), NONE for none.
        capacity: (C,) contacts per channel (inf: unlimited).
        cost: (C,) cost per contact.
        quota: (Q,) contacts allowed per quota'd product.
        budget: total contact cost allowed (inf: none).
    """

    value: np.ndarray
    channel: np.ndarray
    quota_of: np.ndarray
    capacity: np.ndarray
    cost: np.ndarray
    quota: np.ndarray
    budget: float = np.inf

    def __post_init__(self) -> None:
        n, k = self.value.shape
        if self.channel.shape != (k,) or self.quota_of.shape != (k,):
            raise ValueError(f"channel and quota_of must have one entry per column ({k})")
        if (self.capacity < 0).any() or (self.quota < 0).any() or self.budget < 0:
            raise ValueError("capacities, quotas and the budget must be >= 0")

    @property
    def usage(self) -> np.ndarray:
        """(m, K): what one contact of each column uses of each constraint (channels, quotas, budget)."""
        c, q, k = len(self.capacity), len(self.quota), self.value.shape[1]
        a = np.zeros((c + q + 1, k))
        a[self.channel, np.arange(k)] = 1.0
        has = self.quota_of >= 0
        a[c + self.quota_of[has], np.flatnonzero(has)] = 1.0
        a[-1] = self.cost[self.channel]
        return a

    @property
    def rhs(self) -> np.ndarray:
        return np.concatenate([self.capacity, self.quota, [self.budget]]).astype(float)


@dataclass(frozen=True)
class Solution:
    """A plan: the column chosen per customer (NONE: no contact), its value and the bounds beside it."""

    choice: np.ndarray
    value: float
    bound: float          # D(prices): an upper bound on any plan's value (the LP's)
    prices: np.ndarray    # (m,) dual prices of channels, quotas, budget
    marginal: int         # customers assigned by the final LP
    iterations: int


def plan_value(problem: Problem, choice: np.ndarray) -> float:
    rows = np.flatnonzero(choice >= 0)
    return float(problem.value[rows, choice[rows]].sum())


def used(problem: Problem, choice: np.ndarray) -> np.ndarray:
    """(m,) what a plan uses of each constraint."""
    counts = np.bincount(choice[choice >= 0], minlength=problem.value.shape[1]).astype(float)
    return problem.usage @ counts


def feasible(problem: Problem, choice: np.ndarray, tol: float = 1e-6) -> bool:
    """Every contact allowed, and no capacity, quota or budget exceeded."""
    rows = np.flatnonzero(choice >= 0)
    if not np.isfinite(problem.value[rows, choice[rows]]).all():
        return False
    return bool((used(problem, choice) <= problem.rhs + tol).all())


# -- the dual ---------------------------------------------------------------------------------------

def _active(problem: Problem) -> np.ndarray:
    """Constraints that can bind: finite right-hand side (an unlimited one keeps a zero price)."""
    return np.isfinite(problem.rhs)


def dual(problem: Problem, prices: np.ndarray) -> tuple[float, np.ndarray]:
    """D(prices) and a subgradient (b - usage of each customer's best option at these prices)."""
    a, b = problem.usage, problem.rhs
    reduced = problem.value - (prices @ a)[None, :]
    best = reduced.argmax(1)
    top = reduced[np.arange(len(best)), best]
    take = top > 0
    counts = np.bincount(best[take], minlength=a.shape[1]).astype(float)
    finite = np.where(np.isfinite(b), b, 0.0)
    return float(top[take].sum() + finite @ prices), np.where(np.isfinite(b), b - a @ counts, 0.0)


def _coordinate_step(problem: Problem, prices: np.ndarray, j: int) -> float:
    """The price of constraint j that minimises D with the other prices fixed."""
    a, b = problem.usage, problem.rhs
    cols = np.flatnonzero(a[j] > 0)
    if len(cols) == 0:
        return 0.0
    reduced = problem.value - (prices @ a)[None, :] + prices[j] * a[j][None, :]
    if j < len(a) - 1:  # a capacity or a quota: every column of it uses one unit
        other = np.delete(np.arange(a.shape[1]), cols)
        rest = np.maximum(reduced[:, other].max(1), 0.0) if len(other) else np.zeros(len(reduced))
        adv = reduced[:, cols].max(1) - rest
        keep = int(b[j])
        positive = adv[adv > 0]
        if len(positive) <= keep:
            return 0.0
        return float(np.partition(positive, len(positive) - keep - 1)[len(positive) - keep - 1])
    # The budget: bisection on the sign of the subgradient (usage falls as the price rises).
    lo, hi = 0.0, float(np.nanmax(np.where(np.isfinite(problem.value), problem.value, np.nan), initial=1.0))
    hi = max(hi, 1.0) / max(float(problem.cost.min(initial=1.0)), 1e-6)
    trial = prices.copy()
    for _ in range(30):
        trial[j] = (lo + hi) / 2
        if dual(problem, trial)[1][j] < 0:
            lo = trial[j]
        else:
            hi = trial[j]
    trial[j] = hi
    return hi if dual(problem, trial)[1][j] >= 0 else 0.0


def solve_dual(problem: Problem, rounds: int = 8, cuts: int = 40, tol: float = 1e-5) -> tuple[np.ndarray, float, int]:
    """Prices that (nearly) minimise D: coordinate steps, then a trust-region cutting-plane polish.

    Returns:
        (prices, D(prices), iterations).
    """
    from scipy.optimize import linprog

    m = len(problem.rhs)
    active = np.flatnonzero(_active(problem))
    prices = np.zeros(m)
    if len(active) == 0 or problem.value.shape[0] == 0:
        return prices, dual(problem, prices)[0], 0
    it = 0
    best_d = dual(problem, prices)[0]
    for _ in range(rounds):
        before = best_d
        for j in active:
            prices[j] = _coordinate_step(problem, prices, j)
            it += 1
        best_d = dual(problem, prices)[0]
        if before - best_d <= tol * max(abs(best_d), 1.0):
            break
    # Cutting planes: D(y) >= D(y_t) + g_t . (y - y_t) for every trial y_t; minimise that model within a box
    # around the best point so far, grow the box after a gain and shrink it after a miss.
    finite = problem.value[np.isfinite(problem.value)]
    top = float(finite.max()) if finite.size else 1.0
    upper = np.full(m, max(top, 1e-6))
    upper[m - 1] = upper[m - 1] / max(float(problem.cost.min(initial=1.0)), 1e-6)
    centre, (d_centre, g_centre) = prices.copy(), dual(problem, prices)
    points, values, grads = [centre.copy()], [d_centre], [g_centre]
    radius = np.maximum(np.abs(centre) * 0.5, upper * 1e-3)
    for _ in range(cuts):
        # variables: prices of the active constraints, then t
        nv = len(active) + 1
        c = np.zeros(nv)
        c[-1] = 1.0
        a_ub = np.array([[*g[active], -1.0] for g in grads])
        b_ub = np.array([g[active] @ p[active] - d for p, d, g in zip(points, values, grads)])
        lo = np.maximum(centre[active] - radius[active], 0.0)
        hi = np.minimum(centre[active] + radius[active], upper[active])
        res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=[*zip(lo, hi), (None, None)], method="highs")
        it += 1
        if res.status != 0:
            break
        model_min = res.x[-1]
        trial = centre.copy()
        trial[active] = res.x[:-1]
        d, g = dual(problem, trial)
        points.append(trial)
        values.append(d)
        grads.append(g)
        predicted = d_centre - model_min
        if predicted <= tol * max(abs(d_centre), 1.0):
            break
        if d < d_centre - 0.1 * predicted:  # a real gain: move there and widen
            centre, d_centre = trial, d
            radius = radius * 2
        else:
            radius = radius / 2
    return centre, d_centre, it


# -- the plan ---------------------------------------------------------------------------------------

def greedy(problem: Problem) -> np.ndarray:
    """Greedy by score: options by value, best first; each taken if its customer is free and every
    constraint it uses has room. The baseline a plan is compared with."""
    n, k = problem.value.shape
    choice = np.full(n, NONE)
    a, room = problem.usage, problem.rhs.copy()
    need = [np.flatnonzero(a[:, col] > 0) for col in range(k)]
    amount = [a[need[col], col] for col in range(k)]
    # A column that does not fit once never fits again (room only shrinks): it is dropped for good.
    alive = np.array([bool((room[need[col]] >= amount[col] - _EPS).all()) for col in range(k)], dtype=bool)
    if not alive.any():
        return choice
    flat = problem.value.ravel()
    order = np.flatnonzero(np.isfinite(flat) & (flat > 0) & np.tile(alive, n))
    order = order[np.argsort(-flat[order], kind="stable")]
    for start in range(0, len(order), _GREEDY_BLOCK):
        if not alive.any():
            break
        rows, cols = np.divmod(order[start:start + _GREEDY_BLOCK], k)
        keep = alive[cols] & (choice[rows] == NONE)
        for i, col in zip(rows[keep].tolist(), cols[keep].tolist()):
            if choice[i] != NONE or not alive[col]:
                continue
            need_rows = need[col]
            if (room[need_rows] >= amount[col] - _EPS).all():
                room[need_rows] -= amount[col]
                choice[i] = col
            else:
                alive[col] = False
    return choice


def _fill(problem: Problem, choice: np.ndarray, rows: np.ndarray) -> None:
    """Greedy completion of `rows` (free customers) within what the plan leaves (in place)."""
    room = problem.rhs - used(problem, choice)
    cap, quota = room[:len(problem.capacity)], room[len(problem.capacity):-1]
    if not (cap >= 1 - _EPS).any():  # every channel full: nothing to complete (skips copying the rows)
        return
    sub = Problem(problem.value[rows], problem.channel, problem.quota_of, np.maximum(cap, 0), problem.cost,
                  np.maximum(quota, 0), max(float(room[-1]), 0.0))
    extra = greedy(sub)
    choice[rows] = np.where(choice[rows] == NONE, extra, choice[rows])


def solve(problem: Problem, max_marginal: int = 4_000) -> Solution:
    """The plan: dual prices, each clear customer's best option at those prices, HiGHS for the rest."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix

    n, k = problem.value.shape
    prices, bound, iterations = solve_dual(problem)
    a, b = problem.usage, problem.rhs
    # Not allowed (-inf) becomes a finite floor, so that gaps between options stay numbers.
    reduced = np.maximum(problem.value - (prices @ a)[None, :], -1e300)
    order = np.argsort(-reduced, axis=1)[:, :2] if k > 1 else np.zeros((n, 1), dtype=int)
    first = reduced[np.arange(n), order[:, 0]]
    second = reduced[np.arange(n), order[:, 1]] if k > 1 else np.full(n, -1e300)
    scale = max(float(np.abs(problem.value[np.isfinite(problem.value)]).max(initial=1.0)), 1e-9)

    # How far each customer is from changing their mind at these prices: the gap between their best
    # and second option, or between their best option and no contact.
    gap = np.minimum(first - second, np.abs(first))
    possible = first > -1e299

    def split(eps: float) -> tuple[np.ndarray, np.ndarray, bool]:
        take = possible & (first > eps) & (gap > eps)
        chosen = np.where(take, order[:, 0], NONE)
        return chosen, possible & ~take & (first > -eps), bool((used(problem, chosen) <= b + 1e-6).all())

    # The customers nearest to a switch (as many as the final LP takes) are left to HiGHS; the rest take
    # their best option at the prices. Wider, when those alone would not fit within the limits.
    if possible.sum() <= max_marginal:
        eps = np.inf
    else:
        eps = float(np.partition(gap[possible], max_marginal - 1)[max_marginal - 1])
    choice, doubt, fits = split(eps)
    while not fits and np.isfinite(eps):
        eps = eps * 2 if eps > 0 else 1e-9 * scale
        if eps > 4 * scale:
            eps = np.inf
        choice, doubt, fits = split(eps)
    marginal = np.flatnonzero(doubt)
    if len(marginal):
        room = np.maximum(b - used(problem, choice), 0.0)
        val = problem.value[marginal]
        ok = np.isfinite(val) & (val > 0)
        ri, rk = np.nonzero(ok)
        nv = len(ri)
        if nv:
            one = csr_matrix((np.ones(nv), (ri, np.arange(nv))), shape=(len(marginal), nv))
            cons = csr_matrix(a[:, rk])
            finite = np.isfinite(room)
            a_ub = csr_matrix(np.zeros((0, nv))) if not finite.any() else cons[np.flatnonzero(finite)]
            from scipy.sparse import vstack

            res = linprog(-val[ri, rk], A_ub=vstack([one, a_ub]).tocsr(),
                          b_ub=np.concatenate([np.ones(len(marginal)), room[finite]]), bounds=(0, 1),
                          method="highs")
            if res.status == 0:
                whole = res.x > 1 - 1e-6
                choice[marginal[ri[whole]]] = rk[whole]
    if not feasible(problem, choice):  # never hand out a plan over a limit: trim the lowest values
        choice = _trim(problem, choice)
    _fill(problem, choice, np.flatnonzero(choice == NONE))
    return Solution(choice, plan_value(problem, choice), bound, prices, int(len(marginal)), iterations)


def at_prices(problem: Problem, prices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each of `rows`' best option at `prices` (NONE where none is worth its price): what the plan
    would give a customer left out of it, such as one of a control group."""
    reduced = problem.value[rows] - (prices @ problem.usage)[None, :]
    if reduced.shape[1] == 0:
        return np.full(len(rows), NONE)
    best = reduced.argmax(1)
    return np.where(reduced[np.arange(len(rows)), best] > 0, best, NONE)


def _trim(problem: Problem, choice: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(choice >= 0)
    vals = problem.value[rows, choice[rows]]
    keep = np.full(len(problem.value), NONE)
    sub = Problem(np.full((len(rows), problem.value.shape[1]), -np.inf), problem.channel, problem.quota_of,
                  problem.capacity, problem.cost, problem.quota, problem.budget)
    sub.value[np.arange(len(rows)), choice[rows]] = vals
    keep[rows] = greedy(sub)
    return keep
