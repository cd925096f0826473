"""The simulated bank's time preference: every customer has a latent preferred contact hour, offers
near it are answered more often, and their logins' times of day leave its trace in the data."""

import numpy as np
import pandas as pd
import pytest

import nextbest.simulation.bank as bank_module
from nextbest.monitoring.replay.world import Truth
from nextbest.settings import Paths
from nextbest.simulation.bank import BankSpec, simulate_frames
from nextbest.simulation.params import TIME_PREFERENCE_WEIGHT
from nextbest.simulation.response import accept_probability, preference_effect
from nextbest.simulation.write import generate_to
from tests.conftest import END

SPEC = dict(n_customers=2000, n_months=6, seed=5, end=END)
FIRST_MONTH_END = pd.Timestamp("2026-01-31")


@pytest.fixture(scope="module")
def timed(catalogue):
    return simulate_frames(catalogue, BankSpec(**SPEC))


@pytest.fixture(scope="module")
def untimed(catalogue):
    return simulate_frames(catalogue, BankSpec(**SPEC, time_preference=0.0))


def _angle(hours) -> np.ndarray:
    return 2 * np.pi * np.asarray(hours, dtype=float) / 24


def _circular_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Jammalamadaka and SenGupta's correlation of two angles (1: they move together)."""
    def centred(x):
        return np.sin(x - np.angle(np.exp(1j * x).mean()))
    sa, sb = centred(a), centred(b)
    return float((sa * sb).sum() / np.sqrt((sa**2).sum() * (sb**2).sum()))


def _logins(frames) -> pd.DataFrame:
    events = frames["raw/interactions"]
    logins = events[events.event_type.isin(("login_app", "login_web"))]
    preferred = frames["truth/latent"].set_index("customer_id")["preferred_hour"]
    when = pd.to_datetime(logins.event_date)
    return pd.DataFrame({"hour": (when - when.dt.normalize()) / pd.Timedelta(hours=1),
                         "preferred": preferred.reindex(logins.customer_id).to_numpy()})


def test_every_customer_has_a_preferred_hour_of_realistic_habits(timed):
    hour = timed["truth/latent"]["preferred_hour"]
    assert hour.notna().all() and hour.between(0, 24, inclusive="left").all()
    share = pd.cut(hour, [0, 6, 9, 14, 18, 23, 24], right=False).value_counts(normalize=True).sort_index()
    night, commute, day, afternoon, evening, _ = share.to_numpy()
    assert night < 0.05 and commute > 0.1 and day > 0.2 and evening > 0.2


def test_an_offer_is_answered_more_often_at_the_preferred_hour():
    p, affinity = np.full(24, 0.02), np.full(24, 0.6)
    hours, preferred = np.arange(24), np.full(24, 19.0)
    args = (p, np.full(24, "email"), hours, np.full(24, 2), affinity)
    with_preference = accept_probability(*args, preferred_hour=preferred)
    without = accept_probability(*args)
    lift = np.log(with_preference / (1 - with_preference)) - np.log(without / (1 - without))
    assert lift[19] == pytest.approx(TIME_PREFERENCE_WEIGHT) and lift[7] == pytest.approx(-TIME_PREFERENCE_WEIGHT)
    assert with_preference[19] > without[19] and with_preference[7] < without[7]
    assert preference_effect(np.arange(24), 5.5).mean() == pytest.approx(0.0, abs=1e-12)  # zero over the day
    # No preferred hour (NaN), or no weight: the response truth without one.
    np.testing.assert_array_equal(accept_probability(*args, preferred_hour=np.full(24, np.nan)), without)
    np.testing.assert_array_equal(accept_probability(*args, preferred_hour=preferred, time_preference=0.0), without)


def test_logins_happen_around_each_customers_preferred_hour(timed):
    logins = _logins(timed)
    assert (logins.hour > 0).all(), "every login carries a time of day"
    a, b = _angle(logins.hour), _angle(logins.preferred)
    assert _circular_correlation(a, b) > 0.4
    assert _circular_correlation(a, np.random.default_rng(0).permutation(b)) < 0.05
    # Most logins fall within two hours of the customer's preferred hour.
    gap = np.abs((logins.hour - logins.preferred + 12) % 24 - 12)
    assert (gap < 2).mean() > 0.5
    others = timed["raw/interactions"][~timed["raw/interactions"].event_type.str.startswith("login")]
    assert (pd.to_datetime(others.event_date) == pd.to_datetime(others.event_date).dt.normalize()).all()


def test_without_a_time_preference_the_bank_has_none(untimed, monkeypatch, catalogue):
    assert "preferred_hour" not in untimed["truth/latent"]
    when = pd.to_datetime(untimed["raw/interactions"].event_date)
    assert (when == when.dt.normalize()).all(), "every event at midnight"
    # The offers are answered by the response truth without a preference term.
    calls = []

    def recording(*args):
        calls.append(args)
        return accept_probability(*args)

    monkeypatch.setattr(bank_module, "accept_probability", recording)
    simulate_frames(catalogue, BankSpec(**{**SPEC, "n_months": 2}, time_preference=0.0))
    assert calls
    for args in calls:
        np.testing.assert_array_equal(accept_probability(*args), accept_probability(*args[:6]))


def test_the_switch_leaves_the_bank_as_drawn_until_an_answer_differs(timed, untimed):
    """The preferred hours and the times of day come from their own random stream: the customers and
    everything of the first month are the same draws with and without the preference, but for the
    offers' answers. An offer accepted in one bank and not in the other is a product held or not
    from the next month, and the draws that follow (how many products a customer may be offered,
    how many events a changed hazard gives) then fall differently: from the second month the two
    banks are different realisations of the same bank, with the same marginals."""
    pd.testing.assert_frame_equal(timed["raw/customers"], untimed["raw/customers"])
    latent = timed["truth/latent"].drop(columns="preferred_hour")
    pd.testing.assert_frame_equal(latent, untimed["truth/latent"])

    def first_month(frames, table, column):
        df = frames[table]
        return df[pd.to_datetime(df[column]) < FIRST_MONTH_END + pd.Timedelta(days=1)].reset_index(drop=True)

    for table, column in (("raw/holdings", "snapshot_date"), ("raw/transactions", "txn_date")):
        pd.testing.assert_frame_equal(first_month(timed, table, column), first_month(untimed, table, column))
    a, b = (first_month(f, "raw/interactions", "event_date") for f in (timed, untimed))
    pd.testing.assert_frame_equal(a.assign(event_date=a.event_date.dt.normalize()), b)
    a, b = (first_month(f, "raw/offers", "offered_at") for f in (timed, untimed))
    pd.testing.assert_frame_equal(a.drop(columns="response"), b.drop(columns="response"))

    def per_client(frames):
        h = frames["raw/holdings"]
        return h.groupby("snapshot_date").size() / h.groupby("snapshot_date").customer_id.nunique()

    np.testing.assert_allclose(per_client(timed), per_client(untimed), rtol=0.02)


def test_the_replay_truth_answers_as_the_bank_does(tmp_path, catalogue):
    paths = Paths.from_workdir(tmp_path).ensure()
    generate_to(paths, catalogue, BankSpec(n_customers=300, n_months=3, seed=2, end=END, time_preference=0.5))
    truth = Truth.load(paths.root / "truth", catalogue.ids, categories=catalogue.categories())
    latent = pd.read_parquet(paths.root / "truth" / "latent.parquet").set_index("customer_id")
    np.testing.assert_allclose(truth.preferred_hour, latent["preferred_hour"].reindex(truth.customer_ids))
    assert truth.time_preference == 0.5

    arms = [*catalogue.ids[:5], "payment_help"]
    customers = np.arange(0, len(truth.customer_ids), 7)
    slots = np.array([8, 12, 20])
    grid = truth.acceptance_grid(customers, arms, "push", np.tile(slots, (len(customers), 1)), weekday=2)
    assert grid.shape == (len(customers), len(arms), len(slots))
    for i, c in enumerate(customers):
        for s, hour in enumerate(slots):
            np.testing.assert_allclose(grid[i, :, s], truth.acceptance(int(c), arms, "push", int(hour), 2))
    one_hour = truth.acceptance_grid(customers, arms, "push", np.full(len(customers), 12), weekday=2)
    np.testing.assert_allclose(one_hour, grid[:, :, 1])
    # The preference moves each customer's answer with the hour.
    assert (np.ptp(grid, axis=2) > 0).all()
    # What an offer adds: the acceptance above what the customer would do unprompted; an action has
    # no unprompted rate.
    p0 = truth.unprompted(customers, arms)
    assert (p0[:, -1] == 0).all() and (p0[:, :-1] == truth.p_next[customers][:, :5]).all()
    lift = truth.uplift_grid(customers, arms, "push", np.tile(slots, (len(customers), 1)), weekday=2)
    np.testing.assert_allclose(lift, np.maximum(grid - p0[:, :, None], 0.0))
    assert (lift <= grid).all() and (lift[:, -1] == grid[:, -1]).all()


def test_a_bank_without_a_preference_gives_a_truth_without_one(tmp_path, catalogue):
    paths = Paths.from_workdir(tmp_path).ensure()
    generate_to(paths, catalogue, BankSpec(n_customers=200, n_months=2, seed=2, end=END, time_preference=0.0))
    truth = Truth.load(paths.root / "truth", catalogue.ids)
    assert truth.preferred_hour is None
    grid = truth.acceptance_grid(np.arange(10), catalogue.ids[:3], "email", np.tile([8, 20], (10, 1)), 1)
    # Without a preference only the channel's own best hour (email: 8) tells the hours apart.
    assert (grid[:, :, 0] >= grid[:, :, 1]).all()
