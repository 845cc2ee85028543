"""Catalog loading: every format gives the same catalog, and every validation error says what and where."""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from textguide.catalog import Catalog, ColumnMap, compose_text, load_catalog, sample_catalog_path


def _write(path: Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` in the format named by ``path``'s extension, with plain writers (not textguide's)."""
    name = path.name
    if name.endswith(".csv.gz"):
        path.write_bytes(gzip.compress(frame.to_csv(index=False).encode("utf-8")))
    elif name.endswith(".csv"):
        frame.to_csv(path, index=False)
    elif name.endswith(".tsv"):
        frame.to_csv(path, index=False, sep="\t")
    elif name.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            for rec in frame.to_dict("records"):
                rec = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    elif name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        raise AssertionError(name)
    return path


# ---------------------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl", "parquet", "csv.gz"])
def test_every_format_loads_the_same_catalog(tmp_path: Path, ext: str, products: list[dict]) -> None:
    PRODUCTS = products
    frame = pd.DataFrame(PRODUCTS)
    cat = load_catalog(_write(tmp_path / f"catalog.{ext}", frame))

    # independent truth: the records themselves
    assert cat.ids == [p["id"] for p in PRODUCTS]
    assert cat.metadata["title"].tolist() == [p["title"] for p in PRODUCTS]
    assert cat.metadata["category"].tolist() == [p["category"] for p in PRODUCTS]
    prices = cat.metadata["price"].tolist()
    for got, p in zip(prices, PRODUCTS):
        assert (math.isnan(got) if p["price"] is None else got == pytest.approx(p["price"]))
    assert cat.metadata["price"].dtype == "float64"
    # default text: title. category. brand. description (empty parts skipped)
    assert cat.texts[0] == "Cast iron skillet 26 cm. Kitchen. Forge. Pre-seasoned pan for searing"
    assert cat.texts[2] == "Stainless steel saucepan with lid. Kitchen. Inox"  # empty description
    assert cat.report is not None and cat.report.rows_read == cat.report.rows_kept == len(PRODUCTS)

    # and every format equals the CSV one, field by field
    ref = load_catalog(_write(tmp_path / "ref.csv", frame))
    assert cat.ids == ref.ids and cat.texts == ref.texts
    pd.testing.assert_frame_equal(
        cat.metadata.reset_index(drop=True), ref.metadata.reset_index(drop=True), check_dtype=False
    )


def test_json_array_and_numeric_ids(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps([{"id": 7, "title": "Seven"}, {"id": 8, "title": "Eight"}]), encoding="utf-8")
    cat = load_catalog(path)
    assert cat.ids == ["7", "8"]  # ids are strings
    assert cat.texts == ["Seven", "Eight"]


def test_parquet_gz(tmp_path: Path, products: list[dict]) -> None:
    plain = _write(tmp_path / "c.parquet", pd.DataFrame(products))
    gz = tmp_path / "c.parquet.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_catalog(gz).texts == load_catalog(plain).texts


def test_bundled_sample_catalog() -> None:
    cat = load_catalog(sample_catalog_path())
    # figures from textguide/data/README.md
    assert len(cat) == 325
    assert cat.ids[0] == "tg-0001" and cat.ids[-1] == "tg-0325"
    counts = cat.metadata["category"].value_counts().to_dict()
    assert counts["Tops"] == 37 and counts["Kitchen"] == 30 and len(counts) == 10
    assert any("不粘锅炒锅" in t for t in cat.texts)


def test_column_map_and_extra(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("sku,name,kind,colour\nA1,Red mug,Kitchen,red\nA2,Blue mug,Kitchen,blue\n", encoding="utf-8")
    cat = load_catalog(
        path,
        ColumnMap(id="sku", title="name", category="kind", description=None, brand=None, price=None, extra=("colour",)),
    )
    assert cat.ids == ["A1", "A2"]
    assert cat.metadata["category"].tolist() == ["Kitchen", "Kitchen"]
    assert cat.metadata["colour"].tolist() == ["red", "blue"]
    assert cat.texts == ["Red mug. Kitchen", "Blue mug. Kitchen"]


def test_keep_takes_the_named_columns_the_source_has(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,title,slot,colour\nA1,Red boots,shoe,red\nA2,Blue bag,bag,blue\n", encoding="utf-8")
    cat = load_catalog(path, keep=("slot", "season", "title"))  # 'season' absent: skipped; 'title' is mapped
    assert list(cat.metadata.columns) == ["id", "title", "slot"]  # colour is not asked for: dropped as before
    assert cat.metadata["slot"].tolist() == ["shoe", "bag"] and cat.texts == ["Red boots", "Blue bag"]
    both = load_catalog(path, ColumnMap(extra=("colour",)), keep=("slot", "colour"))
    assert list(both.metadata.columns) == ["id", "title", "colour", "slot"]
    with pytest.raises(ValueError, match=r"extra column 'season' not found"):  # extra stays a requirement
        load_catalog(path, ColumnMap(extra=("season",)), keep=("slot",))


# ---------------------------------------------------------------------------------------------------------
# templates
# ---------------------------------------------------------------------------------------------------------


def test_template_fills_and_drops_empty_slots() -> None:
    recs = [{"id": "a", "title": "Mug", "brand": "Acme", "description": "Big"}, {"id": "b", "title": "Cup", "brand": "", "description": "Small"}]
    cat = Catalog.from_records(recs, template="{brand} - {title}. {description}")
    assert cat.texts == ["Acme - Mug. Big", "Cup. Small"]


def test_template_literal_braces() -> None:
    cat = Catalog.from_records([{"id": "a", "title": "Mug"}], template="{{sale}} {title}")
    assert cat.texts == ["{sale} Mug"]


def test_template_unknown_field() -> None:
    with pytest.raises(ValueError, match=r"uses field 'maker', which the catalog lacks; available: \['id', 'title'\]"):
        Catalog.from_records([{"id": "a", "title": "Mug"}], template="{title} by {maker}")


@pytest.mark.parametrize("template", ["{title", "{title!z}", "{}", "{title.nope}"])
def test_template_malformed(template: str) -> None:
    with pytest.raises(ValueError, match=r"is not a valid format string"):
        Catalog.from_records([{"id": "a", "title": "Mug"}], template=template)


def test_compose_text_default() -> None:
    assert compose_text({"title": "Mug.", "category": "Kitchen", "brand": float("nan"), "description": " Big "}) == "Mug. Kitchen. Big"


# ---------------------------------------------------------------------------------------------------------
# validation errors
# ---------------------------------------------------------------------------------------------------------


def test_missing_required_column_names_it_and_lists_found(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,name,price\n1,Mug,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing required column 'title'.*found columns \['id', 'name', 'price'\]"):
        load_catalog(path)
    path.write_text("sku,title\n1,Mug\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing required column 'id'.*found columns \['sku', 'title'\]"):
        load_catalog(path)


def test_mapped_optional_column_missing(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,title\n1,Mug\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"column 'kind' \(for field 'category'\) not found; found columns \['id', 'title'\]"):
        load_catalog(path, ColumnMap(category="kind"))
    with pytest.raises(ValueError, match=r"extra column 'colour' not found"):
        load_catalog(path, ColumnMap(extra=("colour",)))


def test_empty_and_nan_titles_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.csv"
    path.write_text('id,title\na,Mug\nb,\nc,Cup\nd,"   "\ne,NaN\nf,Plate\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="textguide"):
        cat = load_catalog(path)
    assert cat.ids == ["a", "c", "e", "f"]  # "NaN" is a real title (a brand), only empty cells are empty
    assert cat.report.skipped_empty_title == [2, 4]  # 1-based data rows
    assert cat.report.rows_read == 6 and cat.report.rows_kept == 4
    assert "skipped 2 with an empty title" in cat.report.summary()
    assert "skipping 2 rows with an empty title" in caplog.text

    # JSON null is a NaN title too
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"id": "a", "title": "Mug"}\n{"id": "b", "title": null}\n', encoding="utf-8")
    assert load_catalog(jl).report.skipped_empty_title == [2]


def test_empty_title_is_an_error_under_strict(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,title\na,Mug\nb,\nc,Cup\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'title' \(title\) is empty or NaN in rows \[2\] \(ids \['b'\]\)"):
        load_catalog(path, strict=True)


def test_duplicate_ids_error_lists_first_ones(tmp_path: Path) -> None:
    rows = ["id,title"] + [f"{i},item {n}" for n, i in enumerate(["a", "b", "a", "c", "b", "d", "e", "e", "f", "f", "g", "g", "h", "h"])]
    path = tmp_path / "c.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"6 duplicate ids, first \['a', 'b', 'e', 'f', 'g'\]; make ids unique") as err:
        load_catalog(path)
    assert "on_duplicate='last'" in str(err.value)


def test_duplicate_ids_last_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,title,price\na,Old mug,1\nb,Cup,2\na,New mug,3\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="textguide"):
        cat = load_catalog(path, on_duplicate="last")
    assert sorted(cat.ids) == ["a", "b"]
    row = cat.metadata.set_index("id").loc["a"]
    assert row["title"] == "New mug" and row["price"] == 3.0
    assert cat.texts[cat.ids.index("a")] == "New mug"
    assert cat.report.duplicates_replaced == ["a"]
    assert any(r.levelno == logging.WARNING and "duplicate ids resolved last-wins" in r.getMessage() for r in caplog.records)


def test_bad_on_duplicate_value(tmp_path: Path, catalog_csv: Path) -> None:
    with pytest.raises(ValueError, match=r"on_duplicate must be 'error' or 'last', got 'first'"):
        load_catalog(catalog_csv, on_duplicate="first")  # type: ignore[arg-type]


@pytest.mark.parametrize("bom", [False, True])
def test_undecodable_bytes_name_file_and_line(tmp_path: Path, bom: bool) -> None:
    raw = (b"\xef\xbb\xbf" if bom else b"") + b"id,title\na,Mug\nb,Caf\xe9 cup\nc,Plate\n"  # latin-1 e-acute on line 3
    path = tmp_path / "c.csv"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3 is not valid UTF-8 (byte b'\\xe9'")):
        load_catalog(path)


def test_undecodable_bytes_in_gzip(tmp_path: Path) -> None:
    path = tmp_path / "c.csv.gz"
    path.write_bytes(gzip.compress(b"id,title\na,Mug\nb,ok\nc,\xff\n"))
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 4 is not valid UTF-8")):
        load_catalog(path)


def test_empty_catalog(tmp_path: Path) -> None:
    header_only = tmp_path / "h.csv"
    header_only.write_text("id,title\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"h\.csv: the catalog is empty"):
        load_catalog(header_only)
    zero = tmp_path / "z.csv"
    zero.write_bytes(b"")
    with pytest.raises(ValueError, match=r"z\.csv: the catalog is empty"):
        load_catalog(zero)
    zero_jl = tmp_path / "z.jsonl"
    zero_jl.write_bytes(b"")
    with pytest.raises(ValueError, match=r"the catalog is empty"):
        load_catalog(zero_jl)
    no_titles = tmp_path / "n.csv"
    no_titles.write_text("id,title\na,\nb,\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"the catalog is empty after skipping rows with no title"):
        load_catalog(no_titles)


def test_non_numeric_price(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,title,price\nz,,1\na,Mug,3.5\nb,Cup,cheap\nc,Plate,\n", encoding="utf-8")
    # the row counts the skipped empty-title row z: it is the row number in the file (header excluded)
    with pytest.raises(ValueError, match=r"'price' \(price\) has a non-numeric value 'cheap' in row 3 \(id 'b'\)"):
        load_catalog(path)


def test_empty_id(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,title\na,Mug\n,Cup\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'id' \(id\) is empty in rows \[2\]"):
        load_catalog(path)


@pytest.mark.parametrize("name", ["c.xlsx", "c.csv.bz2", "catalog"])
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("id,title\na,Mug\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported catalog format .*use \.csv, \.tsv, \.jsonl, \.json or \.parquet"):
        load_catalog(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: catalog file not found"):
        load_catalog(tmp_path / "nope.csv")


def test_corrupt_parquet_names_file(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(ValueError, match=r"c\.parquet: cannot read as Parquet"):
        load_catalog(path)


def test_malformed_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "title": "Mug"}\n{"id": "b", "title": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"c\.jsonl: not valid JSON Lines"):
        load_catalog(path)


def test_catalog_parts_must_align() -> None:
    with pytest.raises(ValueError, match=r"Catalog parts differ in length: 2 ids, 1 texts, 2 metadata rows"):
        Catalog(ids=["a", "b"], texts=["x"], metadata=pd.DataFrame({"id": ["a", "b"]}))
