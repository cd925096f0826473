"""Model quality against its targets, on one simulated bank, in one run:

    python benchmarks/bench_models.py [--customers 20000] [--months 18] [--test-months 3] [--workdir DIR]
                                      [--train-seeds 43,44,45] [--signal observable|reference]

Trains the next-best-product and churn models with the shipped configs (training sets from Feast
by FeatureService), and prints each beside popularity, LightGBM and the oracle (the simulator's
true probabilities) on the same test window: the last `--test-months` months with a known outcome
(three by default, three times the acquisitions of one month, so that a change can be told from
the spread over training seeds; the shipped configs test on one). Targets: next-best-product
MAP@7 >= 0.9 x the ceiling of any model (below) and >= LightGBM; churn ROC AUC >= 0.97 x oracle.

`--train-seeds` trains the PyTorch models again with those seeds on the same prepared data (the
bank, split and baselines stay; only the network's initialisation and batch order change) and
prints every seed's ratios beside the shipped seed's, with their worst, mean and spread: a target
met at one seed only is luck.

It also measures how much of the oracle any model can reach, and how far above popularity
(`--ceiling-only` runs just that, in a minute, and writes no result file). The bank is the
observable one, whose data carries most of the intent (`--signal reference`: the earlier bank, where
an unobserved taste dominates); `--need-weight`, `--taste-sd`, `--need-noise` and
`--[no-]need-traces` override its parts (docs/simulator.md, "Signal").
The simulator gives each customer an unobserved taste per product (docs/simulator.md), which the
oracle knows and no feature reveals beyond a trace in page views. The same bank is simulated again
in memory, and each month from the seventh on, its clients' realised acquisitions are ranked (a)
by the oracle's truth and (b) by everything but the taste: exact latent needs, life-event boosts,
tenure and loan history. (b) / (a) is the ceiling of a model, however good, relative to the oracle;
times the oracle's MAP@7 on the test window, it is the ceiling's MAP@7 there, which is held against
popularity's (target: at least 1.3 x) and the PyTorch model's (target: the model at least 0.9 x it).
LightGBM's mean per-product ROC AUC says how well the bank's data ranks each product's acquirers
(target: at least 0.75).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from nextbest.config import load_catalogue, load_train_config
from nextbest.feature_repo import store as feast_store
from nextbest.features.pipeline import build_features_to
from nextbest.settings import Paths
from nextbest.simulation.bank import SIGNALS, BankSpec
from nextbest.simulation.write import generate_to
from nextbest.training.metrics import map_at_k
from nextbest.training.pipeline import prepare, train_model

END = pd.Timestamp("2026-10-31")


def observable_ceiling(customers: int, months: int, seed: int, warmup: int = 6,
                       settings: dict | None = None) -> list[tuple[str, float, float, float]]:
    """(month end, oracle MAP@7, MAP@7 of the taste-free truth, popularity's MAP@7) per month after
    `warmup`, on the clients of the bank that `run` generates (same spec, same seed: the same bank).
    Popularity ranks by each product's acquisition rate over the months before, among those who
    could take it."""
    import numpy as np

    from nextbest.simulation.bank import _Bank

    spec = BankSpec(n_customers=customers, n_months=months, seed=seed, end=END, **(settings or {}))
    bank = _Bank(load_catalogue(), spec)
    ids = np.asarray(bank.ids.to_pylist())
    taken, could = np.zeros(bank.P), np.zeros(bank.P)
    out = []
    for t, month_end in enumerate(spec.month_ends()):
        held = bank.held.copy()
        clients = held.any(1)
        open_ = (bank.eligible(t) & ~held)[clients]
        no_taste = bank.intent(t, taste=False)[clients]
        truth = bank.step(t).tables["truth/acquisition"].to_pandas().set_index("customer_id")
        if t == months - 1:  # the last month's acquisitions are not observed
            break
        acquired = (bank.held & ~held)[clients] & open_
        if t >= warmup:
            oracle = truth.reindex(ids[clients])[bank.products].to_numpy(float)
            score = lambda s: np.where(open_, s, -np.inf)  # noqa: E731
            popularity = np.broadcast_to(taken / np.maximum(could, 1), open_.shape)
            out.append((str(month_end.date()), map_at_k(acquired.astype(np.int8), score(oracle)),
                        map_at_k(acquired.astype(np.int8), score(no_taste)),
                        map_at_k(acquired.astype(np.int8), score(popularity))))
        taken += acquired.sum(0)
        could += open_.sum(0)
    return out


def _markdown(columns: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> None:
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def print_ceiling(rows: list[tuple[str, float, float, float]], result=None) -> None:
    import numpy as np

    ratios = np.array([c / o for _, o, c, _ in rows])
    lift = np.array([c / p for _, _, c, p in rows])
    columns = ["month", "oracle MAP@7", "MAP@7 knowing all but the taste", "ratio", "popularity MAP@7",
               "ceiling / popularity"]
    cells = [[month, f"{o:.4f}", f"{c:.4f}", f"{r:.3f}", f"{p:.4f}", f"{x:.3f}"]
             for (month, o, c, p), r, x in zip(rows, ratios, lift)]
    _markdown(columns, "lrrrrr", cells)
    verdict = (f"ceiling of any model: {ratios.mean():.3f} x the oracle's MAP@7 (months {ratios.min():.3f}-"
               f"{ratios.max():.3f}), {lift.mean():.3f} x popularity's (months {lift.min():.3f}-{lift.max():.3f})")
    print(f"\n{verdict}")
    if result is not None:
        result.figures["ceiling"] = [
            {"month": m, "oracle_map_at_7": o, "no_taste_map_at_7": c, "popularity_map_at_7": p} for m, o, c, p in rows]
        result.table("The ceiling of any model, month by month", columns, cells, align="lrrrrr")
        result.note(verdict)


def print_seeds(by_seed: dict[str, dict[int, float]], nbp_oracle: float, nbp_lgb: float, nbp_ceiling: float,
                churn_oracle: float, churn_lgb: float, result=None) -> None:
    """Every training seed's ratios on the same test window, then the worst, the mean and the spread
    (largest minus smallest)."""
    import numpy as np

    seeds = list(by_seed["nbp"])
    nbp = np.array([by_seed["nbp"][s] for s in seeds])
    churn = np.array([by_seed["churn"][s] for s in seeds])
    columns = ["training seed", "nbp MAP@7", "/ oracle", "/ ceiling", "/ LightGBM", "churn ROC AUC", "/ oracle",
               "/ LightGBM"]
    rows = [(str(s), n, c) for s, n, c in zip(seeds, nbp, churn)]
    rows += [("worst", nbp.min(), churn.min()), ("mean", nbp.mean(), churn.mean())]
    cells = [[label, f"{n:.5f}", f"{n / nbp_oracle:.3f}", f"{n / nbp_ceiling:.3f}", f"{n / nbp_lgb:.3f}", f"{c:.4f}",
              f"{c / churn_oracle:.3f}", f"{c / churn_lgb:.3f}"] for label, n, c in rows]
    spread = (nbp.max() - nbp.min()) / nbp_oracle
    cells.append(["spread", "", f"{spread:.3f}", f"{(nbp.max() - nbp.min()) / nbp_ceiling:.3f}", "", "",
                  f"{(churn.max() - churn.min()) / churn_oracle:.3f}", ""])
    _markdown(columns, "lrrrrrrr", cells)
    verdict = (f"every seed: nbp >= 0.9 x ceiling {int((nbp >= 0.9 * nbp_ceiling).sum())} of {len(seeds)}, "
               f">= LightGBM {int((nbp >= nbp_lgb).sum())} of {len(seeds)}; "
               f"churn >= 0.97 x oracle {int((churn >= 0.97 * churn_oracle).sum())} of {len(seeds)}; "
               f"spread of nbp / oracle over seeds {spread:.3f} ({'under' if spread < 0.01 else 'NOT under'} 0.01)")
    print(f"\n{verdict}")
    if result is not None:
        result.figures.update({"by_seed": by_seed, "nbp_oracle": nbp_oracle, "nbp_lightgbm": nbp_lgb,
                               "nbp_ceiling": nbp_ceiling, "churn_oracle": churn_oracle, "churn_lightgbm": churn_lgb,
                               "nbp_spread_vs_oracle": spread})
        result.table("Every training seed on the same bank and test window (the first is the shipped seed)",
                     columns, cells, align="lrrrrrrr")
        result.note(verdict)


def print_signal(nbp_metrics: dict, ceiling_ratio: float, result=None) -> float:
    """How much the bank's data says: the ceiling of any model against popularity, and how well
    LightGBM ranks each product's acquirers. Returns the ceiling's MAP@7 on the test window."""
    m = nbp_metrics
    ceiling = ceiling_ratio * m["oracle_map_at_7"]
    columns = ["", "MAP@7", "/ popularity", "mean per-product ROC AUC"]
    cells = [[name, f"{value:.4f}", f"{value / m['popularity_map_at_7']:.3f}", auc]
             for name, value, auc in (
                 ("popularity", m["popularity_map_at_7"], f"{m['popularity_mean_product_auc']:.3f}"),
                 ("LightGBM", m["lightgbm_map_at_7"], f"{m['lightgbm_mean_product_auc']:.3f}"),
                 ("PyTorch (shipped seed)", m["test_map_at_7"], f"{m['test_mean_product_auc']:.3f}"),
                 ("ceiling of any model", ceiling, ""),
                 ("oracle", m["oracle_map_at_7"], f"{m['oracle_mean_product_auc']:.3f}"))]
    _markdown(columns, "lrrr", cells)
    ok = lambda c: "met" if c else "NOT met"  # noqa: E731
    verdict = (f"signal: ceiling {ceiling / m['popularity_map_at_7']:.3f} x popularity (>= 1.3: "
               f"{ok(ceiling >= 1.3 * m['popularity_map_at_7'])}); LightGBM mean per-product AUC "
               f"{m['lightgbm_mean_product_auc']:.3f} (>= 0.75: {ok(m['lightgbm_mean_product_auc'] >= 0.75)}); "
               f"PyTorch {m['test_map_at_7'] / ceiling:.3f} x the ceiling (>= 0.9: "
               f"{ok(m['test_map_at_7'] >= 0.9 * ceiling)})")
    print(f"\n{verdict}")
    if result is not None:
        result.figures["signal"] = {"ceiling_map_at_7": ceiling, "ceiling_vs_oracle": ceiling_ratio,
                                    **{k: m[k] for k in ("popularity_map_at_7", "lightgbm_map_at_7", "test_map_at_7",
                                                         "oracle_map_at_7", "popularity_mean_product_auc",
                                                         "lightgbm_mean_product_auc", "test_mean_product_auc",
                                                         "oracle_mean_product_auc")}}
        result.table("What the bank's data says: the ceiling of any model beside popularity and LightGBM, test window",
                     columns, cells, align="lrrr")
        result.note(verdict)
    return ceiling


def run(workdir: Path, customers: int, months: int, seed: int, train_seeds: Sequence[int] = (), result=None,
        seeds_result=None, test_months: int = 3, settings: dict | None = None) -> None:
    """Trains, evaluates and prints; fills `result` (and `seeds_result`, with `train_seeds`) when given."""
    paths = Paths.from_workdir(workdir).ensure()
    catalogue = load_catalogue()
    t = time.perf_counter()
    generate_to(paths, catalogue, BankSpec(n_customers=customers, n_months=months, seed=seed, end=END,
                                           **(settings or {})))
    build_features_to(paths, catalogue)
    feast_store.apply(paths)
    print(f"bank: {customers:,} customers x {months} months, "
          f"features and feast apply in {time.perf_counter() - t:.0f}s")
    rows, by_seed = [], {}
    for task, metric in (("nbp", "map_at_7"), ("churn", "roc_auc")):
        cfg = load_train_config(task).model_copy(update={"test_months": test_months})
        t = time.perf_counter()
        prepared = prepare(paths, task, cfg)
        r = train_model(paths, task, cfg, prepared=prepared)
        m, secs = r.metrics, time.perf_counter() - t
        by_seed[task] = {cfg.seed: m[f"test_{metric}"]}
        for s in train_seeds:  # the same data, another initialisation and batch order
            again = train_model(paths, task, cfg.model_copy(update={"seed": s, "baselines": False}), prepared=prepared)
            by_seed[task][s] = again.metrics[f"test_{metric}"]
        oracle = m.get(f"oracle_{metric}")
        if task == "nbp":
            nbp_metrics = m
        rows.append((task, metric, m[f"test_{metric}"], m.get(f"popularity_{metric}"), m.get(f"lightgbm_{metric}"),
                     oracle, secs, r.rows["train"], ",".join(r.months["test"])))
    columns = ["model", "metric", "PyTorch", "popularity", "LightGBM", "oracle", "PyTorch / oracle",
               "PyTorch / LightGBM", "train rows", "test month", "seconds"]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    cells = [[task, metric, f"{ours:.4f}", fmt(pop), fmt(lgb), fmt(oracle), fmt(ours / oracle if oracle else None),
              fmt(ours / lgb if lgb else None), f"{n:,}", month, f"{secs:.0f}"]
             for task, metric, ours, pop, lgb, oracle, secs, n, month in rows]
    _markdown(columns, "llrrrrrrrlr", cells)
    nbp, churn = rows
    verdict = (f"targets: nbp MAP@7 >= LightGBM: {'met' if nbp[2] >= nbp[4] else 'NOT met'}; "
               f"churn AUC >= 0.97 x oracle: {'met' if churn[2] >= 0.97 * churn[5] else 'NOT met'}")
    print(f"\n{verdict}")
    if result is not None:
        result.figures["models"] = [
            {"model": task, "metric": metric, "pytorch": ours, "popularity": pop, "lightgbm": lgb, "oracle": oracle,
             "seconds": secs, "train_rows": n, "test_month": month}
            for task, metric, ours, pop, lgb, oracle, secs, n, month in rows]
        result.figures.update({"customers": customers, "months": months, "seed": seed,
                               "bank_settings": settings or {}})
        bank = ", ".join(f"{k} {v}" for k, v in (settings or {}).items()) or "the default bank"
        result.table(f"Model quality, {customers:,} customers x {months} months, seed {seed} ({bank}), "
                     f"shipped configs, {test_months}-month test window",
                     columns, cells, align="llrrrrrrrlr")
        result.note(verdict)
    ceiling = observable_ceiling(customers, months, seed, settings=settings)
    print_ceiling(ceiling, result)
    tested = nbp[8].split(",")
    in_test = [c / o for m, o, c, _ in ceiling if m in tested]
    if len(in_test) != len(tested):
        raise SystemExit(f"the ceiling has no figure for some of the test months {tested}")
    nbp_ceiling = print_signal(nbp_metrics, sum(in_test) / len(in_test), result)
    if train_seeds:
        print_seeds(by_seed, nbp[5], nbp[4], nbp_ceiling, churn[5], churn[4], seeds_result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--months", type=int, default=18)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--test-months", type=int, default=3, help="months in the test window (default 3)")
    # The bank's signal (docs/simulator.md, "Signal"): a named setting, each part of which an option
    # below can override.
    ap.add_argument("--signal", choices=sorted(SIGNALS), default="observable")
    ap.add_argument("--need-weight", type=float, default=None)
    ap.add_argument("--taste-sd", type=float, default=None)
    ap.add_argument("--need-noise", type=float, default=None)
    ap.add_argument("--need-traces", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the work directory here (default: temporary)")
    ap.add_argument("--train-seeds", default="", help="comma-separated extra training seeds, e.g. 43,44,45")
    ap.add_argument("--ceiling-only", action="store_true", help="only the ceiling of any model against the oracle")
    args = ap.parse_args()
    settings = {**SIGNALS[args.signal], **{
        k: v for k, v in (("need_weight", args.need_weight), ("taste_sd", args.taste_sd),
                          ("need_noise", args.need_noise), ("need_traces", args.need_traces)) if v is not None}}
    if args.ceiling_only:
        print_ceiling(observable_ceiling(args.customers, args.months, args.seed, settings=settings))
        return
    try:
        seeds = [int(s) for s in args.train_seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--train-seeds: expected comma-separated integers, got {args.train_seeds!r}")
    from results import Run

    # With --train-seeds, every seed's table is a result of its own, beside the shipped seed's.
    result, seeds_result = Run("bench_models"), (Run("bench_models_seeds") if seeds else None)
    if args.workdir:
        run(args.workdir, args.customers, args.months, args.seed, seeds, result, seeds_result, args.test_months,
            settings)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), args.customers, args.months, args.seed, seeds, result, seeds_result, args.test_months,
                settings)
    result.write()
    if seeds_result is not None:
        seeds_result.write()


if __name__ == "__main__":
    main()
