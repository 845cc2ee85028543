"""Chinese e-commerce product titles (NER corpora, as plain text) and the small Amazon China rated catalog."""

from __future__ import annotations

import os
from typing import Literal

import pandas as pd

from ._common import clean, dataset_dir, item_frame, require_file, trim_text

FOLDER = "chinese-titles"
CN_FOLDER = "amazon-cn"
PREFIX = "cn:"
SPLITS = {
    "train": ["derived_plaintext_ecommerce_train.txt"],
    "dev": ["derived_plaintext_ecommerce_dev.txt"],
    "test": ["derived_plaintext_ecommerce_test.txt"],
    "jd": ["derived_plaintext_jd_gaiic2022_train_500.txt"],
}
SPLITS["all"] = [f for name in ("train", "dev", "test", "jd") for f in SPLITS[name]]
Split = Literal["train", "dev", "test", "jd", "all"]
# Top-level Amazon China categories; the source lists a product's category levels in no fixed order.
TOP_CATEGORIES = (
    "图书音像", "电脑/办公", "手机/数码", "美妆个护", "家用电器", "家居生活", "家具/家装/建材", "母婴/玩具",
    "钟表/首饰/眼镜/礼品",
)


def load_chinese_titles(root: str | os.PathLike[str] | None = None, split: Split = "train") -> list[str]:
    """Load one title per line: ecommerce train / dev / test (6,000 / 998 / 1,000), "jd" (GAIIC 2022) or "all"."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    folder = dataset_dir(FOLDER, root)
    titles: list[str] = []
    for name in SPLITS[split]:
        with open(require_file(folder, name), encoding="utf-8") as handle:
            titles.extend(t for t in (line.strip() for line in handle.read().split("\n")) if t)
    return titles


def _cn_folder(root: str | os.PathLike[str] | None) -> os.PathLike[str]:
    """The amazon-cn folder (under chinese-titles/, or passed directly)."""
    folder = dataset_dir(FOLDER, root)
    return folder / CN_FOLDER if (folder / CN_FOLDER).is_dir() else folder


def load_amazon_cn(root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load the 96 Amazon China products (id "cn:<productId>", Chinese title, category = top-level category)."""
    path = require_file(_cn_folder(root), "products.csv")
    frame = pd.read_csv(
        path,
        sep="^",
        header=None,
        names=["product_id", "name", "category_ids", "asin", "image_url", "categories", "tags"],
        dtype=str,
        keep_default_na=False,
        quoting=3,  # csv.QUOTE_NONE: titles contain quote characters
    )
    titles = [clean(n) for n in frame["name"]]
    paths = [[p.strip() for p in c.split("|") if p.strip()] for c in frame["categories"]]
    tags = [[t.strip() for t in c.split("|") if t.strip()] for c in frame["tags"]]
    texts = [
        trim_text("。".join(part for part in (t, "、".join(p), "、".join(g)) if part))
        for t, p, g in zip(titles, paths, tags)
    ]
    return item_frame(
        PREFIX + frame["product_id"],
        titles,
        texts,
        [next((c for c in p if c in TOP_CATEGORIES), p[-1] if p else "") for p in paths],
        asin=frame["asin"],
        category_levels=["|".join(p) for p in paths],
        tags=["|".join(g) for g in tags],
    )


def load_amazon_cn_ratings(root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load the 44,852 Amazon China ratings: user, item_id ("cn:<productId>"), rating, timestamp."""
    path = require_file(_cn_folder(root), "ratings.csv")
    frame = pd.read_csv(
        path, header=None, names=["user", "product_id", "rating", "ts"], dtype={"user": str, "product_id": str}
    )
    return pd.DataFrame(
        {
            "user": frame["user"],
            "item_id": PREFIX + frame["product_id"],
            "rating": frame["rating"].astype("float32"),
            "timestamp": pd.to_datetime(frame["ts"], unit="s"),
        }
    )
