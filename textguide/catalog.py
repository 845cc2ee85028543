"""Product catalogs: read CSV / TSV / JSONL / Parquet (gzip too), validate rows, compose the text to embed."""

from __future__ import annotations

import codecs
import gzip
import io
import logging
import re
import string
import zlib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger("textguide")

#: Fields the default text template joins, in order, skipping empty ones.
DEFAULT_TEXT_FIELDS = ("title", "category", "brand", "description")


@dataclass(frozen=True)
class ColumnMap:
    """Which source column holds each catalog field. ``None`` means the catalog has no such column."""

    id: str = "id"
    title: str = "title"
    description: str | None = "description"
    category: str | None = "category"
    brand: str | None = "brand"
    price: str | None = "price"
    extra: tuple[str, ...] = ()

    def optional(self) -> dict[str, str | None]:
        """Optional standard fields -> source column."""
        return {"description": self.description, "category": self.category, "brand": self.brand, "price": self.price}


@dataclass
class IngestReport:
    """What happened to the rows of a catalog source."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped_empty_title: list[int] = field(default_factory=list)
    duplicates_replaced: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One human-readable line."""
        s = f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}"
        if self.skipped_empty_title:
            s += f", skipped {len(self.skipped_empty_title)} with an empty title (rows {self.skipped_empty_title[:5]})"
        if self.duplicates_replaced:
            s += f", {len(self.duplicates_replaced)} duplicate ids resolved last-wins"
        return s


@dataclass
class Catalog:
    """Products ready to embed: string ids, the composed texts, and a metadata table aligned with them.

    ``metadata`` has one row per item with at least ``id`` and ``title`` and, where the source had
    them, ``description``, ``category``, ``brand``, ``price`` and the extra columns.
    """

    ids: list[str]
    texts: list[str]
    metadata: pd.DataFrame
    report: IngestReport | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.texts) == len(self.metadata)):
            raise ValueError(
                f"Catalog parts differ in length: {len(self.ids)} ids, {len(self.texts)} texts, "
                f"{len(self.metadata)} metadata rows"
            )

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        columns: ColumnMap | None = None,
        template: str | None = None,
        *,
        strict: bool = False,
        on_duplicate: Literal["error", "last"] = "error",
        source: str = "<frame>",
    ) -> "Catalog":
        """Validate a table and build a catalog (see :func:`load_catalog` for the rules)."""
        return catalog_from_frame(frame, columns or ColumnMap(), template, strict, on_duplicate, source)

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]], columns: ColumnMap | None = None, **kwargs: Any) -> "Catalog":
        """Build a catalog from a list of dicts (one per product)."""
        return cls.from_frame(pd.DataFrame.from_records(list(records)), columns, source="<records>", **kwargs)


def sample_catalog_path() -> Path:
    """Path of the bundled sample catalog (fashion + home, a few Chinese titles)."""
    return Path(str(resources.files("textguide") / "data" / "sample_catalog.csv"))


def _find_bad_line(raw: bytes, path: Path, err: UnicodeDecodeError) -> ValueError:
    # utf-8-sig reports offsets after a leading BOM: shift them back onto the raw bytes
    start = err.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
    line = raw[:start].count(b"\n") + 1
    return ValueError(
        f"{path}: line {line} is not valid UTF-8 (byte {raw[start:start + 1]!r} at offset {start}); "
        f"re-save the file as UTF-8"
    )


def _gunzip(path: Path) -> bytes:
    """The decompressed bytes of a ``.gz`` file; a file that is not gzip, or a damaged one, is a ValueError."""
    data = path.read_bytes()
    try:
        return gzip.decompress(data)
    except gzip.BadGzipFile as e:
        raise ValueError(f"{path}: not a gzip file ({e}); remove the .gz suffix if it is not compressed") from None
    except (EOFError, zlib.error) as e:
        raise ValueError(f"{path}: the gzip data is truncated or corrupted ({e}); copy or compress the file again") from None


def read_table(path: str | Path) -> pd.DataFrame:
    """Read CSV, TSV, JSONL/JSON or Parquet (optionally ``.gz``) into a string-typed DataFrame."""
    path = Path(path)
    if path.is_dir():
        from .stream import dataset_frame, is_dataset_dir

        if is_dataset_dir(path):  # a datasets.Dataset.save_to_disk folder
            return dataset_frame(path)
        raise ValueError(f"{path} is a directory, not a catalog file; give a .csv, .tsv, .jsonl, .json or .parquet "
                         f"file, or a folder written by datasets.Dataset.save_to_disk")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: catalog file not found")
    suffixes = [s.lower() for s in path.suffixes]
    compressed = suffixes[-1:] == [".gz"]
    kind = suffixes[-2] if compressed and len(suffixes) >= 2 else (suffixes[-1] if suffixes else "")
    if kind == ".parquet":
        try:
            return pd.read_parquet(io.BytesIO(_gunzip(path)) if compressed else path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"{path}: cannot read as Parquet ({e})") from e
    if kind not in {".csv", ".tsv", ".jsonl", ".json", ".txt"}:
        raise ValueError(
            f"{path}: unsupported catalog format {kind or '(no extension)'!r}; "
            f"use .csv, .tsv, .jsonl, .json or .parquet (optionally .gz)"
        )
    raw = _gunzip(path) if compressed else path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _find_bad_line(raw, path, e) from None
    if kind in {".jsonl", ".json"}:
        try:
            return pd.read_json(io.StringIO(text), lines=kind == ".jsonl", dtype=False)
        except ValueError as e:
            raise ValueError(f"{path}: not valid {'JSON Lines' if kind == '.jsonl' else 'JSON'} ({e})") from e
    sep = "\t" if kind == ".tsv" else ","
    _check_csv_shape(text, sep, path)
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the catalog is empty (no header, no rows); add products or check the file") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: cannot parse as {'TSV' if sep == chr(9) else 'CSV'} ({e})") from e


def is_blank(value: Any) -> bool:
    """Only a truly empty cell is empty: None, a missing number, or whitespace. "NaN", "NULL", "None" are words."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _check_csv_shape(text: str, sep: str, path: Path) -> None:
    """A duplicated header name, or a record whose field count differs from the header's, is an error that
    names the record's first line in the file (a quoted field may span lines)."""
    import csv

    reader = csv.reader(io.StringIO(text), delimiter=sep)
    header = next(reader, None)
    if header is None:
        return
    dups = sorted({h for h in header if header.count(h) > 1})
    if dups:
        raise ValueError(f"{path}: column {dups[0]!r} appears {header.count(dups[0])} times in the header; "
                         f"rename or drop the duplicates")
    last = reader.line_num
    try:
        for row in reader:
            first, last = last + 1, reader.line_num
            if row and len(row) != len(header):
                raise ValueError(
                    f"{path}: line {first} has {len(row)} field{'s' if len(row) != 1 else ''}, the header has "
                    f"{len(header)}; fix that row (quote values that contain {'a tab' if sep == chr(9) else 'commas'})"
                )
    except csv.Error as e:
        raise ValueError(f"{path}: cannot parse line {last + 1} ({e})") from None


def compose_text(row: dict[str, Any], template: str | None = None) -> str:
    """The string to embed for one product: the template filled in, or the default fields joined by '. '."""
    clean = {k: ("" if is_blank(v) else str(v).strip()) for k, v in row.items()}
    if template is None:
        parts = [clean.get(f, "") for f in DEFAULT_TEXT_FIELDS]
        return ". ".join(p.rstrip(".") for p in parts if p)
    try:
        text = template.format_map(_Blank(clean))
    except (ValueError, IndexError, AttributeError, TypeError) as e:
        raise ValueError(f"text template {template!r} is not a valid format string ({e})") from e
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"(\s*[.,;:|-]\s*){2,}", lambda m: m.group(0).strip()[0] + " ", text)  # drop empty slots
    return text.strip(" .,;:|-")


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def catalog_from_frame(
    frame: pd.DataFrame,
    columns: ColumnMap,
    template: str | None,
    strict: bool,
    on_duplicate: str,
    source: str,
) -> Catalog:
    """A validated :class:`Catalog` from a DataFrame (the body of :meth:`Catalog.from_frame` and :func:`load_catalog`;
    the streamed and distributed builds call it per batch)."""
    report = IngestReport(source=source, rows_read=len(frame))
    if len(frame) == 0:
        raise ValueError(f"{source}: the catalog is empty (no rows); add products or check the file")
    found = list(frame.columns)
    required = {"id": columns.id, "title": columns.title}
    for fname, col in required.items():
        if col not in frame.columns:
            raise ValueError(
                f"{source}: missing required column {col!r} (for field {fname!r}); found columns {found}; "
                f"map it with ColumnMap({fname}=...) or --{fname}-column"
            )
    for fname, col in columns.optional().items():
        if col is not None and col not in frame.columns and col != fname:
            raise ValueError(f"{source}: column {col!r} (for field {fname!r}) not found; found columns {found}")
    for col in columns.extra:
        if col not in frame.columns:
            raise ValueError(f"{source}: extra column {col!r} not found; found columns {found}")
    if on_duplicate not in ("error", "last"):
        raise ValueError(f"on_duplicate must be 'error' or 'last', got {on_duplicate!r}")

    dup_cols = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if dup_cols:
        raise ValueError(f"{source}: column {dup_cols[0]!r} appears more than once; rename or drop the duplicates")
    out = pd.DataFrame({"id": frame[columns.id], "title": frame[columns.title]})
    for fname, col in columns.optional().items():
        if col is not None and col in frame.columns:
            out[fname] = frame[col]
    for col in columns.extra:
        out[col] = frame[col]
    out = out.reset_index(drop=True)
    row_numbers = np.arange(1, len(out) + 1)  # 1-based data rows of the source, for error messages

    # ids: present, strings
    id_blank = out["id"].map(is_blank)
    if id_blank.any():
        rows = (np.flatnonzero(id_blank.to_numpy()) + 1).tolist()
        raise ValueError(f"{source}: column {columns.id!r} (id) is empty in rows {rows[:5]}; every product needs an id")
    out["id"] = out["id"].map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)).str.strip()

    # titles: text only (a list, a number or a dict is a broken row, not a product name)
    for r, v in enumerate(out["title"].tolist()):
        if not is_blank(v) and not isinstance(v, str):
            raise ValueError(
                f"{source}: column {columns.title!r} (title) holds a {type(v).__name__} value, not text, in row "
                f"{r + 1} (id {out['id'][r]!r}); give every product a plain text title"
            )

    # titles: empty -> skipped (or an error under strict)
    title_blank = out["title"].map(is_blank).to_numpy()
    if title_blank.any():
        rows = (np.flatnonzero(title_blank) + 1).tolist()
        if strict:
            raise ValueError(
                f"{source}: column {columns.title!r} (title) is empty or NaN in rows {rows[:5]}"
                f"{' and more' if len(rows) > 5 else ''} (ids {out['id'][title_blank].tolist()[:5]}); "
                f"fill them in, or drop strict to skip them"
            )
        report.skipped_empty_title = rows
        logger.warning("%s: skipping %d rows with an empty title (rows %s)", source, len(rows), rows[:5])
        out = out[~title_blank].reset_index(drop=True)
        row_numbers = row_numbers[~title_blank]
    if len(out) == 0:
        raise ValueError(f"{source}: the catalog is empty after skipping rows with no title")

    # price: numeric where given
    if "price" in out.columns:
        price = pd.to_numeric(out["price"], errors="coerce")
        bad = price.isna() & ~out["price"].map(is_blank)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{source}: column {columns.price!r} (price) has a non-numeric value {out['price'][i]!r} "
                f"in row {int(row_numbers[i])} (id {out['id'][i]!r}); use a plain number such as 19.99 or leave it empty"
            )
        for problem, mask in (("a value that is not finite", ~np.isfinite(price.fillna(0.0))),
                              ("a negative value", price.fillna(0.0) < 0)):
            if mask.any():
                i = int(np.flatnonzero(mask.to_numpy())[0])
                raise ValueError(
                    f"{source}: column {columns.price!r} (price) has {problem} {out['price'][i]!r} for id "
                    f"{out['id'][i]!r}; prices must be finite numbers >= 0 (or empty)"
                )
        out["price"] = price.astype("float64")

    # duplicates
    dup = out["id"].duplicated(keep=False)
    if dup.any():
        dups = list(dict.fromkeys(out["id"][dup]))
        if on_duplicate == "error":
            raise ValueError(
                f"{source}: {len(dups)} duplicate ids, first {dups[:5]}; make ids unique, "
                f"or pass on_duplicate='last' (--on-duplicate last) to keep the last row of each"
            )
        logger.warning("%s: %d duplicate ids resolved last-wins (first %s)", source, len(dups), dups[:5])
        report.duplicates_replaced = dups
        out = out.drop_duplicates("id", keep="last").reset_index(drop=True)

    for col in out.columns:
        if col not in ("id", "price"):
            out[col] = out[col].map(lambda v: "" if is_blank(v) else str(v).strip())
    records = out.to_dict("records")
    if template is not None:
        known = set(out.columns)
        try:  # the fields the template names ("{{...}}" is a literal brace, not a field)
            fields = [(f, spec or "") for _, f, spec, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as e:
            raise ValueError(f"text template {template!r} is not a valid format string ({e})") from e
        for name, spec in fields:
            plain = re.fullmatch(r"[^.\[\]{}!:]+", name) and not name.isdigit()
            if not plain or "{" in spec:  # no attribute / index access, positions or nested fields
                raise ValueError(
                    f"text template {template!r} is not a valid format string here: a template may only name columns, "
                    f"like '{{title}}. {{brand}}' ({'{' + name + (':' + spec if spec else '') + '}'!r} is not one)"
                )
            if name not in known:
                raise ValueError(
                    f"text template {template!r} uses field {name!r}, which the catalog lacks; "
                    f"available: {sorted(known)}"
                )
    texts = [compose_text(r, template) for r in records]
    report.rows_kept = len(out)
    return Catalog(ids=out["id"].tolist(), texts=texts, metadata=out, report=report)


def load_catalog(
    path: str | Path | Any,
    columns: ColumnMap | None = None,
    template: str | None = None,
    *,
    strict: bool = False,
    on_duplicate: Literal["error", "last"] = "error",
    keep: Sequence[str] = (),
) -> Catalog:
    """Read and validate a product catalog file (or a ``datasets.Dataset`` / its ``save_to_disk`` folder).

    ``keep`` names more columns to keep as metadata *where the source has them* (``columns.extra`` must be
    there): a guide onboarding a catalog keeps its own fields this way, e.g. the outfit slot field.

    Rules: a missing required column (id, title) is an error naming it and the columns found; an
    empty or NaN title is skipped and counted in ``catalog.report`` (an error when ``strict``);
    duplicate ids are an error listing the first few (last row wins with ``on_duplicate='last'``);
    undecodable bytes name the file and line; an empty catalog is an error.

    Example:
        >>> cat = load_catalog(sample_catalog_path())
        >>> len(cat) > 300
        True
    """
    if not isinstance(path, (str, Path)):  # a datasets.Dataset
        from .stream import dataset_frame

        frame, path = dataset_frame(path), "<dataset>"
    else:
        frame = read_table(path)
    columns = columns or ColumnMap()
    mapped = {columns.id, columns.title, *columns.optional().values(), *columns.extra}
    more = tuple(c for c in dict.fromkeys(keep) if c in frame.columns and c not in mapped)
    if more:
        columns = replace(columns, extra=columns.extra + more)
    return catalog_from_frame(frame, columns, template, strict, on_duplicate, str(path))
