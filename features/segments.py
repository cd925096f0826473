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


def _month_keys(months) -> np.ndarray:
    """Snapshot dates (naive, tz-aware or Timestamps) as int64 nanoseconds since the epoch (UTC)."""
    return pd.DatetimeIndex(months).asi8


def margin_counts(margin: np.ndarray, months) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per month (ns since the epoch), the distinct positive yearly margins (as written, float32) and how many
    clients have each."""
    margin = np.asarray(margin, dtype=np.float32).astype(np.float64)
    months = _month_keys(months)
    out = {}
    for m in np.unique(months):
        values = margin[(months == m) & (margin > 0)]
        if len(values):
            out[int(m)] = np.unique(values, return_counts=True)
    return out


def tier_cuts(counts: list[dict], top_share: float) -> dict[int, float]:
    """The yearly margin from which a client is "top" in each month, over margins counted in parts."""
    merged: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for part in counts:
        for m, vc in part.items():
            merged.setdefault(m, []).append(vc)
    cuts = {}
    for m, parts in merged.items():
        values = np.concatenate([v for v, _ in parts])
        repeats = np.concatenate([c for _, c in parts])
        cuts[m] = float(np.quantile(np.repeat(values, repeats), 1 - top_share))
    return cuts


def apply_tiers(margin: np.ndarray, months, cuts: dict[int, float]) -> np.ndarray:
    """"top" where a client's yearly margin reaches its month's cut, else "rest"."""
    margin = np.asarray(margin, dtype=np.float32).astype(np.float64)
    cut = _cut_per_row(_month_keys(months), cuts)
    return np.where((margin > 0) & (margin >= cut), "top", "rest").astype(object)


def _cut_per_row(months: np.ndarray, cuts: dict[int, float]) -> np.ndarray:
    if not len(months):
        return np.zeros(0)
    distinct, inverse = np.unique(months, return_inverse=True)
    return np.array([cuts.get(int(m), np.inf) for m in distinct], dtype=np.float64)[inverse.reshape(-1)]


def value_tier(margin: np.ndarray, months, top_share: float) -> np.ndarray:
    """"top" for the `top_share` of clients with the highest yearly margin in each month, else "rest".

    Margins are ranked as written (float32), so a bank built in partitions gets the same tiers."""
    return apply_tiers(margin, months, tier_cuts([margin_counts(margin, months)], top_share))


def segment_frame(base: pd.DataFrame, cfg: SegmentsConfig, margin: np.ndarray,
                  value_tiers: bool = True) -> dict[str, np.ndarray]:
    """All segment columns for the rows of `base` (one customer-month per row)."""
    out: dict[str, np.ndarray] = {}
    for name, group in cfg.groups.items():
        out[name] = assign_group(base, name, group)
    for name, rule in cfg.needs.items():
        out[f"need_{name}"] = evaluate_rule(base, rule, where=f"need {name!r}").astype(np.int64)
    out["yearly_margin"] = margin.astype(np.float32)
    if value_tiers:
        out["value_tier"] = value_tier(out["yearly_margin"], base["event_timestamp"].to_numpy(),
                                       cfg.value_tier.top_share)
    return out
