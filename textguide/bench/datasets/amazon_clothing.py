"""Amazon 2014 Clothing (Cornac): item descriptions, 13,689 ratings and 9,198 also-viewed pairs."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pandas as pd

from ._common import clean, dataset_dir, item_frame, require_file, trim_text

FOLDER = "amazon-clothing-2014"
PREFIX = "clo:"
CATEGORY = "Clothing"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass
class ClothingDataset:
    """Clothing items, (user, item_id, rating) ratings and (item_id, other_id) also-viewed pairs."""

    items: pd.DataFrame
    ratings: pd.DataFrame
    also_viewed: pd.DataFrame


def _title(description: str, max_chars: int = 80) -> str:
    """A short title from a description: its first sentence, cut to max_chars."""
    first = _SENTENCE_END.split(description, maxsplit=1)[0].rstrip(" .")
    return trim_text(first, max_chars)


def load_clothing(root: str | os.PathLike[str] | None = None) -> ClothingDataset:
    """Load Clothing items (id "clo:<ASIN>", text = description), ratings and also-viewed pairs."""
    folder = dataset_dir(FOLDER, root)
    asins: list[str] = []
    descriptions: list[str] = []
    with open(require_file(folder, "text.txt"), encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            asin, sep, text = line.partition("::")
            if not sep:
                raise ValueError(f"{folder / 'text.txt'}:{number}: expected '<ASIN>::<description>'")
            asins.append(asin.strip())
            descriptions.append(clean(text))
    items = item_frame(
        [PREFIX + a for a in asins],
        [_title(d) for d in descriptions],
        [trim_text(d) for d in descriptions],
        [CATEGORY] * len(asins),
        asin=asins,
    )
    ratings = pd.read_csv(
        require_file(folder, "rating.txt"),
        sep="\t",
        header=None,
        names=["user", "asin", "rating"],
        dtype={"user": str, "asin": str, "rating": "float32"},
    )
    ratings = pd.DataFrame({"user": ratings["user"], "item_id": PREFIX + ratings["asin"], "rating": ratings["rating"]})
    pairs = pd.read_csv(
        require_file(folder, "context.txt"), sep="\t", header=None, names=["a", "b"], dtype=str
    )
    also_viewed = pd.DataFrame({"item_id": PREFIX + pairs["a"], "other_id": PREFIX + pairs["b"]})
    return ClothingDataset(items=items, ratings=ratings, also_viewed=also_viewed)
