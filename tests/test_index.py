"""ItemIndex against brute-force numpy: exact and approximate search, filters, add / remove, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from textguide.index import IndexConfig, ItemIndex, exact_search, recall_vs_exact
from textguide.storage import read_manifest, write_artifact

DIM = 32
N = 2000
# category sizes: a common one, mid-sized ones, and "rare" with 3 items (very selective filter)
CATS = np.array(["common"] * 1500 + ["mid"] * 300 + ["small"] * 100 + ["tiny"] * 97 + ["rare"] * 3, dtype=object)


@pytest.fixture(scope="module")
def data(rand_unit) -> tuple[np.ndarray, list[str], pd.DataFrame, np.ndarray]:
    x = rand_unit(N, DIM, seed=1)
    cats = np.random.default_rng(2).permutation(CATS)
    ids = [f"i{r:04d}" for r in range(N)]
    meta = pd.DataFrame({"category": cats, "rank": np.arange(N)})
    queries = rand_unit(40, DIM, seed=3)
    return x, ids, meta, queries


@pytest.fixture(scope="module")
def flat(data) -> ItemIndex:
    x, ids, meta, _ = data
    return ItemIndex.build(x, ids, meta, IndexConfig(factory="Flat"))


@pytest.fixture(scope="module")
def hnsw(data) -> ItemIndex:
    x, ids, meta, _ = data
    return ItemIndex.build(x, ids, meta, IndexConfig(factory="HNSW16,Flat", brute_force_max=1))


def _np_topk(x: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[list[list[int]], np.ndarray]:
    """Independent reference: full sort of all inner products over ``rows``."""
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    sims = q @ x[rows].T
    order = np.argsort(-sims, axis=1)[:, :k]
    return [rows[o].tolist() for o in order], np.take_along_axis(sims, order, 1)


def _ids(index: ItemIndex, rows: list[list[int]]) -> list[list[str]]:
    return [[index.ids[r] for r in rr] for rr in rows]


def _recall(got: list[list[str]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(w)) / max(len(w), 1) for g, w in zip(got, want)]))


# ---------------------------------------------------------------------------------------------------------
# unfiltered search vs exact
# ---------------------------------------------------------------------------------------------------------


def test_flat_equals_brute_force(flat: ItemIndex, data) -> None:
    x, _, _, q = data
    got, scores = flat.search(q, k=10)
    want_rows, want_scores = _np_topk(x, q, 10)
    assert got == _ids(flat, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert scores.dtype == np.float32 and scores.shape == (40, 10)
    # the library's own reference agrees with the independent one
    rows, sc = exact_search(x, q, 10)
    assert rows.tolist() == want_rows
    assert recall_vs_exact(flat, q, 10) == 1.0


@pytest.mark.parametrize("factory", ["HNSW16,Flat", "IVF16,Flat"])
def test_approximate_recall_vs_exact(data, factory: str) -> None:
    x, ids, meta, q = data
    index = ItemIndex.build(x, ids, meta, IndexConfig(factory=factory, nprobe=12))
    assert index.factory == factory
    got, scores = index.search(q, k=10)
    want_rows, _ = _np_topk(x, q, 10)
    assert _recall(got, _ids(index, want_rows)) >= 0.9
    # every returned score is the true inner product of that item, sorted best first
    for g, s, qq in zip(got, scores, q):
        np.testing.assert_allclose(s, x[[int(i[1:]) for i in g]] @ qq, atol=1e-5)
        assert np.all(np.diff(s) <= 1e-6)


def test_ivf_nprobe_is_honoured(data) -> None:
    x, ids, meta, q = data
    want = _ids_of(ids, _np_topk(x, q, 10)[0])
    exhaustive = ItemIndex.build(x, ids, meta, IndexConfig(factory="IVF16,Flat", nprobe=16))
    assert _recall(exhaustive.search(q, k=10)[0], want) == 1.0
    one_list = ItemIndex.build(x, ids, meta, IndexConfig(factory="IVF16,Flat", nprobe=1))
    assert _recall(one_list.search(q, k=10)[0], want) < 0.8


def _ids_of(ids: list[str], rows: list[list[int]]) -> list[list[str]]:
    return [[ids[r] for r in rr] for rr in rows]


def test_bad_factory_is_a_value_error(rand_unit) -> None:
    x = rand_unit(20, 8)
    with pytest.raises(ValueError, match=r"cannot make a FAISS index from factory string 'Bogus' for dimension 8"):
        ItemIndex.build(x, [str(i) for i in range(20)], config=IndexConfig(factory="Bogus"))
    with pytest.raises(ValueError, match=r"cannot train FAISS index 'IVF64,Flat' on 20 vectors"):
        ItemIndex.build(x, [str(i) for i in range(20)], config=IndexConfig(factory="IVF64,Flat"))


def test_default_factory_by_size() -> None:
    assert IndexConfig().choose(10) == "Flat"
    assert IndexConfig(exact_max_items=100, hnsw_m=16).choose(101) == "HNSW16,Flat"
    assert IndexConfig(factory="IVF4,Flat").choose(10) == "IVF4,Flat"


def test_batch_equals_single(hnsw: ItemIndex, flat: ItemIndex, data) -> None:
    q = data[3][:12]
    for index in (flat, hnsw):
        for where in (None, {"category": "tiny"}):
            batch_ids, batch_scores = index.search(q, k=7, where=where)
            for i in range(len(q)):
                one_ids, one_scores = index.search(q[i], k=7, where=where)  # 1-D query works too
                assert one_ids[0] == batch_ids[i]
                np.testing.assert_allclose(one_scores[0], batch_scores[i], atol=1e-6)


def test_k_larger_than_index(rand_unit) -> None:
    index = ItemIndex.build(rand_unit(5, 8), list("abcde"))
    got, scores = index.search(rand_unit(2, 8, seed=9), k=50)
    assert [sorted(g) for g in got] == [list("abcde")] * 2
    assert scores.shape == (2, 5) and np.isfinite(scores).all()


# ---------------------------------------------------------------------------------------------------------
# filters
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cat", ["common", "mid", "small", "tiny", "rare"])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_flat_filter_equals_exact_filtered(flat: ItemIndex, data, cat: str, k: int) -> None:
    x, _, meta, q = data
    rows = np.flatnonzero(meta["category"].to_numpy() == cat)
    got, scores = flat.search(q, k=k, where={"category": cat})
    want_rows, want_scores = _np_topk(x, q, k, rows)
    assert all(len(g) == min(k, len(rows)) for g in got)
    assert got == _ids(flat, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_filter_with_several_values_and_fields(flat: ItemIndex, data) -> None:
    x, _, meta, q = data
    cats = meta["category"].to_numpy()
    rows = np.flatnonzero(np.isin(cats, ["rare", "tiny"]) & (meta["rank"].to_numpy() < 1000))
    got, _ = flat.search(q, k=10, where={"category": ["rare", "tiny"], "rank": list(range(1000))})
    want_rows, _ = _np_topk(x, q, 10, rows)
    assert got == _ids(flat, want_rows)
    got, _ = flat.search(q, k=10, where={"category": "no-such-category"})
    assert got == [[] for _ in q]


def test_unknown_filter_field(flat: ItemIndex, data) -> None:
    with pytest.raises(ValueError, match=r"cannot filter on 'colour': no such metadata field; available: \['category', 'id', 'rank'\]"):
        flat.search(data[3], k=3, where={"colour": "red"})


@pytest.mark.parametrize("cat", ["rare", "tiny", "small"])
def test_selective_filter_on_hnsw_uses_selector_and_fallback(hnsw: ItemIndex, data, cat: str, monkeypatch) -> None:
    """brute_force_max=1: every filtered query goes to FAISS with an IDSelector; short answers fall back to exact."""
    x, _, meta, q = data
    calls = {"faiss_filtered": 0, "fallback": 0}
    real_faiss, real_brute = hnsw._faiss_search, hnsw._brute_force

    def spy_faiss(qq, k, allowed):
        if allowed is not None:
            calls["faiss_filtered"] += 1
        return real_faiss(qq, k, allowed)

    def spy_brute(qq, k, rows):
        calls["fallback"] += len(qq)
        return real_brute(qq, k, rows)

    monkeypatch.setattr(hnsw, "_faiss_search", spy_faiss)
    monkeypatch.setattr(hnsw, "_brute_force", spy_brute)

    rows = np.flatnonzero(meta["category"].to_numpy() == cat)
    k = 10
    got, scores = hnsw.search(q, k=k, where={"category": cat})
    assert calls["faiss_filtered"] == 1
    allowed_ids = {hnsw.ids[r] for r in rows}
    want_rows, want_scores = _np_topk(x, q, k, rows)
    want = _ids(hnsw, want_rows)
    for g, w in zip(got, want):
        assert len(g) == min(k, len(rows)) and len(set(g)) == len(g)
        assert set(g) <= allowed_ids
    if cat == "rare":  # fewer matches than k: the answer is every match, best first
        assert got == want
        assert calls["fallback"] > 0  # HNSW alone misses most of 3 items in 2000
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    assert _recall(got, want) >= 0.9


def test_fallback_answers_short_rows_exactly(flat: ItemIndex, data, monkeypatch) -> None:
    """If FAISS returns fewer than k labels (-1) for some rows, those rows are answered by brute force."""
    x, _, meta, q = data
    big = ItemIndex.build(x, flat.ids, meta, IndexConfig(factory="Flat", brute_force_max=1))
    real = big._faiss_search

    def short(qq, k, allowed):
        s, r = real(qq, k, allowed)
        s, r = s.copy(), r.copy()
        r[::3, k // 2:] = -1  # every third query comes back half empty
        s[::3, k // 2:] = -np.inf
        return s, r

    monkeypatch.setattr(big, "_faiss_search", short)
    rows = np.flatnonzero(meta["category"].to_numpy() == "mid")
    got, scores = big.search(q, k=10, where={"category": "mid"})
    want_rows, want_scores = _np_topk(x, q, 10, rows)
    assert got == _ids(big, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_exclude(flat: ItemIndex, data) -> None:
    x, _, _, q = data
    full, _ = flat.search(q[:3], k=10)
    drop = [full[0][:2], [], full[2][5:6] + ["not-an-id"]]
    got, scores = flat.search(q[:3], k=10, exclude=drop)
    want_rows, _ = _np_topk(x, q[:3], 13)
    for g, d, w in zip(got, drop, _ids(flat, want_rows)):
        assert g == [i for i in w if i not in d][:10]
    with pytest.raises(ValueError, match=r"exclude has 1 entries for 3 queries"):
        flat.search(q[:3], k=10, exclude=[[]])


# ---------------------------------------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3", None])
def test_bad_k(flat: ItemIndex, data, k) -> None:
    with pytest.raises(ValueError, match=r"k must be a positive integer, got "):
        flat.search(data[3], k=k)


def test_wrong_query_dimension(flat: ItemIndex, rand_unit) -> None:
    with pytest.raises(ValueError, match=r"queries have wrong dimension: expected 32, got 16"):
        flat.search(rand_unit(2, 16), k=3)
    with pytest.raises(ValueError, match=r"queries must be a 2-D array \(n, dim\), got shape \(1, 2, 32\)"):
        flat.search(np.zeros((1, 2, 32), np.float32), k=3)
    bad = rand_unit(2, 32)
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"queries contain NaN or infinite values"):
        flat.search(bad, k=3)


def test_build_errors(rand_unit) -> None:
    with pytest.raises(ValueError, match=r"cannot build an index from zero items"):
        ItemIndex.build(np.zeros((0, 8), np.float32), [])
    with pytest.raises(ValueError, match=r"got 3 vectors but 2 ids"):
        ItemIndex.build(rand_unit(3, 8), ["a", "b"])
    with pytest.raises(ValueError, match=r"duplicate ids in the new items: \['a'\]"):
        ItemIndex.build(rand_unit(3, 8), ["a", "b", "a"])
    with pytest.raises(ValueError, match=r"item ids must be non-empty strings"):
        ItemIndex.build(rand_unit(2, 8), ["a", ""])
    with pytest.raises(ValueError, match=r"metadata has 1 rows for 2 items"):
        ItemIndex.build(rand_unit(2, 8), ["a", "b"], pd.DataFrame({"x": [1]}))


# ---------------------------------------------------------------------------------------------------------
# incremental add / remove
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def small(rand_unit) -> tuple[ItemIndex, np.ndarray]:
    x = rand_unit(300, DIM, seed=5)
    meta = pd.DataFrame({"category": ["a", "b", "c"] * 100})
    return ItemIndex.build(x, [f"s{i}" for i in range(300)], meta, IndexConfig(factory="Flat")), x


def test_add_new_items_are_found(small, rand_unit) -> None:
    index, x = small
    new = rand_unit(40, DIM, seed=6)
    new_ids = [f"n{i}" for i in range(40)]
    index.add(new, new_ids, pd.DataFrame({"category": ["new"] * 40}))
    assert index.count == len(index) == 340 and "n7" in index
    got, scores = index.search(new, k=1)
    assert [g[0] for g in got] == new_ids  # each new vector finds its own item
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    # and the whole index still equals brute force over old + new
    allx = np.vstack([x, new])
    q = rand_unit(20, DIM, seed=7)
    want_rows, _ = _np_topk(allx, q, 10)
    assert index.search(q, k=10)[0] == _ids(index, want_rows)
    # filters see the new items' metadata
    assert sorted(index.search(q[:1], k=100, where={"category": "new"})[0][0]) == sorted(new_ids)
    assert index.item("n3")["category"] == "new"
    np.testing.assert_array_equal(index.vector("n3"), new[3])


def test_add_clash_is_an_error_and_changes_nothing(small, rand_unit) -> None:
    index, x = small
    with pytest.raises(ValueError, match=r"2 ids already in the index, first \['s3', 's9'\]; pass replace=True"):
        index.add(rand_unit(3, DIM, seed=8), ["s3", "fresh", "s9"])
    assert index.count == 300 and "fresh" not in index
    np.testing.assert_array_equal(index.vector("s3"), x[3])
    with pytest.raises(ValueError, match=r"embeddings have wrong dimension: expected 32, got 8"):
        index.add(rand_unit(1, 8), ["z"])


def test_add_replace(small, rand_unit) -> None:
    index, x = small
    new = rand_unit(2, DIM, seed=10)
    index.add(new, ["s3", "fresh"], pd.DataFrame({"category": ["z", "z"]}), replace=True)
    assert index.count == 301
    np.testing.assert_array_equal(index.vector("s3"), new[0])
    assert index.item("s3")["category"] == "z"
    # the new vector finds s3; the old vector no longer does, and s3 is never returned twice
    assert index.search(new[:1], k=1)[0][0] == ["s3"]
    got, _ = index.search(x[3], k=301)
    assert got[0].count("s3") == 1 and got[0][0] != "s3"
    assert index.search(x[3], k=5, where={"category": "a"})[0][0][0] != "s3"  # the old row (category a) is gone


def test_item_metadata_values_and_freshness_after_add(rand_unit) -> None:
    meta = pd.DataFrame({"category": ["a", None], "price": [9.5, np.nan], "stock": [3, 4],
                         "launched": pd.to_datetime(["2024-01-02", None])})
    index = ItemIndex.build(rand_unit(2, DIM, seed=3), ["p0", "p1"], meta, IndexConfig(factory="Flat"))
    first = index.items(["p0", "p1"])  # builds the per-column cache
    assert first[0] == {"category": "a", "price": 9.5, "stock": 3, "launched": pd.Timestamp("2024-01-02"), "id": "p0"}
    assert first[1] == {"category": None, "price": None, "stock": 4, "launched": None, "id": "p1"}
    assert type(first[0]["stock"]) is int and type(first[0]["price"]) is float  # plain Python values, not numpy
    assert index.item("p1") == first[1]
    index.add(rand_unit(1, DIM, seed=4), ["p2"], pd.DataFrame({"category": ["b"], "stock": [7]}))
    assert index.item("p2")["category"] == "b" and index.item("p2")["stock"] == 7  # the cache saw the add
    index.add(rand_unit(1, DIM, seed=5), ["p0"], pd.DataFrame({"category": ["c"]}), replace=True)
    assert index.items(["p0", "p2"])[0]["category"] == "c"
    with pytest.raises(KeyError, match="unknown item id 'gone'"):
        index.items(["p0", "gone"])


def test_failed_replace_leaves_index_unchanged(small, rand_unit) -> None:
    index, x = small
    with pytest.raises(ValueError, match=r"metadata has 1 rows for 2 items"):
        index.add(rand_unit(2, DIM), ["s1", "s2"], pd.DataFrame({"category": ["z"]}), replace=True)
    assert index.count == 300 and "s1" in index and "s2" in index
    np.testing.assert_array_equal(index.vector("s1"), x[1])


def test_remove(small, rand_unit) -> None:
    index, x = small
    gone = ["s0", "s5", "s17", "s299"]
    index.remove(gone)
    assert index.count == 296 and "s5" not in index
    got, _ = index.search(x[[0, 5, 17, 299]], k=296)
    for g in got:
        assert not set(g) & set(gone) and len(g) == 296
    for where in ({"category": "a"}, {"category": ["b", "c"]}):
        got, _ = index.search(x[:10], k=300, where=where)
        assert all(not set(g) & set(gone) for g in got)
    live = [i for i in range(300) if f"s{i}" not in gone]
    q = rand_unit(10, DIM, seed=11)
    want_rows, _ = _np_topk(x, q, 10, np.array(live))
    assert index.search(q, k=10)[0] == _ids(index, want_rows)
    assert recall_vs_exact(index, q, 10) == 1.0
    with pytest.raises(KeyError, match=r"unknown item id 's5'"):
        index.vector("s5")
    with pytest.raises(KeyError, match=r"unknown item id 'nope'"):
        index.remove(["s1", "nope"])
    assert "s1" in index  # all-or-nothing
    with pytest.raises(KeyError, match=r"unknown item id 's0'"):
        index.remove(["s0"])  # already removed
    # a removed id may come back
    index.add(x[:1], ["s0"])
    assert index.search(x[:1], k=1)[0] == [["s0"]] and index.count == 297


def test_remove_on_hnsw_never_returns_removed(data) -> None:
    x, ids, meta, q = data
    index = ItemIndex.build(x, ids, meta, IndexConfig(factory="HNSW16,Flat", brute_force_max=1))
    top, _ = index.search(q, k=5)
    gone = sorted({i for t in top for i in t})
    index.remove(gone)
    got, _ = index.search(q, k=10)
    assert all(len(g) == 10 and not set(g) & set(gone) for g in got)
    got, _ = index.search(q, k=10, where={"category": "rare"})
    assert all(not set(g) & set(gone) for g in got)


def test_unknown_id_lookups(small) -> None:
    index, _ = small
    for call in (index.vector, index.item, lambda i: index.vectors(["s1", i])):
        with pytest.raises(KeyError, match=r"unknown item id 'zzz': not in this index \(300 items\)"):
            call("zzz")


# ---------------------------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------------------------


def _save(index: ItemIndex, path: Path) -> None:
    write_artifact(path, lambda tmp: {"format": "test-index", "format_version": 1, "index": index.write(tmp)})


def _load(path: Path) -> ItemIndex:
    return ItemIndex.read(path, read_manifest(path, kind="test-index", format_version=1)["index"])


@pytest.mark.parametrize("factory", ["Flat", "HNSW16,Flat"])
def test_write_read_after_add_remove_replace(tmp_path: Path, rand_unit, factory: str) -> None:
    x = rand_unit(200, DIM, seed=12)
    meta = pd.DataFrame({"category": ["a", "b"] * 100, "tags": [["x", "y"]] * 200})
    index = ItemIndex.build(x, [f"s{i}" for i in range(200)], meta, IndexConfig(factory=factory, ef_search=64))
    index.remove(["s1", "s2"])
    index.add(rand_unit(2, DIM, seed=13), ["s3", "s2"], pd.DataFrame({"category": ["c", "c"]}), replace=True)
    index.add(rand_unit(1, DIM, seed=14), ["n0"])  # no metadata at all
    _save(index, tmp_path / "ix")
    back = _load(tmp_path / "ix")

    assert back.factory == factory and back.dim == DIM and back.config == index.config
    assert back.count == index.count == 200 and back.live_ids() == index.live_ids()
    assert "s1" not in back and "s2" in back and "s3" in back
    for i in ("s2", "s3", "n0", "s0"):
        np.testing.assert_array_equal(back.vector(i), index.vector(i))
        assert {k: v for k, v in back.item(i).items() if k != "tags"} == {k: v for k, v in index.item(i).items() if k != "tags"}
    assert back.item("n0")["category"] is None and back.item("s3")["tags"] is None  # missing stays missing
    assert back.item("s0")["tags"] == '["x", "y"]'  # list values are stored as JSON text (parquet-safe)
    assert back.item("s3")["category"] == "c" and back.item("s0")["category"] == "a"
    q = rand_unit(15, DIM, seed=15)
    for where in (None, {"category": "c"}):
        a_ids, a_sc = index.search(q, k=10, where=where)
        b_ids, b_sc = back.search(q, k=10, where=where)
        assert a_ids == b_ids
        np.testing.assert_allclose(a_sc, b_sc, atol=1e-6)
    # and keeps working incrementally after the reload
    back.add(rand_unit(1, DIM, seed=16), ["n1"])
    assert back.count == 201 and back.search(back.vector("n1"), k=1)[0] == [["n1"]]


def test_read_detects_inconsistent_parts(tmp_path: Path, rand_unit) -> None:
    index = ItemIndex.build(rand_unit(10, 8), [f"s{i}" for i in range(10)])
    _save(index, tmp_path / "ix")
    np.save(tmp_path / "ix" / "embeddings.npy", rand_unit(9, 8))
    section = read_manifest(tmp_path / "ix", kind="test-index", format_version=1, verify=False)["index"]
    with pytest.raises(ValueError, match=r"index parts disagree: 10 FAISS vectors, 9 embeddings, 10 metadata rows"):
        ItemIndex.read(tmp_path / "ix", section)
