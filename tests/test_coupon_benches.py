"""The extra coupon benchmarks: AmExpert's leak-free time split and activity, UCI's driver split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from textguide.bench.amexpert import past_activity, profile_text, split_by_campaign
from textguide.bench.recipes import UCI_DRIVER_COLUMNS, uci_driver_ids


def test_amexpert_past_activity_counts_only_campaigns_that_ended_before() -> None:
    campaigns = pd.DataFrame({"campaign_id": [1, 2, 3],
                              "start_date": pd.to_datetime(["2013-01-01", "2013-01-20", "2013-02-10"]),
                              "end_date": pd.to_datetime(["2013-02-01", "2013-03-01", "2013-03-10"])})
    rows = pd.DataFrame({"customer_id": ["a", "a", "a", "a", "b"], "campaign_id": [1, 1, 2, 3, 3],
                         "label": [1, 0, 1, 0, 1]})
    got = np.expm1(past_activity(rows, campaigns).to_numpy())
    # campaign 2 starts before campaign 1 ends: nothing known yet; campaign 3 starts after 1 ended, before 2 ended
    expected = [[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 2, 1], [0, 0, 0]]
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_amexpert_split_keeps_campaigns_whole() -> None:
    rows = pd.DataFrame({"campaign_id": [26, 8, 9, 12, 13, 13]})
    assert split_by_campaign(rows).tolist() == ["train", "train", "select", "select", "report", "report"]


def test_amexpert_profile_text() -> None:
    demo = pd.DataFrame({"age_range": ["46-55"], "marital_status": ["Married"], "rented": ["0"], "family_size": ["2"],
                         "no_of_children": [np.nan], "income_bracket": ["5"]}, index=["7"])
    assert profile_text(demo, "7") == ("Customer aged 46-55, married, owns the home, family of 2, no children listed, "
                                       "income bracket 5.")
    assert profile_text(demo, "8") == "Customer with no demographics on file."


def test_uci_driver_ids_group_identical_driver_descriptions() -> None:
    base = {c: "x" for c in UCI_DRIVER_COLUMNS}
    df = pd.DataFrame([base, {**base, "car": np.nan}, base, {**base, "age": "21"}, {**base, "car": np.nan}])
    ids = uci_driver_ids(df)
    assert ids[0] == ids[2] and ids[1] == ids[4]  # missing values group together
    assert len(set(ids.tolist())) == 3 and ids.max() == 2


def test_best_baseline_gain_compares_the_hybrid_with_the_best_baseline_only() -> None:
    from textguide.bench.coupons import best_baseline_gain

    rows = {"popularity": {"AUC": 0.70}, "lightgbm": {"AUC": 0.80},
            "adapter alone": {"AUC": 0.90},  # not a baseline: what the hybrid combines
            "hybrid: trees + adapter": {"AUC": 0.84}}
    best, gain = best_baseline_gain(rows)
    assert best == "lightgbm" and abs(gain - (0.84 / 0.80 - 1)) < 1e-12
