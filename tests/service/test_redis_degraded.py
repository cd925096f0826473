"""The service on the Redis online store, and what it does when Redis dies mid-run."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

from tests.redis_server import redis_server
from tests.servers import copy_workdir, run_cli, served

pytestmark = pytest.mark.slow


def test_redis_store_serves_and_a_dead_redis_degrades_with_rules_kept(quickstart_workdir, tmp_path):
    wd = copy_workdir(quickstart_workdir, tmp_path / "wd")
    profile = pd.read_parquet(wd / "features" / "customer_profile.parquet")
    profile = profile[profile.event_timestamp == profile.event_timestamp.max()].set_index("customer_id")
    reachable = list(profile[(profile.marketing_opt_out == 0) & (profile.consent_email == 1)].index[:10])
    opted_out = list(profile[profile.marketing_opt_out == 1].index[:3])
    with redis_server() as redis:
        for args in (("features", "apply", "--online-store", "redis", "--redis-url", redis.url),
                     ("features", "materialize")):
            proc = run_cli(*args, workdir=wd)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        with served(wd) as (base, _):
            def ask(cid, channel="email"):
                r = httpx.post(f"{base}/recommend", json={"customer_id": cid, "channel": channel}, timeout=30)
                assert r.status_code == 200, r.text
                return r.json()

            healthy = [ask(c) for c in reachable]
            assert all(not j["degraded"] and j["offers"] for j in healthy)
            redis.stop()  # killed mid-run
            for cid in reachable:
                j = ask(cid)
                assert j["degraded"] is True and j["offers"], j
                assert all(o["propensity"] == 1.0 for o in j["offers"])
            for cid in opted_out:
                j = ask(cid, "mobile_app")
                assert j["degraded"] is True and j["offers"] == [] and j["suppressed_by"] == "marketing_opt_out"
            assert httpx.get(f"{base}/readyz").status_code == 200  # degraded, not down
