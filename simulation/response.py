"""The offer-response truth: P(accept | customer state, product, channel, time of contact).

Kept apart from the generator so the bandit simulator can draw from the same function that
produced the historical offer responses.
"""

from __future__ import annotations

import numpy as np

from nextbest.simulation.params import (CATEGORY_CHANNEL_FIT, CHANNEL_LIFT, CHANNEL_PEAK_HOUR, DIGITAL_CHANNELS,
                                        SENT_CHANNELS, TIME_PREFERENCE_WEIGHT)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def _codes(values: np.ndarray) -> tuple[list, np.ndarray]:
    """The distinct values (in order of appearance) and each element's code, in `values`' shape.
    Works for object arrays holding None, which `np.unique` cannot sort."""
    flat = values.ravel().tolist()
    index: dict = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in flat), dtype=np.int64, count=len(flat))
    return list(index), codes.reshape(values.shape)


def preference_effect(hour: np.ndarray, preferred_hour: np.ndarray,
                      weight: float = TIME_PREFERENCE_WEIGHT) -> np.ndarray:
    """Extra logit of contacting a customer at `hour` given their preferred hour: `weight` at the
    preferred hour, `-weight` twelve hours away, zero on average over the day. A NaN preferred hour
    (a customer without one) adds nothing. Shapes broadcast."""
    effect = weight * np.cos(2 * np.pi * (np.asarray(hour, dtype=float) - np.asarray(preferred_hour, dtype=float)) / 24)
    return np.nan_to_num(effect, nan=0.0)


def accept_probability(
    p_next: np.ndarray,
    channel: np.ndarray,
    hour: np.ndarray,
    weekday: np.ndarray,
    digital_affinity: np.ndarray,
    category: np.ndarray | None = None,
    preferred_hour: np.ndarray | None = None,
    time_preference: float = TIME_PREFERENCE_WEIGHT,
) -> np.ndarray:
    """True probability that a customer accepts an offer.

    Every argument is an array of one shape, or of shapes that broadcast together (a grid of
    customers x arms x send hours, as `monitoring.replay.world.Truth.acceptance_grid` asks for);
    the shapes below are those of one offer per row.

    Args:
        p_next: true unprompted probability of acquiring the product next month, shape (n,).
        channel: channel name per offer, shape (n,).
        hour: hour of contact 0..23, shape (n,).
        weekday: 0 = Monday .. 6 = Sunday, shape (n,).
        digital_affinity: the customer's latent digital affinity in [0, 1], shape (n,).
        category: the offer's product category per offer (None or an unknown category: no
            channel fit, as for the non-product actions), shape (n,).
        preferred_hour: the customer's latent preferred contact hour in [0, 24), shape (n,);
            None, or NaN for a customer, leaves out the time preference.
        time_preference: logit amplitude of the time preference (`preference_effect`).

    Returns:
        Acceptance probabilities, the broadcast shape of the arguments ((n,) for one offer per row).
    """
    channel = np.asarray(channel)
    names, code = _codes(channel)
    lift = np.array([CHANNEL_LIFT[c] for c in names], dtype=float)[code]
    peak = np.array([CHANNEL_PEAK_HOUR[c] for c in names], dtype=float)[code]
    hour = np.asarray(hour, dtype=float)
    # Circular distance to the channel's best hour: contacts far from it are answered less.
    dist = np.abs(((hour - peak) + 12) % 24 - 12)
    timing = -0.08 * dist
    weekend = np.isin(np.asarray(weekday), (5, 6))
    weekend_effect = np.where(np.isin(channel, ("branch", "call_center")), -0.6, 0.2) * weekend
    digital = np.isin(channel, DIGITAL_CHANNELS)
    affinity_effect = np.where(digital, 1.6 * (np.asarray(digital_affinity) - 0.5),
                               -0.8 * (np.asarray(digital_affinity) - 0.5))
    z = _logit(np.asarray(p_next, dtype=float)) + lift + timing + weekend_effect + affinity_effect
    if category is not None:
        groups, group_code = _codes(np.asarray(category, dtype=object))
        fit = np.array([[CATEGORY_CHANNEL_FIT.get(g, {}).get(c, 0.0) for c in names] for g in groups], dtype=float)
        z = z + fit.reshape(len(groups), len(names))[group_code, code]
    if preferred_hour is not None and time_preference:
        # Only where the bank picks the moment: a customer in the app, on the web or in the branch has
        # chosen to be there, so the hour of the offer is their own.
        sent = np.isin(channel, SENT_CHANNELS)
        z = z + np.where(sent, preference_effect(hour, preferred_hour, time_preference), 0.0)
    return 1.0 / (1.0 + np.exp(-z))
