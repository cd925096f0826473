"""`nextbest monitor`: feature, served-feature, prediction and outcome drift, and one gate.

Writes under `reports/<date>/`: Evidently HTML + JSON per drift section (`data_drift` for the
features, `served_feature_drift`, `prediction_drift`), `summary.json` (every section's numbers and the
gate) and `index.html` (a page linking them). The gate's thresholds are `configs/monitoring.yaml`;
`run_monitor` returns exit code 0 when it passes and 1 when it fails.

Sections:
- feature drift: reference = the champion nbp model's training months (its model.json), current
  = the latest snapshot of the feature tables (`nextbest.monitoring.drift` explains the tests).
- served feature drift: the same reference against the online feature vectors logged at serving
  time (events.db `served_features`), when there are any.
- prediction drift: the champion's scores per product on a sample of the reference window
  against its scores on the latest snapshot, and against the scores it served
  (decisions.context.candidates[].base_prob).
- acceptance: offers shown and accepted per week or month from the decision log, the last
  period against the earlier ones (or, with one period only, against the historical campaigns'
  acceptance in the reference window).
- churn: the champion churn model's predictions on the last snapshot whose outcome has matured
  (`horizon_months` before the latest) against who actually left (the training label of
  `nextbest.training.datasets.churn_labels`), overall and by bins of predicted probability.
- extra sections: callables `(paths, config, out_dir) -> (name, dict, html_path_or_None)`, for
  business KPIs, uplift and off-policy evaluation; a dict with a boolean `passed` joins the gate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


from nextbest.config import GateSection, MonitoringConfig, load_monitoring
from nextbest.constants import CHURN_MODEL_NAME, NBP_MODEL_NAME
from nextbest.io import atomic_write, write_json
from nextbest.monitoring import drift as D
from nextbest.monitoring.index_page import index_html
from nextbest.settings import Paths


from nextbest.monitoring.inputs import (FEATURE_REPORT, ExtraSection, champion, load_features, served_features,
                                        served_scores)
from nextbest.monitoring.sections import (acceptance_section, churn_section, drift_section, drift_settings,
                                          prediction_section, prepare_features)

# -- gate and outputs --------------------------------------------------------------------------

@dataclass
class MonitorResult:
    summary: dict
    exit_code: int
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def _feature_checks(name: str, section: dict, gate: GateSection) -> list[dict]:
    checks = [{"check": f"{name}: share of drifted columns", "value": section["share_drifted"],
               "limit": gate.max_share_drifted, "passed": section["share_drifted"] <= gate.max_share_drifted}]
    bad = [c for c in gate.never_drift if c in section["drifted_columns"]]
    checks.append({"check": f"{name}: columns that must never drift", "value": bad, "limit": gate.never_drift,
                   "passed": not bad})
    return checks


def gate_checks(sections: dict[str, dict], gate: GateSection) -> list[dict]:
    """Every check of the gate, with its value, limit and result."""
    checks = _feature_checks("feature_drift", sections["feature_drift"], gate)
    served = sections.get("served_feature_drift") or {}
    if gate.include_served and "share_drifted" in served:
        checks += _feature_checks("served_feature_drift", served, gate)
    pred = sections.get("prediction_drift") or {}
    if "drifted_products" in pred:
        n = len(pred["drifted_products"])
        checks.append({"check": "prediction_drift: products whose scores drifted", "value": pred["drifted_products"],
                       "limit": gate.max_drifted_products, "passed": n <= gate.max_drifted_products})
        served_scores_ = pred.get("served") or {}
        if gate.include_served and "drifted_columns" in served_scores_:
            n = len(served_scores_["drifted_columns"])
            checks.append({"check": "prediction_drift: served scores drifted",
                           "value": served_scores_["drifted_columns"],
                           "limit": gate.max_drifted_products, "passed": n <= gate.max_drifted_products})
    for name, section in sections.items():
        if name in ("feature_drift", "served_feature_drift", "prediction_drift"):
            continue
        if isinstance(section, dict) and isinstance(section.get("passed"), bool):
            value = section.get("relative_drop", section.get("calibration_gap", section.get("value")))
            checks.append({"check": name, "value": value, "limit": section.get("limit"), "passed": section["passed"]})
    return checks


def run_monitor(paths: Paths, config: MonitoringConfig | None = None,
                extra_sections: Sequence[ExtraSection] = (), today: str | None = None,
                on_stage: Callable[[str], None] = lambda s: None) -> MonitorResult:
    """Runs every section, writes the reports under `reports/<today>/` and applies the gate.

    Raises:
        FileNotFoundError: a required input is missing (the message names it).
        ValueError: the data cannot be monitored (for example a single snapshot).
    """
    cfg = config or load_monitoring()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    clock = [started, None]

    def stage(name: str) -> None:
        now = time.perf_counter()
        if clock[1] is not None:
            timings[clock[1]] = round(now - clock[0], 2)
        clock[0], clock[1] = now, name
        on_stage(name)

    out_dir = paths.reports / (today or time.strftime("%Y-%m-%d", time.gmtime()))
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    sections: dict[str, dict] = {}

    stage("load features and the champion models")
    features = load_features(paths)
    nbp = champion(paths, NBP_MODEL_NAME)
    reference_months = None
    source = "every snapshot before the latest (no champion nbp model registered)"
    if nbp is not None:
        reference_months = (nbp[1].extra.get("split_months") or {}).get("train")
        source = "the champion nbp model's training months"
    stage("feature drift")
    prep = prepare_features(features, cfg.features, reference_months, source)
    settings = drift_settings(cfg.features, cfg.seed)
    section, f = drift_section(prep, prep.current, prep.columns, settings, out_dir, FEATURE_REPORT,
                                cfg.features.report_max_rows)
    section["skipped"] = {**prep.skipped, **section["skipped"]}
    window = {"reference": {"source": prep.reference_source, "months": prep.reference_months},
              "current": {"snapshot": prep.current_month}}
    sections["feature_drift"] = {**window, **section}
    files.update(f)

    served = served_features(paths.events_db)
    if len(served):
        stage("served feature drift")
        served_c, _ = D.censor(served, cfg.features.censor_cap_months)
        cols = [c for c in prep.columns if c in served_c.columns]
        section, f = drift_section(prep, served_c, cols, settings, out_dir, "served_feature_drift",
                                    cfg.features.report_max_rows)
        sections["served_feature_drift"] = {"reference": window["reference"],
                                            "current": {"source": "events.db served_features", "rows": len(served)},
                                            "not_logged": [c for c in prep.columns if c not in served_c.columns],
                                            **section}
        files.update(f)
    else:
        sections["served_feature_drift"] = {"status": "no served features logged (events.db served_features)"}

    if nbp is not None:
        stage("prediction drift")
        section, f = prediction_section(features, nbp, prep, served_scores(paths.events_db), cfg, out_dir)
        sections["prediction_drift"] = section
        files.update(f)
    else:
        sections["prediction_drift"] = {"status": "no champion nbp model registered"}

    stage("acceptance and churn outcomes")
    sections["acceptance"] = acceptance_section(paths, prep.reference_months, cfg)
    churn = champion(paths, CHURN_MODEL_NAME)
    sections["churn"] = (churn_section(paths, features, churn, cfg) if churn is not None
                         else {"status": "no champion churn model registered"})

    for extra in extra_sections:
        name, data, page = extra(paths, cfg, out_dir)
        sections[name] = data
        if page is not None:
            files[f"{name}_html"] = Path(page)

    stage("gate")
    checks = gate_checks(sections, cfg.gate)
    passed = all(c["passed"] for c in checks)
    feature = sections["feature_drift"]
    summary = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "passed": passed,
        "drifted_columns": feature["drifted_columns"],
        "share_drifted": feature["share_drifted"],
        "columns": feature["columns"],
        "gate": {"passed": passed, "checks": checks},
        "sections": {k: ({kk: vv for kk, vv in v.items() if kk != "columns"} if k == "feature_drift" else v)
                     for k, v in sections.items()},
        "seconds": round(time.perf_counter() - started, 2),
        "stage_seconds": timings,
    }
    files["summary"] = write_json(out_dir / "summary.json", summary)
    files["html"] = atomic_write(out_dir / "index.html", lambda t: Path(t).write_text(index_html(summary, files)))
    return MonitorResult(summary, 0 if passed else 1, files)
