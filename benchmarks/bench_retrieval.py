"""Training-set retrieval at a bank's scale: Feast's own point-in-time join beside nextbest's join by
customer part, on the same feature files and the same entity rows, in one run.

    python benchmarks/bench_retrieval.py [--customers 1000000] [--months 18] [--snapshots 1]

The bank is the one `bench_features_scale.py` keeps (`.nextbest/bench-scale-<customers>x<months>`,
generated if missing). Its features are built with `nextbest features build --memory-limit 4GB` when
they do not yet record their customer parts, then applied to Feast. The entity rows are every
customer of the last `--snapshots` month(s), with the nbp feature service. Each method runs in its
own process, timed, with the peak memory of its process tree (proportional set size, sampled every
0.1 s), and prints a hash of its sorted result: both must return the same training set.

    feast     store.get_historical_features(entity, service).to_df()  (Feast's DuckDB offline store)
    nextbest  nextbest.feature_repo.retrieval.historical_features      (what `nextbest train` calls)

Target: the retrieval within the feature build's memory bound (6 GB) at 1,000,000 customers.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench_features_scale import BUILD_TARGET_GB, ensure_bank, nextbest, run_measured
from results import REPO, Run

RETRIEVE = """
import hashlib, json, sys
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP, NBP_FEATURE_SERVICE
from nextbest.feature_repo.retrieval import historical_features, in_time_order
from nextbest.feature_repo.store import open_store
from nextbest.settings import Paths
method, work, snapshots = sys.argv[1], sys.argv[2], int(sys.argv[3])
paths = Paths.from_workdir(work)
t = pq.read_table(paths.features / "customer_profile.parquet", columns=[CUSTOMER_ID, EVENT_TIMESTAMP])
months = sorted(pc.unique(t.column(EVENT_TIMESTAMP)).to_pylist())[-snapshots:]
last = pa.array(months, t.schema.field(EVENT_TIMESTAMP).type)
entity = t.filter(pc.is_in(t.column(EVENT_TIMESTAMP), value_set=last)).to_pandas()
entity[EVENT_TIMESTAMP] = pd.to_datetime(entity[EVENT_TIMESTAMP], utc=True)
del t
store = open_store(paths)
if method == "feast":
    service = store.get_feature_service(NBP_FEATURE_SERVICE)
    df = store.get_historical_features(entity_df=entity, features=service).to_df()
else:
    df = historical_features(store, entity, NBP_FEATURE_SERVICE)
df = in_time_order(df)  # as training orders it: a sort unless the rows come in order
digest = hashlib.sha256(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes()).hexdigest()[:16]
print(json.dumps({"rows": len(df), "columns": df.shape[1], "hash": digest}))
"""


def has_parts(work) -> bool:
    from nextbest.feature_repo.retrieval import part_rows

    path = work / "features" / "customer_profile.parquet"
    return path.exists() and part_rows(path) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--months", type=int, default=18)
    ap.add_argument("--snapshots", type=int, default=1, help="months of entity rows (the last ones)")
    ap.add_argument("--methods", nargs="+", default=["nextbest", "feast"], choices=["nextbest", "feast"])
    args = ap.parse_args()
    record = Run("bench_retrieval")
    logs = REPO / ".nextbest" / "bench-scale-logs"
    logs.mkdir(parents=True, exist_ok=True)
    work = ensure_bank(args.customers, args.months)
    setup = {}
    if not has_parts(work):
        print("features build (the files record no customer parts yet)", flush=True)
        setup["features build"] = run_measured(nextbest("features", "build", "-w", str(work), "--memory-limit", "4GB"),
                                               logs / f"retrieval-build-{args.customers}.log")
    setup["features apply"] = run_measured(nextbest("features", "apply", "-w", str(work)),
                                           logs / f"retrieval-apply-{args.customers}.log")
    results = {}
    for method in args.methods:
        print(f"{method}: {args.customers:,} customers x {args.snapshots} snapshot(s)", flush=True)
        log = logs / f"retrieval-{method}-{args.customers}.log"
        m = run_measured([sys.executable, "-c", RETRIEVE, method, str(work), str(args.snapshots)], log, may_fail=True)
        if "failed" not in m:
            m.update(json.loads(log.read_text().strip().splitlines()[-1]))
        results[method] = m
        print(f"  {m}", flush=True)
    record.figures.update({"customers": args.customers, "months": args.months, "snapshots": args.snapshots,
                           "setup": setup, "methods": results})
    rows = [[name, f"{m.get('rows', 0):,}", str(m.get("columns", "")), f"{m['seconds']:.0f}", f"{m['peak_gb']:.2f}",
             m.get("failed", m.get("hash", ""))] for name, m in results.items()]
    record.table(f"Training set of the nbp feature service, {args.customers:,} customers x {args.snapshots} "
                 f"snapshot(s), from {args.months}-month feature files",
                 ["method", "rows", "columns", "seconds", "peak GB", "result hash"], rows)
    ours, feast = results.get("nextbest"), results.get("feast")
    if ours and feast and "hash" in ours and "hash" in feast:
        record.note(f"Same training set from both: {'yes' if ours['hash'] == feast['hash'] else 'NO'}. "
                    f"Peak memory {ours['peak_gb']:.2f} GB against Feast's {feast['peak_gb']:.2f} GB "
                    f"({ours['peak_gb'] / feast['peak_gb']:.2f} x); time {ours['seconds'] / feast['seconds']:.2f} x.")
    if ours and "failed" not in ours:
        met = ours["peak_gb"] < BUILD_TARGET_GB
        record.note(f"Target: retrieval within the build's bound of {BUILD_TARGET_GB:g} GB at {args.customers:,} "
                    f"customers: {'met' if met else 'not met'} ({ours['peak_gb']:.2f} GB).")
    record.finish()


if __name__ == "__main__":
    main()
