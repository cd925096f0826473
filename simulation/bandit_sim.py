"""The bandit simulator: the bank's customers answer offers made through the real decision path.

`nextbest simulate` and `benchmarks/bench_bandit.py` run this. One run replays a fixed stream of
requests (customer, channel, time) through `nextbest.serving.engine.DecisionEngine` -- online features of
the work dir's Feast store, both champion models, every rule of configs/rules.yaml with the
decision log as contact history (weekly caps, rejection and credit cool-downs, opt-out and
consent, control groups) -- lets a policy choose among the candidates the rules allow, and draws
the customer's answer from the simulator's offer-response truth.

The truth (`Truth`):
- a product's acceptance is `nextbest.simulation.response.accept_probability` with the customer's true
  P(acquire next month) of the latest snapshot (truth/acquisition.parquet) and latent digital
  affinity (truth/latent.parquet), the request's channel, hour and weekday, and the channel fit of
  the product's category: the function that answered the bank's historical offers.
- The two non-product actions have no truth in the bank simulator; we give them one here
  (ACTION_TRUTH): the same response function with a fixed unprompted-equivalent probability
  (retention call 2%, repayment help 1%), i.e. the same channel, time and affinity effects as a
  product. Their configured prior acceptance (30% and 20% in configs/bandit.yaml) is thus too
  optimistic, as a business guess may be; the policy has to learn that.
- The customer's state is frozen at the latest snapshot, except that an accepted product is held
  from then on (a `product_acquired` event, plus `loan_disbursed` for a loan, which starts the
  credit cool-down): the rules stop offering it and its truth drops to 0.
- Reward = accepted x value, the candidate's value as the policy arbitrates it
  (margin x lever for a product, churn risk x customer value for the retention call, the configured
  value for repayment help). With k > 1 offers, each offer is answered independently.

The traffic (`make_traffic`): customers drawn uniformly from the bank's latest snapshot (opted-out
customers and prospects included: the rules must hold for them), channels from CHANNEL_MIX, hours
from a fixed profile per channel, over a simulated period that starts the day after the snapshot
and lasts so that a customer comes by `visits_per_week` times a week on average; the weekday
follows from the date. Every request carries its simulated time, which the engine logs as the
decision's time, so weekly caps and 30-day cool-downs count simulated days.

Policies and fairness: one policy drives the path (its offers are logged, answered, and shape the
rule state: contact counts, rejections, acquisitions). Any number of shadow policies are scored
on exactly the same steps -- same customer, channel, time and the same allowed candidates -- with
common random numbers for the answers (the same uniform draw per step and arm), and learn from
their own answers. The oracle (true acceptance x value, best among the same candidates) is always
a shadow. Feedback reaches every learner in the same batches of `update_every` decisions (the
driver's answers are posted to the engine at the end of each batch, so the rules too see them
then), which also lets the shadows choose a whole batch with one vectorised call.

A shadow's own accepted offers change nothing in the bank (only the driver's do): what is
compared is each policy's choice in the same situation, step by step.

Regret is expected (pseudo-)regret: oracle's expected value minus the chosen offers' expected
value, both from the truth; realised reward is reported beside it.

A run writes its own decision log (`<workdir>/simulation/<run>.events.db`, never the work dir's
events.db), so our policy starts from its prior every time; the online store is read without
the serving latency budget, so a busy machine never turns an answer degraded at random and the
same seed gives the same run.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from nextbest.constants import CHANNELS, CUSTOMER_ID, DEFAULT_SEED, SNAPSHOT_DATE
from nextbest.io import atomic_write, write_json
from nextbest.serving.eventlog import EventLog
from nextbest.simulation.response import accept_probability

# Share of requests per channel (owned digital channels carry most of the traffic).
CHANNEL_MIX = {"mobile_app": 0.40, "web": 0.20, "email": 0.12, "push": 0.12, "sms": 0.04, "branch": 0.08,
               "call_center": 0.04}
# Relative request volume per hour of day (UTC), per channel: people browse in the evening, the
# bank sends outbound messages in office hours, branches and the call centre have opening hours.
_BROWSING = [0.2] * 7 + [1.0] * 11 + [2.0] * 5 + [0.8]
_OFFICE = [0.0] * 8 + [1.0] * 12 + [0.0] * 4
HOUR_PROFILE = {"mobile_app": _BROWSING, "web": _BROWSING, "email": _OFFICE, "push": _OFFICE, "sms": _OFFICE,
                "branch": [0.0] * 9 + [1.0] * 8 + [0.0] * 7, "call_center": _OFFICE}
# Unprompted-equivalent P(take it) of the actions that are not products (see the module docstring).
ACTION_TRUTH = {"retention_call": 0.02, "payment_help": 0.01}
POLICIES = ("nextbest", "greedy", "epsilon_greedy", "linucb", "lints", "vw", "oracle", "random")
ENGINE_POLICY = "nextbest"
DAY = 86400.0


# -- the truth -------------------------------------------------------------------------------------

@dataclass
class Truth:
    """True acceptance of every arm for every customer of the latest snapshot.

    Attributes:
        customer_ids: the customers, (n,).
        arms: products (catalogue order) then actions.
        p_next: true P(acquire next month) per customer and product, (n, P); actions use ACTION_TRUTH.
        affinity: latent digital affinity per customer, (n,).
        snapshot: the snapshot date the state is frozen at.
        categories: product category per product (the channel fit of the offer-response truth).
    """

    customer_ids: list[str]
    products: list[str]
    actions: dict[str, float]
    p_next: np.ndarray
    affinity: np.ndarray
    snapshot: datetime
    categories: dict[str, str] = field(default_factory=dict)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.customer_ids)}
        self.arms = list(self.products) + list(self.actions)
        self._col = {a: i for i, a in enumerate(self.arms)}
        n = len(self.customer_ids)
        # Actions' unprompted-equivalent probability, as extra columns of one (n, arms) table.
        self._p = np.hstack([self.p_next.astype(float),
                             np.tile(np.array([self.actions[a] for a in self.actions], dtype=float), (n, 1))])

    @classmethod
    def load(cls, truth_dir: Path, products: list[str], actions: dict[str, float] | None = None,
             categories: dict[str, str] | None = None) -> "Truth":
        """The latest snapshot of `truth/acquisition.parquet` and the latent affinity."""
        import pandas as pd

        acq = pd.read_parquet(truth_dir / "acquisition.parquet")
        latest = acq[SNAPSHOT_DATE].max()
        acq = acq[acq[SNAPSHOT_DATE] == latest].sort_values(CUSTOMER_ID)
        latent = pd.read_parquet(truth_dir / "latent.parquet", columns=[CUSTOMER_ID, "digital_affinity"])
        affinity = latent.set_index(CUSTOMER_ID)["digital_affinity"].reindex(acq[CUSTOMER_ID]).to_numpy(float)
        return cls(acq[CUSTOMER_ID].astype(str).tolist(), list(products),
                   dict(ACTION_TRUTH if actions is None else actions),
                   acq[products].to_numpy(np.float64), np.nan_to_num(affinity, nan=0.5),
                   pd.Timestamp(latest).to_pydatetime().replace(tzinfo=timezone.utc), dict(categories or {}))

    def column(self, arm: str) -> int:
        return self._col[arm]

    def acceptance(self, customer: int, arms: list[str], channel: str, hour: int, weekday: int) -> np.ndarray:
        """True P(accept) of each offer for one customer in one request context, (len(arms),)."""
        n = len(arms)
        if n == 0:
            return np.zeros(0)
        p = self._p[customer, [self._col[a] for a in arms]]
        return accept_probability(p, np.full(n, channel), np.full(n, hour), np.full(n, weekday),
                                  np.full(n, self.affinity[customer]), [self.categories.get(a) for a in arms])

    def acquire(self, customer: int, arm: str) -> None:
        """The customer now holds the product: no more unprompted acquisition of it."""
        if arm in self.products:
            self._p[customer, self._col[arm]] = 0.0


# -- the traffic -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Traffic:
    """The request stream, in time order: customer (index into Truth), channel, epoch seconds."""

    customer: np.ndarray
    channel: np.ndarray
    at: np.ndarray
    days: float

    def __len__(self) -> int:
        return len(self.customer)

    def when(self, t: int) -> datetime:
        return datetime.fromtimestamp(float(self.at[t]), tz=timezone.utc)


def make_traffic(n_customers: int, steps: int, seed: int, start: datetime, visits_per_week: float = 1.0,
                 customers: int | None = None, mix: dict[str, float] | None = None) -> Traffic:
    """A fixed request stream (the same for every policy with the same seed).

    Args:
        n_customers: customers in the truth table; requests come from all, or from a random
            sample of `customers` of them.
        steps: number of requests.
        seed: the stream's seed.
        start: the first simulated day (midnight UTC).
        visits_per_week: average requests per customer and week; sets the simulated period.
        mix: share of requests per channel (default CHANNEL_MIX).
    """
    rng = np.random.default_rng([seed, 0])
    mix = mix or CHANNEL_MIX
    pool = (np.arange(n_customers) if customers is None or customers >= n_customers
            else np.sort(rng.choice(n_customers, customers, replace=False)))
    customer = rng.choice(pool, steps)
    names = list(mix)
    channel = rng.choice(np.array(names, dtype=object), steps, p=np.array([mix[c] for c in names]) / sum(mix.values()))
    days = max(steps / (len(pool) * visits_per_week / 7.0), 1.0)
    day = np.floor(rng.uniform(0, days, steps))
    hour = np.zeros(steps)
    for c in names:
        rows = np.flatnonzero(channel == c)
        weights = np.asarray(HOUR_PROFILE[c], dtype=float)
        hour[rows] = rng.choice(24, len(rows), p=weights / weights.sum())
    seconds = rng.uniform(0, 3600, steps)
    at = start.timestamp() + day * DAY + hour * 3600 + seconds
    order = np.argsort(at, kind="stable")
    at = at[order]
    # Strictly increasing times: the decision log orders by time, ties would make that ambiguous.
    at = np.maximum.accumulate(at + np.arange(steps) * 1e-6)
    return Traffic(customer[order], channel[order], at, days)


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

    @property
    def true_value(self) -> np.ndarray:
        return self.p_true * self.value

    def rows(self, featuriser) -> np.ndarray:
        """The feature rows our policy scores this step's candidates with, (n, featuriser.dim)."""
        from nextbest.serving.bandit import Context

        return featuriser.matrix(self.arms, self.base_prob, self.viewed,
                                 Context(self.channel, self.hour, self.weekday, self.engagement))


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


class Oracle(Policy):
    """Knows the true acceptance: the best expected value among the allowed candidates."""

    name = "oracle"

    def rank(self, steps, k):
        return [_top(s.true_value, k) for s in steps]

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

    def finish(self) -> None:
        self.vw.finish()


def make_policy(name: str, arms: list[str], seed: int) -> Policy:
    """A baseline (or the oracle) by name; `nextbest` is the engine itself, not built here."""
    if name == "oracle":
        return Oracle()
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


# -- the decision path ------------------------------------------------------------------------------

class OnlineStoreReader:
    """The work dir's Feast online store, read like serving reads it but without the latency budget:
    a busy machine must not turn simulated answers into degraded ones at random."""

    def __init__(self, paths):
        self.paths = paths
        self._read = None

    def open(self, feature_service: str) -> None:
        from nextbest.feature_repo.store import open_store
        from nextbest.serving.engine import fast_reader

        store = open_store(self.paths)
        service = store.get_feature_service(feature_service)
        fast = fast_reader(store, service)
        if fast is None:  # another store (Redis): Feast's reader
            def fast(customer_id):
                values = store.get_online_features(features=service, entity_rows=[{CUSTOMER_ID: customer_id}])
                return {k: v[0] for k, v in values.to_dict().items() if k != CUSTOMER_ID}
        self._read = fast

    def __call__(self, customer_id: str) -> dict | None:
        values = self._read(customer_id)
        if not values or all(v is None for v in values.values()):
            return None
        return {CUSTOMER_ID: customer_id, **values}


def open_engine(paths, events_db: Path):
    """A DecisionEngine on the work dir with a fresh simulation decision log at `events_db`."""
    from nextbest.serving.engine import DecisionEngine

    for suffix in ("", "-wal", "-shm"):
        Path(f"{events_db}{suffix}").unlink(missing_ok=True)
    reader = OnlineStoreReader(paths)
    engine = DecisionEngine(paths, features=reader, durable=False, eventlog=EventLog(events_db, durable=False))
    engine.load()
    if engine.error:
        raise RuntimeError(f"the decision engine failed to load: {engine.error}")
    reader.open(engine.nbp.meta.feature_service)
    return engine


@dataclass
class Tally:
    """Per-step accounting of one policy (arrays over steps)."""

    expected: np.ndarray
    realised: np.ndarray
    accepts: np.ndarray
    shown: np.ndarray
    seconds: float = 0.0

    @classmethod
    def zeros(cls, n: int) -> "Tally":
        return cls(np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32))

    def record(self, s: Step, order: np.ndarray) -> np.ndarray:
        """Books the expected and realised value of the offers shown; returns their answers (0/1)."""
        order = np.asarray(order, dtype=int)
        accepted = (s.u[order] < s.p_true[order]).astype(float)
        self.expected[s.t] = float(s.true_value[order].sum())
        self.realised[s.t] = float((accepted * s.value[order]).sum())
        self.accepts[s.t] = int(accepted.sum())
        self.shown[s.t] = len(order)
        return accepted


@dataclass
class Result:
    """A finished run: per-step tallies per policy, the oracle's value, the driver's trace."""

    config: dict
    driver: str
    tallies: dict[str, Tally]
    oracle: np.ndarray           # oracle's expected value per step
    has_candidates: np.ndarray   # a step with at least one allowed candidate
    trace: list[dict]            # per step: the driver's decision, for audits and OPE
    steps: list[Step] | None     # kept when asked (OPE on the simulator)
    engine_seconds: float
    events_db: Path | None = None
    engine: object = None        # the DecisionEngine the run used (its policy's final posterior)

    def regret(self, policy: str) -> np.ndarray:
        return np.cumsum(self.oracle - self.tallies[policy].expected)

    def summary(self) -> dict:
        out = {}
        oracle_total = float(self.oracle.sum())
        for name, t in self.tallies.items():
            shown = int(t.shown.sum())
            out[name] = {"expected_reward": float(t.expected.sum()), "oracle_reward": oracle_total,
                         "regret": float((self.oracle - t.expected).sum()), "realised_reward": float(t.realised.sum()),
                         "offers": shown, "accepts": int(t.accepts.sum()),
                         "acceptance_rate": float(t.accepts.sum() / shown) if shown else 0.0,
                         "seconds": round(t.seconds, 3)}
        return out


def _step_from(t: int, traffic: Traffic, truth: Truth, cands: list[dict], request: dict, u_row: np.ndarray) -> Step:
    arms = [c["arm"] for c in cands]
    ci = int(traffic.customer[t])
    hour, weekday = int(request["hour"]), int(request["weekday"])
    p_true = truth.acceptance(ci, arms, request["channel"], hour, weekday)
    return Step(t, ci, request["channel"], hour, weekday, float(request.get("engagement") or 0.0), arms,
                np.array([c["base_prob"] for c in cands], dtype=float),
                np.array([c["value"] for c in cands], dtype=float),
                np.array([bool(c.get("viewed")) for c in cands], dtype=float), p_true,
                u_row[[truth.column(a) for a in arms]] if arms else np.zeros(0), at=float(traffic.at[t]))


def run(engine, truth: Truth, traffic: Traffic, driver: str = ENGINE_POLICY, shadows: tuple[str, ...] = (),
        k: int = 1, update_every: int = 100, seed: int = DEFAULT_SEED, keep_steps: bool = False,
        progress: Callable[[int], None] | None = None) -> Result:
    """Replays the traffic through the engine with `driver` choosing, and scores the shadows on the same steps.

    Args:
        engine: a loaded `nextbest.serving.engine.DecisionEngine` (see `open_engine`).
        truth: the offer-response truth (its acquisitions are updated as the driver sells).
        traffic: the request stream.
        driver: the policy on the decision path: `nextbest` (the engine's own policy, through
            `engine.recommend` and `engine.feedback`) or a baseline's name.
        shadows: policies scored counterfactually on the same steps; the oracle is always added.
        k: offers per decision.
        update_every: decisions per feedback batch, for every learner alike.
        seed: seed of the answer draws and of the baselines.
        keep_steps: keep every Step in the result (memory: ~1 KB a step).
        progress: called with the number of steps done after each batch.
    """
    n = len(traffic)
    answers = np.random.default_rng([seed, 1]).random((n, len(truth.arms)), dtype=np.float32)
    names = [driver] + [s for s in dict.fromkeys(("oracle", *shadows)) if s != driver]
    arms = engine.catalogue.ids + list(engine.policy_cfg.actions)
    policies = {name: make_policy(name, arms, seed) for name in names if name != ENGINE_POLICY}
    tallies = {name: Tally.zeros(n) for name in names}
    oracle = np.zeros(n)
    has_candidates = np.zeros(n, dtype=bool)
    trace: list[dict] = []
    kept: list[Step] = []
    by_id = engine.catalogue.by_id()
    loans = {p.product_id for p in engine.catalogue.products if p.category == "loan"}
    versions = {"nbp": engine.nbp.registered.version, "churn": engine.churn.registered.version}
    timer = _PolicyTimer(engine.policy) if driver == ENGINE_POLICY else None
    engine_seconds = 0.0
    for start in range(0, n, update_every):
        batch: list[tuple[Step, np.ndarray]] = []
        driver_answers = []
        tick = time.perf_counter()
        for t in range(start, min(n, start + update_every)):
            step, order = _drive(engine, t, traffic, truth, driver, policies.get(driver), k, answers[t], versions)
            batch.append((step, order))
            has_candidates[t] = len(step.arms) > 0
            oracle[t] = float(np.sort(step.true_value)[::-1][:k].sum()) if step.arms else 0.0
            # The customer answers at once (and holds what they accepted); the bank, its rules and
            # every learner hear of it at the end of the batch.
            accepted = tallies[driver].record(step, order) if len(order) else np.zeros(0)
            driver_answers.append(accepted)
            for i, a in zip(order, accepted):
                if a:
                    truth.acquire(step.customer, step.arms[i])
        for (step, order), accepted in zip(batch, driver_answers):
            for i, a in zip(order, accepted):
                arm = step.arms[i]
                when = datetime.fromtimestamp(step.at, tz=timezone.utc)
                engine.feedback(step.decision_id, arm, "accept" if a else "reject",
                                float(step.value[i]) if a else None, timestamp=when + timedelta(minutes=1))
                if a and arm in by_id:
                    cid = truth.customer_ids[step.customer]
                    engine.event(cid, "product_acquired", product_id=arm, value=float(step.value[i]),
                                 timestamp=when + timedelta(minutes=1))
                    if arm in loans:
                        engine.event(cid, "loan_disbursed", product_id=arm, timestamp=when + timedelta(minutes=1))
            trace.append({"step": step.t, "customer_id": truth.customer_ids[step.customer], "channel": step.channel,
                          "at": step.at, "decision_id": step.decision_id, "candidates": len(step.arms),
                          "offers": [step.arms[i] for i in order], "accepted": [int(a) for a in accepted],
                          "expected": float(step.true_value[order].sum()) if len(order) else 0.0,
                          "oracle": oracle[step.t]})
        engine_seconds += time.perf_counter() - tick
        live = [(s, o, a) for (s, o), a in zip(batch, driver_answers) if s.arms]
        if driver in policies and live:
            tick = time.perf_counter()
            policies[driver].learn([s for s, _, _ in live], [o for _, o, _ in live], [a for _, _, a in live])
            tallies[driver].seconds += time.perf_counter() - tick
        steps = [s for s, _, _ in live]
        for name in names[1:]:
            tick = time.perf_counter()
            ranks = policies[name].rank(steps, k)
            got = [tallies[name].record(s, o) for s, o in zip(steps, ranks)]
            policies[name].learn(steps, ranks, got)
            tallies[name].seconds += time.perf_counter() - tick
        if keep_steps:
            kept.extend(s for s, _ in batch)
        if progress:
            progress(min(n, start + update_every))
    if timer is not None:
        tallies[driver].seconds = timer.seconds
        timer.restore()
    for p in policies.values():
        if hasattr(p, "finish"):
            p.finish()
    config = {"steps": n, "k": k, "update_every": update_every, "seed": seed, "driver": driver,
              "shadows": names[1:], "days": traffic.days, "customers": int(len(np.unique(traffic.customer))),
              "start": traffic.when(0).isoformat() if n else None, "action_truth": truth.actions}
    return Result(config, driver, tallies, oracle, has_candidates, trace, kept if keep_steps else None,
                  engine_seconds, engine=engine)


class _PolicyTimer:
    """Times the engine policy's own work (choose and learn) inside the engine's decision path."""

    def __init__(self, policy):
        self.policy, self.seconds = policy, 0.0
        self._choose, self._learn = policy.choose, policy.learn
        policy.choose, policy.learn = self._timed(self._choose), self._timed(self._learn)

    def _timed(self, fn):
        def wrapped(*args, **kwargs):
            tick = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - tick
        return wrapped

    def restore(self) -> None:
        del self.policy.choose, self.policy.learn


def _drive(engine, t: int, traffic: Traffic, truth: Truth, driver: str, policy: Policy | None, k: int,
           u_row: np.ndarray, versions: dict) -> tuple[Step, np.ndarray]:
    """One request on the decision path; returns the step and the driver's offers (candidate indices)."""
    cid = truth.customer_ids[int(traffic.customer[t])]
    channel = str(traffic.channel[t])
    context = {"timestamp": traffic.when(t)}
    if driver == ENGINE_POLICY:
        answer = engine.recommend(cid, channel, k, context)
        decision = engine.eventlog.get_decision(answer["decision_id"])
        step = _step_from(t, traffic, truth, decision.context["candidates"], decision.context["request"], u_row)
        step.decision_id = answer["decision_id"]
        index = {a: i for i, a in enumerate(step.arms)}
        return step, np.array([index[o["product_id"]] for o in answer["offers"]], dtype=int)
    prep = engine.prepare(cid, channel, k, context)
    cands = [{"arm": c.arm, "base_prob": c.base_prob, "value": c.value, "viewed": c.viewed} for c in prep.candidates]
    request = {**prep.request.as_dict(), "page": None, "event": None, "at": prep.when.timestamp()}
    step = _step_from(t, traffic, truth, cands, request, u_row)
    order = policy.rank([step], k)[0] if step.arms else np.zeros(0, dtype=int)
    props = policy.propensity(step, order) if len(order) else []
    offers = [{"product_id": step.arms[i], "rank": r + 1, "score": None, "probability": None, "explored": False,
               **({"propensity": props[r]} if props else {})} for r, i in enumerate(order)]
    step.decision_id = uuid.uuid4().hex
    engine.eventlog.log_decision(step.decision_id, prep.pseudonym, channel, k, offers, versions, {
        "policy": driver, "exploring": False, "degraded": prep.degraded, "segment": prep.profile.segment,
        "lifecycle": prep.profile.lifecycle, "known": prep.profile.known, "churn_risk": prep.churn_risk,
        "blocked": prep.blocked, "trigger": None, "groups": prep.groups, "holdout": prep.blocked == "holdout:all",
        "request": request, "candidates": cands, "suppressed": [s.__dict__ for s in prep.suppressed]},
        at=request["at"])
    return step, np.asarray(order, dtype=int)


# -- reports ---------------------------------------------------------------------------------------

def checkpoints(result: Result, points: int = 500) -> list[dict]:
    """Cumulative reward and regret per policy at up to `points` evenly spaced steps (CSV rows)."""
    n = len(result.oracle)
    if n == 0:
        return []
    at = np.unique(np.linspace(1, n, min(points, n)).round().astype(int))
    cum_oracle = np.cumsum(result.oracle)
    rows = []
    for name, t in result.tallies.items():
        cum = {"expected": np.cumsum(t.expected), "realised": np.cumsum(t.realised), "accepts": np.cumsum(t.accepts),
               "shown": np.cumsum(t.shown)}
        for s in at:
            i = s - 1
            rows.append({"step": int(s), "policy": name, "cum_expected_reward": round(float(cum["expected"][i]), 4),
                         "cum_oracle_reward": round(float(cum_oracle[i]), 4),
                         "cum_regret": round(float(cum_oracle[i] - cum["expected"][i]), 4),
                         "cum_realised_reward": round(float(cum["realised"][i]), 2),
                         "offers": int(cum["shown"][i]), "accepts": int(cum["accepts"][i])})
    return rows


def plot_regret(result: Result, path: Path, title: str = "") -> Path:
    """Cumulative expected regret per policy: PNG with matplotlib when installed, else a plain SVG."""
    curves = {name: result.regret(name) for name in result.tallies if name != "oracle"}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _svg_plot(curves, path.with_suffix(".svg"), title)
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name, linewidth=2.2 if name == result.driver else 1.2)
    ax.set_xlabel("decisions")
    ax.set_ylabel("cumulative expected regret (EUR)")
    ax.set_title(title or "regret against the oracle, same traffic and allowed candidates")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = path.with_suffix(".png")
    atomic_write(path, lambda t: fig.savefig(t, dpi=110, format="png"))
    plt.close(fig)
    return path


def _svg_plot(curves: dict[str, np.ndarray], path: Path, title: str) -> Path:
    width, height, pad = 800, 500, 50
    top = max((float(c.max()) for c in curves.values() if len(c)), default=1.0) or 1.0
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<text x="{pad}" y="20">{title}</text>']
    for j, (name, c) in enumerate(curves.items()):
        idx = np.unique(np.linspace(0, len(c) - 1, min(400, len(c))).astype(int))
        pts = " ".join(f"{pad + (width - 2 * pad) * i / max(len(c) - 1, 1):.1f},"
                       f"{height - pad - (height - 2 * pad) * c[i] / top:.1f}" for i in idx)
        colour = colours[j % len(colours)]
        parts += [f'<polyline fill="none" stroke="{colour}" points="{pts}"/>',
                  f'<text x="{width - 150}" y="{40 + 16 * j}" fill="{colour}">{name}</text>']
    parts.append("</svg>")
    return atomic_write(path, lambda t: Path(t).write_text("\n".join(parts)))


def write_outputs(result: Result, out_dir: Path, name: str) -> dict[str, Path]:
    """`<name>.csv` (cumulative curves), `<name>.json` (summary), the regret plot and the driver's trace."""
    import csv

    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    rows = checkpoints(result)
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["step"])
            writer.writeheader()
            writer.writerows(rows)

    files["csv"] = atomic_write(out_dir / f"{name}.csv", write_csv)
    files["plot"] = plot_regret(result, out_dir / f"{name}.png")
    trace = pd.DataFrame(result.trace)
    if not trace.empty:
        trace["offers"] = trace["offers"].map(json.dumps)
        trace["accepted"] = trace["accepted"].map(json.dumps)
    files["trace"] = atomic_write(out_dir / f"{name}.trace.parquet", lambda t: trace.to_parquet(t, index=False))
    files["json"] = out_dir / f"{name}.json"
    summary = {"config": result.config, "decisions_with_candidates": int(result.has_candidates.sum()),
               "engine_seconds": round(result.engine_seconds, 2), "events_db": str(result.events_db),
               "policies": result.summary(), "files": {k: str(v) for k, v in files.items() if k != "json"}}
    write_json(files["json"], summary)
    return files


def simulate_workdir(paths, policy: str = ENGINE_POLICY, steps: int = 10_000, seed: int = DEFAULT_SEED, k: int = 1,
                     shadows: tuple[str, ...] = (), update_every: int = 100, visits_per_week: float = 1.0,
                     customers: int | None = None, keep_steps: bool = False, out_dir: Path | None = None,
                     progress: Callable[[int], None] | None = None,
                     tune: Callable[[object], None] | None = None) -> tuple[Result, dict[str, Path]]:
    """One simulation on a work dir: engine, truth, traffic, run, files under reports/<date>/simulation/.

    The decision log of the run is `<workdir>/simulation/<name>.events.db` (replaced on each run),
    never the work dir's own events.db. `tune(engine)`, if given, may change the loaded engine
    (the benchmark's labelled experiments with another bandit configuration).
    """
    from nextbest.config import load_catalogue

    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
    unknown = [s for s in shadows if s not in POLICIES or s == ENGINE_POLICY]
    if unknown:
        raise ValueError(f"shadow policies must be baselines, got {unknown}")
    if steps < 1 or k < 1 or update_every < 1:
        raise ValueError("steps, k and update_every must be at least 1")
    catalogue = load_catalogue()
    truth_dir = paths.truth
    if not (truth_dir / "acquisition.parquet").exists():
        raise FileNotFoundError(f"{truth_dir}/acquisition.parquet: the simulator's truth is missing "
                                "(only a work dir built by `nextbest generate`/`quickstart` has one)")
    name = f"{policy}-seed{seed}-{steps}"
    events_db = paths.root / "simulation" / f"{name}.events.db"
    engine = open_engine(paths, events_db)
    if tune is not None:
        tune(engine)
    truth = Truth.load(truth_dir, catalogue.ids, {a: ACTION_TRUTH.get(a, 0.01) for a in engine.policy_cfg.actions},
                       catalogue.categories())
    start = truth.snapshot + timedelta(days=1)
    traffic = make_traffic(len(truth.customer_ids), steps, seed, start, visits_per_week, customers)
    result = run(engine, truth, traffic, policy, shadows, k, update_every, seed, keep_steps, progress)
    result.events_db = events_db
    result.config["visits_per_week"] = visits_per_week
    out_dir = out_dir or paths.reports / time.strftime("%Y-%m-%d") / "simulation"
    return result, write_outputs(result, out_dir, name)


# -- off-policy evaluation against the truth ------------------------------------------------------

def ope_against_truth(result: Result, posterior, featuriser, explore_share: float = 0.0,
                      windows: tuple[slice, ...] = (slice(None),), samples: int = 256, seed: int = 0,
                      reward_model=None) -> list[dict]:
    """IPS, SNIPS and DR estimates of a Thompson-sampling candidate policy from the run's decision log,
    beside the candidate's true value on the same logged contexts.

    Args:
        result: a run with the engine on the path and `keep_steps=True`.
        posterior: the candidate's posterior (e.g. the run's final one, or the prior).
        explore_share: the candidate's exploration share (0: greedy on the posterior mean).
        reward_model: the DR estimate's reward model (default the candidate's posterior; the run's
            final posterior is the one learned from this log).
        windows: which logged decisions to evaluate on, in log order (e.g. `slice(0, 50_000)`);
            one answer per window.

    Returns:
        Per window: {"n", "true_value", "logged_value", "ips", "snips", "dr", "dr_os", "dm" (each
        {"value", "ci95", "n"}), "dr_error" (relative), "errors" (each estimator's, relative)}.
    """
    from nextbest.monitoring.ope import Logged, estimate_all, from_event_log

    if result.steps is None:
        raise ValueError("run the simulation with keep_steps=True to evaluate against the truth")
    logged, target, predicted = from_event_log(result.events_db, posterior, featuriser, explore_share, samples, seed,
                                               reward_model=reward_model)
    ids = logged.decision_ids
    steps = {s.decision_id: s for s in result.steps if s.decision_id is not None}
    true_ev = np.zeros(target.shape[:2])
    for row, decision_id in enumerate(ids):
        s = steps[decision_id]
        true_ev[row, :len(s.arms)] = s.true_value
        served = logged.served[row][logged.served[row] >= 0]
        if [s.arms[j] for j in served] != result.trace[s.t]["offers"]:  # the two readings of the log must agree
            raise RuntimeError(f"decision {decision_id}: logged offers do not match the simulator's trace")
    out = []
    for window in windows:
        rows = np.arange(len(ids))[window]
        part = Logged(logged.served[rows], logged.propensity[rows], logged.reward[rows])
        estimates = estimate_all(part, target[rows], predicted[rows])
        truth = float(np.einsum("nmk,nm->n", target[rows], true_ev[rows]).mean())
        errors = {name: (estimates[name]["value"] - truth) / truth if truth else float("nan")
                  for name in ("ips", "snips", "dr", "dr_os", "dm")}
        out.append({"n": len(rows), "true_value": truth, "logged_value": float(part.reward.sum(1).mean()),
                    **estimates, "dr_error": errors["dr"], "errors": errors})
    return out
