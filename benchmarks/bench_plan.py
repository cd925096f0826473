"""Planning an outbound campaign day at bank scale, and the assignment beside HiGHS and greedy.

    python benchmarks/bench_plan.py [--customers 1000000] [--months 4] [--lp-customers 50000]
                                    [--keep .nextbest/plan-bench]

Two measurements in one run:

1. End to end: `nextbest plan` on a simulated bank of `--customers` customers (features built,
   champion models of a small quickstart pinned), for a campaign of every catalogue product (20) on
   4 channels with 6 send hours, capacities, two product quotas and a budget that bind. Timed as
   the command's wall time; memory as the command's peak RSS (`ru_maxrss` of RUSAGE_CHILDREN: the
   plan runs in one child process). Target: under 3 minutes and 8 GB on 2 cores at 1,000,000.
   Also its expected value beside the LP bound and beside greedy by score on the same day.
2. The assignment alone, on a random problem of `--lp-customers` customers x 12 options with the
   same kinds of limits: our Lagrangian solver, the full LP solved by HiGHS directly (the exact
   relaxation), and greedy by score: value and time of each.

The bank, its features and the quickstart are set up first (not timed), in a temporary folder
unless `--keep DIR` is given (then reused when present).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

CAPACITY_SHARE = {"email": 0.02, "push": 0.01, "sms": 0.003, "call_center": 0.0003}
COST = {"email": 0.02, "push": 0.01, "sms": 0.08, "call_center": 4.0}
HOURS = [8, 10, 12, 14, 17, 19]


def cli(*args: str, env: dict | None = None, timeout: int = 3600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nextbest.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"nextbest {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def setup(root: Path, customers: int, months: int) -> tuple[Path, Path, Path]:
    """(bank work dir, pinned models dir, project dir)."""
    from nextbest.settings import Paths, default_config_dir
    from nextbest.training.registry import fetch_alias

    bank, quick, models, project = root / "bank", root / "quickstart", root / "models", root / "project"
    if not (bank / "features" / "customer_segments.parquet").exists():
        print(f"setup: generating {customers:,} customers x {months} months and building features", flush=True)
        cli("generate", "--customers", str(customers), "--months", str(months), "--end", "2026-10-31",
            "--workdir", str(bank))
        cli("features", "build", "--workdir", str(bank))
    if not (models / "pinned.json").exists():
        print("setup: a small quickstart for the champion models", flush=True)
        cli("quickstart", "--customers", "800", "--months", "8", "--end", "2026-10-31", "--workdir", str(quick))
        pinned = {}
        for name in ("nbp", "churn"):
            reg = fetch_alias(Paths.from_workdir(quick), name)
            shutil.copytree(reg.local_dir, models / name, dirs_exist_ok=True)
            pinned[name] = {"version": reg.version, "run_id": reg.run_id}
        (models / "pinned.json").write_text(json.dumps(pinned))
    (project / "configs").mkdir(parents=True, exist_ok=True)
    (project / "nextbest.yaml").write_text("name: bench\n")
    from nextbest.config import load_catalogue

    cfg = yaml.safe_load((default_config_dir() / "campaigns.yaml").read_text())
    products = load_catalogue().ids
    cfg["campaigns"] = {"everything": {
        "products": products,
        "channels": {c: {"capacity": max(1, int(share * customers)), "cost": COST[c]}
                     for c, share in CAPACITY_SHARE.items()},
        "quotas": {"mortgage": max(1, customers // 5000), "term_deposit": max(1, customers // 2000)},
        "budget": round(0.006 * customers, 2),
        "window": {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": HOURS},
        "holdout_share": 0.1, "explore_share": 0.05, "max_contacts_per_week": 2}}
    (project / "configs" / "campaigns.yaml").write_text(yaml.safe_dump(cfg))
    return bank, models, project


def end_to_end(bank: Path, models: Path, project: Path) -> dict:
    day = "2026-11-02"  # the Monday after the bank's last month end
    out = bank / "plans" / f"everything-{day}"
    if out.exists():  # a kept bank: plan afresh
        shutil.rmtree(out)
        import sqlite3

        conn = sqlite3.connect(bank / "events.db")
        conn.execute("DELETE FROM decisions WHERE json_extract(context, '$.plan') = ?", (f"everything@{day}",))
        conn.commit()
        conn.close()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    cli("plan", "--campaign", "everything", "--date", day, "--workdir", str(bank),
        env={"NEXTBEST_PROJECT": str(project), "NEXTBEST_MODELS_DIR": str(models)})
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    summary = json.loads((out / "plan.json").read_text())
    return {"wall_seconds": wall, "peak_rss_gb": rss / 1024 / 1024, "rss_before_gb": before / 1024 / 1024,
            "summary": summary}


def assignment(n: int, seed: int = 7) -> dict:
    """Ours, the full HiGHS LP and greedy on one random problem with binding limits."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, vstack

    from nextbest.serving.outbound import assign

    rng = np.random.default_rng(seed)
    channels, quotas = 4, 2
    per = 1 + quotas
    cost = np.array(list(COST.values()))
    value = (rng.gamma(1.0, 1.0, (n, channels, per)) * rng.random((n, 1, 1)) * 10 - cost[:, None]).reshape(n, -1)
    value[rng.random(value.shape) < 0.3] = -np.inf
    problem = assign.Problem(value, np.repeat(np.arange(channels), per), np.tile(np.array([-1, 0, 1]), channels),
                             np.array([0.05, 0.02, 0.01, 0.002]) * n, cost, np.array([0.01, 0.005]) * n, 0.01 * n)
    t = time.perf_counter()
    ours = assign.solve(problem)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    greedy = assign.plan_value(problem, assign.greedy(problem))
    t_greedy = time.perf_counter() - t
    ok = np.isfinite(problem.value) & (problem.value > 0)
    ri, rk = np.nonzero(ok)
    one = csr_matrix((np.ones(len(ri)), (ri, np.arange(len(ri)))), shape=(n, len(ri)))
    t = time.perf_counter()
    res = linprog(-problem.value[ri, rk], A_ub=vstack([one, csr_matrix(problem.usage[:, rk])]),
                  b_ub=np.concatenate([np.ones(n), problem.rhs]), bounds=(0, 1), method="highs")
    t_lp = time.perf_counter() - t
    return {"customers": n, "options": int(ok.sum()), "ours": ours.value, "ours_bound": ours.bound,
            "ours_seconds": t_ours, "lp": -res.fun, "lp_seconds": t_lp, "greedy": greedy, "greedy_seconds": t_greedy,
            "feasible": assign.feasible(problem, ours.choice)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--months", type=int, default=4)
    ap.add_argument("--lp-customers", type=int, default=50_000)
    ap.add_argument("--keep", type=Path, default=None, help="set up in (and reuse) this folder")
    args = ap.parse_args()
    from results import Run

    run = Run("bench_plan")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    a = assignment(args.lp_customers)
    print(json.dumps(a, indent=1), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        bank, models, project = setup(root, args.customers, args.months)
        e = end_to_end(bank, models, project)
    s = e["summary"]
    v = s["value"]
    print(json.dumps({k: e[k] for k in ("wall_seconds", "peak_rss_gb")} | {"value": v, "seconds_inside": s["seconds"]},
                     indent=1))
    run.figures.update({"end_to_end": {k: e[k] for k in ("wall_seconds", "peak_rss_gb")} | {
        "customers": s["customers"], "audience": s["audience"], "contacts": s["contacts"],
        "control_withheld": s["control_withheld"], "value": v, "binding": s["binding"],
        "plan_seconds_inside": s["seconds"], "channels": s["channels"]}, "assignment": a})
    run.table(f"`nextbest plan`: {s['customers']:,} customers x 20 products x 4 channels x 6 send hours",
              ["measure", "value", "target"], [
                  ["wall time (the command)", f"{e['wall_seconds']:.1f} s", "< 180 s"],
                  ["peak RSS (the command)", f"{e['peak_rss_gb']:.2f} GB", "< 8 GB"],
                  ["contacts planned (sent + control)", f"{s['contacts'] + s['control_withheld']:,}", ""],
                  ["limits that bind", ", ".join(s["binding"]) or "none", ""],
                  ["plan / LP bound", f"{v['plan_over_bound']:.5f}", ">= 0.99"],
                  ["greedy by score / LP bound", f"{v['greedy_over_bound']:.5f}", "below the plan"]], align="lrl")
    run.table(f"The assignment alone: {a['customers']:,} customers, {a['options']:,} options, 4 channels, "
              "2 quotas, a budget", ["solver", "expected value", "share of the LP optimum", "seconds"], [
                  ["ours (Lagrangian dual + HiGHS on the marginal customers)", f"{a['ours']:,.2f}",
                   f"{a['ours'] / a['lp']:.6f}", f"{a['ours_seconds']:.1f}"],
                  ["full LP relaxation, HiGHS (an upper bound)", f"{a['lp']:,.2f}", "1", f"{a['lp_seconds']:.1f}"],
                  ["greedy by score", f"{a['greedy']:,.2f}", f"{a['greedy'] / a['lp']:.6f}",
                   f"{a['greedy_seconds']:.1f}"]], align="lrrr")
    run.note(f"Our plan is integral and within every limit (checked: {a['feasible']}); the LP's value is "
             "fractional, so no plan can exceed it.")
    run.write()


if __name__ == "__main__":
    main()
