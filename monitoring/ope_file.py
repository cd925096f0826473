"""Off-policy evaluation of any logged-bandit file: one row per action shown, with the decision it
belongs to (optional: else each row is a decision), its position among that decision's slots
(optional), the action, the probability that the logging policy put that action at that position
(the propensity: a marginal probability, not one conditional on the other positions' actions), the
reward, and context columns. Each position is a slot valued on its own.

Estimated per decision (sum over its slots), with 95% intervals, by the estimators of
`nextbest.monitoring.ope` (IPS, self-normalised IPS, doubly robust, DR with shrunk weights, the
direct method):
- `uniform`: every logged action equally likely in every slot;
- `logged`: the logging policy itself (IPS and SNIPS, whose weights are then 1, reproduce its observed
  mean reward: a check on the propensities);
- a policy given as a file of action probabilities: columns `action` and `probability`, and the
  decision column to give each decision its own (else one distribution for every decision), and
  the position column for one per slot.

The doubly robust reward model is LightGBM on the context and the action, cross-fitted over
decisions (a decision's prediction never comes from a model that saw its rewards).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.constants import DEFAULT_SEED
from nextbest.monitoring.ope import Logged, diagnostics, estimate_all, ips, snips
from nextbest.monitoring.uplift_file import plain, read_table
from nextbest.schema import SchemaError

SUM_TOLERANCE = 1e-3  # a policy's probabilities per decision and slot must sum to 1 within this


def _need(frame: pd.DataFrame, name: str | None, option: str, path: Path) -> None:
    if name is not None and name not in frame.columns:
        raise SchemaError(f"{path}: no column {name!r} ({option}); the file has {list(frame.columns)[:30]}")


def _numbers(frame: pd.DataFrame, name: str, what: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(frame[name], errors="coerce")
    bad = values.isna() | ~np.isfinite(values.fillna(0.0))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raw = frame[name].iloc[i]
        shown = "an empty value" if pd.isna(raw) else f"the value {plain(raw)!r}"
        raise SchemaError(f"{path}: column {name!r} ({what}) has {shown} (line {i + 2}); expected a number")
    return values.to_numpy(float)


def read_log(path: Path, action: str, propensity: str, reward: str, decision: str | None = None,
             position: str | None = None, frame: pd.DataFrame | None = None) -> tuple[Logged, dict]:
    """The file as `Logged` arrays over every logged action, and how it maps (actions, decisions, slots).

    Raises:
        SchemaError: a missing column, a propensity outside (0, 1], a reward that is not a number, an
            empty action, a decision with two rows at one position.
    """
    frame = read_table(path) if frame is None else frame
    for name, option in ((action, "--action"), (propensity, "--propensity"), (reward, "--reward"),
                         (decision, "--decision"), (position, "--position")):
        _need(frame, name, option, path)
    if not len(frame):
        raise SchemaError(f"{path}: no rows")
    if frame[action].isna().any():
        i = int(np.flatnonzero(frame[action].isna().to_numpy())[0])
        raise SchemaError(f"{path}: column {action!r} (action) is empty on line {i + 2}")
    p = _numbers(frame, propensity, "propensity", path)
    outside = (p <= 0) | (p > 1)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise SchemaError(f"{path}: column {propensity!r} (propensity) has the value "
                          f"{plain(frame[propensity].iloc[i])!r} "
                          f"(line {i + 2}); a propensity is a probability in (0, 1]")
    r = _numbers(frame, reward, "reward", path)
    actions = sorted(frame[action].astype(str).unique().tolist())
    act = frame[action].astype(str).map({a: j for j, a in enumerate(actions)}).to_numpy(int)
    keys = frame[decision].astype(str) if decision else pd.Series(np.arange(len(frame)).astype(str))
    ids, dec = np.unique(keys.to_numpy(), return_inverse=True)
    slots = sorted(frame[position].astype(str).unique().tolist()) if position else ["1"]
    pos = frame[position].astype(str).map({s: j for j, s in enumerate(slots)}).to_numpy(int) if position \
        else np.zeros(len(frame), dtype=int)
    seen = pd.Series(dec * len(slots) + pos)
    twice = seen.duplicated()
    if twice.any():
        i = int(np.flatnonzero(twice.to_numpy())[0])
        raise SchemaError(f"{path}: decision {keys.iloc[i]!r} has two rows at position "
                          f"{slots[pos[i]]!r} (line {i + 2}); one action per decision and position")
    n, k = len(ids), len(slots)
    served = np.full((n, k), -1)
    prop = np.ones((n, k))
    rew = np.zeros((n, k))
    served[dec, pos], prop[dec, pos], rew[dec, pos] = act, p, r
    return Logged(served, prop, rew, tuple(ids.tolist())), {
        "actions": actions, "decision_ids": ids, "slots": slots, "row_decision": dec}


def read_policy(path: Path, actions: list[str], slots: list[str], decision_ids: np.ndarray, decision: str | None,
                position: str | None, log_path: Path) -> np.ndarray:
    """A policy file as target probabilities (n decisions, m actions, k slots).

    Raises:
        SchemaError: missing columns, an action the log never shows, probabilities outside [0, 1] or
            not summing to 1, a decision the log does not have.
    """
    frame = read_table(path)
    for name, option in (("action", "policy file"), ("probability", "policy file")):
        _need(frame, name, option, path)
    by_decision = decision is not None and decision in frame.columns
    by_slot = position is not None and position in frame.columns
    names = frame["action"].astype(str)
    unknown = ~names.isin(actions)
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        raise SchemaError(f"{path}: column 'action' has {names.iloc[i]!r} (line {i + 2}), an action {log_path} never "
                          f"logged: nothing can be learned about it from the log (logged: {actions[:20]})")
    prob = _numbers(frame, "probability", "probability", path)
    if ((prob < 0) | (prob > 1)).any():
        i = int(np.flatnonzero((prob < 0) | (prob > 1))[0])
        raise SchemaError(f"{path}: column 'probability' has {plain(prob[i])!r} (line {i + 2}); expected a "
                          "probability")
    n, m, k = len(decision_ids), len(actions), len(slots)
    a = names.map({x: j for j, x in enumerate(actions)}).to_numpy(int)
    s = frame[position].astype(str).map({x: j for j, x in enumerate(slots)}) if by_slot else None
    if s is not None and s.isna().any():
        i = int(np.flatnonzero(s.isna().to_numpy())[0])
        raise SchemaError(f"{path}: column {position!r} has {plain(frame[position].iloc[i])!r} (line {i + 2}), a "
                          f"position the log does not have ({slots})")
    if by_decision:
        index = {d: i for i, d in enumerate(decision_ids.tolist())}
        d = frame[decision].astype(str).map(index)
        if d.isna().any():
            i = int(np.flatnonzero(d.isna().to_numpy())[0])
            raise SchemaError(f"{path}: decision {plain(frame[decision].iloc[i])!r} (line {i + 2}) is not in "
                              f"{log_path}")
        target = np.zeros((n, m, k))
        if s is None:
            for j in range(k):
                np.add.at(target[:, :, j], (d.to_numpy(int), a), prob)
        else:
            np.add.at(target, (d.to_numpy(int), a, s.to_numpy(int)), prob)
        missing = np.flatnonzero(np.abs(target.sum(1) - 1).max(1) > SUM_TOLERANCE)
        if len(missing):
            raise SchemaError(f"{path}: the probabilities of decision {decision_ids[missing[0]]!r} sum to "
                              f"{target[missing[0]].sum(0).round(4).tolist()} over its slots, not 1 (every decision "
                              "of the log needs its probabilities)")
        return target
    one = np.zeros((m, k))
    if s is None:
        for j in range(k):
            np.add.at(one[:, j], a, prob)
    else:
        np.add.at(one, (a, s.to_numpy(int)), prob)
    bad = np.flatnonzero(np.abs(one.sum(0) - 1) > SUM_TOLERANCE)
    if len(bad):
        raise SchemaError(f"{path}: the probabilities sum to {one.sum(0)[bad[0]]:.4f} at position {slots[bad[0]]!r}, "
                          "not 1")
    return np.broadcast_to(one, (n, m, k)).copy()


def reward_model(frame: pd.DataFrame, context: list[str], meta: dict, logged: Logged, seed: int = DEFAULT_SEED,
                 folds: int = 3) -> tuple[np.ndarray, list[str], dict]:
    """Cross-fitted predicted reward of every action for every decision, (n, m), from the context
    of the decision's first row and the action."""
    import lightgbm as lgb

    from nextbest.training.uplift import design

    first = pd.Series(np.arange(len(frame))).groupby(meta["row_decision"]).first().to_numpy()  # by decision
    ctx = design(frame.iloc[first].reset_index(drop=True), context)
    n, m = len(meta["decision_ids"]), len(meta["actions"])
    fold = np.random.default_rng(seed).permutation(np.arange(n) % folds)
    dd, jj = np.nonzero(logged.served >= 0)  # every logged row: its decision, slot, action and reward
    rows_rew = logged.reward[dd, jj]
    x_rows = np.column_stack([ctx.x[dd], logged.served[dd, jj].astype(np.float32)])
    cats = [*ctx.categorical, ctx.x.shape[1]]
    params = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 50,
              "lambda_l2": 10.0, "verbose": -1, "seed": seed, "num_threads": 2, "deterministic": True,
              "force_row_wise": True}
    predicted = np.zeros((n, m))
    for f in range(folds):
        train = fold[dd] != f
        held = np.flatnonzero(fold == f)
        if not len(held):
            continue
        if train.sum() < 50 or np.ptp(rows_rew[train]) == 0:
            predicted[held] = rows_rew[train].mean() if train.any() else 0.0
            continue
        booster = lgb.train(params, lgb.Dataset(x_rows[train], rows_rew[train], categorical_feature=cats),
                            num_boost_round=150)
        for a in range(m):
            predicted[held, a] = booster.predict(np.column_stack([ctx.x[held], np.full(len(held), a, np.float32)]))
    return predicted, ctx.names, ctx.dropped


def evaluate_file(path: Path, action: str, propensity: str, reward: str, decision: str | None = None,
                  position: str | None = None, context: list[str] | None = None,
                  policy: Path | None = None) -> dict:
    """Values per decision of the uniform, logged and (given a policy file) that policy, on the file."""
    started = time.perf_counter()
    path = Path(path)
    frame = read_table(path)
    logged, meta = read_log(path, action, propensity, reward, decision, position, frame=frame)
    for c in context or []:
        _need(frame, c, "--context", path)
    used = context if context is not None else [c for c in frame.columns
                                                if c not in {action, propensity, reward, decision, position}]
    predicted, features, dropped = reward_model(frame, used, meta, logged)
    n, k = logged.served.shape
    m = len(meta["actions"])
    filled = logged.served >= 0
    observed = logged.reward.sum(1)
    targets = {"uniform": np.full((n, m, k), 1.0 / m)}
    if policy is not None:
        targets[f"policy {Path(policy).name}"] = read_policy(Path(policy), meta["actions"], meta["slots"],
                                                             meta["decision_ids"], decision, position, path)
    se = float(observed.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    # A decision is valued over the slots it had: a target fills no slot the log left empty.
    targets = {name: target * filled[:, None, :] for name, target in targets.items()}
    # The logged policy against itself: weights of 1, so IPS and SNIPS return what it earned (a check
    # on the propensities). DR would need its probabilities of the actions it did not show.
    own = Logged(logged.served, logged.propensity, logged.reward)
    mine = np.zeros((n, m, k))
    d, j = np.nonzero(filled)
    mine[d, logged.served[d, j], j] = logged.propensity[d, j]
    return {
        "source": str(path), "decisions": int(n), "rows": int(filled.sum()), "actions": meta["actions"],
        "positions": meta["slots"] if position else None, "context": features, "dropped": dropped,
        "logged_value": {"value": float(observed.mean()), "ci95": [float(observed.mean() - 1.959964 * se),
                                                                   float(observed.mean() + 1.959964 * se)]},
        "policies": {"logged": {"ips": ips(own, mine).as_dict(), "snips": snips(own, mine).as_dict(),
                                "diagnostics": diagnostics(own, mine)},
                     **{name: estimate_all(logged, target, predicted) for name, target in targets.items()}},
        "seconds": round(time.perf_counter() - started, 2),
    }
