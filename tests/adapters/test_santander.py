"""The Santander adapter on hand-made files with every quirk of the real `train_ver2.csv`."""

from __future__ import annotations

import csv
import zipfile

import numpy as np
import pandas as pd
import pytest

from nextbest.config import ConfigError
from nextbest.features.adapters import approx_birth_date
from nextbest.features.adapters.santander import (FLAG_INVALID, FLAG_MISSING, FLAGS, ID_INVALID, ID_MISSING,
                                                  REJECT_REASONS, derive_status, ingest_santander,
                                                  load_santander_mapping, month_end, parse_customer_number, parse_date,
                                                  parse_flag, parse_number)
from nextbest.schema import SchemaError
from nextbest.io import RAW_TABLES, read_raw

HEADER = ["fecha_dato", "ncodpers", "ind_empleado", "pais_residencia", "sexo", "age", "fecha_alta", "ind_nuevo",
          "antiguedad", "indrel", "ult_fec_cli_1t", "indrel_1mes", "tiprel_1mes", "indresi", "indext", "conyuemp",
          "canal_entrada", "indfall", "tipodom", "cod_prov", "nomprov", "ind_actividad_cliente", "renta",
          "segmento", *FLAGS]
assert len(HEADER) == 48


def row(fecha: str, ncod: str, held: tuple[str, ...] = (), **over: str) -> dict[str, str]:
    """One line as the real file spells it: padded numbers, R-style NA, flags 0/1."""
    base = {
        "fecha_dato": fecha, "ncodpers": ncod, "ind_empleado": "N", "pais_residencia": "ES", "sexo": "H",
        "age": " 35", "fecha_alta": "2012-08-10", "ind_nuevo": " 0", "antiguedad": "     35", "indrel": " 1",
        "ult_fec_cli_1t": "", "indrel_1mes": "1", "tiprel_1mes": "A", "indresi": "S", "indext": "N",
        "conyuemp": "", "canal_entrada": "KHE", "indfall": "N", "tipodom": " 1", "cod_prov": "28",
        "nomprov": "MADRID", "ind_actividad_cliente": " 1", "renta": "87218.1", "segmento": "02 - PARTICULARES",
    }
    base.update({f: ("1" if f in held else "0") for f in FLAGS})
    base.update(over)
    return base


CCO, CTMA, DECO, DEME, TJCR = "ind_cco_fin_ult1", "ind_ctma_fin_ult1", "ind_deco_fin_ult1", "ind_deme_fin_ult1", \
    "ind_tjcr_fin_ult1"
NOMINA, PENS = "ind_nomina_ult1", "ind_nom_pens_ult1"

ROWS = [
    # 1001: active, three months; cco + ctma both map to current_account (one holding). Income
    # missing in the last month: the latest known one is kept. indrel_1mes in three spellings.
    row("2015-01-28", "1001", (CCO, CTMA), indrel_1mes="1.0", renta="50000.5"),
    row("2015-02-28", "1001", (CCO, CTMA, TJCR), indrel_1mes="1", renta=""),
    row("2015-03-28", "  1001", (CCO, DECO, DEME), indrel_1mes=" 1", renta="         NA", age=" 36"),
    # 1002: V, province with a comma, NA payroll flags, missing February; inactive but holding: dormant.
    row("2015-01-28", "1002", (CCO,), sexo="V", nomprov="CORUÑA, A", **{NOMINA: "NA", PENS: "NA"}),
    row("2015-03-28", "1002", (TJCR,), sexo="V", nomprov="CORUÑA, A", ind_actividad_cliente=" 0",
        age="  NA", fecha_alta=" ", indrel_1mes="P", tiprel_1mes="P", **{NOMINA: "", PENS: "1.0"}),
    # 1003: held a product, holds nothing in the last month, inactive: former.
    row("2015-02-28", "1003", (CCO,), age=" 164", sexo=""),
    row("2015-03-28", "1003", (), ind_actividad_cliente="0", age="abc", renta="n/d", sexo="  NA"),
    # 1004: never held anything, absent from the last month: prospect.
    row("2015-01-28", "1004", (), ind_actividad_cliente="     NA", renta="-5"),
    # 1005: held in January only, gone from the file afterwards: former.
    row("2015-01-28", "1005", (CCO,), fecha_alta="2015-13-45"),
    # Rejected rows, one reason each.
    row("2015-02-28", "", (CCO,)),  # missing_ncodpers
    row("2015-02-28", "     NA", (CCO,)),  # missing_ncodpers
    row("2015-02-28", "12ab", (CCO,)),  # bad_ncodpers
    row("2015-02-30", "1006", (CCO,)),  # bad_fecha_dato
    row("", "1006", (CCO,)),  # bad_fecha_dato
    row("2015-02-28", "1007", (CCO,), **{TJCR: "2"}),  # bad_product_flag
    row("2015-02-28", "1008", (), **{f: "NA" for f in FLAGS}),  # no_product_flags
    row("2015-03-28", "1001", (TJCR,)),  # duplicate_customer_month (1001, March seen above)
]
EXPECTED_REJECTED = {"missing_ncodpers": 2, "bad_ncodpers": 1, "bad_fecha_dato": 2, "bad_product_flag": 1,
                     "no_product_flags": 1, "duplicate_customer_month": 1}


def write_csv(path, rows, header=HEADER, sep=","):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        # QUOTE_MINIMAL quotes "CORUÑA, A" exactly as the real file does.
        w = csv.DictWriter(fh, fieldnames=header, delimiter=sep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def dirty_csv(tmp_path):
    return write_csv(tmp_path / "train_ver2.csv", ROWS)


def _outputs(out_dir, catalogue):
    return read_raw(out_dir, catalogue.ids)


# -- end to end --------------------------------------------------------------------------------

@pytest.mark.parametrize("chunksize", [1, 3, 7, 1000])
def test_ingest_writes_valid_tables_and_counts_every_row(dirty_csv, tmp_path, catalogue, chunksize):
    out = tmp_path / "raw"
    seen = []
    report = ingest_santander(dirty_csv, out, catalogue, chunksize=chunksize, on_chunk=seen.append)
    assert report.rows_read == len(ROWS) == report.rows_kept + report.rows_rejected
    assert report.rejected_by_reason == EXPECTED_REJECTED
    assert report.rows_kept == 9 and report.customers == 5 and report.snapshots == 3
    assert report.values_nulled == {"age": 2, "renta": 2, "fecha_alta": 1}
    assert seen[-1] == len(ROWS) and len(seen) == -(-len(ROWS) // chunksize)
    assert sorted(p.name for p in report.files) == sorted(f"{t}.parquet" for t in RAW_TABLES)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.parquet" for t in RAW_TABLES)  # no temp left

    raw = _outputs(out, catalogue)  # every table passes the canonical schema
    assert len(raw["transactions"]) == len(raw["interactions"]) == len(raw["offers"]) == 0

    h = raw["holdings"]
    assert h.snapshot_date.dt.is_month_end.all()
    held = {(r.customer_id, str(r.snapshot_date.date())): set() for r in h.itertuples()}
    for r in h.itertuples():
        held[(r.customer_id, str(r.snapshot_date.date()))].add(r.product_id)
    assert held == {
        ("1001", "2015-01-31"): {"current_account"},
        ("1001", "2015-02-28"): {"current_account", "credit_card"},
        ("1001", "2015-03-31"): {"current_account", "term_deposit"},
        ("1002", "2015-01-31"): {"current_account"},
        ("1002", "2015-03-31"): {"credit_card", "salary_project"},
        ("1003", "2015-02-28"): {"current_account"},
        ("1005", "2015-01-31"): {"current_account"},
    }
    assert h.balance.isna().all()


def test_customers_take_the_latest_known_values(dirty_csv, tmp_path, catalogue):
    out = tmp_path / "raw"
    ingest_santander(dirty_csv, out, catalogue, chunksize=2)
    c = _outputs(out, catalogue)["customers"].set_index("customer_id")
    assert list(c.index) == ["1001", "1002", "1003", "1004", "1005"]
    assert c.status.to_dict() == {"1001": "active", "1002": "dormant", "1003": "former", "1004": "prospect",
                                  "1005": "former"}
    # Income: March is NA, February empty, so January's value is the latest known one.
    assert c.loc["1001", "income"] == 50000.5
    assert np.isnan(c.loc["1004", "income"])  # negative renta is not an income
    # Age 36 at 2015-03-31 -> born about 36.5 years earlier; the age feature gives back 36.
    born = c.loc["1001", "birth_date"]
    assert np.floor((pd.Timestamp("2015-03-31") - born).days / 365.25) == 36
    # 1002's last age is NA: the January one (35) is used, aged from January.
    assert np.floor((pd.Timestamp("2015-01-31") - c.loc["1002", "birth_date"]).days / 365.25) == 35
    assert pd.isna(c.loc["1003", "birth_date"])  # 164 and "abc" are not ages
    assert c.gender.to_dict() == {"1001": "H", "1002": "V", "1003": "unknown", "1004": "H", "1005": "H"}
    assert c.loc["1002", "region"] == "CORUÑA, A"
    assert c.loc["1002", "join_date"] == pd.Timestamp("2012-08-10")  # March's blank fecha_alta is skipped
    assert pd.isna(c.loc["1005", "join_date"])
    # No consent in the data: privacy-safe defaults.
    assert not c[["marketing_opt_out", "consent_email", "consent_push", "consent_sms", "consent_call"]].any().any()


def test_gender_codes_follow_the_mapping_file(dirty_csv, tmp_path, catalogue):
    mapping = load_santander_mapping(catalogue).model_copy(update={"gender": {"H": "F", "V": "M"}})
    ingest_santander(dirty_csv, tmp_path / "raw", catalogue, mapping=mapping)
    c = pd.read_parquet(tmp_path / "raw" / "customers.parquet").set_index("customer_id")
    assert c.gender.to_dict() == {"1001": "F", "1002": "M", "1003": "unknown", "1004": "F", "1005": "F"}


def test_zipped_download_is_read_directly(tmp_path, catalogue):
    plain = write_csv(tmp_path / "train_ver2.csv", ROWS[:3])
    with zipfile.ZipFile(tmp_path / "train_ver2.csv.zip", "w") as zf:
        zf.write(plain, "train_ver2.csv")
    report = ingest_santander(tmp_path / "train_ver2.csv.zip", tmp_path / "raw", catalogue)
    assert report.rows_kept == 3 and report.customers == 1


def test_out_of_order_months_keep_the_latest(tmp_path, catalogue):
    rows = [row("2015-03-28", "7", (CCO,), nomprov="LUGO"), row("2015-01-28", "7", (), nomprov="SORIA")]
    ingest_santander(write_csv(tmp_path / "t.csv", rows), tmp_path / "raw", catalogue, chunksize=1)
    c = pd.read_parquet(tmp_path / "raw" / "customers.parquet")
    assert c.region.tolist() == ["LUGO"] and c.status.tolist() == ["active"]


# -- failures: a message naming file and column, nothing written ---------------------------------

def _assert_nothing_written(out):
    assert not out.exists() or not any(out.iterdir())


def test_missing_file(tmp_path, catalogue):
    with pytest.raises(SchemaError, match=r"nope\.csv: file not found"):
        ingest_santander(tmp_path / "nope.csv", tmp_path / "raw", catalogue)
    _assert_nothing_written(tmp_path / "raw")


def test_missing_column_is_named(tmp_path, catalogue):
    header = [h for h in HEADER if h != "renta"]
    path = write_csv(tmp_path / "t.csv", [row("2015-01-28", "1")], header=header)
    with pytest.raises(SchemaError, match=r"t\.csv: missing column\(s\) \['renta'\]"):
        ingest_santander(path, tmp_path / "raw", catalogue)
    _assert_nothing_written(tmp_path / "raw")


def test_wrong_separator_is_named(tmp_path, catalogue):
    path = write_csv(tmp_path / "t.csv", [row("2015-01-28", "1")], sep=";")
    with pytest.raises(SchemaError, match=r"t\.csv: missing column\(s\) \['fecha_dato'.*';'-separated, expected ','"):
        ingest_santander(path, tmp_path / "raw", catalogue)
    _assert_nothing_written(tmp_path / "raw")


def test_empty_file_and_header_only(tmp_path, catalogue):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SchemaError, match=r"empty\.csv: empty file"):
        ingest_santander(tmp_path / "empty.csv", tmp_path / "raw", catalogue)
    path = write_csv(tmp_path / "header.csv", [])
    with pytest.raises(SchemaError, match=r"header\.csv: no usable row among 0"):
        ingest_santander(path, tmp_path / "raw", catalogue)
    _assert_nothing_written(tmp_path / "raw")


def test_malformed_line_in_a_later_chunk_leaves_nothing(tmp_path, catalogue):
    path = write_csv(tmp_path / "t.csv", ROWS)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("2015-03-28,99,N,ES,H,too,many,fields" + ",0" * 60 + "\n")
    with pytest.raises(SchemaError, match=r"t\.csv: malformed CSV: Expected 48 fields in line 19, saw 68"):
        ingest_santander(path, tmp_path / "raw", catalogue, chunksize=4)
    _assert_nothing_written(tmp_path / "raw")


def test_first_line_with_an_extra_field_is_not_shifted(tmp_path, catalogue):
    # pandas would read it as an index column plus every value shifted one column to the left.
    path = write_csv(tmp_path / "t.csv", ROWS[:2])
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = "x," + lines[1]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SchemaError, match=r"t\.csv: malformed CSV: Expected 48 fields in line 2, saw 49"):
        ingest_santander(path, tmp_path / "raw", catalogue)
    _assert_nothing_written(tmp_path / "raw")


def test_truncated_last_line_is_rejected(tmp_path, catalogue):
    path = write_csv(tmp_path / "t.csv", ROWS[:3])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("2015-03-28,1009,N,ES,V, 41,2011-0")  # download cut mid-line
    report = ingest_santander(path, tmp_path / "raw", catalogue)
    assert report.rejected_by_reason == {"no_product_flags": 1} and report.rows_kept == 3


def test_failure_mid_stream_keeps_the_previous_tables(dirty_csv, tmp_path, catalogue):
    out = tmp_path / "raw"
    ingest_santander(dirty_csv, out, catalogue)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(rows_read: int) -> None:
        if rows_read > 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_santander(dirty_csv, out, catalogue, chunksize=4, on_chunk=boom)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_all_rows_rejected_writes_nothing(tmp_path, catalogue):
    path = write_csv(tmp_path / "t.csv", [row("bad", "1"), row("2015-01-28", "")])
    with pytest.raises(SchemaError, match=r"no usable row among 2 .*bad_fecha_dato"):
        ingest_santander(path, tmp_path / "raw", catalogue)
    _assert_nothing_written(tmp_path / "raw")


# -- mapping file ------------------------------------------------------------------------------

def test_mapping_covers_all_24_flags_with_catalogue_products(catalogue):
    mapping = load_santander_mapping(catalogue)
    assert set(mapping.products) == set(FLAGS) and len(FLAGS) == 24
    assert set(mapping.products.values()) <= set(catalogue.ids)
    m = mapping.matrix(catalogue.ids)
    assert m.shape == (24, len(catalogue.ids)) and (m.sum(axis=1) == 1).all()
    assert mapping.products["ind_cco_fin_ult1"] == "current_account"
    assert mapping.products["ind_hip_fin_ult1"] == "mortgage"


@pytest.mark.parametrize("text, message", [
    ("version: 1\nproducts: {}\n", r"no mapping for flag\(s\) \['ind_ahor_fin_ult1'"),
    ("version: 1\nproducts: {" + ", ".join(f"{f}: savings_account" for f in FLAGS) + ", ind_x: mortgage}\n",
     r"unknown flag\(s\) \['ind_x'\]"),
    ("version: 1\nproducts: {" + ", ".join(f"{f}: gold_bar" for f in FLAGS) + "}\n",
     r"products\.ind_ahor_fin_ult1: product_id 'gold_bar' is not in"),
    ("version: [\n", "not valid YAML"),
    ("products: {}\n", r"field version: Field required"),
])
def test_bad_mapping_files_name_the_key(tmp_path, catalogue, text, message):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_santander_mapping(catalogue, path)


def test_a_flag_mapped_to_null_is_ignored(dirty_csv, tmp_path, catalogue):
    mapping = load_santander_mapping(catalogue)
    mapping = mapping.model_copy(update={"products": {**mapping.products, TJCR: None}})
    ingest_santander(dirty_csv, tmp_path / "raw", catalogue, mapping=mapping)
    assert "credit_card" not in set(pd.read_parquet(tmp_path / "raw" / "holdings.parquet").product_id)


# -- pure helpers --------------------------------------------------------------------------------

def test_parse_number_handles_padding_and_na_spellings():
    values = pd.Series([" 35", "  NA", "     NA", "", "87218.1", "1.0", "abc", None, "inf"])
    num, bad = parse_number(values)
    np.testing.assert_array_equal(num, [35, np.nan, np.nan, np.nan, 87218.1, 1.0, np.nan, np.nan, np.nan])
    assert bad.tolist() == [False, False, False, False, False, False, True, False, True]
    # The same answers through the categorical path the reader uses.
    num_c, bad_c = parse_number(values.astype("category"))
    np.testing.assert_array_equal(num_c, num)
    assert bad_c.tolist() == bad.tolist()


def test_parse_flag_and_customer_number():
    assert parse_flag(pd.Series(["0", "1", " 1", "1.0", "0.0", "NA", "", "2", "-1", "x"])).tolist() == \
        [0, 1, 1, 1, 0, FLAG_MISSING, FLAG_MISSING, FLAG_INVALID, FLAG_INVALID, FLAG_INVALID]
    assert parse_customer_number(pd.Series(["1375586", "  15889", "15889.0", "", "NA", "12ab", "-3",
                                            "1.5"])).tolist() == \
        [1375586, 15889, 15889, ID_MISSING, ID_MISSING, ID_INVALID, ID_INVALID, ID_INVALID]


def test_dates_become_month_end_snapshots():
    dates, bad = parse_date(pd.Series(["2015-01-28", " 2016-02-28", "2015-02-30", "", "28/01/2015"]))
    assert bad.tolist() == [False, False, True, False, True]
    ends = month_end(dates)
    assert [str(d)[:10] for d in ends] == ["2015-01-31", "2016-02-29", "NaT", "NaT", "NaT"]


@pytest.mark.parametrize("last, active, held_now, ever, expected", [
    (5, 1, 2, True, "active"),
    (5, 1, 0, False, "active"),  # active per the bank, with products outside the 24 flags
    (5, 0, 1, True, "dormant"),
    (5, -1, 1, True, "dormant"),
    (5, 0, 0, True, "former"),
    (5, 0, 0, False, "prospect"),
    (4, 1, 3, True, "former"),  # gone from the last snapshot
    (4, 1, 0, False, "prospect"),
])
def test_derive_status(last, active, held_now, ever, expected):
    out = derive_status(np.array([last]), 5, np.array([active]), np.array([held_now]), np.array([ever]))
    assert out.tolist() == [expected]


def test_birth_date_gives_back_the_age():
    at = np.array(["2016-05-31", "2015-01-31", "2015-01-31"], dtype="datetime64[ns]")
    born = approx_birth_date(np.array([0.0, 35.0, np.nan]), at)
    ages = np.floor((at - born).astype("timedelta64[D]").astype(float) / 365.25)
    assert ages[:2].tolist() == [0.0, 35.0] and np.isnat(born[2])


def test_reasons_are_documented():
    assert REJECT_REASONS == tuple(EXPECTED_REJECTED)


# -- the benchmark's synthetic file: many customers, state carried across many chunks ------------

def _load_bench():
    import importlib.util

    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("bench_santander_ingest",
                                                  REPO_ROOT / "benchmarks" / "bench_santander_ingest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chunk_size_does_not_change_the_result(tmp_path, catalogue):
    path = tmp_path / "synthetic.csv"
    rows = _load_bench().synthesise(path, 6000, seed=3)
    small = ingest_santander(path, tmp_path / "small", catalogue, chunksize=487)
    whole = ingest_santander(path, tmp_path / "whole", catalogue, chunksize=10**6)
    assert small.rows_read == whole.rows_read == rows
    assert small.rejected_by_reason == whole.rejected_by_reason
    # The synthesiser breaks five rows a month; an age of 164 only nulls the age.
    assert small.rejected_by_reason == {"missing_ncodpers": 17, "bad_fecha_dato": 17, "bad_product_flag": 17,
                                        "duplicate_customer_month": 17}
    assert small.values_nulled == whole.values_nulled == {"age": 17}
    for table in ("customers", "holdings"):
        a = pd.read_parquet(tmp_path / "small" / f"{table}.parquet")
        b = pd.read_parquet(tmp_path / "whole" / f"{table}.parquet")
        keys = ["customer_id", "snapshot_date", "product_id"] if table == "holdings" else ["customer_id"]
        pd.testing.assert_frame_equal(a.sort_values(keys, ignore_index=True), b.sort_values(keys, ignore_index=True))
    statuses = set(pd.read_parquet(tmp_path / "small" / "customers.parquet").status)
    assert {"active", "dormant", "former"} <= statuses
