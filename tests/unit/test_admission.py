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


class _Server:
    """A real uvicorn server (httptools) on a free port, in a thread, serving `app` with `SheddingProtocol`."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        from nextbest.serving.admission import SheddingProtocol

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, http=SheddingProtocol, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)

    def connect(self):
        import socket

        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


def _post(path=b"/recommend", body=b'{"customer_id": "C1"}', declared=None):
    length = len(body) if declared is None else declared
    return (b"POST " + path + b" HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: "
            + str(length).encode() + b"\r\n\r\n" + body)


def _answer(sock) -> tuple[int, dict, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def _closed(sock) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_the_protocol_sheds_from_parsed_headers_in_order_and_keeps_the_connection_usable():
    import threading

    from nextbest.serving.admission import Admission

    reached, release = [], threading.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        reached.append(scope["path"])
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/recommend" and len(reached) == 1:
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    gate = Admission(app, ("/recommend", "/feedback"), limit=1, pause_ms=20)
    server = _Server(gate)
    try:
        busy = server.connect()
        busy.sendall(_post())  # takes the only slot until released
        deadline = time.monotonic() + 5
        while gate.in_flight < 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)

        shed = server.connect()
        started = time.perf_counter()
        shed.sendall(_post(b"/feedback?x=1"))
        status, headers, body = _answer(shed)
        waited = time.perf_counter() - started
        assert status == 429 and headers["retry-after"] == "1" and headers["content-type"] == "application/json"
        assert "1 requests in flight" in json.loads(body)["error"] and "connection" not in headers
        assert 0.019 <= waited < 0.5  # paced: on the first tick at least the pause away
        shed.sendall(b"GET /readyz HTTP/1.1\r\nhost: t\r\n\r\n")  # the same connection serves what comes next
        assert _answer(shed)[0] == 200

        partial = server.connect()  # a body not all sent: the 429, then the connection closes
        partial.sendall(_post(body=b'{"custo', declared=100))
        status, headers, _ = _answer(partial)
        assert status == 429 and headers["connection"] == "close" and _closed(partial)

        piped = server.connect()  # a request pipelined behind a shed one: one 429, then the connection closes
        piped.sendall(_post() + _post(b"/feedback"))
        status, headers, _ = _answer(piped)
        assert status == 429 and headers["connection"] == "close" and _closed(piped)

        assert reached == ["/recommend", "/readyz"]  # nothing shed reached the application
        release.set()
        assert _answer(busy)[0] == 200
        busy.sendall(_post())  # the slot is free again: admitted
        assert _answer(busy)[0] == 200 and reached[-1] == "/recommend"
    finally:
        release.set()
        server.stop()


def test_the_service_worker_serves_http_with_the_shedding_protocol(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTBEST_HOME", str(tmp_path))
    import uvicorn

    import nextbest.serving.service  # noqa: F401 - importing the service sets the worker's protocol
    from nextbest.serving.admission import SheddingProtocol

    config = uvicorn.Config(lambda scope, receive, send: None)
    config.load()
    assert config.http_protocol_class is SheddingProtocol


class _Transport:
    def __init__(self):
        self.written, self.closed, self.reading = b"", False, True

    def get_extra_info(self, name, default=None):
        return default

    def write(self, data):
        self.written += data

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True


def test_a_request_admitted_by_the_protocol_holds_its_slot_before_its_task_runs():
    """Requests parsed in one turn of the event loop: the first takes the only slot at once, so the second
    is shed by the protocol rather than reaching the application."""
    import uvicorn
    from uvicorn.server import ServerState

    from nextbest.serving.admission import Admission, SheddingProtocol

    reached = []

    async def app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    gate = Admission(app, ("/recommend",), limit=1, pause_ms=10)
    config = uvicorn.Config(gate, http=SheddingProtocol, lifespan="off", log_level="warning")
    config.load()

    async def run():
        state, conns = ServerState(), []
        for _ in range(2):
            proto = SheddingProtocol(config, state, {}, _loop=asyncio.get_running_loop())
            proto.connection_made(_Transport())
            conns.append(proto)
        for proto in conns:  # both parsed before either task runs
            proto.data_received(_post())
        assert gate.in_flight == 1 and gate.shed == 1
        await asyncio.sleep(0.05)
        return [p.transport for p in conns]

    first, second = asyncio.run(run())
    assert first.written.startswith(b"HTTP/1.1 200") and second.written.startswith(b"HTTP/1.1 429")
    assert reached == ["/recommend"] and gate.in_flight == 0
