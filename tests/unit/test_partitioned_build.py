"""The feature build in parts by customer: the same tables as one whole build, errors that name the
file's own row, and a memory limit that means more parts, never a failed build."""

from __future__ import annotations

import pandas as pd
import pytest

from nextbest.config import load_segments
from nextbest.constants import CUSTOMER_ID, EVENT_TIMESTAMP
from nextbest.features import split
from nextbest.features.build import SEGMENTS_VIEW, VIEWS, build_feature_tables
from nextbest.features.partitioned import BuildOptions, build_partitioned, parse_bytes, plan_parts
from nextbest.features.split import partition_of
from nextbest.schema import SchemaError
from nextbest.settings import Paths

KEYS = [CUSTOMER_ID, EVENT_TIMESTAMP]


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("partitioned_raw")
    for name, df in raw.items():
        df.to_parquet(root / f"{name}.parquet", index=False)
    return root


@pytest.fixture(scope="module")
def whole(raw, catalogue):
    """The tables of one in-memory build of the whole bank."""
    return build_feature_tables(raw, catalogue, load_segments())


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEYS).reset_index(drop=True)


@pytest.mark.parametrize("parts,workers", [(1, 1), (3, 1), (5, 2)])
def test_parts_build_the_same_tables_as_the_whole_bank(tmp_path, raw_dir, whole, catalogue, parts, workers):
    out = build_partitioned(raw_dir, tmp_path / "features", catalogue, load_segments(),
                            BuildOptions(parts=parts, workers=workers), progress=lambda _: None)
    assert sorted(out) == sorted(VIEWS)
    tiers = None
    for view in VIEWS:
        got = pd.read_parquet(out[view])
        if parts == 1:  # one part keeps the customers' order
            pd.testing.assert_frame_equal(got, whole[view])
        pd.testing.assert_frame_equal(_sorted(got), _sorted(whole[view]))
        if view == SEGMENTS_VIEW:
            tiers = got["value_tier"].value_counts()
    # The value tier ranks the whole bank's clients in each month, not each part's.
    assert tiers["top"] > 0 and tiers["rest"] > tiers["top"]
    assert not list((tmp_path / "features").glob(".build-*")), "the work files are removed"


def test_partition_is_stable_and_spreads_customers():
    ids = pd.Series([f"C{i:07d}" for i in range(20_000)])
    a, b = partition_of(ids, 7), partition_of(ids.to_numpy(), 7)
    assert (a == b).all() and a.min() == 0 and a.max() == 6
    counts = pd.Series(a).value_counts()
    assert counts.min() > 0.8 * len(ids) / 7
    assert (partition_of(ids, 1) == 0).all()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_value_names_the_files_own_row_across_chunks_and_units(tmp_path, raw, catalogue, monkeypatch, workers):
    monkeypatch.setattr(split, "CHUNK_ROWS", 1000)
    monkeypatch.setattr(split, "SPLIT_UNIT_ROWS", 3000)  # several split tasks per table
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name, df in raw.items():
        df.to_parquet(raw_dir / f"{name}.parquet", index=False, row_group_size=1500)
    bad = raw["transactions"].copy()
    assert len(bad) > 10_000
    bad.loc[7345, "direction"] = "sideways"
    bad.loc[9000, "direction"] = "upwards"  # a later unit: the first bad row in file order is reported
    bad.to_parquet(raw_dir / "transactions.parquet", index=False, row_group_size=1500)
    with pytest.raises(SchemaError, match=r"transactions.parquet: column 'direction', row 7345: value 'sideways'"):
        build_partitioned(raw_dir, tmp_path / "features", catalogue, load_segments(),
                          BuildOptions(parts=3, workers=workers), progress=lambda _: None)
    assert not any((tmp_path / "features").glob("*.parquet")), "nothing is written"


def test_many_split_units_build_the_same_tables(tmp_path, raw, whole, catalogue, monkeypatch):
    monkeypatch.setattr(split, "SPLIT_UNIT_ROWS", 2000)
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name, df in raw.items():
        df.to_parquet(raw_dir / f"{name}.parquet", index=False, row_group_size=1000)
    units, _ = split.split_units(raw_dir)
    assert sum(u.table == "transactions" for u in units) > 5
    out = build_partitioned(raw_dir, tmp_path / "features", catalogue, load_segments(),
                            BuildOptions(parts=1, workers=2), progress=lambda _: None)
    for view in VIEWS:  # one part: the whole bank's order, whatever the number of split tasks
        pd.testing.assert_frame_equal(pd.read_parquet(out[view]), whole[view])


def test_a_duplicate_key_in_another_chunk_and_part_is_found_with_its_row(tmp_path, raw, catalogue, monkeypatch):
    monkeypatch.setattr(split, "CHUNK_ROWS", 500)
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name, df in raw.items():
        df.to_parquet(raw_dir / f"{name}.parquet", index=False)
    offers = raw["offers"].reset_index(drop=True)
    assert len(offers) > 40
    dup = offers.copy()
    # Row 40 repeats row 3's offer id, for another customer: a different part, a later chunk.
    dup.loc[len(dup) - 1, "offer_id"] = dup.loc[3, "offer_id"]
    dup.to_parquet(raw_dir / "offers.parquet", index=False)
    with pytest.raises(SchemaError, match=rf"offers.parquet: column\(s\) \['offer_id'\], row {len(dup) - 1}: "
                                          rf"duplicate key \('{dup.loc[3, 'offer_id']}',\)"):
        build_partitioned(raw_dir, tmp_path / "features", catalogue, load_segments(), BuildOptions(parts=4),
                          progress=lambda _: None)


def test_a_smaller_memory_limit_means_more_parts_and_the_build_still_completes(tmp_path, raw_dir, whole, catalogue):
    roomy = plan_parts(raw_dir, 64 * 2**30, workers=1)
    tight = plan_parts(raw_dir, 200 * 2**20, workers=2)
    assert roomy == 1 and tight > roomy
    messages = []
    out = build_partitioned(raw_dir, tmp_path / "features", catalogue, load_segments(),
                            BuildOptions(memory_limit=200 * 2**20, workers=2), progress=messages.append)
    assert f"splitting the raw tables into {tight} part(s) by customer" in messages
    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(out[SEGMENTS_VIEW])), _sorted(whole[SEGMENTS_VIEW]))


def test_memory_sizes_parse_or_say_what_is_expected():
    assert parse_bytes("6GB") == 6 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("2g") == 2 * 2**30
    assert parse_bytes("1000000") == 10**6
    for bad in ("lots", "-1GB", "0", "6 parsecs"):
        with pytest.raises(ValueError, match="expected a size such as 6GB"):
            parse_bytes(bad)


def test_the_cli_builds_in_parts(tmp_path, raw, catalogue):
    from tests.servers import run_cli

    paths = Paths.from_workdir(tmp_path).ensure()
    for name, df in raw.items():
        df.to_parquet(paths.raw / f"{name}.parquet", index=False)
    proc = run_cli("features", "build", "--parts", "2", "--workers", "2", workdir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "building 2 part(s) on local" in proc.stderr
    assert sorted(p.stem for p in paths.features.glob("*.parquet")) == sorted(VIEWS)
    proc = run_cli("features", "build", "--memory-limit", "plenty", workdir=tmp_path)
    assert proc.returncode == 2 and "--memory-limit: memory limit 'plenty'" in proc.stderr


def test_parts_without_customers_are_built_as_empty(tmp_path):
    from tests.unit.test_features import _catalogue, _tiny_bank

    segments = load_segments()
    segments.groups = {"balance_tier": segments.groups["balance_tier"]}
    segments.needs = {"income": segments.needs["income"]}
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    bank = _tiny_bank()
    for name, df in bank.items():
        df.to_parquet(raw_dir / f"{name}.parquet", index=False)
    whole = build_feature_tables(bank, _catalogue(), segments)
    out = build_partitioned(raw_dir, tmp_path / "features", _catalogue(), segments, BuildOptions(parts=6),
                            progress=lambda _: None)
    for view in VIEWS:
        pd.testing.assert_frame_equal(_sorted(pd.read_parquet(out[view])), _sorted(whole[view]))


@pytest.mark.parametrize("table", ["holdings", "customers"])
def test_a_repeated_customer_key_is_found_in_its_part_and_named_with_its_file_row(tmp_path, raw, catalogue, table):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name, df in raw.items():
        df.to_parquet(raw_dir / f"{name}.parquet", index=False)
    rows = raw[table].reset_index(drop=True)
    # Rows 40 and 41 become copies of rows 7 and 3 (row 40 is the first repeat in file order).
    bad = pd.concat([rows.iloc[:40], rows.iloc[[7, 3]], rows.iloc[40:]], ignore_index=True)
    bad.to_parquet(raw_dir / f"{table}.parquet", index=False)
    expected = rf"{table}.parquet: column\(s\) \[.*'customer_id'.*\], row 40: duplicate key"
    with pytest.raises(SchemaError, match=expected):
        build_partitioned(raw_dir, tmp_path / "features", catalogue, load_segments(),
                          BuildOptions(parts=3, workers=2), progress=lambda _: None)
    assert not any((tmp_path / "features").glob("*.parquet"))


@pytest.mark.parametrize("form", ["microseconds", "utc-aware"])
def test_timestamps_in_other_units_or_zones_build_the_same_tables(tmp_path, raw, whole, catalogue, form):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for name, df in raw.items():
        df = df.copy()
        for col in df.select_dtypes("datetime").columns:  # as DuckDB, Spark or another zone-aware tool writes
            df[col] = df[col].astype("datetime64[us]") if form == "microseconds" else df[col].dt.tz_localize("UTC")
        df.to_parquet(raw_dir / f"{name}.parquet", index=False)
    out = build_partitioned(raw_dir, tmp_path / "features", catalogue, load_segments(), BuildOptions(parts=3),
                            progress=lambda _: None)
    for view in VIEWS:
        pd.testing.assert_frame_equal(_sorted(pd.read_parquet(out[view])), _sorted(whole[view]))
