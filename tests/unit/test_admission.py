"""Admission control: beyond the limit of requests in flight, a decision request is answered 429 (JSON,
Retry-After) without reaching the application, after a short pause; other paths always pass."""

from __future__ import annotations

import asyncio
import json
import time

from nextbest.serving.admission import Admission


def _scope(path="/recommend", method="POST"):
    return {"type": "http", "path": path, "method": method, "headers": []}


def test_requests_beyond_the_limit_get_a_paced_429_and_never_reach_the_app():
    reached = []
    release = asyncio.Event()

    async def app(scope, receive, send):
        reached.append(scope["path"])
        if scope["path"] == "/recommend":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def run():
        admission = Admission(app, ("/recommend", "/feedback"), limit=1, pause_ms=20)
        sent = {}

        async def call(name, scope):
            messages = []

            async def send(message):
                messages.append(message)

            started = time.perf_counter()
            await admission(scope, None, send)
            sent[name] = (messages, time.perf_counter() - started)

        first = asyncio.create_task(call("first", _scope()))
        await asyncio.sleep(0.01)
        await call("second", _scope("/feedback"))
        await call("probe", _scope("/readyz", "GET"))  # not a decision path: always passes
        release.set()
        await first
        await call("third", _scope())
        return admission, sent

    admission, sent = asyncio.run(run())
    messages, waited = sent["second"]
    start = messages[0]
    assert start["status"] == 429 and (b"retry-after", b"1") in start["headers"]
    assert "in flight" in json.loads(messages[1]["body"])["error"]
    assert waited >= 0.019  # paced
    assert reached == ["/recommend", "/readyz", "/recommend"]  # the shed request never reached the app
    assert sent["first"][0][0]["status"] == 200 and sent["third"][0][0]["status"] == 200
    assert admission.in_flight == 0


def test_the_service_application_has_admission_outermost(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path))
    from nextbest.serving.service import NextBest

    app = NextBest.to_asgi()
    assert isinstance(app, Admission) and app.paths == {"/recommend", "/feedback", "/events"}


def test_a_client_error_is_logged_at_info_naming_fields_not_values(tmp_path, monkeypatch):
    import logging
    import sys

    from pydantic import BaseModel, ValidationError

    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path))
    from nextbest.serving.service import NoInputInLogs

    class Body(BaseModel):
        customer_id: str
        k: int

    try:
        Body.model_validate({"customer_id": "C0000042-secret", "k": "many"})
    except ValidationError:
        record = logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "%s %s failed", ("/recommend", "POST"),
                                   sys.exc_info())
    assert NoInputInLogs().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    line = record.getMessage()
    assert "['k']" in line and "C0000042" not in line and "many" not in line
