"""Send-time learner: each customer's best send slot from the hours they are active at, shrunk toward
their segment's, and the segment's when they have no timed history."""

import numpy as np
import pandas as pd
import pytest

from nextbest.serving.outbound.sendtime import HOURS, best_slots, hour_counts, kernel, slot_scores

SLOTS = [8, 10, 12, 14, 16, 18, 20]
DAY0 = pd.Timestamp("2026-03-01")


def _events(customers, hours, days=None) -> pd.DataFrame:
    days = np.arange(len(hours)) % 28 if days is None else days
    when = DAY0 + pd.to_timedelta(days, "D") + pd.to_timedelta(np.asarray(hours, dtype=float), "h")
    return pd.DataFrame({"customer_id": customers, "event_date": when})


def _planted(n: int, preferred: np.ndarray, per: int, seed: int = 0) -> pd.DataFrame:
    """`per` logins per customer around their preferred hour (sd 1.5 h), a third of them at random hours."""
    rng = np.random.default_rng(seed)
    cust = np.repeat(np.arange(n), per)
    near = rng.random(len(cust)) < 0.65
    hours = np.where(near, preferred[cust] + rng.normal(0, 1.5, len(cust)), rng.uniform(6, 23, len(cust))) % 24
    return _events(np.array([f"C{i}" for i in cust]), hours, rng.integers(0, 300, len(cust)))


@pytest.mark.parametrize("preferred, expected", [(8.2, 8), (12.2, 12), (19.7, 20), (22.5, 20), (6.5, 8)])
def test_recovers_a_planted_preferred_hour(preferred, expected):
    events = _planted(50, np.full(50, preferred), per=24)
    best = best_slots(events, [f"C{i}" for i in range(50)], SLOTS)
    assert (np.array(SLOTS)[best] == expected).mean() > 0.75


def test_recovers_most_customers_of_a_mixed_bank():
    rng = np.random.default_rng(1)
    preferred = rng.choice([7.8, 12.3, 20.1], 400)
    events = _planted(400, preferred, per=20, seed=2)
    best = np.array(SLOTS)[best_slots(events, [f"C{i}" for i in range(400)], SLOTS)]
    target = np.array(SLOTS)[np.abs(np.array(SLOTS)[None, :] - preferred[:, None]).argmin(1)]
    assert (best == target).mean() > 0.85


def test_a_customer_without_history_gets_the_segments_best_slot():
    evening = _planted(30, np.full(30, 20.0), per=20)
    morning = _planted(30, np.full(30, 8.0), per=20, seed=3)
    morning["customer_id"] = morning["customer_id"].str.replace("C", "M")
    events = pd.concat([evening, morning], ignore_index=True)
    ids = [f"C{i}" for i in range(30)] + [f"M{i}" for i in range(30)] + ["new_evening", "new_morning", "new_unknown"]
    segments = ["late"] * 30 + ["early"] * 30 + ["late", "early", None]
    hours = np.array(SLOTS)[best_slots(events, ids, SLOTS, segments)]
    assert hours[-3] == 20 and hours[-2] == 8
    # Without a known segment: the whole bank's profile, which has both peaks.
    assert hours[-1] in (8, 20)


def test_a_short_history_is_pulled_toward_the_segment():
    segment = _planted(40, np.full(40, 20.0), per=30)
    one_login = _events(["few"], [12.0])
    ids = [f"C{i}" for i in range(40)] + ["few"]
    weak = slot_scores(pd.concat([segment, one_login]), ids, SLOTS, ["s"] * 41)[-1]
    assert np.argmax(weak) == SLOTS.index(20), "one login does not outweigh the segment"
    many = _events(["few"] * 30, np.full(30, 12.0))
    strong = slot_scores(pd.concat([segment, many]), ids, SLOTS, ["s"] * 41)[-1]
    assert np.argmax(strong) == SLOTS.index(12)


def test_slot_weights_settle_what_activity_leaves_open():
    both = _events(["A"] * 20, [8.0] * 10 + [20.0] * 10)
    weights = np.ones(len(SLOTS))
    weights[SLOTS.index(8)] = 1.2  # the channel answers better in the morning, whoever receives it
    assert SLOTS[best_slots(both, ["A"], SLOTS, slot_weights=weights)[0]] == 8
    weights[SLOTS.index(20)] = 1.5
    assert SLOTS[best_slots(both, ["A"], SLOTS, slot_weights=weights)[0]] == 20
    # A clear habit outweighs a mild channel rhythm.
    evening = _events(["B"] * 20, np.full(20, 20.0))
    assert SLOTS[best_slots(evening, ["B"], SLOTS, slot_weights=np.where(np.array(SLOTS) == 8, 1.2, 1.0))[0]] == 20


def test_midnight_rows_carry_no_hour_and_are_ignored():
    timed = _events(["A"] * 5, [19.5, 20.0, 20.5, 19.8, 20.2])
    midnight = _events(["A"] * 50, np.zeros(50))
    counts = hour_counts(pd.concat([timed, midnight]), ["A"])
    assert counts.sum() == 5 and counts[0, 0] == 0
    assert SLOTS[best_slots(pd.concat([timed, midnight]), ["A"], SLOTS)[0]] == 20


@pytest.mark.parametrize("events", [
    pd.DataFrame({"customer_id": pd.Series([], dtype=object), "event_date": pd.Series([], dtype="datetime64[ns]")}),
    _events(["A", "B"], [0.0, 0.0]),  # rows without a time of day
    _events(["Z"], [9.0]),  # another customer's
])
def test_no_usable_events_give_everyone_the_same_slot(events):
    scores = slot_scores(events, ["A", "B"], SLOTS)
    assert scores.shape == (2, len(SLOTS)) and np.allclose(scores[0], scores[1])
    assert best_slots(events, ["A", "B"], SLOTS).tolist() == [best_slots(events, ["A"], SLOTS)[0]] * 2


def test_no_customers():
    assert best_slots(_events(["A"], [9.0]), [], SLOTS).shape == (0,)


def test_weights_timezones_categoricals_and_missing_times():
    events = _events(["A", "A", "B"], [8.25, 20.5, 20.5]).assign(count=[10, 1, 3])
    counts = hour_counts(events, ["A", "B"], weight_col="count")
    assert counts[0, 8] == 10 and counts[0, 20] == 1 and counts[1, 20] == 3
    # A time zone's timestamps count by its wall clock.
    aware = events.assign(event_date=events.event_date.dt.tz_localize("Europe/Madrid"))
    np.testing.assert_array_equal(hour_counts(aware, ["A", "B"]), hour_counts(events, ["A", "B"]))
    as_category = events.assign(customer_id=events.customer_id.astype("category"))
    np.testing.assert_array_equal(hour_counts(as_category, ["B", "A", "X"]), hour_counts(events, ["B", "A", "X"]))
    missing = pd.concat([events, pd.DataFrame({"customer_id": ["A"], "event_date": [pd.NaT]})], ignore_index=True)
    assert hour_counts(missing, ["A", "B"]).sum() == 3


def test_the_kernel_wraps_around_midnight():
    k = kernel([0.0, 12.0], bandwidth=1.5)
    assert k.shape == (HOURS, 2)
    assert k[23, 0] == pytest.approx(k[0, 0]) and k[23, 0] > k[2, 0]
    assert k[11, 1] == pytest.approx(k[12, 1]) and k[0, 1] < 1e-3


@pytest.mark.parametrize("kwargs, message", [
    ({"slot_hours": []}, "at least one send hour"),
    ({"segments": ["a"]}, "segments has 1 labels for 2 customers"),
    ({"prior_events": 0}, "must be > 0"),
    ({"slot_weights": [1.0, 2.0]}, "one weight >= 0 per slot"),
])
def test_bad_arguments_are_clear_errors(kwargs, message):
    args = {"events": _events(["A"], [9.0]), "customer_ids": ["A", "B"], "slot_hours": SLOTS, **kwargs}
    with pytest.raises(ValueError, match=message):
        best_slots(**args)
