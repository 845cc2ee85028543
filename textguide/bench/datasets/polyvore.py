"""Maryland Polyvore outfits (MCN / NGNN re-distributions merged by set_id); MCN test outfits are held out."""

from __future__ import annotations

import json
import os

import pandas as pd

from ._common import Outfit, OutfitDataset, clean, dataset_dir, item_frame, join_sentences, require_file

FOLDER = "polyvore-maryland"
PREFIX = "pv:"
SLOTS = ("upper", "bottom", "shoe", "bag", "accessory")


def load_polyvore(root: str | os.PathLike[str] | None = None) -> OutfitDataset:
    """Load named Polyvore items and outfits (id "pv:<set_id>_<index>"), plus the category-only outfits."""
    path = require_file(dataset_dir(FOLDER, root), "outfits.jsonl")
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    categories: list[str] = []
    slots: list[str] = []
    set_ids: list[str] = []
    outfits: list[Outfit] = []
    category_outfits: list[list[str]] = []
    category_info: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                set_id = str(row["set_id"])
                members = row["items"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise ValueError(f"{path}:{number}: expected a JSON object with set_id and items ({exc})") from exc
            mcn, ngnn = row.get("mcn_split"), row.get("ngnn_split")
            split = mcn if mcn else f"ngnn-{ngnn}"
            named = [m for m in members if clean(m.get("name"))]
            if named:
                outfit = Outfit(set_id=set_id, split=split, item_ids=[], slots=[], categories=[])
                for member in named:
                    item_id = f"{PREFIX}{set_id}_{member['index']}"
                    name = clean(member["name"])
                    category = clean(member.get("category_name"))
                    slot = clean(member.get("slot"))
                    ids.append(item_id)
                    titles.append(name)
                    texts.append(join_sentences([name, category]))
                    categories.append(category)
                    slots.append(slot)
                    set_ids.append(set_id)
                    outfit.item_ids.append(item_id)
                    outfit.slots.append(slot)
                    outfit.categories.append(category)
                outfits.append(outfit)
            else:
                names = [clean(m.get("category_name")) for m in members if clean(m.get("category_name"))]
                if names:
                    category_outfits.append(names)
                    category_info.append((set_id, f"ngnn-{ngnn}" if ngnn else str(mcn)))
    items = item_frame(ids, titles, texts, categories, slot=slots, set_id=set_ids)
    info = pd.DataFrame(category_info, columns=["set_id", "split"])
    return OutfitDataset(items=items, outfits=outfits, category_outfits=category_outfits, category_outfit_info=info)
