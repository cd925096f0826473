"""Control groups and uplift: synthetic worlds with known conversion rates, chronology and maturity by
hand, the intervals against published values and by simulated coverage, privacy, the report section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from nextbest.monitoring.charts import holdout_campaigns, section_config, uplift_html, uplift_section
from nextbest.monitoring.uplift import bootstrap_means, newcombe, uplift, wilson
from nextbest.serving.eventlog import EventLog
from nextbest.serving.privacy import pseudonymise
from nextbest.settings import Paths

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
DAY = 86400.0
KEY = b"uplift-test-key"
Z95 = 1.959964
MARGIN = {"credit_card": 140.0, "savings_account": 45.0}  # configs/products.yaml


def decide(log: EventLog, decision_id: str, pseudonym: str, at: float, segment: str, groups: dict | None,
           offers: list[str] = ()) -> None:
    holdout = bool(groups) and groups.get("all") == "control"
    ctx = {"policy": "lin_ts", "exploring": False, "degraded": None, "segment": segment,
           "request": {"at": at}, "suppressed": [], "holdout": holdout}
    if groups is not None:
        ctx["groups"] = groups
    log.log_decision(decision_id, pseudonym, "mobile_app", 3,
                     [] if holdout else [{"product_id": p, "rank": r + 1, "explored": False}
                                         for r, p in enumerate(offers)], {"nbp": "1"}, ctx)


def acquire(log: EventLog, event_id: str, pseudonym: str, product: str, at: float, value: float | None = None) -> None:
    payload = {"product_id": product} if value is None else {"product_id": product, "value": value}
    log.log_customer_event(event_id, pseudonym, "product_acquired", payload, at)


def build_world(path: Path, n: int, rates: dict[str, tuple[float, float]], seed: int, control_share: float = 0.3):
    """n customers exposed over 20 days from T0, segments in turn; each converts (a credit card or a
    savings account, within the 30-day window) with its segment's (control, treatment) rate. Noise that
    must not count: acquisitions 5 days before exposure and 35 days after, and a later second decision.

    Returns the bookkeeping: {(segment, group): [customers, converted, value]}, and the raw ids.
    """
    rng = np.random.default_rng(seed)
    log = EventLog(path)
    # One transaction around the whole world: the same INSERTs as serving, without a disk sync per row.
    log._conn.execute("BEGIN")
    segments = list(rates)
    book = {(s, g): [0, 0, 0.0] for s in segments for g in ("control", "treatment")}
    raw_ids = []
    for i in range(n):
        raw = f"CUST{seed:02d}{i:06d}"
        raw_ids.append(raw)
        who = pseudonymise(raw, KEY)
        seg = segments[i % len(segments)]
        group = "control" if rng.random() < control_share else "treatment"
        t0 = T0 + rng.uniform(0, 20) * DAY
        decide(log, f"d{i}", who, t0, seg, {"all": group}, ["credit_card"])
        if rng.random() < 0.2:  # a later decision changes neither exposure time nor segment
            decide(log, f"d{i}b", who, t0 + 3 * DAY, "other", {"all": group}, ["credit_card"])
        entry = book[(seg, group)]
        entry[0] += 1
        if rng.random() < rates[seg][group == "treatment"]:
            product = "credit_card" if rng.random() < 0.5 else "savings_account"
            acquire(log, f"e{i}", who, product, t0 + rng.uniform(0.5, 29.5) * DAY)
            entry[1] += 1
            entry[2] += MARGIN[product]
        u = rng.random()
        if u < 0.1:
            acquire(log, f"e{i}early", who, "credit_card", t0 - 5 * DAY)
        elif u < 0.2:
            acquire(log, f"e{i}late", who, "savings_account", t0 + 35 * DAY)
    log._conn.execute("COMMIT")
    log.close()
    return book, raw_ids


UNTIL = T0 + 51 * DAY  # every 30-day window has ended


@pytest.fixture(scope="module")
def effect_world(tmp_path_factory, catalogue):
    """20,000 customers: young 5% -> 11%, family 5% -> 5%; overall 5% -> 8%."""
    path = tmp_path_factory.mktemp("kpi-uplift") / "events.db"
    book, raw_ids = build_world(path, 20_000, {"young": (0.05, 0.11), "family": (0.05, 0.05)}, seed=5)
    result = uplift(path, catalogue, {"all": "all"}, window_days=30, until=UNTIL, n_boot=1000, seed=3)
    return result, book, raw_ids


def totals(book, segment=None):
    out = {}
    for group in ("control", "treatment"):
        rows = [v for (s, g), v in book.items() if g == group and segment in (None, s)]
        out[group] = [sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows)]
    return out


def test_effect_world_counts_are_exact(effect_world):
    result, book, _ = effect_world
    overall, t = result["campaigns"]["all"]["overall"], totals(book)
    assert result["exposed"] == 20_000 and result["campaigns"]["all"]["immature"] == {"control": 0, "treatment": 0}
    assert (overall["n_control"], overall["conversions_control"]) == tuple(t["control"][:2])
    assert (overall["n_treatment"], overall["conversions_treatment"]) == tuple(t["treatment"][:2])
    assert overall["value_control"] == pytest.approx(t["control"][2] / t["control"][0])
    assert overall["value_treatment"] == pytest.approx(t["treatment"][2] / t["treatment"][0])
    for seg in ("young", "family"):
        s, t = result["campaigns"]["all"]["by_segment"][seg], totals(book, seg)
        assert (s["n_control"], s["conversions_control"], s["n_treatment"], s["conversions_treatment"]) == (
            t["control"][0], t["control"][1], t["treatment"][0], t["treatment"][1])
    assert set(result["campaigns"]["all"]["by_segment"]) == {"young", "family"}  # from the first decision


def test_effect_world_intervals_cover_the_truth_and_exclude_zero(effect_world):
    overall = effect_world[0]["campaigns"]["all"]["overall"]
    low, high = overall["uplift_ci"]
    assert low <= 0.03 <= high and low > 0 and overall["significant"] is True
    assert high - low < 0.02  # informative, not just wide
    rel_low, rel_high = overall["relative_uplift_ci"]
    assert rel_low <= 0.6 <= rel_high and rel_low > 0
    v_low, v_high = overall["value_uplift_ci"]
    assert v_low <= 0.03 * 92.5 <= v_high and v_low > 0  # mean value of an acquisition: (140 + 45) / 2
    assert v_low < overall["value_uplift"] < v_high


def test_segment_breakdown(effect_world):
    by_segment = effect_world[0]["campaigns"]["all"]["by_segment"]
    young, family = by_segment["young"], by_segment["family"]
    assert young["uplift_ci"][0] > 0 and young["uplift_ci"][0] <= 0.06 <= young["uplift_ci"][1]
    assert family["uplift_ci"][0] <= 0 <= family["uplift_ci"][1] and family["significant"] is False
    assert family["value_uplift_ci"][0] <= 0 <= family["value_uplift_ci"][1]


def test_null_world_interval_covers_zero(tmp_path, catalogue):
    path = tmp_path / "events.db"
    build_world(path, 10_000, {"everyone": (0.06, 0.06)}, seed=2, control_share=0.5)
    overall = uplift(path, catalogue, window_days=30, until=UNTIL, n_boot=500)["campaigns"]["all"]["overall"]
    assert overall["uplift_ci"][0] <= 0 <= overall["uplift_ci"][1] and overall["significant"] is False
    assert overall["value_uplift_ci"][0] <= 0 <= overall["value_uplift_ci"][1]
    assert abs(overall["rate_control"] - 0.06) < 0.01 and abs(overall["rate_treatment"] - 0.06) < 0.01


def test_no_customer_appears_in_the_output(effect_world):
    result, _, raw_ids = effect_world
    text = json.dumps(result) + uplift_html(result)
    assert not re.search(r"p_[0-9a-f]{24}", text)  # no pseudonym, so no per-customer row
    assert not any(raw in text for raw in raw_ids[:2000])
    assert not re.search(r"CUST\d{8}", text)


# --------------------------------------------------------------------------------- chronology by hand
@pytest.fixture(scope="module")
def hand(tmp_path_factory, catalogue):
    path = tmp_path_factory.mktemp("kpi-uplift-hand") / "events.db"
    log = EventLog(path)
    p = {c: pseudonymise(c, KEY) for c in "ABCDEFGHI"}
    cards = {"all": "treatment", "cards": "treatment"}
    # A: treatment; bought a credit card before the exposure (no) and 11 days after it (yes).
    decide(log, "a1", p["A"], T0 + 1 * DAY, "young", cards, ["credit_card"])
    decide(log, "a2", p["A"], T0 + 10 * DAY, "family", cards, ["credit_card"])
    acquire(log, "ea0", p["A"], "credit_card", T0)
    acquire(log, "ea1", p["A"], "credit_card", T0 + 12 * DAY)
    # B: control for cards; a credit card 31 days after the exposure (outside the window), a savings
    # account within it (counts for "all" only).
    decide(log, "b1", p["B"], T0 + 1 * DAY, "young", {"all": "treatment", "cards": "control"}, ["savings_account"])
    acquire(log, "eb1", p["B"], "credit_card", T0 + 32 * DAY)
    acquire(log, "eb2", p["B"], "savings_account", T0 + 5 * DAY)
    # C: treatment, exposed 10 days before `until`: immature, not counted.
    decide(log, "c1", p["C"], T0 + 50 * DAY, "young", cards, ["credit_card"])
    acquire(log, "ec1", p["C"], "credit_card", T0 + 52 * DAY)
    # D: treatment; the bank's event (value 999) and a convert feedback for the same card: once, 999.
    decide(log, "d1", p["D"], T0 + 2 * DAY, "family", cards, ["cashback_card"])
    acquire(log, "ed1", p["D"], "cashback_card", T0 + 3 * DAY, value=999.0)
    log.log_feedback("d1", "cashback_card", "convert", None, T0 + 3 * DAY)
    # E: in the global control group (no offer at all): left out of the "cards" campaign.
    decide(log, "e1", p["E"], T0 + 2 * DAY, "family", {"all": "control", "cards": "treatment"})
    acquire(log, "ee1", p["E"], "credit_card", T0 + 4 * DAY)
    # F: no group logged (a decision from before the holdout existed): unassigned.
    decide(log, "f1", p["F"], T0 + 2 * DAY, "family", None, ["credit_card"])
    # G: control for cards; only an accept feedback (not a conversion by default) and a convert of a card.
    decide(log, "g1", p["G"], T0 + 3 * DAY, "family", {"all": "treatment", "cards": "control"}, ["credit_card"])
    log.log_feedback("g1", "credit_card", "accept", None, T0 + 4 * DAY)
    # I: global control; bought a card the day before the exposure: not a conversion.
    decide(log, "i1", p["I"], T0 + 3 * DAY, "family", {"all": "control", "cards": "control"})
    acquire(log, "ei1", p["I"], "credit_card", T0 + 2 * DAY)
    # H: exposed before the period: not a unit.
    decide(log, "h1", p["H"], T0 - 5 * DAY, "young", cards, ["credit_card"])
    acquire(log, "eh1", p["H"], "credit_card", T0 + 1 * DAY)
    log.close()
    campaigns = {"all": "all", "cards": ["credit_card", "cashback_card"]}
    return uplift(path, catalogue, campaigns, window_days=30, since=T0, until=T0 + 60 * DAY, n_boot=200), path


def test_chronology_maturity_and_assignment_by_hand(hand):
    result = hand[0]
    assert result["exposed"] == 8  # A..G and I; H was first seen before the period
    cards, every = result["campaigns"]["cards"], result["campaigns"]["all"]
    assert cards["immature"] == {"control": 0, "treatment": 1}  # C
    assert cards["in_global_control"] == 2 and cards["unassigned"] == 1  # E and I, F
    assert cards["assigned"] == 5 and every["assigned"] == 7  # A B C D G; and E, I for "all"
    o = cards["overall"]
    # treatment A (card on day 12), D (cashback card, 999); control B (card too late), G (accept only).
    assert (o["n_treatment"], o["conversions_treatment"], o["n_control"], o["conversions_control"]) == (2, 2, 2, 0)
    assert o["value_treatment"] == pytest.approx((140 + 999) / 2) and o["value_control"] == 0
    assert o["uplift"] == 1.0 and o["relative_uplift"] is None  # no control conversion: no ratio
    assert cards["by_segment"]["young"]["n_treatment"] == 1  # A's segment from the first decision
    # "all": treatment A, B (savings account), D, G; control E (a card on day 4 counts) and I (bought before).
    a = every["overall"]
    assert (a["n_treatment"], a["conversions_treatment"], a["n_control"], a["conversions_control"]) == (4, 3, 2, 1)
    assert a["value_treatment"] == pytest.approx((140 + 999 + 45 + 0) / 4) and a["value_control"] == 70
    assert every["immature"] == {"control": 0, "treatment": 1} and every["unassigned"] == 1


def test_accept_feedback_counts_only_when_asked(hand, catalogue):
    path = hand[1]
    asked = uplift(path, catalogue, {"cards": ["credit_card", "cashback_card"]}, window_days=30, since=T0,
                   until=T0 + 60 * DAY, n_boot=50, conversion_feedback=("convert", "accept"))
    assert asked["campaigns"]["cards"]["overall"]["conversions_control"] == 1  # G's accept
    # Nothing has matured if `until` is 20 days after the first exposure.
    early = uplift(path, catalogue, window_days=30, since=T0, until=T0 + 20 * DAY, n_boot=50)
    assert early["campaigns"]["all"]["overall"]["n_control"] == 0
    assert early["campaigns"]["all"]["immature"] == {"control": 2, "treatment": 4}
    assert early["campaigns"]["all"]["overall"]["uplift_ci"] is None
    page = " ".join(re.sub(r"<[^>]+>", " ", uplift_html(early)).split())
    assert "No uplift yet: it needs customers in both groups whose 30-day window" in page
    assert "0 control and 0 treatment so far; 6 still within their window" in page


def test_empty_and_missing_logs(tmp_path, catalogue):
    EventLog(tmp_path / "events.db").close()
    for path in (tmp_path / "events.db", tmp_path / "missing.db"):
        result = uplift(path, catalogue, until=T0)
        assert result["empty"] is True and result["campaigns"] == {}
        assert "No exposures" in uplift_html(result)


# ------------------------------------------------------------------------------------------- intervals
def test_newcombe_matches_the_published_examples():
    # Newcombe (1998), Statistics in Medicine 17:873, method 10: 56/70 - 48/80 and 9/10 - 3/10.
    assert newcombe(56, 70, 48, 80, Z95) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert newcombe(9, 10, 3, 10, Z95) == pytest.approx((0.1705, 0.8090), abs=1e-4)
    assert wilson(0, 10, Z95)[0] == 0.0 and wilson(10, 10, Z95)[1] == pytest.approx(1.0)


def test_interval_coverage_by_simulation():
    rng = np.random.default_rng(11)
    n_c, n_t, p_c, p_t, reps = 1500, 1500, 0.05, 0.08, 2000
    a_c, a_t = rng.binomial(n_c, p_c, reps), rng.binomial(n_t, p_t, reps)
    cover = np.mean([lo <= p_t - p_c <= hi for lo, hi in (newcombe(t, n_t, c, n_c, Z95) for t, c in zip(a_t, a_c))])
    assert 0.93 <= cover <= 0.97
    # The bootstrap interval of a difference in mean value (zero-inflated, skewed values).
    hits = 0
    for _ in range(200):
        c = np.where(rng.random(n_c) < p_c, rng.choice([45.0, 140.0, 1400.0], n_c), 0.0)
        t = np.where(rng.random(n_t) < p_t, rng.choice([45.0, 140.0, 1400.0], n_t), 0.0)
        diff = bootstrap_means(t, 400, rng) - bootstrap_means(c, 400, rng)
        lo, hi = np.percentile(diff, [2.5, 97.5])
        hits += lo <= (p_t - p_c) * 1585 / 3 <= hi
    assert 0.90 <= hits / 200 <= 0.99


def test_bootstrap_means_is_the_plain_bootstrap():
    rng = np.random.default_rng(0)
    x = np.where(rng.random(5000) < 0.1, 100.0, 0.0)
    means = bootstrap_means(x, 4000, rng)
    assert means.mean() == pytest.approx(x.mean(), rel=0.01)
    assert means.std() == pytest.approx(x.std() / np.sqrt(len(x)), rel=0.05)


# ----------------------------------------------------------------------------------- section and config
def test_section_config_from_any_caller():
    from pydantic import BaseModel

    class Whole(BaseModel):  # the monitor's typed config, with or without an `uplift` part
        version: int = 1

    class WithUplift(Whole):
        uplift: dict = {"window_days": 14}

    assert section_config(None, "uplift") == {} and section_config(Whole(), "uplift") == {}
    assert section_config(WithUplift(), "uplift") == {"window_days": 14}
    assert section_config({"uplift": {"n_boot": 5}, "kpi": {}}, "uplift") == {"n_boot": 5}
    assert section_config({"uplift": None}, "uplift") == {}
    assert section_config({"n_boot": 5}, "uplift") == {"n_boot": 5}  # the part itself


def test_holdout_campaigns_from_the_validated_bandit_config(tmp_path):
    from nextbest.config import ConfigError
    from nextbest.settings import default_config_dir

    from nextbest.config import load_campaigns

    outbound = {name: list(c.products) for name, c in load_campaigns().campaigns.items()}  # campaigns.yaml
    assert set(holdout_campaigns()) == {"all", "deposits", "investments", *outbound}  # and configs/bandit.yaml
    base = (default_config_dir() / "bandit.yaml").read_text().split("\nholdout:")[0]
    path = tmp_path / "bandit.yaml"
    path.write_text(base)
    assert holdout_campaigns(path) == {"all": "all", **outbound}
    path.write_text(base + "\nholdout:\n  share: 0.1\n  campaigns:\n"
                    "    loans: {products: [consumer_loan], share: 0.2}\n")
    assert holdout_campaigns(path) == {"all": "all", "loans": ["consumer_loan"], **outbound}
    path.write_text(base + "\nholdout:\n  campaigns:\n    loans: {products: [consumer_lone], share: 0.2}\n")
    with pytest.raises(ConfigError, match="consumer_lone"):
        holdout_campaigns(path)
    with pytest.raises(ConfigError, match="not found"):
        holdout_campaigns(tmp_path / "absent.yaml")


def test_section_writes_json_and_html(hand, tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    (root / "events.db").write_bytes(hand[1].read_bytes())
    config = {"window_days": 30, "since": T0, "until": "2026-03-02", "n_boot": 100,
              "campaigns": {"all": "all", "cards": ["credit_card", "cashback_card"]}}
    name, summary, html_path = uplift_section(Paths(root), config, tmp_path / "reports")
    assert name == "uplift" and html_path.name == "uplift.html"
    assert summary["campaigns"]["cards"]["n_treatment"] == 2 and summary["campaigns"]["cards"]["uplift"] == 1.0
    data = json.loads((tmp_path / "reports" / "uplift.json").read_text())
    assert data["campaigns"]["all"]["overall"]["conversions_treatment"] == 3
    html = html_path.read_text()
    assert "<svg" in html and "Campaign cards" in html and "<script" not in html and "src=" not in html
    name, summary, _ = uplift_section(Paths(tmp_path / "fresh"), {}, tmp_path / "reports2")
    assert summary["empty"] is True and summary["campaigns"] == {}
