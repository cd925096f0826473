"""Churn labels as the bank defines them (`churn_entity`), and the bank's own label table: `customer_id`,
`snapshot_date` and `label` (0 or 1).

Each label is joined with the features of the latest bank snapshot at or before its date (what the
bank knew then), so a row dated mid-month learns from the month end before it. Rows whose customer
is not in `raw/customers.parquet`, or dated before the first snapshot or more than 31 days after
the last, cannot be joined: they are counted, reported and left out. Anything that cannot be read
as a label is an error naming the file, column, row and value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, SNAPSHOT_DATE
from nextbest.features.build import MonthGrid
from nextbest.features.adapters.canonical import convert_column, csv_chunks
from nextbest.schema import SchemaError
from nextbest.training.datasets import LABEL_PREFIX, grid_churn_labels

COLUMNS = {CUSTOMER_ID: "str", SNAPSHOT_DATE: "datetime", "label": "bool"}
STALE_AFTER = pd.Timedelta(days=31)  # the feature views' TTL: a label later than this sees no features


def read_label_table(path: Path, customers: pd.Series, snapshots: pd.DatetimeIndex,
                     report: Callable[[str], None] = print) -> pd.DataFrame:
    """The label table as an entity frame: `customer_id`, `event_timestamp` (the snapshot whose features
    each label sees, UTC) and `label_churn` (int8).

    Raises:
        SchemaError: the file is missing or unreadable, a column is missing, a value cannot be read, a
            (customer, date) repeats, two rows fall on one customer's snapshot, or no row can be joined.
    """
    raw = read_table_file(path)
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise SchemaError(f"{path}: missing column(s) {missing}; a label table has {list(COLUMNS)} "
                          f"(found {list(raw.columns)})")
    df = pd.DataFrame({c: convert_column(raw[c], kind, str(path), c, 0) for c, kind in COLUMNS.items()})
    for c in COLUMNS:
        empty = df[c].isna().to_numpy()
        if empty.any():
            i = int(np.argmax(empty))
            raise SchemaError(f"{path}: column '{c}', row {i}: empty value (every label row needs {list(COLUMNS)})")
    repeated = df.duplicated([CUSTOMER_ID, SNAPSHOT_DATE]).to_numpy()
    if repeated.any():
        i = int(np.argmax(repeated))
        raise SchemaError(f"{path}: row {i} repeats customer_id {df[CUSTOMER_ID].iloc[i]!r} at snapshot_date "
                          f"{df[SNAPSHOT_DATE].iloc[i].date()}: one label per customer and date")
    known = df[CUSTOMER_ID].isin(set(customers.astype(str))).to_numpy()
    months = pd.DatetimeIndex(snapshots).sort_values()
    dates = df[SNAPSHOT_DATE].to_numpy(dtype="datetime64[ns]")
    at = np.searchsorted(months.values, dates, side="right") - 1
    early = at < 0
    # Past the last snapshot by more than a month, the features it would learn from are stale.
    late = dates > (months[-1] + STALE_AFTER).to_datetime64() if len(months) else early
    first, last = (months[0].date(), months[-1].date()) if len(months) else ("none", "none")
    for count, why, mask in ((int((~known).sum()), "name customers not in raw/customers.parquet", ~known),
                             (int((known & early).sum()), f"are dated before the bank's first snapshot ({first})",
                              known & early),
                             (int((known & late).sum()), f"are dated more than {STALE_AFTER.days} days after the "
                                                         f"bank's last snapshot ({last})", known & late)):
        if count:
            i = int(np.argmax(mask))
            report(f"{path}: {count:,} of {len(df):,} label rows {why}: left out (first: row {i}, customer_id "
                   f"{df[CUSTOMER_ID].iloc[i]!r}, snapshot_date {df[SNAPSHOT_DATE].iloc[i].date()})")
    keep = known & ~early & ~late
    if not keep.any():
        raise SchemaError(f"{path}: none of its {len(df):,} label rows names a customer of the bank at or after its "
                          "first snapshot, so there is nothing to train on")
    out = pd.DataFrame({CUSTOMER_ID: df[CUSTOMER_ID].to_numpy()[keep],
                        EVENT_TIMESTAMP: pd.DatetimeIndex(months.values[at[keep]]).tz_localize("UTC"),
                        f"{LABEL_PREFIX}churn": df["label"].to_numpy()[keep].astype(np.int8)})
    rows = np.flatnonzero(keep)
    clash = out.duplicated([CUSTOMER_ID, EVENT_TIMESTAMP]).to_numpy()
    if clash.any():
        i = int(rows[np.argmax(clash)])
        raise SchemaError(f"{path}: row {i} (customer_id {df[CUSTOMER_ID].iloc[i]!r}, snapshot_date "
                          f"{df[SNAPSHOT_DATE].iloc[i].date()}) falls on the same bank snapshot "
                          f"({out[EVENT_TIMESTAMP][clash].iloc[0].date()}) as an earlier row of that customer: one "
                          "label per customer and month")
    return out


def read_table_file(path: Path, named_by: str = "label.table in configs/churn.yaml",
                    what: str = "label table") -> pd.DataFrame:
    """A parquet or CSV table (`what`) as text and values, every problem a SchemaError naming the file (and
    `named_by`, the setting that points at it, when it is missing)."""
    if not path.exists():
        raise SchemaError(f"{path}: {what} not found ({named_by})")
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow's errors for a file that is not parquet
            raise SchemaError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    if path.name.endswith((".csv", ".csv.gz")):
        return pd.concat(list(csv_chunks(path, "utf-8", 500_000)), ignore_index=True)
    raise SchemaError(f"{path}: a {what} is a .parquet, .csv or .csv.gz file")


def churn_entity(grid: MonthGrid, products: list[str], cfg, stage: Callable[[str], None]) -> pd.DataFrame:
    """The churn labels as `label` in configs/churn.yaml defines them (`cfg`: the churn TrainConfig), for the
    bank whose month grid is `grid`."""
    label = cfg.label
    if label.definition == "table":
        from nextbest.config.training import label_table_path

        path = label_table_path(cfg)
        stage(f"labels (from {path})")  # the same stage as reading the raw tables before it
        return read_label_table(path, pd.Series(grid.customers), grid.months,
                                report=lambda line: stage(f"WARNING: {line}"))
    closed = label.products if label.definition == "product_closed" else None
    return grid_churn_labels(grid, products, cfg.horizon_months, closed=closed)
