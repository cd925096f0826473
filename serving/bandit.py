"""Constrained contextual bandit: Bayesian logistic Thompson sampling over offer x channel.

One featuriser turns (offer, model score, channel, request context) into the vector x used both to
score an offer and to learn from its feedback, so a logged decision can be replayed exactly. The
acceptance model is logistic, P(accept) = sigmoid(x . w), with a Gaussian posterior over w
(Laplace approximation, updated online one reward at a time). Its prior mean starts at the
champion model's probability (`score_weight` on logit P(acquire)) plus an offset, so the policy
is sensible before any feedback arrives.

A decision ranks the offers the rules allow by expected value sigmoid(x . w) * value (with
`arbitration: uplift` in bandit.yaml, by the offer's expected incremental value instead,
max(sigmoid(x . w) - P(acquire unprompted), 0) * value, P(acquire unprompted) being the
next-best-product model's probability of the product, 0 for an action): with
probability 1 - explore_share by the posterior mean (exploit), otherwise by one posterior sample
(explore), except that a `uniform_share` part of the exploration ranks uniformly at random. The
propensity of each served offer in its slot is the probability of that slot under this mixture:
exact for the greedy and uniform parts, estimated by Monte Carlo over posterior samples for the
Thompson part, on draws independent of the served one; for an explored offer, by drawing until it
has come up a fixed number of times, so that its inverse, the weight off-policy evaluation gives
it, is unbiased however rarely the offer is drawn. The uniform part gives every allowed offer an
exact propensity of at least uniform_share / n, which bounds the weights of a candidate far from
the logging policy.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from nextbest.constants import CHANNELS, DIGITAL_CHANNELS

# Channels where a weekend behaves differently (staffed by people) from the digital ones.
_STAFFED = ("branch", "call_center")
_P_CLIP = 1e-4
LOGIT_MAX = math.log((1 - _P_CLIP) / _P_CLIP)  # |logit(base probability)| after clipping
# A rarely explored offer's Thompson propensity: draws until it lands in its slot this many times,
# at most this many draws (`_thompson_hits`).
RARE_HITS = 16
RARE_MAX_DRAWS = 65_536
ENGAGEMENT_MAX = math.log1p(1000.0)  # engagement (log1p of logins in 30 days) is clipped here


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), _P_CLIP, 1 - _P_CLIP)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


@dataclass(frozen=True)
class Context:
    """What the policy knows about the request besides the offer: channel and time, engagement."""

    channel: str
    hour: int
    weekday: int
    engagement: float = 0.0  # log1p(app + web logins in 30 days); 0 for a prospect

    def as_dict(self) -> dict:
        return {"channel": self.channel, "hour": self.hour, "weekday": self.weekday,
                "engagement": round(float(self.engagement), 6)}


class Featuriser:
    """x(offer, base score, recent page view, context), the same for scoring and learning.

    Layout: [intercept, logit(base probability), viewed page, one-hot offer, one-hot channel,
    channel x sin(hour), channel x cos(hour), weekend on staffed / other channels,
    engagement on digital / other channels, offer group x channel].

    The last block is the channel fit: one weight per (group, channel), a group being a product
    category (an offer with no group has none), so the policy learns that, say, loans sell better
    in the branch and cards in the app, with a handful of weights shared by the group's offers.
    """

    def __init__(self, arms: list[str], channels: tuple[str, ...] = CHANNELS, groups: dict[str, str] | None = None):
        self.arms = list(arms)
        self.channels = list(channels)
        self._arm = {a: i for i, a in enumerate(self.arms)}
        self._channel = {c: i for i, c in enumerate(self.channels)}
        groups = {a: g for a, g in (groups or {}).items() if a in self._arm}
        self.groups = sorted(set(groups.values()))
        self._group = {a: self.groups.index(g) for a, g in groups.items()}
        n_a, n_c = len(self.arms), len(self.channels)
        self.offsets = {"arm": 3, "channel": 3 + n_a, "sin": 3 + n_a + n_c, "cos": 3 + n_a + 2 * n_c,
                        "tail": 3 + n_a + 3 * n_c, "fit": 3 + n_a + 3 * n_c + 4}
        self.dim = self.offsets["fit"] + len(self.groups) * n_c

    @classmethod
    def for_catalogue(cls, catalogue, actions) -> "Featuriser":
        """The served policy's featuriser: catalogue products, then the configured actions; products
        grouped by category."""
        return cls(catalogue.ids + list(actions), groups=catalogue.categories())

    @property
    def names(self) -> list[str]:
        return (["intercept", "base_logit", "viewed"] + [f"arm={a}" for a in self.arms]
                + [f"channel={c}" for c in self.channels] + [f"sin_hour|{c}" for c in self.channels]
                + [f"cos_hour|{c}" for c in self.channels]
                + ["weekend|staffed", "weekend|other", "engagement|digital", "engagement|other"]
                + [f"fit|{g}|{c}" for g in self.groups for c in self.channels])

    @property
    def signature(self) -> str:
        """Changes whenever the layout does, so a saved posterior is never read with another layout."""
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()[:16]

    def logged(self, context: dict) -> tuple[list[str], np.ndarray] | None:
        """The rows a logged decision scored its candidates with, rebuilt from its logged context.

        Returns:
            (candidate ids, rows (n, dim)), or None if the decision logged no candidates or one
            this featuriser does not know (another catalogue or layout).
        """
        cands, request = context.get("candidates") or [], context.get("request")
        arms = [c["arm"] for c in cands]
        if not cands or request is None or any(a not in self._arm for a in arms):
            return None
        ctx = Context(request["channel"], request["hour"], request["weekday"], request["engagement"])
        return arms, self.matrix(arms, np.array([c["base_prob"] for c in cands]),
                                 np.array([c["viewed"] for c in cands]), ctx)

    def matrix(self, arms: list[str], base_prob: np.ndarray, viewed: np.ndarray, ctx: Context) -> np.ndarray:
        """Feature rows for several offers in one context.

        Args:
            arms: offer ids, n of them (products or actions), each known to the featuriser.
            base_prob: model probability per offer, shape (n,).
            viewed: 1 where the customer viewed this offer's page recently, shape (n,).
            ctx: channel, hour, weekday, engagement of the request.

        Returns:
            float64 array of shape (n, dim).
        """
        n = len(arms)
        x = np.zeros((n, self.dim))
        x[:, 0] = 1.0
        x[:, 1] = logit(base_prob)
        x[:, 2] = np.asarray(viewed, dtype=float)
        x[np.arange(n), [self.offsets["arm"] + self._arm[a] for a in arms]] = 1.0
        c = self._channel[ctx.channel]
        angle = 2 * math.pi * (ctx.hour % 24) / 24
        x[:, self.offsets["channel"] + c] = 1.0
        x[:, self.offsets["sin"] + c] = math.sin(angle)
        x[:, self.offsets["cos"] + c] = math.cos(angle)
        tail = self.offsets["tail"]
        weekend = float(ctx.weekday >= 5)
        staffed = ctx.channel in _STAFFED
        x[:, tail + (0 if staffed else 1)] = weekend
        x[:, tail + (2 if ctx.channel in DIGITAL_CHANNELS else 3)] = min(max(ctx.engagement, 0.0), ENGAGEMENT_MAX)
        grouped = [(i, self._group[a]) for i, a in enumerate(arms) if a in self._group]
        if grouped:
            rows, g = np.array(grouped).T
            x[rows, self.offsets["fit"] + g * len(self.channels) + c] = 1.0
        return x

    def logits(self, w: np.ndarray, arms: list[str], base_prob: np.ndarray, viewed: np.ndarray, channel: str,
               hour: np.ndarray, weekday: int, engagement: np.ndarray) -> np.ndarray:
        """`matrix(...) @ w` for many customers at once on one channel and weekday, without the rows.

        Args:
            w: weights, (dim,).
            arms: offer ids, A of them.
            base_prob, viewed: per customer and offer, (n, A).
            hour, engagement: per customer, (n,).

        Returns:
            Logits, (n, A): the same numbers `matrix` rows give (a test keeps the two equal).
        """
        o, c = self.offsets, self._channel[channel]
        arm = np.array([w[o["arm"] + self._arm[a]] for a in arms])
        fit = np.array([w[o["fit"] + self._group[a] * len(self.channels) + c] if a in self._group else 0.0
                        for a in arms])
        angle = 2 * np.pi * (np.asarray(hour) % 24) / 24
        tail = o["tail"]
        per_customer = (w[o["channel"] + c] + w[o["sin"] + c] * np.sin(angle) + w[o["cos"] + c] * np.cos(angle)
                        + w[tail + (0 if channel in _STAFFED else 1)] * float(weekday >= 5)
                        + w[tail + (2 if channel in DIGITAL_CHANNELS else 3)]
                        * np.clip(np.asarray(engagement, dtype=float), 0.0, ENGAGEMENT_MAX))
        return (w[0] + w[1] * logit(base_prob) + w[2] * np.asarray(viewed, dtype=float) + (arm + fit)[None, :]
                + per_customer[:, None])

    def max_logit_change(self, delta: np.ndarray) -> float:
        """The most the logit of any row this featuriser can build (any offer, base probability,
        channel, hour, weekday and engagement) changes when the weights move by `delta`."""
        o, n_a, n_c = self.offsets, len(self.arms), len(self.channels)
        d = np.abs(delta)
        common = d[0] + LOGIT_MAX * d[1] + d[2] + (d[o["arm"]:o["arm"] + n_a].max() if n_a else 0.0)
        fit = d[o["fit"]:].reshape(len(self.groups), n_c).max(axis=0) if self.groups else np.zeros(n_c)
        tail = o["tail"]
        worst = 0.0
        for c, channel in enumerate(self.channels):
            hour = math.hypot(delta[o["sin"] + c], delta[o["cos"] + c])  # |a sin t + b cos t| <= hypot(a, b)
            weekend = d[tail + (0 if channel in _STAFFED else 1)]
            engagement = ENGAGEMENT_MAX * d[tail + (2 if channel in DIGITAL_CHANNELS else 3)]
            worst = max(worst, d[o["channel"] + c] + hour + weekend + engagement + fit[c])
        return float(common + worst)


@dataclass
class Posterior:
    """Gaussian posterior over the logistic weights: mean (d,) and covariance (d, d)."""

    mean: np.ndarray
    cov: np.ndarray
    n_updates: int = 0

    @classmethod
    def prior(cls, featuriser: Featuriser, intercept: float, score_weight: float, variance: float,
              viewed_weight: float = 0.0, score_variance: float | None = None,
              fit_variance: float | None = None) -> "Posterior":
        """Independent Gaussian prior: mean zero except intercept, score weight and viewed weight;
        variance `variance`, or `score_variance` / `fit_variance` for those blocks when given."""
        mean = np.zeros(featuriser.dim)
        mean[0], mean[1], mean[2] = intercept, score_weight, viewed_weight
        var = np.full(featuriser.dim, float(variance))
        if score_variance is not None:
            var[1] = score_variance
        if fit_variance is not None:
            var[featuriser.offsets["fit"]:] = fit_variance
        return cls(mean, np.diag(var))

    @classmethod
    def from_config(cls, featuriser: Featuriser, prior, viewed_weight: float = 0.0) -> "Posterior":
        """The prior configured under `prior:` in configs/bandit.yaml (a `BanditPrior`)."""
        return cls.prior(featuriser, prior.intercept, prior.score_weight, prior.variance, viewed_weight,
                         prior.score_variance, prior.fit_variance)

    def update(self, x: np.ndarray, reward: float, bound=None, max_logit_step: float | None = None) -> float:
        """One online Laplace step for one observation (x: (d,), reward 0 or 1); returns the share
        of the Newton step taken (1.0 unless bounded).

        The precision grows by p(1-p) x x^T (Sherman-Morrison on the covariance), then the mean
        moves one Newton step along the new covariance. With `bound` (weights change -> the most any
        row's logit changes, `Featuriser.max_logit_change`) and `max_logit_step`, the step is
        shortened so that no row's logit moves by more than `max_logit_step`: one reward cannot
        rewrite the whole policy (with a rare reward, a full step would move every offer's odds
        many-fold).
        """
        p = float(sigmoid(x @ self.mean))
        w = max(p * (1 - p), 1e-6)
        cx = self.cov @ x
        self.cov -= np.outer(cx, cx) * (w / (1.0 + w * float(x @ cx)))
        self.cov = (self.cov + self.cov.T) / 2
        step = self.cov @ x * (reward - p)
        share = 1.0
        if bound is not None and max_logit_step is not None:
            worst = bound(step)
            if worst > max_logit_step:
                share = max_logit_step / worst
                step = step * share
        self.mean = self.mean + step
        self.n_updates += 1
        return share

    def fit(self, x: np.ndarray, reward: np.ndarray, weight: np.ndarray | None = None,
            iters: int = 50) -> "Posterior":
        """The Laplace posterior after a batch of observations, this posterior being the prior.

        The mean is the MAP of the weighted logistic log-likelihood plus this Gaussian (Newton's
        method, step halved whenever the objective would not fall), the covariance the inverse
        Hessian there: what many online `update`s approximate, in one exact step, without their
        order mattering. Used to learn from history before the first decision.

        Args:
            x: feature rows, (n, d).
            reward: 0/1 per row, (n,).
            weight: how many observations each row counts as, (n,); default 1.

        Returns:
            A new Posterior; `n_updates` grows by n.
        """
        x = np.asarray(x, dtype=float)
        y = np.asarray(reward, dtype=float)
        wt = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=float)
        precision = np.linalg.inv(self.cov)
        precision = (precision + precision.T) / 2

        def objective(w: np.ndarray) -> float:
            z = x @ w
            return float(wt @ (np.logaddexp(0.0, z) - y * z) + 0.5 * (w - self.mean) @ precision @ (w - self.mean))

        w, current = self.mean.copy(), objective(self.mean)
        for _ in range(iters):
            p = sigmoid(x @ w)
            grad = x.T @ (wt * (p - y)) + precision @ (w - self.mean)
            hess = (x * (wt * p * (1 - p))[:, None]).T @ x + precision
            step = np.linalg.solve(hess, grad)
            size = 1.0
            while size > 1e-6 and objective(w - size * step) > current:
                size /= 2
            w = w - size * step
            previous, current = current, objective(w)
            if previous - current < 1e-10 * max(1.0, abs(current)):
                break
        p = sigmoid(x @ w)
        cov = np.linalg.inv((x * (wt * p * (1 - p))[:, None]).T @ x + precision)
        return Posterior(w, (cov + cov.T) / 2, self.n_updates + len(y))

    def logit_sampler(self, x: np.ndarray) -> "LogitSampler":
        """Draws of the logits x @ w of the rows of x under this posterior (see `LogitSampler`)."""
        return LogitSampler(self, x)


class LogitSampler:
    """Posterior draws of the logits of n candidate rows, drawn in their own n dimensions.

    x @ w is Gaussian with mean x @ mean and covariance x cov x^T, so ranking the candidates by a
    posterior sample needs n normal draws, not d weights: with n about 15 offers and d in the
    hundreds, a draw costs n^2 instead of d^2. The factor of the n x n covariance is computed once
    per decision (eigendecomposition: two offers with the same row make it singular).
    """

    def __init__(self, posterior: Posterior, x: np.ndarray):
        self.mean = x @ posterior.mean
        cov = x @ posterior.cov @ x.T
        values, vectors = np.linalg.eigh((cov + cov.T) / 2)
        self.factor = vectors * np.sqrt(np.clip(values, 0.0, None))

    def draw(self, rng: np.random.Generator, m: int) -> np.ndarray:
        """m draws of the logits, shape (n, m)."""
        return self.mean[:, None] + self.factor @ rng.standard_normal((len(self.mean), m))


@dataclass(frozen=True)
class Choice:
    """A served ranking: indices into the candidates, their propensities and exploration flags."""

    order: list[int]
    propensity: list[float]
    explored: list[bool]
    exploring: bool
    probability: np.ndarray  # posterior-mean P(accept) per candidate, shape (n,)
    expected_value: np.ndarray  # probability x value per candidate, shape (n,)


def utility(prob: np.ndarray, value: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """What a ranking maximises: P(accept) x value, or with `base` (P(acquire unprompted) per
    candidate) the incremental value max(P(accept) - base, 0) x value, ties among offers that add
    nothing broken by P(accept) x value. prob is (n,) or (n, draws); value and base are (n,)."""
    value = value if prob.ndim == 1 else value[:, None]
    if base is None:
        return prob * value
    base = base if prob.ndim == 1 else base[:, None]
    return np.maximum(prob - base, 0.0) * value + 1e-9 * prob * value


def choose(posterior: Posterior, x: np.ndarray, value: np.ndarray, k: int, explore_share: float,
           rng: np.random.Generator, samples: int, uniform_share: float = 0.0,
           base: np.ndarray | None = None) -> Choice:
    """Ranks candidates by expected value, exploring with a Thompson sample on a share of decisions.

    Args:
        posterior: current acceptance model.
        x: candidate feature rows, shape (n, d); only offers the rules allow.
        value: value of each candidate if accepted (margin x lever), shape (n,), all > 0.
        k: slots to fill (at most n are filled).
        explore_share: probability that this decision ranks by a posterior sample.
        rng: the policy's random generator.
        samples: Monte-Carlo draws for the propensities of the explore branch (more for a rare offer).
        uniform_share: the part of explore_share that ranks uniformly at random (at most explore_share).
        base: with uplift arbitration, each candidate's P(acquire unprompted) (`utility`).

    Returns:
        The choice, with the marginal probability of each served offer in its slot under the policy
        (for an explored offer, an estimate whose inverse, the off-policy weight, is unbiased).
    """
    n = x.shape[0]
    k = min(k, n)
    prob = sigmoid(x @ posterior.mean)
    ev = utility(prob, value, base)
    greedy = np.argsort(-ev, kind="stable")[:k]
    if k == 0:
        return Choice([], [], [], False, prob, ev)
    uniform_share = min(uniform_share, explore_share)
    thompson = explore_share - uniform_share
    u = rng.random() if explore_share > 0 else 1.0
    exploring, uniform = u < explore_share, u < uniform_share
    served, hits = greedy, np.zeros(k)
    if uniform:
        served = rng.permutation(n)[:k]
    if thompson > 0:
        drawn = exploring and not uniform
        sampler = posterior.logit_sampler(x)
        if drawn:
            served = _top(sampler.draw(rng, 1), value, k, base)[:, 0]
        # Only a drawn ranking needs its rare slots estimated closely: a uniform one has its exact floor.
        hits = _thompson_hits(sampler, value, k, served, rng, samples, rare=(served != greedy) & drawn, base=base)
    # A uniform ranking puts each candidate in each slot with probability 1/n.
    prop = (1 - explore_share) * (served == greedy) + thompson * hits + uniform_share / n
    return Choice(order=[int(i) for i in served], propensity=[float(p) for p in prop],
                  explored=[bool(s != g) for s, g in zip(served, greedy)], exploring=bool(exploring),
                  probability=prob, expected_value=ev)


def _top(logits: np.ndarray, value: np.ndarray, k: int, base: np.ndarray | None = None) -> np.ndarray:
    """The candidate in each of the k slots under each draw of the logits (n, m), shape (k, m)."""
    return np.argsort(-utility(sigmoid(logits), value, base), axis=0, kind="stable")[:k]


def _thompson_hits(sampler: LogitSampler, value: np.ndarray, k: int, served: np.ndarray,
                   rng: np.random.Generator, samples: int, rare: np.ndarray,
                   base: np.ndarray | None = None) -> np.ndarray:
    """P(served[j] in slot j | Thompson), estimated on draws independent of the served one.

    `samples` draws estimate every slot. A slot in `rare` (an offer the exploit ranking does not put
    there) is weighed by 1 / propensity in off-policy evaluation, so its estimate is made for that:
    draws continue until the offer has landed in the slot RARE_HITS times, and the estimate is
    RARE_HITS / (draws up to that one), whose inverse is unbiased for 1 / P (inverse binomial
    sampling). An estimate that includes the served draw, or stops after a fixed number of draws,
    overstates a rarely drawn offer's probability and so understates its weight. Its cost is
    bounded on average (RARE_HITS / P draws for an offer served with probability P, at most
    RARE_HITS x n per slot in expectation) and in the worst case by RARE_MAX_DRAWS.
    """
    ranks = _top(sampler.draw(rng, samples), value, k, base)
    hits = (ranks == served[:, None]).mean(axis=1)
    todo = np.flatnonzero(rare)
    if not len(todo):
        return hits
    seen = np.zeros(len(todo), dtype=int)    # hits so far
    first = np.zeros(len(todo), dtype=int)   # draws up to and including the RARE_HITS-th hit (0: not yet)
    drawn = 0
    batch = max(samples, 1024)
    while (first == 0).any() and drawn < RARE_MAX_DRAWS:
        hit = _top(sampler.draw(rng, batch), value, k, base)[todo] == served[todo][:, None]  # (t, batch)
        cum = seen[:, None] + np.cumsum(hit, axis=1)
        for row in np.flatnonzero(first == 0):
            at = np.searchsorted(cum[row], RARE_HITS)  # first index where the count reaches RARE_HITS
            if at < batch:
                first[row] = drawn + at + 1
        seen = cum[:, -1]
        drawn += batch
    # At the cap (an offer drawn less than RARE_HITS times in RARE_MAX_DRAWS), the plain share, floored.
    capped = np.maximum(seen, 1) / drawn
    hits[todo] = np.where(first > 0, RARE_HITS / np.maximum(first, 1), capped)
    return hits


def slot_propensities(posterior: Posterior, x: np.ndarray, value: np.ndarray, k: int, explore_share: float,
                      rng: np.random.Generator, samples: int, uniform_share: float = 0.0,
                      base: np.ndarray | None = None) -> np.ndarray:
    """P(candidate i in slot j) under the policy for every candidate and slot, shape (n, k).

    For off-policy evaluation of this policy on logged contexts (it is what `choose` samples from).
    """
    n = x.shape[0]
    k = min(k, n)
    ev = utility(sigmoid(x @ posterior.mean), value, base)
    out = np.zeros((n, k))
    out[np.argsort(-ev, kind="stable")[:k], np.arange(k)] = 1 - explore_share
    uniform_share = min(uniform_share, explore_share)
    thompson = explore_share - uniform_share
    if thompson > 0 and k:
        ranks = _top(posterior.logit_sampler(x).draw(rng, samples), value, k, base)
        for j in range(k):
            out[:, j] += thompson * np.bincount(ranks[j], minlength=n) / samples
    out += uniform_share / max(n, 1)
    return out


class OnlinePolicy:
    """The served policy: featuriser, posterior and random generator, learning from the event log.

    State survives restarts: the posterior is saved in the event log every `snapshot_every`
    updates, and on start the rewards logged after the last save are replayed, in log order, so
    the restarted policy is the one that would have run without the restart.
    """

    def __init__(self, featuriser: Featuriser, cfg, events, viewed_weight: float = 0.0, stream: int = 0):
        import threading

        self.cfg = cfg
        self.events = events
        self.featuriser = featuriser
        self.name = cfg.policy
        self._lock = threading.Lock()
        self.rng = np.random.default_rng([cfg.seed, stream])
        self._unsaved = 0
        odds = cfg.max_step_odds
        self.max_logit_step = math.log(odds) if odds else None
        saved = events.load_policy(self.name, self.featuriser.signature)
        if saved is None:
            self.posterior = Posterior.from_config(self.featuriser, cfg.prior, viewed_weight)
            self.last_rowid = 0
        else:
            n, self.last_rowid, mean, cov = saved
            self.posterior = Posterior(mean, cov, n)
        self.replayed = self.learn()

    def rows(self, candidates, ctx: Context) -> np.ndarray:
        return self.featuriser.matrix([c.arm for c in candidates], np.array([c.base_prob for c in candidates]),
                                      np.array([c.viewed for c in candidates]), ctx)

    def choose(self, candidates, ctx: Context, k: int, explore_share: float | None = None) -> Choice:
        x = self.rows(candidates, ctx)
        value = np.array([c.value for c in candidates])
        share = self.cfg.explore_share if explore_share is None else explore_share
        base = unprompted(self.cfg, candidates)
        with self._lock:
            return choose(self.posterior, x, value, k, share, self.rng, self.cfg.propensity_samples,
                          self.cfg.uniform_share, base)

    def learn(self) -> int:
        """Applies the rewards logged since the last update; returns how many."""
        with self._lock:
            pending = self.events.rewards_after(self.last_rowid)
            for rowid, _decision, arm, reward, context in pending:
                x = self._logged_row(context, arm)
                if x is not None:
                    self.posterior.update(x, reward, self.featuriser.max_logit_change, self.max_logit_step)
                self.last_rowid = rowid
            self._unsaved += len(pending)
            if self._unsaved >= self.cfg.snapshot_every and not getattr(self.events, "readonly", False):
                self._save()
        return len(pending)

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        self._unsaved = 0
        self.events.save_policy(self.name, self.featuriser.signature, self.posterior.n_updates, self.last_rowid,
                                self.posterior.mean, self.posterior.cov)

    def _logged_row(self, context_json: str, arm: str) -> np.ndarray | None:
        """The feature row the decision scored this offer with."""
        import json

        rows = self.featuriser.logged(json.loads(context_json))
        if rows is None or arm not in rows[0]:
            return None
        return rows[1][rows[0].index(arm)]


def unprompted(cfg, candidates) -> np.ndarray | None:
    """With uplift arbitration (`cfg.arbitration`), each candidate's P(acquire unprompted): the model's
    probability of a product, 0 for an action (nothing happens without it); None with propensity
    arbitration. Candidates are objects or the logged dicts, each with `arm` and `base_prob`."""
    if cfg.arbitration != "uplift":
        return None
    pairs = [(c["arm"], c["base_prob"]) if isinstance(c, dict) else (c.arm, c.base_prob) for c in candidates]
    return np.array([0.0 if arm in cfg.actions else float(prob) for arm, prob in pairs])
