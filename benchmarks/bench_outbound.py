"""Weekly outbound campaigns in closed loop against the synthetic bank's truth: our plan beside greedy
by score, random, the oracle plan and the uplift oracle, under the same capacities, quotas, budget and caps.

    python benchmarks/bench_outbound.py [--workdir .nextbest/outbound-bench] [--customers 4000]
                                        [--weeks 8] [--seeds 42,43,44] [--campaign savings]

Runs `nextbest simulate --outbound` (`nextbest.monitoring.replay.outbound`) once per seed on a
quickstart work dir (built on first use: `--customers` x 12 months, the default synthetic bank,
whose customers have a preferred contact hour). Each run plans the campaign's first send day after
the snapshot through the real path and sends it weekly; every planner lives in its own world
(acquisitions, contact caps, fatigue). Reported per planner: expected value (true P(accept) x
margin - contact cost), regret against the oracle, realised value, acceptances, and the ratios
plan / greedy and plan / oracle; then what the contacts add per 1,000 (an acceptance from a customer
who would have bought the product unprompted that month is not incremental), for targeting by
propensity (our plan, the oracle) and by the true uplift (the uplift oracle).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from nextbest.monitoring.replay.outbound import PLANNERS, simulate_outbound
from nextbest.settings import Paths


def ensure_quickstart(workdir: Path, customers: int) -> None:
    if (workdir / "truth" / "latent.parquet").exists() and (workdir / "features").exists():
        return
    print(f"building a quickstart in {workdir} ({customers} customers x 12 months)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "nextbest.cli", "quickstart", "--customers", str(customers), "--months",
                    "12", "--workdir", str(workdir)], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path(".nextbest/outbound-bench"))
    ap.add_argument("--customers", type=int, default=4000)
    ap.add_argument("--weeks", type=int, default=8)
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--campaign", default="savings")
    args = ap.parse_args()
    from results import Run

    run = Run("bench_outbound")
    ensure_quickstart(args.workdir, args.customers)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, ratios, figures, lift = [], [], {}, []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            outcome, _ = simulate_outbound(Paths.from_workdir(args.workdir), args.campaign, args.weeks, seed,
                                           out_dir=Path(tmp))
        s = outcome.summary
        figures[str(seed)] = s
        for name in PLANNERS:
            t = s["planners"][name]
            rows.append([str(seed), name, f"{t['contacts']:,.0f}", f"{t['accepted']:,.0f}",
                         f"{t['expected_value']:,.0f}", f"{t['regret']:,.0f}", f"{t['realised_value']:,.0f}",
                         f"{t['planned_value']:,.0f}"])
        for name in ("plan", "uplift", "oracle", "uplift_oracle", "random"):
            t = s["planners"][name]
            k = t["per_1000_contacts"]
            lift.append([str(seed), name, f"{t['accepted'] * 1000 / max(t['contacts'], 1):.1f}",
                         f"{k['incremental']:.1f}", f"{k['expected_incremental_value']:,.0f}",
                         f"{k['incremental_value']:,.0f}"])
        r = s["ratios"]
        ratios.append([str(seed), f"{r['plan_over_greedy']:.3f}", f"{r['plan_over_oracle']:.3f}",
                       f"{r['greedy_over_oracle']:.3f}", f"{r['random_over_oracle']:.3f}"])
        print(f"seed {seed}: {r}", flush=True)
    run.figures.update({"weeks": args.weeks, "campaign": args.campaign, "customers": args.customers,
                        "runs": figures})
    run.table(f"Campaign `{args.campaign}`, {args.weeks} weekly sends, per seed (EUR over the run)",
              ["seed", "planner", "contacts", "accepted", "expected value", "regret", "realised value",
               "planned value (model)"], rows, align="llrrrrrr")
    run.table("Expected value ratios", ["seed", "plan / greedy", "plan / oracle", "greedy / oracle",
                                        "random / oracle"], ratios, align="lrrrr")
    run.table("What the contacts add: per 1,000 contacts, acceptances, incremental conversions (accepted, and not "
              "bought unprompted that month) and incremental value (EUR, margin of incremental conversions - "
              "contact cost; expected, then realised); propensity targeting (plan, oracle) beside targeting by "
              "the true uplift", ["seed", "planner", "accepted", "incremental", "expected incremental value",
                                  "realised incremental value"], lift, align="llrrrr")
    run.note("Expected value is the truth's: P(accept) at the send hour, after fatigue, x margin - contact cost. "
             "The planned value is what the model's values promised; the gap between the two is the model's error.")
    run.write()


if __name__ == "__main__":
    main()
