"""AmExpert 2019 coupon redemption: labelled (customer, coupon, campaign) rows, coupon -> items, item brand/category."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd

from ._common import dataset_dir, isin, item_frame, require_file

FOLDER = "amexpert-2019"
PREFIX = "amx:"
COUPON_PREFIX = "amx-coupon:"


@dataclass
class AmExpertDataset:
    """Items, coupon -> item ids, labelled train rows, unlabelled test rows, demographics and campaigns."""

    items: pd.DataFrame
    coupons: dict[str, list[str]]
    train: pd.DataFrame
    test: pd.DataFrame
    demographics: pd.DataFrame
    campaigns: pd.DataFrame


def _rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Namespace coupon ids and rename redemption_status to label."""
    out = pd.DataFrame(
        {
            "id": frame["id"],
            "customer_id": frame["customer_id"],
            "coupon_id": COUPON_PREFIX + frame["coupon_id"],
            "campaign_id": frame["campaign_id"].astype("int64"),
        }
    )
    if "redemption_status" in frame.columns:
        out["label"] = frame["redemption_status"].astype("int8")
    return out


def load_amexpert(root: str | os.PathLike[str] | None = None) -> AmExpertDataset:
    """Load AmExpert items (id "amx:<item_id>", text from category + brand), coupons and labelled rows."""
    folder = dataset_dir(FOLDER, root)
    raw = pd.read_csv(require_file(folder, "item_data.csv"), dtype=str, keep_default_na=False)
    category = raw["category"].str.strip().replace({"Restauarant": "Restaurant"})
    brand_type = raw["brand_type"].str.strip().str.lower()
    cats, types, brands = category.tolist(), brand_type.tolist(), raw["brand"].tolist()
    titles = [f"{c} item, brand {b}" for c, b in zip(cats, brands)]
    texts = [f"{c}. {t.capitalize()} brand #{b}." for c, t, b in zip(cats, types, brands)]
    items = item_frame(
        PREFIX + raw["item_id"], titles, texts, category, brand=raw["brand"], brand_type=raw["brand_type"]
    )
    mapping = pd.read_csv(require_file(folder, "coupon_item_mapping.csv"), dtype=str)
    mapping = mapping.assign(coupon=COUPON_PREFIX + mapping["coupon_id"], item=PREFIX + mapping["item_id"])
    mapping = mapping[isin(mapping["item"], items["id"])]
    coupons = {k: g.tolist() for k, g in mapping.groupby("coupon", sort=False)["item"]}
    dtypes = {"id": str, "customer_id": str, "coupon_id": str}
    train = _rows(pd.read_csv(require_file(folder, "train.csv"), dtype=dtypes))
    test = _rows(pd.read_csv(require_file(folder, "test.csv"), dtype=dtypes))
    demographics = pd.read_csv(require_file(folder, "customer_demographics.csv"), dtype=str).set_index("customer_id")
    campaigns = pd.read_csv(require_file(folder, "campaign_data.csv"))
    for column in ("start_date", "end_date"):
        campaigns[column] = pd.to_datetime(campaigns[column], format="%d/%m/%y")
    return AmExpertDataset(items, coupons, train, test, demographics, campaigns)
