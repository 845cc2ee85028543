"""datasets catalogs and the out-of-core (streamed) build, checked against the in-memory build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

datasets = pytest.importorskip("datasets")

from textguide.catalog import load_catalog  # noqa: E402
from textguide.cli import main  # noqa: E402
from textguide.encoder import HashingEncoder  # noqa: E402
from textguide.guide import Guide, build_index  # noqa: E402
from textguide.stream import build_index_streaming, iter_frames  # noqa: E402


def _frame(n: int) -> pd.DataFrame:
    colours, kinds = ["red", "navy", "black", "white", "green"], ["shirt", "dress", "boot", "scarf", "mug", "lamp"]
    return pd.DataFrame({
        "id": [f"p{i}" for i in range(n)],
        "title": [f"{colours[i % 5]} {kinds[i % 6]} model {i}" for i in range(n)],
        "category": [kinds[i % 6] for i in range(n)],
        "price": [f"{i % 50}.5" for i in range(n)],
    })


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "ds"
    datasets.Dataset.from_pandas(_frame(230)).save_to_disk(str(path), max_shard_size="4KB")  # several Arrow files
    return path


def test_dataset_and_saved_folder_are_catalogs(saved: Path) -> None:
    ref = load_catalog(_write_csv(saved.parent, _frame(230)))
    for source in (saved, datasets.load_from_disk(str(saved))):
        cat = load_catalog(source)
        assert cat.ids == ref.ids and cat.texts == ref.texts
        assert cat.metadata["price"].tolist() == ref.metadata["price"].tolist()


def _write_csv(directory: Path, frame: pd.DataFrame) -> Path:
    path = directory / "catalog.csv"
    frame.to_csv(path, index=False)
    return path


def test_iter_frames_covers_every_row_once_in_order(saved: Path) -> None:
    frames = list(iter_frames(saved, 17))
    assert [len(f) for f in frames] == [17] * 13 + [230 - 13 * 17]
    assert pd.concat(frames)["id"].tolist() == [f"p{i}" for i in range(230)]
    ds = datasets.load_from_disk(str(saved)).select(range(5, 40))  # an indices mapping: read through datasets
    assert pd.concat(iter_frames(ds, 10))["id"].tolist() == [f"p{i}" for i in range(5, 40)]


@pytest.mark.parametrize("factory", [None, "IVF4,Flat"])
def test_streamed_guide_answers_like_the_in_memory_one(saved: Path, tmp_path: Path, factory: str | None) -> None:
    enc = HashingEncoder(32)
    ref = build_index(_write_csv(tmp_path, _frame(230)), tmp_path / "ref", encoder=enc, use_cache=False)
    manifest = build_index_streaming(saved, tmp_path / "streamed", encoder=enc, batch_rows=40, factory=factory)
    got = Guide.load(tmp_path / "streamed", encoder=enc)
    assert manifest["counts"]["items"] == 230 and manifest["encoder"] == ref.manifest["encoder"]
    assert got.index.ids == ref.index.ids
    assert np.array_equal(got.index.embeddings, ref.index.embeddings)
    assert got.index.item("p7") == ref.index.item("p7")
    queries = ["red shirt", "navy boot model 3", "lamp"]
    for a, b in zip(got.search(queries, k=5, category="boot"), ref.search(queries, k=5, category="boot")):
        assert a.ids == b.ids
    if factory is None:
        for a, b in zip(got.search(queries, k=10), ref.search(queries, k=10)):
            assert a.ids == b.ids


def test_streamed_build_picks_a_compressed_index_above_the_exact_limit(saved: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from textguide import stream
    from textguide.index import IndexConfig

    assert stream.stream_factory(IndexConfig(), 2_000_000, 64) == "IVF1024,SQ8"
    assert stream.stream_factory(IndexConfig(), 1000, 64) == "Flat"


def test_streamed_build_errors_leave_the_previous_guide(saved: Path, tmp_path: Path) -> None:
    enc = HashingEncoder(32)
    out = tmp_path / "g"
    build_index_streaming(saved, out, encoder=enc, batch_rows=50)
    before = (out / "manifest.json").read_text()
    dup = _frame(120)
    dup.loc[100, "id"] = "p3"  # a duplicate in another batch than its first occurrence
    with pytest.raises(ValueError, match="1 duplicate ids"):
        build_index_streaming(datasets.Dataset.from_pandas(dup), out, encoder=enc, batch_rows=50)
    bad = _frame(60).rename(columns={"title": "name"})
    with pytest.raises(ValueError, match="missing required column 'title'"):
        build_index_streaming(datasets.Dataset.from_pandas(bad), out, encoder=enc, batch_rows=50)
    with pytest.raises(ValueError, match="batch_rows must be a positive integer"):
        build_index_streaming(saved, out, encoder=enc, batch_rows=0)
    assert (out / "manifest.json").read_text() == before
    assert len(Guide.load(out, encoder=enc).index) == 230


def test_cli_builds_from_a_saved_dataset_streamed_and_not(saved: Path, tmp_path: Path, capsys) -> None:
    assert main(["build-index", str(saved), str(tmp_path / "a"), "--encoder", "hashing:16", "--no-cache"]) == 0
    assert main(["build-index", str(saved), str(tmp_path / "b"), "--encoder", "hashing:16", "--stream",
                 "--batch-rows", "64"]) == 0
    assert "230 items" in capsys.readouterr().out
    a, b = Guide.load(tmp_path / "a"), Guide.load(tmp_path / "b")
    assert a.index.ids == b.index.ids and a.search("green mug", k=3).ids == b.search("green mug", k=3).ids


def test_streamed_build_never_replaces_a_folder_that_is_not_a_guide(saved: Path, tmp_path: Path) -> None:
    enc = HashingEncoder(32)
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "letter.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ValueError, match=r"documents is not a textguide guide .*letter\.txt.*--force"):
        build_index_streaming(saved, docs, encoder=enc, batch_rows=50)
    assert sorted(p.name for p in docs.iterdir()) == ["letter.txt"]
    build_index_streaming(saved, docs, encoder=enc, batch_rows=50, force=True)
    assert len(Guide.load(docs, encoder=enc).index) == 230
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("documents.replaced-")]
    assert len(kept) == 1 and (kept[0] / "letter.txt").read_text(encoding="utf-8") == "keep me"
