"""Materialising into Redis: Feast's stock path beside ours, against a real redis-server.

    python benchmarks/bench_materialize_redis.py [--customers 20000] [--months 3] [--reads 1000]
                                                 [--redis-option=--hash-max-listpack-entries=128 ...]

1. Simulates a bank of `--customers` customers through the project's pipeline (simulation ->
   features -> `feast apply`).
2. Starts a private `redis-server` (from PATH, no persistence) and materialises the latest
   snapshot twice, into two databases of it: with stock Feast (`FeatureStore.materialize` over
   the views' TTL, Feast's `RedisOnlineStore.online_write_batch`) and with our path
   (`nextbest.feature_repo.store.materialize`, `nextbest.feature_repo.redis_store.write_batches`): rows/s of each
   and the ratio. Both databases must then hold exactly the same keys, fields and bytes.
3. Times one-customer online reads (`get_online_features` with the next-best-product feature
   service, then `to_dict()`) from Redis and from the project's SQLite store: p50 and p99, and
   checks that both serve the same values.

A "row" is one customer in one feature view (what `materialize` returns); each row carries that
view's features (~250 across the four views). Redis and this process share the machine's cores.
Feast keeps all of a customer's features in one hash (~250 fields): with redis-server's
built-in `hash-max-listpack-entries 512` that hash is a listpack, which Redis searches field by
field, and Redis's own time dominates our path; with 128 (upstream redis.conf) it is a hash table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench_materialize import read_latencies, rss_gb, simulate, window_rows
from nextbest.constants import CUSTOMER_ID, NBP_FEATURE_SERVICE
from nextbest.feature_repo import store as feast_store
from nextbest.feature_repo.redis_store import RedisTarget
from nextbest.features.build import PROFILE_VIEW, VIEWS
from nextbest.settings import Paths

REPO_ROOT = Path(__file__).resolve().parents[1]


def redis_server(args):
    """The test suite's private `redis-server` (tests/redis_server.py, loaded from the checkout)."""
    spec = importlib.util.spec_from_file_location("redis_server", REPO_ROOT / "tests" / "redis_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.redis_server(args=args)


def _redis_choice(port: int, db: int) -> feast_store.OnlineStoreChoice:
    return feast_store.OnlineStoreChoice("redis", RedisTarget.from_url(f"redis://127.0.0.1:{port}/{db}"))


def _same_hashes(client_a, client_b) -> tuple[int, int]:
    """(keys, keys whose hash differs) between two databases, compared field by field."""
    keys_a, keys_b = set(client_a.scan_iter(count=5000)), set(client_b.scan_iter(count=5000))
    if keys_a != keys_b:
        return len(keys_a), len(keys_a ^ keys_b)
    keys = sorted(keys_a)
    differ = 0
    for at in range(0, len(keys), 1000):
        part = keys[at:at + 1000]
        pipes = []
        for client in (client_a, client_b):
            with client.pipeline(transaction=False) as pipe:
                for key in part:
                    pipe.hgetall(key)
                pipes.append(pipe.execute())
        differ += sum(a != b for a, b in zip(*pipes))
    return len(keys), differ


def main() -> None:
    import redis

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000, help="simulated customers")
    parser.add_argument("--months", type=int, default=3, help="monthly snapshots in the feature tables")
    parser.add_argument("--reads", type=int, default=1000, help="online reads timed per store")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the work directories here")
    parser.add_argument("--redis-option", action="append", default=[],
                        help="a redis-server option, e.g. --redis-option=--hash-max-listpack-entries=128 "
                             "(repeatable; NAME=VALUE is split in two)")
    args = parser.parse_args()
    redis_args = [part for option in args.redis_option for part in option.split("=", 1)]

    from results import Run

    run = Run("bench_materialize_redis")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_materialize_redis_"))
    try:
        ours = Paths(root / "ours").ensure()
        t = time.perf_counter()
        simulate(ours, args.customers, args.months)
        feast_store.apply(ours)
        sqlite_rows = feast_store.materialize(ours)  # the SQLite store, for the read comparison
        sqlite_paths = Paths(root / "sqlite")
        shutil.copytree(ours.root, sqlite_paths.root)
        feast_store.apply(sqlite_paths)
        print(f"data: simulated, featurised and applied {args.customers:,} customers x {args.months} months "
              f"in {time.perf_counter() - t:.1f}s")

        with redis_server(args=redis_args) as server:
            # (a) stock Feast into database 1, from its own copy of the work dir.
            stock_paths = Paths(root / "stock")
            shutil.copytree(ours.root, stock_paths.root)
            feast_store.apply(stock_paths, _redis_choice(server.port, 1))
            stock = feast_store.open_store(stock_paths)
            end = feast_store.latest_snapshot(stock_paths)
            end = end.tz_localize("UTC") if end.tzinfo is None else end
            ttl = stock.get_feature_view(PROFILE_VIEW).ttl
            rows, customers = window_rows(stock_paths, stock, end)
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                stock.materialize(start_date=(end - ttl).to_pydatetime(),
                                  end_date=(end + timedelta(seconds=1)).to_pydatetime())
            stock_s = time.perf_counter() - t

            # (b) ours into database 0.
            feast_store.apply(ours, _redis_choice(server.port, 0))
            t = time.perf_counter()
            fast_rows = feast_store.materialize(ours)
            fast_s = time.perf_counter() - t
            assert fast_rows == rows == sqlite_rows, (fast_rows, rows, sqlite_rows)
            db0, db1 = redis.Redis(port=server.port, db=0), redis.Redis(port=server.port, db=1)
            keys, differ = _same_hashes(db0, db1)
            memory_mb = db0.info("memory")["used_memory"] / 1e6

            # (c) one-customer reads, Redis beside SQLite.
            ids = pc.unique(pq.read_table(ours.features / f"{PROFILE_VIEW}.parquet", columns=[CUSTOMER_ID])
                            .column(0)).to_pylist()
            sample = [ids[i] for i in np.random.default_rng(1).choice(len(ids), min(200, len(ids)), replace=False)]
            redis_ms, redis_answers = read_latencies(feast_store.open_store(ours), sample, args.reads)
            sqlite_ms, sqlite_answers = read_latencies(feast_store.open_store(sqlite_paths), sample, args.reads)
            same = redis_answers == sqlite_answers
            n_features = len(redis_answers[0]) - 1

        stock_rate, fast_rate = rows / stock_s, fast_rows / fast_s
        title = (f"materialise into Redis ({n_features} features in {len(VIEWS)} views; a row = one customer in one "
                 f"view){'; redis-server ' + ' '.join(redis_args) if redis_args else ''}")
        materialised = [
            ["stock Feast (materialize, RedisOnlineStore)", f"{customers:,}", f"{rows:,}", f"{stock_s:.2f}",
             f"{stock_rate:,.0f}"],
            ["ours (redis_store.write_batches)", f"{customers:,}", f"{fast_rows:,}", f"{fast_s:.2f}",
             f"{fast_rate:,.0f}"]]
        widths = [-44, 11, 11, 10, 11]
        line = lambda cells: "".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cells, widths))  # noqa: E731
        speed = (f"speed-up: {fast_rate / stock_rate:.1f}x; Redis holds {keys:,} customer hashes, "
                 f"{memory_mb:,.0f} MB per database")
        same_bytes = ("same keys, fields and bytes as stock Feast: "
                      f"{'yes' if differ == 0 else f'NO ({differ:,} differ)'}")
        reads_title = f"online read, 1 customer, {NBP_FEATURE_SERVICE} ({n_features} features), {args.reads} reads, ms"
        reads = [["Redis (Feast RedisOnlineStore)", f"{np.percentile(redis_ms, 50):.2f}",
                  f"{np.percentile(redis_ms, 99):.2f}"],
                 ["SQLite (ours)", f"{np.percentile(sqlite_ms, 50):.2f}", f"{np.percentile(sqlite_ms, 99):.2f}"]]
        same_line = f"same values from Redis and SQLite for {len(sample)} customers: {'yes' if same else 'NO'}"
        print()
        print(title)
        print(line(["path", "customers", "rows", "seconds", "rows/s"]))
        for row in materialised:
            print(line(row))
        print(speed)
        print(same_bytes)
        print()
        print(reads_title)
        print(f"{'store':<44}{'p50':>8}{'p99':>8}")
        for store_name, p50, p99 in reads:
            print(f"{store_name:<44}{p50:>8}{p99:>8}")
        print(same_line)
        print(f"peak RSS of this process: {rss_gb():.2f} GB")
        if differ or not same:
            raise SystemExit("the stores disagree")
        run.figures.update({
            "features": n_features, "views": len(VIEWS), "customers": customers, "rows": rows,
            "redis_options": redis_args, "stock_seconds": stock_s, "ours_seconds": fast_s,
            "stock_rows_per_s": stock_rate, "ours_rows_per_s": fast_rate, "speedup": fast_rate / stock_rate,
            "keys": keys, "redis_memory_mb": memory_mb, "hashes_differing": differ,
            "read_ms": {"redis": {"p50": float(np.percentile(redis_ms, 50)),
                                  "p99": float(np.percentile(redis_ms, 99))},
                        "sqlite": {"p50": float(np.percentile(sqlite_ms, 50)),
                                   "p99": float(np.percentile(sqlite_ms, 99))}},
            "same_values": same})
        run.table(title[0].upper() + title[1:], ["path", "customers", "rows", "seconds", "rows/s"], materialised)
        run.note(speed)
        run.note(same_bytes)
        run.table(reads_title[0].upper() + reads_title[1:], ["store", "p50", "p99"], reads)
        run.note(same_line)
        run.write()
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
