"""The promotion gate: a newly trained challenger becomes `champion` only if it beats the current
champion on the same test month by the configured margin (`TrainConfig.promotion_margin`).

A champion that cannot be compared (none yet, trained on another catalogue, needing features the
training set lacks, failing to load) is reported with the reason, which decides the outcome.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.settings import Paths
from nextbest.training import evaluate as ev
from nextbest.training import registry
from nextbest.training.models import from_checkpoint, predict_proba

if TYPE_CHECKING:
    from nextbest.training.pipeline import Prepared

CATALOGUE_CHANGED = "trained on another product catalogue"


def champion_metric(paths: Paths, prep: Prepared, model_name: str) -> tuple[str | None, float | None, str]:
    """The current champion's metric on the same test month, or why it cannot be computed."""
    version = registry.alias_version(paths, model_name)
    if version is None:
        return None, None, "no champion yet"
    try:
        champion, meta = from_checkpoint(registry.fetch_version(paths, model_name, version).local_dir)
        changed = meta.catalogue_change(prep.products)
        if changed:  # it cannot serve the catalogue in force: nothing to compare against
            return version, None, f"champion v{version} was {changed}"
        test = prep.split.test
        missing = [c for c in meta.preprocessor.numeric + meta.preprocessor.categorical if c not in test.columns]
        if missing and meta.feature_service != prep.service:
            # Trained on another version of the service (the bank's tables changed): its own features, same rows.
            from nextbest.training.pipeline import training_frame

            own = training_frame(paths, test[[CUSTOMER_ID, EVENT_TIMESTAMP]], meta.feature_service)
            test = test[[CUSTOMER_ID, EVENT_TIMESTAMP]].merge(own, on=[CUSTOMER_ID, EVENT_TIMESTAMP], how="left")
            missing = [c for c in meta.preprocessor.numeric + meta.preprocessor.categorical if c not in test.columns]
        if missing:
            return version, None, f"champion v{version} needs features the current training set lacks: {missing[:5]}"
        prob = predict_proba(champion, meta, test)
        return version, evaluate_metric(prep, prob), ""
    except Exception as exc:  # noqa: BLE001 - a champion that cannot be scored is reported, not fatal
        return version, None, f"champion v{version} could not be evaluated: {exc}"


def evaluate_metric(prep: Prepared, prob: np.ndarray) -> float:
    """The gate metric: MAP@7 for nbp, ROC AUC for churn, on the test month."""
    from nextbest.training.metrics import map_at_k, roc_auc

    test = prep.split.test
    if prep.task == "nbp":
        y = test[[f"label_{p}" for p in prep.products]].to_numpy(float)
        return map_at_k(y, ev.masked(prob, prep.mask(test)), 7)
    return roc_auc(test["label_churn"].to_numpy(float), prob.ravel())


def gate(challenger: float, champion: float | None, margin: float, reason_if_none: str) -> tuple[bool, str]:
    """Promotion decision: the challenger must beat the champion by at least `margin`; a challenger whose
    metric is not a number (a test month it cannot be measured on) is never promoted."""
    if challenger is None or not np.isfinite(challenger):
        return False, f"not promoted: the challenger's test metric is {challenger} (not measurable on the test month)"
    if champion is None:
        if reason_if_none == "no champion yet":
            return True, "first model: no champion yet"
        if CATALOGUE_CHANGED in reason_if_none:
            return True, f"promoted: the {reason_if_none.removesuffix('; retrain after a catalogue change')}"
        return False, f"not promoted: {reason_if_none}"
    if challenger >= champion + margin:
        return True, f"challenger {challenger:.5f} >= champion {champion:.5f} + margin {margin}"
    return False, f"not promoted: challenger {challenger:.5f} < champion {champion:.5f} + margin {margin}"
