"""End to end: `nextbest plan` on a quickstart work dir. The contact lists respect every rule and
limit, the contacts are decisions that feedback and off-policy evaluation read, a re-run is
refused, and later days see the earlier contacts and opt-outs."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from tests.servers import TIGHT_CAPACITY, run_cli, tight_campaign_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(quickstart_workdir, tmp_path_factory) -> tuple[Path, Path]:
    """A project whose savings campaign has capacities the quickstart bank fills, on a copy of its work dir."""
    return tight_campaign_project(quickstart_workdir, tmp_path_factory.mktemp("plan"))


def _first_weekday_after(workdir: Path) -> pd.Timestamp:
    taken = pd.read_parquet(workdir / "features" / "customer_segments.parquet", columns=["event_timestamp"]).max()
    day = pd.Timestamp(taken.iloc[0]).tz_localize(None).normalize() + pd.Timedelta(days=1)
    while day.weekday() >= 5:
        day += pd.Timedelta(days=1)
    return day


def _plan(project, day: pd.Timestamp):
    bank, wd = project
    return run_cli("plan", "--campaign", "savings", "--date", str(day.date()), workdir=wd,
                   env={"NEXTBEST_PROJECT": str(bank)})


def _latest(workdir: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(workdir / "features" / f"{v}.parquet") for v in ("customer_profile", "customer_holdings")]
    frames = [f[f.event_timestamp == f.event_timestamp.max()].set_index("customer_id") for f in frames]
    return frames[0].join(frames[1].drop(columns="event_timestamp"))


@pytest.fixture(scope="module")
def first_day(project):
    day = _first_weekday_after(project[1])
    proc = _plan(project, day)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return day, project[1] / "plans" / f"savings-{day.date()}", proc


def test_the_plan_respects_every_rule_and_limit(first_day, project):
    day, out, _ = first_day
    summary = json.loads((out / "plan.json").read_text())
    contacts = pd.concat([pd.read_parquet(p) for p in out.glob("contacts_*.parquet")])
    assert len(contacts) == summary["contacts"] > 0
    assert contacts.customer_id.is_unique  # one contact per customer
    counts = contacts.channel.value_counts()
    withheld = pd.read_parquet(out / "control_withheld.parquet") if (out / "control_withheld.parquet").exists() \
        else pd.DataFrame(columns=contacts.columns)
    # The limits are on what is sent: the control group's would-be contacts take no capacity.
    for channel, capacity in TIGHT_CAPACITY.items():
        assert counts.get(channel, 0) <= capacity
        assert summary["channels"][channel]["contacts"] == counts.get(channel, 0)
        assert summary["channels"][channel]["withheld"] == (withheld.channel == channel).sum()
    assert len(withheld) > 0
    assert (contacts.product_id == "term_deposit").sum() == summary["quotas"]["term_deposit"]["contacts"] <= 5
    cost = {"email": 0.02, "push": 0.01, "sms": 0.08, "call_center": 4.0}
    assert contacts.channel.map(cost).sum() <= 30 + 1e-9
    full = [c for c in summary["binding"] if c in TIGHT_CAPACITY]
    assert full and all(counts.get(c, 0) == TIGHT_CAPACITY[c] for c in full)  # filled by customers who are sent
    latest = _latest(project[1]).loc[contacts.customer_id]
    assert (latest.marketing_opt_out == 0).all()
    consent = {"email": "consent_email", "push": "consent_push", "sms": "consent_sms", "call_center": "consent_call"}
    assert all(latest.iloc[i][consent[c]] == 1 for i, c in enumerate(contacts.channel))
    assert all(latest.iloc[i][f"held_{p}"] == 0 for i, p in enumerate(contacts.product_id))
    assert not set(contacts.customer_id) & set(withheld.customer_id)  # the control group is not sent anything
    assert (contacts.send_at.dt.date == day.date()).all()
    assert set(contacts.send_at.dt.hour) <= {8, 10, 12, 14, 17, 19}
    v = summary["value"]
    assert summary["binding"]  # the capacities bind on this bank
    assert v["plan"] >= 0.99 * v["lp_bound"] and v["plan"] > v["greedy"] and v["plan"] <= v["lp_bound"] + 1e-6
    for kind in ("csv", "parquet"):
        assert (out / f"contacts_email.{kind}").exists()


def test_contacts_are_decisions_that_feedback_and_ope_read(first_day, project):
    _, out, _ = first_day
    wd = project[1]
    contacts = pd.read_parquet(out / "contacts_email.parquet")
    conn = sqlite3.connect(wd / "events.db")
    rows = conn.execute("SELECT decision_id, k, offers, context FROM decisions "
                        "WHERE json_extract(context, '$.plan') LIKE 'savings@%'").fetchall()
    conn.close()
    summary = json.loads((out / "plan.json").read_text())
    assert len(rows) == summary["contacts"] + summary["control_withheld"]
    logged = {r[0]: (json.loads(r[2]), json.loads(r[3])) for r in rows}
    for rec in contacts.itertuples():
        offers, ctx = logged[rec.decision_id]
        assert offers[0]["product_id"] == rec.product_id and 0 < offers[0]["propensity"] <= 1
        assert rec.product_id in [c["arm"] for c in ctx["candidates"]]
        assert ctx["request"]["channel"] == "email" and ctx["groups"]["savings"] == "treatment"
    from tests.servers import loaded_engine

    engine = loaded_engine(wd)
    try:
        first = contacts.iloc[0]
        answer = engine.feedback(first.decision_id, first.product_id, "accept")
        assert answer["recorded"] and answer["reward"] == 1.0
        assert engine.policy.posterior.n_updates == 1  # the policy learned from the outbound contact
        engine.policy.save()
    finally:
        engine.eventlog.close()
    proc = run_cli("ope", workdir=wd, env={"NEXTBEST_PROJECT": str(project[0])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"value per decision, \d+ logged decisions", " ".join(proc.stderr.split()))


def test_the_report_shows_the_plan_without_customer_ids(first_day):
    _, out, _ = first_day
    page = (out / "report.html").read_text()
    for text in ("LP upper bound", "greedy by score", "Channels", "What the rules and the audience removed",
                 "Control group", "marketing_opt_out"):
        assert text in page
    assert not re.search(r"C\d{7}", page)


def test_a_day_is_planned_once_and_later_days_see_earlier_contacts_and_opt_outs(first_day, project):
    day, out, _ = first_day
    wd = project[1]
    conn = sqlite3.connect(wd / "events.db")
    before = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
    conn.close()
    again = _plan(project, day)
    assert again.returncode == 2 and "already planned" in again.stderr
    # a customer contacted today opts out; the next days must leave them alone
    first = pd.concat([pd.read_parquet(p) for p in out.glob("contacts_*.parquet")])
    leaver = first.customer_id.iloc[0]
    from nextbest.serving.eventlog import EventLog
    from nextbest.serving.privacy import load_key, pseudonymise

    log = EventLog(wd / "events.db")
    log.log_customer_event("e-opt-out", pseudonymise(leaver, load_key(wd)), "opt_out", {},
                           (day + pd.Timedelta(hours=20)).timestamp())
    log.close()
    days = [day]
    for _ in range(3):
        nxt = days[-1] + pd.Timedelta(days=1)
        while nxt.weekday() >= 5:
            nxt += pd.Timedelta(days=1)
        proc = _plan(project, nxt)
        assert proc.returncode == 0, proc.stderr[-3000:]
        days.append(nxt)
    conn = sqlite3.connect(wd / "events.db")
    assert conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] > before
    conn.close()
    plans = pd.concat([pd.read_parquet(p).assign(day=d) for d in days
                       for p in (wd / "plans" / f"savings-{d.date()}").glob("contacts_*.parquet")])
    assert leaver not in set(plans[plans.day > day].customer_id)
    # at most 2 outbound contacts per customer in 7 days (the campaign), 1 sms (rules.yaml)
    assert plans.groupby("customer_id").size().max() <= 2
    assert plans[plans.channel == "sms"].groupby("customer_id").size().max() <= 1
    # the monitor's uplift measures the campaign on its contacts and its control group
    from nextbest.config import load_catalogue
    from nextbest.monitoring.charts import holdout_campaigns
    from nextbest.monitoring.uplift import uplift

    withheld = pd.concat([pd.read_parquet(p) for d in days
                          for p in (wd / "plans" / f"savings-{d.date()}").glob("control_withheld.parquet")])
    campaigns = holdout_campaigns()
    assert "savings" in campaigns
    result = uplift(wd / "events.db", load_catalogue(), {"savings": campaigns["savings"]},
                    until=(days[-1] + pd.Timedelta(days=60)).timestamp())
    measured = result["campaigns"]["savings"]
    assert measured["assigned"] == len(set(plans.customer_id) | set(withheld.customer_id))
    assert measured["unassigned"] == 0 and measured["overall"]["n_control"] == withheld.customer_id.nunique()


def test_planning_before_any_decision_creates_no_event_log(quickstart_workdir, tmp_path, monkeypatch):
    """A bank that plans before serving anything: no contact history, and the plan writes nothing."""
    from nextbest.serving.outbound.campaign import plan_campaign
    from nextbest.settings import Paths

    bank, wd = tight_campaign_project(quickstart_workdir, tmp_path)
    for path in wd.glob("events.db*"):
        path.unlink()
    monkeypatch.setenv("NEXTBEST_PROJECT", str(bank))
    plan = plan_campaign(Paths.from_workdir(wd), "savings", _first_weekday_after(wd).date())
    assert plan.summary["contacts"] > 0 and len(plan.decisions) == plan.summary["contacts"] + len(plan.withheld)
    assert not list(wd.glob("events.db*"))
