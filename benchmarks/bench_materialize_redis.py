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
import io
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.bench_materialize import read_latencies, rss_gb, simulate, window_rows
from nextbest.constants import CUSTOMER_ID, NBP_FEATURE_SERVICE
from nextbest.feature_repo import store as feast_store
from nextbest.feature_repo.redis_store import RedisTarget
from nextbest.features.build import PROFILE_VIEW, VIEWS
from nextbest.settings import Paths
from tests.redis_server import redis_server


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
        print()
        print(f"materialise into Redis ({n_features} features in {len(VIEWS)} views; a row = one customer in one "
              f"view){'; redis-server ' + ' '.join(redis_args) if redis_args else ''}")
        print(f"{'path':<44}{'customers':>11}{'rows':>11}{'seconds':>10}{'rows/s':>11}")
        print(f"{'stock Feast (materialize, RedisOnlineStore)':<44}{customers:>11,}{rows:>11,}{stock_s:>10.2f}"
              f"{stock_rate:>11,.0f}")
        print(f"{'ours (redis_store.write_batches)':<44}{customers:>11,}{fast_rows:>11,}{fast_s:>10.2f}"
              f"{fast_rate:>11,.0f}")
        print(f"speed-up: {fast_rate / stock_rate:.1f}x; Redis holds {keys:,} customer hashes, "
              f"{memory_mb:,.0f} MB per database")
        print(f"same keys, fields and bytes as stock Feast: {'yes' if differ == 0 else f'NO ({differ:,} differ)'}")
        print()
        print(f"online read, 1 customer, {NBP_FEATURE_SERVICE} ({n_features} features), {args.reads} reads, ms")
        print(f"{'store':<44}{'p50':>8}{'p99':>8}")
        print(f"{'Redis (Feast RedisOnlineStore)':<44}{np.percentile(redis_ms, 50):>8.2f}"
              f"{np.percentile(redis_ms, 99):>8.2f}")
        print(f"{'SQLite (ours)':<44}{np.percentile(sqlite_ms, 50):>8.2f}{np.percentile(sqlite_ms, 99):>8.2f}")
        print(f"same values from Redis and SQLite for {len(sample)} customers: {'yes' if same else 'NO'}")
        print(f"peak RSS of this process: {rss_gb():.2f} GB")
        if differ or not same:
            raise SystemExit("the stores disagree")
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
