"""The campaign-response model on the real UCI bank-marketing file (shared beside the repo)."""

from __future__ import annotations

import pandas as pd
import pytest

from features.schema import SchemaError
from nextbest.config import load_train_config
from nextbest.settings import REPO_ROOT
from training.campaign import campaign_frame, chrono_thirds, load_contacts, train_campaign

UCI = REPO_ROOT.parent / "shared" / "data" / "uci-bank-marketing" / "bank-additional-full.csv"


def test_real_file_chronological_split_without_duration():
    contacts = load_contacts(UCI)
    assert len(contacts) == 41188
    result = train_campaign(contacts, load_train_config("campaign"))
    assert result.rows == {"train": 32950, "val": 4119, "test": 4119}
    assert "duration" not in result.meta.preprocessor.numeric + result.meta.preprocessor.categorical
    # Both models rank far better than chance on the most recent contacts.
    assert result.metrics["test_roc_auc"] > 0.6 and result.metrics["lightgbm_roc_auc"] > 0.58


def test_pdays_999_is_a_flag_not_a_number():
    df = pd.DataFrame({"pdays": [999, 3], "y": ["no", "yes"], "duration": [10, 20],
                       **{c: ["a", "b"] for c in ("job", "marital", "education", "default", "housing", "loan",
                                                   "contact", "month", "day_of_week", "poutcome")}})
    out = campaign_frame(df)
    assert out.never_contacted.tolist() == [1, 0] and pd.isna(out.pdays.iloc[0]) and "duration" not in out
    assert out.label_subscribed.tolist() == [0, 1]
    assert chrono_thirds(100) == (slice(0, 80), slice(80, 90), slice(90, 100))


def test_bad_files_name_the_problem(tmp_path):
    with pytest.raises(SchemaError, match="file not found"):
        load_contacts(tmp_path / "nope.csv")
    bad = tmp_path / "comma.csv"
    bad.write_text("age,job,y\n30,admin.,no\n")
    with pytest.raises(SchemaError, match=r"comma.csv: missing column\(s\) \['job'"):
        load_contacts(bad)
