"""84.51 Complete Journey 2.0: products with text, coupons -> products, campaign receipts and redemptions."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._common import compose_rows, dataset_dir, find_file, isin, require_file, sentence_case

FOLDER = "completejourney"
PREFIX = "cj:"
COUPON_PREFIX = "cj-coupon:"
BRANDS = {"national": "National brand", "private": "Private label"}


def _fix_ids(values: pd.Series) -> pd.Series:
    """Undo scientific notation in integer ids written by R ("9e+05" -> "900000", "4.0128e+10" -> "40128000000")."""
    odd = values.str.contains("e", case=False, regex=False, na=False)
    if not odd.any():
        return values
    fixed = values.copy()
    fixed[odd] = [str(int(float(v))) for v in values[odd]]
    return fixed


@dataclass
class CouponDataset:
    """Complete Journey tables keyed by namespaced ids ("cj:<product_id>", "cj-coupon:<coupon_upc>")."""

    products: pd.DataFrame
    coupons: dict[str, list[str]]
    coupon_campaigns: dict[str, list[int]]
    campaign_coupons: dict[int, list[str]]
    campaigns: pd.DataFrame
    received: pd.DataFrame
    redemptions: pd.DataFrame
    transactions: pd.DataFrame
    demographics: pd.DataFrame


def _products(folder: os.PathLike[str]) -> pd.DataFrame:
    """Products with id, title, text (type. category. department. brand. size), category = department."""
    frame = pd.read_csv(
        find_file(folder, "products.csv.gz", "products.csv"),
        usecols=["product_id", "department", "brand", "product_category", "product_type", "package_size"],
        dtype=str,
        keep_default_na=False,
    )
    columns = ("department", "product_category", "product_type")
    cased = {c: {v: sentence_case(v) for v in frame[c].unique()} for c in columns}
    ptype = frame["product_type"].map(cased["product_type"])
    pcat = frame["product_category"].map(cased["product_category"])
    dept = frame["department"].map(cased["department"])
    brand = frame["brand"].map(lambda b: BRANDS.get(b.strip().lower(), b.strip()))
    size = frame["package_size"].str.strip().str.lower()
    texts = compose_rows(zip(ptype.tolist(), pcat.tolist(), dept.tolist(), brand.tolist(), size.tolist()))
    titles = [t or c or d for t, c, d in zip(ptype.tolist(), pcat.tolist(), dept.tolist())]
    return pd.DataFrame(
        {
            "id": PREFIX + _fix_ids(frame["product_id"]),
            "title": titles,
            "text": texts,
            "category": dept,
            "product_category": pcat,
            "product_type": ptype,
            "brand": frame["brand"],
            "package_size": frame["package_size"],
        }
    )


def load_completejourney(root: str | os.PathLike[str] | None = None) -> CouponDataset:
    """Load products, coupons, receipts, redemptions, the transaction sample and demographics."""
    folder = dataset_dir(FOLDER, root)
    products = _products(folder)

    links = pd.read_csv(
        find_file(folder, "coupons.csv.gz", "coupons.csv"), dtype={"coupon_upc": str, "product_id": str}
    )
    links["coupon_id"] = COUPON_PREFIX + _fix_ids(links["coupon_upc"])
    links["item_id"] = PREFIX + _fix_ids(links["product_id"])
    coupons = {c: [] for c in links["coupon_id"].unique()}
    pairs = links.drop_duplicates(["coupon_id", "item_id"])
    pairs = pairs[isin(pairs["item_id"], products["id"])]
    for coupon_id, group in pairs.groupby("coupon_id", sort=False)["item_id"]:
        coupons[coupon_id] = group.tolist()
    camp = links[["coupon_id", "campaign_id"]].drop_duplicates().sort_values(["coupon_id", "campaign_id"])
    coupon_campaigns = {k: [int(x) for x in g] for k, g in camp.groupby("coupon_id", sort=False)["campaign_id"]}
    by_campaign = camp.sort_values(["campaign_id", "coupon_id"]).groupby("campaign_id")["coupon_id"]
    campaign_coupons = {int(k): g.tolist() for k, g in by_campaign}

    campaigns = pd.read_csv(require_file(folder, "campaign_descriptions.csv"), parse_dates=["start_date", "end_date"])
    received = pd.read_csv(require_file(folder, "campaigns.csv"), dtype={"household_id": str, "campaign_id": "int64"})
    received = received[["household_id", "campaign_id"]].drop_duplicates().reset_index(drop=True)
    red = pd.read_csv(
        require_file(folder, "coupon_redemptions.csv"),
        dtype={"household_id": str, "coupon_upc": str, "campaign_id": "int64"},
    )
    redemptions = pd.DataFrame(
        {
            "household_id": red["household_id"],
            "coupon_id": COUPON_PREFIX + _fix_ids(red["coupon_upc"]),
            "campaign_id": red["campaign_id"],
            "date": pd.to_datetime(red["redemption_date"], format="%Y-%m-%d"),
        }
    )
    tx = pd.read_csv(
        find_file(folder, "transactions_sample.csv.gz", "transactions_sample.csv"),
        usecols=["household_id", "basket_id", "product_id", "quantity", "sales_value", "transaction_timestamp"],
        dtype={
            "household_id": str,
            "basket_id": str,
            "product_id": str,
            "quantity": "float32",
            "sales_value": "float32",
        },
    )
    transactions = pd.DataFrame(
        {
            "household_id": _fix_ids(tx["household_id"]),
            "item_id": PREFIX + _fix_ids(tx["product_id"]),
            "basket_id": _fix_ids(tx["basket_id"]),
            "timestamp": pd.to_datetime(tx["transaction_timestamp"], format="ISO8601"),
            "quantity": tx["quantity"],
            "sales_value": tx["sales_value"],
        }
    )
    demographics = pd.read_csv(require_file(folder, "demographics.csv"), dtype=str).set_index("household_id")
    return CouponDataset(
        products=products,
        coupons=coupons,
        coupon_campaigns=coupon_campaigns,
        campaign_coupons=campaign_coupons,
        campaigns=campaigns,
        received=received,
        redemptions=redemptions,
        transactions=transactions,
        demographics=demographics,
    )


def coupon_examples(ds: CouponDataset) -> pd.DataFrame:
    """Every coupon of every received (household, campaign); label 1 if the household redeemed it in that campaign."""
    offers = pd.DataFrame(
        [(campaign, coupon) for campaign, coupons in ds.campaign_coupons.items() for coupon in coupons],
        columns=["campaign_id", "coupon_id"],
    )
    examples = ds.received.merge(offers, on="campaign_id", how="inner")
    redeemed = ds.redemptions[["household_id", "coupon_id", "campaign_id"]].drop_duplicates()
    redeemed = redeemed.assign(label=np.int8(1))
    examples = examples.merge(redeemed, on=["household_id", "coupon_id", "campaign_id"], how="left")
    examples["label"] = examples["label"].fillna(0).astype("int8")
    return examples[["household_id", "coupon_id", "campaign_id", "label"]]


def household_split(
    examples: pd.DataFrame, frac_valid: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split examples into (train, valid) by household, so no household appears in both."""
    if not 0.0 < frac_valid < 1.0:
        raise ValueError(f"frac_valid must be in (0, 1), got {frac_valid}")
    if "household_id" not in examples.columns:
        raise KeyError("examples lacks column 'household_id'; pass the frame from coupon_examples()")
    households = np.sort(examples["household_id"].unique())
    rng = np.random.default_rng(seed)
    n_valid = max(1, int(round(frac_valid * len(households))))
    valid_households = set(rng.permutation(households)[:n_valid].tolist())
    mask = examples["household_id"].isin(valid_households).to_numpy()
    return examples[~mask].reset_index(drop=True), examples[mask].reset_index(drop=True)
