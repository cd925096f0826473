"""`nextbest warm-start` on the quickstart bank as a user runs it: the offer history rescored by the
champion, the posterior saved, the service starting from it, and a second run refused."""

from __future__ import annotations

import pytest

from tests.servers import copy_workdir, loaded_engine, run_cli

pytestmark = pytest.mark.slow


def test_warm_start_from_the_offer_history(quickstart_workdir, tmp_path):
    wd = copy_workdir(quickstart_workdir, tmp_path / "wd")
    proc = run_cli("warm-start", workdir=wd)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 0, out[-3000:]
    assert "raw/offers.parquet:" in out.replace(" ", "")  # the console wraps long paths
    assert "answered offers" in out and "learnt from" in out
    engine = loaded_engine(wd)
    from nextbest.config import load_bandit

    cfg = load_bandit(catalogue=engine.catalogue)
    prior_intercept = cfg.prior.intercept
    # The quickstart's offer history is mostly declined: the warm posterior expects less than the prior.
    assert engine.policy.posterior.n_updates > 100
    assert engine.policy.posterior.mean[0] < prior_intercept
    again = run_cli("warm-start", workdir=wd)
    assert again.returncode == 2 and "--force" in " ".join(again.stderr.split())
