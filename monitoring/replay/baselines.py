"""The policies scored on the replay: one step as every policy sees it, and the baselines.

`Step` is one request with the candidates the rules allowed, what a policy sees of them and the
truth that answers; a `Policy` ranks a batch of steps and learns from its own answers. The
baselines (greedy, epsilon-greedy, MABWiser's LinUCB/LinTS, Vowpal Wabbit, random) and the oracle
are built by name with `make_policy`; `nextbest`, the engine's own policy, is not built here but
drives the decision path itself (`nextbest.monitoring.replay.loop`). MABWiser and Vowpal Wabbit
load only when their policy is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nextbest.constants import CHANNELS

# Every policy the replay knows by name: the engine's own (ENGINE_POLICY), then the baselines and the oracle.
POLICIES = ("nextbest", "greedy", "epsilon_greedy", "linucb", "lints", "vw", "oracle", "uplift_oracle", "random")
ENGINE_POLICY = "nextbest"


# -- one decision as every policy sees it ------------------------------------------------------------

@dataclass
class Step:
    """One request with the candidates the rules allowed, what the policies see and the truth."""

    t: int
    customer: int
    channel: str
    hour: int
    weekday: int
    engagement: float
    arms: list[str]
    base_prob: np.ndarray   # model (or configured) probability per candidate, (n,)
    value: np.ndarray       # value if accepted, (n,)
    viewed: np.ndarray      # page viewed recently, (n,)
    p_true: np.ndarray      # true acceptance per candidate, (n,)
    u: np.ndarray           # the answer draws: accepted iff u < p_true, (n,), common to all policies
    decision_id: str | None = None
    at: float = 0.0
    p0: np.ndarray | None = None  # true P(acquire unprompted) per candidate, (n,); 0 for actions

    @property
    def true_value(self) -> np.ndarray:
        return self.p_true * self.value

    @property
    def true_uplift(self) -> np.ndarray:
        """What each offer adds: max(P(accept) - P(acquire unprompted), 0) (`Truth.uplift_grid`)."""
        return self.p_true if self.p0 is None else np.maximum(self.p_true - self.p0, 0.0)

    def rows(self, featuriser) -> np.ndarray:
        """The feature rows our policy scores this step's candidates with, (n, featuriser.dim)."""
        from nextbest.serving.bandit import Context

        return featuriser.matrix(self.arms, self.base_prob, self.viewed,
                                 Context(self.channel, self.hour, self.weekday, self.engagement))


# -- the policies ----------------------------------------------------------------------------------

def _top(score: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-score, kind="stable")[:k]


class Policy:
    """A policy scored on the simulator: ranks each step's candidates, learns from its answers."""

    name = "policy"

    def rank(self, steps: list[Step], k: int) -> list[np.ndarray]:
        """Candidate indices of the offers shown, best first, for each step (at most k)."""
        raise NotImplementedError

    def propensity(self, step: Step, order: np.ndarray) -> list[float] | None:
        """P(this offer in this slot) when it is known exactly, else None."""
        return None

    def learn(self, steps: list[Step], ranks: list[np.ndarray], accepted: list[np.ndarray]) -> None:
        """One batch of answers (accepted: 0/1 per shown offer)."""

    def learn_logged(self, steps: list[Step], ranks: list[np.ndarray], accepted: list[np.ndarray],
                     propensities: list[list[float]]) -> None:
        """Learns from offers another policy made (a history), with that policy's logged propensities."""
        self.learn(steps, ranks, accepted)


class Oracle(Policy):
    """Knows the true acceptance: the best expected value among the allowed candidates."""

    name = "oracle"

    def rank(self, steps, k):
        return [_top(s.true_value, k) for s in steps]

    def propensity(self, step, order):
        return [1.0] * len(order)


class UpliftOracle(Policy):
    """Knows the true uplift: the best expected incremental value among the allowed candidates."""

    name = "uplift_oracle"

    def rank(self, steps, k):
        return [_top(s.true_uplift * s.value + 1e-9 * s.true_value, k) for s in steps]

    def propensity(self, step, order):
        return [1.0] * len(order)


class Greedy(Policy):
    """The model's score x value, no learning (what the served ranking is before any feedback)."""

    name = "greedy"

    def rank(self, steps, k):
        return [_top(s.base_prob * s.value, k) for s in steps]

    def propensity(self, step, order):
        return [1.0] * len(order)


class Random(Policy):
    name = "random"

    def __init__(self, seed: int):
        self.rng = np.random.default_rng([seed, 3])

    def rank(self, steps, k):
        return [self.rng.permutation(len(s.arms))[:k] for s in steps]

    def propensity(self, step, order):
        n = len(step.arms)
        return [1.0 / (n - j) for j in range(len(order))]


class EpsilonGreedy(Policy):
    """Acceptance learnt per (arm, channel), ranked by estimate x value; a random ranking with prob. epsilon.

    The estimate is shrunk towards the overall acceptance rate with `prior_weight` pseudo-offers,
    so an arm-channel pair never tried starts at the average, not at 0 or 1.
    """

    name = "epsilon_greedy"

    def __init__(self, arms: list[str], seed: int, epsilon: float = 0.1, prior_weight: float = 10.0):
        self.epsilon, self.prior_weight = epsilon, prior_weight
        self.arm = {a: i for i, a in enumerate(arms)}
        self.channel = {c: i for i, c in enumerate(CHANNELS)}
        self.shown = np.zeros((len(arms), len(CHANNELS)))
        self.accepted = np.zeros((len(arms), len(CHANNELS)))
        self.rng = np.random.default_rng([seed, 4])

    def _estimate(self, s: Step) -> np.ndarray:
        overall = (self.accepted.sum() + 1.0) / (self.shown.sum() + 50.0)
        rows, col = [self.arm[a] for a in s.arms], self.channel[s.channel]
        return (self.accepted[rows, col] + self.prior_weight * overall) / (self.shown[rows, col] + self.prior_weight)

    def rank(self, steps, k):
        out = []
        for s in steps:
            if self.rng.random() < self.epsilon:
                out.append(self.rng.permutation(len(s.arms))[:k])
            else:
                out.append(_top(self._estimate(s) * s.value, k))
        return out

    def propensity(self, step, order):
        if len(order) != 1:
            return None
        greedy = _top(self._estimate(step) * step.value, 1)[0]
        return [(1 - self.epsilon) * (order[0] == greedy) + self.epsilon / len(step.arms)]

    def learn(self, steps, ranks, accepted):
        for s, order, acc in zip(steps, ranks, accepted):
            col = self.channel[s.channel]
            for i, a in zip(order, acc):
                self.shown[self.arm[s.arms[i]], col] += 1
                self.accepted[self.arm[s.arms[i]], col] += a


def shared_context(s: Step, arm_index: dict[str, int]) -> np.ndarray:
    """The decision's context for the linear baselines: what our policy sees, as one vector.

    [1, channel one-hot, sin/cos hour, weekend, engagement / 4, 10 x model score of every arm
    (0 where the arm is not a candidate), 1 where the arm's page was viewed]. Arm-specific models
    (MABWiser's disjoint LinUCB/LinTS) each learn their own weights on it.
    """
    x = np.zeros(1 + len(CHANNELS) + 4 + 2 * len(arm_index))
    x[0] = 1.0
    x[1 + CHANNELS.index(s.channel)] = 1.0
    angle = 2 * math.pi * s.hour / 24
    o = 1 + len(CHANNELS)
    x[o:o + 4] = (math.sin(angle), math.cos(angle), float(s.weekday >= 5), s.engagement / 4)
    o += 4
    idx = [arm_index[a] for a in s.arms]
    x[o + np.array(idx, dtype=int)] = 10 * s.base_prob
    x[o + len(arm_index) + np.array(idx, dtype=int)] = s.viewed
    return x


class MabLinear(Policy):
    """MABWiser's LinUCB or LinTS: one ridge model of P(accept) per arm on the shared context,
    ranked by its upper bound (or posterior sample) x value among the allowed candidates."""

    # Exploration factors from a sweep on the steps of a 100,000-decision run (seed 42): LinUCB's
    # regret falls up to alpha 0.5 and stays flat to 2; LinTS's is lowest at the smallest alpha tried.
    ALPHA = {"linucb": 1.0, "lints": 0.05}

    def __init__(self, kind: str, arms: list[str], seed: int, alpha: float | None = None, l2_lambda: float = 1.0):
        from mabwiser.mab import MAB, LearningPolicy

        alpha = self.ALPHA[kind] if alpha is None else alpha
        self.name = kind
        self.arms = list(arms)
        self.arm_index = {a: i for i, a in enumerate(self.arms)}
        learning = (LearningPolicy.LinUCB(alpha=alpha, l2_lambda=l2_lambda) if kind == "linucb"
                    else LearningPolicy.LinTS(alpha=alpha, l2_lambda=l2_lambda))
        self.mab = MAB(self.arms, learning, seed=seed)
        dim = len(shared_context(Step(0, 0, CHANNELS[0], 0, 0, 0.0, [], np.zeros(0), np.zeros(0), np.zeros(0),
                                      np.zeros(0), np.zeros(0)), self.arm_index))
        self.mab.fit([], [], np.empty((0, dim)))  # every arm starts at the ridge prior

    def rank(self, steps, k):
        if not steps:
            return []
        contexts = np.stack([shared_context(s, self.arm_index) for s in steps])
        expected = self.mab.predict_expectations(contexts)
        if isinstance(expected, dict):  # MABWiser answers one context with a dict, several with a list
            expected = [expected]
        return [_top(np.array([e[a] for a in s.arms]) * s.value, k) for s, e in zip(steps, expected)]

    def propensity(self, step, order):
        return [1.0] * len(order) if self.name == "linucb" else None

    def learn(self, steps, ranks, accepted):
        decisions, rewards, contexts = [], [], []
        for s, order, acc in zip(steps, ranks, accepted):
            x = shared_context(s, self.arm_index)
            for i, a in zip(order, acc):
                decisions.append(s.arms[i])
                rewards.append(float(a))
                contexts.append(x)
        if decisions:
            self.mab.partial_fit(decisions, rewards, np.stack(contexts))


class VowpalCB(Policy):
    """Vowpal Wabbit's `cb_explore_adf` (epsilon-greedy over its cost regression), the cost being
    minus the value won (accepted x value / 1000), with action features [arm, arm x channel,
    model score, value, score x value, page viewed] and the shared context [channel, hour,
    weekend, engagement] (crossing them, -q sa, did worse: see benchmarks/bench_bandit.py)."""

    name = "vw"

    def __init__(self, seed: int, epsilon: float = 0.1, scale: float = 1000.0):
        import vowpalwabbit

        self.vw = vowpalwabbit.Workspace(f"--cb_explore_adf --epsilon {epsilon} --quiet "
                                         f"--random_seed {seed}")
        self.scale = scale
        self.rng = np.random.default_rng([seed, 5])
        self._pmf: dict[int, list[float]] = {}

    def _lines(self, s: Step) -> list[str]:
        shared = (f"shared |s ch={s.channel} h{s.hour // 3} we={int(s.weekday >= 5)} "
                  f"eng:{s.engagement:.4f}")
        # The cost is minus probability x value: a product that a linear model cannot form from
        # the two, so the model's expected value (score x value) is a feature of its own.
        return [shared] + [f"|a arm={a} ac={a}_{s.channel} p:{10 * b:.6f} lp:{math.log(max(b, 1e-6)):.4f} "
                           f"v:{v / self.scale:.5f} ev:{b * v / self.scale * 10:.6f} vw={int(w)}"
                           for a, b, v, w in zip(s.arms, s.base_prob, s.value, s.viewed)]

    def rank(self, steps, k):
        out = []
        for s in steps:
            pmf = np.asarray(self.vw.predict(self._lines(s)), dtype=float)
            pmf = pmf / pmf.sum()
            first = int(self.rng.choice(len(pmf), p=pmf))
            rest = [int(i) for i in np.argsort(-pmf, kind="stable") if i != first][:k - 1]
            self._pmf[s.t] = pmf.tolist()
            out.append(np.array([first, *rest]))
        return out

    def propensity(self, step, order):
        pmf = self._pmf.get(step.t)
        return None if pmf is None or len(order) != 1 else [pmf[order[0]]]

    def learn(self, steps, ranks, accepted):
        for s, order, acc in zip(steps, ranks, accepted):
            pmf = self._pmf.pop(s.t, None)
            if pmf is None or not len(order):
                continue
            i, a = int(order[0]), float(acc[0])
            lines = self._lines(s)
            lines[1 + i] = f"0:{-a * s.value[i] / self.scale:.6f}:{max(pmf[i], 1e-6):.6f} " + lines[1 + i]
            self.vw.learn(lines)

    def learn_logged(self, steps, ranks, accepted, propensities):
        for s, order, acc, q in zip(steps, ranks, accepted, propensities):
            if len(order) and len(q):
                i, a = int(order[0]), float(acc[0])
                lines = self._lines(s)
                lines[1 + i] = f"0:{-a * s.value[i] / self.scale:.6f}:{max(q[0], 1e-6):.6f} " + lines[1 + i]
                self.vw.learn(lines)

    def finish(self) -> None:
        self.vw.finish()


def make_policy(name: str, arms: list[str], seed: int) -> Policy:
    """A baseline (or the oracle) by name; `nextbest` is the engine itself, not built here."""
    if name == "oracle":
        return Oracle()
    if name == "uplift_oracle":
        return UpliftOracle()
    if name == "greedy":
        return Greedy()
    if name == "random":
        return Random(seed)
    if name == "epsilon_greedy":
        return EpsilonGreedy(arms, seed)
    if name in ("linucb", "lints"):
        return MabLinear(name, arms, seed)
    if name == "vw":
        return VowpalCB(seed)
    raise ValueError(f"unknown policy {name!r}; one of {', '.join(POLICIES)}")

