"""Off-policy evaluation of a logged-bandit file: estimates whose intervals hold the true values of
the uniform policy and of a given policy, the logged policy's own value returned, several
positions, and bad files refused naming the column and value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextbest.monitoring.ope_file import evaluate_file
from nextbest.schema import SchemaError

ACTIONS = ["card", "loan", "savings", "insurance"]


def logged_file(n: int, seed: int = 3, positions: int = 1) -> tuple[pd.DataFrame, np.ndarray]:
    """A softmax logging policy over four offers, `positions` of them per decision (at most 2); reward =
    acceptance, which depends on age and offer.

    Returns:
        (the log, true P(accept) per decision and offer (n, 4)).
    """
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    income = rng.gamma(2.0, 1500.0, n)
    young = (age < 35).astype(float)
    accept = 1 / (1 + np.exp(-np.column_stack([-2 + young, -2.5 + 0.0003 * income, -1.5 - young,
                                               -3 + 0.03 * (age - 40)])))
    logits = np.column_stack([young, 0.5 * np.ones(n), 1 - young, np.zeros(n)])
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # The slate is drawn without replacement; what is logged is each action's marginal probability
    # of its position: P(a first) = p_a, P(a second) = sum over b != a of p_b p_a / (1 - p_b).
    second = np.stack([sum(prob[:, b] * prob[:, a] / (1 - prob[:, b]) for b in range(4) if b != a)
                       for a in range(4)], axis=1)
    marginal = [prob, second]
    rows = []
    for i in range(n):
        free = list(range(4))
        for slot in range(positions):
            q = prob[i, free] / prob[i, free].sum()
            pick = free[rng.choice(len(free), p=q)]
            rows.append((f"d{i}", slot + 1, age[i], income[i], ACTIONS[pick], marginal[slot][i, pick],
                         float(rng.random() < accept[i, pick])))
            free.remove(pick)
    return pd.DataFrame(rows, columns=["decision", "slot", "age", "income", "offer", "p", "accepted"]), accept


@pytest.fixture(scope="module")
def estimated(tmp_path_factory):
    log, accept = logged_file(20_000)
    root = tmp_path_factory.mktemp("ope")
    log.to_csv(root / "log.csv", index=False)
    # a policy that offers the best offer for the young and savings to everyone else, per decision
    best = np.where(log.age < 35, "card", "savings")
    pd.DataFrame({"decision": log.decision, "action": best, "probability": 1.0}).to_parquet(root / "policy.parquet")
    result = evaluate_file(root / "log.csv", "offer", "p", "accepted", decision="decision",
                           policy=root / "policy.parquet")
    truth_policy = np.where(log.age < 35, accept[:, 0], accept[:, 2]).mean()
    return result, accept.mean(1).mean(), truth_policy, log


def test_the_intervals_hold_the_true_values_of_the_uniform_and_the_given_policy(estimated):
    result, truth_uniform, truth_policy, log = estimated
    assert result["decisions"] == 20_000 and result["actions"] == sorted(ACTIONS)
    assert set(result["context"]) == {"age", "income"}
    for name, truth in (("uniform", truth_uniform), ("policy policy.parquet", truth_policy)):
        for est in ("ips", "snips", "dr"):
            low, high = result["policies"][name][est]["ci95"]
            assert low <= truth <= high, (name, est, low, truth, high)
    # DR's interval is the narrowest of the unbiased ones
    dr, ips = result["policies"]["uniform"]["dr"]["ci95"], result["policies"]["uniform"]["ips"]["ci95"]
    assert dr[1] - dr[0] < ips[1] - ips[0]


def test_the_logged_policy_is_valued_at_what_it_earned(estimated):
    result, _, _, log = estimated
    observed = log.accepted.mean()
    assert result["logged_value"]["value"] == pytest.approx(observed)
    assert result["policies"]["logged"]["ips"]["value"] == pytest.approx(observed)
    assert result["policies"]["logged"]["diagnostics"]["max_weight"] == pytest.approx(1.0)


def test_several_positions_are_valued_per_decision(tmp_path):
    log, accept = logged_file(8_000, seed=5, positions=2)
    log.to_parquet(tmp_path / "slates.parquet")
    result = evaluate_file(tmp_path / "slates.parquet", "offer", "p", "accepted", decision="decision",
                           position="slot", context=["age", "income"])
    assert result["positions"] == ["1", "2"] and result["rows"] == 16_000
    assert result["logged_value"]["value"] == pytest.approx(log.groupby("decision").accepted.sum().mean())
    truth = 2 * accept.mean()  # uniform in each of two slots (independently per slot)
    low, high = result["policies"]["uniform"]["dr"]["ci95"]
    assert low <= truth <= high


@pytest.mark.parametrize("change, kwargs, message", [
    (lambda t: t.assign(p=t.p.where(t.index != 4, 1.5)), {}, r"'p' \(propensity\) has the value 1.5 \(line 6\)"),
    (lambda t: t.assign(p=t.p.where(t.index != 4, 0.0)), {}, r"'p' \(propensity\) has the value 0.0 \(line 6\)"),
    (lambda t: t.assign(accepted=t.accepted.astype(object).where(t.index != 2, "yes!")), {},
     r"'accepted' \(reward\) has the value 'yes!' \(line 4\)"),
    (lambda t: t, {"position": "rank"}, r"no column 'rank' \(--position\)"),
    (lambda t: pd.concat([t, t.iloc[[0]]]), {}, r"decision 'd0' has two rows at position '1'"),
])
def test_a_bad_log_is_refused_naming_the_column_and_value(tmp_path, change, kwargs, message):
    log = change(logged_file(300)[0]).reset_index(drop=True)
    log.to_csv(tmp_path / "log.csv", index=False)
    with pytest.raises(SchemaError, match=message):
        evaluate_file(tmp_path / "log.csv", "offer", "p", "accepted", decision="decision", **kwargs)


@pytest.mark.parametrize("policy, message", [
    (pd.DataFrame({"action": ["card", "mortgage"], "probability": [0.5, 0.5]}),
     r"'mortgage' \(line 3\), an action .* never logged"),
    (pd.DataFrame({"action": ["card", "loan"], "probability": [0.5, 0.4]}), r"sum to 0.9000"),
    (pd.DataFrame({"action": ["card"], "probability": [1.2]}), r"'probability' has 1.2"),
])
def test_a_bad_policy_file_is_refused(tmp_path, policy, message):
    logged_file(300)[0].to_csv(tmp_path / "log.csv", index=False)
    policy.to_csv(tmp_path / "policy.csv", index=False)
    with pytest.raises(SchemaError, match=message):
        evaluate_file(tmp_path / "log.csv", "offer", "p", "accepted", decision="decision",
                      policy=tmp_path / "policy.csv")
