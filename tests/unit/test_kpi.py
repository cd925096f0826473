"""Business KPIs from the decision log: hand-made decisions with hand-computed numbers, a bulk
cross-check against a naive reader, empty logs, privacy, and the HTML/JSON section.

`synthetic_events_db` also builds the large logs of the speed measurement:
    .venv/bin/python -c "from tests.unit.test_kpi import bench; bench(1_000_000)"
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nextbest.monitoring.charts import kpi_html, kpi_section
from nextbest.monitoring.kpi import business_kpis
from nextbest.serving.eventlog import SCHEMA, EventLog
from nextbest.serving.privacy import pseudonymise
from nextbest.settings import Paths

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
HOUR, DAY = 3600.0, 86400.0
KEY = b"kpi-test-key"
RAW = {name: f"CUST{n:05d}" for n, name in enumerate("abcd")}
P = {name: pseudonymise(raw, KEY) for name, raw in RAW.items()}


def offer(product_id: str, rank: int, explored: bool = False) -> dict:
    return {"product_id": product_id, "rank": rank, "score": 1.0, "probability": 0.1, "propensity": 0.9,
            "explored": explored}


def context(at: float, segment: str, exploring: bool = False, degraded: str | None = None, holdout: bool = False,
            blocked: str | None = None, suppressed: list[tuple[str, str]] = (), policy: str = "lin_ts") -> dict:
    return {"policy": policy, "exploring": exploring, "degraded": degraded, "segment": segment, "lifecycle": "active",
            "known": True, "churn_risk": 0.1, "blocked": blocked, "trigger": None,
            "request": {"channel": "x", "hour": 9, "weekday": 1, "engagement": 0.5, "page": None, "event": None,
                        "at": at},
            "candidates": [], "suppressed": [{"product_id": p, "rule": r} for p, r in suppressed],
            "groups": {"all": "control" if holdout else "treatment"}, "holdout": holdout}


@pytest.fixture(scope="module")
def hand_log(tmp_path_factory) -> Path:
    """Seven decisions of four customers; d1-d6 in the first two weeks from T0, d7 on day 30."""
    path = tmp_path_factory.mktemp("kpi-hand") / "events.db"
    log = EventLog(path)

    def d(i, who, ch, offers, ctx):
        log.log_decision(f"d{i}", P[who], ch, 3, offers, {"nbp": "1"}, ctx)

    def fb(i, product, event, value=None, at=0.0):  # feedback one minute after day i (plus `at`)
        log.log_feedback(f"d{i}", product, event, value, T0 + i * DAY + at + 60)

    d(1, "a", "mobile_app", [offer("credit_card", 1), offer("savings_account", 2)],
      context(T0 + HOUR, "young", suppressed=[("mortgage", "eligibility"), ("consumer_loan", "credit_cooldown")]))
    d(2, "a", "email", [offer("term_deposit", 1, explored=True), offer("credit_card", 2)],
      context(T0 + 2 * DAY, "young", exploring=True, suppressed=[("mortgage", "eligibility")]))
    d(3, "b", "mobile_app", [offer("savings_account", 1)], context(T0 + 3 * DAY, "family", degraded="store down"))
    d(4, "c", "mobile_app", [], context(T0 + 4 * DAY, "family", holdout=True))
    d(5, "d", "push", [], context(T0 + 5 * DAY, "family", blocked="frequency_cap_push",
                                  suppressed=[("*", "frequency_cap_push")]))
    d(6, "a", "mobile_app", [offer("mortgage", 1)], context(T0 + 8 * DAY, "young"))
    d(7, "b", "web", [offer("mortgage", 1)], context(T0 + 30 * DAY, "family"))
    fb(1, "credit_card", "impression"), fb(1, "credit_card", "click"), fb(1, "credit_card", "accept")  # margin 140
    fb(1, "savings_account", "impression")
    fb(2, "term_deposit", "click"), fb(2, "term_deposit", "accept"), fb(2, "term_deposit", "convert", 500.0)
    fb(2, "credit_card", "reject")
    fb(3, "savings_account", "accept")  # margin 45
    fb(6, "brokerage", "accept")  # not shown in d6: ignored
    fb(7, "mortgage", "accept", at=23 * DAY)  # d7 is outside the two weeks
    log.close()
    return path


@pytest.fixture(scope="module")
def two_weeks(hand_log, catalogue) -> dict:
    return business_kpis(hand_log, catalogue, since=T0, until=T0 + 14 * DAY)


def test_totals_by_hand(two_weeks):
    t = two_weeks["totals"]
    assert (t["decisions"], t["offers_shown"], t["impressions"], t["clicks"], t["accepted"]) == (6, 6, 2, 2, 3)
    assert t["value"] == 140 + 500 + 45
    assert t["click_rate"] == pytest.approx(2 / 6)
    assert t["acceptance_rate"] == pytest.approx(3 / 6)
    assert t["value_per_decision"] == pytest.approx(685 / 6)
    assert t["value_per_offer"] == pytest.approx(685 / 6)
    assert t["exploration_share"] == pytest.approx(1 / 6)
    assert t["exploring_decision_share"] == pytest.approx(1 / 6)
    assert two_weeks["exploration"] == {"offer_share": pytest.approx(1 / 6), "decision_share": pytest.approx(1 / 6),
                                        "decisions_exploring": 1, "offers_explored": 1}


@pytest.mark.parametrize("dimension, key, expected", [
    ("by_channel", "mobile_app", dict(decisions=4, offers_shown=4, clicks=1, accepted=2, value=185.0)),
    ("by_channel", "email", dict(decisions=1, offers_shown=2, clicks=1, accepted=1, value=500.0)),
    ("by_channel", "push", dict(decisions=1, offers_shown=0, clicks=0, accepted=0, value=0.0, acceptance_rate=None,
                                value_per_decision=0.0)),
    ("by_segment", "young", dict(decisions=3, offers_shown=5, accepted=2, value=640.0, acceptance_rate=0.4)),
    ("by_segment", "family", dict(decisions=3, offers_shown=1, accepted=1, value=45.0, value_per_decision=15.0)),
    ("by_policy", "lin_ts", dict(decisions=6, offers_shown=6, accepted=3)),
    ("by_arm", "exploiting", dict(decisions=3, offers_shown=3, accepted=1, value=140.0, exploration_share=0.0)),
    ("by_arm", "exploring", dict(decisions=1, offers_shown=2, accepted=1, value=500.0, exploration_share=0.5)),
    ("by_arm", "degraded", dict(decisions=1, offers_shown=1, accepted=1, value=45.0)),
    ("by_arm", "holdout", dict(decisions=1, offers_shown=0, value_per_decision=0.0, click_rate=None)),
    ("by_offer_kind", "explored", dict(decisions=1, offers_shown=1, accepted=1, value=500.0, clicks=1)),
    ("by_offer_kind", "exploited", dict(decisions=4, offers_shown=5, accepted=2, value=185.0, impressions=2)),
    ("by_product", "credit_card", dict(decisions=2, offers_shown=2, impressions=1, clicks=1, accepted=1, value=140.0,
                                       acceptance_rate=0.5, exploration_share=0.0, exploring_decision_share=0.5)),
    ("by_product", "term_deposit", dict(offers_shown=1, accepted=1, value=500.0, exploration_share=1.0)),
    ("by_product", "savings_account", dict(offers_shown=2, impressions=1, accepted=1, value=45.0)),
    ("by_product", "mortgage", dict(offers_shown=1, accepted=0, value=0.0, acceptance_rate=0.0)),
])
def test_breakdowns_by_hand(two_weeks, dimension, key, expected):
    got = two_weeks[dimension][key]
    for name, value in expected.items():
        assert got[name] == (value if value is None else pytest.approx(value)), (dimension, key, name)


def test_breakdowns_partition_the_totals(two_weeks):
    assert set(two_weeks["by_arm"]) == {"exploiting", "exploring", "degraded", "holdout"}
    assert "brokerage" not in two_weeks["by_product"]  # feedback on an offer that was not shown
    for dimension in ("by_channel", "by_segment", "by_arm", "by_policy"):
        for metric in ("decisions", "offers_shown", "accepted", "clicks", "value"):
            assert sum(g[metric] for g in two_weeks[dimension].values()) == two_weeks["totals"][metric]
    assert sum(g["offers_shown"] for g in two_weeks["by_product"].values()) == 6


def test_suppression_counts(two_weeks):
    s = two_weeks["suppression"]
    assert s["rules"] == {
        "credit_cooldown": {"offers": 1, "decisions": 1, "decision_share": pytest.approx(1 / 6)},
        "eligibility": {"offers": 2, "decisions": 2, "decision_share": pytest.approx(2 / 6)},
        "frequency_cap_push": {"offers": 1, "decisions": 1, "decision_share": pytest.approx(1 / 6)}}
    assert s["blocked"] == {"frequency_cap_push": {"decisions": 1, "decision_share": pytest.approx(1 / 6)}}
    assert s["decisions_with_suppression"] == 3


def test_contact_pressure(two_weeks):
    # Two weeks; offers a 5, b 1, c 0 (holdout), d 0 (blocked); a's busiest week has 4 offers.
    cp = two_weeks["contact_pressure"]
    assert (cp["customers"], cp["weeks"]) == (4, 2.0)
    assert cp["offers_per_week"] == {"mean": pytest.approx(0.75), "p50": pytest.approx(0.25),
                                     "p90": pytest.approx(1.9), "max": pytest.approx(2.5)}
    assert cp["contacts_per_week"]["max"] == pytest.approx(1.5)  # a: three decisions with offers
    assert cp["max_offers_in_a_week"] == {"mean": pytest.approx(1.25), "p50": pytest.approx(0.5),
                                          "p90": pytest.approx(3.1), "max": pytest.approx(4.0)}


def test_period_filter_and_whole_log(hand_log, catalogue):
    whole = business_kpis(hand_log, catalogue)
    assert whole["totals"]["decisions"] == 7 and whole["totals"]["accepted"] == 4
    assert whole["totals"]["value"] == 685 + 1400  # d7's mortgage at its margin
    late = business_kpis(hand_log, catalogue, since=T0 + 7 * DAY)
    assert late["totals"]["decisions"] == 2 and late["by_channel"].keys() == {"mobile_app", "web"}
    # Feedback after `until` does not count: d3's accept came on day 3, one minute after the decision.
    early = business_kpis(hand_log, catalogue, since=T0, until=T0 + 3 * DAY + 30)
    assert early["totals"]["decisions"] == 3 and early["by_arm"]["degraded"]["accepted"] == 0


def test_empty_and_missing_logs(tmp_path, catalogue):
    missing = business_kpis(tmp_path / "none.db", catalogue)
    EventLog(tmp_path / "events.db").close()
    empty = business_kpis(tmp_path / "events.db", catalogue)
    for result in (missing, empty):
        assert result["empty"] is True and result["totals"]["decisions"] == 0
        assert result["totals"]["acceptance_rate"] is None and result["by_product"] == {}
        assert result["contact_pressure"]["offers_per_week"]["max"] is None
    assert business_kpis(Path("/nonexistent/x.db"), catalogue, since=0, until=1)["empty"]
    assert "No decisions" in kpi_html(empty)


def test_no_customer_appears_in_the_output(two_weeks, hand_log, catalogue, tmp_path):
    text = json.dumps(two_weeks) + kpi_html(two_weeks)
    for who in "abcd":
        assert RAW[who] not in text and P[who] not in text
    # No per-customer rows at all: nothing shaped like a pseudonym either.
    assert not re.search(r"p_[0-9a-f]{24}", text)


def test_section_writes_json_and_html(hand_log, tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    (root / "events.db").write_bytes(hand_log.read_bytes())
    name, summary, html_path = kpi_section(Paths(root), {"since": "2026-01-01", "until": T0 + 14 * DAY},
                                           tmp_path / "reports")
    assert name == "kpis" and html_path == tmp_path / "reports" / "kpis.html"
    assert summary["decisions"] == 6 and summary["acceptance_rate"] == pytest.approx(0.5)
    data = json.loads((tmp_path / "reports" / "kpis.json").read_text())
    assert data["totals"]["value"] == 685
    html = html_path.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html and "credit_cooldown" in html
    assert "<script" not in html and "src=" not in html and "href=" not in html  # nothing fetched
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.endswith(".tmp")]
    # No log yet: an empty report, not an error.
    name, summary, _ = kpi_section(Paths(tmp_path / "fresh"), None, tmp_path / "reports2")
    assert summary["empty"] is True and summary["decisions"] == 0


# ------------------------------------------------------------------------------------ bulk logs and speed
CHANNELS = ("mobile_app", "web", "email", "push")
SEGMENTS = ("young", "family", "affluent", "senior")
RULES = ("already_held", "credit_cooldown", "eligibility", "rejection_cooldown")


def synthetic_events_db(path: Path, catalogue, n_decisions: int, n_customers: int = 50_000, seed: int = 0,
                        start: float = T0, days: float = 28) -> dict:
    """A decision log shaped like the service's (20 candidates, a few suppressions, k=3), written in bulk.

    Returns the counts it wrote, to check the reader against.
    """
    rng = np.random.default_rng(seed)
    ids = catalogue.ids
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    times = np.sort(start + rng.uniform(0, days * DAY, n_decisions))
    truth = Counter()
    decisions, feedback = [], []
    conn.execute("BEGIN")
    for i in range(n_decisions):
        holdout, exploring = bool(rng.random() < 0.05), bool(rng.random() < 0.1)
        arms = rng.choice(len(ids), 15, replace=False)
        offers = [] if holdout else [offer(ids[a], r + 1, exploring and r == 0) for r, a in enumerate(arms[:3])]
        ctx = context(float(times[i]), SEGMENTS[rng.integers(4)], exploring=exploring, holdout=holdout,
                      suppressed=[(ids[a], RULES[j % 4]) for j, a in enumerate(arms[3:3 + rng.integers(0, 6)])])
        ctx["candidates"] = [{"arm": ids[a], "base_prob": 0.01234567, "value": 123.0, "viewed": False} for a in arms]
        decision_id = f"d{i:09d}"
        decisions.append((decision_id, float(times[i]), f"p_{rng.integers(n_customers):024x}",
                          CHANNELS[rng.integers(4)], 3, json.dumps(offers), json.dumps({"nbp": "1"}), json.dumps(ctx)))
        truth["offers"] += len(offers)
        truth["explored"] += sum(o["explored"] for o in offers)
        truth["suppressed"] += len(ctx["suppressed"])
        for o in offers:
            u = rng.random()
            if u < 0.3:
                feedback.append((decision_id, o["product_id"], "click", None, float(times[i]) + 60))
                truth["clicks"] += 1
            if u < 0.05:
                feedback.append((decision_id, o["product_id"], "accept", None, float(times[i]) + 120))
                truth["accepted"] += 1
        if len(decisions) >= 50_000:
            conn.executemany("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", decisions)
            decisions = []
    conn.executemany("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", decisions)
    conn.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?, ?)", feedback)
    conn.execute("COMMIT")
    conn.close()
    return dict(truth)


def naive_kpis(path: Path) -> Counter:
    """The same counts, reading every row's JSON in Python: the reference for the bulk reader."""
    conn = sqlite3.connect(path)
    out = Counter()
    for offers, ctx in conn.execute("SELECT offers, context FROM decisions"):
        offers, ctx = json.loads(offers), json.loads(ctx)
        out["decisions"] += 1
        out["offers"] += len(offers)
        out["explored"] += sum(o["explored"] for o in offers)
        out["holdout"] += ctx["holdout"]
        out["exploring"] += ctx["exploring"] and not ctx["holdout"]
        for s in ctx["suppressed"]:
            out[f"rule:{s['rule']}"] += 1
        for o in offers:
            out[f"product:{o['product_id']}"] += 1
    conn.close()
    return out


def test_bulk_reader_matches_a_naive_reader(tmp_path, catalogue):
    path = tmp_path / "events.db"
    truth = synthetic_events_db(path, catalogue, 3000, n_customers=500)
    ref = naive_kpis(path)
    got = business_kpis(path, catalogue)
    t = got["totals"]
    assert (t["decisions"], t["offers_shown"], t["clicks"], t["accepted"]) == (3000, truth["offers"], truth["clicks"],
                                                                                truth["accepted"])
    assert got["exploration"]["offers_explored"] == ref["explored"] == truth["explored"]
    assert got["by_arm"]["holdout"]["decisions"] == ref["holdout"]
    assert got["by_arm"]["exploring"]["decisions"] == ref["exploring"]
    assert {r: v["offers"] for r, v in got["suppression"]["rules"].items()} == {
        k[5:]: v for k, v in ref.items() if k.startswith("rule:")}
    assert {p: v["offers_shown"] for p, v in got["by_product"].items()} == {
        k[8:]: v for k, v in ref.items() if k.startswith("product:")}
    assert t["value"] == pytest.approx(sum(v["accepted"] * catalogue.by_id()[p].margin
                                           for p, v in got["by_product"].items()))
    assert got["contact_pressure"]["customers"] <= 500


def bench(n_decisions: int, folder: str = "/tmp/kpi-bench-log") -> None:
    """Builds (once) a synthetic log of n decisions and times `business_kpis` on it."""
    from nextbest.config import load_catalogue

    catalogue = load_catalogue()
    path = Path(folder) / f"events-{n_decisions}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        started = time.perf_counter()
        synthetic_events_db(path, catalogue, n_decisions)
        print(f"wrote {n_decisions:,} decisions ({path.stat().st_size / 1e6:,.0f} MB) "
              f"in {time.perf_counter() - started:.1f} s")
    from nextbest.monitoring.uplift import uplift

    started, cpu = time.perf_counter(), time.process_time()
    kpis = business_kpis(path, catalogue)
    print(f"business_kpis: {kpis['totals']['decisions']:,} decisions, {kpis['totals']['offers_shown']:,} offers "
          f"in {time.perf_counter() - started:.1f} s ({time.process_time() - cpu:.1f} s CPU)")
    started, cpu = time.perf_counter(), time.process_time()
    result = uplift(path, catalogue, {"all": "all", "cards": ["credit_card", "cashback_card"]}, until=T0 + 30 * DAY)
    print(f"uplift: {result['exposed']:,} customers in {time.perf_counter() - started:.1f} s "
          f"({time.process_time() - cpu:.1f} s CPU)")


def test_an_acceptance_rate_on_few_acceptances_says_so():
    from nextbest.monitoring.charts import acceptance_cell

    assert acceptance_cell({"acceptance_rate": 1 / 7, "offers_shown": 7}) == "14.29% (1 of 7: too few to read)"
    assert acceptance_cell({"acceptance_rate": 0.25, "offers_shown": 400}) == "25.00%"
    assert acceptance_cell({"acceptance_rate": None, "offers_shown": 0}) == "–"
