"""Coupon hybrid: hand-computed scores, the fit, leak-free household activity, and the served rank_coupons path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from textguide import Guide
from textguide.adapters import AdapterConfig, MultiTaskAdapter
from textguide.catalog import Catalog
from textguide.coupon_hybrid import FEATURES, CouponHybrid, household_activity, smoothed_rates
from textguide.encoder import HashingEncoder


def sigmoid(x: float) -> float:
    return 1 / (1 + np.exp(-x))


def test_logits_hand_computed() -> None:
    h = CouponHybrid([1.0, 2.0], -1.0, [0.0, 1.0], [1.0, 2.0], {}, 0.1, ["a", "b"])
    # z = ((1 - 0) / 1, (3 - 1) / 2) = (1, 1) -> 1 * 1 + 2 * 1 - 1 = 2
    np.testing.assert_allclose(h.logits(np.array([[1.0, 3.0], [0.0, 1.0]])), [2.0, -1.0])
    with pytest.raises(ValueError, match=r"features must be \(n, 2\)"):
        h.logits(np.zeros((1, 3)))


def test_smoothed_rates_and_prior_of_unknown_coupon() -> None:
    rates, g = smoothed_rates(np.array([0, 0, 0, 1]), np.array([1, 1, 0, 0]), 3, strength=2.0)
    assert g == 0.5
    # coupon 0: (2 + 2 * .5) / (3 + 2) = .6; coupon 1: (0 + 1) / (1 + 2); coupon 2 unseen: the global rate
    np.testing.assert_allclose(rates, [0.6, 1 / 3, 0.5])
    h = CouponHybrid([], 0.0, [], [], {"c0": 0.6}, 0.2, [])
    np.testing.assert_allclose(h.prior_logit(["c0", "new"]), [np.log(0.6 / 0.4), np.log(0.2 / 0.8)])


def test_fit_recovers_a_known_logistic_model() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    y = (rng.random(20000) < sigmoid(1.5 * x[:, 0] - 1.0 * x[:, 1] - 2.0)).astype(float)
    h = CouponHybrid.fit(x, y, {}, 0.1, l2=0.0, features=["a", "b"])
    # weights are on standardised inputs: multiply back by the std to compare with the generating weights
    np.testing.assert_allclose(np.array(h.weights) / np.array(h.std), [1.5, -1.0], atol=0.1)
    assert abs(h.bias - float(-np.dot(np.array(h.weights) / np.array(h.std), h.mean)) + 2.0) < 0.1
    with pytest.raises(ValueError, match="both redeemed and unredeemed"):
        CouponHybrid.fit(x, np.zeros(len(x)), {}, 0.1)
    with pytest.raises(ValueError, match="2 columns but 7 feature names"):
        CouponHybrid.fit(x, y, {}, 0.1)


def test_household_activity_counts_only_what_happened_before_the_campaign() -> None:
    campaigns = pd.DataFrame({"campaign_id": [1, 2], "start_date": pd.to_datetime(["2017-03-01", "2017-06-01"])})
    received = pd.DataFrame({"household_id": ["h", "h", "k"], "campaign_id": [1, 2, 2]})
    redemptions = pd.DataFrame({"household_id": ["h", "h"], "coupon_id": ["a", "b"], "campaign_id": [1, 1],
                                "date": pd.to_datetime(["2017-03-05", "2017-07-01"])})
    tx = pd.DataFrame({"household_id": ["h", "h", "h", "k"], "basket_id": ["1", "1", "2", "3"],
                       "timestamp": pd.to_datetime(["2017-02-01", "2017-02-01", "2017-04-01", "2017-08-01"]),
                       "sales_value": [1.0, 2.0, 4.0, 8.0]})
    act = household_activity(received, campaigns, redemptions, tx).set_index(["household_id", "campaign_id"])
    # h before campaign 1: no redemption, no campaign, basket 1 (spend 3); before campaign 2: 1 redemption
    # (the July one is later), campaign 1, baskets 1 and 2 (spend 7); k: nothing before June
    np.testing.assert_allclose(act.loc[("h", 1)].to_numpy(), np.log1p([0, 0, 1, 3]))
    np.testing.assert_allclose(act.loc[("h", 2)].to_numpy(), np.log1p([1, 1, 2, 7]))
    np.testing.assert_allclose(act.loc[("k", 2)].to_numpy(), np.zeros(4))


@pytest.fixture
def served(catalog: Catalog, enc: HashingEncoder) -> Guide:
    torch.manual_seed(0)
    guide = Guide.build(catalog, enc)
    guide.set_adapter(MultiTaskAdapter(AdapterConfig(input_dim=enc.dim, dim=16, seq_heads=2, tasks=("coupon",))))
    guide.add_coupons({"c-kitchen": ["p01", "p02"], "c-shoes": ["p09", "p10"]}, save=False)
    # only the prior and past redemptions count: scores can be computed by hand
    w = {"prior_logit": 1.0, "past_redemptions": 0.5}
    hybrid = CouponHybrid([w.get(f, 0.0) for f in FEATURES], -0.5, [0.0] * len(FEATURES), [1.0] * len(FEATURES),
                          {"c-kitchen": 0.2, "c-shoes": 0.01}, 0.05)
    hybrid.mean[FEATURES.index("past_redemptions")] = 0.25  # the training mean: used when activity is missing
    guide.adapter_meta["coupon_hybrid"] = hybrid.to_dict()
    return guide


def expected(prior: float, redemptions_feature: float) -> float:
    return float(sigmoid(np.log(prior / (1 - prior)) + 0.5 * (redemptions_feature - 0.25) - 0.5))


def test_rank_coupons_serves_the_hybrid(served: Guide, tmp_path: Path) -> None:
    hits = served.rank_coupons(["p04"], activity={"redemptions": 3})
    assert hits.ids == ["c-kitchen", "c-shoes"]  # the prior decides: the adapter has weight 0
    np.testing.assert_allclose(hits.scores, [expected(0.2, np.log1p(3)), expected(0.01, np.log1p(3))], rtol=1e-5)
    # no activity: the training mean of the feature, so that term vanishes; a new coupon gets the global rate
    new = served.rank_coupons(["p04"], {"c-new": ["p16"], "c-kitchen": ["p01", "p02"]})
    np.testing.assert_allclose(new.scores, [expected(0.2, 0.25), expected(0.05, 0.25)], rtol=1e-5)
    # the text method ignores the hybrid
    assert served.rank_coupons(["p09"], method="text").ids == ["c-shoes", "c-kitchen"]
    with pytest.raises(ValueError, match=r"unknown activity fields \['visits'\]"):
        served.rank_coupons(["p04"], activity={"visits": 2})
    with pytest.raises(ValueError, match=r"activity\['spend'\] must be a finite number >= 0"):
        served.rank_coupons(["p04"], activity={"spend": -1})
    served.save(tmp_path / "g")
    again = Guide.load(tmp_path / "g", encoder=served.encoder)
    np.testing.assert_allclose(again.rank_coupons(["p04"], activity={"redemptions": 3}).scores, hits.scores, rtol=1e-6)


def test_from_dict_names_missing_fields() -> None:
    with pytest.raises(ValueError, match=r"lacks \['prior'\]"):
        CouponHybrid.from_dict({k: v for k, v in CouponHybrid([], 0, [], [], {}, 0.1, []).to_dict().items()
                                if k != "prior"})
