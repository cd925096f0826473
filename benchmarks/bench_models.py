"""Model quality against the targets of issue 4, on one simulated bank, in one run:

    python benchmarks/bench_models.py [--customers 20000] [--months 18] [--workdir DIR]

Trains the next-best-product and churn models with the shipped configs (training sets from Feast
by FeatureService), and prints each beside popularity, LightGBM and the oracle (the simulator's
true probabilities) on the same test month. Targets: next-best-product MAP@7 >= 0.95 x oracle and
>= LightGBM; churn ROC AUC >= 0.97 x oracle.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_repo import store as feast_store  # noqa: E402
from features.pipeline import build_features_to  # noqa: E402
from nextbest.config import load_catalogue, load_train_config  # noqa: E402
from nextbest.settings import Paths  # noqa: E402
from simulation.bank import BankSpec  # noqa: E402
from simulation.write import generate_to  # noqa: E402
from training.pipeline import train_model  # noqa: E402


def run(workdir: Path, customers: int, months: int, seed: int) -> None:
    paths = Paths.from_workdir(workdir).ensure()
    catalogue = load_catalogue()
    t = time.perf_counter()
    generate_to(paths, catalogue, BankSpec(n_customers=customers, n_months=months, seed=seed,
                                           end=pd.Timestamp("2026-10-31")))
    build_features_to(paths, catalogue)
    feast_store.apply(paths)
    print(f"bank: {customers:,} customers x {months} months, features and feast apply in {time.perf_counter() - t:.0f}s")
    rows = []
    for task, metric, target in (("nbp", "map_at_7", None), ("churn", "roc_auc", None)):
        cfg = load_train_config(task)
        t = time.perf_counter()
        r = train_model(paths, task, cfg)
        m = r.metrics
        oracle = m.get(f"oracle_{metric}")
        rows.append((task, metric, m[f"test_{metric}"], m.get(f"popularity_{metric}"), m.get(f"lightgbm_{metric}"),
                     oracle, time.perf_counter() - t, r.rows["train"], ",".join(r.months["test"])))
    print("\n| model | metric | PyTorch | popularity | LightGBM | oracle | PyTorch / oracle | PyTorch / LightGBM | "
          "train rows | test month | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for task, metric, ours, pop, lgb, oracle, secs, n, month in rows:
        print(f"| {task} | {metric} | {ours:.4f} | {fmt(pop)} | {fmt(lgb)} | {fmt(oracle)} | "
              f"{fmt(ours / oracle if oracle else None)} | {fmt(ours / lgb if lgb else None)} | {n:,} | {month} | {secs:.0f} |")
    nbp, churn = rows
    print(f"\ntargets: nbp MAP@7 >= 0.95 x oracle: {'met' if nbp[2] >= 0.95 * nbp[5] else 'NOT met'}; "
          f">= LightGBM: {'met' if nbp[2] >= nbp[4] else 'NOT met'}; "
          f"churn AUC >= 0.97 x oracle: {'met' if churn[2] >= 0.97 * churn[5] else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--months", type=int, default=18)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the work directory here (default: temporary)")
    args = ap.parse_args()
    if args.workdir:
        run(args.workdir, args.customers, args.months, args.seed)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), args.customers, args.months, args.seed)


if __name__ == "__main__":
    main()
