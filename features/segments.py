"""Rule-based segments and lifecycle states (pure functions over feature frames and arrays)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nextbest.config import ConfigError, Rule, SegmentGroup, SegmentsConfig

LIFECYCLE_STATES = ("prospect", "new", "active", "dormant", "former")

_OPS = {
    "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
    "==": np.equal, "!=": np.not_equal,
}


def _check_features(rule: Rule, columns: pd.Index, where: str) -> None:
    missing = sorted(rule.features - set(columns))
    if missing:
        raise ConfigError(f"configs/segments.yaml: {where} rule {rule.name!r} uses unknown feature(s) {missing}")


def evaluate_rule(df: pd.DataFrame, rule: Rule, where: str = "") -> np.ndarray:
    """Boolean mask of the rows matching `rule` (missing values never match a condition)."""
    _check_features(rule, df.columns, where)

    def cond(c) -> np.ndarray:
        col = df[c.feature]
        if c.op == "in":
            values = c.value if isinstance(c.value, list) else [c.value]
            return col.isin(values).to_numpy()
        with np.errstate(invalid="ignore"):
            return np.asarray(_OPS[c.op](col.to_numpy(), c.value), dtype=bool) & col.notna().to_numpy()

    mask = np.ones(len(df), dtype=bool)
    for c in rule.all:
        mask &= cond(c)
    if rule.any:
        mask &= np.logical_or.reduce([cond(c) for c in rule.any])
    return mask


def assign_group(df: pd.DataFrame, name: str, group: SegmentGroup) -> np.ndarray:
    """Segment label per row: the first matching rule's name, else the group's default."""
    out = np.full(len(df), group.default, dtype=object)
    free = np.ones(len(df), dtype=bool)
    for rule in group.rules:
        hit = evaluate_rule(df, rule, where=f"group {name!r}") & free
        out[hit] = rule.name
        free &= ~hit
    return out


def lifecycle_states(held: np.ndarray, active: np.ndarray, known: np.ndarray, new_months: int,
                     dormant_months: int) -> np.ndarray:
    """Lifecycle state per customer-month.

    Args:
        held: bool [n_customers, n_months, n_products], products held at each snapshot.
        active: bool [n_customers, n_months], any login or transaction in that month.
        known: bool [n_customers, n_months], the customer is known to the bank by then.
        new_months: a client whose first product is younger than this is "new".
        dormant_months: a client with no activity for this many months is "dormant".

    Returns:
        object array [n_customers, n_months] of LIFECYCLE_STATES ("" where not known).
    """
    client = held.any(2)
    n_months = client.shape[1]
    ever = np.logical_or.accumulate(client, axis=1)
    idx = np.arange(n_months)[None, :]
    first = np.where(ever, np.argmax(client, axis=1)[:, None], n_months)
    # Activity over the last `dormant_months` months, the current one included.
    c = np.cumsum(np.pad(active.astype(np.int32), ((0, 0), (1, 0))), axis=1)
    recent = c[:, 1:] - c[:, np.maximum(np.arange(1, n_months + 1) - dormant_months, 0)]
    # A customer seen from the first snapshot has an unknown start: "new" only if observed joining.
    observed_start = first > 0
    state = np.full(client.shape, "", dtype=object)
    state[known] = "prospect"
    state[ever & ~client] = "former"
    state[client] = "active"
    state[client & (recent == 0) & (idx >= dormant_months - 1)] = "dormant"
    state[client & observed_start & (idx - first < new_months)] = "new"
    return state


def value_tier(margin: np.ndarray, months: np.ndarray, top_share: float) -> np.ndarray:
    """"top" for the `top_share` of clients with the highest yearly margin in each month, else "rest"."""
    out = np.full(len(margin), "rest", dtype=object)
    for m in np.unique(months):
        rows = np.flatnonzero((months == m) & (margin > 0))
        if len(rows):
            cut = np.quantile(margin[rows], 1 - top_share)
            out[rows[margin[rows] >= cut]] = "top"
    return out


def segment_frame(base: pd.DataFrame, cfg: SegmentsConfig, margin: np.ndarray) -> dict[str, np.ndarray]:
    """All segment columns for the rows of `base` (one customer-month per row)."""
    out: dict[str, np.ndarray] = {}
    for name, group in cfg.groups.items():
        out[name] = assign_group(base, name, group)
    for name, rule in cfg.needs.items():
        out[f"need_{name}"] = evaluate_rule(base, rule, where=f"need {name!r}").astype(np.int64)
    out["yearly_margin"] = margin.astype(np.float32)
    out["value_tier"] = value_tier(margin, base["event_timestamp"].to_numpy(), cfg.value_tier.top_share)
    return out
