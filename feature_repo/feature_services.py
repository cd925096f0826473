"""One versioned FeatureService per model, used by name in training and in serving."""

from __future__ import annotations

from feast import FeatureService, FeatureView, OnDemandFeatureView

from features.build import ACTIVITY_VIEW, HOLDINGS_VIEW, PROFILE_VIEW, SEGMENTS_VIEW
from nextbest.constants import CHURN_FEATURE_SERVICE, NBP_FEATURE_SERVICE, OFFER_CONTEXT_FEATURE_SERVICE

CHURN_HOLDINGS_FEATURES = ("n_products", "n_products_change_3m", "months_since_acquisition", "months_since_closure",
                           "total_balance", "balance_change_3m", "balance_change_6m")


def feature_services(views: dict[str, FeatureView], context: OnDemandFeatureView) -> list[FeatureService]:
    nbp = FeatureService(
        name=NBP_FEATURE_SERVICE,
        features=[views[PROFILE_VIEW], views[HOLDINGS_VIEW], views[ACTIVITY_VIEW], views[SEGMENTS_VIEW]],
        description="Next-best-product model inputs (and the consent flags serving enforces).")
    churn = FeatureService(
        name=CHURN_FEATURE_SERVICE,
        features=[views[PROFILE_VIEW], views[HOLDINGS_VIEW][list(CHURN_HOLDINGS_FEATURES)], views[ACTIVITY_VIEW],
                  views[SEGMENTS_VIEW]],
        description="Churn model inputs.")
    offer_context = FeatureService(
        name=OFFER_CONTEXT_FEATURE_SERVICE,
        features=[views[SEGMENTS_VIEW], context],
        description="Request-time context (channel, hour, weekday) with the customer's segments, for offer "
                    "arbitration and the bandit.")
    return [nbp, churn, offer_context]
