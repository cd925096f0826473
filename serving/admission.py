"""Admission control in front of everything else the service runs for a request.

Beyond `NEXTBEST_MAX_IN_FLIGHT` decision requests in flight in a worker, a request is answered 429
(`Retry-After: 1`) without reading its body. This layer wraps BentoML's whole application, ahead
of its metrics, tracing and access-log layers: a shed request then costs tens of microseconds
rather than most of a millisecond, so under overload the requests admitted keep the worker's pace.
The 429 is sent after `NEXTBEST_SHED_PAUSE_MS` (default 10 ms): a client that retries at once,
ignoring Retry-After, is paced by it instead of spinning the worker's event loop.

Cheaper still, `SheddingProtocol` sheds in the HTTP protocol itself, as soon as a request's headers
are parsed: no ASGI scope, task or response cycle is built, and the canned 429 is written straight
to the socket. Under overload a worker answers thousands of 429s a second, and every one of them
takes CPU from the decisions it is admitting; this cuts their cost to about a third (bench_overload's
floor servers). `Admission` still sheds what the protocol leaves to it (a request on a connection
with a response pending, or a server running another HTTP implementation).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is missing: uvicorn's pure-Python parser serves, and Admission sheds alone
    HttpToolsProtocol = None

log = logging.getLogger("nextbest.serving")

MAX_IN_FLIGHT_ENV = "NEXTBEST_MAX_IN_FLIGHT"
DEFAULT_MAX_IN_FLIGHT = 32
SHED_PAUSE_ENV = "NEXTBEST_SHED_PAUSE_MS"
DEFAULT_SHED_PAUSE_MS = 10.0
SHED_LOG_SECONDS = 10.0
ADMITTED = "nextbest.admitted"  # scope key: the HTTP protocol admitted the request and took its slot


async def reject(send, status: int, message: str, extra: list | None = None) -> None:
    """A complete JSON error answer `{"error": message}`."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def _message(limit: int) -> str:
    return f"over {limit} requests in flight; retry after a second"


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
        body = json.dumps({"error": _message(self.limit)}).encode()
        # The protocol-level 429 after the status line and the server's own headers (date).
        self.canned = (b"content-type: application/json\r\nretry-after: 1\r\ncontent-length: "
                       + str(len(body)).encode() + b"\r\n")
        self.canned_body = body
        self.raw_paths = frozenset(p.encode() for p in self.paths)
        self.due: dict[float, list] = {}

    def full(self) -> bool:
        return self.in_flight >= self.limit

    def answer_later(self, loop, protocol) -> None:
        """Queues a protocol-level 429 for the first tick at least `pause` away. The ticks are `pause / 4`
        apart, and one timer answers every 429 due on a tick: the event loop then wakes for a burst of
        them (and the clients' retries come back together) rather than once per shed request, each
        wake-up taking the interpreter from the decision in progress."""
        tick = self.pause / 4
        if tick <= 0:
            return protocol.answer_429(self)
        at = (int((loop.time() + self.pause) / tick) + 1) * tick
        due = self.due.get(at)
        if due is None:
            due = self.due[at] = []
            loop.call_at(at, self._answer_due, at)
        due.append(protocol)

    def _answer_due(self, at: float) -> None:
        for protocol in self.due.pop(at, ()):
            protocol.answer_429(self)

    async def __call__(self, scope, receive, send):
        if scope.get(ADMITTED):
            try:
                return await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            self.count_shed()
            if self.pause > 0:
                await asyncio.sleep(self.pause)
            return await reject(send, 429, _message(self.limit), [(b"retry-after", b"1")])
        self.in_flight += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def count_shed(self) -> None:
        self.shed += 1
        now = time.monotonic()
        if now - self.shed_since >= SHED_LOG_SECONDS:  # one line per period, not one per request
            log.warning("overloaded: %d requests answered 429 in the last %.0f s (at most %d in flight)",
                        self.shed, now - self.shed_since, self.limit)
            self.shed, self.shed_since = 0, now


class _Answered:
    """Stands in for uvicorn's response cycle while a shed request's 429 is pending: the parser's body
    callbacks see a finished response and drop what the client still sends."""

    response_complete = True

    class message_event:  # noqa: N801 - the attribute uvicorn's connection_lost sets
        @staticmethod
        def set() -> None:
            pass


_ANSWERED = _Answered()

if HttpToolsProtocol is not None:

    class SheddingProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol that answers a decision request 429 from its parsed headers when
        the worker's gate is full, without building anything for the application. Only on an idle
        connection (no response pending), so that answers stay in request order. Reading pauses until
        the 429 is written; the connection closes after it when the request's body had not all arrived
        or another request came pipelined behind it (left unanswered, as a closed connection says)."""

        _pending = False
        _close_after = False
        _body_done = True

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            gate = self.app  # uvicorn may wrap the application (proxy headers): the gate is inside
            while gate is not None and not isinstance(gate, Admission):
                gate = getattr(gate, "app", None)
            self.gate = gate

        def on_headers_complete(self) -> None:
            if self._pending:
                self._close_after = True
                return
            gate = self.gate
            gated = (gate is not None and not self.pipeline and (self.cycle is None or self.cycle.response_complete)
                     and self.parser.get_method() == b"POST" and self.url.split(b"?", 1)[0] in gate.raw_paths)
            if not gated:
                return super().on_headers_complete()
            if gate.full():
                gate.count_shed()
                self._pending, self._body_done = True, False
                self._close_after = not self.parser.should_keep_alive() or self.expect_100_continue
                self.cycle = _ANSWERED
                self.flow.pause_reading()
                gate.answer_later(self.loop, self)
                return
            # Admitted here, and the slot taken now: requests parsed later in the same turn of the event
            # loop see it taken, before this one's task runs. `Admission` frees it when the request ends.
            gate.in_flight += 1
            self.scope[ADMITTED] = True
            super().on_headers_complete()
            if self.cycle is None or self.cycle.scope is not self.scope:  # not started (an upgrade): no slot
                gate.in_flight -= 1

        def on_message_complete(self) -> None:
            if self.cycle is _ANSWERED:
                self._body_done = True
                return
            super().on_message_complete()

        def answer_429(self, gate: Admission) -> None:
            self._pending = False
            if self.transport.is_closing():
                return
            close = self._close_after or not self._body_done
            head = [b"HTTP/1.1 429 Too Many Requests\r\n"]
            head += [b"%s: %s\r\n" % (name, value) for name, value in self.server_state.default_headers]
            head.append(gate.canned + (b"connection: close\r\n\r\n" if close else b"\r\n"))
            self.transport.write(b"".join(head) + gate.canned_body)
            if close:
                self.transport.close()
                return
            self.flow.resume_reading()
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)


def _use_shedding_protocol() -> None:
    """Makes uvicorn's default HTTP implementation (`auto`, or `httptools` by name) `SheddingProtocol` in this
    process. The BentoML worker builds uvicorn's config itself, with no way to pass a protocol class, and
    loads the class by this name only after the service module is imported."""
    if HttpToolsProtocol is None:
        return
    from uvicorn import config

    name = f"{__name__}:SheddingProtocol"
    config.HTTP_PROTOCOLS["auto"] = config.HTTP_PROTOCOLS["httptools"] = name


def admit_outermost(service, paths: tuple[str, ...] | None = None) -> None:
    """Puts `Admission` around the whole ASGI application that `service.to_asgi()` builds (the BentoML
    worker builds it so), ahead of the layers `add_asgi_middleware` can reach, and has the worker's
    HTTP protocol shed from the same gate."""
    from nextbest.serving.openapi import PROTECTED

    base = type(service)

    class Admitted(base):
        __slots__ = ()

        def to_asgi(self, is_main: bool = True):
            return Admission(base.to_asgi(self, is_main), paths or PROTECTED)

    service.__class__ = Admitted
    _use_shedding_protocol()
