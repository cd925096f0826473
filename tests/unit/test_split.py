import pandas as pd
import pytest

from nextbest.training.datasets import LabelError, check_labels, chrono_split, churn_labels, nbp_labels


def _frame(months: int) -> pd.DataFrame:
    dates = pd.date_range("2026-01-31", periods=months, freq="ME", tz="UTC")
    return pd.DataFrame({"customer_id": [f"C{i}" for i in range(months * 3)],
                         "event_timestamp": list(dates) * 3})


def test_split_is_chronological_and_complete():
    df = _frame(6).sample(frac=1, random_state=0)
    split = chrono_split(df, val_months=1, test_months=1)
    assert split.train.event_timestamp.max() < split.val.event_timestamp.min()
    assert split.val.event_timestamp.max() < split.test.event_timestamp.min()
    assert split.test.event_timestamp.nunique() == 1
    assert split.test.event_timestamp.iloc[0] == df.event_timestamp.max()
    assert len(split.train) + len(split.val) + len(split.test) == len(df)


def test_split_needs_enough_months_and_speaks_of_the_data():
    with pytest.raises(LabelError, match=r"has 2 snapshot\(s\) with labels \(2026-01-31, 2026-02-28\); a chronological "
                                         r"split needs at least 3") as exc:
        chrono_split(_frame(2))
    assert "raw/holdings.parquet" in str(exc.value)


def _labelled(months: int, positives_per_month: list[int], rows: int = 100) -> pd.DataFrame:
    dates = pd.date_range("2026-01-31", periods=months, freq="ME", tz="UTC")
    frames = []
    for d, pos in zip(dates, positives_per_month):
        frames.append(pd.DataFrame({"customer_id": [f"C{i}" for i in range(rows)], "event_timestamp": d,
                                    "label_churn": [1] * pos + [0] * (rows - pos)}))
    return pd.concat(frames, ignore_index=True)


def test_labels_with_one_class_or_too_few_positives_stop_before_training():
    check_labels(chrono_split(_labelled(4, [30, 30, 5, 12])), "churn", min_positives=10)  # enough everywhere
    with pytest.raises(LabelError) as exc:  # nobody ever leaves: the bank where every client keeps a product
        check_labels(chrono_split(_labelled(4, [0, 0, 0, 0])), "churn", min_positives=10)
    msg = str(exc.value)
    assert msg.startswith("churn labels: the training window (2026-01-31, 2026-02-28) has 0 positive(s) among 200 "
                          "rows: only one class") and "raw/holdings.parquet" in msg
    with pytest.raises(LabelError, match=r"the test window \(2026-04-30\) has 4 positive\(s\) among 100 rows: fewer "
                                         r"than 10 positives \(min_positives"):
        check_labels(chrono_split(_labelled(4, [30, 30, 5, 4])), "churn", min_positives=10)
    with pytest.raises(LabelError, match="the validation window"):
        check_labels(chrono_split(_labelled(4, [30, 30, 0, 40])), "churn", min_positives=10)


def test_nbp_labels_mark_only_new_products(raw, catalogue):
    labels = nbp_labels(raw["customers"], raw["holdings"], raw["interactions"], catalogue.ids)
    h = raw["holdings"]
    # Pick a labelled acquisition and check it against the raw snapshots.
    row = labels[labels["label_credit_card"] == 1].iloc[0]
    t = row.event_timestamp.tz_localize(None)
    nxt = (t + pd.offsets.MonthEnd(1))
    mine = h[(h.customer_id == row.customer_id) & (h.product_id == "credit_card")]
    assert (mine.snapshot_date == nxt).any() and not (mine.snapshot_date == t).any()
    # The last snapshot has no next month, so it is never labelled.
    assert labels.event_timestamp.max().tz_localize(None) < h.snapshot_date.max()


def test_churn_labels_leave_horizon_months_unlabelled(raw, catalogue):
    labels = churn_labels(raw["customers"], raw["holdings"], raw["interactions"], catalogue.ids, horizon=3)
    last = raw["holdings"].snapshot_date.max()
    assert labels.event_timestamp.max().tz_localize(None) == last - pd.offsets.MonthEnd(3)
    assert 0 < labels.label_churn.mean() < 0.2


def test_one_or_two_snapshots_fall_back_to_a_random_split_by_customer_stratified_by_label():
    from nextbest.training.datasets import training_split

    df = _labelled(2, [100, 60], rows=1000)  # 1,000 customers over two snapshots
    split = training_split(df, val_months=1, test_months=1, seed=7)
    assert split.kind == "random"
    sides = [set(part.customer_id) for part in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert len(split.train) + len(split.val) + len(split.test) == len(df)
    assert all(part.groupby("customer_id").size().eq(2).all() for part in (split.train, split.val, split.test))
    positive = df.groupby("customer_id").label_churn.max()
    for part, share in ((split.val, 0.15), (split.test, 0.15)):
        ids = part.customer_id.unique()
        assert len(ids) == pytest.approx(1000 * share, abs=2)
        assert positive[ids].sum() == pytest.approx(positive.sum() * share, abs=1)  # stratified
    again = training_split(df, seed=7)
    assert again.test.equals(split.test)
    assert training_split(_labelled(3, [30, 30, 30])).kind == "chronological"


def test_a_customer_keeps_their_side_when_others_join():
    from nextbest.training.datasets import random_split

    df = _labelled(1, [100], rows=1000)
    before = random_split(df, seed=3)
    grown = pd.concat([df, pd.DataFrame({"customer_id": [f"N{i}" for i in range(20)],
                                         "event_timestamp": df.event_timestamp.iloc[0], "label_churn": 0})])
    after = random_split(grown, seed=3)
    moved = sum(len(set(a.customer_id) - set(b.customer_id))
                for a, b in ((before.train, after.train), (before.val, after.val), (before.test, after.test)))
    assert moved <= 6  # only customers at a boundary of the negatives' order move
    assert set(random_split(df, seed=4).test.customer_id) != set(before.test.customer_id)


def test_sample_keeps_at_most_the_caps_in_every_month_and_is_reproducible():
    from nextbest.training.datasets import sample_split

    df = _labelled(6, [10] * 6, rows=500)
    split = chrono_split(df)
    sample = sample_split(split, max_train=800, max_eval=120, seed=7)
    assert sample.sampled
    assert sample.labelled == {"train": 2000, "val": 500, "test": 500}
    assert sample.kept == {"train": 800, "val": 120, "test": 120}
    kept = sample.entity
    assert len(kept) == 1040 and not kept.duplicated(["customer_id", "event_timestamp"]).any()
    per_month = kept.groupby("event_timestamp").size()
    assert len(per_month) == 6 and per_month.iloc[:4].between(150, 250).all()  # every training month is drawn from
    again = sample_split(chrono_split(df.sample(frac=1, random_state=3)), 800, 120, seed=7).entity
    key = ["event_timestamp", "customer_id"]
    pd.testing.assert_frame_equal(kept.sort_values(key).reset_index(drop=True),
                                  again.sort_values(key).reset_index(drop=True))
    other = sample_split(split, 800, 120, seed=8).entity
    assert set(map(tuple, other[key].to_numpy())) != set(map(tuple, kept[key].to_numpy()))
    whole = sample_split(split, None, None)
    assert not whole.sampled and len(whole.entity) == len(df)


def test_sample_of_a_random_split_keeps_whole_customers():
    from nextbest.training.datasets import random_split, sample_split

    df = _labelled(2, [40, 40], rows=400)
    split = random_split(df, seed=1)
    sample = sample_split(split, max_train=300, max_eval=50, seed=1)
    assert sample.labelled == {"all": 800} and sample.kept == {"all": 400}
    assert (sample.entity.groupby("customer_id").size() == 2).all()  # both snapshots of each kept customer
