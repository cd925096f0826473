"""The bandit simulator: its truth, traffic and baselines (fast), and whole runs through the real
decision path on a copied quickstart work dir (slow): deterministic, fair, and within the rules."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from nextbest.monitoring.replay import (CHANNEL_MIX, POLICIES, EpsilonGreedy, Greedy, MabLinear, Oracle, Random,
                                            Step, Tally, Truth, VowpalCB, make_traffic)
from nextbest.simulation.response import accept_probability

START = datetime(2026, 11, 1, tzinfo=timezone.utc)
ARMS = ["savings_account", "term_deposit", "credit_card", "mortgage", "payment_help"]
VALUE = {"savings_account": 45.0, "term_deposit": 120.0, "credit_card": 140.0, "mortgage": 1400.0,
         "payment_help": 40.0}


def _truth(n: int = 50, seed: int = 0) -> Truth:
    rng = np.random.default_rng(seed)
    return Truth([f"C{i:04d}" for i in range(n)], ARMS[:4], {"payment_help": 0.01},
                 rng.uniform(0.0005, 0.05, (n, 4)), rng.uniform(0, 1, n), START)


def _steps(truth: Truth, n: int, seed: int = 1) -> list[Step]:
    """Steps as the simulator builds them: a random subset of arms allowed, scores, truth, answer draws."""
    rng = np.random.default_rng(seed)
    channels = list(CHANNEL_MIX)
    out = []
    for t in range(n):
        arms = [a for a in ARMS if rng.random() < 0.8] or ARMS[:1]
        c, ch = int(rng.integers(len(truth.customer_ids))), channels[t % len(channels)]
        hour, wd = int(rng.integers(24)), int(rng.integers(7))
        p = truth.acceptance(c, arms, ch, hour, wd)
        out.append(Step(t, c, ch, hour, wd, float(rng.uniform(0, 3)), arms,
                        np.clip(p * rng.lognormal(-1.5, 0.5, len(arms)), 1e-5, 0.9),  # a noisy, scaled model score
                        np.array([VALUE[a] for a in arms]), np.zeros(len(arms)), p, rng.random(len(arms))))
    return out


def _play(policy, steps: list[Step], batch: int = 100) -> Tally:
    tally = Tally.zeros(len(steps))
    for i in range(0, len(steps), batch):
        chunk = steps[i:i + batch]
        ranks = policy.rank(chunk, 1)
        got = [tally.record(s, o) for s, o in zip(chunk, ranks)]
        policy.learn(chunk, ranks, got)
    return tally


def test_truth_is_the_offer_response_function_and_acquisition_ends_it():
    truth = _truth()
    got = truth.acceptance(3, ["mortgage", "payment_help"], "branch", 11, 2)
    want = accept_probability(np.array([truth.p_next[3, 3], 0.01]), np.array(["branch"] * 2), np.array([11, 11]),
                              np.array([2, 2]), np.array([truth.affinity[3]] * 2))
    np.testing.assert_allclose(got, want)
    truth.acquire(3, "mortgage")
    truth.acquire(3, "payment_help")  # an action is not held: unchanged
    after = truth.acceptance(3, ["mortgage", "payment_help"], "branch", 11, 2)
    assert after[0] < 1e-4 < got[0] and after[1] == pytest.approx(got[1])


def test_traffic_is_fixed_by_its_seed_ordered_in_time_and_follows_the_mix():
    a = make_traffic(400, 20_000, 7, START, visits_per_week=2.0)
    b = make_traffic(400, 20_000, 7, START, visits_per_week=2.0)
    c = make_traffic(400, 20_000, 8, START, visits_per_week=2.0)
    assert np.array_equal(a.customer, b.customer) and np.array_equal(a.at, b.at)
    assert not np.array_equal(a.customer, c.customer)
    assert (np.diff(a.at) > 0).all() and a.at[0] >= START.timestamp()
    assert a.days == pytest.approx(20_000 / (400 * 2 / 7))  # two visits per customer and week
    for channel, share in CHANNEL_MIX.items():
        assert abs((a.channel == channel).mean() - share) < 0.015, channel
    hours = pd.to_datetime(a.at, unit="s", utc=True).hour
    assert set(hours[a.channel == "branch"]) <= set(range(9, 17))  # opening hours
    assert (hours[a.channel == "mobile_app"] >= 18).mean() > 0.3  # evenings
    sample = make_traffic(400, 5_000, 7, START, customers=25)
    assert len(np.unique(sample.customer)) == 25


def test_the_oracle_has_no_regret_and_the_baselines_choose_only_allowed_candidates():
    truth = _truth()
    steps = _steps(truth, 3000)
    best = np.array([s.true_value.max() for s in steps])
    tallies = {p.name: _play(p, steps) for p in (Oracle(), Greedy(), Random(0), EpsilonGreedy(ARMS, 0),
                                                 MabLinear("linucb", ARMS, 0), MabLinear("lints", ARMS, 0),
                                                 VowpalCB(0))}
    np.testing.assert_allclose(tallies["oracle"].expected, best)
    for name, t in tallies.items():
        assert (t.shown == 1).all(), name
        assert (t.expected <= best + 1e-12).all(), name  # nothing better than the best allowed offer
    regret = {name: float((best - t.expected).sum()) for name, t in tallies.items()}
    assert regret["oracle"] == 0
    assert regret["random"] > regret["greedy"] > 0
    # Learners improve on random, and epsilon-greedy learns which arms sell (a smaller regret in
    # the second half than in the first).
    for name in ("epsilon_greedy", "linucb", "lints", "vw"):
        assert regret[name] < regret["random"], (name, regret)
    half = len(steps) // 2
    eg = best - tallies["epsilon_greedy"].expected
    assert eg[half:].sum() < eg[:half].sum()


def test_answers_are_common_random_numbers():
    truth = _truth()
    steps = _steps(truth, 500)
    a, b = Tally.zeros(500), Tally.zeros(500)
    for s in steps:
        a.record(s, np.array([0]))
        b.record(s, np.array([0]))
    assert np.array_equal(a.realised, b.realised) and a.accepts.sum() > 0
    expected = sum(s.p_true[0] for s in steps)
    assert abs(a.accepts.sum() - expected) < 4 * np.sqrt(expected) + 1  # the draws follow the truth


def test_epsilon_greedy_propensity_is_a_probability():
    eg = EpsilonGreedy(ARMS, 0, epsilon=0.1)
    s = _steps(_truth(), 1)[0]
    props = [eg.propensity(s, np.array([i]))[0] for i in range(len(s.arms))]
    assert sum(props) == pytest.approx(1.0) and min(props) == pytest.approx(0.1 / len(s.arms))


# -- whole runs through the decision engine ------------------------------------------------------------

STEPS = 1500


@pytest.fixture(scope="module")
def sim_workdir(quickstart_workdir, tmp_path_factory):
    from tests.servers import copy_workdir

    return copy_workdir(quickstart_workdir, tmp_path_factory.mktemp("sim") / "wd")


def _simulate(workdir, out, policy="nextbest", shadows=tuple(p for p in POLICIES if p != "nextbest"), **kw):
    from nextbest.settings import Paths
    from nextbest.monitoring.replay import simulate_workdir

    kw = {"steps": STEPS, "seed": 5, "customers": 60, "visits_per_week": 8.0, "update_every": 50, **kw}
    return simulate_workdir(Paths.from_workdir(workdir), policy, shadows=shadows, out_dir=out, **kw)


@pytest.fixture(scope="module")
def runs(sim_workdir, tmp_path_factory):
    """The same simulation twice (60 customers coming by 8 times a week: caps and cool-downs bind)."""
    first = _simulate(sim_workdir, tmp_path_factory.mktemp("out1"))
    second = _simulate(sim_workdir, tmp_path_factory.mktemp("out2"))
    return first, second


@pytest.mark.slow
def test_same_seed_same_run(runs):
    (a, files_a), (b, files_b) = runs
    assert a.summary().keys() == b.summary().keys()
    for name, s in a.summary().items():
        t = b.summary()[name]
        assert {k: v for k, v in s.items() if k != "seconds"} == {k: v for k, v in t.items() if k != "seconds"}, name
    ta, tb = pd.read_parquet(files_a["trace"]), pd.read_parquet(files_b["trace"])
    cols = ["step", "customer_id", "channel", "at", "candidates", "offers", "accepted", "expected", "oracle"]
    pd.testing.assert_frame_equal(ta[cols], tb[cols])
    assert pd.read_csv(files_a["csv"]).equals(pd.read_csv(files_b["csv"]))


@pytest.mark.slow
def test_regret_accounting_on_the_decision_path(runs):
    (result, files), _ = runs
    summary = result.summary()
    assert set(summary) == set(POLICIES)
    assert summary["oracle"]["regret"] == 0
    assert summary["random"]["regret"] > summary["greedy"]["regret"] > 0
    lift = result.tallies["uplift_oracle"].incremental_expected
    for name, t in result.tallies.items():
        assert (t.expected <= result.oracle + 1e-9).all(), name  # every policy chose among the same candidates
        # the uplift oracle adds the most each step; an acceptance is incremental at most once
        assert (t.incremental_expected <= lift + 1e-9).all() and (t.incremental <= t.accepts).all(), name
        assert summary[name]["per_1000_offers"]["incremental"] == pytest.approx(
            1000 * t.incremental.sum() / max(t.shown.sum(), 1))
        assert (t.shown[~result.has_candidates] == 0).all() and (t.shown[result.has_candidates] == 1).all(), name
    # Many requests end with no allowed offer: opt-out, consent, caps, cool-downs.
    assert 0.2 < result.has_candidates.mean() < 0.95
    out = json.loads(files["json"].read_text())
    assert out["policies"]["nextbest"]["regret"] == pytest.approx(summary["nextbest"]["regret"])
    curve = pd.read_csv(files["csv"])
    last = curve[curve.step == STEPS].set_index("policy")
    assert last.loc["random", "cum_regret"] == pytest.approx(summary["random"]["regret"], abs=0.01)
    assert files["plot"].exists() and files["plot"].stat().st_size > 1000


def _check_rules(workdir, trace: pd.DataFrame, update_every: int) -> dict[str, int]:
    """Counts what the rules must prevent along a simulated path (all must be 0) and what they did allow."""
    from nextbest.config import load_bandit, load_catalogue, load_rules

    catalogue = load_catalogue()
    rules = load_rules(catalogue=catalogue, bandit=load_bandit(catalogue=catalogue))
    customers = pd.read_parquet(workdir / "raw" / "customers.parquet").set_index("customer_id")
    holdings = pd.read_parquet(workdir / "raw" / "holdings.parquet",
                               columns=["customer_id", "snapshot_date", "product_id"])
    latest = holdings[holdings.snapshot_date == holdings.snapshot_date.max()]
    held = set(map(tuple, latest[["customer_id", "product_id"]].to_numpy()))
    loans = {p.product_id for p in catalogue.products if p.category == "loan"}
    credit = loans | set(rules.credit_cooldown.products)
    rows = trace.assign(offers=trace.offers.map(json.loads), accepted=trace.accepted.map(json.loads))
    shown = rows[rows.offers.map(len) > 0]
    bad = {"opt_out": 0, "consent": 0, "held": 0, "cap": 0, "rejected": 0, "credit_cooldown": 0}
    for r in shown.itertuples():
        c = customers.loc[r.customer_id]
        bad["opt_out"] += bool(c["marketing_opt_out"])
        flag = rules.channel_consent.get(r.channel)
        bad["consent"] += flag is not None and not bool(c[flag])
    acquired, rejected, loan_at = {}, {}, {}
    per_channel: dict[tuple, list[float]] = {}
    for r in rows.itertuples():
        batch = r.step // update_every
        for p in r.offers:
            key = (r.customer_id, p)
            # Held at the snapshot, or acquired in an earlier batch (the bank hears of an acceptance
            # with the batch's feedback; within the batch the truth already gives it no value).
            bad["held"] += key in held or (key in acquired and acquired[key] < batch)
            cooldown = rules.rejection_cooldown_days * 86400
            if key in rejected and rejected[key][0] < batch and r.at - rejected[key][1] < cooldown:
                bad["rejected"] += 1
            last = loan_at.get(r.customer_id)
            if p in credit and last and last[0] < batch and r.at - last[1] < rules.credit_cooldown.days * 86400:
                bad["credit_cooldown"] += 1
        if r.offers:
            times = per_channel.setdefault((r.customer_id, r.channel), [])
            times.append(r.at)
            cap = rules.frequency_caps_per_week.get(r.channel)
            # The cap counts decisions of the week before, as the engine saw them (batch lag aside,
            # contacts are logged at once, so there is no lag here).
            bad["cap"] += cap is not None and sum(r.at - t < 7 * 86400 for t in times) > cap
        for p, a in zip(r.offers, r.accepted):
            if a:
                acquired.setdefault((r.customer_id, p), batch)
                if p in loans:
                    loan_at[r.customer_id] = (batch, r.at)
            else:
                rejected[(r.customer_id, p)] = (batch, r.at)
    return bad | {"offers": len(shown), "customers_with_offers": shown.customer_id.nunique()}


@pytest.mark.slow
def test_rules_hold_along_the_simulated_path(runs, sim_workdir):
    (result, files), _ = runs
    trace = pd.read_parquet(files["trace"])
    counts = _check_rules(sim_workdir, trace, result.config["update_every"])
    assert {k: v for k, v in counts.items() if k not in ("offers", "customers_with_offers")} == dict.fromkeys(
        ("opt_out", "consent", "held", "cap", "rejected", "credit_cooldown"), 0), counts
    assert counts["offers"] > 300 and counts["customers_with_offers"] > 30
    # The caps did bind: requests on capped channels were refused because of them.
    import sqlite3

    with sqlite3.connect(result.events_db) as conn:
        blocked = dict(conn.execute("SELECT json_extract(context, '$.blocked'), COUNT(*) FROM decisions "
                                    "GROUP BY 1").fetchall())
        suppressed = conn.execute("SELECT COUNT(*) FROM decisions "
                                  "WHERE context LIKE '%rejection_cooldown%'").fetchone()[0]
    assert any(str(rule).startswith("frequency_cap_") for rule in blocked), blocked
    assert blocked.get("marketing_opt_out", 0) > 0 and suppressed > 0


@pytest.mark.slow
def test_cli_writes_its_files_for_a_baseline_on_the_path(sim_workdir, tmp_path):
    from typer.testing import CliRunner

    from nextbest.cli import app  # `nextbest simulate` as users run it

    result = CliRunner().invoke(app, ["simulate", "--policy", "greedy", "--steps", "400",
                                      "--seed", "3", "--customers", "40",
                                      "--visits-per-week", "8", "--compare", "random", "--workdir", str(sim_workdir)])
    assert result.exit_code == 0, result.output
    out = next((sim_workdir / "reports").glob("*/simulation"))
    summary = json.loads((out / "greedy-seed3-400.json").read_text())
    assert set(summary["policies"]) == {"greedy", "oracle", "random"}
    assert summary["config"]["driver"] == "greedy" and summary["policies"]["oracle"]["regret"] == 0
    for name in ("greedy-seed3-400.csv", "greedy-seed3-400.png", "greedy-seed3-400.trace.parquet"):
        assert (out / name).stat().st_size > 0
    trace = pd.read_parquet(out / "greedy-seed3-400.trace.parquet")
    counts = _check_rules(sim_workdir, trace, 100)
    assert counts["opt_out"] == counts["held"] == counts["cap"] == counts["rejected"] == 0, counts
    bad = CliRunner().invoke(app, ["simulate", "--policy", "greedy", "--compare", "nextbest",
                                   "--workdir", str(sim_workdir)])
    assert bad.exit_code != 0
