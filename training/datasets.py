"""Labels, entity frames and chronological splits (pure), plus the Feast training-set pull.

Labels come from the holdings snapshots: a product is *acquired* at month t if it is held at
t+1 and not at t; a client *churns* if they hold products at t and none at some month in
t+1..t+horizon. Features come from Feast by FeatureService, point-in-time at t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.features.build import MonthGrid, month_grid

LABEL_PREFIX = "label_"


def nbp_labels(customers: pd.DataFrame, holdings: pd.DataFrame, interactions: pd.DataFrame,
               products: list[str]) -> pd.DataFrame:
    """One row per client-month with a known next month: `label_<product>` = acquired next month.

    Returns:
        Entity frame: `customer_id`, `event_timestamp` (UTC month end), `label_<product>` (int8).
    """
    return grid_nbp_labels(month_grid(customers, holdings, interactions, products), products)


def grid_nbp_labels(grid: MonthGrid, products: list[str]) -> pd.DataFrame:
    """`nbp_labels` of a bank's month grid (`training.grid.read_grid` reads one from the raw files)."""
    held = grid.held
    acquired = held[:, 1:] & ~held[:, :-1]  # [n_customers, n_months - 1, n_products]
    client = held[:, :-1].any(2)
    c, m = np.nonzero(client)
    out = pd.DataFrame({CUSTOMER_ID: grid.customers.values[c],
                        EVENT_TIMESTAMP: pd.to_datetime(grid.months.values[m]).tz_localize("UTC")})
    labels = acquired[c, m].astype(np.int8)
    for j, p in enumerate(products):
        out[f"{LABEL_PREFIX}{p}"] = labels[:, j]
    return out


def churn_labels(customers: pd.DataFrame, holdings: pd.DataFrame, interactions: pd.DataFrame,
                 products: list[str], horizon: int = 3, closed: list[str] | None = None) -> pd.DataFrame:
    """One row per client-month with `horizon` months observed after it: `label_churn` (int8).

    By default a client churns when they hold no product in one of the next `horizon` months. With
    `closed` (products; empty for any), the rows are clients holding one of those products, and one
    churns when a product of those they hold is no longer held in one of the next `horizon` months.
    """
    return grid_churn_labels(month_grid(customers, holdings, interactions, products), products, horizon, closed)


def grid_churn_labels(grid: MonthGrid, products: list[str], horizon: int = 3,
                      closed: list[str] | None = None) -> pd.DataFrame:
    """`churn_labels` of a bank's month grid."""
    if closed is None:
        watched = None
        client = grid.held.any(2)  # [n_customers, n_months]
    else:
        cols = [products.index(p) for p in closed] if closed else list(range(len(products)))
        watched = grid.held[:, :, cols]  # [n_customers, n_months, n_watched]
        client = watched.any(2)
    n_months = client.shape[1]
    rows_c, rows_m, labels = [], [], []
    for m in range(n_months - horizon):
        c = np.flatnonzero(client[:, m])
        if watched is None:
            gone = (~client[c, m + 1:m + 1 + horizon]).any(1)
        else:  # a product held now is missing in some month of the horizon
            now = watched[c, m][:, None, :]
            gone = (now & ~watched[c, m + 1:m + 1 + horizon]).any((1, 2))
        rows_c.append(c)
        rows_m.append(np.full(len(c), m))
        labels.append(gone)
    c = np.concatenate(rows_c) if rows_c else np.array([], int)
    m = np.concatenate(rows_m) if rows_m else np.array([], int)
    return pd.DataFrame({
        CUSTOMER_ID: grid.customers.values[c],
        EVENT_TIMESTAMP: pd.to_datetime(grid.months.values[m]).tz_localize("UTC"),
        f"{LABEL_PREFIX}churn": (np.concatenate(labels) if labels else np.array([], bool)).astype(np.int8),
    })


class LabelError(ValueError):
    """The labels cannot train or measure a model (too few snapshots, one class, too few positives)."""


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    kind: str = "chronological"  # or "random": too few snapshots for a split by time

    @property
    def months(self) -> dict[str, list[str]]:
        return {name: sorted(set(_day_text(df[EVENT_TIMESTAMP])))
                for name, df in (("train", self.train), ("val", self.val), ("test", self.test))}


def chrono_split(df: pd.DataFrame, val_months: int = 1, test_months: int = 1,
                 time_col: str = EVENT_TIMESTAMP) -> Split:
    """Splits by time: the last `test_months` snapshots are test, the ones before validation.

    Raises:
        ValueError: fewer than `val_months + test_months + 1` distinct snapshots.
    """
    months = np.sort(df[time_col].unique())
    need = val_months + test_months + 1
    if len(months) < need:
        held = ", ".join(pd.to_datetime(months).strftime("%Y-%m-%d")) or "none"
        raise LabelError(f"the training set has {len(months)} snapshot(s) with labels ({held}); a chronological "
                         f"split needs at least {need} (training, {val_months} validation, {test_months} test). A "
                         "snapshot has a label once the months after it are in raw/holdings.parquet: load more "
                         "monthly snapshots of the bank (with the synthetic bank: --months)")
    test_start = months[-test_months]
    val_start = months[-(test_months + val_months)]
    t = df[time_col]
    return Split(df[t < val_start].reset_index(drop=True),
                 df[(t >= val_start) & (t < test_start)].reset_index(drop=True),
                 df[t >= test_start].reset_index(drop=True))


RANDOM_SHARES = (0.15, 0.15)  # validation and test shares of the customers in a random split


def training_split(df: pd.DataFrame, val_months: int = 1, test_months: int = 1, seed: int = 42) -> Split:
    """The chronological split when the labels span enough snapshots, else a random split by customer
    (`random_split`): a one-off extract with a label can still train, and says so (`Split.kind`)."""
    if df[EVENT_TIMESTAMP].nunique() >= val_months + test_months + 1:
        return chrono_split(df, val_months, test_months)
    return random_split(df, seed)


def random_split(df: pd.DataFrame, seed: int = 42, shares: tuple[float, float] = RANDOM_SHARES) -> Split:
    """Customers into validation and test (shares), the rest training, stratified by whether the customer
    has any positive label; all of a customer's rows go to one side.

    Within each class, customers are ordered by a hash of their id and the seed, and the first ones go
    to test, then validation: a customer keeps their side when others are added or removed (only those
    at a boundary move), so a champion is not scored on customers it was trained on.
    """
    if df.empty:
        raise LabelError("the training set has no labelled rows")
    labels = label_columns(df)
    positive = (df[labels].to_numpy(dtype=float).max(1) > 0) if labels else np.zeros(len(df), bool)
    per_customer = pd.Series(positive, index=df[CUSTOMER_ID].astype(str).to_numpy()).groupby(level=0).max()
    ids = per_customer.index.to_numpy(dtype=object)
    draw = pd.util.hash_array(ids, hash_key=f"{seed:016d}"[-16:])
    side = pd.Series("train", index=per_customer.index, dtype=object)
    for value in (False, True):
        members = np.flatnonzero(per_customer.to_numpy() == value)
        ordered = ids[members[np.lexsort((ids[members].astype(str), draw[members]))]]
        n_val, n_test = (int(round(len(ordered) * share)) for share in shares)
        side[ordered[:n_test]] = "test"
        side[ordered[n_test:n_test + n_val]] = "val"
    where = side.reindex(df[CUSTOMER_ID].astype(str).to_numpy()).to_numpy()
    parts = [df[where == name].reset_index(drop=True) for name in ("train", "val", "test")]
    return Split(*parts, kind="random")


def check_labels(split: Split, task: str, min_positives: int = 10, definition: str | None = None) -> None:
    """Stops before training when a window's labels cannot train or measure a model.

    Raises:
        LabelError: a window with one class only, or a training or test window with fewer than
            `min_positives` positives; the message says what the data holds and what to change.
    """
    key = task if task == "nbp" else f"{task}:{definition or 'holds_nothing'}"
    what = {"churn:holds_nothing": "clients who hold nothing within the horizon (churn)",
            "churn:product_closed": "clients who close a watched product within the horizon (churn)",
            "churn:table": "churn as the bank's label table gives it",
            "response:offers": "accepted offers (campaign response)",
            "response:table": "responses as the bank's contact table gives them",
            "nbp": "acquisitions of a product not held (next best product)"}[key]
    advice = {"churn:holds_nothing": "The churn label is derived from raw/holdings.parquet: a client churns when "
                                     "they hold no product in one of the following months. A bank whose clients "
                                     "all keep a product, or a window too short to see them leave, cannot train "
                                     "it: load more months or more clients, or define churn otherwise (label in "
                                     "configs/churn.yaml: product_closed, or the bank's own label table).",
              "churn:product_closed": "The churn label is derived from raw/holdings.parquet: a client churns when a "
                                      "product of label.products that they hold is closed in one of the following "
                                      "months. Load more months or more clients, or watch other products.",
              "churn:table": "The labels come from label.table in configs/churn.yaml: give it more rows of both "
                             "classes in each window (by time, the last months are validation and test; with too "
                             "few months, customers drawn at random).",
              "response:offers": "The responses are read from raw/offers.parquet (response accept = 1): load a "
                                 "longer offer history, or the bank's own contacts (response in "
                                 "configs/campaign.yaml: definition table).",
              "response:table": "The responses come from response.table in configs/campaign.yaml: give it more "
                                "contacts of both outcomes in each window (by month of contact).",
              "nbp": "Acquisitions are read from raw/holdings.parquet: a product held this month and not the "
                     "month before. Load more months or more clients, or a bank whose holdings change."}[key]
    for name, df in (("training", split.train), ("validation", split.val), ("test", split.test)):
        cols = label_columns(df)
        positives, cells = int(sum(df[c].sum() for c in cols)), len(df) * len(cols)  # a column's sum skips NaN
        months = ", ".join(sorted(set(_day_text(df[EVENT_TIMESTAMP])))) or "none"
        needed = 1 if name == "validation" else min_positives
        if cells == 0 or positives == 0 or positives == cells or positives < needed:
            held = (f"{positives:,} positive(s) among {len(df):,} rows" if cells else "no rows")
            kind = ("only one class" if cells and positives in (0, cells) else
                    f"fewer than {needed} positives (min_positives in the task's config)")
            raise LabelError(f"{task} labels: the {name} window ({months}) has {held}: {kind}, so a model can be "
                             f"neither trained nor measured on {what}. {advice}")


def label_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(LABEL_PREFIX)]


def target_mask(df: pd.DataFrame, products: list[str], catalogue=None) -> np.ndarray:
    """Which (row, product) pairs the next-best-product model may predict and rank: 1.0 where the
    product is not held and, given the catalogue (a `nextbest.config.Catalogue`), the customer may
    take it: age within the product's range (an unknown age counts as within) and one of its
    `requires` held. The same eligibility rules serving applies before ranking
    (`nextbest.serving.decide.eligible_products`), so training, evaluation and serving rank the same set.

    Returns:
        float64 array [len(df), len(products)].
    """
    held = {p: df[f"held_{p}"].to_numpy(dtype=float) > 0 for p in products}
    mask = np.stack([~held[p] for p in products], axis=1) if products else np.zeros((len(df), 0), bool)
    if catalogue is not None:
        rules = {p.product_id: p.eligibility for p in catalogue.products}
        age = df["age"].to_numpy(dtype=float) if "age" in df.columns else np.full(len(df), np.nan)
        known = np.isfinite(age) & (age >= 0)
        for j, p in enumerate(products):
            e = rules.get(p)
            if e is None:
                continue
            mask[:, j] &= ~known | ((age >= e.min_age) & (age <= e.max_age))
            if e.requires:
                mask[:, j] &= np.any([held[r] if r in held else df[f"held_{r}"].to_numpy(dtype=float) > 0
                                      for r in e.requires], axis=0)
    return mask.astype(float)


@dataclass(frozen=True)
class Sample:
    """The labelled rows training keeps (`sample_split`), and how many there were."""

    entity: pd.DataFrame
    labelled: dict[str, int]  # window -> labelled rows before sampling
    kept: dict[str, int]  # window -> rows kept

    @property
    def sampled(self) -> bool:
        return self.kept != self.labelled


def _draw(df: pd.DataFrame, seed: int, by_month: bool) -> np.ndarray:
    """A uniform draw per row from a hash of the customer (and the month), salted by the seed: a row keeps
    its draw when other rows come or go, so the same data and seed always give the same sample."""
    key = df[CUSTOMER_ID].astype(str)
    if by_month:
        key = key + "|" + _day_text(df[EVENT_TIMESTAMP])
    return pd.util.hash_array(key.to_numpy(dtype=object), hash_key=f"{seed:016d}"[-16:])


def _day_text(times: pd.Series) -> np.ndarray:
    """Each timestamp's date as YYYY-MM-DD text, formatting each distinct value once (a bank's labels hold
    millions of rows and a handful of months)."""
    codes, distinct = pd.factorize(times, use_na_sentinel=False)
    text = pd.to_datetime(pd.Series(distinct)).dt.strftime("%Y-%m-%d").to_numpy(dtype=object)
    return text[codes]


def _first(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    if limit is None or len(df) <= limit:
        return df
    keep = np.argsort(_draw(df, seed, True), kind="stable")[:limit]
    return df.iloc[np.sort(keep)]


def sample_split(split: Split, max_train: int | None, max_eval: int | None, seed: int = 42) -> Sample:
    """At most `max_train` training rows and `max_eval` rows each of validation and test, drawn at random
    (seeded) before the features are joined, so a large bank's training set stays within memory and time.

    Rows are drawn by customer-month, so the sample still spans every month of each window. A random
    split (too few snapshots) is drawn afresh on what is kept, so there whole customers are drawn, at
    most `max_train + 2 * max_eval` rows of them, in the order of a hash of their id: a customer never
    crosses from training to test.
    """
    parts = {"train": (split.train, max_train), "val": (split.val, max_eval), "test": (split.test, max_eval)}
    if split.kind == "chronological":
        kept = {name: _first(df, limit, seed) for name, (df, limit) in parts.items()}
        entity = pd.concat(list(kept.values()), ignore_index=True)
        return Sample(entity, {k: len(v[0]) for k, v in parts.items()}, {k: len(v) for k, v in kept.items()})
    df = pd.concat([split.train, split.val, split.test], ignore_index=True)
    if max_train is not None and max_eval is not None and len(df) > max_train + 2 * max_eval:
        customers = df[[CUSTOMER_ID]].drop_duplicates()
        order = customers.iloc[np.argsort(_draw(customers, seed, False), kind="stable")][CUSTOMER_ID]
        rows = df.groupby(CUSTOMER_ID, sort=False).size().reindex(order.to_numpy()).cumsum()
        df = df[df[CUSTOMER_ID].isin(rows.index[rows.to_numpy() <= max_train + 2 * max_eval])].reset_index(drop=True)
    return Sample(df, {"all": sum(len(v[0]) for v in parts.values())}, {"all": len(df)})
