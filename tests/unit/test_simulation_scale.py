"""The fast simulator's output contract (schema, determinism, id encoding) and the calibration marginals."""

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from nextbest.io import read_raw
from nextbest.settings import Paths
from nextbest.simulation.bank import BankSpec, _Bank
from nextbest.simulation.columns import running_ids
from nextbest.simulation.marginals import SANTANDER, marginals, markdown_table
from nextbest.simulation.write import generate_to
from tests.conftest import END

JAN, FEB, MAR = pd.Timestamp("2026-01-31"), pd.Timestamp("2026-02-28"), pd.Timestamp("2026-03-31")


@pytest.fixture
def holdings():
    """A: adds a direct debit in Feb. B: closes its card in Mar. C: leaves in Feb, is back in Mar.
    D: joins in Feb, adds an e-account in Mar."""
    rows = [
        ("A", JAN, "current_account"), ("B", JAN, "current_account"), ("B", JAN, "credit_card"),
        ("C", JAN, "e_account"),
        ("A", FEB, "current_account"), ("A", FEB, "direct_debit"), ("B", FEB, "current_account"),
        ("B", FEB, "credit_card"), ("D", FEB, "current_account"),
        ("A", MAR, "current_account"), ("A", MAR, "direct_debit"), ("B", MAR, "current_account"),
        ("D", MAR, "current_account"), ("D", MAR, "e_account"), ("C", MAR, "e_account"),
    ]
    return pd.DataFrame(rows, columns=["customer_id", "snapshot_date", "product_id"])


def test_marginals_by_hand(holdings):
    m = marginals(holdings, products=["current_account", "e_account", "direct_debit", "credit_card", "mortgage"])
    assert m["snapshots"] == 3 and m["clients"] == 4  # A, B, C, D in March
    assert m["product_share"] == {"current_account": 0.75, "e_account": 0.5, "direct_debit": 0.25,
                                  "credit_card": 0.0, "mortgage": 0.0}
    assert list(m["product_share"])[0] == "current_account"  # highest first
    assert m["products_per_client"] == {1: 0.5, 2: 0.5}  # B, C hold 1; A, D hold 2
    assert m["one_or_two_share"] == 1.0
    # Jan -> Feb: of A, B, C, A adds (1/3) and C leaves (1/3). Feb -> Mar: of A, B, D, D adds (1/3),
    # nobody leaves; C coming back is not an existing client adding.
    assert m["monthly_add_rate"] == pytest.approx(1 / 3)
    assert m["monthly_churn_rate"] == pytest.approx(1 / 6)


def test_marginals_read_categorical_ids_the_same(holdings):
    cat = holdings.astype({"customer_id": "category", "product_id": "category"})
    assert marginals(cat) == marginals(holdings)


def test_marginals_single_snapshot_and_empty(holdings):
    m = marginals(holdings[holdings.snapshot_date == JAN])
    assert math.isnan(m["monthly_add_rate"]) and math.isnan(m["monthly_churn_rate"])
    assert m["products_per_client"] == {1: 2 / 3, 2: 1 / 3}
    with pytest.raises(ValueError, match="empty"):
        marginals(holdings.iloc[:0])


def test_markdown_table_puts_ours_beside_santander(holdings):
    table = markdown_table(marginals(holdings))
    assert "| `current_account` | 75.0% | 65.6% (current account, `ind_cco_fin_ult1`) |" in table
    assert f"~{100 * SANTANDER['monthly_add_rate']:.1f}%" in table
    assert "(no one-to-one equivalent) | | 5.2% (taxes, `ind_reca_fin_ult1`)" in table


def test_customer_ids_are_a_fast_take_of_the_id_column(catalogue):
    bank = _Bank(catalogue, BankSpec(n_customers=123, n_months=4, seed=1, end=END))
    idx = np.array([0, 122, 5, 5, 77])
    assert bank.customer_ids(idx).to_pylist() == ["C0000001", "C0000123", "C0000006", "C0000006", "C0000078"]
    assert bank.customer_ids(idx).equals(bank.ids.take(idx))
    assert bank.customer_ids(np.array([], dtype=np.int64)).to_pylist() == []
    assert running_ids("O", 7, 3, width=9).to_pylist() == ["O000000007", "O000000008", "O000000009"]
    assert running_ids("T", 98, 3).to_pylist() == ["T98", "T99", "T100"]


def _generate(root, catalogue, seed=3):
    paths = Paths.from_workdir(root).ensure()
    return paths, generate_to(paths, catalogue, BankSpec(n_customers=400, n_months=5, seed=seed, end=END))


def test_generate_to_writes_valid_deterministic_tables(tmp_path, catalogue):
    a, rows = _generate(tmp_path / "a", catalogue)
    b, _ = _generate(tmp_path / "b", catalogue)
    raw = read_raw(a.raw, catalogue.ids)  # validates every raw table against nextbest.schema
    for name, df in raw.items():
        assert len(df) == rows[f"raw/{name}"]
        # String columns read back as plain str values, never categoricals (the schema needs that).
        assert not any(isinstance(t, pd.CategoricalDtype) for t in df.dtypes), name
        for col in df.columns[df.dtypes.eq(object)]:
            assert df[col].dropna().map(type).eq(str).all(), (name, col)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*.parquet"))
    assert {str(f.with_suffix("")) for f in files} == set(rows)
    for f in files:
        assert pq.read_schema(a.root / f) == pq.read_schema(b.root / f)
        pd.testing.assert_frame_equal(pd.read_parquet(a.root / f), pd.read_parquet(b.root / f))


def test_customer_ids_beyond_32_bit_offsets_come_in_chunks(catalogue, monkeypatch):
    import nextbest.simulation.columns as columns_module

    bank = _Bank(catalogue, BankSpec(n_customers=50, n_months=4, seed=1, end=END))
    monkeypatch.setattr(columns_module, "MAX_STRING_BYTES", 8 * 4)  # 3 ids of 8 bytes per chunk
    idx = np.arange(10)[::-1]
    ids = bank.customer_ids(idx)
    assert ids.num_chunks == 4 and ids.to_pylist() == bank.ids.take(idx).to_pylist()
