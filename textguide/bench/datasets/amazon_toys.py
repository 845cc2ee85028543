"""Amazon 2018 Toys & Games catalog: 11,252 titles, no interactions (a zero-interaction category to onboard)."""

from __future__ import annotations

import os

import pandas as pd

from ._common import clean, dataset_dir, item_frame, require_file, trim_text

FOLDER = "amazon-toys-catalog"
FILE = "Toys_and_Games_5_2016-10-2018-11.txt"
PREFIX = "toy:"
CATEGORY = "Toys & Games"


def load_toys(root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Load the Toys & Games items (id "toy:<int id>", title = text = the product title)."""
    path = require_file(dataset_dir(FOLDER, root), FILE)
    ids: list[str] = []
    titles: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            title, sep, item = line.rpartition("\t")  # a few titles contain tabs: the id is the last field
            if not sep or not item.strip().isdigit():
                raise ValueError(f"{path}:{number}: expected '<title>\\t<int id>', got {line[:80]!r}")
            ids.append(PREFIX + item.strip())
            titles.append(clean(title))
    return item_frame(ids, titles, [trim_text(t) for t in titles], [CATEGORY] * len(ids))
