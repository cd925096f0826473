"""Off-policy evaluation from the decision log: what would a candidate policy have earned?

Every served offer is logged with the probability that the logging policy put it in its slot
(`propensity`), and every decision with all the candidates the rules allowed. A candidate policy
gives, for the same logged candidates, its own probability of each offer in each slot; the
estimators below reweight the logged rewards by the ratio of the two:

- IPS: mean over decisions of sum over slots of w * reward, w = pi_target / pi_logging;
- SNIPS: per slot, sum(w * reward) / sum(w) (biased, much lower variance);
- DR: a reward model's prediction for the target's choices, corrected by IPS on its residuals.

Rewards are value-weighted (accepted offer x its value), so the estimate is expected value per
decision. Confidence intervals are normal for IPS and DR (per-decision terms are i.i.d.) and a
bootstrap percentile interval for SNIPS. Where the candidates' values are known, the variance of
IPS's and DR's intervals is at least what the reward model predicts for the logged decisions: with
rare, valuable rewards at large weights the sample variance alone is usually too small, because the
draws that would show the tail are rare too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nextbest.eventlog import EventLogReader

Z95 = 1.959964


@dataclass(frozen=True)
class Logged:
    """Logged decisions as arrays (n decisions, k slots, m candidates at most).

    Attributes:
        served: index among the decision's candidates of the offer in each slot, -1 if empty, (n, k).
        propensity: logging probability of that offer in that slot, (n, k).
        reward: realised value of that offer (accepted x value, 0 otherwise), (n, k).
        decision_ids: the logged decision of each row, when read from an event log.
        value: each candidate's value when accepted, (n, m), when known: IPS's and DR's intervals then
            also count the rewards' own variance as the reward model predicts it (`_predicted_variance`).
    """

    served: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    decision_ids: tuple[str, ...] = ()
    value: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> "Logged":
        """These decisions only (an index array or mask over them), every field alike."""
        return Logged(self.served[rows], self.propensity[rows], self.reward[rows],
                      tuple(np.asarray(self.decision_ids, dtype=object)[rows]) if self.decision_ids else (),
                      None if self.value is None else self.value[rows])

    def at_served(self, per_candidate: np.ndarray) -> np.ndarray:
        """A per-candidate array (n, m) read at each slot's served offer, (n, k); 0 in empty slots."""
        filled = self.served >= 0
        return np.where(filled, np.take_along_axis(per_candidate, np.where(filled, self.served, 0), axis=1), 0.0)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.low, self.high], "n": self.n}


def _normal(terms: np.ndarray, floor: float | None = None) -> Estimate:
    """The mean of i.i.d. per-decision terms with its normal 95% interval; the variance is the sample's,
    or `floor` where that is larger (`_predicted_variance`)."""
    n = len(terms)
    mean = float(terms.mean())
    var = float(terms.var(ddof=1)) if n > 1 else float("inf")
    if floor is not None and np.isfinite(floor):
        var = max(var, floor)
    half = Z95 * float(np.sqrt(var / n)) if n > 1 else float("inf")
    return Estimate(mean, mean - half, mean + half, n)


def _predicted_variance(logged: Logged, w: np.ndarray, predicted: np.ndarray | None,
                        expected: np.ndarray) -> float | None:
    """The variance of the per-decision terms sum_j w_j (reward_j - b_j) + c as the reward model predicts
    it, or None without candidate values or a reward model.

    A served offer's reward is its value v with probability p = predicted / v, else 0: given the
    decision, a term varies by sum_j w_j^2 v^2 p (1 - p); `expected` (each term's mean given its
    decision) adds the spread across decisions. The sample variance of the terms hinges on whether
    the rare large rewards at large weights (an accepted mortgage explored at weight 100) happened
    to be drawn: in the many logs where they were not, it is a fraction of the truth and the normal
    interval misses low. This one does not depend on the draw, so the interval takes the larger."""
    if logged.value is None or predicted is None:
        return None
    v, pv = logged.at_served(logged.value), logged.at_served(predicted)  # 0 in empty slots, where w is 0 too
    p = np.clip(np.where(v > 0, pv / np.where(v > 0, v, 1.0), 0.0), 0.0, 1.0)
    given = (w ** 2 * v ** 2 * p * (1 - p)).sum(1)
    return float(given.mean() + (expected.var(ddof=1) if len(expected) > 1 else 0.0))


def _weights(logged: Logged, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Importance weights (n, k) and a mask of filled slots.

    Args:
        target: the candidate policy's P(candidate c in slot j) per decision, (n, m, k).
    """
    filled = logged.served >= 0
    idx = np.where(filled, logged.served, 0)
    n, k = logged.served.shape
    p_target = target[np.arange(n)[:, None], idx, np.arange(k)[None, :]]
    w = np.where(filled, p_target / np.where(filled, logged.propensity, 1.0), 0.0)
    return w, filled


def ips(logged: Logged, target: np.ndarray, predicted: np.ndarray | None = None) -> Estimate:
    """IPS. With a reward model's `predicted` rewards (n, m) and the candidates' values on `logged`,
    the interval's variance is at least the one the model predicts (`_predicted_variance`); the
    estimate itself never reads the model."""
    w, _ = _weights(logged, target)
    floor = None if predicted is None else _predicted_variance(logged, w, predicted,
                                                               (w * logged.at_served(predicted)).sum(1))
    return _normal((w * logged.reward).sum(1), floor)


def snips(logged: Logged, target: np.ndarray, n_boot: int = 200, seed: int = 0) -> Estimate:
    w, _ = _weights(logged, target)
    wr = w * logged.reward

    def point(rows: np.ndarray) -> float:
        den = w[rows].sum(0)
        return float(np.where(den > 0, wr[rows].sum(0) / np.where(den > 0, den, 1.0), 0.0).sum())

    n = len(w)
    rng = np.random.default_rng(seed)
    boots = [point(rng.integers(0, n, n)) for _ in range(n_boot)]
    low, high = np.percentile(boots, [2.5, 97.5])
    return Estimate(point(np.arange(n)), float(low), float(high), n)


def doubly_robust(logged: Logged, target: np.ndarray, predicted: np.ndarray) -> Estimate:
    """DR estimate.

    Args:
        predicted: the reward model's expected reward of each candidate, (n, m) (0 for padding). With the
            candidates' values on `logged`, the interval's variance is also at least what this model
            predicts (`_predicted_variance`).
    """
    w, direct, resid = _dr_terms(logged, target, predicted)
    return _normal(direct + (w * resid).sum(1), _predicted_variance(logged, w, predicted, direct))


def _dr_terms(logged: Logged, target: np.ndarray, predicted: np.ndarray):
    """Importance weights (n, k), the reward model's value of the target's choices (n,), and the
    served offers' residuals reward - predicted (n, k; 0 in empty slots)."""
    w, filled = _weights(logged, target)
    direct = np.einsum("nmk,nm->n", target, predicted)
    resid = np.where(filled, logged.reward - logged.at_served(predicted), 0.0)
    return w, direct, resid


def direct_method(logged: Logged, target: np.ndarray, predicted: np.ndarray) -> Estimate:
    """DM: the reward model's expected reward of the candidate's choices, no importance weights.

    The lowest variance of all, and biased by whatever the reward model gets wrong; its interval
    covers only the sampling of the logged contexts, not the reward model's own error.
    """
    return _normal(np.einsum("nmk,nm->n", target, predicted))


# Shrinkage levels tried by `dr_shrunk`, as quantiles of the squared importance weights.
_SHRINK_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


def dr_shrunk(logged: Logged, target: np.ndarray, predicted: np.ndarray) -> tuple[Estimate, float]:
    """DR with optimistic shrinkage of the weights (Su, Dimakopoulou, Krishnamurthy and Dudik, 2020).

    Each weight w becomes lam * w / (w^2 + lam): large weights shrink, small ones barely move;
    lam -> infinity is DR, lam -> 0 the direct method. lam is chosen among quantiles of w^2 (and
    infinity) to minimise the estimated variance plus the squared estimated bias, the bias being
    DR's value minus the shrunk one (DR is unbiased): mean(sum over slots (w - w_lam)(reward -
    predicted)). Where the reward model is wrong the residuals carry it and that estimate grows, so
    the weights stay; where it is right the residuals are noise and the weights shrink.

    Returns:
        (estimate, lam) -- lam is inf where plain DR was chosen. The interval is the normal one
        around the shrunk terms and leaves out the bias the shrinkage admits: the bias is estimated
        no better than DR's own noise, so a wrong reward model can pass for a right one and the
        estimate then sits outside its interval. Read it beside DR, whose interval is honest.
    """
    w, direct, resid = _dr_terms(logged, target, predicted)
    n = len(direct)
    positive = w[w > 0]  # empty slots weigh 0
    lams = [float(v) for v in np.quantile(positive ** 2, _SHRINK_QUANTILES)] if positive.size else []
    best = None
    for lam in sorted({v for v in lams if v > 0}) + [float("inf")]:
        shrunk = w if np.isinf(lam) else lam * w / (w ** 2 + lam)
        terms = direct + (shrunk * resid).sum(1)
        bias = float(((w - shrunk) * resid).sum(1).mean())  # DR minus this estimate: DR is unbiased
        mse = float(terms.var(ddof=1)) / n + bias ** 2
        if best is None or mse < best[0]:
            best = (mse, terms, lam)
    return _normal(best[1]), best[2]


def diagnostics(logged: Logged, target: np.ndarray) -> dict:
    """How far the candidate strays from the logging policy: the importance weights' effective
    sample size (Kish: (sum w)^2 / sum w^2, per filled slot) and their tail. A small effective size
    or weights in the hundreds mean the normal intervals of IPS and DR are not to be trusted."""
    w, filled = _weights(logged, target)
    w = w[filled]
    if w.size == 0:
        return {"slots": 0, "effective_sample_size": 0.0, "ess_share": 0.0, "max_weight": 0.0,
                "share_weights_over_10": 0.0, "share_weight_mass_over_10": 0.0}
    ess = float(w.sum() ** 2 / max((w ** 2).sum(), 1e-300))
    big = w > 10
    return {"slots": int(w.size), "effective_sample_size": ess, "ess_share": ess / w.size,
            "max_weight": float(w.max()), "share_weights_over_10": float(big.mean()),
            "share_weight_mass_over_10": float(w[big].sum() / max(w.sum(), 1e-300))}


def estimate_all(logged: Logged, target: np.ndarray, predicted: np.ndarray) -> dict[str, dict]:
    """IPS, SNIPS, DR, DR with shrunk weights (`dr_os`, with its `lambda`) and the direct method (`dm`)
    of one candidate policy, with weight diagnostics, as plain dicts for reports."""
    shrunk, lam = dr_shrunk(logged, target, predicted)
    return {"ips": ips(logged, target, predicted).as_dict(), "snips": snips(logged, target).as_dict(),
            "dr": doubly_robust(logged, target, predicted).as_dict(),
            "dr_os": {**shrunk.as_dict(), "lambda": None if np.isinf(lam) else lam},
            "dm": direct_method(logged, target, predicted).as_dict(), "diagnostics": diagnostics(logged, target)}


def from_event_log(db_path, posterior, featuriser, explore_share: float, samples: int = 256,
                   seed: int = 0, rescorer=None, reward_model=None,
                   uniform_share: float = 0.0, cfg=None) -> tuple[Logged, np.ndarray, np.ndarray]:
    """Logged decisions of `events.db` and a Thompson-sampling candidate policy's view of them.

    The candidate is the policy of `serving/bandit.py` with the given posterior and exploration
    share, `uniform_share` of it uniform (e.g. the current posterior with no exploration, or a
    challenger's), replayed on each
    decision's logged candidates and context. Offers without a reward count as not accepted.
    With a `nextbest.monitoring.rescore.Rescorer`, the candidate policy scores the candidates with that
    model (e.g. the `challenger`) on the features each customer had at decision time. With a bandit
    config `cfg`, the candidate values offers by its `arbitration` (propensity or uplift).

    The DR estimate's reward model is `reward_model` (default: `posterior`) on the rows each
    decision was logged with. It should be the acceptance model learned from this log (the current
    posterior), whatever the candidate: a candidate far from the data (say, the prior) knows least
    about the rewards, and its own model would bias the direct part where the weights cannot help.

    Returns:
        (logged, target slot probabilities (n, m, k), predicted value-weighted rewards (n, m)).
    """
    from nextbest.serving.bandit import sigmoid, slot_propensities, unprompted

    with EventLogReader(db_path) as log:
        given = log.rewards(("decision_id", "product_id", "reward"))
        logged = log.decisions(("decision_id", "created_at", "k", "offers", "context", "customer_pseudonym"))
    rewards = dict(zip(zip(given["decision_id"], given["product_id"]), given["reward"].tolist()))
    logged = logged.sort_values("created_at", kind="stable")  # in the order the decisions were made
    rng = np.random.default_rng(seed)
    reward_model = posterior if reward_model is None else reward_model
    logged_contexts = logged["context"].tolist()
    contexts = logged_contexts
    if rescorer is not None:
        from nextbest.monitoring.rescore import rescore_contexts

        contexts, _ = rescore_contexts(logged_contexts, logged["customer_pseudonym"].tolist(), rescorer)
    decisions = []
    for decision_id, k, offers, ctx, logged_ctx in zip(logged["decision_id"], logged["k"].tolist(), logged["offers"],
                                                       contexts, logged_contexts):
        rows = featuriser.logged(ctx)
        if not offers or rows is None or not all("propensity" in o for o in offers):
            continue
        x_logged = rows[1] if ctx is logged_ctx else featuriser.logged(logged_ctx)[1]
        decisions.append((decision_id, k, offers, ctx["candidates"], rows, x_logged))
    n = len(decisions)
    m = max((len(d[3]) for d in decisions), default=1)
    k = max((d[1] for d in decisions), default=1)
    served = np.full((n, k), -1)
    propensity = np.ones((n, k))
    reward = np.zeros((n, k))
    target = np.zeros((n, m, k))
    predicted = np.zeros((n, m))
    values = np.zeros((n, m))
    for i, (decision_id, k_i, offers, cands, (arms, x), x_logged) in enumerate(decisions):
        value = np.array([c["value"] for c in cands])
        base = None if cfg is None else unprompted(cfg, cands)  # the candidate's arbitration (bandit.yaml)
        probs = slot_propensities(posterior, x, value, k_i, explore_share, rng, samples, uniform_share, base)
        target[i, :len(arms), :probs.shape[1]] = probs
        predicted[i, :len(arms)] = sigmoid(x_logged @ reward_model.mean) * value
        values[i, :len(arms)] = value
        for o in offers:
            j, c = o["rank"] - 1, arms.index(o["product_id"])
            served[i, j], propensity[i, j] = c, o["propensity"]
            reward[i, j] = rewards.get((decision_id, o["product_id"]), 0.0) * value[c]
    return Logged(served, propensity, reward, tuple(d[0] for d in decisions), values), target, predicted


def evaluate(paths, explore_share: float = 0.0, model: str | None = None) -> dict:
    """Off-policy value of a candidate policy on `paths.events_db`: the current posterior at
    `explore_share`, scoring with the champion's logged probabilities or, with `model` (an alias
    such as `challenger`, or a version number), that nbp model's rescored ones.

    Raises:
        FileNotFoundError: no decision log.
        LookupError: no saved policy state, no such model, or nothing to evaluate (the message says which).
    """
    from nextbest.config import load_bandit, load_catalogue
    from nextbest.constants import NBP_MODEL_NAME
    from nextbest.serving.bandit import Featuriser, Posterior

    if not paths.events_db.exists():
        raise FileNotFoundError(f"{paths.events_db}: no decision log yet; serve and answer some requests first")
    catalogue = load_catalogue()
    cfg = load_bandit(catalogue=catalogue)
    featuriser = Featuriser.for_catalogue(catalogue, cfg.actions)
    with EventLogReader(paths.events_db) as log:  # read-only: never writes to the live log
        saved = log.policy(cfg.policy, featuriser.signature)
    if saved is None:
        raise LookupError(f"{paths.events_db}: no saved state of policy {cfg.policy!r} to evaluate")
    posterior = Posterior(saved.mean, saved.cov, saved.n_updates)
    rescorer = None
    if model is not None:
        from nextbest.monitoring.rescore import model_rescorer

        rescorer = model_rescorer(paths, NBP_MODEL_NAME, model)
    logged, target, predicted = from_event_log(paths.events_db, posterior, featuriser, explore_share,
                                               cfg.propensity_samples, cfg.seed, rescorer=rescorer,
                                               uniform_share=cfg.uniform_share, cfg=cfg)
    if len(logged.served) == 0:
        raise LookupError("no logged decision with offers and propensities to evaluate")
    return {"policy": cfg.policy, "explore_share": explore_share, "updates": saved.n_updates,
            "model": None if rescorer is None else {"name": rescorer.name, "version": rescorer.version,
                                                     "requested": model},
            "decisions": int(len(logged.served)), "logged_value": float(logged.reward.sum(1).mean()),
            **estimate_all(logged, target, predicted)}


def ope_section(paths, config, out_dir) -> tuple[str, dict, None]:
    """The monitor's off-policy section: the current posterior without exploration (and the
    `challenger` nbp model when one is registered) against the logged policy, into `ope.json`."""
    results = {}
    for label, model in (("current_posterior_no_exploration", None), ("challenger_no_exploration", "challenger")):
        try:
            results[label] = evaluate(paths, 0.0, model)
        except (FileNotFoundError, LookupError) as exc:
            results[label] = {"status": str(exc)}
    from nextbest.io import write_json

    write_json(out_dir / "ope.json", results)
    return "ope", results, None
