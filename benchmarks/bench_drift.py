"""Drift at scale: our column-by-column path beside a plain Evidently DataDriftPreset run.

Data: a reference and a current sample of ROWS rows each (default 1,000,000) x FEATURES columns
(default 60: two thirds numerical with normal, log-normal and Poisson shapes, one third
categorical with 2-12 values), the reference spread over 6 months. DRIFTED columns (default 6)
drift in the current sample: mean shifts of 0.3 sd, a 40% scale change, a category share moved.

Our path (`nextbest.monitoring.drift`): every statistic exact on all rows, one column at a time
(Evidently's own stattest functions: normalised Wasserstein, Jensen-Shannon); the natural-
variation threshold from each reference month against the others (months sub-sampled to
20,000 rows, the rest to 100,000: only the threshold's calibration is sampled); the Evidently
HTML on 100,000 rows per side, whose scores are compared with the exact ones
(`max_abs_score_diff`, the sampling error of the report).

Plain: `Report([DataDriftPreset()])` on the same frames (Evidently picks the tests itself),
rendered to HTML. With --plain-rows N < ROWS it runs on N rows per side and the time is
extrapolated linearly to ROWS (stated in the output).

Each run is a separate process, so peak RSS (ru_maxrss) is its own; the data is generated in
that process first (its memory is included: `rss_after_data_mb` says how much).

    .venv/bin/python benchmarks/bench_drift.py                 # both, 1M x 60
    .venv/bin/python benchmarks/bench_drift.py --only ours
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def make_data(rows: int, features: int, drifted: int,
              seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray, list[str]]:
    """(reference, current, reference month per row, names of the drifted columns)."""
    rng = np.random.default_rng(seed)
    n_num = features * 2 // 3
    ref, cur, drifted_cols = {}, {}, []
    for j in range(features):
        drift = j % (features // drifted) == 0 and len(drifted_cols) < drifted
        if j < n_num:
            name = f"num_{j:02d}"
            shape = j % 3
            if shape == 0:
                r, c = rng.normal(0, 1, rows), rng.normal(0.3 if drift else 0, 1, rows)
            elif shape == 1:
                r, c = rng.lognormal(0, 0.8, rows), rng.lognormal(0, 0.8 * (1.4 if drift else 1), rows)
            else:
                r = rng.poisson(25, rows).astype(np.float64)
                c = rng.poisson(32 if drift else 25, rows).astype(np.float64)
        else:
            name = f"cat_{j:02d}"
            k = 2 + j % 11
            p = rng.dirichlet(np.full(k, 3.0))
            q = p.copy()
            if drift:
                q[0], q[-1] = q[0] + q[-1] * 0.8, q[-1] * 0.2
                q[0] += 0.15
                q /= q.sum()
            labels = np.array([f"v{i}" for i in range(k)])
            r = pd.Categorical(labels[rng.choice(k, rows, p=p)], categories=labels)
            c = pd.Categorical(labels[rng.choice(k, rows, p=q)], categories=labels)
        ref[name], cur[name] = r, c
        if drift:
            drifted_cols.append(name)
    months = np.repeat(np.arange(6), -(-rows // 6))[:rows]
    return pd.DataFrame(ref), pd.DataFrame(cur), months, drifted_cols


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(args) -> dict:
    ref, cur, months, drifted = make_data(args.rows, args.features, args.drifted)
    after_data = _rss_mb()
    from nextbest.monitoring import drift as D

    started = time.perf_counter()
    kinds = {c: D.column_kind(ref[c]) for c in ref.columns}
    settings = D.DriftSettings(calibration_rows=20_000)
    summary = D.column_drift(ref, cur, list(ref.columns), settings, months=months, kinds=kinds)
    stats_s = time.perf_counter() - started
    snapshot, sample = D.evidently_report(ref, cur, summary, args.report_rows, settings.seed)
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        D.write_report(snapshot, Path(tmp), "bench")
    total = time.perf_counter() - started
    found = set(summary.drifted_columns)
    return {"run": "ours", "rows_per_side": args.rows, "features": args.features, "seconds": round(total, 1),
            "stats_seconds": round(stats_s, 1), "peak_rss_mb": round(_rss_mb()), "rss_after_data_mb": round(after_data),
            "drifted_expected": drifted, "drifted_found": sorted(found),
            "caught": sorted(found & set(drifted)), "false_alarms": sorted(found - set(drifted)),
            "report_sample": sample}


def run_plain(args) -> dict:
    rows = args.plain_rows or args.rows
    ref, cur, _, drifted = make_data(rows, args.features, args.drifted)
    after_data = _rss_mb()
    from evidently import Report
    from evidently.presets import DataDriftPreset

    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        snapshot.save_html(str(Path(tmp) / "plain.html"))
    total = time.perf_counter() - started
    from nextbest.monitoring.drift import report_scores

    result = snapshot.dict()
    flagged = []
    for m in result["metrics"]:
        if m.get("metric_name", "").startswith("ValueDrift"):
            cfg = m["config"]
            method, thr, score = cfg.get("method", ""), float(cfg.get("threshold", 0.05)), float(m["value"])
            pvalue = "p_value" in method or "test" in method.lower()
            if (score < thr) if pvalue else (score >= thr):
                flagged.append(cfg["column"])
    methods = sorted({m["config"].get("method") for m in result["metrics"]
                      if m.get("metric_name", "").startswith("ValueDrift")})
    out = {"run": "plain", "rows_per_side": rows, "features": args.features, "seconds": round(total, 1),
           "peak_rss_mb": round(_rss_mb()), "rss_after_data_mb": round(after_data), "methods": methods,
           "n_scores": len(report_scores(result)), "drifted_found": sorted(flagged),
           "caught": sorted(set(flagged) & set(drifted)), "false_alarms": sorted(set(flagged) - set(drifted))}
    if rows < args.rows:
        out["extrapolated_seconds_at_full_rows"] = round(total * args.rows / rows, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=60)
    parser.add_argument("--drifted", type=int, default=6)
    parser.add_argument("--report-rows", type=int, default=100_000)
    parser.add_argument("--plain-rows", type=int, default=0, help="rows per side for the plain run (0: --rows)")
    parser.add_argument("--plain-timeout", type=int, default=900)
    parser.add_argument("--only", choices=("ours", "plain"), default=None)
    parser.add_argument("--child", choices=("ours", "plain"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_ours(args) if args.child == "ours" else run_plain(args)))
        return
    from results import Run

    run = Run("bench_drift")
    base = [sys.executable, __file__, "--rows", str(args.rows), "--features", str(args.features),
            "--drifted", str(args.drifted), "--report-rows", str(args.report_rows),
            "--plain-rows", str(args.plain_rows)]
    results = []
    for which in ("ours", "plain"):
        if args.only and which != args.only:
            continue
        try:
            proc = subprocess.run([*base, "--child", which], capture_output=True, text=True, cwd=ROOT,
                                  timeout=args.plain_timeout if which == "plain" else None)
        except subprocess.TimeoutExpired:
            results.append({"run": which, "error": f"did not finish within {args.plain_timeout}s"})
            continue
        if proc.returncode:
            results.append({"run": which, "error": proc.stderr[-2000:]})
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps(results, indent=1))
    print(f"\n{'run':6} {'rows/side':>10} {'seconds':>8} {'peak RSS MB':>12} {'caught':>7} {'false alarms':>13}")
    names = {"ours": "ours (nextbest.monitoring.drift)", "plain": "plain Evidently DataDriftPreset"}
    table_rows = []
    for r in results:
        if "error" in r:
            print(f"{r['run']:6} error: {r['error'][:200]}")
            table_rows.append([names[r["run"]], "", "", "", "", "", f"error: {r['error'][:200]}"])
            continue
        secs = f"{r['seconds']}" + (f" (~{r['extrapolated_seconds_at_full_rows']} at {args.rows:,})"
                                     if "extrapolated_seconds_at_full_rows" in r else "")
        print(f"{r['run']:6} {r['rows_per_side']:>10,} {secs:>8} {r['peak_rss_mb']:>12,} "
              f"{len(r['caught']):>4}/{args.drifted} {len(r['false_alarms']):>13}")
        table_rows.append([names[r["run"]], f"{r['rows_per_side']:,}", secs, f"{r['peak_rss_mb']:,}",
                           f"{r['rss_after_data_mb']:,}", f"{len(r['caught'])}/{args.drifted}",
                           f"{len(r['false_alarms'])}"])
    run.figures["runs"] = results
    run.table(f"Drift, {args.rows:,} rows x {args.features} features per side ({args.drifted} drifted), "
              "each run in its own process",
              ["run", "rows per side", "seconds", "peak RSS MB", "of it the data, MB", "drifted columns caught",
               "false alarms"], table_rows, align="lrrrrrl")
    run.write()


if __name__ == "__main__":
    main()
