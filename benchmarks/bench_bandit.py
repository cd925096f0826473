"""Our served bandit against the usual baselines on the bandit simulator, same seed, same traffic.

    python benchmarks/bench_bandit.py [--source .nextbest/qs4000] [--workdir .nextbest/sim-bench]
                                      [--steps 100000] [--seed 42] [--update-every 100]
                                      [--visits-per-week 1] [--ope-at 50000]
                                      [--variant explore_share=0.05 --variant prior.intercept=0.5 ...]
                                      [--warm-start [--history-steps 20000]]

What runs (monitoring/replay/): `--steps` requests of the work dir's customers (latest
snapshot), each through the real decision path (`nextbest.serving.engine.DecisionEngine`: online features,
both champion models, every rule with the simulation's own decision log as contact history, with
simulated time), with our policy (`nextbest`: configs/bandit.yaml's Thompson sampling, learning
online through `engine.feedback`) on the path. Every baseline is scored on exactly the same steps
and allowed candidates, with the same answer draws (common random numbers), learning from its own
answers; all learners, ours included, get their feedback in the same batches of `--update-every`
decisions:
- greedy: the model's score x value, no learning;
- epsilon_greedy: acceptance per (arm, channel) shrunk to the mean, epsilon 0.1;
- linucb / lints: MABWiser 2.7 LinUCB (alpha 1) / LinTS (alpha 0.05), l2 1, one ridge model of P(accept)
  per arm on [channel, hour, weekend, engagement, every arm's model score and page view], ranked by
  bound (or sample) x value among the allowed candidates;
- vw: Vowpal Wabbit 9 `--cb_explore_adf --epsilon 0.1`, cost = -accepted x value / 1000;
- random; oracle: the true acceptance x value (regret 0 by definition).

Reported: cumulative expected reward (true P(accept) x value of what was offered), expected regret
against the oracle, regret / best baseline's regret (best of greedy, epsilon_greedy, linucb, lints,
vw), realised acceptance and reward, and the policy's own compute time (for ours, choose + learn
inside the engine; the whole engine path's time is printed apart). Target: our regret after 100,000
decisions at most 0.8 x the best baseline's.

Off-policy evaluation on the same run: from the simulation's decision log (`nextbest.monitoring.ope.
from_event_log`), IPS, SNIPS, DR, DR with shrunk weights and direct-method estimates of candidate
policies -- greedy on our final posterior, and greedy on the prior (the policy before any
feedback) -- on the first `--ope-at` logged decisions and on the last `--ope-at` (where the
logging posterior has settled), beside their true value on those same contexts from the truth.
The reward model of DR and the direct method is the final posterior (the acceptance model learned
from the log) for both candidates. Target: DR within 5% of the truth at 50,000 logged
decisions.

Analysis lines: the regret of a greedy policy that knows E[true acceptance | arm, channel,
model-score decile], calibrated in-sample on the run's own truth: about the floor for any policy
that sees what ours sees (the model's score per offer and the request context). Then the cost of
learning: the regret our final posterior would have had if known from the first decision, and the
regret of our model class fitted to the true probabilities (in-sample); the gap between those and
our regret is what learning online costs at this many decisions.

`--variant key=value` (repeatable) runs our policy with a changed configs/bandit.yaml setting
(`explore_share`, `uniform_share`, `propensity_samples`, `prior.intercept`, `prior.score_weight`,
`prior.variance`, `prior.score_variance`, `prior.fit_variance`), applied to the engine's in-memory
config only: an experiment, labelled as such in the output, never the shipped configuration, and
it writes no result file (benchmarks/results/).

`--warm-start`: every learner starts from the same history instead of from nothing. The history is
an earlier deployment's decision log (our policy from its prior for `--history-steps` decisions on
other traffic, seed + 1000, over the same simulated period); every baseline learns its answered
offers before the first step (Vowpal Wabbit with the logged propensities), and ours is warm-started
by the product's own path (`nextbest warm-start`: `nextbest.monitoring.warm_start`, its defaults) from that log
and the offer history raw/offers.parquet. Written to benchmarks/results/bench_bandit_warm_start.json;
compare with bench_bandit.json, the same run without history. The source work dir is never written: it is
copied to `--workdir` once (Feast paths rewritten).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BASELINES = ("greedy", "epsilon_greedy", "linucb", "lints", "vw")


def _copy_workdir(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("events.db*", "*.log", "simulation"))
    config = dst / "feast" / "feature_store.yaml"
    config.write_text(config.read_text().replace(str(src), str(dst)))


def _ensure_workdir(source: Path, workdir: Path, customers: int) -> None:
    if (workdir / "mlflow").exists():
        return
    if (source / "mlflow").exists():
        print(f"copying {source} -> {workdir}", file=sys.stderr)
        _copy_workdir(source.resolve(), workdir.resolve())
        return
    print(f"building a quickstart in {workdir} ({customers} customers x 12 months)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "nextbest.cli", "quickstart", "--customers", str(customers), "--months", "12",
                    "--workdir", str(workdir)], check=True, cwd=REPO)


def _variant(pairs: list[str]):
    """A hook that rebuilds the engine's policy with the changed settings (in memory only)."""
    if not pairs:
        return None, {}
    changes: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        changes[key.strip()] = float(value)

    def tune(engine):
        from nextbest.serving.bandit import Featuriser, OnlinePolicy

        cfg = engine.policy_cfg
        top = {k: (int(v) if k == "propensity_samples" else v) for k, v in changes.items() if "." not in k}
        prior = {k.split(".", 1)[1]: v for k, v in changes.items() if k.startswith("prior.")}
        cfg = cfg.model_copy(update={**top, **({"prior": cfg.prior.model_copy(update=prior)} if prior else {})})
        engine.policy_cfg = cfg
        engine.policy = OnlinePolicy(Featuriser.for_catalogue(engine.catalogue, cfg.actions), cfg, engine.eventlog,
                                     viewed_weight=math.log(cfg.cold_start.page_boost), stream=0)

    return tune, changes


def _history(paths, args, out_dir: Path, tune):
    """The history every learner starts from: a decision log of an earlier deployment (our policy from
    its prior, `--history-steps` decisions on traffic of seed + 1000) and the offer history. Baselines
    learn the log's answered offers (`PastRun`); our policy is warm-started by the product's own path
    (`nextbest.monitoring.warm_start`) from that log and raw/offers.parquet. Returns (history, report,
    a tune hook that installs the warm posterior after `tune`)."""
    import pandas as pd

    from nextbest.monitoring.replay import PastRun, simulate_workdir
    from nextbest.monitoring.warm_start import log_history, offer_history, warm_posterior
    from nextbest.serving.bandit import Posterior

    print(f"simulating an earlier deployment: {args.history_steps:,} decisions, seed {args.seed + 1000}",
          file=sys.stderr)
    earlier, _ = simulate_workdir(paths, "nextbest", args.history_steps, args.seed + 1000, args.k, (),
                                  args.update_every, args.visits_per_week, keep_steps=True,
                                  out_dir=out_dir / "history")
    history = PastRun.from_result(earlier)
    featuriser, cfg = earlier.engine.policy.featuriser, earlier.engine.policy_cfg
    sources = [log_history(earlier.events_db, featuriser, args.max_weight)]
    offers = paths.raw / "offers.parquet"
    if offers.exists() and not args.no_offer_history:
        sources.insert(0, offer_history(paths, featuriser, pd.read_parquet(offers)))
    prior = Posterior.from_config(featuriser, cfg.prior, math.log(cfg.cold_start.page_boost))
    warm = warm_posterior(prior, sources, args.history_weight)
    report = {"history_steps": args.history_steps, "history_seed": args.seed + 1000, "max_weight": args.max_weight,
              "history_weight": args.history_weight,
              "sources": [h.summary() for h in sources], "answered_offers_for_baselines": len(history.steps)}
    for h in report["sources"]:
        print(f"  history {h['source']}: {h['rows']:,} answered offers, {h['accepted']:,} accepted", file=sys.stderr)

    def warm_tune(engine):
        if tune is not None:
            tune(engine)
        engine.policy.posterior = Posterior(warm.mean.copy(), warm.cov.copy(), warm.n_updates)

    report["posterior"] = warm  # the warm posterior itself, for the analysis (not written out)
    return history, report, warm_tune


def calibrated_bound(steps, oracle_total: float, bins: int = 10) -> float:
    """Regret of a greedy policy that knows E[true acceptance | arm, channel, decile of the model's
    score] -- the information our policy's features carry about an offer, perfectly calibrated on
    the whole run (in-sample): about the best any policy seeing those features could do."""
    import numpy as np

    from nextbest.serving.bandit import logit

    cells: dict = {}
    for s in steps:
        for a, b, p in zip(s.arms, s.base_prob, s.p_true):
            cells.setdefault(a, []).append((float(logit(b)), p, s.channel))
    edges, table = {}, {}
    for a, rows in cells.items():
        lb = np.array([r[0] for r in rows])
        enough = len(rows) > 20 * bins
        edges[a] = np.unique(np.quantile(lb, np.linspace(0, 1, bins + 1)[1:-1])) if enough else np.array([])
        cell = np.searchsorted(edges[a], lb)
        sums: dict = {}
        for c, (_, p, ch) in zip(cell, rows):
            acc = sums.setdefault((ch, int(c)), [0.0, 0])
            acc[0] += p
            acc[1] += 1
        table[a] = {key: total / count for key, (total, count) in sums.items()}
    regret = 0.0
    for s in steps:
        if not s.arms:
            continue
        est = np.array([table[a][(s.channel, int(np.searchsorted(edges[a], float(logit(b)))))]
                        for a, b in zip(s.arms, s.base_prob)])
        regret += float(s.true_value.max() - s.true_value[int(np.argmax(est * s.value))])
    return regret


def frozen_regret(steps, featuriser, weights) -> float:
    """Regret of the greedy ranking by sigmoid(x . weights) x value, the weights fixed from the first
    step: what a policy would lose if it had known these weights all along (no cost of learning)."""
    import numpy as np

    from nextbest.serving.bandit import sigmoid

    regret = 0.0
    for s in steps:
        if s.arms:
            j = int(np.argmax(sigmoid(s.rows(featuriser) @ weights) * s.value))
            regret += float(s.true_value.max() - s.true_value[j])
    return regret


def best_in_class(steps, featuriser, start, every: int = 3, ridge: float = 1e-3):
    """The weights of our policy's own model (logistic on the featuriser) fitted by Newton to the true
    acceptance probabilities of every `every`-th step's candidates (in-sample): the best that model
    class can know."""
    import numpy as np

    from nextbest.serving.bandit import sigmoid

    x = np.vstack([s.rows(featuriser) for s in steps[::every] if s.arms])
    y = np.concatenate([s.p_true for s in steps[::every] if s.arms])
    w = np.array(start, dtype=float)
    for _ in range(25):
        p = sigmoid(x @ w)
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(w))
        w = w - np.linalg.solve(hess, x.T @ (p - y) + ridge * w)
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=REPO / ".nextbest" / "qs4000")
    ap.add_argument("--workdir", type=Path, default=REPO / ".nextbest" / "sim-bench")
    ap.add_argument("--customers", type=int, default=4000, help="quickstart size when neither dir holds one")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--update-every", type=int, default=100)
    ap.add_argument("--visits-per-week", type=float, default=1.0)
    ap.add_argument("--ope-at", type=int, default=50_000)
    ap.add_argument("--variant", action="append", default=[], help="key=value of configs/bandit.yaml (experiment)")
    ap.add_argument("--no-ope", action="store_true")
    ap.add_argument("--warm-start", action="store_true",
                    help="every learner starts from the same history: an earlier deployment's decision log "
                         "(--history-steps decisions of our policy on other traffic) and, for ours, the offer "
                         "history raw/offers.parquet")
    ap.add_argument("--history-steps", type=int, default=20_000)
    ap.add_argument("--no-offer-history", action="store_true", help="warm-start ours from the decision log only")
    ap.add_argument("--history-weight", type=float, default=1.0,
                    help="observations each past answer counts as in our warm start (`nextbest warm-start`)")
    ap.add_argument("--max-weight", type=float, default=1.0,
                    help="largest inverse-propensity weight of a logged offer in our warm start (1: unweighted)")
    args = ap.parse_args()

    from nextbest.serving.bandit import Posterior
    from nextbest.settings import Paths
    from nextbest.monitoring.replay import ope_against_truth, simulate_workdir
    from results import Run

    record = Run("bench_bandit_warm_start" if args.warm_start else "bench_bandit")

    _ensure_workdir(args.source, args.workdir, args.customers)
    paths = Paths.from_workdir(args.workdir).ensure()
    tune, changes = _variant(args.variant)
    label = "nextbest" + (" [variant " + ", ".join(f"{k}={v:g}" for k, v in changes.items()) + "]" if changes else "")
    out_dir = paths.reports / time.strftime("%Y-%m-%d") / "simulation" / (
        "bench" + ("-warm" if args.warm_start else "")
        + ("-" + "-".join(f"{k}={v:g}" for k, v in changes.items()) if changes else ""))
    started = time.perf_counter()
    last = [0.0]

    def progress(done: int) -> None:
        if time.perf_counter() - last[0] > 30 or done == args.steps:
            last[0] = time.perf_counter()
            print(f"  {done:,}/{args.steps:,} decisions, {last[0] - started:.0f} s", file=sys.stderr)

    history, warm = None, None
    if args.warm_start:
        history, warm, tune = _history(paths, args, out_dir, tune)
        label += " (warm start" + ("" if args.max_weight == 1.0 else f", max weight {args.max_weight:g}") + (
            ", decision log only" if args.no_offer_history else "") + (
            "" if args.history_weight == 1.0 else f", history weight {args.history_weight:g}") + ")"
    result, files = simulate_workdir(paths, "nextbest", args.steps, args.seed, args.k, BASELINES + ("random",),
                                     args.update_every, args.visits_per_week, keep_steps=True,
                                     out_dir=out_dir, progress=progress, tune=tune, history=history)
    wall = time.perf_counter() - started
    summary = result.summary()
    best = min(BASELINES, key=lambda b: summary[b]["regret"])
    best_regret = summary[best]["regret"]
    title = (f"Bandit simulator: {args.steps:,} requests ({int(result.has_candidates.sum()):,} with allowed offers), "
             f"seed {args.seed}, k {args.k}, feedback every {args.update_every}, "
             f"{result.config['days']:.0f} simulated days")
    print(f"\n## {title}{' -- EXPERIMENT: ' + label if changes else ''}\n")
    columns = ["policy", "cum. expected reward (EUR)", "regret (EUR)", "regret / best baseline",
               "acceptance (realised)", "realised reward (EUR)", "policy time (s)"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    order = ["nextbest", *sorted(BASELINES, key=lambda b: summary[b]["regret"]), "random", "oracle"]
    policy_rows = []
    for name in order:
        s = summary[name]
        ratio = s["regret"] / best_regret if best_regret > 0 else float("nan")
        policy_rows.append([label if name == "nextbest" else name, f"{s['expected_reward']:,.0f}",
                            f"{s['regret']:,.0f}", f"{ratio:.3f}", f"{s['acceptance_rate']:.2%}",
                            f"{s['realised_reward']:,.0f}", f"{s['seconds']:.1f}"])
        print("| " + " | ".join(policy_rows[-1]) + " |")
    ours = summary["nextbest"]["regret"] / best_regret if best_regret > 0 else float("nan")
    verdict = "MET" if ours <= 0.8 else "MISSED"
    notes = [f"Target (regret <= 0.8 x best baseline, {best}): {verdict} ({ours:.3f}).",
             f"Engine path (features, models, rules, policy, log, feedback) for {args.steps:,} requests: "
             f"{result.engine_seconds:.0f} s; whole run {wall:.0f} s."]
    print()
    print("\n".join(notes))
    record.table(title, columns, policy_rows, align="lrrrrrr")
    report = {"config": result.config, "variant": changes, "warm_start": warm, "summary": summary,
              "best_baseline": best,
              "ratio_to_best_baseline": ours, "target_met": ours <= 0.8, "wall_seconds": wall,
              "files": {k: str(v) for k, v in files.items()}}
    if result.steps is not None:
        bound = calibrated_bound(result.steps, float(result.oracle.sum()))
        report["calibrated_bound_regret"] = bound
        notes.append(f"Analysis: a greedy policy knowing E[true acceptance | arm, channel, model-score decile] "
                     f"(in-sample, perfectly calibrated) would have regret {bound:,.0f} = {bound / best_regret:.3f} x "
                     f"{best}: the most our policy's features allow.")
        print(notes[-1])
        featuriser, final = result.engine.policy.featuriser, result.engine.policy.posterior.mean
        frozen = frozen_regret(result.steps, featuriser, final)
        ideal = frozen_regret(result.steps, featuriser, best_in_class(result.steps, featuriser, final))
        report["learning"] = {"frozen_final_posterior_regret": frozen, "best_in_class_regret": ideal}
        if warm is not None:
            start = frozen_regret(result.steps, featuriser, warm["posterior"].mean)
            report["learning"]["frozen_warm_posterior_regret"] = start
            notes.append(f"The warm posterior, frozen (no learning during the run): regret {start:,.0f} = "
                         f"{start / best_regret:.3f} x {best}.")
            print(notes[-1])
        notes.append(f"Cost of learning: the final posterior, known from the first decision, would have regret "
                     f"{frozen:,.0f} = {frozen / best_regret:.3f} x {best}; our model class fitted to the true "
                     f"probabilities (in-sample) {ideal:,.0f} = {ideal / best_regret:.3f} x. The rest of our regret "
                     f"is spent learning online.")
        print(notes[-1])
    for line in notes:
        record.note(line)
    if not args.no_ope:
        engine = result.engine
        featuriser = engine.policy.featuriser
        cfg = engine.policy_cfg
        final = engine.policy.posterior
        prior = Posterior.from_config(featuriser, cfg.prior, math.log(cfg.cold_start.page_boost))
        report["ope"] = {}
        ope_title = f"Off-policy evaluation on {args.ope_at:,} logged decisions (truth from the simulator)"
        print(f"\n## {ope_title}\n")
        ope_columns = ["candidate policy", "logged decisions", "true value / decision", "DR [95% CI]", "DR error",
                       "IPS", "SNIPS", "DR, shrunk weights (error)", "direct method (error)", "logged policy"]
        print("| " + " | ".join(ope_columns) + " |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        ope_rows = []

        def fmt(e):
            return f"{e['value']:.3f} [{e['ci95'][0]:.3f}, {e['ci95'][1]:.3f}]"

        for name, post in (("greedy on the final posterior", final), ("greedy on the prior", prior)):
            windows = {"first": slice(0, args.ope_at), "last": slice(-args.ope_at, None)}
            for (where, _), ope in zip(windows.items(), ope_against_truth(result, post, featuriser, 0.0,
                                                                         tuple(windows.values()),
                                                                         reward_model=final)):
                report["ope"][f"{name}, {where} {args.ope_at}"] = ope
                err = ope["errors"]
                ope_rows.append([name, f"{where} {ope['n']:,}", f"{ope['true_value']:.4f}", fmt(ope["dr"]),
                                 f"{ope['dr_error']:+.2%}", fmt(ope["ips"]), fmt(ope["snips"]),
                                 f"{ope['dr_os']['value']:.3f} ({err['dr_os']:+.2%})",
                                 f"{ope['dm']['value']:.3f} ({err['dm']:+.2%})", f"{ope['logged_value']:.4f}"])
                print("| " + " | ".join(ope_rows[-1]) + " |")
        record.table(ope_title, ope_columns, ope_rows, align="llrrrrrrrr")
    if warm is not None:
        warm.pop("posterior", None)
    out = out_dir / f"bench_bandit-{args.steps}.json"
    out.write_text(json.dumps(report, indent=2, default=float))
    print(f"\nfiles: {', '.join(str(v) for v in files.values())}, {out}")
    shipped_warm_start = not args.no_offer_history and args.max_weight == 1.0 and args.history_weight == 1.0
    if not changes and shipped_warm_start:  # an experiment is not the shipped policy's figure
        record.figures.update({k: v for k, v in report.items() if k not in ("files", "variant")})
        record.write()


if __name__ == "__main__":
    main()
