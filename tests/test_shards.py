"""Sharded guides (textguide.shards) and the Ray build (textguide.distributed), checked against the single index.

The truth is the single-process guide built from the same catalog with the same (fake) encoder, and exact
brute-force search for approximate shards. The Ray tests start one local Ray (2 CPUs) for the module.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from textguide.catalog import Catalog
from textguide.cli import main
from textguide.encoder import HashingEncoder
from textguide.guide import Guide, build_index, encoder_info
from textguide.index import IndexConfig, ItemIndex, exact_search
from textguide.shards import ShardedIndex, merge_topk
from textguide.storage import ArtifactError

COLOURS = ["red", "navy", "black", "white", "green", "beige", "olive"]
KINDS = ["shirt", "dress", "boot", "scarf", "mug", "lamp", "sofa", "tote", "sneaker", "vase"]
FABRICS = ["linen", "wool", "cotton", "leather", "ceramic", "oak", "silk"]


def _frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(KINDS, n)
    return pd.DataFrame({
        "id": [f"p{i:04d}" for i in range(n)],
        "title": [f"{rng.choice(COLOURS)} {rng.choice(FABRICS)} {k} {rng.choice(FABRICS)} {i % 13}"
                  for i, k in enumerate(kinds)],
        "category": [f"cat-{k}" for k in kinds],
        "brand": rng.choice(["Forge", "Verano", "Lumen", "Stride"], n),
        "price": rng.uniform(1, 200, n).round(2),
    })


QUERIES = ["linen shirt", "red wool scarf", "oak lamp", "leather boot", "silk dress 3", "ceramic vase green",
           "navy cotton tote", "beige sofa", "sneaker", "mug 7"]


def _pair(enc: HashingEncoder, n: int = 400, shards: int = 4, config: IndexConfig | None = None) -> tuple[Guide, Guide]:
    cat = Catalog.from_frame(_frame(n))
    single = Guide.build(cat, enc, index_config=config)
    sharded = Guide(ShardedIndex.build(single.index.embeddings, single.index.ids, single.index.metadata, config,
                                       shards=shards), encoder_info(enc), enc)
    return single, sharded


def _overlap(a: list[list[str]], b: list[list[str]]) -> float:
    return float(np.mean([len(set(x) & set(y)) / max(1, len(x)) for x, y in zip(a, b)]))


# ---------------------------------------------------------------------------------------------- sharded serving
def test_flat_shards_answer_like_the_single_index(enc: HashingEncoder) -> None:
    single, sharded = _pair(enc)
    assert sharded.index.num_shards == 4 and sharded.index.bounds == [0, 100, 200, 300, 400]
    for kwargs in ({}, {"category": "cat-lamp"}, {"where": {"brand": ["Forge", "Lumen"]}}):
        a, b = single.search(QUERIES, k=10, **kwargs), sharded.search(QUERIES, k=10, **kwargs)
        assert _overlap([h.ids for h in a], [h.ids for h in b]) >= 0.99
        for x, y in zip(a, b):
            np.testing.assert_allclose(x.scores, y.scores, atol=1e-6)
            assert y.items == single.index.items(y.ids)  # same metadata for every id returned
    ids = ["p0003", "p0150", "p0399"]
    a, b = single.similar(ids, k=10), sharded.similar(ids, k=10)
    assert _overlap([h.ids for h in a], [h.ids for h in b]) >= 0.99 and all(i not in h.ids for i, h in zip(ids, b))
    everything = sharded.search("linen", k=1000)  # k above the catalog size: every item once, by score
    assert sorted(everything.ids) == sorted(single.search("linen", k=1000).ids) and len(everything) == 400
    assert (np.diff(everything.scores) <= 0).all()
    assert sharded.info()["items"] == 400


def test_approximate_shards_recall_against_exact_search(rand_unit) -> None:
    x = rand_unit(4000, 32, seed=1)
    q = rand_unit(100, 32, seed=2)
    ids = [f"v{i}" for i in range(len(x))]
    meta = pd.DataFrame({"half": np.where(np.arange(len(x)) % 2 == 0, "even", "odd")})
    for factory in ("HNSW32,Flat", "IVF16,Flat"):
        config = IndexConfig(factory=factory, nprobe=12, brute_force_max=0)  # filters go through FAISS selectors too
        index = ShardedIndex.build(x, ids, meta, config, shards=3)
        assert index.factory == factory and index.num_shards == 3
        exact, _ = exact_search(x, q, 10)
        got, _ = index.search(q, 10)
        assert _overlap(got, [[ids[r] for r in row] for row in exact]) >= 0.95
        even = np.flatnonzero(np.arange(len(x)) % 2 == 0)
        exact_even, _ = exact_search(x[even], q, 10)
        got_even, _ = index.search(q, 10, where={"half": "even"})
        assert _overlap(got_even, [[ids[even[r]] for r in row] for row in exact_even]) >= 0.95


def test_merge_orders_by_score_then_row_and_pads() -> None:
    s, r = merge_topk([np.array([[0.9, 0.5]], np.float32), np.array([[0.9, 0.1]], np.float32)],
                      [np.array([[7, 3]]), np.array([[2, -1]])], 4, 1)
    assert r.tolist() == [[2, 7, 3, -1]] and s[0, :3].tolist() == pytest.approx([0.9, 0.9, 0.5]) and s[0, 3] == -np.inf
    s, r = merge_topk([np.array([[0.4]], np.float32)], [np.array([[5]])], 3, 1)  # fewer columns than k: padded
    assert r.tolist() == [[5, -1, -1]]


def test_sharded_guide_raises_the_single_guides_errors(enc: HashingEncoder) -> None:
    single, sharded = _pair(enc, n=60, shards=3)
    calls = [
        (ValueError, lambda g: g.search("linen", k=0)),
        (ValueError, lambda g: g.search("linen", where={"colour": "red"})),
        (KeyError, lambda g: g.similar("nope")),
        (KeyError, lambda g: g.remove(["p0001", "nope"], save=False)),
        (ValueError, lambda g: g.index.search(np.zeros((1, 5), np.float32))),
    ]
    for kind, call in calls:
        messages = []
        for g in (single, sharded):
            with pytest.raises(kind) as e:
                call(g)
            messages.append(str(e.value))
        assert messages[0] == messages[1]
    with pytest.raises(ValueError, match="shards must be a positive integer"):
        ShardedIndex.build(single.index.embeddings, single.index.ids, shards=0)
    with pytest.raises(ValueError, match="duplicate ids"):
        ShardedIndex.build(single.index.embeddings[:2], ["a", "a"], shards=2)


def test_sharded_guide_round_trip_with_checksums(enc: HashingEncoder, tmp_path: Path) -> None:
    single, sharded = _pair(enc, n=120, shards=3)
    path = sharded.save(tmp_path / "g")
    manifest = json.loads((path / "manifest.json").read_text())
    entries = manifest["index"]["shards"]
    assert [e["path"] for e in entries] == ["shards/00000", "shards/00001", "shards/00002"]
    assert [e["rows"] for e in entries] == [40, 40, 40] and manifest["index"]["rows"] == 120
    for e in entries:
        for name, digest in e["sha256"].items():
            assert manifest["files"][f"{e['path']}/{name}"]["sha256"] == digest
    loaded = Guide.load(path, enc)
    assert isinstance(loaded.index, ShardedIndex) and loaded.index.bounds == [0, 40, 80, 120]
    assert [h.ids for h in loaded.search(QUERIES, k=10)] == [h.ids for h in single.search(QUERIES, k=10)]
    pd.testing.assert_frame_equal(loaded.index.metadata, Guide.load(single.save(tmp_path / "one"), enc).index.metadata)

    damaged = dict(manifest)
    damaged["index"] = dict(manifest["index"], shards=[dict(entries[0], sha256=dict(entries[0]["sha256"],
                                                                                     **{"index.faiss": "0" * 64})),
                                                       *entries[1:]])
    (path / "manifest.json").write_text(json.dumps(damaged))
    with pytest.raises(ArtifactError, match="is not the one 'files' lists"):
        Guide.load(path, enc)
    (path / "manifest.json").write_text(json.dumps(manifest))
    victim = path / "shards/00001/embeddings.npy"
    victim.write_bytes(victim.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(ArtifactError, match="00001/embeddings.npy: checksum mismatch"):
        Guide.load(path, enc)


def test_remove_and_onboard_across_shards(enc: HashingEncoder, tmp_path: Path) -> None:
    single, sharded = _pair(enc, n=90, shards=3)
    guides = [Guide.load(single.save(tmp_path / "one"), enc), Guide.load(sharded.save(tmp_path / "sharded"), enc)]
    gone = ["p0001", "p0045", "p0089"]  # one per shard
    new = Catalog.from_records([{"id": "n1", "title": "linen shirt new season", "category": "New"},
                                {"id": "n2", "title": "wool scarf new season", "category": "New"},
                                {"id": "p0045", "title": "red linen shirt back again", "category": "New"}])
    for g in guides:
        g.remove(gone)
        report = g.onboard(new)
        assert (report.added, report.items) == (3, 90)
    assert guides[1].index.bounds == [0, 30, 60, 93]  # new rows go to the last shard
    for g in guides + [Guide.load(tmp_path / "sharded", enc)]:
        hits = g.search(QUERIES, k=90)
        assert all(not {"p0001", "p0089"} & set(h.ids) for h in hits)
        assert g.search("linen shirt", k=3, category="New").ids[0] in ("n1", "p0045")
        assert g.index.item("p0045")["title"] == "red linen shirt back again"
    assert [h.ids for h in guides[0].search(QUERIES, k=10)] == [h.ids for h in guides[1].search(QUERIES, k=10)]
    reloaded = Guide.load(tmp_path / "sharded", enc)
    assert reloaded.index.count == 90 and reloaded.onboard(new).unchanged == 3


# ---------------------------------------------------------------------------------------------- the Ray build
if os.environ.get("CI"):  # CI runs the Ray tests for real: scripts/install.sh installs the ray extra
    import ray  # noqa: E402, F401
else:
    ray = pytest.importorskip("ray")
from textguide.distributed import build_index_ray  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (2 CPUs, the CI machine's)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test encoders below run in workers
    yield ray
    if started:
        ray.shutdown()


class LoggingEncoder(HashingEncoder):
    """The fake encoder, appending every text it encodes to ``log`` (workers are other processes)."""

    def __init__(self, log: Path, dim: int = 32, die_on: str | None = None, fail_on: str | None = None) -> None:
        super().__init__(dim)
        self.log, self.die_on, self.fail_on = str(log), die_on, fail_on

    def encode(self, texts, batch_size=64, show_progress=None):
        if self.fail_on is not None and self.fail_on in texts:
            raise ValueError(f"cannot encode {self.fail_on!r}")
        if self.die_on is not None and self.die_on in texts and not os.path.exists(self.log + ".died"):
            Path(self.log + ".died").write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies mid-build, once
        with open(self.log, "a", encoding="utf-8") as f:
            f.write("".join(t.replace("\n", " ") + "\n" for t in texts))
        return super().encode(texts, batch_size, show_progress)


def _logged(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def test_ray_build_matches_the_single_process_guide_despite_a_killed_worker(local_ray, tmp_path: Path) -> None:
    frame = _frame(500)
    frame.loc[17, "title"] = ""  # skipped, as in load_catalog
    csv = tmp_path / "catalog.csv.gz"
    frame.to_csv(csv, index=False)
    texts = Catalog.from_frame(frame).texts
    log, cache = tmp_path / "encoded.log", tmp_path / "cache"
    enc = LoggingEncoder(log, die_on=texts[300])  # its worker process dies once, mid-build
    manifest = build_index_ray(csv, tmp_path / "ray", encoder=enc, shards=3, actors=2, batch_rows=64, cache_dir=cache)
    assert (tmp_path / "encoded.log.died").exists() and set(_logged(log)) == set(texts)  # the batch was done again
    assert [s["rows"] for s in manifest["index"]["shards"]] == [167, 167, 165]
    assert manifest["index"]["factory"] == "Flat" and manifest["counts"]["items"] == 499
    for s in manifest["index"]["shards"]:
        assert manifest["files"][f"{s['path']}/index.faiss"]["sha256"] == s["sha256"]["index.faiss"]
    plain = HashingEncoder(32)
    build_index(csv, tmp_path / "one", encoder=plain)
    single, sharded = Guide.load(tmp_path / "one", plain), Guide.load(tmp_path / "ray", plain)
    assert sharded.index.ids == single.index.ids
    pd.testing.assert_frame_equal(sharded.index.metadata, single.index.metadata)
    np.testing.assert_allclose(sharded.index.embeddings, single.index.embeddings, atol=1e-6)
    for kwargs in ({}, {"category": "cat-vase"}):
        a, b = single.search(QUERIES, k=10, **kwargs), sharded.search(QUERIES, k=10, **kwargs)
        assert _overlap([h.ids for h in a], [h.ids for h in b]) >= 0.99

    frame.loc[7, "title"] = "an edited title"  # a 1-row edit, from Parquet: only that text is encoded again
    frame.to_parquet(tmp_path / "catalog.parquet", index=False)
    log.unlink()
    build_index_ray(tmp_path / "catalog.parquet", tmp_path / "ray", encoder=enc, shards=2, actors=1, batch_rows=100,
                    cache_dir=cache)
    assert _logged(log) == [Catalog.from_frame(frame).texts[7]]
    edited = Guide.load(tmp_path / "ray", plain)
    assert edited.index.item("p0007")["title"] == "an edited title" and edited.index.bounds == [0, 250, 499]


def test_ray_build_failure_keeps_the_previous_guide(local_ray, tmp_path: Path, enc: HashingEncoder) -> None:
    frame = _frame(200)
    jsonl = tmp_path / "catalog.jsonl"
    frame.to_json(jsonl, orient="records", lines=True)
    out = tmp_path / "guide"
    build_index(jsonl, out, encoder=enc)
    manifest = (out / "manifest.json").read_text()
    bad = LoggingEncoder(tmp_path / "log", fail_on=Catalog.from_frame(frame).texts[150])
    with pytest.raises(ValueError, match="cannot encode"):  # the worker's own error, not a Ray wrapper
        build_index_ray(jsonl, out, encoder=bad, shards=2, actors=1, batch_rows=50, use_cache=False)
    assert (out / "manifest.json").read_text() == manifest and Guide.load(out, enc).index.count == 200
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the temporary directory is gone
    frame.loc[120, "id"] = "p0003"  # a duplicate id in another block
    frame.to_parquet(tmp_path / "dup.parquet", index=False)
    with pytest.raises(ValueError, match="1 duplicate ids in the catalog"):
        build_index_ray(tmp_path / "dup.parquet", out, encoder=enc, shards=2, batch_rows=50)
    assert (out / "manifest.json").read_text() == manifest


def test_ray_build_refusals_before_ray_starts(tmp_path: Path, enc: HashingEncoder) -> None:
    csv = tmp_path / "catalog.csv"
    _frame(10).to_csv(csv, index=False)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a textguide guide"):
        build_index_ray(csv, docs, encoder=enc)
    with pytest.raises(ValueError, match="needs unique ids"):
        build_index_ray(csv, tmp_path / "g", encoder=enc, on_duplicate="last")
    with pytest.raises(ValueError, match="actors must be a positive integer"):
        build_index_ray(csv, tmp_path / "g", encoder=enc, actors=0)
    (tmp_path / "catalog.xlsx").write_text("x")
    with pytest.raises(ValueError, match="reads Parquet, CSV, TSV or JSONL"):
        build_index_ray(tmp_path / "catalog.xlsx", tmp_path / "g", encoder=enc)
    assert main(["build-index", str(csv), str(docs), "--engine", "ray", "--encoder", "hashing:32"]) == 2
    assert (docs / "notes.txt").read_text() == "mine" and not (tmp_path / "g").exists()
