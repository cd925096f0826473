"""The decision service over real HTTP: auth, limits, rules via /events, cold start, feedback learning,
state across restarts, the degraded path, and durability under `kill -9`."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.servers import copy_workdir, served

pytestmark = pytest.mark.slow
KEY = "test-key-1234"
H = {"x-api-key": KEY}


@pytest.fixture(scope="module")
def workdir(quickstart_workdir, tmp_path_factory) -> Path:
    return copy_workdir(quickstart_workdir, tmp_path_factory.mktemp("decisions") / "wd")


@pytest.fixture(scope="module")
def latest(workdir) -> pd.DataFrame:
    frames = [pd.read_parquet(workdir / "features" / f"{v}.parquet") for v in ("customer_profile", "customer_holdings")]
    last = frames[0].event_timestamp.max()
    p, h = (f[f.event_timestamp == last].set_index("customer_id") for f in frames)
    return p.join(h.drop(columns="event_timestamp"))


@pytest.fixture(scope="module")
def server(workdir):
    with served(workdir, env={"NEXTBEST_API_KEY": KEY}) as (base, proc):
        yield base, proc


def _post(base, path, body, headers=H):
    return httpx.post(base + path, json=body, headers=headers, timeout=30)


def _reachable(latest, consent="consent_email"):
    ok = latest[(latest.marketing_opt_out == 0) & (latest[consent] == 1) & (latest.n_products > 0)]
    return list(ok.index)


def test_api_key_and_body_limit(server):
    base, _ = server
    body = {"customer_id": "C0000001"}
    assert _post(base, "/recommend", body, headers={}).status_code == 401
    assert _post(base, "/recommend", body, headers={"x-api-key": "wrong"}).status_code == 401
    assert _post(base, "/recommend", body).status_code == 200
    assert httpx.get(base + "/healthz").status_code == 200  # probes need no key
    big = {"customer_id": "C0000001", "context": {"page": "x" * 40_000}}
    r = _post(base, "/recommend", big)
    assert r.status_code == 413 and "bytes" in r.json()["error"]


def test_recommend_answers_with_propensities_and_reasons(server, latest):
    base, _ = server
    cid = _reachable(latest)[0]
    r = _post(base, "/recommend", {"customer_id": cid, "channel": "email", "k": 4, "explain": True})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["degraded"] is False and j["lifecycle"] and j["segment"] and j["policy"]["name"] == "lin_ts"
    assert j["offers"] and len(j["offers"]) <= 4
    held = {p for p in latest.columns if p.startswith("held_") and latest.loc[cid, p] == 1}
    for rank, o in enumerate(j["offers"], 1):
        assert o["rank"] == rank and o["channel"] == "email" and f"held_{o['product_id']}" not in held
        assert 0 < o["propensity"] <= 1 and 0 < o["probability"] < 1
        assert o["expected_value"] == pytest.approx(o["score"], rel=1e-3) and o["reasons"]
    assert {s["rule"] for s in j["explanation"]["suppressed"]} >= {"already_held"}


def test_cold_start_offers_entry_products_on_owned_channels_only(server):
    base, _ = server
    web = _post(base, "/recommend", {"customer_id": "NEW-VISITOR-1", "channel": "web", "k": 3,
                                     "context": {"page": "savings_account"}}).json()
    assert web["lifecycle"] == "prospect" and web["offers"]
    assert {o["product_id"] for o in web["offers"]} <= {"e_account", "current_account", "savings_account"}
    email = _post(base, "/recommend", {"customer_id": "NEW-VISITOR-1", "channel": "email"}).json()
    assert email["offers"] == [] and email["suppressed_by"] == "no_consent_email"


def test_events_change_what_may_be_offered(server, latest):
    base, _ = server
    first, second = _reachable(latest)[1:3]
    assert _post(base, "/recommend", {"customer_id": first, "channel": "email"}).json()["offers"]
    r = _post(base, "/events", {"customer_id": first, "event": "opt_out", "event_id": "ev-1"})
    assert r.status_code == 200 and r.json()["recorded"]
    assert _post(base, "/events", {"customer_id": first, "event": "opt_out", "event_id": "ev-1"}).json()["duplicate"]
    after = _post(base, "/recommend", {"customer_id": first, "channel": "email"}).json()
    assert after["offers"] == [] and after["suppressed_by"] == "marketing_opt_out"

    _post(base, "/events", {"customer_id": second, "event": "loan_disbursed", "product_id": "car_loan"})
    j = _post(base, "/recommend", {"customer_id": second, "channel": "email", "k": 10, "explain": True}).json()
    credit = {"consumer_loan", "car_loan", "mortgage", "credit_card", "cashback_card"}
    assert not {o["product_id"] for o in j["offers"]} & credit
    assert {s["rule"] for s in j["explanation"]["suppressed"]} >= {"credit_cooldown"}

    bad = _post(base, "/events", {"customer_id": second, "event": "product_page_view", "product_id": "yacht"})
    assert bad.status_code == 400 and ["product_id"] in [d["loc"] for d in bad.json()["detail"]]
    assert _post(base, "/events", {"customer_id": second, "event": "salary_received"}).status_code == 400


def test_large_deposit_triggers_a_deposit_offer(server, latest):
    base, _ = server
    cid = next(c for c in _reachable(latest, "consent_push")
               if not latest.loc[c, ["held_savings_account", "held_term_deposit"]].all())
    r = _post(base, "/events", {"customer_id": cid, "event": "large_deposit", "amount": 25_000}).json()
    offers = r["triggered"]["offers"]
    assert offers and offers[0]["channel"] == "push"
    assert {o["product_id"] for o in offers} <= {"savings_account", "term_deposit", "investment_funds", "brokerage",
                                                 "pension_plan"}
    small = _post(base, "/events", {"customer_id": cid, "event": "large_deposit", "amount": 50}).json()
    assert small["triggered"] is None


def test_feedback_teaches_the_policy_and_survives_a_restart(workdir, latest):
    reachable = _reachable(latest, "consent_email")[3:40]
    with served(workdir, env={"NEXTBEST_API_KEY": KEY}, log_name="restart1.log") as (base, _):
        before = None
        for cid in reachable:
            j = _post(base, "/recommend", {"customer_id": cid, "channel": "web"}).json()
            before = before if before is not None else j["policy"]["updates"]
            for o in j["offers"]:
                f = _post(base, "/feedback", {"decision_id": j["decision_id"], "product_id": o["product_id"],
                                              "event": "reject"})
                assert f.status_code == 200 and f.json()["reward"] == 0.0
            if j["offers"]:
                again = _post(base, "/feedback", {"decision_id": j["decision_id"],
                                                  "product_id": j["offers"][0]["product_id"], "event": "reject"}).json()
                assert again["duplicate"] and again["reward"] is None
        learnt = _post(base, "/recommend", {"customer_id": reachable[0], "channel": "web"}).json()["policy"]["updates"]
        assert learnt > before
        assert _post(base, "/feedback",
                     {"decision_id": "nope", "product_id": "mortgage", "event": "click"}).status_code == 404
    with served(workdir, env={"NEXTBEST_API_KEY": KEY}, log_name="restart2.log") as (base, _):
        restored = _post(base, "/recommend",
                         {"customer_id": reachable[0], "channel": "web"}).json()["policy"]["updates"]
    assert restored == learnt


def test_degraded_answers_keep_the_rules(workdir, latest, tmp_path):
    wd = copy_workdir(workdir, tmp_path / "wd")
    for f in (wd / "feast").glob("online_store.db*"):
        f.unlink()  # the online store lost its data: every customer looks unknown to it
    opted_out = latest[latest.marketing_opt_out == 1].index[:5]
    reachable = _reachable(latest)[:20]
    with served(wd) as (base, _):
        for cid in reachable:
            j = _post(base, "/recommend", {"customer_id": cid, "channel": "email", "k": 5}, headers={}).json()
            assert j["degraded"] is True and j["offers"], j
            assert all(latest.loc[cid, f"held_{o['product_id']}"] == 0 for o in j["offers"]
                       if f"held_{o['product_id']}" in latest)
            assert all(o["propensity"] == 1.0 and not o["explored"] for o in j["offers"])
        for cid in opted_out:
            j = _post(base, "/recommend", {"customer_id": cid, "channel": "mobile_app"}, headers={}).json()
            assert j["degraded"] is True and j["offers"] == [] and j["suppressed_by"] == "marketing_opt_out"


def test_every_acknowledged_decision_and_feedback_survives_kill_9(workdir, latest, tmp_path):
    wd = copy_workdir(workdir, tmp_path / "wd")
    ids = list(latest.index)
    acked_decisions, acked_feedback = set(), set()
    stop = threading.Event()
    with served(wd) as (base, proc):
        def worker(n: int) -> None:
            with httpx.Client(base_url=base, timeout=5) as c:
                i = n
                while not stop.is_set():
                    i += 4
                    try:
                        r = c.post("/recommend", json={"customer_id": ids[i % len(ids)], "channel": "web"})
                        if r.status_code != 200:
                            continue
                        j = r.json()
                        acked_decisions.add(j["decision_id"])
                        if j["offers"]:
                            f = c.post("/feedback", json={"decision_id": j["decision_id"],
                                                          "product_id": j["offers"][0]["product_id"], "event": "click"})
                            if f.status_code == 200:
                                acked_feedback.add(j["decision_id"])
                    except httpx.HTTPError:
                        return  # the server is gone

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(worker, n) for n in range(4)]
            time.sleep(6)
            os.killpg(proc.pid, signal.SIGKILL)  # no shutdown, no flush: the process group dies mid-load
            stop.set()
            for f in futures:
                f.result()
    assert len(acked_decisions) > 50
    conn = sqlite3.connect(wd / "events.db")
    stored = {r[0] for r in conn.execute("SELECT decision_id FROM decisions")}
    fed = {r[0] for r in conn.execute("SELECT decision_id FROM feedback")}
    assert acked_decisions <= stored
    assert acked_feedback <= fed


def test_events_reach_the_online_store(server, workdir, latest):
    from nextbest.feature_repo.store import open_store
    from nextbest.settings import Paths

    base, _ = server
    cid = _reachable(latest)[5]
    r = _post(base, "/events", {"customer_id": cid, "event": "product_page_view", "product_id": "mortgage"}).json()
    assert r["online_store_queued"] is True
    store = open_store(Paths.from_workdir(workdir))
    refs = ["customer_realtime:last_page_view_product", "customer_realtime:last_page_view_at"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = store.get_online_features(features=refs, entity_rows=[{"customer_id": cid}]).to_dict()
        if got["last_page_view_product"][0] == "mortgage":
            break
        time.sleep(0.5)
    assert got["last_page_view_product"] == ["mortgage"] and got["last_page_view_at"][0] > time.time() - 600
