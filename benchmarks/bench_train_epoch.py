"""One training epoch of the next-best-product model over ~1,000,000 customer-month examples,
beside LightGBM on the same data, in one run.

    python benchmarks/bench_train_epoch.py [--customers 98000] [--months 13] [--lgb-products 2]

The examples are the real feature tables of a simulated bank (the same columns Feast serves),
joined to next-month acquisition labels. Target: one epoch in under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from nextbest.config import TrainConfig, load_catalogue, load_train_config
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.features.build import CATEGORICAL_FEATURES, POLICY_FEATURES, VIEWS
from nextbest.features.pipeline import build_features_to
from nextbest.io import read_raw
from nextbest.settings import Paths
from nextbest.simulation.bank import BankSpec
from nextbest.simulation.write import generate_to
from nextbest.training import evaluate as ev
from nextbest.training.datasets import nbp_labels
from nextbest.training.models import ModelMeta, Preprocessor
from nextbest.training.train import fit, nbp_task


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def examples(workdir: Path, customers: int, months: int) -> tuple[pd.DataFrame, list[str]]:
    catalogue = load_catalogue()
    paths = Paths.from_workdir(workdir).ensure()
    t = time.perf_counter()
    generate_to(paths, catalogue, BankSpec(n_customers=customers, n_months=months, seed=1,
                                           end=pd.Timestamp("2026-10-31")))
    build_features_to(paths, catalogue)
    print(f"data: simulated and featurised {customers:,} customers x {months} months in {time.perf_counter() - t:.0f}s")
    raw = read_raw(paths.raw, catalogue.ids, tables=("customers", "holdings", "interactions"))
    labels = nbp_labels(raw["customers"], raw["holdings"], raw["interactions"], catalogue.ids)
    df = labels
    for view in VIEWS:
        # Feature rows are keyed by (customer, month end), exactly what the point-in-time join returns here.
        df = df.merge(pd.read_parquet(paths.features / f"{view}.parquet"), on=[CUSTOMER_ID, EVENT_TIMESTAMP],
                      how="left")
    return df, catalogue.ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=98_000)
    ap.add_argument("--months", type=int, default=13)
    ap.add_argument("--lgb-products", type=int, default=2, help="LightGBM models to time (one per product)")
    ap.add_argument("--lgb-rounds", type=int, default=100)
    args = ap.parse_args()
    from results import Run

    run = Run("bench_train_epoch")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        df, products = examples(Path(tmp), args.customers, args.months)
    labels = [c for c in df.columns if c.startswith("label_")]
    features = [c for c in df.columns if c not in (CUSTOMER_ID, EVENT_TIMESTAMP, *labels, *POLICY_FEATURES)]
    cats = [c for c in CATEGORICAL_FEATURES if c in features]
    nums = [c for c in features if c not in cats]
    base = load_train_config("nbp")
    pre = Preprocessor.fit(df, nums, cats, base.numeric_encoding, base.piecewise_bins)
    t = time.perf_counter()
    data = nbp_task(df, pre, products)
    prep_s = time.perf_counter() - t
    n = len(data)
    print(f"examples: {n:,} customer-months x {len(nums)} numeric + {len(cats)} categorical features "
          f"({prep_s:.1f}s to tensors); peak RSS so far {rss_gb():.1f} GB")
    meta = ModelMeta("nbp", "next_best_product_v1", pre, products, base.hidden, base.embedding_dim, base.dropout)
    tiny_val = nbp_task(df.head(2000), pre, products)
    rows = []
    for batch in dict.fromkeys((base.batch_size, 512)):  # the shipped batch first (the target), then a smaller one
        cfg = TrainConfig(**{**base.model_dump(), "max_epochs": 1, "batch_size": batch})
        t = time.perf_counter()
        fit("nbp", meta, data, tiny_val, cfg)
        rows.append((f"PyTorch MLP {base.hidden}, batch {batch}: 1 epoch", time.perf_counter() - t))

    x, _, cat_idx = ev.lightgbm_matrix(df, pre)
    y = data.y.numpy()
    mask = data.mask.numpy()
    import lightgbm as lgb

    k = min(args.lgb_products, len(products))
    t = time.perf_counter()
    for j in range(k):
        rows_j = mask[:, j] > 0
        lgb.train({**ev._lgb_params(42)}, lgb.Dataset(x[rows_j], y[rows_j, j], categorical_feature=cat_idx),
                  num_boost_round=args.lgb_rounds)
    lgb_s = time.perf_counter() - t
    rows.append((f"LightGBM {args.lgb_rounds} rounds x {k} product(s)", lgb_s))
    rows.append((f"LightGBM {args.lgb_rounds} rounds x {len(products)} products (extrapolated)",
                 lgb_s / k * len(products)))

    what = f"what ({n:,} examples, 2 threads)"
    table_rows = [[name, f"{s:.1f}", f"{n / s:,.0f}"] for name, s in rows]
    print(f"\n| {what} | seconds | examples/s |\n|---|---:|---:|")
    for row in table_rows:
        print("| " + " | ".join(row) + " |")
    verdict = (f"peak RSS {rss_gb():.1f} GB; target: one epoch < 60 s -> "
               f"{'met' if rows[0][1] < 60 else 'NOT met'} ({rows[0][1]:.1f} s at the configured batch size)")
    print(f"\n{verdict}")
    run.figures.update({"examples": n, "numeric_features": len(nums), "categorical_features": len(cats),
                        "seconds": dict(rows), "peak_rss_gb": rss_gb()})
    run.table(f"One epoch, {args.customers:,} customers x {args.months} months", [what, "seconds", "examples/s"],
              table_rows)
    run.note(verdict)
    run.write()


if __name__ == "__main__":
    main()
