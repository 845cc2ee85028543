"""Instacart 2017 sample: 9,288 products with names and 3,214 baskets (co-purchase, no usable user histories)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd

from ._common import compose_rows, dataset_dir, item_frame, require_file

FOLDER = "instacart-sample"
PREFIX = "ic:"


@dataclass
class BasketDataset:
    """Items, baskets of item ids in add-to-cart order, the basket (order) ids, and the orders table."""

    items: pd.DataFrame
    baskets: list[list[str]]
    basket_ids: list[str]
    orders: pd.DataFrame


def load_instacart(root: str | os.PathLike[str] | None = None) -> BasketDataset:
    """Load Instacart products (id "ic:<product_id>", text = name. aisle. department) and baskets."""
    folder = dataset_dir(FOLDER, root)
    products = pd.read_csv(require_file(folder, "products.csv"), dtype=str, keep_default_na=False)
    aisles = pd.read_csv(require_file(folder, "aisles.csv"), dtype=str).set_index("aisle_id")["aisle"]
    departments = pd.read_csv(require_file(folder, "departments.csv"), dtype=str)
    departments = departments.set_index("department_id")["department"]
    aisle = products["aisle_id"].map(aisles).fillna("")
    department = products["department_id"].map(departments).fillna("")
    names = products["product_name"].str.strip()
    items = item_frame(
        PREFIX + products["product_id"],
        names,
        compose_rows(zip(names.tolist(), aisle.tolist(), department.tolist())),
        department,
        aisle=aisle,
    )
    lines = pd.read_csv(
        require_file(folder, "order_products__prior.csv"),
        dtype={"order_id": str, "product_id": str, "add_to_cart_order": "int32", "reordered": "int8"},
    )
    lines = lines.sort_values(["order_id", "add_to_cart_order"], kind="stable")
    grouped = (PREFIX + lines["product_id"]).groupby(lines["order_id"], sort=True).agg(list)
    orders = pd.read_csv(require_file(folder, "orders.csv"), dtype={"order_id": str, "user_id": str, "eval_set": str})
    return BasketDataset(items=items, baskets=grouped.tolist(), basket_ids=grouped.index.tolist(), orders=orders)
