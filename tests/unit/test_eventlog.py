"""The event log's reader: what the service's writer logs reads back typed; empty, missing and
foreign files; times outside pandas' range; every monitor reads the log only through it."""

from __future__ import annotations

import ast
import sqlite3

import numpy as np
import pandas as pd
import pytest

from nextbest import eventlog as contract
from nextbest.eventlog import EARLIEST, LATEST, PRODUCT_ACQUIRED, EventLogError, EventLogReader, SavedPolicy
from nextbest.serving.eventlog import EventLog
from tests.conftest import REPO_ROOT

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
DAY = 86400.0
FAR_FUTURE = 1e12  # year 33658
FAR_PAST = -1e11  # year -1199


def offer(product_id: str, rank: int, explored: bool = False) -> dict:
    return {"product_id": product_id, "rank": rank, "score": 0.5, "propensity": 0.8, "explored": explored}


def context(at, segment: str = "young", exploring: bool = False, holdout: bool = False, degraded: str | None = None,
            groups: dict | None = None) -> dict:
    return {"policy": "lin_ts", "exploring": exploring, "holdout": holdout, "degraded": degraded,
            "segment": segment, "blocked": None, "request": {"at": at},
            "suppressed": [{"product_id": "mortgage", "rule": "eligibility"}],
            "groups": groups or {"all": "treatment"}, "candidates": [{"arm": "credit_card", "base_prob": 0.1}]}


@pytest.fixture
def log_path(tmp_path):
    """Three decisions (d2 exploring, d3 a holdout made for an earlier business day), feedback,
    rewards, a customer event, a served feature vector and a saved policy, written by the service's writer."""
    path = tmp_path / "events.db"
    log = EventLog(path)
    log.log_decision("d1", "p1", "mobile_app", 3, [offer("credit_card", 1), offer("savings_account", 2)],
                     {"nbp": "4"}, context(T0), features={"age": 41, "segment": "young"}, at=T0)
    log.log_decision("d2", "p2", "email", 3, [offer("term_deposit", 1, explored=True)], {"nbp": "4"},
                     context(T0 + DAY, segment="family", exploring=True, groups={"all": "control"}), at=T0 + DAY)
    log.log_decision("d3", "p1", "web", 3, [], {"nbp": "4"}, context(T0 - 5 * DAY, holdout=True, degraded="store down"),
                     at=T0 + 2 * DAY)
    log.log_feedback("d1", "credit_card", "impression", None, T0 + 60)
    log.log_feedback("d1", "credit_card", "accept", 99.5, T0 + 120)
    log.log_feedback("d2", "term_deposit", "reject", None, T0 + DAY + 60)
    log.log_customer_event("e1", "p1", PRODUCT_ACQUIRED, {"product_id": "credit_card", "value": 140}, T0 + 3 * DAY)
    log.log_customer_event("e2", "p2", "opt_out", {}, T0 + 4 * DAY)
    log.save_policy("lin_ts", "sig", 2, 2, np.arange(3.0), np.eye(3) * 2)
    log.close()
    return path


def test_decisions_read_back_typed(log_path):
    with EventLogReader(log_path) as log:
        stored = log.decisions()
        facts = log.decisions(("rowid", "decision_id", "at", "n_offers", "exploring", "holdout", "degraded",
                               "segment", "suppressed_json", "groups_json"))
    assert list(stored["decision_id"]) == ["d1", "d2", "d3"]  # log order
    assert stored.dtypes.to_dict() == {"rowid": np.int64, "decision_id": object, "created_at": np.float64,
                                       "customer_pseudonym": object, "channel": object, "k": np.int64,
                                       "offers": object, "model_versions": object, "context": object}
    assert stored["offers"][0][1]["product_id"] == "savings_account" and stored["offers"][2] == []
    assert stored["model_versions"][0] == {"nbp": "4"} and stored["context"][1]["segment"] == "family"
    assert list(stored["created_at"]) == [T0, T0 + DAY, T0 + 2 * DAY]
    assert list(facts["at"]) == [T0, T0 + DAY, T0 - 5 * DAY]  # the business time, from the request
    assert list(facts["n_offers"]) == [2, 1, 0] and facts["n_offers"].dtype == np.int64
    assert facts["exploring"].dtype == bool and list(facts["exploring"]) == [False, True, False]
    assert list(facts["holdout"]) == [False, False, True]
    assert list(facts["degraded"]) == [None, None, "store down"]
    assert list(facts["segment"]) == ["young", "family", "young"]
    assert facts["suppressed_json"][0] == '[{"product_id":"mortgage","rule":"eligibility"}]'
    assert facts["groups_json"][1] == '{"all":"control"}'


@pytest.mark.parametrize("by, since, until, expected", [
    ("at", T0, T0 + DAY, ["d1"]),
    ("at", None, T0, ["d3"]),
    ("created_at", T0 + DAY, None, ["d2", "d3"]),
    ("created_at", None, None, ["d1", "d2", "d3"]),
])
def test_decision_windows(log_path, by, since, until, expected):
    with EventLogReader(log_path) as log:
        assert list(log.decisions(("decision_id",), since=since, until=until, by=by)["decision_id"]) == expected
        offers = log.offers(("decision_id", "product_id"), since=since, until=until, by=by)
    assert set(offers["decision_id"]) == set(expected) - {"d3"}  # d3 showed nothing


def test_offers_feedback_rewards_events_and_features(log_path):
    with EventLogReader(log_path) as log:
        offers = log.offers(("decision_rowid", "decision_id", "rank", "product_id", "explored", "propensity"))
        feedback = log.feedback(("decision_rowid", "customer_pseudonym", "product_id", "event", "value",
                                 "created_at"))
        taken = log.feedback(("decision_id", "product_id"), events=contract.ACCEPTED)
        up_to = log.feedback(("event",), since=T0, until=T0 + 120, include_until=True)
        before = log.feedback(("event",), since=T0, until=T0 + 120)
        rewards = log.rewards()
        events = log.customer_events(("customer_pseudonym", "event", "payload", "product_id", "value", "occurred_at"))
        acquired = log.customer_events(("product_id",), events=(PRODUCT_ACQUIRED,), since=T0, until=T0 + 3 * DAY)
        features = log.served_features()
        counts = log.counts()
    assert list(offers["product_id"]) == ["credit_card", "savings_account", "term_deposit"]
    assert list(offers["rank"]) == [1, 2, 1] and list(offers["explored"]) == [False, False, True]
    assert offers.dtypes["decision_rowid"] == np.int64 and offers.dtypes["propensity"] == np.float64
    assert list(feedback["event"]) == ["impression", "accept", "reject"]
    assert list(feedback["customer_pseudonym"]) == ["p1", "p1", "p2"]
    assert feedback["value"].dtype == np.float64 and np.isnan(feedback["value"][0]) and feedback["value"][1] == 99.5
    assert taken.to_dict("list") == {"decision_id": ["d1"], "product_id": ["credit_card"]}
    assert list(up_to["event"]) == ["impression", "accept"] and list(before["event"]) == ["impression"]
    assert rewards[["decision_id", "product_id", "reward"]].to_dict("list") == {
        "decision_id": ["d1", "d2"], "product_id": ["credit_card", "term_deposit"], "reward": [1.0, 0.0]}
    assert events["payload"][0] == {"product_id": "credit_card", "value": 140} and events["payload"][1] == {}
    assert list(events["product_id"]) == ["credit_card", None] and events["value"].dtype == np.float64
    assert events["value"][0] == 140.0 and np.isnan(events["value"][1])
    assert acquired.empty  # the window is half-open: e1 occurred at its end
    assert list(features["decision_id"]) == ["d1"] and features["features"][0] == {"age": 41, "segment": "young"}
    assert counts == {"decisions": 3, "feedback": 3, "rewards": 2, "customer_events": 2, "served_features": 1}


def test_saved_policy(log_path):
    with EventLogReader(log_path) as log:
        saved = log.policy("lin_ts", "sig")
        assert log.policy("lin_ts", "another layout") is None
    assert isinstance(saved, SavedPolicy) and (saved.n_updates, saved.last_reward_rowid) == (2, 2)
    assert np.array_equal(saved.mean, np.arange(3.0)) and np.array_equal(saved.cov, np.eye(3) * 2)
    # The writer reads the same bytes back the same way.
    assert np.array_equal(EventLog(log_path).load_policy("lin_ts", "sig")[3], saved.cov)


@pytest.mark.parametrize("make", ["writer", "zero bytes"])
def test_an_empty_log_reads_as_typed_empty_frames(tmp_path, make):
    path = tmp_path / "events.db"
    if make == "writer":
        EventLog(path).close()
    else:
        path.write_bytes(b"")
    with EventLogReader(path) as log:
        decisions = log.decisions(("rowid", "at", "exploring", "offers"))
        frames = [decisions, log.offers(), log.feedback(), log.rewards(), log.customer_events(),
                  log.served_features(), log.feedback(events=())]
        assert log.policy("lin_ts", "sig") is None
        assert set(log.counts().values()) == {0}
    assert all(f.empty for f in frames)
    assert decisions.dtypes.to_dict() == {"rowid": np.int64, "at": np.float64, "exploring": bool, "offers": object}


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none.db")):
        EventLogReader(tmp_path / "none.db")


def test_a_file_that_is_not_a_log_is_named(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database, just some text that is long enough to have a header" * 20)
    with pytest.raises(EventLogError, match="notes.txt: not an event log"):
        EventLogReader(text)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE accounts (id TEXT)")
    conn.close()
    with pytest.raises(EventLogError, match="other.db: not an event log"):
        EventLogReader(other)


def test_unknown_columns_and_clocks_are_refused(log_path):
    with EventLogReader(log_path) as log:
        with pytest.raises(ValueError, match="unknown column.*'colour'"):
            log.decisions(("decision_id", "colour"))
        with pytest.raises(ValueError, match="by"):
            log.decisions(by="occurred_at")


@pytest.fixture
def odd_log(log_path):
    """The small log plus rows whose times pandas cannot hold, or that are not numbers at all."""
    log = EventLog(log_path)
    log.log_decision("future", "p3", "web", 3, [offer("mortgage", 1)], {}, context(T0), at=FAR_FUTURE)
    log.log_decision("past", "p3", "web", 3, [offer("mortgage", 1)], {}, context(FAR_PAST), at=T0 + DAY)
    log.log_decision("text", "p3", "web", 3, [offer("mortgage", 1)], {}, context("2026-01-02"), at=T0 + DAY)
    log.log_feedback("d1", "savings_account", "click", None, FAR_FUTURE)
    log.log_customer_event("e3", "p3", PRODUCT_ACQUIRED, {"product_id": "mortgage"}, FAR_PAST)
    log.close()
    return log_path


def test_times_outside_pandas_range_are_left_out(odd_log):
    with EventLogReader(odd_log) as log:
        at = log.decisions(("decision_id", "at"))
        created = log.decisions(("decision_id", "created_at"))
        windowed = log.decisions(("decision_id",), since=-np.inf, until=np.inf)
        stored = log.decisions()
        feedback = log.feedback()
        events = log.customer_events()
        assert log.counts()["decisions"] == 6  # counted, not returned
    assert list(at["decision_id"]) == ["d1", "d2", "d3"]  # "future" by created_at, "past" and "text" by at
    assert list(windowed["decision_id"]) == ["d1", "d2", "d3"]
    assert list(created["decision_id"]) == list(stored["decision_id"]) == ["d1", "d2", "d3", "past", "text"]
    assert "click" not in set(feedback["event"]) and "e3" not in set(events["event_id"])
    for times in (at["at"], created["created_at"], feedback["created_at"], events["occurred_at"]):
        assert times.between(EARLIEST, LATEST).all()
        pd.to_datetime(times, unit="s").dt.to_period("M").dt.start_time  # every kept time is a timestamp


def test_monitors_read_a_log_with_odd_times(odd_log, tmp_path, catalogue):
    from nextbest.config import load_monitoring
    from nextbest.monitoring.kpi import business_kpis
    from nextbest.monitoring.sections import acceptance_section
    from nextbest.monitoring.uplift import uplift
    from nextbest.settings import Paths

    assert business_kpis(odd_log, catalogue)["totals"]["decisions"] == 3
    assert uplift(odd_log, catalogue, until=T0 + 60 * DAY)["exposed"] == 2
    paths = Paths.from_workdir(tmp_path / "work").ensure()
    paths.events_db.write_bytes(odd_log.read_bytes())
    out = acceptance_section(paths, [], load_monitoring())
    assert sum(p["shown"] for p in out["periods"]) == 5  # d1 2, d2 1, d3 0, "past" 1, "text" 1


def test_the_writer_uses_the_contracts_schema():
    from nextbest.serving import eventlog as writer

    assert writer.SCHEMA is contract.SCHEMA and writer.REWARD is contract.REWARD
    assert set(contract.REWARD) == set(contract.ACCEPTED) | set(contract.REJECTED)
    assert set(contract.REWARD) <= set(contract.FEEDBACK_EVENTS)


def test_monitoring_reads_the_log_only_through_the_reader():
    """No monitoring module opens an SQLite database itself."""
    offenders = []
    for path in (REPO_ROOT / "monitoring").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO_ROOT)} imports {n}" for n in names if n and "sqlite" in n]
    assert not offenders, "\n".join(offenders)
