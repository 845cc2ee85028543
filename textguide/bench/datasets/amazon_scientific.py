"""Amazon 2018 Industrial & Scientific ("Scientific"), UniSRec format: 4,385 items, train + valid (test held out)."""

from __future__ import annotations

import os
from pathlib import Path

from ._common import SeqExample, SequenceDataset, clean, dataset_dir, item_frame, require_file, trim_text

FOLDER = "amazon-scientific"
PREFIX = "sci:"
TOP = "Industrial & Scientific"

# Second-level Amazon categories under "Industrial & Scientific"; the text joins category levels with spaces,
# so the first level below the top is recovered by prefix match against this list (longest first).
SUBCATEGORIES = sorted(
    [
        "Abrasive & Finishing Products",
        "Additive Manufacturing Products",
        "Commercial Door Products",
        "Cutting Tools",
        "Fasteners",
        "Filtration",
        "Food Service Equipment & Supplies",
        "Hydraulics, Pneumatics & Plumbing",
        "Industrial Electrical",
        "Industrial Hardware",
        "Industrial Power & Hand Tools",
        "Janitorial & Sanitation Supplies",
        "Lab & Scientific Products",
        "Material Handling Products",
        "Occupational Health & Safety Products",
        "Packaging & Shipping Supplies",
        "Power Transmission Products",
        "Professional Dental Supplies",
        "Professional Medical Supplies",
        "Raw Materials",
        "Retail Store Fixtures & Equipment",
        "Robotics",
        "Science Education",
        "Tapes, Adhesives & Sealants",
        "Test, Measure & Inspect",
    ],
    key=len,
    reverse=True,
)


def _parse_text(raw: str) -> tuple[str, str, str]:
    """Split a UniSRec 'title. categories. brand.' string into (title, first category, cleaned text)."""
    text = clean(raw)
    marker = text.rfind(". " + TOP)
    if marker >= 0:
        title = text[:marker].strip()
        rest = text[marker + 2 + len(TOP) :].lstrip()
        category = next((c for c in SUBCATEGORIES if rest.startswith(c)), "")
    else:
        title = text.split(". . ", 1)[0] if ". . " in text else text.rsplit(". ", 1)[0]
        category = ""
    text = text.replace(". . ", ". ").rstrip()
    return title.rstrip(" ."), category, trim_text(text)


def load_scientific(root: str | os.PathLike[str] | None = None) -> SequenceDataset:
    """Load Scientific items (item2index order) and the train / valid next-item examples."""
    folder = dataset_dir(FOLDER, root)
    item2index = _read_pairs(require_file(folder, "Scientific.item2index"))
    user2index = _read_pairs(require_file(folder, "Scientific.user2index"))
    texts: dict[str, str] = {}
    with open(require_file(folder, "Scientific.text"), encoding="utf-8") as handle:
        next(handle)  # header
        for line in handle:
            line = line.rstrip("\n")
            if line:
                asin, _, text = line.partition("\t")
                texts[asin] = text
    asins = [asin for asin, _ in sorted(item2index.items(), key=lambda kv: int(kv[1]))]
    missing = [a for a in asins if a not in texts]
    if missing:
        raise KeyError(
            f"{len(missing)} items of Scientific.item2index have no row in Scientific.text, e.g. {missing[:3]}"
        )
    parsed = [_parse_text(texts[a]) for a in asins]
    items = item_frame(
        [PREFIX + a for a in asins],
        [p[0] for p in parsed],
        [p[2] for p in parsed],
        [p[1] for p in parsed],
        asin=asins,
    )
    ids = items["id"].tolist()
    users = {int(v): k for k, v in user2index.items()}
    return SequenceDataset(
        items=items,
        train=_read_inter(require_file(folder, "Scientific.train.inter"), ids, users),
        valid=_read_inter(require_file(folder, "Scientific.valid.inter"), ids, users),
    )


def _read_pairs(path: Path) -> dict[str, str]:
    """Read a two-column tab-separated mapping file."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.rstrip("\n").partition("\t")
            if key:
                out[key] = value
    return out


def _read_inter(path: Path, ids: list[str], users: dict[int, str]) -> list[SeqExample]:
    """Read a RecBole .inter file (user, space-separated history indices, target index)."""
    rows: list[SeqExample] = []
    with open(path, encoding="utf-8") as handle:
        next(handle)  # header
        for number, line in enumerate(handle, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                if not line.strip():
                    continue
                raise ValueError(f"{path}:{number}: expected 3 tab-separated fields, got {len(parts)}")
            user, history, target = parts
            rows.append(
                SeqExample(users.get(int(user), user), [ids[int(i)] for i in history.split()], ids[int(target)])
            )
    return rows
