"""Lose nothing, trust nothing: directories that are not guides, torn reads, hostile manifests and inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from textguide.catalog import Catalog
from textguide.cli import main
from textguide.encoder import HashingEncoder
from textguide.guide import Guide, build_index
from textguide.storage import ArtifactError


@pytest.fixture
def guide(catalog: Catalog, enc: HashingEncoder) -> Guide:
    return Guide.build(catalog, enc)


@pytest.fixture
def saved(guide: Guide, tmp_path: Path) -> Path:
    return guide.save(tmp_path / "guide")


# ---------------------------------------------------------------------------------------------------------
# 1. build-index never deletes a directory that is not a guide
# ---------------------------------------------------------------------------------------------------------


def _documents(tmp_path: Path) -> Path:
    docs = tmp_path / "documents"
    (docs / "sub").mkdir(parents=True)
    (docs / "thesis.txt").write_text("five years of work", encoding="utf-8")
    (docs / "sub" / "notes.md").write_text("notes", encoding="utf-8")
    return docs


def _tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_build_index_refuses_a_directory_that_is_not_a_guide(catalog_csv: Path, tmp_path: Path) -> None:
    docs = _documents(tmp_path)
    before = _tree(docs)
    with pytest.raises(ValueError, match=r"documents.*not a textguide guide.*--force"):
        build_index(catalog_csv, docs, encoder="hashing:32", use_cache=False)
    assert _tree(docs) == before


def test_build_index_into_the_catalogs_own_directory_keeps_the_catalog(catalog_csv: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    before = catalog_csv.read_bytes()
    rc = main(["build-index", str(catalog_csv), str(catalog_csv.parent), "--encoder", "hashing:32", "--no-cache"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a textguide guide" in err and "--force" in err and "Traceback" not in err
    assert catalog_csv.read_bytes() == before


def test_build_index_force_keeps_the_old_contents_aside(catalog_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    docs = _documents(tmp_path)
    before = _tree(docs)
    rc = main(["build-index", str(catalog_csv), str(docs), "--encoder", "hashing:32", "--no-cache", "--force"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert Guide.load(docs).index.count == 20
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("documents.replaced-")]
    assert len(kept) == 1 and _tree(kept[0]) == before  # nothing deleted: moved aside, and said where
    assert str(kept[0]) in caplog.text and "thesis.txt" in caplog.text  # the CLI prints warnings on stderr


def test_build_index_replaces_a_guide_or_an_empty_directory(catalog_csv: Path, tmp_path: Path, products) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    build_index(catalog_csv, empty, encoder="hashing:32", use_cache=False)
    assert Guide.load(empty).index.count == 20
    small = tmp_path / "small.csv"
    small.write_text("id,title\na,Red mug\nb,Blue scarf\n", encoding="utf-8")
    build_index(small, empty, encoder="hashing:32", use_cache=False)  # a guide: replaced without --force
    assert Guide.load(empty).index.live_ids() == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir() if "replaced" in p.name] == []


def test_build_index_refuses_a_file(catalog_csv: Path, tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("keep me", encoding="utf-8")
    with pytest.raises(ValueError, match="is a file"):
        build_index(catalog_csv, target, encoder="hashing:32", use_cache=False, force=True)
    assert target.read_text(encoding="utf-8") == "keep me"


def test_save_refuses_a_directory_that_is_not_a_guide(guide: Guide, tmp_path: Path) -> None:
    docs = _documents(tmp_path)
    before = _tree(docs)
    with pytest.raises(ValueError, match="not a textguide guide"):
        guide.save(docs)
    assert _tree(docs) == before
