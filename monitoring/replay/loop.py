"""The replay loop: the traffic through the real decision path, the driver on it, the shadows beside it.

`open_engine` loads a `DecisionEngine` on the work dir with its own decision log and an online
store read without the latency budget (`OnlineStoreReader`); `run` replays the traffic in feedback
batches and books every policy's offers in a `Tally`; the `Result` holds the tallies, the
oracle's value per step and the driver's trace. The package docstring says how the policies are
kept fair.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from nextbest.constants import CUSTOMER_ID, DEFAULT_SEED
from nextbest.monitoring.replay.baselines import ENGINE_POLICY, Policy, Step, make_policy
from nextbest.monitoring.replay.world import Traffic, Truth
from nextbest.serving.eventlog import EventLog

# -- the decision path ------------------------------------------------------------------------------

class OnlineStoreReader:
    """The work dir's Feast online store, read like serving reads it but without the latency budget:
    a busy machine must not turn simulated answers into degraded ones at random."""

    def __init__(self, paths):
        self.paths = paths
        self._read = None

    def open(self, feature_services: list[str]) -> None:
        from nextbest.feature_repo.store import open_store
        from nextbest.serving.online import online_reader

        self._read = online_reader(open_store(self.paths), feature_services)

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
    reader.open([engine.nbp.meta.feature_service, engine.churn.meta.feature_service])
    return engine


# -- accounting ------------------------------------------------------------------------------------

@dataclass
class Tally:
    """Per-step accounting of one policy (arrays over steps)."""

    expected: np.ndarray
    realised: np.ndarray
    accepts: np.ndarray
    shown: np.ndarray
    seconds: float = 0.0
    incremental: np.ndarray | None = None           # incremental acceptances (not bought unprompted anyway)
    incremental_expected: np.ndarray | None = None  # true uplift x value of the offers shown
    incremental_realised: np.ndarray | None = None

    @classmethod
    def zeros(cls, n: int) -> "Tally":
        return cls(np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int32), 0.0,
                   np.zeros(n, dtype=np.int32), np.zeros(n), np.zeros(n))

    def record(self, s: Step, order: np.ndarray) -> np.ndarray:
        """Books the expected and realised value of the offers shown; returns their answers (0/1).

        The answer's draw also decides what the customer would have done unprompted (`Truth.uplift_grid`):
        an acceptance is incremental iff P(acquire unprompted) <= u."""
        order = np.asarray(order, dtype=int)
        accepted = (s.u[order] < s.p_true[order]).astype(float)
        p0 = np.zeros(len(order)) if s.p0 is None else s.p0[order]
        added = accepted * (s.u[order] >= p0)
        self.expected[s.t] = float(s.true_value[order].sum())
        self.realised[s.t] = float((accepted * s.value[order]).sum())
        self.accepts[s.t] = int(accepted.sum())
        self.shown[s.t] = len(order)
        self.incremental[s.t] = int(added.sum())
        self.incremental_expected[s.t] = float((s.true_uplift[order] * s.value[order]).sum())
        self.incremental_realised[s.t] = float((added * s.value[order]).sum())
        return accepted


@dataclass
class PastRun:
    """What an earlier run offered and heard, as the baselines learn it: steps with offers, the
    offered candidates' indices, their answers and their logged propensities."""

    steps: list[Step]
    ranks: list[np.ndarray]
    accepted: list[np.ndarray]
    propensities: list[list[float]]

    @classmethod
    def from_result(cls, result: "Result") -> "PastRun":
        """The driver's answered offers of a run kept with `keep_steps`, propensities from its log."""
        from nextbest.eventlog import EventLogReader

        with EventLogReader(result.events_db) as log:
            offers = log.offers(("decision_id", "product_id", "propensity"))
        logged = {(d, p): q for d, p, q in offers.itertuples(index=False)}
        out = cls([], [], [], [])
        for step, t in zip(result.steps, result.trace):
            if not step.arms or not t["offers"]:
                continue
            index = {a: i for i, a in enumerate(step.arms)}
            out.steps.append(step)
            out.ranks.append(np.array([index[a] for a in t["offers"]], dtype=int))
            out.accepted.append(np.array(t["accepted"], dtype=float))
            out.propensities.append([float(logged.get((t["decision_id"], a), float("nan"))) for a in t["offers"]])
        return out


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
            per = 1000 / shown if shown else 0.0
            out[name] = {"expected_reward": float(t.expected.sum()), "oracle_reward": oracle_total,
                         "regret": float((self.oracle - t.expected).sum()), "realised_reward": float(t.realised.sum()),
                         "offers": shown, "accepts": int(t.accepts.sum()),
                         "acceptance_rate": float(t.accepts.sum() / shown) if shown else 0.0,
                         "incremental": int(t.incremental.sum()),
                         "incremental_expected": float(t.incremental_expected.sum()),
                         "incremental_realised": float(t.incremental_realised.sum()),
                         "per_1000_offers": {"incremental": float(t.incremental.sum() * per),
                                             "incremental_expected_value": float(t.incremental_expected.sum() * per),
                                             "incremental_realised_value": float(t.incremental_realised.sum() * per)},
                         "seconds": round(t.seconds, 3)}
        return out


# -- the loop --------------------------------------------------------------------------------------

def _step_from(t: int, traffic: Traffic, truth: Truth, cands: list[dict], request: dict, u_row: np.ndarray) -> Step:
    arms = [c["arm"] for c in cands]
    ci = int(traffic.customer[t])
    hour, weekday = int(request["hour"]), int(request["weekday"])
    p_true = truth.acceptance(ci, arms, request["channel"], hour, weekday)
    # What the customer would do without the offer: a product's true hazard; an action has none.
    p0 = truth.unprompted(np.array([ci]), arms)[0] if arms else np.zeros(0)
    return Step(t, ci, request["channel"], hour, weekday, float(request.get("engagement") or 0.0), arms,
                np.array([c["base_prob"] for c in cands], dtype=float),
                np.array([c["value"] for c in cands], dtype=float),
                np.array([bool(c.get("viewed")) for c in cands], dtype=float), p_true,
                u_row[[truth.column(a) for a in arms]] if arms else np.zeros(0), at=float(traffic.at[t]), p0=p0)


def run(engine, truth: Truth, traffic: Traffic, driver: str = ENGINE_POLICY, shadows: tuple[str, ...] = (),
        k: int = 1, update_every: int = 100, seed: int = DEFAULT_SEED, keep_steps: bool = False,
        progress: Callable[[int], None] | None = None, history: "PastRun | None" = None) -> Result:
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
        history: an earlier run's answered offers (`PastRun.from_result`): every baseline learns
            from them, in batches of `update_every`, before the first step (the engine's own policy
            is warm-started apart, from that run's decision log: `nextbest.monitoring.warm_start`).
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
    if history is not None:
        for policy in policies.values():
            for b in range(0, len(history.steps), update_every):
                part = slice(b, b + update_every)
                policy.learn_logged(history.steps[part], history.ranks[part], history.accepted[part],
                                    history.propensities[part])
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

