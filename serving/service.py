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
import logging
import os
import threading
from datetime import datetime
from typing import Annotated, Literal

import bentoml
from pydantic import BaseModel, ConfigDict, Field

from nextbest.config import Channel
from nextbest.constants import DEFAULT_K, MAX_K
from nextbest.serving.engine import DecisionEngine, RequestError
from nextbest.settings import Paths

log = logging.getLogger("nextbest.serving")

FeedbackEvent = Literal["impression", "click", "accept", "reject", "convert", "dismiss"]
CustomerEvent = Literal["salary_received", "large_deposit", "loan_disbursed", "product_page_view", "product_acquired",
                        "opt_out", "opt_in", "consent_granted", "consent_withdrawn"]
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]

API_KEY_ENV = "NEXTBEST_API_KEY"
API_KEY_HEADER = "x-api-key"
MAX_BODY_BYTES = 16 * 1024
PROTECTED = ("/recommend", "/feedback", "/events")


class RequestContext(BaseModel):
    """Optional request context: the page the customer is on, what triggered the call, when."""

    model_config = ConfigDict(extra="forbid")

    page: Annotated[str, Field(max_length=64)] | None = None
    event: Annotated[str, Field(max_length=64)] | None = None
    timestamp: datetime | None = None


class _NoInputInLogs(logging.Filter):
    """A request that fails validation is answered 400 naming the field; BentoML would also log its
    traceback, which quotes the request's values (customer ids among them). Keep one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[0] if record.exc_info else None
        if exc is not None and issubclass(exc, ValidationError):
            fields = sorted({".".join(map(str, e["loc"])) for e in record.exc_info[1].errors()})
            record.msg, record.args = "invalid request on %s [%s]: fields %s (answered 400)", (*record.args[:2], fields)
            record.exc_info, record.exc_text = None, None
        return True


class Guard:
    """ASGI middleware: API key (when `NEXTBEST_API_KEY` is set), JSON only and a size limit on the APIs.

    All answer before BentoML parses the body: 401 without the right `x-api-key` header, 415 for a
    body that is not JSON (BentoML would try form parsing and fail with a 500), 413 for a body over
    MAX_BODY_BYTES (declared or streamed).
    """

    def __init__(self, app, max_body: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body = max_body
        key = os.environ.get(API_KEY_ENV, "")
        self.key = key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") not in PROTECTED:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.key is not None and not hmac.compare_digest(headers.get(API_KEY_HEADER.encode(), b""), self.key):
            return await _reject(send, 401, f"missing or wrong {API_KEY_HEADER} header")
        content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if content_type != b"application/json":
            return await _reject(send, 415, "Content-Type must be application/json, "
                                 f"got {content_type.decode(errors='replace')!r}")
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await _reject(send, 413, f"request body over {self.max_body} bytes")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise _TooLarge
            return message

        try:
            return await self.app(scope, limited, send)
        except _TooLarge:
            return await _reject(send, 413, f"request body over {self.max_body} bytes")


class _TooLarge(Exception):
    pass


async def _reject(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
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


# Beyond 32 requests in flight, answer 429 at once rather than queue work the caller gave up on.
@bentoml.service(name="nextbest", workers=1, traffic={"timeout": 30, "max_concurrency": 32})
class NextBest:
    def __init__(self) -> None:
        logging.getLogger("bentoml._internal.server.http_app").addFilter(_NoInputInLogs())
        # Each worker process draws its own random stream; all learn the same rewards in log order.
        worker = bentoml.server_context.worker_index or 1
        self.engine = DecisionEngine(Paths.from_workdir(), stream=worker - 1)
        threading.Thread(target=self.engine.load, name="nextbest-loader", daemon=True).start()

    def __is_ready__(self) -> bool:
        return self.engine.ready

    @bentoml.api(route="/recommend")
    def recommend(
        self,
        ctx: bentoml.Context,
        customer_id: Identifier,
        channel: Channel = "mobile_app",
        k: Annotated[int, Field(ge=1, le=MAX_K)] = DEFAULT_K,
        context: RequestContext | None = None,
        explain: bool = False,
    ) -> dict:
        """Ranked offers for one customer on one channel, within the rules, with propensities."""
        return _answer(ctx, self.engine.recommend, customer_id, channel, k, _context(context), explain)

    @bentoml.api(route="/feedback")
    def feedback(
        self,
        ctx: bentoml.Context,
        decision_id: Identifier,
        product_id: Identifier,
        event: FeedbackEvent,
        value: Annotated[float, Field(ge=-1e9, le=1e9)] | None = None,
        timestamp: datetime | None = None,
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
        event_id: Identifier | None = None,
        product_id: Identifier | None = None,
        amount: Annotated[float, Field(ge=0, le=1e12)] | None = None,
        consent: Literal["email", "push", "sms", "call"] | None = None,
        value: Annotated[float, Field(ge=-1e9, le=1e9)] | None = None,
        timestamp: datetime | None = None,
    ) -> dict:
        """A real-time customer event: updates the short-term context the rules and policy read, and
        may return a triggered next-best action (e.g. a deposit offer when a large salary lands).
        `product_acquired` (with product_id and optional value) is how the core system reports a
        product opened, offered or not: it counts as held at once and measures control-group uplift."""
        return _answer(ctx, self.engine.event, customer_id, event, event_id, product_id, amount, consent,
                       timestamp, value)


NextBest.add_asgi_middleware(Guard)
