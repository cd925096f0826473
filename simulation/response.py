"""The offer-response truth: P(accept | customer state, product, channel, time of contact).

Kept apart from the generator so the bandit simulator can draw from the same function that
produced the historical offer responses.
"""

from __future__ import annotations

import numpy as np

from nextbest.simulation.params import CATEGORY_CHANNEL_FIT, CHANNEL_LIFT, CHANNEL_PEAK_HOUR, DIGITAL_CHANNELS


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def accept_probability(
    p_next: np.ndarray,
    channel: np.ndarray,
    hour: np.ndarray,
    weekday: np.ndarray,
    digital_affinity: np.ndarray,
    category: np.ndarray | None = None,
) -> np.ndarray:
    """True probability that a customer accepts an offer.

    Args:
        p_next: true unprompted probability of acquiring the product next month, shape (n,).
        channel: channel name per offer, shape (n,).
        hour: hour of contact 0..23, shape (n,).
        weekday: 0 = Monday .. 6 = Sunday, shape (n,).
        digital_affinity: the customer's latent digital affinity in [0, 1], shape (n,).
        category: the offer's product category per offer (None or an unknown category: no
            channel fit, as for the non-product actions), shape (n,).

    Returns:
        Acceptance probabilities, shape (n,).
    """
    channel = np.asarray(channel)
    lift = np.vectorize(CHANNEL_LIFT.__getitem__, otypes=[float])(channel)
    peak = np.vectorize(CHANNEL_PEAK_HOUR.__getitem__, otypes=[float])(channel)
    # Circular distance to the channel's best hour: contacts far from it are answered less.
    dist = np.abs(((np.asarray(hour, dtype=float) - peak) + 12) % 24 - 12)
    timing = -0.08 * dist
    weekend = np.isin(np.asarray(weekday), (5, 6))
    weekend_effect = np.where(np.isin(channel, ("branch", "call_center")), -0.6, 0.2) * weekend
    digital = np.isin(channel, DIGITAL_CHANNELS)
    affinity_effect = np.where(digital, 1.6 * (np.asarray(digital_affinity) - 0.5),
                               -0.8 * (np.asarray(digital_affinity) - 0.5))
    z = _logit(np.asarray(p_next, dtype=float)) + lift + timing + weekend_effect + affinity_effect
    if category is not None:
        z = z + np.array([CATEGORY_CHANNEL_FIT.get(g, {}).get(c, 0.0) for g, c in zip(category, channel)])
    return 1.0 / (1.0 + np.exp(-z))
