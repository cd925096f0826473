"""The HTTP load generator and the floor server of `bench_recommend.py`, each run in its own process.

`run_load(spec)` runs one phase against a URL: an open loop (requests sent on schedule at `rate`
whatever the answers, so a slow answer counts from its slot: no coordinated omission) or a closed
loop of `concurrency` clients, and returns the counts, throughput and latency percentiles.
`floor_server(port)` answers every request at once with a fixed body: the load generator's floor.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

from nextbest.constants import CUSTOMER_ID, NBP_FEATURE_SERVICE

JSON_HEADERS = {"content-type": "application/json"}


# -- load generator (runs in its own process) ---------------------------------------------------

def _valid(kind: str, body: bytes) -> tuple[bool, float | None, bool]:
    """(valid answer, server-reported latency in ms, degraded) for one 200 answer's body."""
    if kind == "null":
        return True, None, False
    try:
        answer = json.loads(body)
    except ValueError:
        return False, None, False
    if kind == "ours":
        server_ms = answer.get("latency_ms")
        return (isinstance(answer.get("offers"), list), server_ms if isinstance(server_ms, (int, float)) else None,
                answer.get("degraded") is True)
    return isinstance(answer.get("results"), list), None, False


def feast_body(customer: str, features: list[str] | None) -> dict:
    """A `/get-online-features` request: by feature references if given, else by feature service."""
    what = {"features": features} if features else {"feature_service": NBP_FEATURE_SERVICE}
    return {**what, "entities": {CUSTOMER_ID: [customer]}}


def _request_bodies(kind: str, customers: list[str], n: int, seed: int, features: list[str] | None) -> list[bytes]:
    """n request bodies for random customers (the same draws for every target given the seed)."""
    rng = random.Random(seed)
    picks = [customers[rng.randrange(len(customers))] for _ in range(n)]
    if kind == "feast":
        return [json.dumps(feast_body(c, features)).encode() for c in picks]
    return [json.dumps({"customer_id": c, "channel": "mobile_app", "k": 3}).encode() for c in picks]


async def _load(spec: dict) -> dict:
    import aiohttp
    import numpy as np

    # Timestamps from perf_counter: uvloop's loop.time() moves in whole milliseconds.
    clock = time.perf_counter
    kind, url, mode, duration = spec["kind"], spec["url"], spec["mode"], spec["duration"]
    rate, concurrency = float(spec.get("rate") or 0.0), int(spec.get("concurrency") or 1)
    warmup = float(spec.get("warmup", 0.0))
    n_bodies = int(rate * (duration + warmup)) + 1 if mode == "open" else 4096
    bodies = _request_bodies(kind, spec["customers"], n_bodies, spec["seed"], spec.get("feast_features"))
    latencies: list[float] = []   # seconds, from the scheduled send to the last byte
    server_ms: list[float] = []
    counts = {"sent": 0, "ok": 0, "non_200": 0, "invalid": 0, "errors": 0, "degraded": 0, "with_warmup": 0}
    first_error: list[str] = []
    last_end = [0.0]

    async def one(session: aiohttp.ClientSession, body: bytes, scheduled: float, record: bool) -> None:
        status, payload = 0, b""
        try:
            async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
                payload = await resp.read()
                status = resp.status
        except Exception as exc:  # noqa: BLE001 - timeouts and refused connections are results here
            if record and not first_error:
                first_error.append(f"{type(exc).__name__}: {exc}")
        end = clock()
        counts["with_warmup"] += 1
        if not record:
            return
        latencies.append(end - scheduled)
        last_end[0] = max(last_end[0], end)
        if status == 0:
            counts["errors"] += 1
        elif status != 200:
            counts["non_200"] += 1
            if not first_error:
                first_error.append(f"HTTP {status}: {payload[:200].decode(errors='replace')}")
        else:
            ok, ms, degraded = _valid(kind, payload)
            counts["ok" if ok else "invalid"] += 1
            counts["degraded"] += degraded
            if ms is not None:
                server_ms.append(ms)

    connector = aiohttp.TCPConnector(limit=spec["connections"], keepalive_timeout=60, force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec["timeout"])
    cpu0 = os.times()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if mode == "open":
            # Sends at start + i / rate whatever the answers; a late send still counts from its slot.
            period = 1.0 / rate
            n_warm, n_measured = int(rate * warmup), int(rate * duration)
            start = clock() + 0.05
            measured_start = start + n_warm * period
            tasks = []
            for i in range(n_warm + n_measured):
                scheduled = start + i * period
                delay = scheduled - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                record = i >= n_warm
                counts["sent"] += record
                tasks.append(asyncio.create_task(one(session, bodies[i], scheduled, record)))
            await asyncio.gather(*tasks)
            elapsed = max(last_end[0] - measured_start, duration)
        else:
            async def client(j: int, until: float, record: bool) -> None:
                i = j
                while clock() < until:
                    if record:
                        counts["sent"] += 1
                    await one(session, bodies[i % len(bodies)], clock(), record)
                    i += concurrency

            if warmup:
                until = clock() + warmup
                await asyncio.gather(*(client(j, until, False) for j in range(concurrency)))
            measured_start = clock()
            await asyncio.gather(*(client(j, measured_start + duration, True) for j in range(concurrency)))
            elapsed = clock() - measured_start
    cpu1 = os.times()
    ms = np.asarray(latencies) * 1000
    pct = (lambda a, q: round(float(np.percentile(a, q)), 3) if len(a) else None)  # noqa: E731
    return {
        **counts, "elapsed_s": round(elapsed, 3),
        "throughput": round(counts["ok"] / elapsed, 1) if elapsed > 0 else 0.0,
        "ok_share": round(counts["ok"] / counts["sent"], 5) if counts["sent"] else 0.0,
        "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99),
        "max_ms": round(float(ms.max()), 3) if len(ms) else None,
        "server_p50_ms": pct(server_ms, 50), "server_p99_ms": pct(server_ms, 99),
        "client_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 3),
        "first_error": first_error[0] if first_error else None,
    }


def _event_loop_runner():
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def run_load(spec: dict) -> dict:
    """Entry point of the load-generator process: one phase, its summary back as a dict."""
    return _event_loop_runner()(_load(spec))


# -- the floor: a trivial HTTP server -----------------------------------------------------------

FLOOR_BODY = b'{"offers":[],"ok":1}'
FLOOR_ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(FLOOR_BODY)).encode() + b"\r\n\r\n" + FLOOR_BODY)


async def _floor_server(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(FLOOR_ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def floor_server(port: int) -> None:
    """Entry point of the floor server's process."""
    _event_loop_runner()(_floor_server(port))
