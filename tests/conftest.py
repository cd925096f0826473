"""Shared fixtures: the product catalogue and a small simulated bank (in memory)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from nextbest.config import load_catalogue
from nextbest.simulation.bank import BankSpec, simulate_frames

# Every generated bank ends at a fixed month, so the suite runs on the same banks whatever the date.
END = pd.Timestamp("2026-06-30")
# The quickstart bank of the service, end-to-end and closed-loop tests: the bank their figures were set on.
QUICKSTART_END = pd.Timestamp("2026-11-30")
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT / "tests" / "data"
# Every tenth row of the real UCI bank-marketing file (CC BY 4.0; attribution in its README).
UCI_SAMPLE = DATA / "uci-bank-marketing" / "bank-additional-sample.csv"


@pytest.fixture(scope="session")
def catalogue():
    return load_catalogue()


@pytest.fixture(scope="session")
def small_bank(catalogue):
    """2,000 customers x 10 months, fixed seed and end date."""
    return simulate_frames(catalogue, BankSpec(n_customers=2000, n_months=10, seed=7, end=END))


@pytest.fixture(scope="session")
def raw(small_bank):
    return {k.split("/", 1)[1]: v for k, v in small_bank.items() if k.startswith("raw/")}


@pytest.fixture(scope="session")
def feast_bank(tmp_path_factory, catalogue):
    """A small bank through features, `feast apply` and materialisation (no models yet)."""
    from nextbest.feature_repo import store as feast_store
    from nextbest.features.pipeline import build_features_to
    from nextbest.settings import Paths
    from nextbest.simulation.write import generate_to

    paths = Paths.from_workdir(tmp_path_factory.mktemp("feast_bank")).ensure()
    generate_to(paths, catalogue, BankSpec(n_customers=1200, n_months=8, seed=11, end=END))
    build_features_to(paths, catalogue)
    feast_store.apply(paths)
    feast_store.materialize(paths)
    return paths


@pytest.fixture(scope="session")
def quickstart_workdir(tmp_path_factory):
    """A tiny `nextbest quickstart` (bank, features, Feast, both models registered as champion).

    Shared by the service and end-to-end tests; a test that changes the work dir must copy it.
    """
    import os
    from pathlib import Path

    from tests.servers import run_cli

    reuse = os.environ.get("NEXTBEST_TEST_QUICKSTART")  # a prebuilt quickstart work dir, for quick local runs
    if reuse:
        return Path(reuse).resolve()
    wd = tmp_path_factory.mktemp("quickstart")
    proc = run_cli("quickstart", "--customers", "800", "--months", "8", "--end", str(QUICKSTART_END.date()),
                   workdir=wd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (wd / "quickstart.log").write_text(proc.stdout + proc.stderr)
    return wd
