"""The uplift model learnt from the platform's own decision log: which customers a campaign changes.

Units are the customers the monitor's uplift report compares (`monitoring.uplift.campaign_units`):
each customer assigned to the campaign's control or treatment group, at their first exposure, whose
outcome window has elapsed; the outcome is whether they acquired one of the campaign's products in
the window. Inputs are the customer's latest feature snapshot at exposure (point-in-time), the
next-best-product champion's own inputs. Control groups are randomised by a stable hash, so the
comparison needs no propensity model.

A T-learner and an X-learner are cross-fitted (`training.uplift`): their Qini coefficients and AUUC
on held-out scores are the model's metrics, with the Qini curves as artifacts. The one with the
higher Qini (the X-learner on large data; on a few hundred customers the T-learner often) is
refitted on every unit and registered in MLflow (`uplift` for the global control group,
`uplift_<campaign>` for a campaign's) as challenger, and promoted to champion when its Qini beats
both chance and the current champion's Qini on the same units (the champion may have seen some of
them: a comparison that leans towards keeping it).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from nextbest.constants import DEFAULT_SEED
from nextbest.settings import Paths

MIN_UNITS_PER_GROUP = 100
MIN_CONVERSIONS = 10


def model_name(campaign: str) -> str:
    """The registered name of a campaign's uplift model."""
    from nextbest.monitoring.uplift import GLOBAL

    return "uplift" if campaign == GLOBAL else f"uplift_{campaign}"


def train_uplift(paths: Paths, campaign: str = "all", window_days: float = 30.0, until: float | None = None,
                 seed: int = DEFAULT_SEED) -> dict:
    """Learns, tracks, registers and (if it earns it) promotes a campaign's uplift model.

    Args:
        campaign: `all` (the global control group, every product) or a campaign of `holdout.campaigns`
            in bandit.yaml.
        window_days: how long after exposure an acquisition counts.
        until: outcomes must have matured by then (epoch seconds; default now).

    Returns:
        {"name", "version", "promoted", "reason", "units", "metrics": {learner: {"qini_coefficient",
        "auuc"}}, "champion_qini", "dropped", "seconds"}.

    Raises:
        LookupError: unknown campaign, no champion nbp model, or too few units to learn from (the
            message says how many there are and how many are needed).
    """
    from nextbest.config import load_bandit, load_catalogue
    from nextbest.constants import NBP_MODEL_NAME
    from nextbest.monitoring.rescore import feature_snapshots, snapshot_at
    from nextbest.monitoring.uplift import GLOBAL, campaign_units
    from nextbest.training import registry
    from nextbest.training import uplift as learn
    from nextbest.training.models import from_checkpoint

    started = time.perf_counter()
    catalogue = load_catalogue()
    cfg = load_bandit(catalogue=catalogue)
    if campaign != GLOBAL and campaign not in cfg.holdout.campaigns:
        known = ", ".join([GLOBAL, *cfg.holdout.campaigns])
        raise LookupError(f"no campaign {campaign!r} under holdout.campaigns in bandit.yaml; one of {known}")
    products = GLOBAL if campaign == GLOBAL else list(cfg.holdout.campaigns[campaign].products)
    units = campaign_units(paths.events_db, catalogue, campaign, products, window_days, until=until)
    sizes = units["group"].value_counts()
    n_c, n_t = int(sizes.get("control", 0)), int(sizes.get("treatment", 0))
    if min(n_c, n_t) < MIN_UNITS_PER_GROUP or int(units["converted"].sum()) < MIN_CONVERSIONS:
        raise LookupError(f"{paths.events_db}: campaign {campaign!r} has {n_c:,} control and {n_t:,} treatment "
                          f"customers whose {window_days:g}-day window has elapsed, {int(units['converted'].sum()):,} "
                          f"of them converted; an uplift model needs at least {MIN_UNITS_PER_GROUP} in each group "
                          f"and {MIN_CONVERSIONS} conversions")
    _, meta = from_checkpoint(registry.fetch_alias(paths, NBP_MODEL_NAME).local_dir)
    columns = list(meta.preprocessor.numeric) + list(meta.preprocessor.categorical)
    table = feature_snapshots(paths, set(columns))
    rows = snapshot_at(table, units["pseudonym"].tolist(), units["t0"].to_numpy(float))
    known = rows["_pseudonym"].notna().to_numpy() if "_pseudonym" in rows else np.zeros(len(rows), bool)
    dropped = int((~known).sum())  # prospects: no snapshot before their exposure
    frame = rows.loc[known, [c for c in columns if c in rows.columns]].reset_index(drop=True)
    units = units[known].reset_index(drop=True)
    y = units["converted"].to_numpy(float)
    treated = (units["group"] == "treatment").to_numpy(bool)
    arm = treated.astype(int)
    d = learn.design(frame, list(frame.columns))
    fold = learn.folds(len(frame), seed=seed)
    mu = learn.outcome_models(d.x, y, arm, 2, fold, d.categorical, binary=True, seed=seed)
    shares = learn.arm_shares(arm, 2, fold)
    scores = {"t_learner": learn.t_learner(mu, 1),
              "x_learner": learn.x_learner(d.x, y, arm, mu, shares, fold, d.categorical, 1, seed=seed)}
    measured = {name: learn.curves(score, y, treated) for name, score in scores.items()}
    observed = float(y[treated].mean() - y[~treated].mean())
    info = {"campaign": campaign, "products": products, "window_days": float(window_days),
            "units": {"control": int((~treated).sum()), "treatment": int(treated.sum())}}
    # The learner that ranked the held-out customers best is the one refitted and registered.
    chosen = max(measured, key=lambda k: measured[k].qini_coefficient)
    model = learn.UpliftModel.fit(chosen, d, y, treated, mu, seed, info)

    name = model_name(campaign)
    champion_qini = None
    if registry.alias_version(paths, name) is not None:
        champion = learn.UpliftModel.load(registry.fetch_alias(paths, name).local_dir)
        champion_qini = learn.curves(champion.score(frame), y, treated).qini_coefficient
    qini = measured[chosen].qini_coefficient
    if qini <= 0:
        promoted, reason = False, f"Qini {qini:.5f} is no better than random targeting"
    elif champion_qini is not None and qini <= champion_qini:
        promoted, reason = False, f"Qini {qini:.5f} does not beat the champion's {champion_qini:.5f} on these units"
    else:
        promoted = True
        reason = (f"Qini {qini:.5f} against the champion's {champion_qini:.5f}" if champion_qini is not None
                  else f"first uplift model, Qini {qini:.5f}")

    mlflow = registry.tracking(paths)
    with mlflow.start_run(experiment_id=registry.experiment_id(paths, "uplift"),
                          run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        mlflow.log_params({"campaign": campaign, "window_days": window_days, "learner": chosen,
                           "control_units": info["units"]["control"], "treatment_units": info["units"]["treatment"],
                           "features": len(d.names), "dropped_without_snapshot": dropped, "seed": seed})
        mlflow.log_metrics({"observed_uplift": observed, "conversion_control": float(y[~treated].mean()),
                            "conversion_treatment": float(y[treated].mean()),
                            **{f"{k}_qini": m.qini_coefficient for k, m in measured.items()},
                            **{f"{k}_auuc": m.auuc for k, m in measured.items()}})
        with tempfile.TemporaryDirectory() as tmp:
            model.save(Path(tmp) / registry.MODEL_ARTIFACT_PATH)
            curves_dir = Path(tmp) / "qini"
            curves_dir.mkdir()
            lines = ["share," + ",".join(f"{k}_qini,{k}_uplift" for k in measured)]
            share = next(iter(measured.values())).share
            for i, s in enumerate(share):
                lines.append(f"{s:.4f}," + ",".join(f"{m.qini[i]:.6f},{m.uplift[i]:.6f}" for m in measured.values()))
            (curves_dir / "qini.csv").write_text("\n".join(lines) + "\n")
            (curves_dir / "metrics.json").write_text(json.dumps({k: m.as_dict() for k, m in measured.items()}))
            mlflow.log_artifacts(str(curves_dir), artifact_path="qini")
            mlflow.log_artifacts(str(Path(tmp) / registry.MODEL_ARTIFACT_PATH),
                                 artifact_path=registry.MODEL_ARTIFACT_PATH)
        run_id = run.info.run_id
    version = registry.register(paths, name, run_id)
    if promoted:
        registry.promote(paths, name, version, reason)
    return {"name": name, "version": version, "learner": chosen, "promoted": promoted, "reason": reason,
            "units": info["units"],
            "observed_uplift": observed, "metrics": {k: {"qini_coefficient": m.qini_coefficient, "auuc": m.auuc}
                                                     for k, m in measured.items()},
            "champion_qini": champion_qini, "dropped": dropped, "run_id": run_id,
            "seconds": time.perf_counter() - started}
