"""Request validation through BentoML's ASGI app in-process (no models needed: validation comes first)."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # An empty work directory: the service starts, reports why it is not ready, and still validates input.
    mp = pytest.MonkeyPatch()
    mp.setenv("NEXTBEST_HOME", str(tmp_path_factory.mktemp("empty_workdir")))
    from nextbest.serving.service import NextBest

    app = NextBest.to_asgi()  # build once per process: BentoML registers Prometheus metrics per app
    with TestClient(app) as c:
        yield c
    mp.undo()


@pytest.mark.parametrize("body,field", [
    ({"channel": "web"}, "customer_id"),
    ({"customer_id": "C1", "channel": "fax"}, "channel"),
    ({"customer_id": "C1", "k": 0}, "k"),
    ({"customer_id": "C1", "k": 11}, "k"),
    ({"customer_id": "C1", "k": "three"}, "k"),
    ({"customer_id": "", "k": 3}, "customer_id"),
    ({"customer_id": 123}, "customer_id"),
])
def test_bad_recommend_requests_are_4xx_naming_the_field(client, body, field):
    r = client.post("/recommend", json=body)
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert [field] in [d["loc"] for d in detail]


def test_malformed_json_is_400(client):
    r = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "Invalid JSON" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("body,field", [
    ({"decision_id": "d", "product_id": "p", "event": "like"}, "event"),
    ({"decision_id": "d", "event": "accept"}, "product_id"),
    ({"decision_id": "d", "product_id": "p", "event": "accept", "value": "lots"}, "value"),
])
def test_bad_feedback_requests_name_the_field(client, body, field):
    r = client.post("/feedback", json=body)
    assert r.status_code == 400
    assert [field] in [d["loc"] for d in r.json()["detail"]]


def test_not_ready_without_models_says_why(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    deadline = time.monotonic() + 120
    while True:  # loading runs in the background: first "still loading", then the reason it failed
        r = client.post("/recommend", json={"customer_id": "C1", "channel": "web", "k": 3})
        assert r.status_code == 503
        if "still loading" not in r.json()["error"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "not ready" in r.json()["error"] and "'nbp'" in r.json()["error"]
    r = client.post("/feedback", json={"decision_id": "nope", "product_id": "mortgage", "event": "accept"})
    assert r.status_code == 404 and "unknown decision_id" in r.json()["error"]
