"""Training at scale: the cost of each stage per customer-month as the bank grows, and what sampling costs
in quality, in one run:

    python benchmarks/bench_train_scale.py [--customers 1000000 100000 20000] [--months 18]
                                           [--compare-at 100000]

Each bank (seed 1) is kept under `.nextbest/bench-scale-<customers>x<months>` (shared with
bench_features_scale: an existing bank's raw tables are reused, and its generation is not timed here).
For each, the real commands run, each in its own process: `nextbest features build --engine local
--memory-limit 4GB --workers 2`, `nextbest features apply`, then `train nbp` and `train churn` with the
shipped configs (a first training: the LightGBM baseline is fitted). The shipped configs train on at
most `max_train_rows` customer-months of the training window and `max_eval_rows` of each of validation
and test; at `--compare-at` customers, `train nbp` also runs on every row, and the two test metrics say
what the sample costs. Target: 1,000,000 x 18 trained end to end (generation, features, both models)
in under an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

from bench_features_scale import REPO, ensure_bank, nextbest, run_measured

TARGET_S = 3600.0
STAGES = ("labels", "training set", "model inputs", "networks", "evaluation", "LightGBM baseline",
          "MLflow logging and registry")
GATE = {"nbp": "test_map_at_7", "churn": "test_roc_auc"}


def worker(task: str, workdir: str, every_row: bool) -> None:
    """Trains one model in this process and prints what it measured as the last line (JSON)."""
    from nextbest.config import load_train_config
    from nextbest.settings import Paths
    from nextbest.training.pipeline import train_model

    cfg = load_train_config(task)
    if every_row:
        cfg = cfg.model_copy(update={"max_train_rows": None, "max_eval_rows": None})
    result = train_model(Paths.from_workdir(Path(workdir)), task, cfg, on_stage=lambda s: print(s, flush=True))
    print(json.dumps({"stages": result.stage_seconds, "rows": result.rows, "metrics": result.metrics,
                      "epochs": len(result.history),
                      "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "max_train_rows": cfg.max_train_rows}))


def train(work: Path, task: str, log: Path, every_row: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--worker", task, str(work)] + (["--every-row"] if every_row else [])
    measured = run_measured(cmd, log)
    out = json.loads(log.read_text().strip().splitlines()[-1])
    labelled = next((line for line in log.read_text().splitlines() if line.startswith("training set")), "")
    return {**out, **measured, "training_set_line": labelled}


def ddp(work: Path, log: Path) -> dict:
    """`nextbest train nbp --processes 2`'s command (torchrun, gloo), timed, with its stage seconds."""
    from nextbest.cli.server import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "nextbest.training.distributed", "nbp", "--workdir", str(work)]
    measured = run_measured(cmd, log)
    out = json.loads([line for line in log.read_text().splitlines() if line.startswith("{")][-1])
    return {**measured, "stages": out["stage_seconds"], "metrics": out["metrics"], "epochs": out["epochs"]}


def ratio(metrics: dict, key: str) -> float | None:
    oracle = metrics.get(key.replace("test_", "oracle_"))
    return metrics[key] / oracle if oracle else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, nargs="+", default=[1_000_000, 100_000, 20_000])
    ap.add_argument("--months", type=int, default=18)
    ap.add_argument("--compare-at", type=int, default=100_000,
                    help="bank size at which train nbp also runs on every row (0: none)")
    ap.add_argument("--ddp-at", type=int, default=20_000,
                    help="bank size at which train nbp also runs on 2 processes (DDP, gloo) (0: none)")
    ap.add_argument("--worker", nargs=2, metavar=("TASK", "WORKDIR"), help=argparse.SUPPRESS)
    ap.add_argument("--every-row", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker, args.every_row)
        return
    from results import Run

    record = Run("bench_train_scale")
    logs = REPO / ".nextbest" / "bench-scale-logs"
    logs.mkdir(parents=True, exist_ok=True)
    figures: dict = {"months": args.months, "banks": {}}
    stage_rows, quality_rows, total_rows = [], [], []
    for customers in args.customers:
        work = REPO / ".nextbest" / f"bench-scale-{customers}x{args.months}"
        fresh = not (work / "raw" / "offers.parquet").exists()
        started = time.perf_counter()
        ensure_bank(customers, args.months)
        bank = {"generated_s": round(time.perf_counter() - started, 1) if fresh else None}
        for folder in ("mlflow", "models", "baselines", "feast"):  # a first training: no champion, no kept baseline
            shutil.rmtree(work / folder, ignore_errors=True)
        print(f"{customers:,} x {args.months}: features build", flush=True)
        build = nextbest("features", "build", "-w", str(work), "--engine", "local", "--memory-limit", "4GB",
                         "--workers", "2")
        bank["build"] = run_measured(build, logs / f"train-build-{customers}.log")
        bank["apply"] = run_measured(nextbest("features", "apply", "-w", str(work)),
                                     logs / f"train-apply-{customers}.log")
        for task in ("nbp", "churn"):
            print(f"{customers:,} x {args.months}: train {task}", flush=True)
            bank[task] = m = train(work, task, logs / f"train-{task}-{customers}.log")
            print(f"  {m['seconds']:.0f} s, peak {m['peak_gb']:.1f} GB, {m['rows']}, {m['stages']}", flush=True)
        if customers == args.compare_at:
            print(f"{customers:,} x {args.months}: train nbp on every row", flush=True)
            shutil.rmtree(work / "baselines", ignore_errors=True)
            bank["nbp_every_row"] = train(work, "nbp", logs / f"train-nbp-all-{customers}.log", every_row=True)
        if customers == args.ddp_at:
            print(f"{customers:,} x {args.months}: train nbp on 2 processes (DDP)", flush=True)
            bank["nbp_ddp"] = ddp(work, logs / f"train-nbp-ddp-{customers}.log")
        figures["banks"][str(customers)] = bank
        months = customers * args.months / 1000
        for task in ("nbp", "churn"):
            m = bank[task]
            stage_rows.append([f"{customers:,}", task, f"{sum(m['rows'].values()):,}", f"{m['seconds']:.0f}",
                               *(f"{m['stages'][s]:.1f}" if s in m["stages"] else "-" for s in STAGES),
                               f"{m['peak_gb']:.1f}", f"{m['seconds'] / months:.3f}"])
        for name, m in (("sample (shipped caps)", bank["nbp"]), ("every row", bank.get("nbp_every_row"))):
            if m is not None:
                r = ratio(m["metrics"], GATE["nbp"])
                quality_rows.append([f"{customers:,}", name, f"{m['rows']['train']:,}", f"{m['seconds']:.0f}",
                                     f"{m['metrics'][GATE['nbp']]:.4f}", f"{r:.3f}" if r else "-"])
        r = ratio(bank["churn"]["metrics"], GATE["churn"])
        quality_rows.append([f"{customers:,}", "churn, sample (shipped caps)", f"{bank['churn']['rows']['train']:,}",
                             f"{bank['churn']['seconds']:.0f}", f"{bank['churn']['metrics'][GATE['churn']]:.4f}",
                             f"{r:.3f}" if r else "-"])
        end_to_end = (bank["generated_s"] or 0) + bank["build"]["seconds"] + bank["apply"]["seconds"] \
            + bank["nbp"]["seconds"] + bank["churn"]["seconds"]
        bank["end_to_end_s"] = round(end_to_end, 1)
        total_rows.append([f"{customers:,}", f"{bank['generated_s']:.0f}" if bank["generated_s"] else "kept",
                           f"{bank['build']['seconds']:.0f}", f"{bank['apply']['seconds']:.0f}",
                           f"{bank['nbp']['seconds']:.0f}", f"{bank['churn']['seconds']:.0f}", f"{end_to_end:.0f}",
                           f"{max(bank['build']['peak_gb'], bank['nbp']['peak_gb'], bank['churn']['peak_gb']):.1f}"])
        record.figures = figures
    record.table(f"Training time by stage, {args.months} months, shipped configs, first training (seconds)",
                 ["customers", "model", "rows", "total s", *STAGES, "peak GB", "s per 1,000 customer-months"],
                 stage_rows)
    record.table("Test metric: the shipped sample against every row",
                 ["customers", "training on", "training rows", "seconds", "test metric", "x oracle"], quality_rows)
    for customers, bank in figures["banks"].items():
        if "nbp_ddp" in bank:
            one, two = bank["nbp"], bank["nbp_ddp"]
            record.table(f"train nbp at {int(customers):,} x {args.months}: one process (2 threads) against DDP on 2 "
                         "processes (gloo, 1 thread each)",
                         ["how", "networks s", "epochs", "s per epoch", "test metric"],
                         [[name, f"{m['stages']['networks']:.1f}", str(m["epochs"]),
                           f"{m['stages']['networks'] / m['epochs']:.2f}", f"{m['metrics'][GATE['nbp']]:.4f}"]
                          for name, m in (("one process", one), ("DDP x 2", two))])
            per_epoch = [m["stages"]["networks"] / m["epochs"] for m in (one, two)]
            record.note(f"DDP on the same 2 cores: {per_epoch[1] / per_epoch[0]:.2f} x one process's time per epoch.")
    record.table("End to end (seconds)", ["customers", "generate", "features build", "features apply", "train nbp",
                                           "train churn", "total", "peak GB"], total_rows)
    largest = max(args.customers)
    big = figures["banks"][str(largest)]
    if big["generated_s"] is None:
        generated = json.loads((REPO / "benchmarks" / "results" / "bench_generate.json").read_text())
        big["generated_s"] = float(generated["figures"]["wall_seconds"])
        record.note(f"The {largest:,}-customer bank was kept from an earlier run; its generation is taken from "
                    f"bench_generate ({big['generated_s']:.0f} s) for the end-to-end figure.")
        big["end_to_end_s"] = round(big["end_to_end_s"] + big["generated_s"], 1)
    verdict = "met" if big["end_to_end_s"] < TARGET_S else "not met"
    record.note(f"Target: {largest:,} x {args.months} trained end to end in under an hour: {verdict} "
                f"({big['end_to_end_s'] / 60:.1f} min).")
    record.finish()


if __name__ == "__main__":
    main()
