"""Shared helpers for the dataset loaders: locating the data, clear errors, composing item text."""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

ENV_VAR = "TEXTGUIDE_DATA"
MAX_TEXT_CHARS = 400

_WS = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]{0,200}>")


def data_root() -> Path:
    """Return the folder holding the public datasets ($TEXTGUIDE_DATA, else <repo>/../shared/data)."""
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"{ENV_VAR}={env!r} is not a directory. Point {ENV_VAR} at the folder that holds the "
                "dataset folders (amazon-scientific/, hm/, ...), or unset it to use <repo>/../shared/data."
            )
        return root
    root = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset folder not found: looked for {root} (<repo>/../shared/data). "
            f"Set {ENV_VAR}=/path/to/data (the folder holding amazon-scientific/, hm/, ...)."
        )
    return root


def dataset_dir(folder: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Return one dataset's folder: <root>/<folder>, or root itself when it is that folder."""
    base = data_root() if root is None else Path(root).expanduser()
    candidate = base / folder
    if candidate.is_dir():
        return candidate
    if root is not None and base.is_dir():
        return base  # the dataset folder itself was passed; require_file() names any missing file
    raise FileNotFoundError(
        f"dataset folder {folder!r} not found: looked for {candidate}. Pass root=<folder holding {folder}/> "
        f"or set {ENV_VAR}."
    )


def require_file(directory: Path, name: str) -> Path:
    """Return directory/name, raising FileNotFoundError naming the path and the dataset README."""
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found. See {directory / 'README.md'} for the files this dataset should hold; "
            f"set {ENV_VAR} if the data lives elsewhere."
        )
    return path


def find_file(directory: Path, *names: str) -> Path:
    """Return the first existing file among names (e.g. 'x.csv.gz', 'x.csv'), else raise FileNotFoundError."""
    for name in names:
        if (directory / name).is_file():
            return directory / name
    return require_file(directory, names[0])


def is_missing(value: object) -> bool:
    """True for None, NaN and blank strings."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, str) and not value.strip()


def clean(value: object) -> str:
    """Return value as a one-line string: HTML entities decoded, tags dropped, whitespace collapsed."""
    if is_missing(value):
        return ""
    text = str(value)
    if "&" in text:
        text = html.unescape(text)
    if "<" in text:
        text = _TAG.sub(" ", text)
    if "  " in text or "\n" in text or "\t" in text or "\r" in text or "\xa0" in text:
        text = _WS.sub(" ", text)
    return text.strip()


def trim_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Cut text to at most max_chars, at a word boundary where possible."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-")


def join_sentences(parts: Iterable[object], max_chars: int = MAX_TEXT_CHARS, sep: str = ". ") -> str:
    """Join the non-empty parts into sentences ("a. b. c."), dropping repeats, trimmed to max_chars."""
    pieces: list[str] = []
    seen: set[str] = set()
    for part in parts:
        text = clean(part).rstrip(" .")
        if not text or text.lower() in seen:
            continue
        seen.add(text.lower())
        pieces.append(text)
    if not pieces:
        return ""
    joined = sep.join(pieces)
    if sep.strip() == "." and joined[-1] not in ".!?":
        joined += "."
    return trim_text(joined, max_chars)


def compose_rows(rows: Iterable[tuple[object, ...]], max_chars: int = MAX_TEXT_CHARS) -> list[str]:
    """join_sentences over many rows, composing each distinct row once."""
    cache: dict[tuple[object, ...], str] = {}
    out: list[str] = []
    for row in rows:
        text = cache.get(row)
        if text is None:
            text = cache[row] = join_sentences(row, max_chars)
        out.append(text)
    return out


def compose_column(frame: pd.DataFrame, columns: Sequence[str], max_chars: int = MAX_TEXT_CHARS) -> list[str]:
    """join_sentences applied row-wise over the given columns of a DataFrame."""
    return compose_rows(zip(*(frame[c].tolist() for c in columns)), max_chars)


def sentence_case(text: object) -> str:
    """'BREAD:ITALIAN/FRENCH' -> 'Bread: italian/french' (keeps short known acronyms upper-case)."""
    raw = clean(text)
    if not raw:
        return ""
    low = raw.lower()
    low = re.sub(r"\s*:\s*", ": ", low)
    low = re.sub(r"\b(gm|nz|usa|uk|tv|dvd|cd|bbq|otc|hbc|diy|led|usb)\b", lambda m: m.group(1).upper(), low)
    return low[0].upper() + low[1:]


class SeqExample(NamedTuple):
    """One next-item example: a user, the ids of the items seen so far (oldest first), the next item id."""

    user: str
    history: list[str]
    target: str


@dataclass
class SequenceDataset:
    """Items plus next-item examples per split; a split that is not available here is None."""

    items: pd.DataFrame
    train: list[SeqExample] | None = None
    valid: list[SeqExample] | None = None
    test: list[SeqExample] | None = None


@dataclass
class Outfit:
    """One outfit: its id, split, item ids and the slot (and category) of each item."""

    set_id: str
    split: str
    item_ids: list[str]
    slots: list[str]
    categories: list[str] = field(default_factory=list)


@dataclass
class OutfitDataset:
    """Items plus outfits; category_outfits holds outfits known only by their items' category names."""

    items: pd.DataFrame
    outfits: list[Outfit]
    category_outfits: list[list[str]] = field(default_factory=list)
    category_outfit_info: pd.DataFrame | None = None


def isin(values: pd.Series, allowed: Iterable[object]) -> np.ndarray:
    """Boolean mask of values found in allowed (a set lookup; much faster than Series.isin on arrow strings)."""
    known = set(allowed.tolist() if isinstance(allowed, pd.Series) else allowed)
    return np.fromiter((v in known for v in values.tolist()), dtype=bool, count=len(values))


def item_frame(
    ids: Sequence[str],
    titles: Sequence[str],
    texts: Sequence[str],
    categories: Sequence[str],
    **extra: Sequence[object],
) -> pd.DataFrame:
    """Build an items DataFrame with the standard leading columns id, title, text, category."""
    frame = pd.DataFrame({"id": list(ids), "title": list(titles), "text": list(texts), "category": list(categories)})
    for name, values in extra.items():
        frame[name] = list(values) if not isinstance(values, pd.Series) else values.to_numpy()
    return frame
