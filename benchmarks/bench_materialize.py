"""Materialising the online store: Feast's stock SQLite path beside ours, in one run.

    python benchmarks/bench_materialize.py [--customers 1000000] [--subset 5000] [--months 3]

1. Simulates a bank of `--subset` customers through the project's pipeline (simulation ->
   features -> `feast apply`).
2. Materialises its latest snapshot with stock Feast (`FeatureStore.materialize` into Feast's
   SQLite online store) and with our default path (`nextbest.feature_repo.store.materialize` into
   `nextbest.feature_repo.online_store.RowSqliteOnlineStore`): rows/s of each and the ratio, and checks
   that both stores serve the same values.
3. Times one-customer online reads (`get_online_features` with the next-best-product feature
   service, then `to_dict()`) on both stores: p50 and p99.
4. Builds feature tables for `--customers` customers with the same columns by resampling the
   simulated rows (the simulator itself is not what is measured here), applies them and
   materialises them with our path in a child process: wall time, rows/s and peak RSS.

A "row" is one customer in one feature view (what `materialize` returns); each row carries that
view's features (~250 across the four views).
Issue targets: at least 10x stock, and 1,000,000 customers in under 2 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, NBP_FEATURE_SERVICE
from nextbest.feature_repo import store as feast_store
from nextbest.features.build import PROFILE_VIEW, VIEWS
from nextbest.settings import Paths

END = pd.Timestamp("2026-10-31")


def rss_gb() -> float:
    """Peak resident memory of this process, GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def own_peak_rss_gb() -> float:
    """Peak resident memory since this process started its program (VmHWM): unlike ru_maxrss,
    it does not carry over the parent's peak through fork and exec."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024 / 1024
    return rss_gb()


def simulate(paths: Paths, customers: int, months: int) -> None:
    from nextbest.config import load_catalogue
    from nextbest.features.pipeline import build_features_to
    from nextbest.simulation.bank import BankSpec
    from nextbest.simulation.write import generate_to

    catalogue = load_catalogue()
    generate_to(paths, catalogue, BankSpec(n_customers=customers, n_months=months, seed=1, end=END))
    build_features_to(paths, catalogue)


def stock_store(paths: Paths):
    """The same registry objects over Feast's stock SQLite online store (in its own file)."""
    feast_store.apply(paths)
    yaml = paths.feast / "feature_store.yaml"
    text = yaml.read_text()
    lines = [line for line in text.splitlines() if not line.strip().startswith(("type: feature_repo", "path:"))]
    at = lines.index("online_store:") + 1
    lines[at:at] = ["  type: sqlite", f"  path: {paths.feast / 'stock_online_store.db'}"]
    yaml.write_text("\n".join(lines) + "\n")
    store = feast_store.open_store(paths)
    store.apply(store.list_feature_views())  # creates the stock tables
    return store


def window_rows(paths: Paths, store, end: pd.Timestamp) -> tuple[int, int]:
    """(rows, customers) our materialisation writes at `end`: one per customer and view."""
    rows, customers = 0, 0
    for view in VIEWS:
        fv = store.get_feature_view(view)
        t = pq.read_table(paths.features / f"{view}.parquet", columns=[CUSTOMER_ID, EVENT_TIMESTAMP]).to_pandas()
        n = t[(t[EVENT_TIMESTAMP] >= end - fv.ttl) & (t[EVENT_TIMESTAMP] <= end)][CUSTOMER_ID].nunique()
        rows += n
        customers = max(customers, n)
    return rows, customers


def read_latencies(store, customers: list[str], reads: int) -> tuple[np.ndarray, list[dict]]:
    service = store.get_feature_service(NBP_FEATURE_SERVICE)
    for c in customers[:50]:  # warm-up: registry cache, connection, statement cache
        store.get_online_features(features=service, entity_rows=[{CUSTOMER_ID: c}]).to_dict()
    times, answers = [], []
    for i in range(reads):
        c = customers[i % len(customers)]
        t = time.perf_counter()
        answer = store.get_online_features(features=service, entity_rows=[{CUSTOMER_ID: c}]).to_dict()
        times.append(time.perf_counter() - t)
        if i < len(customers):
            answers.append(answer)
    return np.array(times) * 1e3, answers


def synthesise(source: Paths, target: Paths, customers: int, chunk: int = 100_000, seed: int = 0) -> None:
    """Feature tables for `customers` customers: each new customer copies, month by month, the
    rows of a random simulated customer present in every month (same columns and types, rows in
    customer-then-month order as the pipeline writes them)."""
    target.features.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tables = {view: pq.read_table(source.features / f"{view}.parquet") for view in VIEWS}
    prof = tables[PROFILE_VIEW].select([CUSTOMER_ID, EVENT_TIMESTAMP]).to_pandas()
    months = np.sort(prof[EVENT_TIMESTAMP].unique())
    full = prof.groupby(CUSTOMER_ID)[EVENT_TIMESTAMP].nunique()
    donors = full[full == len(months)].index.to_numpy()
    donor_of = rng.integers(0, len(donors), customers)
    width = max(7, len(str(customers)))
    for view, table in tables.items():
        keys = table.select([CUSTOMER_ID, EVENT_TIMESTAMP]).to_pandas()
        position = pd.Series(np.arange(len(keys)), index=pd.MultiIndex.from_frame(keys))
        # Row of each donor at each month: [n_donors, n_months]
        rows = position.reindex(pd.MultiIndex.from_product([donors, months])).to_numpy().reshape(len(donors), -1)
        with pq.ParquetWriter(target.features / f"{view}.parquet", table.schema) as writer:
            for start in range(0, customers, chunk):
                ids = np.arange(start, min(start + chunk, customers))
                take = rows[donor_of[ids]].ravel()  # customer-major, then month
                part = table.take(pa.array(take))
                new_ids = np.repeat(np.char.add("C", np.char.zfill((ids + 1).astype(str), width)), len(months))
                part = part.set_column(part.schema.get_field_index(CUSTOMER_ID), CUSTOMER_ID,
                                       pa.array(new_ids.astype(object), pa.string()))
                writer.write_table(part)


def child_materialize(workdir: str) -> None:
    paths = Paths.from_workdir(workdir)
    t = time.perf_counter()
    rows = feast_store.materialize(paths)
    seconds = time.perf_counter() - t
    print(json.dumps({"rows": rows, "seconds": seconds, "rss_gb": own_peak_rss_gb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="customers for the large fast-path run")
    parser.add_argument("--subset", type=int, default=5000, help="simulated customers for the side-by-side run")
    parser.add_argument("--months", type=int, default=3, help="monthly snapshots in the feature tables")
    parser.add_argument("--reads", type=int, default=1000, help="online reads timed per store")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the work directories here")
    parser.add_argument("--child-materialize", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_materialize:
        child_materialize(args.child_materialize)
        return

    from results import Run

    run = Run("bench_materialize")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_materialize_"))
    try:
        sub, big = Paths(root / "subset").ensure(), Paths(root / "large")
        t = time.perf_counter()
        simulate(sub, args.subset, args.months)
        print(f"data: simulated and featurised {args.subset:,} customers x {args.months} months "
              f"in {time.perf_counter() - t:.1f}s")

        # (a) stock Feast, its own registry and online store over the same feature tables.
        stock_paths = Paths(root / "stock")
        stock_paths.root.mkdir(parents=True, exist_ok=True)
        (stock_paths.root / "features").symlink_to(sub.features, target_is_directory=True)
        stock = stock_store(stock_paths)
        end = feast_store.latest_snapshot(sub)
        end = end.tz_localize("UTC") if end.tzinfo is None else end
        ttl = stock.get_feature_view(PROFILE_VIEW).ttl
        rows_sub, customers_sub = window_rows(sub, stock, end)
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            stock.materialize(start_date=(end - ttl).to_pydatetime(),
                              end_date=(end + timedelta(seconds=1)).to_pydatetime())
        stock_s = time.perf_counter() - t

        # (b) our default path on the same tables.
        feast_store.apply(sub)
        t = time.perf_counter()
        fast_rows = feast_store.materialize(sub)
        fast_s = time.perf_counter() - t
        assert fast_rows == rows_sub, (fast_rows, rows_sub)

        # (d) one-customer reads through Feast on both stores, and the same answers.
        fast = feast_store.open_store(sub)
        ids = pq.read_table(sub.features / f"{PROFILE_VIEW}.parquet", columns=[CUSTOMER_ID]).column(0)
        ids = pc.unique(ids).to_pylist()
        sample = [ids[i] for i in np.random.default_rng(1).choice(len(ids), min(200, len(ids)), replace=False)]
        stock_ms, stock_answers = read_latencies(stock, sample, args.reads)
        fast_ms, fast_answers = read_latencies(fast, sample, args.reads)
        same = stock_answers == fast_answers
        n_features = len(fast_answers[0]) - 1

        # (c) our path on --customers customers, in a child process for its own peak RSS.
        t = time.perf_counter()
        big.ensure()
        synthesise(sub, big, args.customers)
        feast_store.apply(big)
        print(f"data: {args.customers:,} customers x {args.months} months of feature tables built "
              f"in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--child-materialize", str(big.root)],
                               capture_output=True, text=True)
        process_s = time.perf_counter() - t
        if child.returncode:
            sys.stderr.write(child.stderr)
            raise SystemExit(f"large materialisation failed ({child.returncode})")
        large = json.loads(child.stdout.strip().splitlines()[-1])
        db_mb = (big.feast / "online_store.db").stat().st_size / 1e6

        stock_rate, fast_rate, large_rate = rows_sub / stock_s, fast_rows / fast_s, large["rows"] / large["seconds"]
        materialised = [
            ["stock Feast SQLite (materialize)", f"{customers_sub:,}", f"{rows_sub:,}", f"{stock_s:.2f}",
             f"{stock_rate:,.0f}"],
            ["ours, same subset", f"{customers_sub:,}", f"{fast_rows:,}", f"{fast_s:.2f}", f"{fast_rate:,.0f}"],
            ["ours, large", f"{args.customers:,}", f"{large['rows']:,}", f"{large['seconds']:.2f}",
             f"{large_rate:,.0f}"]]
        widths = [-42, 11, 11, 10, 11]
        line = lambda cells: "".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cells, widths))  # noqa: E731
        speed = (f"speed-up on the same subset: {fast_rate / stock_rate:.1f}x (target >= 10x); "
                 f"at {args.customers:,} customers: {large_rate / stock_rate:.1f}x")
        large_line = (f"{args.customers:,} customers: {large['seconds']:.1f}s wall in materialize(), {process_s:.1f}s "
                      f"for the whole process with Python and Feast imports (target < 120 s); peak RSS "
                      f"{large['rss_gb']:.2f} GB; online store {db_mb:,.0f} MB")
        reads = [["stock Feast SQLite", f"{np.percentile(stock_ms, 50):.2f}", f"{np.percentile(stock_ms, 99):.2f}"],
                 ["ours", f"{np.percentile(fast_ms, 50):.2f}", f"{np.percentile(fast_ms, 99):.2f}"]]
        same_line = f"same values from both stores for {len(sample)} customers: {'yes' if same else 'NO'}"
        print()
        print(f"materialise ({n_features} features in {len(VIEWS)} views; a row = one customer in one view)")
        print(line(["path", "customers", "rows", "seconds", "rows/s"]))
        for row in materialised:
            print(line(row))
        print(speed)
        print(large_line)
        print()
        reads_title = f"online read, 1 customer, {NBP_FEATURE_SERVICE} ({n_features} features), {args.reads} reads, ms"
        print(reads_title)
        print(f"{'store':<42}{'p50':>8}{'p99':>8}")
        for store_name, p50, p99 in reads:
            print(f"{store_name:<42}{p50:>8}{p99:>8}")
        print(same_line)
        print(f"peak RSS of this process (simulation, stock run, reads): {rss_gb():.2f} GB")
        if not same:
            raise SystemExit("the two online stores disagree")
        run.figures.update({
            "features": n_features, "views": len(VIEWS), "subset_customers": customers_sub, "subset_rows": rows_sub,
            "stock_seconds": stock_s, "ours_seconds": fast_s, "stock_rows_per_s": stock_rate,
            "ours_rows_per_s": fast_rate, "speedup": fast_rate / stock_rate, "large_customers": args.customers,
            "large_rows": large["rows"], "large_seconds": large["seconds"], "large_process_seconds": process_s,
            "large_peak_rss_gb": large["rss_gb"], "large_online_store_mb": db_mb,
            "read_ms": {"stock": {"p50": float(np.percentile(stock_ms, 50)), "p99": float(np.percentile(stock_ms, 99))},
                        "ours": {"p50": float(np.percentile(fast_ms, 50)), "p99": float(np.percentile(fast_ms, 99))}},
            "same_values": same})
        run.table(f"Materialise ({n_features} features in {len(VIEWS)} views; a row = one customer in one view)",
                  ["path", "customers", "rows", "seconds", "rows/s"], materialised)
        run.note(speed)
        run.note(large_line)
        run.table(reads_title[0].upper() + reads_title[1:], ["store", "p50", "p99"], reads)
        run.note(same_line)
        run.write()
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
