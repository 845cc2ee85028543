"""Amazon 2018 Industrial_and_Scientific / Office_Products (MiniOneRec format): items + valid / test next-item rows."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Literal

import pandas as pd

from ._common import SeqExample, SequenceDataset, clean, dataset_dir, item_frame, join_sentences, require_file

FOLDER = "amazon-industrial-office"
DOMAINS = {
    "Industrial_and_Scientific": ("ind:", "Industrial & Scientific"),
    "Office_Products": ("off:", "Office Products"),
}
SUFFIX = "_5_2016-10-2018-11.csv"

Domain = Literal["Industrial_and_Scientific", "Office_Products"]


def load_domain(name: Domain, root: str | os.PathLike[str] | None = None) -> SequenceDataset:
    """Load one domain's items and its valid / test next-item rows (no train split exists here)."""
    if name not in DOMAINS:
        raise ValueError(f"name must be one of {sorted(DOMAINS)}, got {name!r}")
    prefix, domain_label = DOMAINS[name]
    folder = dataset_dir(FOLDER, root)
    with open(require_file(folder, f"{name}.item.json"), encoding="utf-8") as handle:
        raw = json.load(handle)
    keys = sorted(raw, key=int)
    titles, texts, categories, brands = [], [], [], []
    for key in keys:
        meta = raw[key]
        title = clean(meta.get("title"))
        brand = clean(meta.get("brand"))
        cats = _categories(meta.get("categories"))
        titles.append(title)
        brands.append(brand)
        categories.append(cats[0] if cats else domain_label)
        texts.append(join_sentences([title, " > ".join(cats), brand, _description(meta.get("description"))]))
    items = item_frame([prefix + k for k in keys], titles, texts, categories, brand=brands)
    return SequenceDataset(
        items=items,
        valid=_read_rows(require_file(folder / "valid", name + SUFFIX), prefix),
        test=_read_rows(require_file(folder / "test", name + SUFFIX), prefix),
    )


def _categories(value: object) -> list[str]:
    """Categories as a list (the field is a list, a python-literal string, or empty)."""
    if isinstance(value, list):
        return [clean(v) for v in value if clean(v)]
    text = clean(value)
    if not text:
        return []
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        flat: list[str] = []
        for v in parsed:
            flat.extend(v if isinstance(v, list) else [v])
        return [clean(v) for v in flat if clean(v)]
    return [text]


def _description(value: object) -> str:
    """Description text from a python-literal list of paragraphs (or a plain string)."""
    text = value if isinstance(value, str) else " ".join(map(str, value or []))
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
            if isinstance(parsed, list):
                text = " ".join(str(p) for p in parsed)
        except (ValueError, SyntaxError):
            pass
    return clean(text)


def _read_rows(path: Path, prefix: str) -> list[SeqExample]:
    """Read one valid/test CSV into (user, history ids, target id) rows."""
    frame = pd.read_csv(path, usecols=["user_id", "history_item_id", "item_id"], dtype=str)
    rows: list[SeqExample] = []
    for number, (user, history, target) in enumerate(frame.itertuples(index=False, name=None), start=2):
        try:
            hist = ast.literal_eval(history)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"{path}:{number}: history_item_id is not a python list: {history!r}") from exc
        rows.append(SeqExample(str(user), [f"{prefix}{int(i)}" for i in hist], f"{prefix}{int(target)}"))
    return rows
