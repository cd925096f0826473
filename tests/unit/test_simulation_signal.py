"""How much of intent the synthetic bank lets a model see: needs drive acquisitions more than the
unobserved taste does, they leave traces in the money flows, and the calibration keeps the
marginals of the reference bank (the one calibrated beside Santander's)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from nextbest.simulation.bank import SIGNALS, BankSpec, _Bank, simulate_frames
from tests.conftest import END

OBSERVABLE, REFERENCE = SIGNALS["observable"], SIGNALS["reference"]


def _acquisitions(catalogue, months: int = 8, **knobs) -> dict:
    """Per product, the taste-free intent and whether an open product was acquired, pooled over
    the months; the share of clients holding each product as the window opens; the add rate."""
    bank = _Bank(catalogue, BankSpec(n_customers=10_000, n_months=months, seed=5, end=END, **knobs))
    clients = bank.held.any(1)
    shares = bank.held[clients].mean(0)
    scores, labels, adds = [[] for _ in bank.products], [[] for _ in bank.products], []
    for t in range(months):
        held, clients = bank.held.copy(), bank.held.any(1)
        open_ = bank.eligible(t) & ~held & clients[:, None]
        known = bank.intent(t, taste=False)
        bank.step(t)
        acquired = bank.held & ~held
        adds.append(acquired[clients].any(1).mean())
        for j in range(bank.P):
            scores[j].append(known[open_[:, j], j])
            labels[j].append(acquired[open_[:, j], j])
    aucs = []
    for j in range(bank.P):
        y, s = np.concatenate(labels[j]), np.concatenate(scores[j])
        if y.sum() >= 10:
            aucs.append(roc_auc_score(y, s))
    return {"auc": float(np.mean(aucs)), "shares": shares, "add_rate": float(np.mean(adds)),
            "products": bank.products}


@pytest.fixture(scope="module")
def observable_bank(catalogue):
    return _acquisitions(catalogue, **OBSERVABLE)


@pytest.fixture(scope="module")
def reference_bank(catalogue):
    return _acquisitions(catalogue, **REFERENCE)


def test_what_a_bank_can_know_ranks_who_acquires_a_product(observable_bank, reference_bank):
    """Everything but the taste (needs, life events, tenure, loans) ranks a product's acquirers
    well on the observable bank; on the reference bank the taste dominates and it barely does."""
    assert observable_bank["auc"] >= 0.8, observable_bank["auc"]
    assert reference_bank["auc"] <= 0.66, reference_bank["auc"]


def test_the_calibration_keeps_the_reference_marginals(observable_bank, reference_bank):
    """The observable bank's stronger needs are shifted per product so that each product's share of clients and the
    monthly add rate stay those of the reference bank."""
    ours, ref = observable_bank["shares"], reference_bank["shares"]
    off = {p: (round(a, 3), round(b, 3)) for p, a, b in zip(observable_bank["products"], ours, ref)
           if abs(a - b) > 0.01 + 0.25 * b}
    assert not off, off
    assert abs(observable_bank["add_rate"] / reference_bank["add_rate"] - 1) < 0.15, (observable_bank["add_rate"],
                                                                                  reference_bank["add_rate"])


def test_the_calibration_does_not_depend_on_the_banks_size_or_seed(catalogue):
    small = _Bank(catalogue, BankSpec(n_customers=500, n_months=2, seed=1, end=END, **OBSERVABLE))
    large = _Bank(catalogue, BankSpec(n_customers=5_000, n_months=2, seed=2, end=END, **OBSERVABLE))
    np.testing.assert_array_equal(small.base, large.base)
    np.testing.assert_array_equal(small.weights, large.weights)


def _traces(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per client: spend on discretionary categories against everyday ones, other income paid in,
    and the latent needs."""
    tx = frames["raw/transactions"].drop_duplicates("txn_id")
    by_kind = tx.pivot_table(index="customer_id", columns="category", values="amount", aggfunc="sum", fill_value=0)
    latent = frames["truth/latent"].set_index("customer_id")
    out = pd.DataFrame({
        "discretionary": by_kind[["travel", "entertainment", "shopping"]].sum(1)
        / by_kind[["groceries", "utilities"]].sum(1).clip(lower=1),
        "everyday": by_kind[["groceries", "utilities"]].sum(1) / by_kind.sum(1).clip(lower=1),
        "paid_in": by_kind.get("transfer_in", 0) > 0,
        "salaried": by_kind.get("salary", 0) > 0,
    }).join(latent, how="inner")
    return out[(by_kind.sum(1) > 0).reindex(out.index)]


@pytest.mark.parametrize("knobs, strong", [(OBSERVABLE, True), (REFERENCE, False)])
def test_needs_leave_traces_in_the_money_flows(catalogue, knobs, strong):
    """Discretionary spending follows the credit need, the everyday share of spending the everyday
    need, income paid in from elsewhere (by clients paid no salary here) the need for a salary
    account, and the cushion kept on accounts the saving need; without the traces
    (the reference bank) the first and last do not."""
    frames = simulate_frames(catalogue, BankSpec(n_customers=3_000, n_months=4, seed=9, end=END, **knobs))
    t = _traces(frames)
    credit = t["discretionary"].corr(t["need_credit"], method="spearman")
    everyday = t["everyday"].corr(t["need_everyday"], method="spearman")
    elsewhere = t[~t["salaried"]]  # a salary paid here says nothing of income paid in from elsewhere
    income = elsewhere["paid_in"].astype(float).corr(elsewhere["need_income"], method="spearman")
    if strong:
        assert credit > 0.6 and everyday > 0.3 and income > 0.2, (credit, everyday, income)
        holdings = frames["raw/holdings"]
        last = holdings[holdings["snapshot_date"] == holdings["snapshot_date"].max()]
        accounts = last[last["product_id"].isin(["current_account", "e_account"])]
        income = frames["raw/customers"].set_index("customer_id")["income"]
        cushion = (accounts.groupby("customer_id")["balance"].sum() / income).dropna()
        need = frames["truth/latent"].set_index("customer_id")["need_saving"].reindex(cushion.index)
        saving = cushion.corr(need, method="spearman")
        assert saving > 0.5, saving
    else:
        assert abs(credit) < 0.1 and abs(income) < 0.1, (credit, income)


def test_generate_makes_the_observable_bank_by_default_and_the_reference_one_on_request(tmp_path, catalogue):
    from typer.testing import CliRunner

    from nextbest.cli import app

    def generate(*args):
        return CliRunner().invoke(app, ["generate", "--customers", "300", "--months", "4", "--end", "2026-09-30",
                                        "--seed", "3", *args])

    bad = generate("--signal", "loud", "--workdir", str(tmp_path / "bad"))
    assert bad.exit_code == 2 and "--signal must be one of observable, reference, got 'loud'" in bad.output
    assert not (tmp_path / "bad" / "raw" / "holdings.parquet").exists()
    for signal in ("reference", "observable", None):
        name = signal or "default"
        result = generate(*(("--signal", signal) if signal else ()), "--workdir", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        written = pd.read_parquet(tmp_path / name / "raw" / "transactions.parquet")
        spec = BankSpec(n_customers=300, n_months=4, seed=3, end=pd.Timestamp("2026-09-30"),
                        **SIGNALS[signal or "observable"])
        expected = simulate_frames(catalogue, spec)["raw/transactions"]
        np.testing.assert_allclose(written["amount"].to_numpy(), expected["amount"].to_numpy())
    # The default bank is the observable one, named or not.
    assert {k: getattr(BankSpec(), k) for k in OBSERVABLE} == OBSERVABLE
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "default" / "raw" / "transactions.parquet")["amount"],
                                  pd.read_parquet(tmp_path / "observable" / "raw" / "transactions.parquet")["amount"])
