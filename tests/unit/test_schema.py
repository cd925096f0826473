import pandas as pd
import pytest

from nextbest.features.pipeline import build_features_to
from nextbest.schema import SchemaError, validate
from nextbest.io import read_raw
from nextbest.settings import Paths


def test_generated_tables_pass(raw, catalogue):
    for name, df in raw.items():
        validate(df, name, products=catalogue.ids)


def test_missing_column_is_named(raw):
    bad = raw["customers"].drop(columns=["consent_sms"])
    with pytest.raises(SchemaError, match=r"customers.parquet: missing column\(s\) \['consent_sms'\]"):
        validate(bad, "customers", source="raw/customers.parquet")


def test_bad_value_names_file_column_row_and_value(raw):
    bad = raw["customers"].copy()
    bad.loc[5, "status"] = "vip"
    with pytest.raises(SchemaError) as exc:
        validate(bad, "customers", source="raw/customers.parquet")
    msg = str(exc.value)
    assert "raw/customers.parquet" in msg and "'status'" in msg and "row 5" in msg and "'vip'" in msg


def test_unknown_product_and_wrong_type(raw, catalogue):
    bad = raw["holdings"].head(20).copy()
    bad.loc[3, "product_id"] = "yacht"
    with pytest.raises(SchemaError, match=r"column 'product_id', row 3: value 'yacht'"):
        validate(bad, "holdings", products=catalogue.ids)
    bad = raw["transactions"].head(20).copy()
    bad["amount"] = bad["amount"].astype(object)
    bad.loc[7, "amount"] = "12,50"
    with pytest.raises(SchemaError, match=r"column 'amount', row 7: value '12,50' is not of type float"):
        validate(bad, "transactions")


def test_required_null_and_duplicate_key(raw):
    bad = raw["holdings"].head(10).copy()
    bad.loc[2, "snapshot_date"] = pd.NaT
    with pytest.raises(SchemaError, match=r"column 'snapshot_date', row 2: .* is missing"):
        validate(bad, "holdings")
    dup = pd.concat([raw["holdings"].head(3), raw["holdings"].head(1)], ignore_index=True)
    with pytest.raises(SchemaError, match=r"row 3: duplicate key"):
        validate(dup, "holdings")


def test_bad_load_names_the_file_and_writes_nothing_downstream(tmp_path, raw, catalogue):
    paths = Paths.from_workdir(tmp_path)
    paths.raw.mkdir(parents=True)
    for name, df in raw.items():
        df.to_parquet(paths.raw / f"{name}.parquet")
    broken = raw["interactions"].copy()
    broken.loc[11, "count"] = 0
    broken.to_parquet(paths.raw / "interactions.parquet")
    with pytest.raises(SchemaError, match=r"interactions.parquet: column 'count', row 11: value 0 is below"):
        read_raw(paths.raw, catalogue.ids)
    with pytest.raises(SchemaError):
        build_features_to(paths, catalogue)
    assert not paths.features.exists() or not any(paths.features.iterdir())
