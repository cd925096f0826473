"""`nextbest ingest canonical`: a bank's own tables from CSV or parquet files and from a real PostgreSQL
server, converted, validated and written atomically; bad input named, raw/ left as it was."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from nextbest.cli import app
from nextbest.features.adapters.canonical import ingest_canonical, what_the_data_supports
from nextbest.io import read_raw
from nextbest.schema import SchemaError

TABLES = ("customers", "holdings", "transactions", "interactions", "offers")


def _small(raw, customers: int = 150) -> dict[str, pd.DataFrame]:
    keep = set(raw["customers"].customer_id.head(customers))
    return {name: df[df.customer_id.isin(keep)].reset_index(drop=True) for name, df in raw.items()}


def _same(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame], any_order: bool = False) -> None:
    for name in want:
        a = got[name].reset_index(drop=True)
        b = want[name].reset_index(drop=True)[list(a.columns)]
        if any_order:  # a database returns rows in no particular order
            a = a.sort_values(list(a.columns)).reset_index(drop=True)
            b = b.sort_values(list(b.columns)).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_dtype=False)


def test_csv_folder_with_the_banks_own_names_and_extra_columns(tmp_path, raw, catalogue):
    bank = _small(raw)
    src = tmp_path / "export"
    src.mkdir()
    for name, df in bank.items():
        out = df.copy()
        if name == "customers":
            out["branch_code"] = "B-01"  # a column the bank has and the canonical table does not
        out.to_csv(src / (f"{name}.csv" if name != "customers" else "clients.csv"), index=False)
    report = ingest_canonical(src, tmp_path / "raw", catalogue, {"customers": "clients"})
    assert report.customers == len(bank["customers"]) and report.snapshots == bank["holdings"].snapshot_date.nunique()
    assert any("branch_code" in n and "ignored" in n for n in report.notes)
    _same(read_raw(tmp_path / "raw", catalogue.ids), bank)


def test_parquet_folder_without_the_optional_tables(tmp_path, raw, catalogue):
    bank = _small(raw)
    src = tmp_path / "export"
    src.mkdir()
    for name in ("customers", "holdings"):
        bank[name].to_parquet(src / f"{name}.parquet", index=False)
    report = ingest_canonical(src, tmp_path / "raw", catalogue)
    assert sorted(n.split(":")[0] for n in report.notes) == ["interactions", "offers", "transactions"]
    got = read_raw(tmp_path / "raw", catalogue.ids)
    assert len(got["transactions"]) == 0 and len(got["holdings"]) == len(bank["holdings"])


@pytest.mark.parametrize("table,column,value,why", [
    ("holdings", "snapshot_date", "31/13/2026", "is not of type datetime"),
    ("transactions", "amount", "12,50", "is not of type float"),
    ("customers", "marketing_opt_out", "maybe", "is not of type bool"),
    ("holdings", "product_id", "yacht", "is not one of"),
])
def test_a_bad_value_is_named_and_raw_is_left_as_it_was(tmp_path, raw, catalogue, table, column, value, why):
    bank = _small(raw)
    src = tmp_path / "export"
    src.mkdir()
    for name, df in bank.items():
        df.to_csv(src / f"{name}.csv", index=False)
    bad = bank[table].astype({column: object}).copy()
    bad.loc[17, column] = value
    bad.to_csv(src / f"{table}.csv", index=False)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "customers.parquet").write_bytes(b"the previous load")
    with pytest.raises(SchemaError, match=rf"{table}.csv: column '{column}', row 17: value '{value}' {why}"):
        ingest_canonical(src, tmp_path / "raw", catalogue, chunksize=1000)
    assert (tmp_path / "raw" / "customers.parquet").read_bytes() == b"the previous load"
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["customers.parquet"]


def test_duplicate_keys_missing_tables_and_encodings_are_named(tmp_path, raw, catalogue):
    bank = _small(raw)
    src = tmp_path / "export"
    src.mkdir()
    for name, df in bank.items():
        df.to_csv(src / f"{name}.csv", index=False)
    dup = pd.concat([bank["customers"], bank["customers"].iloc[[4]]], ignore_index=True)
    dup.to_csv(src / "customers.csv", index=False)
    with pytest.raises(SchemaError, match=rf"customers.csv: column\(s\) \['customer_id'\], row {len(dup) - 1}: "
                                          "duplicate key"):
        ingest_canonical(src, tmp_path / "raw", catalogue)
    bank["customers"].to_csv(src / "customers.csv", index=False)
    text = (src / "customers.csv").read_text().replace("north", "Nørth", 1)
    (src / "customers.csv").write_bytes(text.encode("latin-1"))
    at = text.encode("latin-1").index("Nørth".encode("latin-1")) + 1  # the ø
    with pytest.raises(SchemaError, match=rf"customers.csv: not valid utf-8 at byte {at} .*pass --encoding"):
        ingest_canonical(src, tmp_path / "raw", catalogue)
    report = ingest_canonical(src, tmp_path / "raw", catalogue, encoding="latin-1")
    assert "Nørth" in set(read_raw(tmp_path / "raw", catalogue.ids)["customers"].region)
    assert report.customers == len(bank["customers"])
    (src / "holdings.csv").unlink()
    with pytest.raises(SchemaError, match=r"no holdings table \(looked for 'holdings' as holdings.parquet"):
        ingest_canonical(src, tmp_path / "raw", catalogue, encoding="latin-1")


def test_what_the_data_supports_speaks_of_snapshots():
    one = what_the_data_supports(1, horizon_months=3)
    assert one[0].startswith("nbp (next best product): 0 labelled snapshot(s), 3 needed: load at least 4")
    assert "churn (3-month horizon): 0 labelled snapshot(s), 3 needed: load at least 6" in one[1]
    assert all("enough" in line for line in what_the_data_supports(12, horizon_months=3))
    two = what_the_data_supports(3, horizon_months=3)
    assert two[0].startswith("nbp (next best product): 2 labelled snapshot(s), fewer than the 3 a split by time "
                             "needs: training splits the customers at random instead")
    assert "or give churn labels of your own" in two[1]


@pytest.mark.slow
def test_from_a_real_postgresql_server_through_the_cli(tmp_path, raw, catalogue):
    import sqlalchemy as sa

    from tests.postgres_server import postgres_server

    bank = _small(raw)
    for df in bank.values():  # a database keeps microseconds
        for col in df.select_dtypes("datetime").columns:
            df[col] = df[col].dt.floor("us")
    with postgres_server() as pg:
        engine = sa.create_engine(pg.url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE SCHEMA crm"))
        for name, df in bank.items():
            df.to_sql("clients" if name == "customers" else name, engine, index=False,
                      schema="crm" if name == "customers" else None)
        engine.dispose()
        result = CliRunner().invoke(app, ["ingest", "canonical", "--from", pg.url, "--table", "customers=crm.clients",
                                          "--chunksize", "1000", "--workdir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert "what the data supports" in result.output and "nbp (next best product)" in result.output
        _same(read_raw(tmp_path / "raw", catalogue.ids), bank, any_order=True)
        result = CliRunner().invoke(app, ["ingest", "canonical", "--from", pg.url, "--workdir", str(tmp_path)])
        assert result.exit_code == 2 and "no customers table (looked for 'customers')" in result.output
        port = pg.port
    result = CliRunner().invoke(app, ["ingest", "canonical", "--from", f"postgresql://nextbest:secret@127.0.0.1:{port}/bank",
                                      "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "cannot connect" in result.output and "Traceback" not in result.output
    assert "secret" not in result.output
