"""Guide: the retrieval API, save / load round trips, verified loads and crash-safe writes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import textguide
from textguide.catalog import Catalog
from textguide.encoder import HashingEncoder
from textguide.guide import Guide, Hits, build_index
from textguide.index import IndexConfig
from textguide.storage import ArtifactError, write_artifact

ROOT = Path(__file__).resolve().parents[1]
HINT = "textguide build-index"


def _brute(enc: HashingEncoder, catalog: Catalog, query: str, k: int, keep=None, skip=()) -> list[str]:
    """Reference answer computed without the index: encode everything, score, sort."""
    x = enc.encode(catalog.texts)
    q = enc.encode([query])[0] if isinstance(query, str) else query
    sims = x @ q
    order = np.argsort(-sims, kind="stable")
    rows = [r for r in order if (keep is None or keep(r)) and catalog.ids[r] not in skip]
    return [catalog.ids[r] for r in rows[:k]]


# ---------------------------------------------------------------------------------------------------------
# queries
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["linen shirt for the beach", "cast iron pan", "wool", "leather"])
def test_search_equals_brute_force(guide: Guide, catalog: Catalog, enc: HashingEncoder, query: str) -> None:
    hits = guide.search(query, k=5)
    assert isinstance(hits, Hits) and len(hits) == 5
    assert hits.ids == _brute(enc, catalog, query, 5)
    x = enc.encode(catalog.texts)
    want_scores = [float(x[catalog.ids.index(i)] @ enc.encode([query])[0]) for i in hits.ids]
    np.testing.assert_allclose(hits.scores, want_scores, atol=1e-5)
    assert [it["id"] for it in hits.items] == hits.ids
    assert hits.items[0]["title"] == catalog.metadata.set_index("id").loc[hits.ids[0], "title"]
    assert [i for i, _ in hits] == hits.ids


def test_search_with_category_and_where(guide: Guide, catalog: Catalog, enc: HashingEncoder) -> None:
    cats = catalog.metadata["category"].tolist()
    for cat in ("Shoes", "Decor"):
        hits = guide.search("summer linen", k=3, category=cat)
        assert all(it["category"] == cat for it in hits.items)
        assert hits.ids == _brute(enc, catalog, "summer linen", 3, keep=lambda r: cats[r] == cat)
    hits = guide.search("summer linen", k=50, category=["Shoes", "Bags"])
    assert len(hits) == 7 and {it["category"] for it in hits.items} == {"Shoes", "Bags"}
    brands = catalog.metadata["brand"].tolist()
    hits = guide.search("bag", k=10, where={"brand": "Verano"})
    assert hits.ids == _brute(enc, catalog, "bag", 10, keep=lambda r: brands[r] == "Verano")
    assert len(hits) == 4  # min(k, matches)
    assert len(guide.search("bag", k=10, category="Nothing")) == 0


def test_similar_excludes_itself_and_equals_brute_force(guide: Guide, catalog: Catalog, enc: HashingEncoder) -> None:
    x = enc.encode(catalog.texts)
    cats = catalog.metadata["category"].tolist()
    for item in ("p01", "p13", "p19"):
        v = x[catalog.ids.index(item)]
        hits = guide.similar(item, k=4)
        assert item not in hits.ids and len(hits) == 4
        assert hits.ids == _brute(enc, catalog, v, 4, skip={item})
        tops = guide.similar(item, k=3, category="Tops")
        assert all(it["category"] == "Tops" for it in tops.items)
        assert tops.ids == _brute(enc, catalog, v, 3, keep=lambda r: cats[r] == "Tops", skip={item})


def test_batch_equals_single(guide: Guide) -> None:
    queries = ["wool", "pan", "summer shoes", "office bag"]
    batch = guide.search(queries, k=4)
    assert isinstance(batch, list) and len(batch) == 4
    for q, b in zip(queries, batch):
        one = guide.search(q, k=4)
        assert one.ids == b.ids
        np.testing.assert_allclose(one.scores, b.scores, atol=1e-6)
    assert [h.ids for h in guide.search(tuple(queries), k=4, category="Tops")] == [
        guide.search(q, k=4, category="Tops").ids for q in queries
    ]
    items = ["p02", "p09", "p16"]
    batch = guide.similar(items, k=3, category="Decor")
    assert [b.ids for b in batch] == [guide.similar(i, k=3, category="Decor").ids for i in items]


@pytest.mark.parametrize("k", [0, -3, 1.5, True, "5"])
def test_bad_k(guide: Guide, k) -> None:
    with pytest.raises(ValueError, match=r"k must be a positive integer"):
        guide.search("pan", k=k)
    with pytest.raises(ValueError, match=r"k must be a positive integer"):
        guide.similar("p01", k=k)


@pytest.mark.parametrize("query", [123, None, b"pan", [], ["pan", 3], {"q": "pan"}])
def test_non_string_query(guide: Guide, query) -> None:
    with pytest.raises(ValueError, match=r"query"):
        guide.search(query)


def test_similar_non_string_id_in_list(guide: Guide) -> None:
    with pytest.raises(ValueError, match=r"item ids must be strings, got int 7"):
        guide.similar(["p01", 7])


def test_similar_non_string_scalar_id(guide: Guide) -> None:
    with pytest.raises(ValueError, match=r"item_id must be a string or a non-empty list of strings, got 123"):
        guide.similar(123)


def test_similar_empty_list(guide: Guide) -> None:
    with pytest.raises(ValueError, match=r"non-empty list"):
        guide.similar([])


def test_unknown_item_id(guide: Guide) -> None:
    with pytest.raises(KeyError, match=r"unknown item id 'p99'"):
        guide.similar("p99")
    with pytest.raises(KeyError, match=r"unknown item id 'nope'"):
        guide.similar(["p01", "nope"])


def test_wrong_query_dimension(guide: Guide) -> None:
    with pytest.raises(ValueError, match=r"expected 32, got 16"):
        guide.index.search(HashingEncoder(16).encode(["pan"]), k=3)


def test_hits_to_frame_and_info(guide: Guide, catalog: Catalog) -> None:
    frame = guide.search("pan", k=3).to_frame()
    assert frame["rank"].tolist() == [1, 2, 3] and {"score", "id", "title", "category"} <= set(frame.columns)
    info = guide.info()
    assert info["items"] == 20 and info["encoder"]["name"] == "hashing:32" and info["index"]["factory"] == "Flat"
    assert info["categories"] == catalog.metadata["category"].value_counts().to_dict()


# ---------------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(guide: Guide, saved: Path, enc: HashingEncoder, catalog: Catalog) -> None:
    back = Guide.load(saved, encoder=enc)
    queries = ["linen", "boots for snow", "kitchen knife", "candle"]
    for a, b in zip(guide.search(queries, k=6), back.search(queries, k=6)):
        assert a.ids == b.ids and a.items == b.items
        np.testing.assert_array_equal(a.scores, b.scores)
    for a, b in zip(guide.search(queries, k=3, category="Decor"), back.search(queries, k=3, category="Decor")):
        assert a.ids == b.ids
    assert guide.similar(["p05", "p18"], k=5)[1].ids == back.similar(["p05", "p18"], k=5)[1].ids
    pd.testing.assert_frame_equal(back.index.metadata, guide.index.metadata, check_dtype=False)
    np.testing.assert_array_equal(back.index.embeddings, guide.index.embeddings)
    assert back.info()["categories"] == guide.info()["categories"]
    assert back.index.item("p19")["price"] is None and back.index.item("p01")["price"] == pytest.approx(39.9)


def test_load_without_encoder_uses_the_manifest(guide: Guide, saved: Path) -> None:
    back = Guide.load(saved)  # no encoder given: rebuilt from the manifest's name "hashing:32"
    assert back.search("wool sweater", k=5).ids == guide.search("wool sweater", k=5).ids
    assert back.encoder.fingerprint == guide.encoder.fingerprint


def test_manifest_contents(saved: Path, catalog: Catalog) -> None:
    m = json.loads((saved / "manifest.json").read_text(encoding="utf-8"))
    assert m["format"] == "textguide-guide" and m["format_version"] == 1
    assert m["textguide_version"] == textguide.__version__
    assert m["encoder"]["name"] == "hashing:32" and m["encoder"]["dim"] == 32
    assert m["encoder"]["fingerprint"] == HashingEncoder(32).fingerprint
    assert m["metric"] == "inner_product" and m["index"]["metric"] == "inner_product"
    assert m["index"]["type"] == "IndexFlat" and m["index"]["factory"] == "Flat"
    assert m["counts"]["items"] == len(catalog) == m["index"]["count"]
    on_disk = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(m["files"]) == on_disk and {"index.faiss", "embeddings.npy", "items.parquet"} <= on_disk
    for rel, info in m["files"].items():
        data = (saved / rel).read_bytes()
        assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)


def test_save_hnsw_guide(catalog: Catalog, enc: HashingEncoder, tmp_path: Path) -> None:
    g = Guide.build(catalog, enc, index_config=IndexConfig(factory="HNSW8,Flat"))
    back = Guide.load(g.save(tmp_path / "h"), encoder=enc)
    assert back.manifest["index"]["type"] == "IndexHNSWFlat"
    assert back.search("shirt", k=5).ids == g.search("shirt", k=5).ids


def test_encoder_of_another_dimension(saved: Path) -> None:
    with pytest.raises(ValueError, match=r"has dimension 16, but this guide's index expects 32"):
        Guide.load(saved, encoder=HashingEncoder(16))


def test_encoder_with_another_fingerprint_warns(saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="textguide"):
        Guide.load(saved, encoder=HashingEncoder(32, seed=7))
    assert "differs from the one this guide was built with" in caplog.text


# ---------------------------------------------------------------------------------------------------------
# damaged directories
# ---------------------------------------------------------------------------------------------------------


def test_flipped_byte_is_a_checksum_error(saved: Path) -> None:
    p = saved / "embeddings.npy"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0x01  # one bit in the last vector: still a valid .npy file
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"embeddings\.npy: checksum mismatch \(expected sha256 [0-9a-f]{12}\.\.\., found [0-9a-f]{12}\.\.\.\).*" + HINT):
        Guide.load(saved)


def test_truncated_file(saved: Path) -> None:
    p = saved / "index.faiss"
    size = p.stat().st_size
    with open(p, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(ArtifactError, match=rf"index\.faiss: expected {size} bytes, found {size - 100} \(truncated or modified\).*{HINT}"):
        Guide.load(saved)


def test_wrong_format_version(saved: Path) -> None:
    mp = saved / "manifest.json"
    m = json.loads(mp.read_text(encoding="utf-8"))
    m["format_version"] = 99
    mp.write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(ArtifactError, match=rf"expected format_version 1, found 99; .*{HINT}"):
        Guide.load(saved)


def test_wrong_format_name(saved: Path) -> None:
    mp = saved / "manifest.json"
    m = json.loads(mp.read_text(encoding="utf-8"))
    m["format"] = "something-else"
    mp.write_text(json.dumps(m), encoding="utf-8")
    with pytest.raises(ArtifactError, match=rf"expected format 'textguide-guide', found 'something-else'; .*{HINT}"):
        Guide.load(saved)


def test_missing_manifest(saved: Path) -> None:
    (saved / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=rf"expected manifest\.json in a textguide .* directory, found none; .*{HINT}"):
        Guide.load(saved)


def test_invalid_manifest_json(saved: Path) -> None:
    (saved / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ArtifactError, match=rf"manifest is not valid JSON .*{HINT}"):
        Guide.load(saved)


def test_missing_listed_file(saved: Path) -> None:
    (saved / "items.parquet").unlink()
    with pytest.raises(ArtifactError, match=rf"items\.parquet: listed in manifest\.json but missing; .*{HINT}"):
        Guide.load(saved)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"no such directory; .*{HINT}"):
        Guide.load(tmp_path / "nowhere")


def test_artifact_error_is_a_value_error() -> None:
    assert issubclass(ArtifactError, ValueError)


# ---------------------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------------------


def _temp_siblings(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.tmp-*")) + sorted(path.parent.glob(f".{path.name}.old-*"))


def _other_catalog(products: list[dict]) -> Catalog:
    """A different catalog: new ids and texts."""
    return Catalog.from_records([dict(p, id="n" + p["id"], title=p["title"] + " deluxe") for p in products])


def test_save_over_existing_replaces_content(guide: Guide, saved: Path, products, enc) -> None:
    new = Guide.build(_other_catalog(products), enc)
    new.save(saved)
    back = Guide.load(saved, encoder=enc)
    assert back.index.live_ids() == [f"n{p['id']}" for p in products]
    assert back.search("pan", k=3).ids == new.search("pan", k=3).ids
    assert _temp_siblings(saved) == []


def test_exception_inside_write_leaves_old_directory(guide: Guide, saved: Path, enc) -> None:
    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    def failing_writer(tmp: Path) -> dict:
        (tmp / "embeddings.npy").write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_artifact(saved, failing_writer)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert _temp_siblings(saved) == []
    assert Guide.load(saved, encoder=enc).search("pan", k=3).ids == guide.search("pan", k=3).ids


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from textguide.catalog import Catalog
    from textguide.encoder import HashingEncoder
    from textguide.guide import Guide
    from textguide.storage import write_artifact

    records = [{"id": f"k{i}", "title": f"killed product {i}", "category": "Kitchen"} for i in range(50)]
    guide = Guide.build(Catalog.from_records(records), HashingEncoder(32))

    def slow_writer(tmp):
        section = guide.index.write(tmp)  # the index files of the new version ...
        print(tmp, flush=True)            # ... then tell the parent, and sleep before the manifest and the swap
        time.sleep(60)
        return {"format": "textguide-guide", "format_version": 1, "index": section}

    write_artifact(sys.argv[1], slow_writer)
    """
)


def _start(script: str, path: Path) -> subprocess.Popen:
    """Run ``script`` in a child Python with ``path`` as argv[1]; a watchdog kills it after 120 s."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=ROOT, env=_child_env(),
    )
    watchdog = threading.Timer(120, child.kill)
    watchdog.daemon = True
    watchdog.start()
    return child


def _reap(child: subprocess.Popen) -> None:
    child.kill()
    child.wait(timeout=30)  # reap it: a zombie's pid still looks alive to the stale-dir cleaner
    child.stdout.close()
    child.stderr.close()


def _child_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return env


def test_kill_mid_write_keeps_old_directory_and_next_save_cleans_up(guide: Guide, saved: Path, enc, products) -> None:
    before_manifest = (saved / "manifest.json").read_text(encoding="utf-8")
    before_hits = guide.search(["pan", "shirt"], k=5)
    child = _start(CHILD, saved)
    try:
        line = child.stdout.readline().strip()  # the child's temp dir, printed mid-write
        if not line:
            child.wait(timeout=30)
            pytest.fail(f"child died before writing: {child.stderr.read()}")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        _reap(child)
    assert child.returncode == -signal.SIGKILL

    tmp = Path(line)
    assert tmp.is_dir() and tmp in _temp_siblings(saved)  # the kill really happened mid-write
    assert (tmp / "embeddings.npy").exists() and not (tmp / "manifest.json").exists()

    # the old directory is untouched and loads with the old content
    assert (saved / "manifest.json").read_text(encoding="utf-8") == before_manifest
    old = Guide.load(saved, encoder=enc)
    assert [h.ids for h in old.search(["pan", "shirt"], k=5)] == [h.ids for h in before_hits]
    assert "k0" not in old.index

    # the next save removes the dead writer's temp dir
    Guide.build(_other_catalog(products), enc).save(saved)
    assert not tmp.exists() and _temp_siblings(saved) == []
    assert "np01" in Guide.load(saved, encoder=enc).index


LOOP_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from textguide.encoder import HashingEncoder
    from textguide.guide import Guide, encoder_info
    from textguide.index import ItemIndex

    enc = HashingEncoder(32)
    guides = []
    for v in range(2):
        x = np.random.default_rng(v).standard_normal((20000, 32)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        guides.append(Guide(ItemIndex.build(x, [f"v{v}-{i}" for i in range(20000)]), encoder_info(enc), enc))
    guides[0].save(sys.argv[1])
    print("ready", flush=True)
    n = 0
    while True:  # alternate versions until killed
        n += 1
        guides[n % 2].save(sys.argv[1])
    """
)


def test_kill_during_real_saves_leaves_a_complete_version(tmp_path: Path, enc) -> None:
    """Kill a writer looping over Guide.save at an arbitrary moment: the directory holds one whole version."""
    path = tmp_path / "g"
    child = _start(LOOP_CHILD, path)
    try:
        if child.stdout.readline().strip() != "ready":
            child.wait(timeout=30)
            pytest.fail(f"child failed: {child.stderr.read()}")
        time.sleep(0.4)  # several saves in, most likely in the middle of one
        os.kill(child.pid, signal.SIGKILL)
    finally:
        _reap(child)
    g = Guide.load(path, encoder=enc)  # checksums verified: no mix of versions
    ids = g.index.live_ids()
    assert len(ids) == 20000 and len({i.split("-")[0] for i in ids}) == 1
    v = int(ids[0][1])
    x = np.random.default_rng(v).standard_normal((20000, 32)).astype(np.float32)
    np.testing.assert_allclose(g.index.embeddings, x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)
    shutil.rmtree(path)


# ---------------------------------------------------------------------------------------------------------
# build_index (the function behind `textguide build-index`)
# ---------------------------------------------------------------------------------------------------------


def test_build_index_function_and_cache(catalog_csv: Path, tmp_path: Path, catalog: Catalog, counting) -> None:
    counting = counting(HashingEncoder(32))
    g = build_index(catalog_csv, tmp_path / "out", encoder=counting, cache_dir=tmp_path / "cache")
    assert sorted(counting.seen) == sorted(catalog.texts)
    back = Guide.load(tmp_path / "out", encoder=HashingEncoder(32))
    assert back.search("pan", k=4).ids == g.search("pan", k=4).ids
    assert back.index.live_ids() == catalog.ids
    counting.calls.clear()
    build_index(catalog_csv, tmp_path / "out", encoder=counting, cache_dir=tmp_path / "cache")
    assert counting.seen == []  # everything came from the cache
    build_index(catalog_csv, tmp_path / "out2", encoder="hashing:32", use_cache=False, factory="HNSW8,Flat")
    assert Guide.load(tmp_path / "out2").manifest["index"]["factory"] == "HNSW8,Flat"


def test_build_index_bad_catalog_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing required column 'title'"):
        build_index(bad, tmp_path / "out", encoder="hashing:32", use_cache=False)
    assert not (tmp_path / "out").exists() and _temp_siblings(tmp_path / "out") == []
