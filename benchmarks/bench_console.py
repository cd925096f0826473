"""`nextbest console` page load times on a 1,000,000-decision event log beside a 1,000-decision one.

    python benchmarks/bench_console.py [--decisions 1000000] [--small 1000] [--repeats 7]

Each log is written as the service writes it (`EventLog.log_decisions`, the outbound plans' batch
path; feedback rows through SQL in one transaction) into a fresh work directory: decisions spread
over 52 weeks, ten per customer, one to three offers each with propensities, 10% exploring, 1%
degraded, 20% with a rule suppression, 5% in the global control group; feedback on 30% of the
decisions (impressions, accepts, rejects, converts with a value). The work directory also holds
the customers' raw rows (customers and twelve monthly holdings snapshots) and the pseudonymisation
key, so the customer portrait finds a customer's decisions by pseudonym as in production.

Pages are requested through the console's ASGI application in this process (Starlette's test
client: the application's own time, no network): the decisions page (first page, a search by
channel and flag, a search by date range, a deep page 990,000 decisions back), the overview (the
last 28 days and 12 weekly trends) and a customer portrait. Each is loaded once to warm up, then
`--repeats` times; the median is reported. Target: every page under one second at 1,000,000 decisions.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from nextbest.config import load_catalogue
from nextbest.monitoring.console.app import console_app
from nextbest.serving.eventlog import EventLog
from nextbest.serving.privacy import pseudonymise
from nextbest.settings import Paths

TARGET_SECONDS = 1.0
WEEKS = 52
END = 1_795_996_800.0  # 2026-12-01 00:00 UTC
KEY = "bench-console-key"
CHANNELS = ("mobile_app", "web", "email", "push", "sms")
CHUNK = 50_000


def customer_id(i: int) -> str:
    return f"C{i:07d}"


def fill(root: Path, n: int, seed: int) -> dict:
    """A work directory with an `n`-decision log and the customers' raw rows; returns what was written."""
    rng = np.random.default_rng(seed)
    products = [p.product_id for p in load_catalogue().products]
    n_customers = max(10, n // 10)
    (root / "secrets").mkdir(parents=True)
    (root / "secrets" / "pseudonym.key").write_text(KEY)
    pseudonyms = [pseudonymise(customer_id(i), KEY.encode()) for i in range(n_customers)]
    started = time.perf_counter()
    log = EventLog(root / "events.db", durable=False)
    times = np.sort(END - WEEKS * 7 * 86400.0 * rng.random(n))
    who = rng.integers(0, n_customers, n)
    channel = rng.integers(0, len(CHANNELS), n)
    n_offers = rng.integers(1, 4, n)
    exploring = rng.random(n) < 0.10
    degraded = rng.random(n) < 0.01
    suppressed = rng.random(n) < 0.20
    holdout = rng.random(n) < 0.05
    picks = rng.integers(0, len(products), (n, 3))
    for lo in range(0, n, CHUNK):
        rows = []
        for i in range(lo, min(n, lo + CHUNK)):
            offers = [] if holdout[i] else [
                {"product_id": products[picks[i, r]], "rank": r + 1, "score": 0.5, "probability": 0.03,
                 "propensity": 0.9 if not exploring[i] else 0.1, "explored": bool(exploring[i] and r == 0)}
                for r in range(n_offers[i])]
            ctx = {"policy": "lin_ts", "exploring": bool(exploring[i]), "segment": "family",
                   "degraded": "store down" if degraded[i] else None, "churn_risk": 0.05, "blocked": None,
                   "holdout": bool(holdout[i]), "request": {"at": float(times[i])},
                   "suppressed": [{"product_id": "mortgage", "rule": "eligibility"}] if suppressed[i] else [],
                   "groups": {"all": "control" if holdout[i] else "treatment"}}
            rows.append((f"d{i:08d}", float(times[i]), pseudonyms[who[i]], CHANNELS[channel[i]], 3, offers,
                         {"nbp": "1"}, ctx))
        log.log_decisions(rows)
    log.close()
    fb = rng.random(n) < 0.30
    events = rng.choice(["impression", "accept", "reject", "convert"], n, p=[0.55, 0.2, 0.15, 0.1])
    feedback = [(f"d{i:08d}", products[picks[i, 0]], str(events[i]), 250.0 if events[i] == "convert" else None,
                 float(times[i]) + 3600.0) for i in np.flatnonzero(fb & ~holdout)]
    with sqlite3.connect(root / "events.db") as conn:
        conn.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?, ?)", feedback)
    seconds = time.perf_counter() - started
    (root / "raw").mkdir()
    ids = [customer_id(i) for i in range(n_customers)]
    pd.DataFrame({"customer_id": ids, "status": "active", "region": "north", "income": 30000.0,
                  "join_date": pd.Timestamp("2015-01-01"), "birth_date": pd.Timestamp("1980-01-01"),
                  "marketing_opt_out": False, "consent_email": True, "consent_push": True, "consent_sms": False,
                  "consent_call": False}).to_parquet(root / "raw" / "customers.parquet", index=False)
    months = pd.date_range("2025-12-31", periods=12, freq="ME")
    pd.DataFrame({"customer_id": np.repeat(ids, 12), "snapshot_date": np.tile(months, n_customers),
                  "product_id": "current_account", "balance": 1000.0}).to_parquet(
        root / "raw" / "holdings.parquet", index=False)
    busiest = int(np.bincount(who).argmax())
    return {"decisions": n, "customers": n_customers, "feedback": len(feedback), "fill_seconds": seconds,
            "db_mb": (root / "events.db").stat().st_size / 2**20, "customer": customer_id(busiest),
            "customer_decisions": int(np.bincount(who).max())}


def pages(n: int, customer: str) -> dict[str, str]:
    deep = max(1, n - 990_000) if n > 990_000 else max(1, n // 100)
    return {
        "decisions, first page": "/decisions",
        "decisions, search channel + flag": "/decisions?channel=push&flag=exploring",
        "decisions, search one week": "/decisions?from=2026-06-01&to=2026-06-07",
        "decisions, deep page": f"/decisions?before={deep}",
        "overview": "/",
        "customer portrait": f"/customer?id={customer}",
    }


def measure(root: Path, urls: dict[str, str], repeats: int) -> dict[str, float]:
    with warnings.catch_warnings():  # Starlette 1.x asks for httpx2 in its test client; httpx works the same here
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    client = TestClient(console_app(Paths(root), api_key=""))
    out = {}
    for name, url in urls.items():
        first = client.get(url)
        if first.status_code != 200:
            raise SystemExit(f"{url}: {first.status_code}")
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            client.get(url)
            times.append(time.perf_counter() - started)
        out[name] = statistics.median(times)
        print(f"  {name}: {1000 * out[name]:.1f} ms", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decisions", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    from results import Run

    run = Run("bench_console")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    logs, times = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, n in (("small", args.small), ("large", args.decisions)):
            root = Path(tmp) / label
            logs[label] = fill(root, n, args.seed)
            print(f"{n:,} decisions written in {logs[label]['fill_seconds']:.1f} s "
                  f"({logs[label]['db_mb']:.0f} MiB); pages:", flush=True)
            times[label] = measure(root, pages(n, logs[label]["customer"]), args.repeats)
    small, large = logs["small"], logs["large"]
    run.figures.update({"logs": logs, "seconds": times, "target_seconds": TARGET_SECONDS})
    rows = [[name, f"{1000 * times['small'][name]:.1f}", f"{1000 * times['large'][name]:.1f}",
             f"{times['large'][name] / times['small'][name]:.1f} x"] for name in times["small"]]
    run.table(f"Page time, median of {args.repeats} (ms): {small['decisions']:,} against {large['decisions']:,} "
              "decisions", ["page", f"{small['decisions']:,} decisions", f"{large['decisions']:,} decisions",
                            "ratio"], rows, align="lrrr")
    worst = max(times["large"], key=times["large"].get)
    met = times["large"][worst] < TARGET_SECONDS
    run.note(f"Slowest page at {large['decisions']:,} decisions: {worst}, {1000 * times['large'][worst]:.0f} ms "
             f"(target < {1000 * TARGET_SECONDS:.0f} ms: {'met' if met else 'not met'}). The large log: "
             f"{large['feedback']:,} feedback rows, {large['customers']:,} customers, {large['db_mb']:,.0f} MiB, "
             f"written in {large['fill_seconds']:.0f} s; the portrait's customer has "
             f"{large['customer_decisions']} decisions.")
    print(json.dumps(run.figures["seconds"], indent=1), flush=True)
    run.finish()


if __name__ == "__main__":
    main()
