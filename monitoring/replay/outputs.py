"""What a finished replay yields: its files, a whole simulation on a work dir, and OPE against the truth.

`write_outputs` writes the cumulative curves (CSV), the summary (JSON), the regret plot and the
driver's trace; `simulate_workdir` puts engine, truth, traffic and run together for the CLI and the
benchmark; `ope_against_truth` sets the off-policy estimates from the run's decision log beside
the candidate policy's true value, which only the simulator knows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np

from nextbest.constants import DEFAULT_SEED
from nextbest.io import atomic_write, write_json
from nextbest.monitoring.replay.baselines import ENGINE_POLICY, POLICIES
from nextbest.monitoring.replay.loop import Result, open_engine, run
from nextbest.monitoring.replay.world import ACTION_TRUTH, Truth, make_traffic

# -- reports ---------------------------------------------------------------------------------------

def checkpoints(result: Result, points: int = 500) -> list[dict]:
    """Cumulative reward and regret per policy at up to `points` evenly spaced steps (CSV rows)."""
    n = len(result.oracle)
    if n == 0:
        return []
    at = np.unique(np.linspace(1, n, min(points, n)).round().astype(int))
    cum_oracle = np.cumsum(result.oracle)
    rows = []
    for name, t in result.tallies.items():
        cum = {"expected": np.cumsum(t.expected), "realised": np.cumsum(t.realised), "accepts": np.cumsum(t.accepts),
               "shown": np.cumsum(t.shown)}
        for s in at:
            i = s - 1
            rows.append({"step": int(s), "policy": name, "cum_expected_reward": round(float(cum["expected"][i]), 4),
                         "cum_oracle_reward": round(float(cum_oracle[i]), 4),
                         "cum_regret": round(float(cum_oracle[i] - cum["expected"][i]), 4),
                         "cum_realised_reward": round(float(cum["realised"][i]), 2),
                         "offers": int(cum["shown"][i]), "accepts": int(cum["accepts"][i])})
    return rows


def plot_regret(result: Result, path: Path, title: str = "") -> Path:
    """Cumulative expected regret per policy: PNG with matplotlib when installed, else a plain SVG."""
    curves = {name: result.regret(name) for name in result.tallies if name != "oracle"}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _svg_plot(curves, path.with_suffix(".svg"), title)
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name, linewidth=2.2 if name == result.driver else 1.2)
    ax.set_xlabel("decisions")
    ax.set_ylabel("cumulative expected regret (EUR)")
    ax.set_title(title or "regret against the oracle, same traffic and allowed candidates")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = path.with_suffix(".png")
    atomic_write(path, lambda t: fig.savefig(t, dpi=110, format="png"))
    plt.close(fig)
    return path


def _svg_plot(curves: dict[str, np.ndarray], path: Path, title: str) -> Path:
    width, height, pad = 800, 500, 50
    top = max((float(c.max()) for c in curves.values() if len(c)), default=1.0) or 1.0
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<text x="{pad}" y="20">{title}</text>']
    for j, (name, c) in enumerate(curves.items()):
        idx = np.unique(np.linspace(0, len(c) - 1, min(400, len(c))).astype(int))
        pts = " ".join(f"{pad + (width - 2 * pad) * i / max(len(c) - 1, 1):.1f},"
                       f"{height - pad - (height - 2 * pad) * c[i] / top:.1f}" for i in idx)
        colour = colours[j % len(colours)]
        parts += [f'<polyline fill="none" stroke="{colour}" points="{pts}"/>',
                  f'<text x="{width - 150}" y="{40 + 16 * j}" fill="{colour}">{name}</text>']
    parts.append("</svg>")
    return atomic_write(path, lambda t: Path(t).write_text("\n".join(parts)))


def write_outputs(result: Result, out_dir: Path, name: str) -> dict[str, Path]:
    """`<name>.csv` (cumulative curves), `<name>.json` (summary), the regret plot and the driver's trace."""
    import csv

    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    rows = checkpoints(result)
    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["step"])
            writer.writeheader()
            writer.writerows(rows)

    files["csv"] = atomic_write(out_dir / f"{name}.csv", write_csv)
    files["plot"] = plot_regret(result, out_dir / f"{name}.png")
    trace = pd.DataFrame(result.trace)
    if not trace.empty:
        trace["offers"] = trace["offers"].map(json.dumps)
        trace["accepted"] = trace["accepted"].map(json.dumps)
    files["trace"] = atomic_write(out_dir / f"{name}.trace.parquet", lambda t: trace.to_parquet(t, index=False))
    files["json"] = out_dir / f"{name}.json"
    summary = {"config": result.config, "decisions_with_candidates": int(result.has_candidates.sum()),
               "engine_seconds": round(result.engine_seconds, 2), "events_db": str(result.events_db),
               "policies": result.summary(), "files": {k: str(v) for k, v in files.items() if k != "json"}}
    write_json(files["json"], summary)
    return files


def simulate_workdir(paths, policy: str = ENGINE_POLICY, steps: int = 10_000, seed: int = DEFAULT_SEED, k: int = 1,
                     shadows: tuple[str, ...] = (), update_every: int = 100, visits_per_week: float = 1.0,
                     customers: int | None = None, keep_steps: bool = False, out_dir: Path | None = None,
                     progress: Callable[[int], None] | None = None,
                     tune: Callable[[object], None] | None = None,
                     history=None) -> tuple[Result, dict[str, Path]]:
    """One simulation on a work dir: engine, truth, traffic, run, files under reports/<date>/simulation/.

    The decision log of the run is `<workdir>/simulation/<name>.events.db` (replaced on each run),
    never the work dir's own events.db. `tune(engine)`, if given, may change the loaded engine
    (the benchmark's labelled experiments with another bandit configuration, or a warm-started
    posterior); `history` (`loop.PastRun`) is what the baselines learn before the first step.
    """
    from nextbest.config import load_catalogue

    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; one of {', '.join(POLICIES)}")
    unknown = [s for s in shadows if s not in POLICIES or s == ENGINE_POLICY]
    if unknown:
        raise ValueError(f"shadow policies must be baselines, got {unknown}")
    if steps < 1 or k < 1 or update_every < 1:
        raise ValueError("steps, k and update_every must be at least 1")
    catalogue = load_catalogue()
    truth_dir = paths.truth
    if not (truth_dir / "acquisition.parquet").exists():
        raise FileNotFoundError(f"{truth_dir}/acquisition.parquet: the simulator's truth is missing "
                                "(only a work dir built by `nextbest generate`/`quickstart` has one)")
    name = f"{policy}-seed{seed}-{steps}"
    events_db = paths.root / "simulation" / f"{name}.events.db"
    engine = open_engine(paths, events_db)
    if tune is not None:
        tune(engine)
    truth = Truth.load(truth_dir, catalogue.ids, {a: ACTION_TRUTH.get(a, 0.01) for a in engine.policy_cfg.actions},
                       catalogue.categories())
    start = truth.snapshot + timedelta(days=1)
    traffic = make_traffic(len(truth.customer_ids), steps, seed, start, visits_per_week, customers)
    result = run(engine, truth, traffic, policy, shadows, k, update_every, seed, keep_steps, progress, history)
    result.events_db = events_db
    result.config["visits_per_week"] = visits_per_week
    out_dir = out_dir or paths.reports / time.strftime("%Y-%m-%d") / "simulation"
    return result, write_outputs(result, out_dir, name)


# -- off-policy evaluation against the truth ------------------------------------------------------

def ope_against_truth(result: Result, posterior, featuriser, explore_share: float = 0.0,
                      windows: tuple[slice, ...] = (slice(None),), samples: int = 256, seed: int = 0,
                      reward_model=None) -> list[dict]:
    """IPS, SNIPS and DR estimates of a Thompson-sampling candidate policy from the run's decision log,
    beside the candidate's true value on the same logged contexts.

    Args:
        result: a run with the engine on the path and `keep_steps=True`.
        posterior: the candidate's posterior (e.g. the run's final one, or the prior).
        explore_share: the candidate's exploration share (0: greedy on the posterior mean).
        reward_model: the DR estimate's reward model (default the candidate's posterior; the run's
            final posterior is the one learned from this log).
        windows: which logged decisions to evaluate on, in log order (e.g. `slice(0, 50_000)`);
            one answer per window.

    Returns:
        Per window: {"n", "true_value", "logged_value", "ips", "snips", "dr", "dr_os", "dm" (each
        {"value", "ci95", "n"}), "dr_error" (relative), "errors" (each estimator's, relative)}.
    """
    from nextbest.monitoring.ope import estimate_all, from_event_log

    if result.steps is None:
        raise ValueError("run the simulation with keep_steps=True to evaluate against the truth")
    logged, target, predicted = from_event_log(result.events_db, posterior, featuriser, explore_share, samples, seed,
                                               reward_model=reward_model)
    ids = logged.decision_ids
    steps = {s.decision_id: s for s in result.steps if s.decision_id is not None}
    true_ev = np.zeros(target.shape[:2])
    for row, decision_id in enumerate(ids):
        s = steps[decision_id]
        true_ev[row, :len(s.arms)] = s.true_value
        served = logged.served[row][logged.served[row] >= 0]
        if [s.arms[j] for j in served] != result.trace[s.t]["offers"]:  # the two readings of the log must agree
            raise RuntimeError(f"decision {decision_id}: logged offers do not match the simulator's trace")
    out = []
    for window in windows:
        rows = np.arange(len(ids))[window]
        part = logged.take(rows)
        estimates = estimate_all(part, target[rows], predicted[rows])
        truth = float(np.einsum("nmk,nm->n", target[rows], true_ev[rows]).mean())
        errors = {name: (estimates[name]["value"] - truth) / truth if truth else float("nan")
                  for name in ("ips", "snips", "dr", "dr_os", "dm")}
        out.append({"n": len(rows), "true_value": truth, "logged_value": float(part.reward.sum(1).mean()),
                    **estimates, "dr_error": errors["dr"], "errors": errors})
    return out
