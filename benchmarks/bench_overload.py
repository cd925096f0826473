"""`POST /recommend` under overload: 2xx throughput at 8x the capacity's connections against the capacity
measured in the same run, and how fast a shed request (429) is answered.

    python benchmarks/bench_overload.py [--workdir .nextbest/bench-overload] [--customers 2000]
                                        [--connections 8] [--factor 8] [--seconds 15] [--rounds 3]

A real `nextbest serve` (one worker, shipped settings) on a quickstart work dir (built once if
missing). The load generator is a closed loop of keep-alive HTTP/1.1 connections in its own
process (asyncio, raw sockets: about 20 microseconds of client CPU per request), each sending the
next request as soon as the answer arrives, without backing off on 429 (as `wrk` does).

Phases, each after a 5 s warm-up: `--connections` connections (the capacity: 2xx per second), then
`--factor` x as many, alternated `--rounds` times on the same server so that the machine's slow
spells fall on both. The same two phases run against the same work dir served with the shipped
admission control, with it off and BentoML's own `max_concurrency` of 32 shedding instead, and
with no limit at all (every request queues).

Targets: at 8x the capacity's connections, 2xx throughput at least 0.9 x the capacity; p99 of a
429 under 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nextbest.serving.admission import DEFAULT_MAX_IN_FLIGHT
from results import REPO, Run

TARGET_RATIO = 0.9
TARGET_429_P99_MS = 20.0


def _request(customer: str) -> bytes:
    body = json.dumps({"customer_id": customer, "channel": "mobile_app", "k": 3}).encode()
    return (b"POST /recommend HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _closed_loop(port: int, customers: list[str], connections: int, warmup: float, seconds: float) -> dict:
    clock = time.perf_counter
    requests = [_request(c) for c in customers]
    by_status: dict[int, list[float]] = {}
    errors = [0]
    start = clock()
    measure_from, until = start + warmup, start + warmup + seconds

    async def connection(j: int) -> None:
        reader = writer = None
        rng = random.Random(j)
        while clock() < until:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                sent = clock()
                writer.write(requests[rng.randrange(len(requests))])
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                done = clock()
                if sent >= measure_from and done <= until:
                    by_status.setdefault(status, []).append(done - sent)
                if b"connection: close" in head.lower():
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors[0] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
        if writer is not None:
            writer.close()

    cpu0 = os.times()
    await asyncio.gather(*(connection(j) for j in range(connections)))
    cpu1 = os.times()
    return {"connections": connections, "seconds": seconds, "errors": errors[0],
            "client_cpu_s": cpu1.user + cpu1.system - cpu0.user - cpu0.system,
            "latencies": {str(status): lat for status, lat in by_status.items()}}


def _summary(rounds: list[dict]) -> dict:
    """One phase's figures over its rounds: counts and CPU summed, latency percentiles over every answer."""
    seconds = sum(r["seconds"] for r in rounds)
    out = {"connections": rounds[0]["connections"], "rounds": len(rounds), "seconds": seconds,
           "errors": sum(r["errors"] for r in rounds),
           "client_cpu_s": round(sum(r["client_cpu_s"] for r in rounds), 2),
           "server_cpu_s": round(sum(r["server_cpu_s"] for r in rounds), 2)}
    for status in sorted({s for r in rounds for s in r["latencies"]}):
        ms = np.concatenate([np.asarray(r["latencies"].get(status, []), dtype=float) for r in rounds]) * 1000
        out[status] = {"count": len(ms), "per_s": round(len(ms) / seconds, 1),
                       "p50_ms": round(float(np.percentile(ms, 50)), 2),
                       "p99_ms": round(float(np.percentile(ms, 99)), 2)}
    return out


def _load(spec: dict) -> dict:
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    return run(_closed_loop(**spec))


def latest_customers(workdir: Path) -> list[str]:
    import pandas as pd

    h = pd.read_parquet(workdir / "features" / "customer_holdings.parquet", columns=["customer_id", "event_timestamp"])
    return h[h.event_timestamp == h.event_timestamp.max()].customer_id.astype(str).tolist()


def ensure_workdir(workdir: Path, customers: int) -> None:
    if (workdir / "mlflow" / "mlflow.db").exists():
        return
    proc = subprocess.run([sys.executable, "-m", "nextbest.cli", "quickstart", "--customers", str(customers),
                           "--months", "12", "--workdir", str(workdir)], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"quickstart failed:\n{proc.stderr[-3000:]}")


def _tree_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and its children (the BentoML worker)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _measure(pid: int, spec: dict, pool: ProcessPoolExecutor) -> dict:
    """One load phase, with the server's CPU seconds over its measured window."""
    future = pool.submit(_load, spec)
    time.sleep(spec["warmup"])
    cpu0 = _tree_cpu(pid)
    time.sleep(spec["seconds"])
    cpu1 = _tree_cpu(pid)
    out = future.result()
    out["server_cpu_s"] = cpu1 - cpu0
    return out


def _phases(workdir: Path, env: dict, args, customers: list[str], pool: ProcessPoolExecutor) -> list[dict]:
    from nextbest.cli.server import free_port, serve_command, serve_env, stop_server, wait_ready
    from nextbest.settings import Paths

    port = free_port()
    paths = Paths(workdir)
    with open(workdir / f"bench-overload-{port}.log", "w") as log:
        proc = subprocess.Popen(serve_command(paths, port), env={**serve_env(paths), **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(port, proc)
            out: list[list[dict]] = [[], []]
            for _ in range(args.rounds):  # alternated, so that a slow spell of the machine hits both phases
                for phase, connections in enumerate((args.connections, args.connections * args.factor)):
                    spec = {"port": port, "customers": customers, "connections": connections, "warmup": 5.0,
                            "seconds": float(args.seconds)}
                    out[phase].append(_measure(proc.pid, spec, pool))
            return [_summary(rounds) for rounds in out]
        finally:
            stop_server(proc)


FLOOR_APP = """
import sys, uvicorn
from nextbest.serving.admission import Admission, SheddingProtocol

async def never(scope, receive, send):
    raise RuntimeError("the floor server admits nothing")

http = SheddingProtocol if sys.argv[2] == "protocol" else "httptools"
uvicorn.run(Admission(never, ("/recommend",), limit=0), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning", server_header=False, http=http)
"""

# The two places a 429 can be answered in the worker: the HTTP protocol (shipped), or the ASGI layer.
FLOORS = {"protocol": "the HTTP protocol, from parsed headers", "asgi": "the ASGI admission layer"}


def _shed_floor(args, customers: list[str], pool: ProcessPoolExecutor, shedding: int, where: str) -> dict:
    """The cheapest a 429 can be in one Python process: the admission alone under uvicorn (uvloop, httptools, as
    the BentoML worker runs it), every request shed at `where` (FLOORS), `shedding` connections."""
    from nextbest.cli.server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(port), where], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("the floor server did not start")
                time.sleep(0.1)
        spec = {"port": port, "customers": customers, "connections": shedding, "warmup": 3.0,
                "seconds": float(args.seconds)}
        return _summary([_measure(proc.pid, spec, pool)])
    finally:
        proc.terminate()
        proc.wait(10)


def _bound(shipped: dict, floors: dict, shedding: int) -> dict:
    """What the single worker's CPU allows: the decision cost from the capacity phase, the cost of a 429 in
    each floor server, the best ratio any in-process shedding can reach when `shedding` connections each get
    their 429 within the p99 target (so at least shedding / target per second) at the shipped floor's cost,
    and the decision's own cost under overload (the server's CPU less the 429s at that cost)."""
    cap, over = shipped["capacity"], shipped["overload"]
    per_decision = cap["server_cpu_s"] / cap["200"]["count"]
    worker_cores = cap["server_cpu_s"] / cap["seconds"]
    per_429 = {where: floor["server_cpu_s"] / floor["429"]["count"] for where, floor in floors.items()}
    shed = over.get("429", {}).get("count", 0)
    served = over.get("200", {}).get("count", 0)
    per_decision_over = (over["server_cpu_s"] - shed * per_429["protocol"]) / served if served else None
    min_rate = shedding / (TARGET_429_P99_MS / 1000)
    out = {"worker_cores_at_capacity": round(worker_cores, 2), "cpu_ms_per_decision": round(per_decision * 1000, 3),
           "cpu_ms_per_decision_overload": round(per_decision_over * 1000, 3) if per_decision_over else None,
           "shedding_connections": shedding, "min_429_per_s_at_target": round(min_rate)}
    for where, floor in floors.items():
        out[f"cpu_ms_per_429_{where}"] = round(per_429[where] * 1000, 4)
        out[f"floor_429_per_s_{where}"] = floor["429"]["per_s"]
        out[f"floor_p99_429_ms_{where}"] = floor["429"]["p99_ms"]
    out["best_ratio_in_process"] = round(1 - min_rate * per_429["protocol"] / worker_cores, 3)
    return out


def _row(label: str, capacity: dict, overload: dict) -> tuple[list[str], dict]:
    cap = capacity.get("200", {}).get("per_s", 0.0)
    ok = overload.get("200", {}).get("per_s", 0.0)
    shed = overload.get("429", {})
    ratio = ok / cap if cap else 0.0
    figures = {"capacity_per_s": cap, "overload_2xx_per_s": ok, "ratio": round(ratio, 3),
               "overload_429_per_s": shed.get("per_s", 0.0), "p99_429_ms": shed.get("p99_ms"),
               "p99_2xx_ms_capacity": capacity.get("200", {}).get("p99_ms"),
               "p99_2xx_ms_overload": overload.get("200", {}).get("p99_ms")}
    row = [label, f"{cap:.1f}", f"{ok:.1f}", f"{ratio:.2f}", f"{shed.get('per_s', 0.0):,.0f}",
           f"{shed['p99_ms']:.1f}" if shed else "-", f"{figures['p99_2xx_ms_overload']:.0f}"
           if figures["p99_2xx_ms_overload"] is not None else "-"]
    return row, figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / ".nextbest" / "bench-overload")
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=15, help="measured seconds of each phase in each round")
    ap.add_argument("--rounds", type=int, default=3, help="capacity and overload phases, alternated, per server")
    ap.add_argument("--shipped-only", action="store_true", help="only the shipped server (no peers; no result file)")
    args = ap.parse_args()
    record = Run("bench_overload")
    ensure_workdir(args.workdir, args.customers)
    customers = latest_customers(args.workdir)
    rows, raw = [], {}
    with ProcessPoolExecutor(1) as pool:
        bentoml_32 = json.dumps({"services": {"nextbest": {"traffic": {"timeout": 30, "max_concurrency": 32}}}})
        for label, env in (("admission control (shipped)", {}),
                           ("BentoML's max_concurrency 32", {"NEXTBEST_MAX_IN_FLIGHT": "100000",
                                                             "BENTOML_CONFIG_OVERRIDES": bentoml_32}),
                           ("no limit (queue everything)", {"NEXTBEST_MAX_IN_FLIGHT": "100000"})):
            if args.shipped_only and env:
                continue
            capacity, overload = _phases(args.workdir, env, args, customers, pool)
            row, figures = _row(label, capacity, overload)
            rows.append(row)
            raw[label] = {"capacity": capacity, "overload": overload}
            record.figures[label] = figures
            print(f"{label}: {json.dumps(figures)}", flush=True)
        n, m = args.connections, args.connections * args.factor
        shedding = m - DEFAULT_MAX_IN_FLIGHT
        floors = {where: _shed_floor(args, customers, pool, shedding, where) for where in FLOORS}
    raw["shed floor"] = floors
    record.figures["shed floor"] = bound = _bound(raw["admission control (shipped)"], floors, shedding)
    print(f"shed floor: {json.dumps(bound)}", flush=True)
    title = f"POST /recommend, one worker: capacity at {n} connections, overload at {m}"
    header = ["server", f"2xx/s at {n}", f"2xx/s at {m}", "ratio", "429/s", "p99 of a 429 (ms)", "p99 of a 2xx (ms)"]
    record.table(title, header, rows)
    shipped = record.figures["admission control (shipped)"]
    met = shipped["ratio"] >= TARGET_RATIO and (shipped["p99_429_ms"] or 0) < TARGET_429_P99_MS
    record.note(f"Targets: 2xx at {args.factor}x the connections at least {TARGET_RATIO} x the capacity, p99 of a 429 "
                f"under {TARGET_429_P99_MS:g} ms: {'met' if met else 'not met'} (ratio {shipped['ratio']:.2f}, "
                f"p99 of a 429 {shipped['p99_429_ms']} ms).")
    record.note(f"Bound: a single worker at capacity uses {bound['worker_cores_at_capacity']} cores, "
                f"{bound['cpu_ms_per_decision']} ms of CPU per decision. A 429 alone under uvicorn costs "
                f"{bound['cpu_ms_per_429_protocol']} ms of CPU answered by the HTTP protocol (shipped) and "
                f"{bound['cpu_ms_per_429_asgi']} ms by the ASGI layer. {shedding} connections answered within "
                f"{TARGET_429_P99_MS:g} ms make at least {bound['min_429_per_s_at_target']:,} 429s per second, so "
                f"the 429s' own cost leaves at least {bound['best_ratio_in_process']:.2f} x the capacity for "
                f"decisions. Under overload a decision costs {bound['cpu_ms_per_decision_overload']} ms of the "
                "worker's CPU (its total less the 429s at that cost): the rest of the gap is the decisions' own "
                "cost, grown with more requests in flight and the 429s' wake-ups between them.")
    record.figures["raw"] = raw
    print("| " + " | ".join(header) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if not args.shipped_only:
        record.write()


if __name__ == "__main__":
    main()
