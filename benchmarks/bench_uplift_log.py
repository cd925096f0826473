"""`nextbest train uplift` on the simulated bank: how well the uplift model learnt from the decision
log ranks customers, beside the truth's own ranking.

    python benchmarks/bench_uplift_log.py [--source .nextbest/sim-bench] [--seeds 5] [--channel email]

A deposits campaign on every customer of the work dir's bank (latest snapshot): half of them, at
random, in the campaign's control group; each treated customer is offered the deposit product
(savings account or term deposit) the champion next-best-product model ranks higher for them, on
`--channel`. Answers come from the simulator's truth with its own coupling: one uniform draw per
customer and product decides both the unprompted acquisition (U < p0) and the answer to the offer
(U < a), so an offer never prevents an acquisition and adds max(a - p0, 0). Decisions and
acquisitions are written to a copy of the work dir's decision log as the service and the bank's core
would (groups, `product_acquired` events), and the command trains from that log as a user runs it
(`nextbest.monitoring.uplift_model.train_uplift`: registered and promoted in the copy's MLflow).

Reported per seed: the units, the observed uplift, the cross-fitted Qini coefficient of the
T-learner, the X-learner and the registered one, beside the Qini coefficient of the true uplift
max(a - p0, 0) used as the score on the same customers and outcomes (the best any model can rank
them). Targets: the registered model's Qini at least 0.8 x the truth's and at least the T-learner's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DAY = 86400.0
PRODUCTS = ("savings_account", "term_deposit")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("events.db*", "*.log", "simulation", "reports"))
    config = dst / "feast" / "feature_store.yaml"
    config.write_text(config.read_text().replace(str(src), str(dst)))
    return dst


def campaign_log(paths, truth, seed: int, channel: str) -> tuple[np.ndarray, float]:
    """Writes the campaign's decisions and acquisitions to the work dir's (new) log; returns each
    customer's true uplift of the offer they would get (the score the truth ranks by) and the
    campaign's time."""
    from nextbest.constants import NBP_MODEL_NAME
    from nextbest.monitoring.rescore import model_rescorer
    from nextbest.serving.eventlog import EventLog
    from nextbest.serving.privacy import load_key, pseudonymise

    rng = np.random.default_rng(seed)
    n = len(truth.customer_ids)
    key = load_key(paths.root)
    pseudonyms = [pseudonymise(c, key) for c in truth.customer_ids]
    t0 = truth.snapshot.timestamp() + DAY
    rescorer = model_rescorer(paths, NBP_MODEL_NAME, "champion")
    scores = rescorer.score(pseudonyms, np.full(n, t0))
    customers = np.arange(n)
    hours = rng.integers(9, 20, n)
    a = truth.acceptance_grid(customers, list(PRODUCTS), channel, hours, 1)  # (n, 2)
    p0 = truth.unprompted(customers, list(PRODUCTS))  # (n, 2)
    columns = [rescorer.products.index(p) for p in PRODUCTS]
    nbp = np.nan_to_num(scores[:, columns], nan=0.0)
    offered = np.argmax(nbp, axis=1)  # the deposit the champion ranks higher
    treated = rng.random(n) < 0.5
    u = rng.random((n, 2))
    rows = np.arange(n)
    bought = u < p0  # unprompted, each product
    bought[rows[treated], offered[treated]] |= u[rows[treated], offered[treated]] < a[rows[treated], offered[treated]]
    events = EventLog(paths.events_db, durable=False)
    decisions = []
    for i in range(n):
        group = "treatment" if treated[i] else "control"
        offers = ([{"product_id": PRODUCTS[offered[i]], "rank": 1, "propensity": 1.0}] if treated[i] else [])
        decisions.append((f"d{i}", t0 + i, pseudonyms[i], channel, 1, offers, {},
                          {"groups": {"all": "treatment", "deposits": group}, "segment": "all"}))
    events.log_decisions(decisions)
    for i, j in zip(*np.nonzero(bought)):
        events.log_customer_event(f"e{i}-{j}", pseudonyms[i], "product_acquired", {"product_id": PRODUCTS[j]},
                                  t0 + i + 5 * DAY)
    events.close()
    return np.maximum(a[rows, offered] - p0[rows, offered], 0.0), t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=REPO / ".nextbest" / "sim-bench")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--channel", default="email")
    args = ap.parse_args()

    from results import Run

    from nextbest.config import load_catalogue
    from nextbest.monitoring.replay import Truth
    from nextbest.monitoring.uplift import campaign_units
    from nextbest.monitoring.uplift_model import train_uplift
    from nextbest.serving.privacy import load_key, pseudonymise
    from nextbest.settings import Paths
    from nextbest.training.uplift import curves

    if not (args.source / "truth").exists():
        sys.exit(f"{args.source}: not a simulated work dir (no truth/); build one with `nextbest quickstart`")
    record = Run("bench_uplift_log")
    catalogue = load_catalogue()
    rows, figures = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-uplift-log-") as tmp:
        paths = Paths.from_workdir(_copy(args.source.resolve(), Path(tmp) / "wd"))
        truth = Truth.load(paths.truth, catalogue.ids, {}, catalogue.categories())
        by_id = {c: i for i, c in enumerate(truth.customer_ids)}
        key = load_key(paths.root)
        for seed in range(1, args.seeds + 1):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{paths.events_db}{suffix}").unlink(missing_ok=True)
            uplift, t0 = campaign_log(paths, truth, seed, args.channel)
            until = t0 + 60 * DAY
            result = train_uplift(paths, "deposits", 30, until=until, seed=seed)
            units = campaign_units(paths.events_db, catalogue, "deposits", list(PRODUCTS), 30, until=until)
            back = {pseudonymise(c, key): i for c, i in by_id.items()}
            score = uplift[units["pseudonym"].map(back).to_numpy(int)]
            true_qini = curves(score, units["converted"].to_numpy(float),
                               (units["group"] == "treatment").to_numpy()).qini_coefficient
            m = {k: v["qini_coefficient"] for k, v in result["metrics"].items()}
            chosen = m[result["learner"]]
            figures.append({"seed": seed, "units": result["units"], "observed_uplift": result["observed_uplift"],
                            "qini": m, "learner": result["learner"], "truth_qini": true_qini,
                            "ratio_to_truth": chosen / true_qini if true_qini > 0 else None,
                            "ratio_to_t_learner": chosen / m["t_learner"] if m["t_learner"] > 0 else None,
                            "promoted": result["promoted"], "seconds": result["seconds"]})
            rows.append([str(seed), f"{result['units']['treatment']:,} / {result['units']['control']:,}",
                         f"{100 * result['observed_uplift']:+.2f} pp", f"{m['t_learner']:.5f}", f"{m['x_learner']:.5f}",
                         result["learner"].replace("_", "-"), f"{true_qini:.5f}",
                         f"{chosen / true_qini:.2f}" if true_qini > 0 else "n/a", f"{result['seconds']:.1f}"])
            print(" | ".join(rows[-1]), file=sys.stderr)
    title = (f"Uplift model from the decision log: deposits campaign on {args.channel}, "
             f"{len(truth.customer_ids):,} customers, half in control, seeds 1-{args.seeds}")
    columns = ["seed", "treated / control", "observed uplift", "T-learner Qini", "X-learner Qini", "registered",
               "truth's Qini", "registered / truth", "train (s)"]
    record.table(title, columns, rows, align="lrrrrlrrr")
    ratios = [f["ratio_to_truth"] for f in figures if f["ratio_to_truth"] is not None]
    vs_t = [f["qini"][f["learner"]] >= f["qini"]["t_learner"] for f in figures]
    note = (f"Registered model's Qini / truth's: median {np.median(ratios):.2f} (range {min(ratios):.2f}-"
            f"{max(ratios):.2f}); at least the T-learner's on {sum(vs_t)} of {len(vs_t)} seeds. Target 0.8 x the "
            f"truth's: {'MET' if np.median(ratios) >= 0.8 else 'MISSED'} (median).")
    record.note(note)
    print(title)
    print("| " + " | ".join(columns) + " |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(note)
    record.figures.update({"seeds": figures, "median_ratio_to_truth": float(np.median(ratios)) if ratios else None,
                           "wall_seconds": time.perf_counter() - started})
    record.write()


if __name__ == "__main__":
    main()
