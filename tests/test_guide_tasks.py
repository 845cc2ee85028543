"""Guide.recommend / complete_outfit / rank_coupons: behaviour with an adapter and with the text fallback,
save/load equality of predictions, and every error path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from textguide import Guide
from textguide.adapters import AdapterConfig, MultiTaskAdapter
from textguide.catalog import Catalog
from textguide.encoder import HashingEncoder
from textguide.guide import verbalise_profile
from textguide.tasks.recommend import SequenceTask
from textguide.training import TrainConfig, train

SLOTS = ["upper", "shoe", "bag"]


@pytest.fixture
def guide(catalog: Catalog, enc: HashingEncoder) -> Guide:
    g = Guide.build(catalog, enc)
    slot = {"Tops": "upper", "Shoes": "shoe", "Bags": "bag"}
    g.index.metadata["slot"] = [slot.get(c, "") for c in g.index.metadata["category"]]
    return g


@pytest.fixture
def model(enc: HashingEncoder) -> MultiTaskAdapter:
    torch.manual_seed(0)
    return MultiTaskAdapter(AdapterConfig(input_dim=enc.dim, dim=16, seq_heads=2, n_slots=len(SLOTS),
                                          profile_dim=enc.dim))


@pytest.fixture
def trained(guide: Guide, model: MultiTaskAdapter) -> Guide:
    guide.set_adapter(model, {"slot_field": "slot", "slots": SLOTS, "profile": "text"})
    guide.add_coupons({"c-kitchen": ["p01", "p02", "p03"], "c-shoes": ["p09", "p10"], "c-decor": ["p16", "p17"]},
                      save=False)
    return guide


def test_text_fallback_recommend_is_mean_history_cosine(guide: Guide) -> None:
    hits = guide.recommend(["p01", "p02"], k=5)
    assert hits.method == "text"
    emb = guide.index.embeddings
    q = emb[[0, 1]].mean(0)
    q /= np.linalg.norm(q)
    sims = emb @ q
    sims[[0, 1]] = -np.inf  # history excluded
    expected = [guide.index.ids[i] for i in np.argsort(-sims)[:5]]
    assert hits.ids == expected
    assert "p01" not in hits.ids and "p02" not in hits.ids


def test_recommend_keeps_history_when_asked(guide: Guide) -> None:
    hits = guide.recommend(["p01"], k=1, exclude_history=False)
    assert hits.ids == ["p01"]


def test_recommend_learns_a_sequence_rule(guide: Guide, enc: HashingEncoder) -> None:
    """After training on 'p05 -> p09' style pairs, the adapter recommends the paired item first."""
    torch.manual_seed(0)
    model = MultiTaskAdapter(AdapterConfig(input_dim=enc.dim, dim=16, seq_heads=2, tasks=("recommend",)))
    pairs = {"p05": "p13", "p06": "p14", "p08": "p15", "p01": "p04"}
    row = guide.index.row_of
    hist = [[row[a]] for a in pairs] * 30
    targ = [row[b] for b in pairs.values()] * 30
    task = SequenceTask(guide.index.embeddings, hist, targ)
    train(model, {"recommend": task}, TrainConfig(steps=150, batch_size=32, lr=3e-3, eval_every=150,
                                                  patience=None, show_progress=False))
    guide.set_adapter(model)
    for a, b in pairs.items():
        hits = guide.recommend([a], k=1)
        assert hits.method == "adapter"
        assert hits.ids == [b], (a, hits.ids)


def test_recommend_errors(guide: Guide) -> None:
    with pytest.raises(ValueError, match="history must be a non-empty list"):
        guide.recommend([], k=3)
    with pytest.raises(ValueError, match="history must be a non-empty list"):
        guide.recommend("p01", k=3)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        guide.recommend(["p01"], k=0)
    with pytest.raises(KeyError, match=r"unknown item ids in history: \['zz'\] \(1 of 2\)"):
        guide.recommend(["p01", "zz"], k=3)
    with pytest.raises(ValueError, match="method must be"):
        guide.recommend(["p01"], method="magic")
    with pytest.raises(ValueError, match="no trained 'recommend' adapter"):
        guide.recommend(["p01"], method="adapter")


def test_recommend_reports_skipped_unknown_ids(guide: Guide) -> None:
    hits = guide.recommend(["p01", "zz"], k=3, on_unknown="skip")
    assert hits.skipped == ["zz"]
    assert hits.ids == guide.recommend(["p01"], k=3).ids
    with pytest.raises(KeyError, match="unknown item ids"):
        guide.recommend(["zz"], k=3, on_unknown="skip")  # nothing known left


def test_complete_outfit_candidates_and_slot(trained: Guide) -> None:
    hits = trained.complete_outfit(["p05"], k=2, candidates=["p09", "p10", "p11", "p05"])
    assert len(hits) == 2 and "p05" not in hits.ids
    assert set(hits.ids) <= {"p09", "p10", "p11"}
    scores = trained.complete_outfit(["p05"], k=3, candidates=["p09", "p10", "p11"]).scores
    assert np.all(np.diff(scores) <= 0)
    shoes = trained.complete_outfit(["p05", "p13"], k=3, slot="shoe")
    assert len(shoes) == 3
    assert all(trained.index.item(i)["slot"] == "shoe" for i in shoes.ids)
    assert not {"p05", "p13"} & set(trained.complete_outfit(["p05", "p13"], k=19).ids)


def test_onboarded_catalog_keeps_the_slot_field(trained: Guide, tmp_path: Path) -> None:
    """A catalog file onboarded later with id,title,category,slot: its slot column reaches complete_outfit."""
    new = tmp_path / "new.csv"
    pd.DataFrame({"id": ["n1", "n2", "n3"], "title": ["Red leather ankle boots", "White canvas sneakers",
                                                       "Quilted shoulder bag"],
                  "category": ["Boots", "Sneakers", "Bags"], "slot": ["shoe", "shoe", "bag"]}).to_csv(new, index=False)
    assert trained.extra_fields == ("slot",)
    trained.onboard(new)
    assert [trained.index.item(i)["slot"] for i in ("n1", "n2", "n3")] == ["shoe", "shoe", "bag"]
    old_shoes = {i for i, s in zip(trained.index.ids, trained.index.metadata["slot"]) if s == "shoe"} - {"n1", "n2"}
    for method in ("adapter", "text"):
        shoes = trained.complete_outfit(["p05"], k=50, slot="shoe", method=method)
        assert set(shoes.ids) == old_shoes | {"n1", "n2"}  # every shoe, the onboarded ones too, no bag
    bags = trained.complete_outfit(["p05"], k=50, slot="bag", method="adapter")
    assert "n3" in bags.ids and not {"n1", "n2"} & set(bags.ids)
    # a catalog without the field onboards as before: its items have no slot, so no slot search finds them
    pd.DataFrame({"id": ["n4"], "title": ["Suede loafers"]}).to_csv(tmp_path / "plain.csv", index=False)
    trained.onboard(tmp_path / "plain.csv")
    assert "n4" in trained.index and "n4" not in trained.complete_outfit(["p05"], k=50, slot="shoe").ids


def test_complete_outfit_errors(trained: Guide) -> None:
    with pytest.raises(ValueError, match="unknown slot 'hat'"):
        trained.complete_outfit(["p05"], slot="hat")
    with pytest.raises(ValueError, match="items must be a non-empty list"):
        trained.complete_outfit([])
    with pytest.raises(ValueError, match="candidates must be a non-empty list"):
        trained.complete_outfit(["p05"], candidates=[])
    with pytest.raises(KeyError, match="unknown item ids in candidates"):
        trained.complete_outfit(["p05"], candidates=["nope"])


def test_rank_coupons_probabilities_and_order(trained: Guide) -> None:
    hits = trained.rank_coupons(["p01", "p04"], profile={"age": "35-44", "kids_count": 2})
    assert hits.method == "adapter"
    assert sorted(hits.ids) == ["c-decor", "c-kitchen", "c-shoes"]
    assert np.all((hits.scores >= 0) & (hits.scores <= 1))
    assert np.all(np.diff(hits.scores) <= 0)
    # a new coupon, given as a mapping, needs no registration or retraining
    new = trained.rank_coupons(["p01"], {"c-new": ["p18", "p19"]})
    assert new.ids == ["c-new"]


def test_rank_coupons_text_fallback_prefers_matching_products(trained: Guide) -> None:
    hits = trained.rank_coupons(["p02", "p03"], method="text")
    assert hits.ids[0] == "c-kitchen"


def test_rank_coupons_errors(trained: Guide) -> None:
    with pytest.raises(ValueError, match="coupon 'c-empty' covers no products"):
        trained.rank_coupons(["p01"], {"c-empty": []})
    with pytest.raises(KeyError, match=r"unknown coupon ids \['nope'\]"):
        trained.rank_coupons(["p01"], ["nope"])
    with pytest.raises(ValueError, match="history is empty: the text method needs"):
        trained.rank_coupons([], ["c-kitchen"], method="text")
    with pytest.raises(ValueError, match="profile must be a dict"):
        trained.rank_coupons(["p01"], profile=["age", 3])
    with pytest.raises(ValueError, match="covers no products"):
        trained.add_coupons({"c-x": []})
    with pytest.raises(KeyError, match="covers unknown item ids"):
        trained.add_coupons({"c-x": ["zz"]})
    with pytest.raises(ValueError, match="already exists with other products"):
        trained.add_coupons({"c-kitchen": ["p04"]})


def test_rank_coupons_needs_history_or_profile(guide: Guide, enc: HashingEncoder) -> None:
    guide.set_adapter(MultiTaskAdapter(AdapterConfig(input_dim=enc.dim, dim=16, seq_heads=2, tasks=("coupon",))))
    guide.add_coupons({"c-kitchen": ["p01", "p02"]}, save=False)
    with pytest.raises(ValueError, match="empty history and no profile"):
        guide.rank_coupons([], ["c-kitchen"])


def test_predictions_survive_save_and_load(trained: Guide, tmp_path: Path, enc: HashingEncoder) -> None:
    path = trained.save(tmp_path / "g")
    again = Guide.load(path, enc)
    assert again.adapter is not None and again.adapter_meta["slots"] == SLOTS
    assert again.coupons == trained.coupons
    for a, b in [(trained.recommend(["p01", "p05"], k=5), again.recommend(["p01", "p05"], k=5)),
                 (trained.complete_outfit(["p05"], k=4, slot="shoe"), again.complete_outfit(["p05"], k=4, slot="shoe")),
                 (trained.rank_coupons(["p01"], profile={"age": 30}), again.rank_coupons(["p01"], profile={"age": 30}))]:
        assert a.ids == b.ids
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    assert again.info()["adapter"]["tasks"] == ["recommend", "outfit", "coupon"]


def test_adapter_dimension_mismatch(guide: Guide) -> None:
    other = MultiTaskAdapter(AdapterConfig(input_dim=64, dim=16, seq_heads=2))
    with pytest.raises(ValueError, match="adapter expects 64-d text embeddings, this guide has 32-d"):
        guide.set_adapter(other)


def test_verbalise_profile() -> None:
    assert verbalise_profile({"age": "45-54", "kids_count": 2, "income": None}) == "age: 45-54. kids count: 2"
    assert verbalise_profile({}) == "unknown customer"


def test_remove_items(guide: Guide, tmp_path: Path, enc: HashingEncoder) -> None:
    guide.save(tmp_path / "g")
    guide.remove(["p02"])
    assert "p02" not in guide.similar("p01", k=19).ids
    assert "p02" not in Guide.load(tmp_path / "g", enc).index
    with pytest.raises(KeyError, match="unknown item id 'p02'"):
        guide.remove(["p02"])
    with pytest.raises(ValueError, match="wrap it as"):
        guide.remove("p01")


def test_reports_survive_updates_and_may_be_rewritten(guide: Guide, tmp_path: Path, enc: HashingEncoder) -> None:
    """reports/ is carried across atomic updates but is not checksummed, so rewriting a report never
    breaks Guide.load."""
    path = guide.save(tmp_path / "g")
    (path / "reports").mkdir()
    (path / "reports" / "report.md").write_text("first")
    guide.remove(["p03"])  # an atomic update copies reports/ along
    assert (path / "reports" / "report.md").read_text() == "first"
    (path / "reports" / "report.md").write_text("rewritten by textguide evaluate")
    again = Guide.load(path, enc)
    assert "p03" not in again.index
    assert not any(f.startswith("reports/") for f in again.manifest["files"])
