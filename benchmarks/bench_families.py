"""The PyTorch network beside LightGBM on data its settings were not tuned on, in one run:

    python benchmarks/bench_families.py [--customers 2000] [--months 12] [--extract-customers 10000]
                                        [--uci PATH] [--workdir DIR]

Four data sets, each model with its shipped config (`configs/nbp.yaml`, `churn.yaml`,
`campaign.yaml`) and LightGBM on the same split:

- the quickstart's bank (2,000 customers x 12 months, seed 42): nbp and churn;
- the same bank without the interactions and offers tables (what many banks cannot supply): nbp
  and churn;
- a one-snapshot churn extract (one row per client of a 10,000-customer bank with the bank's
  aggregates and a churn flag, as a bank exports it): churn, on a stratified random split;
- the UCI bank-marketing campaign file (real telemarketing responses): the campaign-response model,
  split by time.

The measure is ROC AUC (for nbp, the mean over products of each product's ROC AUC on the rows where
it can be acquired); the target is the network at least 0.98 x LightGBM on each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from nextbest.config import load_catalogue, load_train_config
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.feature_repo import store as feast_store
from nextbest.features.adapters import arrow_schema, empty_table
from nextbest.features.pipeline import build_features_to
from nextbest.io import atomic_write_parquet, read_raw
from nextbest.settings import Paths
from nextbest.simulation.bank import BankSpec
from nextbest.simulation.write import generate_to
from nextbest.training.datasets import churn_labels
from nextbest.training.pipeline import train_model

END = pd.Timestamp("2026-10-31")
REPO = Path(__file__).resolve().parent.parent
UCI_FULL = REPO.parent / "shared" / "data" / "uci-bank-marketing" / "bank-additional-full.csv"
UCI_SAMPLE = REPO / "tests" / "data" / "uci-bank-marketing" / "bank-additional-sample.csv"
TARGET = 0.98
NO_SIGNAL = 0.52  # below it on both models, a ROC AUC is chance on these test sizes


def bank(root: Path, customers: int, months: int, seed: int, without: tuple[str, ...] = ()) -> Paths:
    """A simulated bank through features and `feast apply`, with the tables in `without` emptied first."""
    import pyarrow as pa

    paths = Paths.from_workdir(root).ensure()
    catalogue = load_catalogue()
    generate_to(paths, catalogue, BankSpec(n_customers=customers, n_months=months, seed=seed, end=END))
    for table in without:
        atomic_write_parquet(pa.Table.from_pandas(empty_table(table), schema=arrow_schema(table),
                                                  preserve_index=False), paths.raw / f"{table}.parquet")
    build_features_to(paths, catalogue)
    feast_store.apply(paths)
    return paths


def one_snapshot_extract(paths: Paths, out: Path) -> Path:
    """The bank's churn flag for one month-end, one row per client, as a label table (`label.definition: table`)."""
    catalogue = load_catalogue()
    raw = read_raw(paths.raw, catalogue.ids, tables=("customers", "holdings", "interactions"))
    labels = churn_labels(raw["customers"], raw["holdings"], raw["interactions"], catalogue.ids, 3)
    month = sorted(labels[EVENT_TIMESTAMP].unique())[-1]  # the last month whose three months ahead are known
    extract = labels[labels[EVENT_TIMESTAMP] == month]
    pd.DataFrame({"customer_id": extract[CUSTOMER_ID],
                  "snapshot_date": extract[EVENT_TIMESTAMP].dt.strftime("%Y-%m-%d"),
                  "label": extract["label_churn"].astype(int)}).to_csv(out, index=False)
    return out


def shown(name: str, r: dict) -> dict:
    print(f"{name}: network {r['network']:.4f}, LightGBM {r['lightgbm']:.4f}, ratio {r['network'] / r['lightgbm']:.3f} "
          f"({r['seconds']:.0f} s)", flush=True)
    return r


def measure(paths: Paths, task: str, **overrides) -> dict:
    cfg = load_train_config(task).model_copy(update={"baselines": True, **overrides})
    started = time.perf_counter()
    result = train_model(paths, task, cfg)
    m = result.metrics
    key = "mean_product_auc" if task == "nbp" else "roc_auc"
    return {"network": m[f"test_{key}"], "lightgbm": m[f"lightgbm_{key}"], "oracle": m.get(f"oracle_{key}"),
            "map_at_7": {k: m.get(f"{k}_map_at_7") for k in ("test", "lightgbm", "oracle")} if task == "nbp" else None,
            "rows": result.rows,
            "split": "random" if overrides.get("label") else "by month", "seconds": time.perf_counter() - started}


def campaign(path: Path) -> dict:
    from nextbest.training.campaign import load_contacts, train_campaign

    started = time.perf_counter()
    contacts = load_contacts(path)
    result = train_campaign(contacts, load_train_config("campaign"))
    m = result.metrics
    n = len(contacts)
    return {"network": m["test_roc_auc"], "lightgbm": m["lightgbm_roc_auc"], "oracle": None, "map_at_7": None,
            "rows": {"train": int(n * 0.8), "val": int(n * 0.1), "test": n - int(n * 0.8) - int(n * 0.1)},
            "split": "by time", "seconds": time.perf_counter() - started}


def run(root: Path, customers: int, months: int, seed: int, uci: Path, extract_customers: int, result) -> None:
    from nextbest.config.training import ChurnLabel

    rows: dict[str, dict] = {}

    def add(name: str, r: dict) -> None:
        rows[name] = shown(name, r)

    add(f"UCI bank marketing ({uci.name}): campaign response", campaign(uci))
    # Churn is rare (a few percent over three months): the extract comes from a bigger bank, so that its test
    # fifth still holds enough churners to measure.
    extract_bank = bank(root / "extract", extract_customers, months, seed + 1)
    labels = one_snapshot_extract(extract_bank, root / "churn_extract.csv")
    add(f"one-snapshot churn extract ({extract_customers:,} customers)",
        measure(extract_bank, "churn", label=ChurnLabel(definition="table", table=labels)))
    full = bank(root / "full", customers, months, seed)
    add(f"quickstart bank ({customers:,} x {months}): nbp", measure(full, "nbp"))
    add(f"quickstart bank ({customers:,} x {months}): churn", measure(full, "churn"))
    sparse = bank(root / "sparse", customers, months, seed, without=("interactions", "offers"))
    add("without interactions and offers: nbp", measure(sparse, "nbp"))
    add("without interactions and offers: churn", measure(sparse, "churn"))

    columns = ["data set: model", "split", "train / test rows", "network ROC AUC", "LightGBM ROC AUC",
               "network / LightGBM", f">= {TARGET}", "oracle ROC AUC", "seconds"]
    cells = []
    for name, r in rows.items():
        ratio = r["network"] / r["lightgbm"]
        # Neither model ranks better than chance: their ratio measures noise, not the network.
        verdict = ("no signal" if max(r["network"], r["lightgbm"]) < NO_SIGNAL else
                   "met" if ratio >= TARGET else "not met")
        cells.append([name, r["split"], f"{r['rows']['train']:,} / {r['rows']['test']:,}", f"{r['network']:.4f}",
                      f"{r['lightgbm']:.4f}", f"{ratio:.3f}", verdict,
                      "-" if r["oracle"] is None else f"{r['oracle']:.4f}", f"{r['seconds']:.0f}"])
    result.figures["families"] = {name: {k: v for k, v in r.items() if k != "seconds"} for name, r in rows.items()}
    result.table("Network beside LightGBM (ROC AUC; nbp: mean per-product ROC AUC)", columns, cells,
                 align="llrrrrlrr")
    nbp = [(name, r["map_at_7"]) for name, r in rows.items() if r["map_at_7"]]
    if nbp:
        result.table("nbp: MAP@7 on the same test months", ["data set", "network", "LightGBM", "oracle"],
                     [[name.split(":")[0], *(f"{m[k]:.5f}" if m[k] is not None else "-"
                                             for k in ("test", "lightgbm", "oracle"))] for name, m in nbp])
        result.note("nbp's ROC AUC is per product, over the customers who may acquire it, averaged; the oracle's "
                    "(the simulator's true probabilities) is the most any ranker can reach on that month. MAP@7 ranks "
                    "the products for each customer.")
    met = sum(c[6] == "met" for c in cells)
    measurable = sum(c[6] != "no signal" for c in cells)
    result.note(f"target {TARGET} x LightGBM: met on {met} of the {measurable} rows where a model ranks better than "
                f"chance (ROC AUC {NO_SIGNAL} or more); `no signal`: neither does, so the ratio is noise. "
                "`family: lightgbm` ships LightGBM itself as a model, and `family: auto` trains both and promotes "
                "the better on the held-out month.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--extract-customers", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--uci", type=Path, default=UCI_FULL if UCI_FULL.exists() else UCI_SAMPLE)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    from results import Run

    result = Run("bench_families")
    if args.workdir:
        run(args.workdir, args.customers, args.months, args.seed, args.uci, args.extract_customers, result)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), args.customers, args.months, args.seed, args.uci, args.extract_customers, result)
    result.finish()


if __name__ == "__main__":
    main()
