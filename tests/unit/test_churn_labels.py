"""Churn as the bank defines it: holds nothing (derived), a product closed, or the bank's own label table."""

from __future__ import annotations

import pandas as pd
import pytest

from nextbest.config import ConfigError, TrainConfig, load_catalogue, load_train_config
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.schema import SchemaError
from nextbest.training.datasets import churn_labels
from nextbest.training.label_table import read_label_table

MONTHS = pd.date_range("2026-01-31", periods=6, freq="ME")
PRODUCTS = ["current_account", "credit_card", "savings_account"]


def _holdings(rows: dict[str, dict[str, list[int]]]) -> pd.DataFrame:
    """customer -> product -> months (indexes into MONTHS) held."""
    out = [(c, MONTHS[m], p, 100.0) for c, held in rows.items() for p, months in held.items() for m in months]
    return pd.DataFrame(out, columns=[CUSTOMER_ID, "snapshot_date", "product_id", "balance"])


@pytest.fixture
def bank():
    holdings = _holdings({
        "A": {"current_account": [0, 1, 2, 3, 4, 5], "credit_card": [0, 1]},  # closes the card after month 1
        "B": {"current_account": [0, 1, 2]},                                  # leaves after month 2
        "C": {"current_account": [0, 1, 2, 3, 4, 5], "savings_account": [2, 3, 4, 5]},  # stays, opens savings
    })
    customers = pd.DataFrame({CUSTOMER_ID: ["A", "B", "C"]})
    interactions = pd.DataFrame({CUSTOMER_ID: pd.Series([], dtype=str),
                                 "event_date": pd.Series([], dtype="datetime64[ns]")})
    return customers, holdings, interactions


def _labels(df: pd.DataFrame) -> dict[tuple[str, int], int]:
    month = {t: i for i, t in enumerate(MONTHS)}
    return {(c, month[t.tz_localize(None)]): int(v) for c, t, v in df[[CUSTOMER_ID, EVENT_TIMESTAMP, "label_churn"]]
            .itertuples(index=False)}


def test_holds_nothing_is_a_client_with_no_product_within_the_horizon(bank):
    got = _labels(churn_labels(*bank, PRODUCTS, horizon=1))
    assert got[("B", 2)] == 1 and got[("B", 1)] == 0
    assert got[("A", 1)] == 0  # closing the card leaves the current account: not churn
    assert ("B", 3) not in got  # no longer a client


def test_product_closed_counts_a_watched_product_held_now_and_gone_within_the_horizon(bank):
    got = _labels(churn_labels(*bank, PRODUCTS, horizon=1, closed=["credit_card"]))
    assert got == {("A", 0): 0, ("A", 1): 1}  # only holders of the card are rows
    any_product = _labels(churn_labels(*bank, PRODUCTS, horizon=2, closed=[]))
    assert any_product[("A", 0)] == 1  # the card closes within two months
    assert any_product[("B", 1)] == 1 and any_product[("C", 1)] == 0  # opening a product is not closing one


def _table(tmp_path, rows, name="labels.csv") -> object:
    path = tmp_path / name
    pd.DataFrame(rows, columns=["customer_id", "snapshot_date", "label"]).to_csv(path, index=False)
    return path


def test_a_label_table_learns_from_the_snapshot_at_or_before_its_date(tmp_path):
    path = _table(tmp_path, [["A", "2026-03-31", 1], ["B", "2026-03-15", "0"], ["C", "2026-04-30", "yes"],
                             ["ZZ", "2026-03-31", 1], ["A", "2025-12-31", 0], ["B", "2026-09-30", 1]])
    reported = []
    got = read_label_table(path, pd.Series(["A", "B", "C"]), MONTHS, report=reported.append)
    assert got[CUSTOMER_ID].tolist() == ["A", "B", "C"]
    assert [t.date().isoformat() for t in got[EVENT_TIMESTAMP]] == ["2026-03-31", "2026-02-28", "2026-04-30"]
    assert str(got[EVENT_TIMESTAMP].dt.tz) == "UTC"
    assert got["label_churn"].tolist() == [1, 0, 1]
    assert len(reported) == 3
    assert "1 of 6 label rows name customers not in raw/customers.parquet: left out (first: row 3, customer_id 'ZZ'" \
        in reported[0]
    assert "1 of 6 label rows are dated before the bank's first snapshot (2026-01-31)" in reported[1]
    assert "1 of 6 label rows are dated more than 31 days after the bank's last snapshot (2026-06-30): left out " \
           "(first: row 5" in reported[2]


@pytest.mark.parametrize("rows, match", [
    ([["A", "2026-03-31", 2]], r"labels.csv: column 'label', row 0: value '2' is not of type bool"),
    ([["A", "2026-03-31", 1], ["B", "31/31/2026", 0]], r"column 'snapshot_date', row 1: value '31/31/2026'"),
    ([["A", "2026-03-31", 1], ["A", "2026-03-31", 0]], r"row 1 repeats customer_id 'A' at snapshot_date 2026-03-31"),
    ([["A", "2026-03-31", 1], ["A", "2026-04-10", 0]], r"row 1 .* falls on the same bank snapshot \(2026-03-31\)"),
    ([["A", "2026-03-31", ""]], r"column 'label', row 0: empty value"),
    ([["ZZ", "2026-03-31", 1]], r"none of its 1 label rows names a customer of the bank"),
])
def test_a_bad_label_table_names_file_column_row_and_value(tmp_path, rows, match):
    with pytest.raises(SchemaError, match=match):
        read_label_table(_table(tmp_path, rows), pd.Series(["A", "B"]), MONTHS, report=lambda _: None)


def test_a_label_table_without_its_columns_or_file_is_named(tmp_path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"customer_id": ["A"], "date": ["2026-03-31"], "churned": [1]}).to_csv(path, index=False)
    with pytest.raises(SchemaError, match=r"labels.csv: missing column\(s\) \['snapshot_date', 'label'\]"):
        read_label_table(path, pd.Series(["A"]), MONTHS)
    with pytest.raises(SchemaError, match=r"nothing.csv: label table not found \(label.table in configs/churn.yaml\)"):
        read_label_table(tmp_path / "nothing.csv", pd.Series(["A"]), MONTHS)


def test_a_parquet_label_table_reads_like_a_csv(tmp_path):
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"customer_id": ["A", "B"], "snapshot_date": pd.to_datetime(["2026-03-31", "2026-05-31"]),
                  "label": [True, False]}).to_parquet(path)
    got = read_label_table(path, pd.Series(["A", "B"]), MONTHS)
    assert got["label_churn"].tolist() == [1, 0]


@pytest.mark.parametrize("label, match", [
    ("{definition: table}", r"field label: Value error, definition 'table' needs `table`"),
    ("{definition: holds_nothing, table: x.csv}", r"`table` goes with definition 'table'"),
    ("{definition: holds_nothing, products: [credit_card]}", r"`products` goes with definition 'product_closed'"),
    ("{definition: left}", r"field label.definition"),
    ("{definition: product_closed, products: [yacht]}", r"field label.products: unknown product\(s\) \['yacht'\]"),
])
def test_the_label_config_names_its_mistakes(tmp_path, label, match):
    path = tmp_path / "churn.yaml"
    path.write_text(f"label: {label}\n")
    with pytest.raises(ConfigError, match=match):
        load_train_config("churn", path, catalogue=load_catalogue())


def test_the_shipped_churn_config_derives_churn_from_holdings():
    assert load_train_config("churn").label.definition == "holds_nothing"
    assert TrainConfig().label.definition == "holds_nothing"
