"""`nextbest uplift --from FILE` on a campaign file: time, and how well its uplift models rank
customers beside the truth's own ranking.

    python benchmarks/bench_uplift.py [--rows 64000] [--seed 7] [--uci PATH]

A three-arm campaign (control, e-mail, call; a third each) of `--rows` customers with seven
features is drawn with a known effect per customer: the e-mail works on young digital customers,
the call on older ones with large balances, and neither on most others. The command runs as a user
runs it (a subprocess, CSV in, report folder out). Reported per arm: the measured uplift and its
interval beside the true mean effect; the Qini coefficient of each cross-fitted model beside the
Qini coefficient of the true effect used as the score (same rows, same outcomes: the best any model
can rank them); the command's wall time. Target: under 30 s for 64,000 rows and three arms.

With the UCI telemarketing file (`--uci`, default ../shared/data/uci-bank-marketing/
bank-additional-full.csv, skipped when absent), the same command on real data whose `contact`
(cellular or telephone) was not randomised: the randomisation check must say so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.training.uplift import curves

TARGET_SECONDS = 30.0
UCI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "uci-bank-marketing" / "bank-additional-full.csv"


def draw(rows: int, seed: int) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The campaign file and each treatment's true effect on P(buy) per customer."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 85, rows)
    balance = rng.lognormal(8, 1.2, rows)
    logins = rng.poisson(np.where(age < 40, 12, 4))
    tenure = rng.integers(0, 40, rows)
    products = rng.integers(1, 6, rows)
    region = rng.choice(["north", "south", "east", "west", "centre"], rows)
    channel = rng.choice(["app", "branch", "web"], rows, p=[0.5, 0.2, 0.3])
    arm = rng.choice(["control", "email", "call"], rows)
    base = -3.2 + 0.15 * np.log1p(logins) + 0.1 * (products - 3) + 0.05 * np.log(balance / 3000)

    def sig(z):
        return 1 / (1 + np.exp(-z))

    lift_email = 1.0 * (age < 40) * (logins > 6) + 0.2 * (channel == "app")
    lift_call = 1.2 * (age > 55) * (balance > 5000) - 0.3 * (age < 30)
    truth = {"email": sig(base + lift_email) - sig(base), "call": sig(base + lift_call) - sig(base)}
    p = sig(base) + sum(np.where(arm == a, t, 0.0) for a, t in truth.items())
    bought = rng.random(rows) < p
    table = pd.DataFrame({"customer_id": [f"B{i:08d}" for i in range(rows)], "age": age, "balance": balance.round(2),
                          "logins_30d": logins, "tenure_years": tenure, "products": products, "region": region,
                          "main_channel": channel, "arm": arm, "bought": bought.astype(int),
                          "revenue": np.where(bought, rng.gamma(2.0, 150.0, rows), 0.0).round(2)})
    return table, truth


def cli(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nextbest.cli", "uplift", *args], capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"nextbest uplift failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--uci", type=Path, default=UCI)
    args = ap.parse_args()
    from results import Run

    run = Run("bench_uplift")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    table, truth = draw(args.rows, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "campaign.csv"
        table.to_csv(path, index=False)
        print(f"UCI file: {args.uci} ({'found' if args.uci.exists() else 'absent'})", flush=True)
        wall, _ = cli("--from", str(path), "--treatment", "arm", "--outcome", "bought", "--value", "revenue",
                      "--segment", "region", "--id", "customer_id", "--workdir", str(Path(tmp) / "wd"))
        result = json.loads((Path(tmp) / "wd" / "reports" / "uplift" / "campaign" / "uplift.json").read_text())
        uci = None
        if args.uci.exists():
            uci_wall, _ = cli("--from", str(args.uci), "--treatment", "contact", "--outcome", "y", "--control",
                              "telephone", "--segment", "job", "--features",
                              "age,job,marital,education,default,housing,loan,campaign,pdays,previous,poutcome",
                              "--workdir", str(Path(tmp) / "wd"))
            stem = args.uci.name.split(".")[0]
            uci = json.loads((Path(tmp) / "wd" / "reports" / "uplift" / stem / "uplift.json").read_text())
            uci["wall_seconds"] = uci_wall
    rows, figures = [], {"wall_seconds": wall, "rows": args.rows, "arms": {}}
    y = table["bought"].to_numpy(float)
    for arm, effect in truth.items():
        c = result["comparisons"][arm]
        pair = table["arm"].isin(["control", arm]).to_numpy()
        oracle = curves(effect[pair], y[pair], (table["arm"] == arm).to_numpy()[pair]).qini_coefficient
        q = {k: v["qini_coefficient"] for k, v in c["models"].items()}
        o = c["overall"]
        figures["arms"][arm] = {"true_mean_uplift": float(effect.mean()), "uplift": o["uplift"],
                                "uplift_ci": o["uplift_ci"], "qini": q, "qini_truth": oracle,
                                "top_fifth_uplift": c["by_predicted_uplift"][0]["uplift"],
                                "bottom_fifth_uplift": c["by_predicted_uplift"][-1]["uplift"]}
        rows.append([arm, f"{100 * effect.mean():+.2f}", f"{100 * o['uplift']:+.2f} [{100 * o['uplift_ci'][0]:+.2f}, "
                     f"{100 * o['uplift_ci'][1]:+.2f}]", f"{oracle:.5f}",
                     *(f"{q[k]:.5f} ({q[k] / oracle:.2f})" for k in ("t_learner", "x_learner", "dr_learner")),
                     f"{100 * c['by_predicted_uplift'][0]['uplift']:+.2f} / "
                     f"{100 * c['by_predicted_uplift'][-1]['uplift']:+.2f}"])
    print(json.dumps(figures, indent=1), flush=True)
    run.figures.update(figures)
    run.table(f"`nextbest uplift`: {args.rows:,} rows, three arms, wall time {wall:.1f} s (target < "
              f"{TARGET_SECONDS:.0f} s)",
              ["arm", "true mean uplift (pp)", "measured (pp) [95%]", "Qini of the truth", "Qini T-learner (x truth)",
               "Qini X-learner (x truth)", "Qini DR-learner (x truth)", "observed uplift, top / bottom fifth (pp)"],
              rows, align="lrrrrrrr")
    if uci is not None:
        c = uci["comparisons"]["cellular"]
        o = c["overall"]
        figures["uci"] = {"rows": uci["rows"], "wall_seconds": uci["wall_seconds"], "uplift": o["uplift"],
                          "uplift_ci": o["uplift_ci"], "warnings": uci["warnings"],
                          "balance": c["balance"][:3]}
        run.figures["uci"] = figures["uci"]
        run.note(f"Real data, {uci['rows']:,} UCI telemarketing calls, `contact` = cellular against telephone: "
                 f"{100 * o['uplift']:+.2f} pp [{100 * o['uplift_ci'][0]:+.2f}, {100 * o['uplift_ci'][1]:+.2f}] "
                 f"in {uci['wall_seconds']:.1f} s; the randomisation check flags it: "
                 + ("; ".join(uci["warnings"]) or "no warning (unexpected)"))
    run.write()


if __name__ == "__main__":
    main()
