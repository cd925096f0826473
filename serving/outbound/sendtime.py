"""Send-time personalisation: the hour of the day at which to contact each customer, learned from
the times at which they are active (logins and other timed events).

A customer's activity over the day is a histogram of event hours, smoothed with a circular
kernel (a von Mises density, the wrapped normal of the clock face, so 23:30 and 00:30 are an hour
apart) and read at each of the campaign's allowed send hours. Few events make a noisy histogram,
so each customer's is shrunk toward their segment's, and a segment's toward the whole bank's, by
empirical Bayes: a customer with n events keeps the weight n / (n + k) on their own histogram.
A customer without timed events gets their segment's profile, and without a known segment the
bank's.

Everything is one pass of array arithmetic: a `np.bincount` over (customer, hour) builds the
(customers, 24) count matrix, and a matrix product with the (24, slots) kernel reads the smoothed
densities at the slots (1,000,000 customers x 24 events in a few seconds; benchmarks/bench_sendtime.py
measures what the learned slots are worth).

    scores = slot_scores(interactions, customer_ids, [8, 10, 12, 14, 16, 18, 20], segments=age_band)
    best = best_slots(interactions, customer_ids, [8, 10, 12, 14, 16, 18, 20], segments=age_band)

A campaign whose channel answers better at some hours than at others for everyone (an email in
the morning, say) passes that as `slot_weights`, and each customer's scores are weighed by it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from nextbest.constants import CUSTOMER_ID

HOURS = 24
# Hours: the sd of the kernel. A little wider than one habit's spread (about 1.5 h) so that a
# handful of events still finds the nearest of slots two hours apart.
DEFAULT_BANDWIDTH = 2.0
DEFAULT_PRIOR_EVENTS = 4.0  # k: a profile borrows this many events' worth of its segment's
_NS_PER_DAY = 86_400 * 10**9
_NS_PER_HOUR = 3_600 * 10**9
_NAT = np.iinfo(np.int64).min  # NaT as int64 nanoseconds


def hour_counts(events: pd.DataFrame, customer_ids: Sequence | np.ndarray, *, time_col: str = "event_date",
                weight_col: str | None = None) -> np.ndarray:
    """Timed events per customer and hour of the day.

    Args:
        events: one row per event with `customer_id` and `time_col` (a timestamp; a time zone's
            wall clock counts where the timestamps carry one).
        customer_ids: the customers to count for, (n,); events of other customers are left out.
        time_col: the timestamp column.
        weight_col: optional weight per row (e.g. a count); by default each row counts once.

    Returns:
        Float counts, (n, 24); row i is `customer_ids[i]`. Rows dated exactly at midnight carry a
        day but no time of day and are left out, as are rows without a timestamp.
    """
    n = len(customer_ids)
    if not len(events):
        return np.zeros((n, HOURS))
    when = pd.to_datetime(events[time_col])
    if when.dt.tz is not None:
        when = when.dt.tz_localize(None)  # the local wall clock, which is what a send hour means
    ns = when.to_numpy(dtype="datetime64[ns]").view(np.int64)
    # In place where it can be: at tens of millions of rows, each fresh array costs more than its arithmetic.
    hour = np.remainder(ns, _NS_PER_DAY)
    skip = (hour == 0) | (ns == _NAT)
    np.floor_divide(hour, _NS_PER_HOUR, out=hour)
    bins = _positions(events[CUSTOMER_ID], customer_ids)
    skip |= bins < 0
    bins *= HOURS
    bins += hour
    del hour
    # Rows that do not count go to one extra bin, dropped below (cheaper than selecting the others).
    bins[skip] = n * HOURS
    weights = None if weight_col is None else events[weight_col].to_numpy(dtype=float)
    counts = np.bincount(bins, weights=weights, minlength=n * HOURS + 1)[:-1]
    return counts.astype(float, copy=False).reshape(n, HOURS)


def _positions(ids: pd.Series, customer_ids: Sequence | np.ndarray) -> np.ndarray:
    """Each row's position in `customer_ids` (-1: not there). Categorical ids (a dictionary-encoded
    column, as `pd.read_parquet` gives with `read_dictionary`) are matched once per distinct id,
    which is what keeps tens of millions of rows fast; plain strings are hashed row by row."""
    index = pd.Index(customer_ids)
    if isinstance(ids.dtype, pd.CategoricalDtype):
        codes = ids.cat.codes.to_numpy()
        where = np.append(index.get_indexer(ids.cat.categories), -1).astype(np.int64)  # code -1 (missing) -> -1
        return where[codes]
    return index.get_indexer(ids).astype(np.int64, copy=False)


def kernel(slot_hours: Sequence[float], bandwidth: float = DEFAULT_BANDWIDTH) -> np.ndarray:
    """Weight of each hour bin (its middle, h + 0.5) at each slot hour: a von Mises kernel whose
    concentration matches a normal of sd `bandwidth` hours, (24, S)."""
    kappa = 1.0 / (2 * np.pi * bandwidth / HOURS) ** 2
    angle = 2 * np.pi * ((np.arange(HOURS) + 0.5)[:, None] - np.asarray(slot_hours, dtype=float)[None, :]) / HOURS
    return np.exp(kappa * (np.cos(angle) - 1.0))


def _shrunk(counts: np.ndarray, prior: np.ndarray, k: float) -> np.ndarray:
    """Rows of `counts` as profiles (summing to 1) pulled toward `prior`'s rows: weight n / (n + k) on
    their own, where n is the row's total; a row without counts is its prior."""
    total = counts.sum(1, keepdims=True)
    return (counts + k * prior) / (total + k)


def slot_scores(events: pd.DataFrame, customer_ids: Sequence | np.ndarray, slot_hours: Sequence[float],
                segments: Sequence | np.ndarray | None = None, *, bandwidth: float = DEFAULT_BANDWIDTH,
                prior_events: float = DEFAULT_PRIOR_EVENTS, time_col: str = "event_date",
                weight_col: str | None = None) -> np.ndarray:
    """Smoothed activity density of each customer at each allowed send hour.

    Args:
        events: timed events (see `hour_counts`).
        customer_ids: the customers to score, (n,).
        slot_hours: the campaign's allowed send hours, (S,), e.g. [8, 10, 12, 14, 16, 18, 20].
        segments: each customer's segment label, (n,), aligned with `customer_ids`; None or a missing
            label (None, NaN): the whole bank is the customer's segment.
        bandwidth: sd of the smoothing kernel, in hours.
        prior_events: the k of the shrinkage: events' worth of the segment's profile added to each
            customer's (and of the bank's to each segment's).
        time_col: the timestamp column of `events`.
        weight_col: optional weight per event row.

    Returns:
        (n, S) scores; within a row, higher is a better hour to send. A profile sums to one over the
        day, so scores compare across customers too.
    """
    if prior_events <= 0 or bandwidth <= 0:
        raise ValueError("prior_events and bandwidth must be > 0")
    n = len(customer_ids)
    if segments is not None and len(segments) != n:
        raise ValueError(f"segments has {len(segments)} labels for {n} customers")
    counts = hour_counts(events, customer_ids, time_col=time_col, weight_col=weight_col)
    k, at_slots = prior_events, kernel(slot_hours, bandwidth)  # (24, S)
    # The bank's profile: uniform when nothing is timed at all.
    overall = _shrunk(counts.sum(0, keepdims=True), np.full((1, HOURS), 1.0 / HOURS), k)
    if segments is None:
        prior = overall @ at_slots  # (1, S)
    else:
        code, _ = pd.factorize(np.asarray(segments), use_na_sentinel=True)
        g = int(code.max()) + 1 if n else 0
        known = code >= 0
        code_known, counts_known = (code, counts) if known.all() else (code[known], counts[known])
        by_segment = np.zeros((g + 1, HOURS))  # the last row: no known segment
        for h in range(HOURS):  # a bincount per hour: np.add.at over a million rows is far slower
            by_segment[:g, h] = np.bincount(code_known, weights=counts_known[:, h], minlength=g)
        profiles = _shrunk(by_segment, overall, k)
        profiles[g] = overall[0]
        prior = (profiles @ at_slots)[np.where(known, code, g)]  # (n, S)
    # The shrunk profile read at the slots, without building it: (counts + k prior) / (n + k), kernel
    # applied to each part (it is linear).
    scores = counts @ at_slots
    scores += k * prior
    scores /= counts.sum(1, keepdims=True) + k
    return scores


def best_slots(events: pd.DataFrame, customer_ids: Sequence | np.ndarray, slot_hours: Sequence[float],
               segments: Sequence | np.ndarray | None = None, slot_weights: Sequence[float] | None = None,
               **options) -> np.ndarray:
    """Each customer's best send slot: the index into `slot_hours` of the highest `slot_scores`
    (ties: the earliest listed), (n,) int; `slot_hours[i]` is the hour. A customer without timed
    events gets their segment's best slot.

    Args:
        events, customer_ids, slot_hours, segments: as for `slot_scores`.
        slot_weights: optional factor per slot, (S,): how well the campaign's channel answers at
            each hour whoever receives it (e.g. a past campaign's response rate by send hour).
            Activity says when a customer reads; the channel's own rhythm (an email is read with the
            morning coffee, a push at lunch) is the same for everyone and weighs each slot's score.
            None: all slots alike.
        **options: `bandwidth`, `prior_events`, `time_col`, `weight_col` of `slot_scores`.
    """
    if not len(slot_hours):
        raise ValueError("slot_hours is empty: a campaign needs at least one send hour")
    scores = slot_scores(events, customer_ids, slot_hours, segments, **options)
    if slot_weights is not None:
        weights = np.asarray(slot_weights, dtype=float)
        if weights.shape != (len(slot_hours),) or (weights < 0).any():
            raise ValueError(f"slot_weights needs one weight >= 0 per slot ({len(slot_hours)})")
        scores *= weights
    return scores.argmax(1)
