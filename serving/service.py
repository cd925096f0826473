"""The BentoML decision service: `POST /recommend`, `POST /feedback`, `POST /events`, health and readiness.

Run it with `nextbest serve --workdir DIR` (which calls `bentoml serve nextbest.serving.service:NextBest`).
The decision core lives in `nextbest.serving.engine.DecisionEngine` (one per worker); this module is its HTTP face.
The work directory comes from `$NEXTBEST_HOME`. Models (MLflow alias `champion`), the Feast store,
the fallback table and the bandit's state load in a background thread: `/healthz` answers at once,
`/readyz` only once the models are loaded, and `/recommend` answers 503 with the reason until then.

A decision: online features (Feast) -> rules (configs/rules.yaml) -> candidates valued by margin
and levers -> the bandit ranks them (configs/bandit.yaml) -> the decision with every candidate,
propensity and suppression is committed to the event log -> the answer. If the online store fails
or is slower than its budget, the answer comes from segment popularity with `degraded: true`;
the rules, opt-out and consent included, hold on every path.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

import bentoml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nextbest.config import Channel
from nextbest.constants import DEFAULT_K, MAX_K, WAIT_FOR_MODELS_ENV
from nextbest.eventlog import CUSTOMER_EVENTS, FEEDBACK_EVENTS
from nextbest.serving.engine import DecisionEngine, RequestError
from nextbest.serving.admission import admit_outermost, reject
from nextbest.serving.lifecycle import durable_log_problem, watch_parent
from nextbest.serving.openapi import PROTECTED, complete
from nextbest.settings import Paths

log = logging.getLogger("nextbest.serving")

FeedbackEvent = Literal[FEEDBACK_EVENTS]
CustomerEvent = Literal[CUSTOMER_EVENTS]
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]


def _offer_types():
    """The product ids of the catalogue in force, and every offer id (products and actions), as
    types: the schema then lists them. A config that does not load leaves plain identifiers (the
    service then reports the config's error as not ready)."""
    try:
        from nextbest.config import load_bandit, load_catalogue

        catalogue = load_catalogue()
        offers = [*catalogue.ids, *load_bandit(catalogue=catalogue).actions]
    except Exception:  # noqa: BLE001 - reported by the engine, which loads the same configs
        return Identifier, Identifier
    return Literal[tuple(catalogue.ids)], Literal[tuple(offers)]


ProductId, OfferId = _offer_types()

# Event times the service accepts: from 2000-01-01 to one day ahead of the server's clock (UTC; a time
# without a zone is UTC). Anything else is a client's bug, and counting it would skew the caps.
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_TIMESTAMP_AHEAD = timedelta(days=1)


def _in_window(ts: datetime) -> datetime:
    ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
    if ts < EARLIEST_TIMESTAMP:
        raise ValueError(f"timestamp {ts.isoformat()} is before {EARLIEST_TIMESTAMP.date().isoformat()}")
    latest = datetime.now(timezone.utc) + MAX_TIMESTAMP_AHEAD
    if ts > latest:
        raise ValueError(f"timestamp {ts.isoformat()} is more than a day ahead of the server's clock")
    return ts


Timestamp = Annotated[datetime, AfterValidator(_in_window)]
Amount = Annotated[float, Field(ge=-1e9, le=1e9, strict=True, allow_inf_nan=False)]

API_KEY_ENV = "NEXTBEST_API_KEY"
API_KEY_HEADER = "x-api-key"
MAX_BODY_BYTES = 16 * 1024


class RequestContext(BaseModel):
    """Optional request context: the page the customer is on, what triggered the call, when."""

    model_config = ConfigDict(extra="forbid")

    page: Annotated[str, Field(max_length=64)] = None
    event: Annotated[str, Field(max_length=64)] = None
    timestamp: Timestamp = None


class NoInputInLogs(logging.Filter):
    """A request that fails validation is answered 400 naming the field; BentoML would also log its
    traceback, which quotes the request's values (customer ids among them). Keep one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[0] if record.exc_info else None
        if exc is not None and issubclass(exc, ValidationError):
            fields = sorted({".".join(map(str, e["loc"])) for e in record.exc_info[1].errors()})
            record.msg, record.args = "invalid request on %s [%s]: fields %s (answered 400)", (*record.args[:2], fields)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"  # the client's error, not the service's
        return True


class Guard:
    """ASGI middleware in front of the APIs: the method, the API key (when `NEXTBEST_API_KEY` is
    set), JSON only and a size limit, each answered as JSON before BentoML parses the body (429s
    come earlier still, from `nextbest.serving.admission`).

    405 for a method other than POST, 401 without the right `x-api-key` header, 415 for a body that
    is not declared `application/json`, 413 for a body over MAX_BODY_BYTES, whether declared or
    streamed (the body is read here, at most MAX_BODY_BYTES of it, and handed on whole). The
    OpenAPI schema at `/docs.json` is completed with these answers and the API-key scheme.
    """

    def __init__(self, app, max_body: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body = max_body
        key = os.environ.get(API_KEY_ENV, "")
        self.key = key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope.get("path") == "/docs.json":
            return await self._schema(scope, receive, send)
        if scope.get("path") in ("/docs", "/docs/"):  # the interactive page is at /
            return await reject(send, 308, "the API's interactive page is at /, its schema at /docs.json",
                                 [(b"location", b"/")])
        if scope.get("path") not in PROTECTED:
            return await self.app(scope, receive, send)
        if scope.get("method") != "POST":
            return await reject(send, 405, f"{scope.get('method')} not allowed on {scope['path']}: use POST",
                                 [(b"allow", b"POST")])

        headers = dict(scope.get("headers") or [])
        if self.key is not None and not hmac.compare_digest(headers.get(API_KEY_HEADER.encode(), b""), self.key):
            return await reject(send, 401, f"missing or wrong {API_KEY_HEADER} header")
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            got = content_type.decode(errors="replace") or "none"
            return await reject(send, 415, f"Content-Type must be application/json, got {got!r}")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await reject(send, 413, f"request body over {self.max_body} bytes")
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                return await reject(send, 413, f"request body over {self.max_body} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def whole():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, whole, send)

    async def _schema(self, scope, receive, send):
        """BentoML's OpenAPI schema, completed with the answers this service gives."""
        start: dict = {}
        parts: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                parts.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(parts)
        if start.get("status") == 200:
            body = json.dumps(complete(json.loads(body), api_key=self.key is not None)).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({"type": "http.response.start", "status": start.get("status", 500),
                    "headers": headers + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _answer(ctx: bentoml.Context, fn, *args) -> dict:
    """Runs a handler; a RequestError becomes `{"error": message}` with its status code."""
    try:
        return fn(*args)
    except RequestError as exc:
        ctx.response.status_code = exc.status
        return {"error": str(exc)}


def _context(context: RequestContext | None) -> dict | None:
    return None if context is None else context.model_dump()


class Unavailable:
    """Stands in for the decision engine when it cannot run at all (a work directory that takes no
    durable writes, a config that does not validate): not ready, with the reason, on every API."""

    ready = False

    def __init__(self, reason: str):
        self.error = reason

    def _refuse(self, *args):
        raise RequestError(503, f"not ready: {self.error}")

    recommend = feedback = event = _refuse


# Beyond `NEXTBEST_MAX_IN_FLIGHT` decisions in flight, the Guard answers 429 at once.
@bentoml.service(name="nextbest", workers=1, traffic={"timeout": 30})
class NextBest:
    def __init__(self) -> None:
        logging.getLogger("bentoml._internal.server.http_app").addFilter(NoInputInLogs())
        watch_parent()  # a worker never outlives its server
        paths = Paths.from_workdir()
        # Each worker process draws its own random stream; all learn the same rewards in log order.
        worker = bentoml.server_context.worker_index or 1
        problem = durable_log_problem(paths.root, paths.events_db)
        if problem is None:
            try:
                self.engine = DecisionEngine(paths, stream=worker - 1)
            except Exception as exc:  # noqa: BLE001 - a bad config must not restart the worker for ever
                problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            log.error("not serving: %s", problem)
            self.engine = Unavailable(problem)
            return
        threading.Thread(target=self._load, name="nextbest-loader", daemon=True).start()

    def _load(self) -> None:
        """Loads the engine; with `--wait-for-models`, retries every few seconds until the champions exist."""
        waiting = os.environ.get(WAIT_FOR_MODELS_ENV) == "1"
        while True:
            self.engine.load()
            if self.engine.ready or not waiting:
                return
            time.sleep(5)

    def __is_ready__(self) -> bool:
        return self.engine.ready

    @bentoml.api(route="/recommend")
    def recommend(
        self,
        ctx: bentoml.Context,
        customer_id: Identifier,
        channel: Channel = "mobile_app",
        k: Annotated[int, Field(ge=1, le=MAX_K, strict=True)] = DEFAULT_K,
        context: RequestContext = None,
        explain: Annotated[bool, Field(strict=True)] = False,
    ) -> dict:
        """Ranked offers for one customer on one channel, within the rules, with propensities."""
        return _answer(ctx, self.engine.recommend, customer_id, channel, k, _context(context), explain)

    @bentoml.api(route="/feedback")
    def feedback(
        self,
        ctx: bentoml.Context,
        decision_id: Identifier,
        product_id: OfferId,
        event: FeedbackEvent,
        value: Amount = None,
        timestamp: Timestamp = None,
    ) -> dict:
        """Records the outcome of an offer; the same event for the same offer is counted once.

        The first accept/convert (reward 1) or reject/dismiss (reward 0) of an offer updates the
        policy at once; it may arrive days after the decision.
        """
        return _answer(ctx, self.engine.feedback, decision_id, product_id, event, value, timestamp)

    @bentoml.api(route="/events")
    def events(
        self,
        ctx: bentoml.Context,
        customer_id: Identifier,
        event: CustomerEvent,
        event_id: Identifier = None,
        product_id: ProductId = None,
        amount: Annotated[float, Field(ge=0, le=1e12, strict=True, allow_inf_nan=False)] = None,
        consent: Literal["email", "push", "sms", "call"] = None,
        value: Amount = None,
        timestamp: Timestamp = None,
    ) -> dict:
        """A real-time customer event: updates the short-term context the rules and policy read, and
        may return a triggered next-best action (e.g. a deposit offer when a large salary lands).
        `product_acquired` (with product_id and optional value) is how the core system reports a
        product opened, offered or not: it counts as held at once and measures control-group uplift."""
        return _answer(ctx, self.engine.event, customer_id, event, event_id, product_id, amount, consent,
                       timestamp, value)


NextBest.add_asgi_middleware(Guard)
admit_outermost(NextBest)
# BentoML would work a response's media type out of the output's JSON schema on every answer (a tenth
# of the event loop's time per decision); every answer here is JSON.
for _api in NextBest.apis.values():
    _api.output_spec.media_type = "application/json"
