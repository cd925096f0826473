"""A soak run of the service: half its capacity for 30 minutes, decisions with feedback and customer events
mixed in; per minute, the server's memory, open files and latency, and whether any of them trends up.

    python benchmarks/bench_soak.py [--workdir .nextbest/bench-overload] [--minutes 30] [--share 0.5]

A real `nextbest serve` (one worker) on a quickstart work dir (built once if missing). First the
capacity: a closed loop of 8 connections for 15 s (2xx per second). Then an open loop at `--share`
of it (requests sent on schedule whatever the answers, so a slow answer counts from its slot), for
customers drawn at random on a random channel: each `/recommend` is followed by a `/feedback` on
its first offer half of the time (accept 1 in 5, else reject) and a `/events` page view 1 time in
10.

Per minute: the resident memory of the server's processes (arbiter and worker), their open file
descriptors, p50 and p99 of `/recommend`, and the answers by status. A trend is the least-squares
slope over the minutes after the first (warm-up) one; the run passes when memory grows by less
than 5% of its level over the whole run, open files by less than 10, and p99 by less than 50%.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import time
from pathlib import Path

import numpy as np

from bench_overload import ensure_workdir, latest_customers
from results import REPO, Run


def _server_state(pid: int) -> tuple[float, int]:
    """(resident memory in MB, open file descriptors) of the server and its workers."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    rss = fds = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
        except psutil.Error:
            pass
    return rss / 2**20, fds


async def _capacity(url: str, customers: list[str], seconds: float = 15.0, connections: int = 8) -> float:
    import aiohttp

    done = [0]
    until = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as session:
        async def loop(j: int) -> None:
            rng = random.Random(j)
            while time.perf_counter() < until:
                body = {"customer_id": rng.choice(customers), "channel": "mobile_app", "k": 3}
                async with session.post(f"{url}/recommend", json=body) as r:
                    await r.read()
                    done[0] += r.status == 200

        await asyncio.gather(*(loop(j) for j in range(connections)))
    return done[0] / seconds


CHANNELS = ("mobile_app", "web", "email", "push", "sms")


async def _soak(url: str, pid: int, customers: list[str], rate: float, minutes: int, seed: int) -> list[dict]:
    import aiohttp

    rng = random.Random(seed)
    minutes_out: list[dict] = []
    period = 1.0 / rate
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=256)) as session:
        async def one(customer: str, scheduled: float, stats: dict) -> None:
            try:
                body = {"customer_id": customer, "channel": rng.choice(CHANNELS), "k": 3}
                async with session.post(f"{url}/recommend", json=body) as r:
                    answer = await r.json(content_type=None)
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status, answer = 0, {}
            stats["latency"].append(time.perf_counter() - scheduled)
            stats["status"][status] = stats["status"].get(status, 0) + 1
            offers = answer.get("offers") or []
            if offers and rng.random() < 0.5:
                event = "accept" if rng.random() < 0.2 else "reject"
                body = {"decision_id": answer["decision_id"], "product_id": offers[0]["product_id"], "event": event}
                async with session.post(f"{url}/feedback", json=body) as r:
                    await r.read()
                    stats["feedback"] += r.status == 200
            if offers and rng.random() < 0.1:
                body = {"customer_id": customer, "event": "product_page_view", "product_id": offers[-1]["product_id"]}
                async with session.post(f"{url}/events", json=body) as r:
                    await r.read()
                    stats["events"] += r.status == 200

        start = time.perf_counter()
        tasks: set = set()
        i = 0
        for minute in range(minutes):
            stats = {"latency": [], "status": {}, "feedback": 0, "events": 0}
            end = start + (minute + 1) * 60
            while True:
                scheduled = start + i * period
                if scheduled >= end:
                    break
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(rng.choice(customers), scheduled, stats))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            rss, fds = _server_state(pid)
            ms = np.asarray(stats["latency"] or [0.0]) * 1000
            row = {"minute": minute + 1, "rss_mb": round(rss, 1), "open_files": fds,
                   "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
                   "recommend": sum(stats["status"].values()), "ok": stats["status"].get(200, 0),
                   "shed": stats["status"].get(429, 0),
                   "feedback": stats["feedback"], "events": stats["events"]}
            minutes_out.append(row)
            print(json.dumps(row), flush=True)
        await asyncio.gather(*tasks, return_exceptions=True)
    return minutes_out


def _slope(values: list[float]) -> float:
    x = np.arange(len(values), dtype=float)
    return float(np.polyfit(x, np.asarray(values, dtype=float), 1)[0]) if len(values) > 1 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / ".nextbest" / "bench-overload")
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    record = Run("bench_soak")
    ensure_workdir(args.workdir, args.customers)
    customers = latest_customers(args.workdir)

    from nextbest.cli.server import free_port, serve_command, serve_env, stop_server, wait_ready
    from nextbest.settings import Paths

    paths, port = Paths(args.workdir), free_port()
    url = f"http://127.0.0.1:{port}"
    with open(args.workdir / "bench-soak.log", "w") as log:
        proc = subprocess.Popen(serve_command(paths, port), env=serve_env(paths), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_ready(port, proc)
            capacity = asyncio.run(_capacity(url, customers))
            rate = capacity * args.share
            print(f"capacity {capacity:.1f} decisions/s; soak at {rate:.1f}/s for {args.minutes} min", flush=True)
            rows = asyncio.run(_soak(url, proc.pid, customers, rate, args.minutes, args.seed))
        finally:
            stop_server(proc)
    steady = rows[1:] or rows
    rss, fds, p99 = ([r[k] for r in steady] for k in ("rss_mb", "open_files", "p99_ms"))
    span = len(steady)
    growth = {"rss_mb": _slope(rss) * span, "open_files": _slope(fds) * span, "p99_ms": _slope(p99) * span}
    ok = (growth["rss_mb"] < 0.05 * float(np.mean(rss)) and growth["open_files"] < 10
          and growth["p99_ms"] < 0.5 * float(np.mean(p99)))
    record.figures.update({"capacity_per_s": round(capacity, 1), "rate_per_s": round(rate, 1), "minutes": rows,
                           "growth_over_run": {k: round(v, 2) for k, v in growth.items()}, "no_growth_trend": ok})
    every = max(1, len(rows) // 10)
    record.table(f"Soak at {args.share:g} x capacity ({capacity:.0f} decisions/s measured): {rate:.0f}/s for "
                 f"{args.minutes} min, one worker",
                 ["minute", "RSS (MB)", "open files", "p50 (ms)", "p99 (ms)", "decisions", "429", "feedback", "events"],
                 [[str(r["minute"]), f"{r['rss_mb']:.0f}", str(r["open_files"]), f"{r['p50_ms']:.1f}",
                   f"{r['p99_ms']:.1f}", f"{r['ok']:,}", f"{r['shed']:,}", f"{r['feedback']:,}", f"{r['events']:,}"]
                  for r in rows if r["minute"] % every == 0 or r["minute"] == 1])
    record.note(f"Trend over minutes 2-{len(rows)} (least-squares slope x run length): memory "
                f"{growth['rss_mb']:+.1f} MB, open files {growth['open_files']:+.1f}, p99 {growth['p99_ms']:+.1f} ms: "
                f"{'no growth trend' if ok else 'GROWTH'} (limits: 5% of memory, 10 files, 50% of p99).")
    record.write()


if __name__ == "__main__":
    main()
