"""Re-scoring logged decisions with another model, for off-policy evaluation of a challenger.

A decision logs its candidates with the champion's probabilities, not the customer's features.
The features it was served with are the latest feature snapshot at the decision's time (the online
store holds exactly that), so they are rebuilt point-in-time from the feature tables; the log's
pseudonyms are matched by pseudonymising the tables' customer ids with the work dir's key.
Rescoring with the champion itself reproduces the logged probabilities (tested), which checks the
join.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.settings import Paths


@dataclass(frozen=True)
class Rescorer:
    """P(acquire) per product for (pseudonym, decision time) pairs, from one registered model."""

    name: str
    version: str
    products: list[str]
    score: Callable[[list[str], np.ndarray], np.ndarray]  # (pseudonyms, epoch seconds) -> (n, products), NaN if unknown


def model_rescorer(paths: Paths, name: str, alias_or_version: str) -> Rescorer:
    """Loads `name@alias` (or a version number) and the feature tables it reads.

    Raises:
        LookupError: the model, alias or version is not registered.
        FileNotFoundError: a feature table is missing (the message names it).
    """
    from nextbest.training.models import from_checkpoint, predict_proba
    from nextbest.training.registry import fetch_alias, fetch_version

    if alias_or_version.isdigit():
        registered = fetch_version(paths, name, alias_or_version)
    else:
        registered = fetch_alias(paths, name, alias_or_version)
    model, meta = from_checkpoint(registered.local_dir)
    table = feature_snapshots(paths, set(meta.preprocessor.numeric) | set(meta.preprocessor.categorical))

    def score(who: list[str], at: np.ndarray) -> np.ndarray:
        joined = snapshot_at(table, who, at)
        out = np.full((len(who), len(meta.outputs)), np.nan)
        found = joined[CUSTOMER_ID].notna().to_numpy()
        if found.any():
            out[np.flatnonzero(found)] = predict_proba(model, meta, joined[found].reset_index(drop=True))
        return out

    return Rescorer(name, registered.version, list(meta.outputs), score)


def feature_snapshots(paths: Paths, needed: set[str]) -> pd.DataFrame:
    """The feature tables' `needed` columns, one row per customer and snapshot, with each customer's
    pseudonym (`_pseudonym`, the work dir's key) and the snapshot time (`_at`, epoch seconds), sorted by time.

    Raises:
        FileNotFoundError: a feature table is missing (the message names it).
    """
    import pyarrow.parquet as pq

    from nextbest.features.build import ACTIVITY_VIEW, HOLDINGS_VIEW, PROFILE_VIEW, SEGMENTS_VIEW
    from nextbest.serving.privacy import load_key, pseudonymise

    table = None
    for view in (PROFILE_VIEW, HOLDINGS_VIEW, ACTIVITY_VIEW, SEGMENTS_VIEW):
        path = paths.features / f"{view}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: feature table not found; run `nextbest features build`")
        columns = [c for c in pq.read_schema(path).names if c in needed or c in (CUSTOMER_ID, EVENT_TIMESTAMP)]
        frame = pd.read_parquet(path, columns=columns)
        table = frame if table is None else table.merge(frame, on=[CUSTOMER_ID, EVENT_TIMESTAMP], how="outer",
                                                        suffixes=("", f"__{view}"))
    if needed - set(table.columns):  # the bank's own tables, as the model's service reads them
        from nextbest.monitoring.inputs import with_bank_tables

        table = with_bank_tables(paths, table.reset_index(drop=True))
    key = load_key(paths.root)
    ids = table[CUSTOMER_ID].astype(str).unique()
    pseudonyms = dict(zip(ids, (pseudonymise(c, key) for c in ids)))
    table["_pseudonym"] = table[CUSTOMER_ID].astype(str).map(pseudonyms)
    table["_at"] = pd.to_datetime(table[EVENT_TIMESTAMP], utc=True).astype("int64") / 1e9
    return table.sort_values(["_at"]).reset_index(drop=True)


def snapshot_at(table: pd.DataFrame, who: list[str], at: np.ndarray) -> pd.DataFrame:
    """For each (pseudonym, time), the latest snapshot of `feature_snapshots` at or before it (what the
    online store served then): one row per query, in query order, NaN (and no customer id) where there
    is none. A query without a time (NaN) finds none."""
    query = pd.DataFrame({"_pseudonym": who, "_at": np.asarray(at, dtype=float), "_row": np.arange(len(who))})
    known = query[np.isfinite(query["_at"])]
    joined = pd.merge_asof(known.sort_values("_at"), table, on="_at", by="_pseudonym", direction="backward")
    return joined.set_index("_row").reindex(np.arange(len(who))).reset_index(drop=True)


def rescore_contexts(contexts: list[dict], pseudonyms: list[str], rescorer: Rescorer) -> tuple[list[dict], int]:
    """Copies of the logged contexts with product candidates' `base_prob` from `rescorer`.

    Actions (retention, payment help) keep their configured acceptance. Decisions whose customer
    the feature tables do not know (prospects) keep their logged probabilities.

    Returns:
        (the new contexts, how many decisions were rescored).
    """
    at = np.array([c.get("request", {}).get("at", np.nan) for c in contexts], dtype=float)
    probs = rescorer.score(pseudonyms, at)
    index = {p: j for j, p in enumerate(rescorer.products)}
    out, rescored = [], 0
    for ctx, row in zip(contexts, probs):
        if np.isnan(row).all():
            out.append(ctx)
            continue
        cands = [{**c, "base_prob": float(row[index[c["arm"]]])} if c["arm"] in index else c
                 for c in ctx.get("candidates") or []]
        out.append({**ctx, "candidates": cands})
        rescored += 1
    return out, rescored
