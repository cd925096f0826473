"""What serving needs when the online store cannot answer: a local profile per customer and
segment popularity rankings (`<workdir>/fallback.db`, SQLite, customers keyed by pseudonym).

The same function (`profile_fields`) turns a row of online features into the rule inputs on
the normal path and builds this table from the latest feature snapshot, so the rules are the
same on both paths. The table is rebuilt whenever the feature tables are newer than it.
"""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.config import Catalogue, RulesConfig
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.features.build import ACTIVITY_VIEW, HOLDINGS_VIEW, POLICY_FEATURES, PROFILE_VIEW, SEGMENTS_VIEW
from nextbest.serving.privacy import private_file, pseudonymise

DAYS_PER_MONTH = 30.44
NEVER = 99  # months_since_* of something that never happened
_COLUMNS = ("pseudonym", "snapshot", "age", *POLICY_FEATURES, "held", "loan_months", "lifecycle", "segment",
            "customer_value", "engagement", "viewed")


def credit_products(catalogue: Catalogue, rules: RulesConfig) -> list[str]:
    cd = rules.credit_cooldown
    return [p.product_id for p in catalogue.products if p.category in cd.categories or p.product_id in cd.products]


def profile_fields(row: dict, catalogue: Catalogue, rules: RulesConfig) -> dict:
    """Rule inputs from one customer's features (online row or snapshot row); missing values stay None."""
    def num(name):
        v = row.get(name)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    held = [p for p in catalogue.ids if num(f"held_{p}")]
    loan = [num(f"months_since_acq_{p}") for p in credit_products(catalogue, rules)]
    loan = [m for m in loan if m is not None and m < NEVER]
    logins = (num("logins_app_30d") or 0.0) + (num("logins_web_30d") or 0.0)
    return {
        "age": num("age"),
        **{c: (None if num(c) is None else bool(num(c))) for c in POLICY_FEATURES},
        "held": held,
        "loan_months": min(loan) if loan else None,
        "lifecycle": row.get("lifecycle") or "prospect",
        "segment": row.get("relationship") or "prospect",
        "customer_value": num("yearly_margin") or 0.0,
        "engagement": math.log1p(logins),
        "viewed": [p for p in catalogue.ids if (num(f"views_{p}_30d") or 0) > 0],
    }


def segment_popularity(latest: pd.DataFrame, catalogue: Catalogue, months: int = 3) -> dict[str, dict[str, float]]:
    """Share of each segment's customers who acquired each product in the last `months` months.

    Args:
        latest: latest snapshot with `relationship` and `months_since_acq_<product>` columns.

    Returns:
        segment -> product -> rate, plus `*` for all customers.
    """
    acquired = np.column_stack([latest[f"months_since_acq_{p}"].to_numpy() < months for p in catalogue.ids])
    out = {"*": dict(zip(catalogue.ids, acquired.mean(0).round(6).tolist()))}
    for seg, rows in latest.groupby("relationship", observed=True).indices.items():
        out[str(seg)] = dict(zip(catalogue.ids, acquired[rows].mean(0).round(6).tolist()))
    return out


def latest_snapshot(features_dir: Path, columns=None) -> pd.DataFrame:
    """Every customer's row of the latest snapshot of the built feature views, joined (what the online
    store holds after `materialize`); only the latest month is kept while reading, batch by batch.

    Args:
        columns: which feature columns to keep: a set of names or a predicate on a name (None: all).
    """
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    keep_column = columns if callable(columns) else (lambda c: columns is None or c in columns)
    paths = [features_dir / f"{v}.parquet" for v in (PROFILE_VIEW, HOLDINGS_VIEW, ACTIVITY_VIEW, SEGMENTS_VIEW)]
    last = pq.read_table(paths[0], columns=[EVENT_TIMESTAMP]).column(0).to_pandas().max()
    out = None
    for path in paths:
        first = out is None
        wanted = [c for c in pq.read_schema(path).names
                  if c == CUSTOMER_ID or (c == EVENT_TIMESTAMP and first) or (c != EVENT_TIMESTAMP and keep_column(c))]
        table = ds.dataset(path).to_table(columns=wanted, filter=ds.field(EVENT_TIMESTAMP) == last)
        # Arrow's hash join: joining in pandas holds more copies of a million rows at once.
        out = table if first else out.join(table, keys=CUSTOMER_ID, join_type="left outer")
    return out.sort_by(CUSTOMER_ID).to_pandas()


def build(db_path: Path, features_dir: Path, catalogue: Catalogue, rules: RulesConfig, key: bytes) -> int:
    """Writes the fallback table from the latest feature snapshot (temp file, then rename). Returns rows."""
    import json

    latest = latest_snapshot(features_dir)
    snapshot = pd.Timestamp(latest[EVENT_TIMESTAMP].max()).timestamp()
    tmp = db_path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(private_file(tmp))
    try:
        conn.execute(f"CREATE TABLE profiles ({', '.join(_COLUMNS)}, PRIMARY KEY (pseudonym)) WITHOUT ROWID")
        conn.execute("CREATE TABLE popularity (segment TEXT PRIMARY KEY, rates TEXT NOT NULL)")
        rows = []
        for rec in latest.to_dict("records"):
            f = profile_fields(rec, catalogue, rules)
            rows.append((pseudonymise(rec[CUSTOMER_ID], key), snapshot, f["age"],
                         *[f[c] for c in POLICY_FEATURES], ",".join(f["held"]), f["loan_months"], f["lifecycle"],
                         f["segment"], f["customer_value"], f["engagement"], ",".join(f["viewed"])))
        conn.executemany(f"INSERT INTO profiles VALUES ({', '.join('?' * len(_COLUMNS))})", rows)
        conn.executemany("INSERT INTO popularity VALUES (?, ?)",
                         [(s, json.dumps(r)) for s, r in segment_popularity(latest, catalogue).items()])
        conn.commit()
    finally:
        conn.close()
    os.replace(tmp, db_path)
    return len(rows)


def is_stale(db_path: Path, features_dir: Path) -> bool:
    if not db_path.exists():
        return True
    newest = max((p.stat().st_mtime for p in features_dir.glob("*.parquet")), default=0.0)
    return newest > db_path.stat().st_mtime


class Fallback:
    """Read side of fallback.db (one connection, used under the service's lock-free single worker)."""

    def __init__(self, db_path: Path):
        import json
        import threading

        self._conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)
        self._lock = threading.Lock()
        self.popularity = {s: json.loads(r) for s, r in self._conn.execute("SELECT segment, rates FROM popularity")}
        self.snapshot = self._conn.execute("SELECT MAX(snapshot) FROM profiles").fetchone()[0]

    def profile(self, pseudonym: str) -> dict | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM profiles WHERE pseudonym = ?", (pseudonym,)).fetchone()
        if row is None:
            return None
        rec = dict(zip(_COLUMNS, row))
        for c in POLICY_FEATURES:
            rec[c] = None if rec[c] is None else bool(rec[c])
        rec["held"] = [p for p in rec["held"].split(",") if p]
        rec["viewed"] = [p for p in rec["viewed"].split(",") if p]
        return rec

    def rates(self, segment: str) -> dict[str, float]:
        return self.popularity.get(segment, self.popularity["*"])
