"""H&M (Kaggle 2022): the full article catalog and the final week of purchases (evaluation only)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ._common import compose_column, dataset_dir, find_file

FOLDER = "hm"
PREFIX = "hm:"
ARTICLE_COLUMNS = [
    "article_id",
    "prod_name",
    "product_type_name",
    "product_group_name",
    "colour_group_name",
    "section_name",
    "index_group_name",
    "garment_group_name",
    "detail_desc",
]
TEXT_COLUMNS = ["prod_name", "product_type_name", "colour_group_name", "section_name", "detail_desc"]


def load_hm_articles(root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load the 105,542 H&M articles (id "hm:<10-digit article_id>", category = product_group_name)."""
    path = find_file(dataset_dir(FOLDER, root), "articles.csv.gz", "articles.csv")
    frame = pd.read_csv(path, usecols=ARTICLE_COLUMNS, dtype=str, keep_default_na=False)
    items = article_metadata(frame, PREFIX + frame["article_id"].str.zfill(10))
    items.insert(2, "text", compose_column(frame, TEXT_COLUMNS))
    return items


def article_metadata(frame: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """The metadata columns of the articles (``frame``: the raw ARTICLE_COLUMNS) with these ids: id, title,
    category (product group), product type, index group, garment group, colour, section."""
    return pd.DataFrame(
        {
            "id": ids,
            "title": frame["prod_name"].str.strip(),
            "category": frame["product_group_name"],
            "product_type_name": frame["product_type_name"],
            "index_group_name": frame["index_group_name"],
            "garment_group_name": frame["garment_group_name"],
            "colour": frame["colour_group_name"],
            "section_name": frame["section_name"],
        }
    )


def load_hm_transactions(root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load the 240,311 purchases of 2020-09-16..22: t_dat, customer_id, item_id, price, sales_channel_id."""
    folder = dataset_dir(FOLDER, root)
    path = find_file(folder, "transactions_2020-09-16_2020-09-22.csv.gz", "transactions_2020-09-16_2020-09-22.csv")
    frame = pd.read_csv(
        path,
        dtype={"customer_id": str, "article_id": str, "price": "float32", "sales_channel_id": "int8"},
    )
    return pd.DataFrame(
        {
            "t_dat": pd.to_datetime(frame["t_dat"], format="%Y-%m-%d"),
            "customer_id": frame["customer_id"],
            "item_id": PREFIX + frame["article_id"].str.zfill(10),
            "price": frame["price"],
            "sales_channel_id": frame["sales_channel_id"],
        }
    )


def hm_baskets(transactions: pd.DataFrame, min_items: int = 2) -> list[list[str]]:
    """Same-customer same-day baskets of unique item ids (purchase order kept) with at least min_items items."""
    for column in ("customer_id", "t_dat", "item_id"):
        if column not in transactions.columns:
            raise KeyError(f"transactions lacks column {column!r}; pass the frame from load_hm_transactions()")
    customer = pd.factorize(transactions["customer_id"])[0].astype(np.int64)
    day, days = pd.factorize(transactions["t_dat"])
    basket = pd.factorize(customer * max(len(days), 1) + day)[0]  # numbered in order of first purchase
    item, item_ids = pd.factorize(transactions["item_id"])
    first = ~pd.DataFrame({"b": basket, "i": item}).duplicated().to_numpy()
    basket, item = basket[first], item[first]
    order = np.argsort(basket, kind="stable")  # keeps purchase order inside each basket
    basket, item = basket[order], item[order]
    bounds = np.flatnonzero(np.diff(basket)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(basket)]))
    names = np.asarray(item_ids, dtype=object)
    return [names[item[s:e]].tolist() for s, e in zip(starts, ends) if e - s >= min_items]
