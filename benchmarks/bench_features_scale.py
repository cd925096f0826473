"""Feature building as the bank grows: time, peak memory and rows per second for each engine, and the
growth exponent; at the largest size, the pipeline to a training set.

    python benchmarks/bench_features_scale.py [--customers 100000 300000 1000000] [--months 18]
                                              [--engines local spark] [--memory-limit 4GB] [--pipeline]

Each bank is generated once (`nextbest generate`, seed 1, ending 2026-06-30) into
`.nextbest/bench-scale-<customers>x<months>` and kept. Every build is the real command,
`nextbest features build --engine E --memory-limit M`, in its own process; peak memory is the
largest memory of the command's whole process tree (the CLI, its workers, and Spark's JVM and
Python workers), sampled every 0.1 s as the sum of their proportional set sizes (a page shared by
forked processes counts once). Rows are customer-month rows of each feature view.

With --pipeline, at the largest size the embedded engine's build is followed by `features apply`,
`features materialize` and a point-in-time training set of the last month for the nbp feature
service, each timed with its peak memory.

Targets at 1,000,000 x 18: the embedded build under 10 minutes and 6 GB; build + apply +
materialise + retrieval under 20 minutes; Spark local mode within 3 x the embedded build's time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from results import REPO, Run

BUILD_TARGET_S = 600
BUILD_TARGET_GB = 6.0
PIPELINE_TARGET_S = 1200
SPARK_TARGET_RATIO = 3.0


class TreePeak:
    """Largest summed memory (PSS) of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.1):
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:  # proportional set size: pages shared by forked workers count once
                    total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**30


def run_measured(cmd: list[str], log: Path, may_fail: bool = False) -> dict:
    """Runs a command, timing it and sampling its tree's memory; a failure ends the benchmark, or with
    `may_fail` is recorded (`failed`: the exit code and the log's last line) for the table to show."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        sampler = TreePeak(proc.pid)
        rc = proc.wait()
        peak = sampler.stop()
    seconds = time.perf_counter() - started
    result = {"seconds": round(seconds, 1), "peak_gb": round(peak, 2)}
    if rc != 0:
        last = (log.read_text().strip().splitlines() or [""])[-1][:200]
        if not may_fail:
            sys.exit(f"{' '.join(cmd)} exited {rc}:\n{log.read_text()[-3000:]}")
        result["failed"] = f"exit {rc}: {last}"
    return result


def nextbest(*args: str) -> list[str]:
    return [sys.executable, "-m", "nextbest.cli", *args]


def ensure_bank(customers: int, months: int) -> Path:
    work = REPO / ".nextbest" / f"bench-scale-{customers}x{months}"
    if not (work / "raw" / "offers.parquet").exists():
        print(f"generating {customers:,} x {months} into {work}", flush=True)
        proc = subprocess.run(nextbest("generate", "--customers", str(customers), "--months", str(months),
                                       "--seed", "1", "--end", "2026-06-30", "-w", str(work)),
                              cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"generate failed:\n{proc.stderr[-3000:]}")
    return work


def feature_rows(work: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(work / "features" / "customer_profile.parquet").metadata.num_rows


RETRIEVE = """
import sys, time
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
from nextbest.settings import Paths
from nextbest.training.pipeline import TASKS, training_frame
paths = Paths.from_workdir(sys.argv[1])
t = pq.read_table(paths.features / "customer_profile.parquet", columns=["customer_id", "event_timestamp"])
last = pc.max(t.column("event_timestamp"))
entity = t.filter(pc.equal(t.column("event_timestamp"), last)).to_pandas()
last = entity.event_timestamp.max()
df = training_frame(paths, entity, TASKS["nbp"][0])
print(f"retrieved {len(df):,} rows x {df.shape[1]} columns for {last.date()}")
"""


def phases(log: str) -> dict:
    """Seconds of the split, the parts' build and the join, as the command reports them."""
    import re

    out = {}
    for key, pattern in (("split_s", r"split in\s+([0-9.]+)\s+s"), ("build_s", r"built in\s+([0-9.]+)\s+s"),
                         ("join_s", r"joined in\s+([0-9.]+)\s+s")):
        match = re.search(pattern, log)
        if match:
            out[key] = float(match.group(1))
    return out


def growth_exponent(sizes: list[int], seconds: list[float]) -> float | None:
    if len(sizes) < 2:
        return None
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--months", type=int, default=18)
    ap.add_argument("--engines", nargs="+", default=["local", "spark"], choices=["local", "spark"])
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pipeline", action="store_true", help="at the largest size, apply, materialise and retrieve")
    args = ap.parse_args()
    record = Run("bench_features_scale")
    logs = REPO / ".nextbest" / "bench-scale-logs"
    logs.mkdir(parents=True, exist_ok=True)
    figures: dict = {"months": args.months, "memory_limit": args.memory_limit, "workers": args.workers,
                     "cpus": os.cpu_count(), "builds": {}}
    rows_out = []
    for customers in sorted(args.customers):
        work = ensure_bank(customers, args.months)
        for engine in args.engines:
            log = logs / f"build-{engine}-{customers}.log"
            print(f"features build --engine {engine}: {customers:,} x {args.months}", flush=True)
            m = run_measured(nextbest("features", "build", "-w", str(work), "--engine", engine, "--memory-limit",
                                      args.memory_limit, "--workers", str(args.workers)), log)
            rows = feature_rows(work)
            text = log.read_text()
            parts = next((line.split("into ")[1].split(" ")[0] for line in text.splitlines()
                          if "splitting the raw tables into" in line), "?")
            m.update(rows=rows, rows_per_s=round(rows / m["seconds"]), parts=parts, **phases(text))
            figures["builds"].setdefault(engine, {})[str(customers)] = m
            print(f"  {m}", flush=True)
            rows_out.append([engine, f"{customers:,}", f"{rows:,}", str(parts), f"{m['seconds']:.0f}",
                             *(f"{m[k]:.0f}" if k in m else "" for k in ("split_s", "build_s", "join_s")),
                             f"{m['peak_gb']:.2f}", f"{m['rows_per_s']:,}"])
    record.table(f"nextbest features build, {args.months} months, --memory-limit {args.memory_limit}, "
                 f"--workers {args.workers}, {os.cpu_count()} cores",
                 ["engine", "customers", "rows", "parts", "seconds", "split s", "build s", "join s", "peak GB",
                  "rows/s"], rows_out)
    for engine, by_size in figures["builds"].items():
        sizes = sorted(int(s) for s in by_size)
        figures.setdefault("growth_exponent", {})[engine] = exp = growth_exponent(
            sizes, [by_size[str(s)]["seconds"] for s in sizes])
        if exp is not None:
            record.note(f"{engine}: time grows as customers^{exp:.2f} from {sizes[0]:,} to {sizes[-1]:,} customers.")

    largest = max(args.customers)
    local = figures["builds"].get("local", {}).get(str(largest))
    if local:
        met = local["seconds"] < BUILD_TARGET_S and local["peak_gb"] < BUILD_TARGET_GB
        record.note(f"Target at {largest:,} x {args.months}: embedded build under {BUILD_TARGET_S / 60:.0f} min and "
                    f"{BUILD_TARGET_GB:g} GB: {'met' if met else 'not met'} ({local['seconds']:.0f} s, "
                    f"{local['peak_gb']:.2f} GB).")
    spark = figures["builds"].get("spark", {}).get(str(largest))
    if local and spark:
        ratio = spark["seconds"] / local["seconds"]
        figures["spark_over_local"] = round(ratio, 2)
        record.note(f"Spark local mode over the embedded engine at {largest:,}: {ratio:.2f} x the time (target: "
                    f"within {SPARK_TARGET_RATIO:g} x): {'met' if ratio <= SPARK_TARGET_RATIO else 'not met'}.")

    if args.pipeline and local:
        work = ensure_bank(largest, args.months)
        steps = {"features build": local}
        for name, cmd in (("features apply", nextbest("features", "apply", "-w", str(work))),
                          ("features materialize", nextbest("features", "materialize", "-w", str(work))),
                          ("training set, last month, nbp", [sys.executable, "-c", RETRIEVE, str(work)])):
            print(f"{name}: {largest:,} x {args.months}", flush=True)
            steps[name] = run_measured(cmd, logs / f"{name.split(',')[0].replace(' ', '-')}-{largest}.log",
                                       may_fail=True)
            print(f"  {steps[name]}", flush=True)
        total = sum(s["seconds"] for s in steps.values())
        figures["pipeline"] = {**steps, "total_seconds": round(total, 1)}
        failed = {k: v["failed"] for k, v in steps.items() if "failed" in v}
        record.table(f"Build to training set, {largest:,} customers x {args.months} months",
                     ["step", "seconds", "peak GB", "outcome"],
                     [[k, f"{v['seconds']:.0f}", f"{v['peak_gb']:.2f}", v.get("failed", "done")]
                      for k, v in steps.items()]
                     + [["total", f"{total:.0f}", f"{max(v['peak_gb'] for v in steps.values()):.2f}", ""]])
        retrieval = steps["training set, last month, nbp"]
        record.note(f"The training set's retrieval (`training_frame`, as `nextbest train` runs it) peaked at "
                    f"{retrieval['peak_gb']:.2f} GB, against the build's bound of {BUILD_TARGET_GB:g} GB: "
                    f"{'within' if retrieval['peak_gb'] < BUILD_TARGET_GB else 'over'} it.")
        met = total < PIPELINE_TARGET_S and not failed
        record.note(f"Target: build + apply + materialise + retrieval under {PIPELINE_TARGET_S / 60:.0f} min: "
                    f"{'met' if met else 'not met'} ({total / 60:.1f} min{', with a failed step' if failed else ''}).")
    record.figures.update(figures)
    record.finish()


if __name__ == "__main__":
    main()
