"""One versioned FeatureService per model, used by name in training and in serving."""

from __future__ import annotations

from feast import FeatureService, FeatureView

from features.build import ACTIVITY_VIEW, HOLDINGS_VIEW, PROFILE_VIEW
from nextbest.constants import CHURN_FEATURE_SERVICE, NBP_FEATURE_SERVICE

CHURN_HOLDINGS_FEATURES = ("n_products", "months_since_acquisition", "months_since_closure",
                           "total_balance", "balance_change_3m")


def feature_services(views: dict[str, FeatureView]) -> list[FeatureService]:
    nbp = FeatureService(name=NBP_FEATURE_SERVICE,
                         features=[views[PROFILE_VIEW], views[HOLDINGS_VIEW], views[ACTIVITY_VIEW]],
                         description="Next-best-product model inputs.")
    churn = FeatureService(name=CHURN_FEATURE_SERVICE,
                           features=[views[PROFILE_VIEW], views[HOLDINGS_VIEW][list(CHURN_HOLDINGS_FEATURES)],
                                     views[ACTIVITY_VIEW]],
                           description="Churn model inputs.")
    return [nbp, churn]
