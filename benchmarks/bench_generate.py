"""Generating a synthetic bank: simulate and stream every table to parquet, timed, in one run.

    python benchmarks/bench_generate.py [--customers 1000000] [--months 18] [--seed 1] [--marginals]

Target: 1,000,000 customers x 18 months in under 10 minutes wall and under 8 GB peak RSS
on 2 cores. Prints the wall and CPU time, the rows written per table and their size on disk,
customer-months per second, and the peak RSS of this process (`ru_maxrss` of RUSAGE_SELF: the
simulation and the parquet writers run in this one process, no child process is involved).
The machine's load average is printed too: on a shared machine, wall time depends on it.

With --marginals the holdings are read back afterwards (the peak RSS is taken before that) and
the calibration marginals are printed beside the public Santander figures, as a markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from nextbest.config import load_catalogue
from nextbest.constants import CUSTOMER_ID, PRODUCT_ID, SNAPSHOT_DATE
from nextbest.settings import Paths
from nextbest.simulation.bank import BankSpec
from nextbest.simulation.marginals import marginals, markdown_table
from nextbest.simulation.write import generate_to


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # Linux: KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--months", type=int, default=18)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--end", default="2026-06-30", help="last month end of the simulated window")
    ap.add_argument("--marginals", action="store_true", help="print the calibration marginals beside Santander's")
    ap.add_argument("--keep", type=Path, default=None, help="write into this work directory instead of a temp one")
    args = ap.parse_args()
    from results import Run

    run = Run("bench_generate")
    catalogue = load_catalogue()
    spec = BankSpec(n_customers=args.customers, n_months=args.months, seed=args.seed, end=pd.Timestamp(args.end))
    print(f"generate: {args.customers:,} customers x {args.months} months, seed {args.seed}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths.from_workdir(args.keep or Path(tmp)).ensure()
        start, cpu0 = time.perf_counter(), cpu_seconds()

        def progress(month: int) -> None:
            label = f"month {month + 1:2d}/{args.months}" if month < args.months else "customers  "
            print(f"  {label}  {time.perf_counter() - start:7.1f}s  peak RSS {peak_rss_gb():.2f} GB", flush=True)

        rows = generate_to(paths, catalogue, spec, on_month=progress)
        wall, cpu, rss = time.perf_counter() - start, cpu_seconds() - cpu0, peak_rss_gb()

        sizes = {name: (paths.root / f"{name}.parquet").stat().st_size / 1e6 for name in rows}
        table_rows = [[name, f"{count:,}", f"{sizes[name]:,.0f}"] for name, count in rows.items()]
        print("\n| table | rows | MB on disk |\n|---|---:|---:|")
        for row in table_rows:
            print("| " + " | ".join(row) + " |")
        customer_months = args.customers * args.months
        load_end = os.getloadavg()[0]
        print(f"\nwall time        {wall:8.1f} s   (target < 600 s at 1,000,000 x 18)")
        print(f"CPU time         {cpu:8.1f} s   (user + system, this process)")
        print(f"customer-months  {customer_months:,} -> {customer_months / wall:,.0f} per second")
        print(f"rows written     {sum(rows.values()):,} -> {sum(rows.values()) / wall:,.0f} per second")
        print(f"peak RSS         {rss:8.2f} GB  (ru_maxrss, RUSAGE_SELF; no child processes; target < 8 GB)")
        print(f"load average     {load_end:8.1f}     (at the end)")
        run.figures.update({"customers": args.customers, "months": args.months, "seed": args.seed,
                            "wall_seconds": wall, "cpu_seconds": cpu, "peak_rss_gb": rss,
                            "customer_months_per_s": customer_months / wall, "rows": rows, "mb_on_disk": sizes,
                            "load_average_end": load_end})
        run.table(f"Tables written, {args.customers:,} customers x {args.months} months, seed {args.seed}",
                  ["table", "rows", "MB on disk"], table_rows)
        run.table("Time and memory", ["measure", "value", "target"], [
            ["wall time", f"{wall:.1f} s", "< 600 s at 1,000,000 x 18"],
            ["CPU time (user + system)", f"{cpu:.1f} s", ""],
            ["customer-months per second", f"{customer_months / wall:,.0f}", ""],
            ["rows written per second", f"{sum(rows.values()) / wall:,.0f}", ""],
            ["peak RSS (one process)", f"{rss:.2f} GB", "< 8 GB"],
            ["load average at the end", f"{load_end:.1f}", ""]], align="lrl")

        if args.marginals:
            # Dictionary-read ids keep 30M+ holdings rows small in memory (categoricals).
            holdings = pq.read_table(paths.raw / "holdings.parquet",
                                     columns=[CUSTOMER_ID, SNAPSHOT_DATE, PRODUCT_ID],
                                     read_dictionary=[CUSTOMER_ID, PRODUCT_ID]).to_pandas()
            print(f"\nmarginals of raw/holdings ({len(holdings):,} rows):\n")
            print(markdown_table(marginals(holdings, products=catalogue.ids)))
    run.write()


if __name__ == "__main__":
    main()
