"""The UCI bank-marketing adapter: a hand-made file in the real format, and real contacts (tests/data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from nextbest.features.adapters.uci_bank_marketing import COLUMNS, contact_dates, ingest_uci
from nextbest.schema import SchemaError
from nextbest.io import RAW_TABLES, read_raw
from tests.conftest import UCI_SAMPLE

HEADER = ";".join(f'"{c}"' for c in COLUMNS)


def line(age="41", job="admin.", month="may", dow="mon", y="no", contact="telephone", education="unknown",
         duration="120", euribor="4.857") -> str:
    """One line as the real file writes it: numbers bare, strings double-quoted, ';' between."""
    values = [age, f'"{job}"', '"married"', f'"{education}"', '"no"', '"unknown"', '"no"', f'"{contact}"',
              f'"{month}"', f'"{dow}"', duration, "1", "999", "0", '"nonexistent"', "1.1", "93.994", "-36.4",
              euribor, "5191", f'"{y}"']
    return ";".join(values)


LINES = [
    line(age="56", dow="mon", y="no"),                           # 2008-05-05 (first Monday of May 2008)
    line(age="57", dow="mon", y="yes", job="unknown"),           # same day
    line(age="37", dow="tue", y="no", contact="cellular"),       # 2008-05-06
    line(age="40", dow="mon", y="no"),                           # 2008-05-12: next Monday
    line(age="x", month="jun", dow="wed", y="yes"),              # 2008-06-04; age unparseable
    line(age="45", month="dec", dow="fri", y="no"),              # 2008-12-05
    line(age="33", month="mar", dow="thu", y="yes"),             # month went back: 2009-03-05
    line(age="29", month="maj", dow="thu", y="no"),              # bad_month
    line(age="29", month="mar", dow="thu", y="maybe"),           # bad_y
    line(age="30", month="mar", dow="fri", y="no", contact="email"),  # bad_contact
    line(age="200", month="apr", dow="wed", y="no"),             # 2009-04-01; age out of range
]


@pytest.fixture
def uci_csv(tmp_path):
    path = tmp_path / "bank-additional-full.csv"
    path.write_text("\n".join([HEADER, *LINES]) + "\n", encoding="utf-8")
    return path


def test_ingest_hand_made_file(uci_csv, tmp_path, catalogue):
    out = tmp_path / "raw"
    report = ingest_uci(uci_csv, out)
    assert report.rows_read == 11 and report.rows_kept == 8 and report.rows_rejected == 3
    assert report.rejected_by_reason == {"bad_month": 1, "bad_contact": 1, "bad_y": 1}
    assert report.values_nulled == {"age": 2}
    assert report.customers == 8 and report.snapshots == 5
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{t}.parquet" for t in RAW_TABLES),
                                                            "uci_contacts.parquet"])
    raw = read_raw(out, catalogue.ids)  # every canonical table passes the schema
    assert len(raw["holdings"]) == len(raw["transactions"]) == len(raw["interactions"]) == 0

    offers = raw["offers"]
    kept_rows = [1, 2, 3, 4, 5, 6, 7, 11]  # ids follow the file's data-row numbers, rejected rows leave gaps
    assert offers.customer_id.tolist() == [f"U{r:07d}" for r in kept_rows]
    assert offers.offer_id.tolist() == [f"UO{r:07d}" for r in kept_rows]
    assert [str(d.date()) for d in offers.offered_at] == [
        "2008-05-05", "2008-05-05", "2008-05-06", "2008-05-12", "2008-06-04", "2008-12-05", "2009-03-05",
        "2009-04-01"]
    assert offers.response.tolist() == ["reject", "accept", "reject", "reject", "accept", "reject", "accept",
                                        "reject"]
    assert set(offers.channel) == {"call_center"} and set(offers.product_id) == {"term_deposit"}

    c = raw["customers"].set_index("customer_id")
    age_at_contact = np.floor((offers.offered_at.to_numpy() - c.birth_date.to_numpy())
                              .astype("timedelta64[D]").astype(float) / 365.25)
    assert age_at_contact[:4].tolist() == [56, 57, 37, 40]
    assert c.birth_date.isna().tolist() == [False] * 4 + [True] + [False] * 2 + [True]
    assert set(c.status) == {"active"} and set(c.gender) == {"unknown"}
    assert not c[["marketing_opt_out", "consent_email", "consent_push", "consent_sms", "consent_call"]].any().any()

    contacts = pd.read_parquet(out / "uci_contacts.parquet")
    assert list(contacts.columns) == ["customer_id", "offer_id", "contact_date", *COLUMNS]
    assert contacts.job.tolist()[:2] == ["admin.", "unknown"]  # "unknown" kept as recorded, quotes gone
    assert contacts.education.eq("unknown").all()
    assert contacts.duration.dtype.kind == "i" and contacts.pdays.eq(999).all()
    metadata = pq.read_schema(out / "uci_contacts.parquet").metadata
    assert metadata[b"nextbest.leaky_columns"] == b"duration" and b"pandas" in metadata


@pytest.mark.parametrize("months, days, expected", [
    (["may", "may", "may"], ["mon", "mon", "tue"], ["2008-05-05", "2008-05-05", "2008-05-06"]),
    (["may", "may"], ["fri", "mon"], ["2008-05-02", "2008-05-05"]),  # May 2008 began on a Thursday
    (["jul", "jul"], ["tue", "tue"], ["2008-07-01", "2008-07-01"]),
    (["jul", "jul", "jul"], ["wed", "tue", "wed"], ["2008-07-02", "2008-07-08", "2008-07-09"]),
    (["nov", "dec", "mar"], ["mon", "mon", "mon"], ["2008-11-03", "2008-12-01", "2009-03-02"]),  # year turns
    (["may", "may"], ["mon", "MON "], ["2008-05-05", "2008-05-05"]),  # case and blanks do not matter
    ([], [], []),
])
def test_contact_dates(months, days, expected):
    assert [str(d)[:10] for d in contact_dates(months, days)] == expected


def test_contact_dates_never_leave_the_month():
    # 30 calling days in a row cannot fit in February: the last ones stay on its last day.
    weekdays = ["mon", "tue", "wed", "thu", "fri"] * 6
    dates = contact_dates(["feb"] * 30, weekdays, first_year=2009)
    assert str(dates[19])[:10] == "2009-02-27"  # the fourth Friday
    assert {str(d)[:10] for d in dates[20:]} == {"2009-02-28"}  # never March
    assert (np.diff(dates.astype(np.int64)) >= 0).all()


def test_contact_dates_reject_unknown_values():
    with pytest.raises(ValueError, match="month and day_of_week"):
        contact_dates(["maj"], ["mon"])


# -- failures: a message naming file and column, nothing written ---------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(SchemaError, match=r"nope\.csv: file not found"):
        ingest_uci(tmp_path / "nope.csv", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text(HEADER.replace(';"y"', "") + "\n" + line().rsplit(";", 1)[0] + "\n")
    with pytest.raises(SchemaError, match=r"b\.csv: missing column\(s\) \['y'\]"):
        ingest_uci(path, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_comma_separated_file_is_named(tmp_path):
    path = tmp_path / "bank.csv"
    path.write_text(",".join(COLUMNS) + "\n" + ",".join(["41"] * len(COLUMNS)) + "\n")
    with pytest.raises(SchemaError, match=r"bank\.csv: missing column\(s\) \['age', 'job'.*','-separated, "
                                          r"expected ';'"):
        ingest_uci(path, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_malformed_line_and_no_usable_row(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text(HEADER + "\n" + line() + ";1;2\n")
    with pytest.raises(SchemaError, match=r"b\.csv: malformed CSV: Expected 21 fields in line 2, saw 23"):
        ingest_uci(path, tmp_path / "raw")
    path.write_text(HEADER + "\n" + line(y="?") + "\n")
    with pytest.raises(SchemaError, match=r"b\.csv: no usable row among 1 .*bad_y"):
        ingest_uci(path, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


# -- real data: every tenth contact of the UCI file (tests/data) ---------------------------------

def test_real_file(tmp_path, catalogue):
    report = ingest_uci(UCI_SAMPLE, tmp_path / "raw", catalogue)
    assert report.rows_read == report.rows_kept == 4119 and report.rows_rejected == 0
    raw = read_raw(tmp_path / "raw", catalogue.ids)
    offers = raw["offers"]
    assert len(offers) == len(raw["customers"]) == 4119
    assert (offers.response == "accept").mean() == pytest.approx(456 / 4119)
    dates = offers.offered_at
    assert dates.is_monotonic_increasing
    assert (dates.min(), dates.max()) == (pd.Timestamp("2008-05-05"), pd.Timestamp("2010-11-26"))
    assert report.snapshots == 26  # May 2008 .. Nov 2010 with no calls in Jan, Feb or Sep 2008
    assert (dates.dt.day_name().str[:3].str.lower() == pd.read_parquet(tmp_path / "raw" / "uci_contacts.parquet")
            .day_of_week).all()
    # euribor3m is a daily indicator: constant within each derived day if the days are right.
    contacts = pd.read_parquet(tmp_path / "raw" / "uci_contacts.parquet")
    per_day = contacts.groupby("contact_date")["euribor3m"].nunique()
    assert (per_day == 1).mean() > 0.99
