"""`nextbest monitor` on a work dir with a decision log: business KPIs, control-group uplift and
off-policy values join the drift report, and the acceptance gate reads only matured decisions."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from nextbest.serving.decide import CONTROL, holdout_groups
from tests.servers import copy_workdir, latest_customers, loaded_engine, run_cli

pytestmark = pytest.mark.slow
N_CUSTOMERS = 400


@pytest.fixture(scope="module")
def logged_workdir(quickstart_workdir, tmp_path_factory):
    """Three weeks of decisions, answers and product openings, 10 to 30 days ago."""
    wd = copy_workdir(quickstart_workdir, tmp_path_factory.mktemp("monitor_log") / "wd")
    engine = loaded_engine(wd)
    customers = latest_customers(wd)[:N_CUSTOMERS]
    rng = np.random.default_rng(0)
    start = datetime.now(timezone.utc) - timedelta(days=30)
    stats = {"decisions": 0, "offers": 0, "accepted": 0, "control": 0}
    for i, cid in enumerate(customers):
        at = start + timedelta(days=20 * i / len(customers), hours=int(rng.integers(8, 20)))
        answer = engine.recommend(cid, "mobile_app", 2, {"timestamp": at})
        stats["decisions"] += 1
        stats["offers"] += len(answer["offers"])
        stats["control"] += holdout_groups(engine.policy_cfg.holdout, cid)["all"] == CONTROL
        for offer in answer["offers"]:
            event = "accept" if rng.random() < 0.3 else "reject"
            engine.feedback(answer["decision_id"], offer["product_id"], event, timestamp=at + timedelta(hours=2))
            stats["accepted"] += event == "accept"
            if event == "accept" and offer["product_id"] in engine.catalogue.ids:  # actions are not acquired
                engine.event(cid, "product_acquired", product_id=offer["product_id"], timestamp=at + timedelta(days=1))
    engine.eventlog.close()
    return wd, stats


def test_monitor_reports_kpis_uplift_and_off_policy_values(logged_workdir):
    wd, stats = logged_workdir
    proc = run_cli("monitor", workdir=wd)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    day = sorted((wd / "reports").iterdir())[-1]
    summary = json.loads((day / "summary.json").read_text())
    assert proc.returncode == (0 if summary["passed"] else 1)
    sections = summary["sections"]
    kpis = sections["kpis"]
    assert kpis["decisions"] == stats["decisions"] and kpis["offers_shown"] == stats["offers"]
    assert kpis["acceptance_rate"] == pytest.approx(stats["accepted"] / stats["offers"])
    acceptance = sections["acceptance"]
    assert acceptance["immature_decisions"] == 0  # every decision is older than the 7-day maturity
    assert sum(p["accepted"] for p in acceptance["periods"]) == stats["accepted"]
    uplift = sections["uplift"]["campaigns"]["all"]
    assert uplift["n_control"] + uplift["n_treatment"] + uplift["immature"]["control"] + \
        uplift["immature"]["treatment"] == stats["decisions"]
    assert uplift["n_control"] + uplift["immature"]["control"] == stats["control"]
    ope = sections["ope"]["current_posterior_no_exploration"]
    assert ope["decisions"] > 0 and ope["dr"]["ci95"][0] <= ope["dr"]["value"] <= ope["dr"]["ci95"][1]
    for name in ("kpis.html", "uplift.html", "ope.json", "index.html", "data_drift.html"):
        assert (day / name).stat().st_size > 0
    text = (day / "kpis.json").read_text() + (day / "uplift.json").read_text()
    assert not any(c in text for c in ("C000", "customer_id\": \"C"))  # no raw customer ids in reports


def test_fresh_decisions_wait_for_their_outcomes(logged_workdir, tmp_path):
    wd, _ = logged_workdir
    fresh = copy_workdir(wd, tmp_path / "fresh")
    (fresh / "events.db").unlink(missing_ok=True)
    engine = loaded_engine(fresh)
    for cid in ("C0000001", "C0000002", "C0000003"):
        engine.recommend(cid, "web", 2)
    engine.eventlog.close()
    proc = run_cli("monitor", workdir=fresh)
    summary = json.loads((sorted((fresh / "reports").iterdir())[-1] / "summary.json").read_text())
    assert summary["sections"]["acceptance"]["immature_decisions"] == 3
    assert "passed" not in summary["sections"]["acceptance"]  # nothing matured: reported, not gated
    assert proc.returncode == (0 if summary["passed"] else 1)
