"""Shared fixtures: the product catalogue and a small simulated bank (in memory)."""

from __future__ import annotations

import pandas as pd
import pytest

from nextbest.config import load_catalogue
from simulation.bank import BankSpec, simulate_frames

END = pd.Timestamp("2026-06-30")


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
