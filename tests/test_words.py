"""Title word overlap (textguide.words) and where it joins the outfit score (OutfitScores, Guide.complete_outfit,
the cross-validated word weight)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from textguide import Guide
from textguide.adapters import AdapterConfig, MultiTaskAdapter, encode_items
from textguide.tasks.outfit import OutfitScores, OutfitTask, outfit_queries, outfit_scorer
from textguide.words import WordOverlap, words_of

TITLES = ["Black leather boots", "black cotton tee", "Red skirt", "red leather bag", "blue jeans"]


def test_words_of_lowercases_dedups_and_splits_cjk_per_character():
    assert words_of("Black, black LEATHER-boots 2024!") == ["black", "leather", "boots", "2024"]
    assert words_of("红色 连衣裙 zara") == ["红", "色", "连", "衣", "裙", "zara"]
    assert words_of("") == [] and words_of("_-_") == []


def test_overlap_is_the_idf_mass_of_shared_words_by_hand():
    w = WordOverlap(TITLES)
    n = len(TITLES)
    idf = lambda df: max(0.0, math.log(n / (1 + df)))  # noqa: E731
    # boots (row 0) against {red leather bag}: shares "leather" (df 2)
    assert w.scores([3], [0])[0] == pytest.approx(idf(2))
    # the partial {black cotton tee, red skirt}: boots share "black" (df 2); bag shares "red" (df 2); jeans none
    got = w.scores([1, 2], [0, 3, 4])
    assert got.tolist() == pytest.approx([idf(2), idf(2), 0.0])
    # a word in every title has idf 0; repeated words count once
    assert WordOverlap(["a b", "a c", "a d"]).scores([0], [1, 2]).tolist() == [0.0, 0.0]
    assert WordOverlap(["x x y", "x", "z"]).scores([1], [0])[0] == pytest.approx(max(0, math.log(3 / 3)))
    # pair_scores is scores row by row
    cands = np.array([[0, 3], [4, 2]])
    assert np.allclose(w.pair_scores([[3], [1, 2]], cands), np.stack([w.scores([3], cands[0]),
                                                                         w.scores([1, 2], cands[1])]))
    assert len(w) == n and w.seen([4]).sum() == 2


def test_word_overlap_errors():
    with pytest.raises(ValueError, match="titles must be a list of strings"):
        WordOverlap("one title")
    w = WordOverlap(TITLES)
    with pytest.raises(IndexError, match=r"candidates: rows must lie in \[0, 5\)"):
        w.scores([0], [5])
    with pytest.raises(IndexError, match=r"rows: rows must lie in \[0, 5\)"):
        w.scores([-1], [0])
    with pytest.raises(ValueError, match=r"candidates must be a \(Q, C\) array with Q = 2"):
        w.pair_scores([[0], [1]], np.array([1, 2]))


def _model(dim: int, n_slots: int = 2, word_weight: float = 0.0) -> MultiTaskAdapter:
    torch.manual_seed(0)
    return MultiTaskAdapter(AdapterConfig(input_dim=dim, dim=8, seq_heads=2, tasks=("outfit",), n_slots=n_slots,
                                          outfit_word_weight=word_weight))


def test_outfit_scores_add_the_weighted_overlap_to_the_inner_products():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 6)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    words = WordOverlap(TITLES)
    model = _model(6, word_weight=0.5)
    scored = outfit_scorer(emb, "adapter", model, words=words)([[1, 2], [3]], [0, -1])
    q = outfit_queries(model, emb, [[1, 2], [3]], [0, -1])
    v = encode_items(model, emb, "outfit")
    cands = np.array([[0, 3, 4], [0, 1, 2]])
    want = np.stack([v[cands[i]] @ q[i] for i in range(2)]) + 0.5 * words.pair_scores([[1, 2], [3]], cands)
    assert np.allclose(scored.pairs(cands), want, atol=1e-6)
    assert np.allclose(scored.row(0, np.array([0, 3, 4])), want[0], atol=1e-6)
    # text: no word term unless asked; a tuple from a custom scorer is the same scores without words
    text = outfit_scorer(emb, "text", words=words)([[1, 2]], [0])
    assert text.word_weight == 0.0
    assert np.allclose(OutfitScores.of((text.queries, emb), [[1, 2]]).pairs(cands[:1]), text.pairs(cands[:1]))
    boosted = outfit_scorer(emb, "text", words=words, word_weight=2.0)([[1, 2]], [0]).pairs(cands[:1])
    assert np.allclose(boosted - text.pairs(cands[:1]), 2.0 * words.pair_scores([[1, 2]], cands[:1]))


def test_a_word_weight_without_titles_is_an_error():
    emb = np.eye(5, 6, dtype=np.float32)
    with pytest.raises(ValueError, match="word weight of 0.5 needs the items' titles"):
        outfit_scorer(emb, "adapter", _model(6, word_weight=0.5))
    with pytest.raises(ValueError, match="words has 3 titles for 5 items"):
        outfit_scorer(emb, "text", words=WordOverlap(TITLES[:3]))
    with pytest.raises(ValueError, match="words has 3 titles for 5 items"):
        OutfitTask(emb, [[0, 1]], np.zeros(5, dtype=np.int64), words=WordOverlap(TITLES[:3]))
    with pytest.raises(ValueError, match="outfit_word_weight must be a number >= 0"):
        AdapterConfig(input_dim=6, outfit_word_weight=-1)


def test_the_task_validates_with_the_word_weight():
    """Outfits tied only by a shared title word: text vectors say nothing, the word weight finds the answer."""
    rng = np.random.default_rng(1)
    n = 40
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    slots = np.arange(n) % 2
    titles = [f"item{i} brand{i // 2}" for i in range(n)]  # items 2j (slot 0) and 2j+1 (slot 1) share brand j
    outfits = [[2 * j, 2 * j + 1] for j in range(n // 2)]
    task = OutfitTask(emb, outfits, slots, outfits, words=WordOverlap(titles))
    model = _model(16)
    without = task.valid_metric(model)
    model.config.outfit_word_weight = 1.0
    assert task.valid_metric(model) == 1.0 > without
    from textguide.tasks import TASKS

    assert TASKS["outfit"].per_example(task, model).mean() == 1.0


@pytest.fixture
def worded_guide(catalog, enc) -> Guide:
    g = Guide.build(catalog, enc)
    slot = {"Tops": "upper", "Shoes": "shoe", "Bags": "bag"}
    g.index.metadata["slot"] = [slot.get(c, "") for c in g.index.metadata["category"]]
    model = MultiTaskAdapter(AdapterConfig(input_dim=enc.dim, dim=16, seq_heads=2, n_slots=3, tasks=("outfit",),
                                           outfit_word_weight=0.7))
    g.set_adapter(model, {"slot_field": "slot", "slots": ["upper", "shoe", "bag"]})
    return g


def _brute_force(g: Guide, items: list[str], pool: list[str], weight: float) -> dict[str, float]:
    rows = [g.index.row_of[i] for i in items]
    q = outfit_queries(g.adapter, g.index.embeddings, [rows], [-1], None)[0]
    v = encode_items(g.adapter, g.index.embeddings, "outfit")
    words = WordOverlap(g.index.metadata["title"].tolist())
    pool_rows = [g.index.row_of[i] for i in pool]
    s = v[pool_rows] @ q + weight * words.scores(rows, pool_rows)
    return dict(zip(pool, s.tolist()))


def test_complete_outfit_serves_the_word_term_with_the_adapter(worded_guide: Guide) -> None:
    g = worded_guide
    cands = ["p09", "p10", "p11", "p16"]
    hits = g.complete_outfit(["p05"], k=4, candidates=cands, method="adapter")
    want = _brute_force(g, ["p05"], cands, 0.7)
    assert hits.ids == sorted(want, key=lambda i: -want[i])
    assert hits.scores.tolist() == pytest.approx([want[i] for i in hits.ids], abs=1e-5)
    # search (catalog smaller than the over-fetch): the exact top-k of every other item
    others = [i for i in g.index.ids if i != "p05"]
    want = _brute_force(g, ["p05"], others, 0.7)
    top = g.complete_outfit(["p05"], k=5, method="adapter")
    assert top.ids == sorted(want, key=lambda i: -want[i])[:5]
    # text similarity stays plain text
    text = g.complete_outfit(["p05"], k=4, candidates=cands, method="text")
    plain = {i: float(g.index.vectors([i])[0] @ g.index.vectors(["p05"])[0]) for i in cands}
    assert text.scores.tolist() == pytest.approx(sorted(plain.values(), reverse=True), abs=1e-5)


def test_onboarded_titles_join_the_word_table(worded_guide: Guide, tmp_path: Path) -> None:
    g = worded_guide
    before = g.title_words()
    assert g.title_words() is before  # cached while the index stays
    title = g.index.item("p05")["title"]
    path = tmp_path / "new.csv"
    pd.DataFrame({"id": ["n1"], "title": [title + " twin"], "slot": ["shoe"]}).to_csv(path, index=False)
    g.onboard(path)
    after = g.title_words()
    assert after is not before and len(after) == len(g.index.ids)
    assert after.scores([g.index.row_of["p05"]], [g.index.row_of["n1"]])[0] > 0
    hits = g.complete_outfit(["p05"], k=3, candidates=["n1", "p09"], method="adapter")
    want = _brute_force(g, ["p05"], ["n1", "p09"], 0.7)
    assert hits.scores.tolist() == pytest.approx(sorted(want.values(), reverse=True), abs=1e-5)


def test_a_logit_bias_is_added_to_the_scores_before_scaling():
    model = _model(6)
    rng = np.random.default_rng(0)
    cand = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(3, 6)).astype(np.float32)), dim=-1)
    query = torch.from_numpy(rng.normal(size=(3, 8)).astype(np.float32))
    batch = {"candidates": cand, "targets": torch.arange(3)}
    plain, _ = model.retrieval_output(query, batch, "outfit")
    bias = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    biased, loss = model.retrieval_output(query, {**batch, "logit_bias": bias}, "outfit")
    assert torch.allclose(biased - plain, model.logit_scale_of("outfit") * bias, atol=1e-5)
    assert torch.isfinite(loss)


def test_observe_judges_the_adapter_with_the_word_term_it_is_served_with(worded_guide: Guide) -> None:
    from textguide.tasks.outfit import OUTFIT

    g = worded_guide
    # titles whose words the (hashed) embeddings did not see, so the word term moves ranks the adapter does not
    g.index.metadata.loc[g.index.row_of["p11"], "title"] = "Canvas espadrilles for running in merino"
    shoes = ["p09", "p10", "p11", "p12"]
    outfits = [[top, shoe] for top in ["p05", "p06", "p07", "p08", "p13", "p14", "p15"] for shoe in shoes]
    hits, extra, n_cand = OUTFIT.observe_users(g, outfits, "shoe", [0.0, 1.0], k=4)
    assert n_cand == 4

    def ndcg(weight: float) -> list[float]:  # the target's NDCG@4 among the shoes, brute force, ties against it
        out = []
        for outfit in outfits:
            s = _brute_force(g, outfit[:-1], shoes, weight)
            rank = sum(s[c] >= s[outfit[-1]] for c in shoes if c != outfit[-1])
            out.append(1 / math.log2(rank + 2))
        return out

    assert extra["NDCG@4"][1.0].tolist() == pytest.approx(ndcg(0.7), abs=1e-6)
    assert ndcg(0.7) != pytest.approx(ndcg(0.0), abs=1e-6)  # the word term moves a rank: the check can fail
    g.adapter.config.outfit_word_weight = 0.0
    _, plain, _ = OUTFIT.observe_users(g, outfits, "shoe", [1.0], k=4)
    assert plain["NDCG@4"][1.0].tolist() == pytest.approx(ndcg(0.0), abs=1e-6)
