"""Where training's time goes, stage by stage, on banks of a real bank's shape, in one run:

    python benchmarks/bench_train_time.py [--banks 4500x72,2000x12] [--workdir DIR]

For each bank (customers x months, seed 42) it generates the bank, builds and applies its features
(timed apart, not part of training), then runs `train nbp` and `train churn` with the shipped configs
twice: first as a bank's first training (the LightGBM baseline fitted), then again on the same data
(the baseline's test scores reused from work/baselines/). Each stage's seconds come from training's
own clock (the same figures `nextbest train` prints and MLflow records), with the cost per 1,000
customer-months. Then the whole `nextbest quickstart` (its defaults: 2,000 x 12, generation to
monitoring) in a fresh process and work directory, timed from outside with the process's imports.
Targets: `train nbp` and `train churn` each under 2 minutes on the 4,500 x 72 bank, and the whole
quickstart under 90 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from nextbest.config import load_catalogue, load_train_config
from nextbest.feature_repo import store as feast_store
from nextbest.features.pipeline import build_features_to
from nextbest.settings import Paths
from nextbest.simulation.bank import BankSpec
from nextbest.simulation.write import generate_to
from nextbest.training.pipeline import train_model

END = pd.Timestamp("2026-10-31")
TARGET_S = 120.0
TARGET_QUICKSTART_S = 90.0
STAGES = ("labels", "training set", "model inputs", "networks", "evaluation", "LightGBM baseline",
          "MLflow logging and registry")


def bank(root: Path, customers: int, months: int) -> tuple[Paths, float]:
    paths = Paths.from_workdir(root).ensure()
    started = time.perf_counter()
    catalogue = load_catalogue()
    generate_to(paths, catalogue, BankSpec(n_customers=customers, n_months=months, seed=42, end=END))
    build_features_to(paths, catalogue)
    feast_store.apply(paths)
    return paths, time.perf_counter() - started


def run(root: Path, banks: list[tuple[int, int]], result) -> None:
    columns = ["bank", "model", "run", "total s", *STAGES, "s per 1,000 customer-months"]
    cells, figures = [], []
    for customers, months in banks:
        paths, setup = bank(root / f"{customers}x{months}", customers, months)
        print(f"{customers:,} x {months}: bank and features in {setup:.0f} s", flush=True)
        for task in ("nbp", "churn"):
            for attempt in ("first", "again"):
                started = time.perf_counter()
                trained = train_model(paths, task, load_train_config(task))
                total = time.perf_counter() - started
                seconds = trained.stage_seconds
                rows = sum(trained.rows.values())
                figures.append({"customers": customers, "months": months, "task": task, "run": attempt,
                                "seconds": total, "stages": seconds, "rows": rows})
                cells.append([f"{customers:,} x {months}", task, attempt, f"{total:.0f}",
                              *(f"{seconds[s]:.1f}" if s in seconds else "-" for s in STAGES),
                              f"{1000 * total / rows:.2f}"])
                print(f"  {task} ({attempt}): {total:.0f} s  " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()),
                      flush=True)
    result.figures["runs"] = figures
    result.table("Training time by stage (seconds)", columns, cells)
    big = [f for f in figures if (f["customers"], f["months"]) == (4500, 72)]
    for f in big:
        verdict = "met" if f["seconds"] < TARGET_S else "not met"
        result.note(f"4,500 x 72, train {f['task']} ({f['run']} run): {f['seconds']:.0f} s against the "
                    f"{TARGET_S:.0f} s target: {verdict}")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nextbest.cli", "quickstart", "--workdir", str(root / "quickstart")],
                          capture_output=True, text=True)
    whole = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"nextbest quickstart failed:\n{proc.stderr[-3000:]}")
    result.figures["quickstart_seconds"] = round(whole, 1)
    print(f"whole quickstart: {whole:.0f} s", flush=True)
    verdict = "met" if whole < TARGET_QUICKSTART_S else "not met"
    result.note(f"the whole `nextbest quickstart` (2,000 x 12, generation to monitoring, in a fresh process): "
                f"{whole:.0f} s against the {TARGET_QUICKSTART_S:.0f} s target: {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--banks", default="4500x72,2000x12", help="customers x months, comma-separated")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    try:
        banks = [tuple(int(v) for v in b.lower().split("x")) for b in args.banks.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--banks: expected e.g. 4500x72,2000x12, got {args.banks!r}")
    from results import Run

    result = Run("bench_train_time")
    if args.workdir:
        run(args.workdir, banks, result)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), banks, result)
    result.finish()


if __name__ == "__main__":
    main()
