"""The decision engine in-process on a real quickstart work dir: control groups hold on every path,
acquired products count as held at once, and a sample of served feature vectors is logged for drift."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from nextbest.serving.decide import CONTROL, TREATMENT, holdout_groups
from nextbest.serving.engine import RequestError
from tests.servers import copy_workdir, latest_customers, loaded_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(quickstart_workdir, tmp_path_factory):
    e = loaded_engine(copy_workdir(quickstart_workdir, tmp_path_factory.mktemp("engine") / "wd"))
    yield e
    e.eventlog.close()


@pytest.fixture(scope="module")
def customers(engine):
    return latest_customers(engine.paths.root)


def _in(engine, customers, group, state):
    cfg = engine.policy_cfg.holdout
    return [c for c in customers if holdout_groups(cfg, c)[group] == state]


def test_global_control_group_gets_no_offer_on_any_channel_or_trigger(engine, customers):
    held_out = _in(engine, customers, "all", CONTROL)
    assert held_out, "the quickstart bank has no customer in the global control group"
    reasons = set()
    for cid in held_out[:8]:
        for channel in ("mobile_app", "web", "branch"):
            answer = engine.recommend(cid, channel, 5)
            assert answer["offers"] == []
            reasons.add(answer["suppressed_by"])  # an opt-out, if any, is named first
        triggered = engine.event(cid, "large_deposit", amount=50_000.0)["triggered"]
        assert triggered["offers"] == []
    assert "holdout:all" in reasons
    rows = engine.eventlog._conn.execute("SELECT context FROM decisions").fetchall()
    logged = [json.loads(r[0]) for r in rows]
    assert any(c["holdout"] for c in logged)
    assert all(c["groups"]["all"] == CONTROL for c in logged if c["holdout"])


def test_campaign_control_group_never_gets_the_campaign_products(engine, customers):
    products = set(engine.policy_cfg.holdout.campaigns["deposits"].products)
    control = [c for c in _in(engine, customers, "deposits", CONTROL) if c in _in(engine, customers, "all", TREATMENT)]
    treated = [c for c in customers if holdout_groups(engine.policy_cfg.holdout, c) == {
        "all": TREATMENT, "deposits": TREATMENT, "investments": TREATMENT}]
    offered_control = {o["product_id"] for c in control[:40] for o in engine.recommend(c, "web", 10)["offers"]}
    offered_treated = {o["product_id"] for c in treated[:40] for o in engine.recommend(c, "web", 10)["offers"]}
    assert not offered_control & products
    assert offered_treated & products  # the same products do reach the treatment group
    # and the decision says which rule removed them
    rules = [{s["product_id"]: s["rule"]
              for s in engine.recommend(c, "web", 10, explain=True)["explanation"]["suppressed"]}
             for c in control[:10]]
    assert any(r.get(p) == "holdout:deposits" for r in rules for p in products)


def test_acquired_product_is_never_offered_again(engine, customers):
    treated = _in(engine, customers, "all", TREATMENT)
    cid = next(c for c in treated if engine.recommend(c, "mobile_app", 3)["offers"])
    top = engine.recommend(cid, "mobile_app", 10)["offers"][0]["product_id"]
    result = engine.event(cid, "product_acquired", product_id=top, value=150.0)
    assert result["recorded"]
    for _ in range(3):
        assert top not in {o["product_id"] for o in engine.recommend(cid, "mobile_app", 10)["offers"]}
    with pytest.raises(RequestError, match="needs product_id"):
        engine.event(cid, "product_acquired")


def test_a_sample_of_served_features_is_logged(engine, customers):
    before = engine.eventlog.counts()["decisions"]
    for cid in customers[:300]:
        engine.recommend(cid, "web", 3)
    conn = sqlite3.connect(engine.paths.events_db)
    decisions = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] - before
    rows = conn.execute("SELECT d.decision_id, s.features FROM served_features s "
                        "JOIN decisions d USING (decision_id)").fetchall()
    share = engine.sample_share
    assert decisions == 300
    # about `share` of decisions (binomial, 5 sigma), each with the full online feature vector
    assert abs(len(rows) - share * engine.eventlog.counts()["decisions"]) < 5 * (share * (1 - share) * 400) ** 0.5 + 1
    features = json.loads(rows[0][1])
    assert "customer_id" not in features and len(features) > 50


def test_rescoring_with_the_champion_reproduces_the_logged_probabilities(engine, customers):
    """The point-in-time join of the log's pseudonyms to the feature tables finds what was served."""
    from nextbest.monitoring.rescore import model_rescorer, rescore_contexts

    ids = [engine.recommend(cid, "branch", 3)["decision_id"] for cid in customers[300:360]]
    rows = [engine.eventlog._conn.execute("SELECT customer_pseudonym, context FROM decisions WHERE decision_id = ?",
                                          (d,)).fetchone() for d in ids]
    contexts = [json.loads(r[1]) for r in rows]
    rescorer = model_rescorer(engine.paths, "nbp", "champion")
    assert rescorer.version == engine.nbp.registered.version
    new, rescored = rescore_contexts(contexts, [r[0] for r in rows], rescorer)
    assert rescored == len(contexts) == 60
    products = set(engine.catalogue.ids)
    pairs = [(a["base_prob"], b["base_prob"]) for old, cur in zip(contexts, new)
             for a, b in zip(old["candidates"], cur["candidates"]) if a["arm"] in products]
    assert len(pairs) > 100
    logged, again = np.array(pairs).T
    np.testing.assert_allclose(again, logged, rtol=1e-4, atol=1e-7)
    # a decision before the first snapshot, or of a customer the tables do not know, keeps its log
    early = [{**contexts[0], "request": {**contexts[0]["request"], "at": 0.0}}]
    assert rescore_contexts(early, [rows[0][0]], rescorer) == (early, 0)
    assert rescore_contexts(contexts[:1], ["p_unknown"], rescorer) == (contexts[:1], 0)
    untimed = [{**contexts[0], "request": {k: v for k, v in contexts[0]["request"].items() if k != "at"}}]
    assert rescore_contexts(untimed, [rows[0][0]], rescorer) == (untimed, 0)  # an older log without times
