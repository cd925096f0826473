"""The labels' month grid read column by column from the raw files equals the one built from full tables."""

import numpy as np
import pandas as pd
import pytest

from nextbest.features.build import month_grid
from nextbest.io import atomic_write_parquet, read_raw
from nextbest.schema import SchemaError
from nextbest.training import grid as grid_io


@pytest.fixture()
def raw_dir(tmp_path, raw):
    for name in ("customers", "holdings", "interactions"):
        atomic_write_parquet(raw[name], tmp_path / f"{name}.parquet")
    return tmp_path


def _same(a, b):
    assert list(a.customers) == list(b.customers)
    assert (a.months == b.months).all()
    assert np.array_equal(a.held, b.held) and np.array_equal(a.known, b.known)


def test_the_grid_from_three_columns_equals_the_grid_from_the_full_tables(raw_dir, catalogue, monkeypatch):
    full = read_raw(raw_dir, catalogue.ids, tables=("customers", "holdings", "interactions"))
    expected = month_grid(full["customers"], full["holdings"], full["interactions"], catalogue.ids)
    assert expected.held.any() and (~expected.known).any()
    _same(grid_io.read_grid(raw_dir, catalogue.ids), expected)
    monkeypatch.setattr(grid_io, "BATCH_ROWS", 997)  # many batches, none aligned with a month
    _same(grid_io.read_grid(raw_dir, catalogue.ids), expected)


def test_dictionary_encoded_ids_and_timezone_aware_dates_give_the_same_grid(raw_dir, raw, catalogue):
    expected = month_grid(raw["customers"], raw["holdings"], raw["interactions"], catalogue.ids)
    holdings = raw["holdings"].assign(customer_id=raw["holdings"].customer_id.astype("category"),
                                      product_id=raw["holdings"].product_id.astype("category"))
    interactions = raw["interactions"].assign(
        event_date=pd.to_datetime(raw["interactions"].event_date).dt.tz_localize("UTC"))
    atomic_write_parquet(holdings, raw_dir / "holdings.parquet")
    atomic_write_parquet(interactions, raw_dir / "interactions.parquet")
    got = grid_io.read_grid(raw_dir, catalogue.ids)
    _same(got, expected)


def test_a_bad_value_in_a_column_the_grid_reads_is_named_by_file_column_and_row(raw_dir, raw, catalogue):
    holdings = raw["holdings"].copy()
    holdings.loc[1234, "product_id"] = "space_loan"
    atomic_write_parquet(holdings, raw_dir / "holdings.parquet")
    with pytest.raises(SchemaError, match=r"holdings.parquet: column 'product_id', row 1234: value 'space_loan' is "
                                          r"not one of"):
        grid_io.read_grid(raw_dir, catalogue.ids)


def test_missing_files_columns_and_repeated_customers_are_clear_errors(raw_dir, raw, catalogue):
    customers = pd.concat([raw["customers"], raw["customers"].iloc[[5]]], ignore_index=True)
    atomic_write_parquet(customers, raw_dir / "customers.parquet")
    with pytest.raises(SchemaError, match=r"customers.parquet: column\(s\) \['customer_id'\], row 2000: duplicate key"):
        grid_io.read_grid(raw_dir, catalogue.ids)
    atomic_write_parquet(raw["customers"], raw_dir / "customers.parquet")
    atomic_write_parquet(raw["interactions"].drop(columns="event_date"), raw_dir / "interactions.parquet")
    with pytest.raises(SchemaError, match=r"interactions.parquet: missing column\(s\) \['event_date'\]"):
        grid_io.read_grid(raw_dir, catalogue.ids)
    atomic_write_parquet(raw["interactions"], raw_dir / "interactions.parquet")
    atomic_write_parquet(raw["holdings"].iloc[:0], raw_dir / "holdings.parquet")
    with pytest.raises(SchemaError, match=r"holdings.parquet: no monthly snapshots"):
        grid_io.read_grid(raw_dir, catalogue.ids)
    (raw_dir / "holdings.parquet").unlink()
    with pytest.raises(SchemaError, match=r"holdings.parquet: file not found"):
        grid_io.read_grid(raw_dir, catalogue.ids)
