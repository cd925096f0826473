"""Admission control in front of everything else the service runs for a request.

Beyond `NEXTBEST_MAX_IN_FLIGHT` decision requests in flight in a worker, a request is answered 429
(`Retry-After: 1`) without reading its body. This layer wraps BentoML's whole application, ahead
of its metrics, tracing and access-log layers: a shed request then costs tens of microseconds
rather than most of a millisecond, so under overload the requests admitted keep the worker's pace.
The 429 is sent after `NEXTBEST_SHED_PAUSE_MS` (default 10 ms): a client that retries at once,
ignoring Retry-After, is paced by it instead of spinning the worker's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

log = logging.getLogger("nextbest.serving")

MAX_IN_FLIGHT_ENV = "NEXTBEST_MAX_IN_FLIGHT"
DEFAULT_MAX_IN_FLIGHT = 32
SHED_PAUSE_ENV = "NEXTBEST_SHED_PAUSE_MS"
DEFAULT_SHED_PAUSE_MS = 10.0
SHED_LOG_SECONDS = 10.0


async def reject(send, status: int, message: str, extra: list | None = None) -> None:
    """A complete JSON error answer `{"error": message}`."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


class Admission:
    """ASGI layer: admits at most `limit` POSTs to `paths` at a time and answers the rest 429."""

    def __init__(self, app, paths: tuple[str, ...], limit: int | None = None, pause_ms: float | None = None):
        self.app = app
        self.paths = frozenset(paths)
        self.limit = int(os.environ.get(MAX_IN_FLIGHT_ENV) or DEFAULT_MAX_IN_FLIGHT) if limit is None else limit
        pause = os.environ.get(SHED_PAUSE_ENV) if pause_ms is None else pause_ms
        self.pause = float(DEFAULT_SHED_PAUSE_MS if pause in (None, "") else pause) / 1000
        self.in_flight = 0
        self.shed = 0
        self.shed_since = time.monotonic()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            self._count_shed()
            if self.pause > 0:
                await asyncio.sleep(self.pause)
            return await reject(send, 429, f"over {self.limit} requests in flight; retry after a second",
                                [(b"retry-after", b"1")])
        self.in_flight += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _count_shed(self) -> None:
        self.shed += 1
        now = time.monotonic()
        if now - self.shed_since >= SHED_LOG_SECONDS:  # one line per period, not one per request
            log.warning("overloaded: %d requests answered 429 in the last %.0f s (at most %d in flight)",
                        self.shed, now - self.shed_since, self.limit)
            self.shed, self.shed_since = 0, now


def admit_outermost(service, paths: tuple[str, ...] | None = None) -> None:
    """Puts `Admission` around the whole ASGI application that `service.to_asgi()` builds (the BentoML
    worker builds it so), ahead of the layers `add_asgi_middleware` can reach."""
    from nextbest.serving.openapi import PROTECTED

    base = type(service)

    class Admitted(base):
        __slots__ = ()

        def to_asgi(self, is_main: bool = True):
            return Admission(base.to_asgi(self, is_main), paths or PROTECTED)

    service.__class__ = Admitted
