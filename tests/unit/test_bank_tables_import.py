"""Importing the bank's own feature tables: what is refused (naming file, column, row and value), what is
counted and left out, and that nothing is half-written."""

from __future__ import annotations

import shutil
import sqlite3

import pandas as pd
import pytest
import yaml

from nextbest.config import ConfigError, FeaturesConfig, load_features_config
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.features.bank_tables import import_bank_tables
from nextbest.schema import SchemaError
from nextbest.settings import Paths


@pytest.fixture
def work(feast_bank, tmp_path, monkeypatch):
    """A project whose work directory holds the built views and the raw customers of a small bank."""
    paths = Paths.from_workdir(tmp_path / "work").ensure()
    shutil.copytree(feast_bank.features, paths.features, dirs_exist_ok=True)
    paths.raw.mkdir(parents=True, exist_ok=True)
    shutil.copy(feast_bank.raw / "customers.parquet", paths.raw / "customers.parquet")
    (tmp_path / "configs").mkdir()
    (tmp_path / "nextbest.yaml").write_text("name: bank\nworkdir: work\n")
    monkeypatch.setenv("NEXTBEST_PROJECT", str(tmp_path))
    return paths


def _ids(paths: Paths, n: int) -> list[str]:
    return pd.read_parquet(paths.raw / "customers.parquet")[CUSTOMER_ID].head(n).tolist()


def _import(tmp_path, paths: Paths, *tables: dict):
    path = tmp_path / "configs" / "features.yaml"
    path.write_text(yaml.safe_dump({"tables": list(tables)}))
    return import_bank_tables(load_features_config(), paths.raw, paths.features, path)


def _table(name: str, file: str, **extra) -> dict:
    return {"name": name, "path": file, "timestamp": "month_end", "columns": {"balance_avg_12m": "numeric"}, **extra}


def test_a_duplicate_customer_and_date_names_the_row(work, tmp_path):
    ids = _ids(work, 3)
    pd.DataFrame({"customer_id": [ids[0], ids[1], ids[1]], "month_end": ["2026-05-31"] * 3,
                  "balance_avg_12m": [1, 2, 3]}).to_csv(tmp_path / "agg.csv", index=False)
    with pytest.raises(SchemaError, match=rf"agg.csv: column 'customer_id', row 2: value '{ids[1]}' and month_end "
                                          r"2026-05-31.* appears more than once"):
        _import(tmp_path, work, _table("agg", "agg.csv"))
    assert not (work.features / "agg.parquet").exists()


def test_a_value_of_another_type_names_file_column_row_and_value(work, tmp_path):
    ids = _ids(work, 3)
    pd.DataFrame({"customer_id": ids, "month_end": ["2026-05-31"] * 3,
                  "balance_avg_12m": ["10.5", "1,200", "7"]}).to_csv(tmp_path / "agg.csv", index=False)
    with pytest.raises(SchemaError,
                       match=r"agg.csv: column 'balance_avg_12m', row 1: value '1,200' is not of type float"):
        _import(tmp_path, work, _table("agg", "agg.csv"))


def test_unknown_customers_and_future_rows_are_counted_and_left_out(work, tmp_path):
    ids = _ids(work, 3)
    pd.DataFrame({"customer_id": [*ids, "NOBODY", ids[0], None],
                  "month_end": ["2026-05-31", "2026-06-30", "2026-04-30", "2026-05-31", "2026-09-30", "2026-05-31"],
                  "balance_avg_12m": [1, 2, None, 4, 5, 6]}).to_csv(tmp_path / "agg.csv", index=False)
    (report,) = _import(tmp_path, work, _table("agg", "agg.csv"))
    assert report.rows_read == 6 and report.rows_kept == 3
    assert report.left_out == {"without a customer_id or date": 1, "of customers not in raw/customers.parquet": 1,
                               "dated after the last snapshot (2026-06-30)": 1}
    written = pd.read_parquet(work.features / "agg.parquet")
    assert len(written) == 3 and written["balance_avg_12m"].isna().sum() == 1
    assert str(written[EVENT_TIMESTAMP].dtype) == "datetime64[ns, UTC]"
    assert "agg: 3 of 6 rows kept" in report.lines()[0]


def test_a_table_dated_after_every_snapshot_is_refused_as_leakage(work, tmp_path):
    ids = _ids(work, 2)
    pd.DataFrame({"customer_id": ids, "balance_avg_12m": [1, 2]}).to_csv(tmp_path / "extract.csv", index=False)
    extract = {"name": "extract", "path": "extract.csv", "as_of": "2026-08-31",
               "columns": {"balance_avg_12m": "numeric"}}
    with pytest.raises(SchemaError, match=r"every row is dated after the last snapshot \(2026-06-30"):
        _import(tmp_path, work, extract)


def test_a_file_in_another_encoding_names_the_byte_and_the_setting(work, tmp_path):
    ids = _ids(work, 2)
    text = f"customer_id,month_end,balance_avg_12m,city\n{ids[0]},2026-05-31,1,Zürich\n"
    (tmp_path / "agg.csv").write_bytes(text.encode("latin-1"))
    at = text.encode("latin-1").index("ü".encode("latin-1"))
    with pytest.raises(SchemaError, match=rf"agg.csv: not valid utf-8 at byte {at} .*encoding: latin-1"):
        _import(tmp_path, work, _table("agg", "agg.csv"))
    (report,) = _import(tmp_path, work, _table("agg", "agg.csv", encoding="latin-1"))
    assert report.rows_kept == 1


def test_a_column_a_built_view_has_is_refused(work, tmp_path):
    ids = _ids(work, 1)
    pd.DataFrame({"customer_id": ids, "month_end": ["2026-05-31"], "age": [40]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(SchemaError, match=r"table 'a': column 'age' is already a feature of customer_profile"):
        _import(tmp_path, work, {**_table("a", "a.csv"), "columns": {"age": "numeric"}})


def test_nothing_is_written_when_a_later_table_fails(work, tmp_path):
    ids = _ids(work, 2)
    pd.DataFrame({"customer_id": ids, "month_end": ["2026-05-31"] * 2, "balance_avg_12m": [1, 2]}) \
        .to_csv(tmp_path / "good.csv", index=False)
    pd.DataFrame({"customer_id": ids, "month_end": ["2026-05-31"] * 2, "risk": ["x", "y"]}) \
        .to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SchemaError, match=r"bad.csv: missing column\(s\) \['score'\]"):
        _import(tmp_path, work, _table("good", "good.csv"),
                {**_table("bad", "bad.csv"), "columns": {"score": "numeric"}})
    assert not list(work.features.glob("good*")) and not list(work.features.glob(".good*"))


def test_a_one_off_extract_from_a_database_query(work, tmp_path):
    ids = _ids(work, 4)
    db = tmp_path / "dwh.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table crm (customer_id text, risk_band text, segment_code integer)")
        conn.executemany("insert into crm values (?, ?, ?)", [(i, b, 1) for i, b in zip(ids, "abca")])
    (report,) = _import(tmp_path, work, {
        "name": "crm_extract", "sql": {"url": f"sqlite:///{db}", "query": "select * from crm where segment_code = 1"},
        "as_of": "2026-04-30", "columns": {"risk_band": "categorical", "segment_code": "categorical"}})
    assert report.rows_kept == 4 and report.first == report.last == "2026-04-30"
    written = pd.read_parquet(work.features / "crm_extract.parquet")
    assert sorted(written["risk_band"]) == ["a", "a", "b", "c"] and set(written["segment_code"]) == {"1"}


@pytest.mark.parametrize("table, message", [
    ({"name": "Agg", "path": "a.csv", "timestamp": "d", "columns": {"x": "numeric"}}, "lower-case"),
    ({"name": "agg", "path": "a.csv", "sql": {"url": "sqlite://", "table": "t"}, "timestamp": "d",
      "columns": {"x": "numeric"}}, "either `path` or `sql`"),
    ({"name": "agg", "path": "a.csv", "columns": {"x": "numeric"}}, "either `timestamp`"),
    ({"name": "agg", "path": "a.csv", "timestamp": "d", "columns": {"x": "number"}}, "columns.x"),
    ({"name": "agg", "path": "a.csv", "timestamp": "d", "columns": {"x": "numeric"}, "modles": ["nbp"]}, "modles"),
])
def test_a_wrong_table_declaration_names_the_field(tmp_path, table, message):
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump({"tables": [table]}))
    with pytest.raises(ConfigError, match=rf"features.yaml: field .*{message}|{message}"):
        load_features_config(path)


def test_a_column_in_two_tables_is_refused():
    table = {"path": "a.csv", "timestamp": "d", "columns": {"x": "numeric"}}
    with pytest.raises(ValueError, match="column 'x' is in both 'a' and 'b'"):
        FeaturesConfig.model_validate({"tables": [{"name": "a", **table}, {"name": "b", **table}]})


def test_the_cli_names_a_bad_value_in_one_line_and_imports_a_good_table(work, tmp_path):
    from tests.servers import run_cli

    ids = _ids(work, 2)
    pd.DataFrame({"customer_id": ids, "month_end": ["2026-05-31"] * 2, "balance_avg_12m": ["1", "lots"]}) \
        .to_csv(tmp_path / "agg.csv", index=False)
    (tmp_path / "configs" / "features.yaml").write_text(yaml.safe_dump({"tables": [_table("agg", "agg.csv")]}))
    env = {"NEXTBEST_PROJECT": str(tmp_path)}
    proc = run_cli("features", "import", workdir=work.root, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "agg.csv: column 'balance_avg_12m', row 1: value 'lots' is not of type float" in proc.stdout + proc.stderr
    assert not (work.features / "agg.parquet").exists()

    pd.DataFrame({"customer_id": ids, "month_end": ["2026-05-31"] * 2, "balance_avg_12m": ["1", "2.5"]}) \
        .to_csv(tmp_path / "agg.csv", index=False)
    proc = run_cli("features", "import", workdir=work.root, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "agg: 2 of 2 rows kept" in proc.stdout + proc.stderr
    assert sorted(pd.read_parquet(work.features / "agg.parquet")["balance_avg_12m"]) == [1.0, 2.5]


def test_a_duplicate_is_named_at_its_own_row_after_rows_left_out(work, tmp_path):
    ids = _ids(work, 2)
    pd.DataFrame({"customer_id": ["NOBODY", ids[0], ids[1], ids[1]], "month_end": ["2026-05-31"] * 4,
                  "balance_avg_12m": [1, 2, 3, 4]}).to_csv(tmp_path / "agg.csv", index=False)
    with pytest.raises(SchemaError, match=rf"agg.csv: column 'customer_id', row 3: value '{ids[1]}'"):
        _import(tmp_path, work, _table("agg", "agg.csv"))


def test_a_join_with_a_repeated_column_and_a_value_beyond_range_are_named(work, tmp_path):
    ids = _ids(work, 2)
    db = tmp_path / "dwh.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table a (customer_id text, score real)")
        conn.execute("create table b (customer_id text, band text)")
        conn.executemany("insert into a values (?, ?)", [(i, 1.0) for i in ids])
        conn.executemany("insert into b values (?, ?)", [(i, "x") for i in ids])
    query = "select * from a join b on a.customer_id = b.customer_id"
    joined = {"name": "crm", "sql": {"url": f"sqlite:///{db}", "query": query},
              "as_of": "2026-04-30", "columns": {"score": "numeric", "band": "categorical"}}
    with pytest.raises(SchemaError, match=r"column\(s\) \['customer_id'\] appear more than once"):
        _import(tmp_path, work, joined)
    pd.DataFrame({"customer_id": ids, "month_end": ["2026-05-31"] * 2, "balance_avg_12m": ["1", "1e40"]}) \
        .to_csv(tmp_path / "agg.csv", index=False)
    with pytest.raises(SchemaError, match=r"agg.csv: column 'balance_avg_12m', row 1: value '1e40' is beyond"):
        _import(tmp_path, work, _table("agg", "agg.csv"))


def test_a_column_an_earlier_version_reads_from_another_table_is_refused(work, tmp_path):
    ids = _ids(work, 1)
    pd.DataFrame({"customer_id": ids, "month_end": ["2026-05-31"], "score": [1]}).to_csv(tmp_path / "b.csv",
                                                                                        index=False)
    path = tmp_path / "configs" / "features.yaml"
    path.write_text(yaml.safe_dump({"tables": [{**_table("b", "b.csv"), "columns": {"score": "numeric"}}]}))
    with pytest.raises(SchemaError, match=r"column 'score' is already a feature of table 'a', read by churn_bank_v1"):
        import_bank_tables(load_features_config(), work.raw, work.features, path,
                           earlier={"score": ("a", "churn_bank_v1")})


def test_a_new_version_when_a_kind_or_ttl_changes_and_none_when_nothing_does():
    from nextbest.feature_repo.versions import ServiceRecord

    spec = {"t": {"columns": {"x": "numeric"}, "ttl_days": 31}}
    first = ServiceRecord().with_tables({"churn": spec})
    assert [v.name for v in first.versions] == ["churn_bank_v1"] and first.current_for("nbp") is None
    assert first.with_tables({"churn": spec}).versions == first.versions
    kind = first.with_tables({"churn": {"t": {"columns": {"x": "categorical"}, "ttl_days": 31}}})
    ttl = first.with_tables({"churn": {"t": {"columns": {"x": "numeric"}, "ttl_days": None}}})
    assert kind.current_for("churn") == ttl.current_for("churn") == "churn_bank_v2"
    assert first.with_tables({}).current_for("churn") is None and len(first.with_tables({}).versions) == 1
