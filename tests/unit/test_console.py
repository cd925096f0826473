"""The console (ASGI test client): an empty work directory, and a small one written here through the
service's event-log writer, with every figure checked against what was written; bad input, the API
key, and no raw customer id in any page but the one typed."""

from __future__ import annotations

import json
import re
import sqlite3
import warnings

import pandas as pd
import pytest

with warnings.catch_warnings():  # Starlette 1.x asks for httpx2 in its test client; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from nextbest.monitoring.console import queries
from nextbest.monitoring.console.app import API_KEY_ENV, console_app
from nextbest.serving.eventlog import EventLog
from nextbest.serving.privacy import KEY_ENV, pseudonymise
from nextbest.settings import Paths

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
HOUR, DAY = 3600.0, 86400.0
KEY = "console-test-key"
RAW = {name: f"CUST{n:05d}" for n, name in enumerate("abcd", start=1)}
P = {name: pseudonymise(raw, KEY.encode()) for name, raw in RAW.items()}
PAGES = ("/", "/campaigns", "/customer", "/decisions", "/models")
MARGIN = {"credit_card": 140.0, "savings_account": 45.0}


def offer(product_id: str, rank: int, explored: bool = False) -> dict:
    return {"product_id": product_id, "rank": rank, "score": 1.0, "probability": 0.1, "propensity": 0.8,
            "explored": explored}


def context(segment: str, exploring: bool = False, degraded: str | None = None, holdout: bool = False,
            suppressed: tuple = (), plan: str | None = None, churn_risk: float = 0.12, groups: dict = ()) -> dict:
    ctx = {"policy": "lin_ts", "exploring": exploring, "degraded": degraded, "segment": segment,
           "lifecycle": "active", "churn_risk": churn_risk, "blocked": None, "holdout": holdout,
           "suppressed": [{"product_id": p, "rule": r} for p, r in suppressed],
           "groups": {"all": "control" if holdout else "treatment", **dict(groups)}}
    if plan:
        ctx["plan"] = plan
    return ctx


@pytest.fixture(autouse=True)
def no_keys_from_outside(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Seven decisions of four customers in the first week of 2026 (two of them an outbound plan's),
    their feedback, one customer's raw rows, a monitor report and a plan folder."""
    root = tmp_path_factory.mktemp("console")
    (root / "secrets").mkdir()
    (root / "secrets" / "pseudonym.key").write_text(KEY)
    log = EventLog(root / "events.db")

    def d(i, who, channel, offers, ctx, at):
        log.log_decision(f"d{i}", P[who], channel, 3, offers, {"nbp": "1"}, ctx, at=at)

    d(1, "a", "mobile_app", [offer("credit_card", 1), offer("savings_account", 2)],
      context("young", suppressed=[("mortgage", "eligibility")]), T0 + HOUR)
    d(2, "a", "email", [offer("term_deposit", 1, explored=True)], context("young", exploring=True), T0 + 2 * DAY)
    d(3, "b", "mobile_app", [offer("savings_account", 1)], context("family", degraded="store down"), T0 + 3 * DAY)
    d(4, "c", "mobile_app", [], context("family", holdout=True), T0 + 4 * DAY)
    d(5, "d", "push", [offer("mortgage", 1)], context("family"), T0 + 4 * DAY + HOUR)
    plan = "savings@2026-01-05"
    # The plan's contact (b) and its control-group customer (c, withheld: no offer).
    d(6, "b", "email", [offer("savings_account", 1)], context("family", plan=plan, groups={"savings": "treatment"}),
      T0 + 4 * DAY + 9 * HOUR)
    d(7, "c", "email", [], context("family", plan=plan, groups={"savings": "control"}), T0 + 4 * DAY + 9 * HOUR)
    fb = [("d1", "credit_card", "impression", None), ("d1", "credit_card", "accept", None),  # margin 140
          ("d1", "savings_account", "reject", None), ("d2", "term_deposit", "convert", 500.0),
          ("d3", "savings_account", "accept", None),  # margin 45
          ("d6", "savings_account", "accept", 80.0)]
    for n, (decision, product, event, value) in enumerate(fb):
        log.log_feedback(decision, product, event, value, T0 + 5 * DAY + n * 60)
    # The bank's core reports b's new savings account: a conversion of the savings campaign.
    log.log_customer_event("e1", P["b"], "product_acquired", {"product_id": "savings_account"}, T0 + 6 * DAY)
    log.close()

    (root / "raw").mkdir()
    pd.DataFrame({"customer_id": [RAW["a"], RAW["b"]], "birth_date": pd.to_datetime(["1980-02-03", "1975-01-01"]),
                  "region": ["north", "south"], "income": [42000.0, 30000.0],
                  "join_date": pd.to_datetime(["2015-05-01", "2019-01-01"]), "status": ["active", "active"],
                  "marketing_opt_out": [False, False], "consent_email": [True, False], "consent_push": [True, True],
                  "consent_sms": [False, False], "consent_call": [False, False]}).to_parquet(
        root / "raw" / "customers.parquet")
    pd.DataFrame({"customer_id": [RAW["a"]] * 3 + [RAW["b"]],
                  "snapshot_date": pd.to_datetime(["2025-11-30", "2025-12-31", "2025-12-31", "2025-12-31"]),
                  "product_id": ["current_account", "current_account", "credit_card", "current_account"],
                  "balance": [1200.0, 1500.0, -300.0, 10.0]}).to_parquet(root / "raw" / "holdings.parquet")

    (root / "features").mkdir()
    pd.DataFrame({"customer_id": [RAW["a"]] * 2,
                  "event_timestamp": pd.to_datetime(["2025-11-30", "2025-12-31"], utc=True),
                  "lifecycle": ["new", "active"], "value_tier": ["rest", "rest"]}).to_parquet(
        root / "features" / "customer_segments.parquet")

    report = root / "reports" / "2026-01-06"
    report.mkdir(parents=True)
    (report / "summary.json").write_text(json.dumps({
        "created_at": "2026-01-06T00:00:00Z", "passed": False, "drifted_columns": ["income"], "share_drifted": 0.5,
        "columns": {"income": {"score": 0.3, "threshold": 0.1, "drifted": True, "test": "Wasserstein",
                               "current_rows": 100, "reference_rows": 400},
                    "age": {"score": 0.01, "threshold": 0.1, "drifted": False, "test": "Wasserstein",
                            "current_rows": 100, "reference_rows": 400}},
        "gate": {"passed": False, "checks": [
            {"check": "feature_drift: share of drifted columns", "value": 0.5, "limit": 0.02, "passed": False},
            {"check": "churn", "value": 0.01, "limit": 0.05, "passed": True}]},
        "sections": {}}))
    (report / "index.html").write_text("<html><body>report</body></html>")

    folder = root / "plans" / "savings-2026-01-05"
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps({
        "plan": plan, "audience": 40, "customers": 100, "contacts": 1, "explored": 0, "control_withheld": 1,
        "value": {"plan": 12.5, "greedy": 11.0, "lp_bound": 13.0},
        "channels": {"email": {"capacity": 300, "contacts": 1, "withheld": 1, "eligible_customers": 30,
                               "cost_per_contact": 0.02}}}))
    return root


@pytest.fixture(scope="module")
def client(workdir):
    return TestClient(console_app(Paths(workdir), api_key=""))


def text(html: str) -> str:
    """The words of a page: no style, charts or tags; spaces collapsed."""
    html = re.sub(r"<(style|svg)\b.*?</\1>", " ", html, flags=re.S)
    html = re.sub(r"</?(code|b|a)\b[^>]*>", "", html)  # inline: no space
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


# ------------------------------------------------------------------------------------------ empty work dir
def test_every_page_of_an_empty_work_directory_says_what_is_missing(tmp_path):
    c = TestClient(console_app(Paths(tmp_path / "nothing-here"), api_key=""))
    pages = {p: c.get(p) for p in PAGES}
    assert all(r.status_code == 200 for r in pages.values())
    assert "No decisions yet" in text(pages["/"].text)
    assert "No monitoring report yet" in text(pages["/"].text)
    assert "No decisions yet" in text(pages["/decisions"].text)
    assert "No model registry yet" in text(pages["/models"].text)
    assert "No drift measured yet" in text(pages["/models"].text)
    assert "No plan yet" in text(pages["/campaigns"].text)
    who = c.get("/customer", params={"id": "CUST00001"})
    assert who.status_code == 200 and "No customer with id CUST00001" in text(who.text)
    assert not (tmp_path / "nothing-here").exists()  # the console creates nothing


def test_an_empty_event_log_reads_as_no_decisions(tmp_path):
    EventLog(tmp_path / "events.db").close()
    c = TestClient(console_app(Paths(tmp_path), api_key=""))
    assert "No decisions yet: the event log (events.db) is empty." in text(c.get("/").text)
    assert "No decisions yet: the log is empty." in text(c.get("/decisions").text)


# ------------------------------------------------------------------------------------------ figures
def test_the_overview_gives_the_figures_written(client):
    page = text(client.get("/").text)
    value = MARGIN["credit_card"] + 500.0 + MARGIN["savings_account"] + 80.0
    assert "made 7 decisions and showed 6 offers; customers took 4 of them" in page
    assert "acceptance with its 95% interval: 66.67% [" in page  # 4 of 6
    assert "Only 4 offers taken: the acceptance rate and value rest on too few events to read" in page
    assert f"worth {value:,.2f} EUR" in page
    assert f"({value / 7:,.2f} EUR per decision)" in page
    assert "14.3% of the decisions explored and 14.3% were degraded" in page
    assert "Weekly trends" in page and "<svg" in client.get("/").text
    assert "The gate failed on 2026-01-06: 1 of 2 checks did not pass" in page
    assert "Uplift measured now over the period" in page


def test_a_period_without_decisions_and_a_chosen_period(client):
    page = text(client.get("/", params={"from": "2025-01-01", "to": "2025-01-31"}).text)
    assert "No decisions in this period" in page
    page = text(client.get("/", params={"from": "2026-01-01", "to": "2026-01-02"}).text)
    assert "made 1 decision and showed 2 offers; customers took 1 of them" in page
    # Four whole weeks back from the end and a partial first week: the same figures as the default period.
    page = text(client.get("/", params={"from": "2025-12-20", "to": "2026-01-20"}).text)
    assert "made 7 decisions and showed 6 offers; customers took 4 of them" in page
    assert "Weeks of 7 days back from the period's end, from 2025-12-24" in page  # its whole weeks


def test_the_query_layer_totals_and_weeks(workdir):
    conn = queries.connect(workdir / "events.db")
    t = queries.totals(conn, T0, T0 + 7 * DAY, {**MARGIN})
    assert (t.decisions, t.offers, t.accepted, t.exploring, t.degraded) == (7, 6, 4, 1, 1)
    assert t.value == pytest.approx(140 + 500 + 45 + 80)
    weeks = queries.weekly(conn, T0, T0 + 14 * DAY, MARGIN)
    assert [w["decisions"] for w in weeks] == [7, 0] and [w["accepted"] for w in weeks] == [4, 0]
    conn.close()


def test_decisions_are_paged_by_rowid(workdir):
    conn = queries.connect(workdir / "events.db")
    first, after = queries.decisions_page(conn, queries.Filters(), size=3)
    assert [r.decision_id for r in first] == ["d7", "d6", "d5"] and after == first[-1].rowid
    second, after = queries.decisions_page(conn, queries.Filters(), before=after, size=3)
    assert [r.decision_id for r in second] == ["d4", "d3", "d2"]
    last, after = queries.decisions_page(conn, queries.Filters(), before=after, size=3)
    assert [r.decision_id for r in last] == ["d1"] and after is None
    assert [(p, e) for p, e, _, _ in last[0].feedback] == [("credit_card", "impression"), ("credit_card", "accept"),
                                                           ("savings_account", "reject")]
    conn.close()


def test_decision_search(client):
    def ids(**params):
        return re.findall(r"<code>(d\d)</code>", client.get("/decisions", params=params).text)

    assert ids() == ["d7", "d6", "d5", "d4", "d3", "d2", "d1"]
    assert ids(channel="mobile_app") == ["d4", "d3", "d1"]
    assert ids(customer=RAW["a"]) == ["d2", "d1"]
    assert ids(product="savings_account") == ["d6", "d3", "d1"]
    assert ids(flag="degraded") == ["d3"]
    assert ids(flag="exploring") == ["d2"]
    assert ids(flag="suppressed") == ["d1"]
    assert ids(flag="holdout") == ["d4"] and ids(flag="empty") == ["d7", "d4"]
    assert ids(**{"from": "2026-01-04", "to": "2026-01-04"}) == ["d3"]  # the end day included
    assert ids(customer="nobody") == []
    page = text(client.get("/decisions", params={"flag": "degraded"}).text)
    assert "degraded: store down" in page and "propensity 80.0%" in page
    assert "suppressed: mortgage (eligibility)" in text(client.get("/decisions", params={"flag": "suppressed"}).text)


def test_campaigns_show_plans_against_capacity_and_responses(client):
    page = text(client.get("/campaigns").text)
    assert "Campaign savings" in page and "Campaign cards" in page
    # The plan: 1 contact of 300 email capacity, 1 withheld; its contact took the offer (80 EUR).
    assert "2026-01-05 email 1 300 0% 1 0.02 EUR" in page
    assert "2026-01-05 40 1 1 12.50 EUR 1 100.00% [" in page
    assert "(only 1 of 1: too few to read) 80.00 EUR" in page
    # Measured on the spot (no uplift.json in the report): 1 of 1 contacted converted, 0 of 1 in control.
    assert ("Conversion 100.00% among 1 contacted against 0.00% among 1 in the control group: uplift 100.00 pp ["
            in page)
    assert "Rests on 1 conversions only: too few events to read" in page and "measured now over the whole log" in page
    assert "No customer in this campaign's control or treatment group yet" in page  # cards


def test_customer_portrait(client):
    page = text(client.get("/customer", params={"id": RAW["a"]}).text)
    assert f"Customer {RAW['a']}" in page
    assert "region north" in page and "consents email, push" in page
    assert "Holds 2 products as of 2025-12, balances 1,200 EUR in all" in page
    assert "current_account 1,200 1,500" in page
    assert "churn risk (3 months) 12.0%" in page
    html = client.get("/customer", params={"id": RAW["a"]}).text
    assert "Lifecycle and segments by month" in html and "<th>2025-11</th><th>2025-12</th>" in html
    assert "<td>lifecycle</td><td>new</td><td><b>active</b></td>" in html  # the change, in bold
    assert "<td>value tier</td><td>rest</td><td>rest</td>" in html
    assert "2 decisions logged" in page and "credit_card: accept" in page
    assert "term_deposit: convert (500.00 EUR)" in page
    unknown = client.get("/customer", params={"id": "CUST99999"})
    assert unknown.status_code == 200 and "No customer with id CUST99999" in text(unknown.text)
    # A customer with decisions but no raw rows is still found through the log.
    assert "1 decision logged" in text(client.get("/customer", params={"id": RAW["d"]}).text)


def test_offers_now_say_why_they_cannot_be_shown(client, workdir):
    """No model registry in this work directory: the portrait says the engine could not start, and why,
    once its background load has given up (the offers themselves: tests/e2e/test_offers_now.py)."""
    import time

    deadline = time.monotonic() + 60
    while True:
        page = text(client.get("/customer", params={"id": RAW["a"], "channel": "email"}).text)
        if "is loading" not in page or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "Offers now" in page and "The decision engine could not start" in page
    assert "no model registry yet" in page and not (workdir / "mlflow").exists()
    bad = client.get("/customer", params={"id": RAW["a"], "channel": "fax"})
    assert bad.status_code == 400 and "fax" in bad.text and "is not one of mobile_app" in text(bad.text)


def test_rules_read_as_words():
    from nextbest.monitoring.console.offers_now import rule_words

    assert rule_words("already_held") == "already held"
    assert rule_words("no_consent_sms") == "no consent to be contacted by sms"
    assert rule_words("frequency_cap_call_center") == "this week's contacts on call center are used up"
    assert rule_words("holdout:savings").startswith("in the control group of savings")
    assert rule_words("some_new_rule") == "some new rule"


def test_models_and_drift_from_the_report(client):
    page = text(client.get("/models").text)
    assert "No model registry yet" in page
    assert "1 of 2 feature columns drifted in the report of 2026-01-06 (share 50.0%)" in page
    assert page.index("income yes") < page.index("age no")
    assert client.get("/reports/2026-01-06/index.html").text == "<html><body>report</body></html>"


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("url, status, says", [
    ("/?from=2026-02-30", 400, "from: '2026-02-30' is not a date (YYYY-MM-DD)"),
    ("/?from=2026-02-01&to=2026-01-01", 400, "the start date is after the end date"),
    ("/decisions?to=yesterday", 400, "to: 'yesterday' is not a date"),
    ("/decisions?before=abc", 400, "is not a page position"),
    ("/decisions?channel=pigeon", 200, "No decision matches this search"),
    ("/customer?id=" + "x" * 100, 200, "at most 64 characters"),
    ("/customer?id=%00", 200, "printable characters only"),
    ("/reports/2026-01-06/..%2Fsummary.json", 404, ""),
    ("/reports/2026-01-06/missing.html", 404, "No report"),
    ("/nowhere", 404, "There is no page /nowhere"),
])
def test_bad_input_gets_a_page_that_says_so(client, url, status, says):
    r = client.get(url)
    assert r.status_code == status and r.headers["content-type"].startswith("text/html")
    assert says in r.text.replace("&#x27;", "'")
    assert "Traceback" not in r.text


# ------------------------------------------------------------------------------------------ key and privacy
def test_the_api_key_guards_every_page(workdir, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "s3cret")
    c = TestClient(console_app(Paths(workdir)))
    for page in PAGES:
        r = c.get(page)
        assert r.status_code == 401 and "Sign in" in r.text and "made 7 decisions" not in r.text
    assert c.get("/", headers={"x-api-key": "wrong"}).status_code == 401
    assert "made 7 decisions" in text(c.get("/", headers={"x-api-key": "s3cret"}).text)
    assert c.post("/sign-in", data={"key": "nope", "next": "/models"}).status_code == 401
    r = c.post("/sign-in", data={"key": "s3cret", "next": "/models"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/models"
    assert "s3cret" not in r.headers["set-cookie"]
    assert c.get("/models").status_code == 200  # the cookie now
    assert c.post("/sign-in", data={"key": "s3cret", "next": "https://elsewhere"},
                  follow_redirects=False).headers["location"] == "/"


def test_no_raw_customer_id_but_the_typed_one(client):
    urls = [*PAGES, "/decisions?flag=suppressed", "/?from=2026-01-01&to=2026-01-10"]
    for url in urls:
        html = client.get(url).text
        assert not any(raw in html for raw in RAW.values()), url
    for who, raw in RAW.items():
        for url in (f"/customer?id={raw}", f"/decisions?customer={raw}"):
            html = client.get(url).text
            assert not [r for r in RAW.values() if r != raw and r in html], url


def test_the_console_never_writes(workdir):
    # SQLite's shared-memory index (-shm) is touched by any reader; every other file must stay as it was.
    files = [p for p in workdir.rglob("*") if p.is_file() and not p.name.endswith("-shm")]
    before = {p: p.stat().st_mtime_ns for p in files}
    c = TestClient(console_app(Paths(workdir), api_key=""))
    for url in [*PAGES, f"/customer?id={RAW['a']}", "/decisions?flag=degraded"]:
        c.get(url)
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file() and not p.name.endswith("-shm")}
    assert before == after
    with sqlite3.connect(workdir / "events.db") as conn:  # the log has the index the time windows read
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'decisions_by_time'").fetchone()


def _registry(path):
    """A real MLflow registry: nbp v1 champion (test MAP@7 0.0125), v2 challenger (0.0131)."""
    from mlflow.tracking import MlflowClient

    path.parent.mkdir(parents=True)
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    history = [{"action": "promote", "version": "1", "previous": None, "reason": "first model",
                "at": "2026-01-01T00:00:00+00:00", "by": "ops"}]
    client.create_registered_model("nbp", tags={"champion_history": json.dumps(history)})
    for version, metric in ((1, 0.0125), (2, 0.0131)):
        run = client.create_run("0")
        client.log_metric(run.info.run_id, "test_map_at_7", metric)
        client.log_metric(run.info.run_id, "train_loss", 1.5)
        client.create_model_version("nbp", source=f"file://{path.parent}/v{version}", run_id=run.info.run_id,
                                    tags={"promoted_reason": "first model"} if version == 1 else {})
    client.set_registered_model_alias("nbp", "champion", "1")
    client.set_registered_model_alias("nbp", "challenger", "2")


def test_models_page_reads_the_registry(tmp_path, monkeypatch):
    monkeypatch.delenv("NEXTBEST_MLFLOW_URI", raising=False)
    _registry(tmp_path / "mlflow" / "mlflow.db")
    page = text(TestClient(console_app(Paths(tmp_path), api_key="")).get("/models").text)
    assert re.search(r"2 challenger \S+ \S+ UTC – 1 champion \S+ \S+ UTC first model", page)
    assert "test metric version 2 (challenger) version 1 (champion) map_at_7 0.0131 0.0125" in page
    assert "train_loss" not in page
    assert "Promotion history (1)" in page and "promote 1 – ops first model" in page
    assert "No version of churn registered yet" in page


def test_a_registry_that_cannot_be_read_is_said_so(tmp_path, monkeypatch):
    monkeypatch.delenv("NEXTBEST_MLFLOW_URI", raising=False)
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "mlflow.db").write_text("not a database")
    r = TestClient(console_app(Paths(tmp_path), api_key="")).get("/models")
    assert r.status_code == 200 and "The model registry could not be read" in text(r.text)
