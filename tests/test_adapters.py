"""The adapter model: config, identity-ish start, task parts, sharing modes, save/load, error paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from textguide.adapters import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterConfig,
    MultiTaskAdapter,
    load_adapter,
    save_adapter,
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(sharing: str = "hard", **kw) -> MultiTaskAdapter:
    torch.manual_seed(0)
    cfg = dict(input_dim=384, dim=64, sharing=sharing, n_experts=3, seq_layers=1, n_slots=4, profile_dim=3)
    return MultiTaskAdapter(AdapterConfig(**(cfg | kw))).eval()


def clustered(n: int = 60, d: int = 384, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(6, d, generator=g), dim=-1)
    return F.normalize(centres[torch.arange(n) % 6] + 0.06 * torch.randn(n, d, generator=g), dim=-1)


def inputs(b: int = 4, length: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = clustered(b * length, seed=seed).reshape(b, length, -1)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[0, 2:] = False
    return x, mask


# ---------------------------------------------------------------------------------------------------------


def test_config_round_trip_and_validation():
    cfg = AdapterConfig(input_dim=384, sharing="experts", tasks=["recommend", "coupon"])
    assert cfg.tasks == ("recommend", "coupon")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert AdapterConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="sharing must be one of hard, soft, experts"):
        AdapterConfig(input_dim=384, sharing="medium")
    with pytest.raises(ValueError, match="unknown AdapterConfig field"):
        AdapterConfig.from_dict(d | {"hidden": 3})
    with pytest.raises(ValueError, match="tasks must be distinct names from recommend, outfit, coupon"):
        AdapterConfig(input_dim=384, tasks=("recommend", "ranking"))
    with pytest.raises(ValueError, match="divisible by seq_heads"):
        AdapterConfig(input_dim=384, dim=30, seq_heads=4)


@pytest.mark.parametrize("sharing", ["hard", "soft", "experts"])
def test_untrained_adapter_preserves_text_similarity(sharing):
    model = make(sharing, dim=128)
    x = clustered()
    for task in ("recommend", "outfit", "coupon"):
        v = model.item_vectors(x, task)
        assert v.shape == (60, 128)
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(60))
        text, adapted = (x @ x.T).flatten(), (v @ v.T).flatten()
        assert torch.corrcoef(torch.stack([text, adapted]))[0, 1] > 0.9
        # the nearest neighbour of every item stays in its cluster
        sims = (v @ v.T).fill_diagonal_(-2)
        assert (sims.argmax(1) % 6 == torch.arange(60) % 6).all()


def test_untrained_recommend_query_is_the_most_recent_item():
    model = make()
    hist, mask = inputs()
    q = model.recommend_query(hist, mask)
    last = model.item_vectors(hist[torch.arange(4), mask.sum(1) - 1], "recommend")
    torch.testing.assert_close(q, last)


def test_task_parts_shapes_and_batch_equals_single():
    model = make()
    hist, mask = inputs()
    slot = torch.tensor([0, 3, -1, 1])
    profile = torch.randn(4, 3)
    one = model.outfit_query(hist[:, :1], mask[:, :1], slot)  # untrained: a one-item outfit queries itself
    torch.testing.assert_close(one, model.item_vectors(hist[:, 0], "outfit"), atol=1e-5, rtol=0)
    model.sequence.out.weight.data.normal_(std=0.1)  # leave the identity start so the transformer matters
    model.outfit.mlp[-1].weight.data.normal_(std=0.1)  # and so the wanted slot matters
    q = model.recommend_query(hist, mask)
    o = model.outfit_query(hist, mask, slot)
    c = model.coupon_logit(hist, mask, hist.flip(0), mask.flip(0), profile)
    assert q.shape == o.shape == (4, 64) and c.shape == (4,)
    torch.testing.assert_close(o.norm(dim=-1), torch.ones(4))
    # row 0 (2 items + padding) equals the same history unpadded, and padding at the front changes nothing
    torch.testing.assert_close(model.recommend_query(hist[:1, :2], mask[:1, :2]), q[:1], atol=1e-5, rtol=0)
    front = torch.cat([hist[:1, 2:], hist[:1, :2]], dim=1)
    front_mask = torch.tensor([[False, False, False, True, True]])
    torch.testing.assert_close(model.recommend_query(front, front_mask), q[:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.outfit_query(hist[1:2], mask[1:2], slot[1:2]), o[1:2], atol=1e-5, rtol=0)
    # the wanted slot changes the outfit query; order of items within a history matters for recommend
    assert not torch.allclose(model.outfit_query(hist, mask, torch.tensor([1, 3, -1, 1])), o)
    assert not torch.allclose(model.recommend_query(hist[1:2].flip(1), mask[1:2]), q[1:2])


def test_forward_with_and_without_targets():
    model = make().train()
    hist, mask = inputs()
    cands = clustered(10, seed=3)
    out, loss = model({"history": hist, "history_mask": mask}, "recommend")
    assert out.shape == (4, 64) and loss is None
    exclude = torch.zeros(4, 10, dtype=torch.bool)
    exclude[:, 0] = True
    batch = {"history": hist, "history_mask": mask, "candidates": cands, "exclude": exclude}
    logits, loss = model(batch, "recommend")
    assert logits.shape == (4, 10) and loss is None and torch.isinf(logits[:, 0]).all()
    logits, loss = model(batch | {"targets": torch.tensor([1, 2, 3, 4])}, "recommend")
    expected = F.cross_entropy(logits, torch.tensor([1, 2, 3, 4]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.logit_scale["recommend"].grad is not None

    rows = clustered(4 * 3, seed=4).reshape(4, 3, -1)
    batch = {"items": hist, "items_mask": mask, "slot": torch.tensor([0, 1, 2, 3]), "candidates": cands}
    logits, loss = model(batch | {"row_candidates": rows, "targets": torch.tensor([0, 11, 12, 10])}, "outfit")
    assert logits.shape == (4, 13) and torch.isfinite(loss)

    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    batch = {"user_history": hist, "user_mask": mask, "coupon_items": hist, "coupon_mask": mask}
    logits, loss = model(batch | {"labels": labels, "pos_weight": torch.tensor(2.0)}, "coupon")
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, labels, pos_weight=torch.tensor(2.0)))
    # a cold user: no purchases, only a profile
    empty = torch.zeros_like(mask)
    logits, _ = model(batch | {"user_mask": empty, "profile": torch.randn(4, 3)}, "coupon")
    assert torch.isfinite(logits).all()


def test_soft_sharing_penalty_is_the_hand_computed_l2():
    model = make("soft", soft_penalty=0.01)
    assert model.sharing_penalty().item() == 0.0  # towers start equal
    with torch.no_grad():
        model.towers["outfit"].proj.weight[0, 0] += 0.5
        model.towers["coupon"].center[3] -= 2.0
    # pairs: (recommend, outfit) 0.25, (recommend, coupon) 4, (outfit, coupon) 0.25 + 4
    assert model.sharing_penalty().item() == pytest.approx(0.01 * (0.25 + 4.0 + 4.25), rel=1e-5)
    # the penalty's gradient pulls the towers together
    model.sharing_penalty().backward()
    assert model.towers["coupon"].center.grad[3] < 0 < model.towers["recommend"].center.grad[3]
    # and the towers make task-specific item vectors
    x = clustered(8)
    assert not torch.allclose(model.item_vectors(x, "recommend"), model.item_vectors(x, "outfit"))
    assert float(make("hard").sharing_penalty()) == 0.0 and float(make("experts").sharing_penalty()) == 0.0


def test_experts_gates_are_per_task():
    model = make("experts")
    x = clustered(8)
    torch.testing.assert_close(model.item_vectors(x, "recommend"), model.item_vectors(x, "outfit"))  # uniform gates
    with torch.no_grad():
        model.gates["outfit"].bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    assert not torch.allclose(model.item_vectors(x, "recommend"), model.item_vectors(x, "outfit"))
    torch.testing.assert_close(model.item_vectors(x, "outfit"), model.experts[0](x), atol=0.05, rtol=0)
    assert len(model.gradnorm_parameters("coupon")) == 3


@pytest.mark.parametrize("sharing", ["hard", "soft", "experts"])
def test_save_load_round_trip(tmp_path, sharing):
    model = make(sharing)
    with torch.no_grad():  # move away from the initialisation so the round trip is not trivially true
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    hist, mask = inputs()
    slot = torch.tensor([0, 1, 2, -1])
    out = save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    loaded = load_adapter(out)
    assert loaded.config == model.config and not loaded.training
    for a, b in [
        (loaded.recommend_query(hist, mask), model.recommend_query(hist, mask)),
        (loaded.outfit_query(hist, mask, slot), model.outfit_query(hist, mask, slot)),
        (loaded.coupon_logit(hist, mask, hist, mask), model.coupon_logit(hist, mask, hist, mask)),
    ]:
        assert torch.equal(a, b)
    # saving again replaces the directory (no leftovers, no temp siblings)
    save_adapter(make(sharing), out)
    assert not torch.allclose(load_adapter(out).item_vectors(hist, "coupon"), model.item_vectors(hist, "coupon"))
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_load_errors_are_clear(tmp_path):
    out = save_adapter(make(), tmp_path / "a")
    payload = json.loads((out / CONFIG_FILE).read_text())
    (out / CONFIG_FILE).write_text(json.dumps(payload | {"format_version": 99}))
    with pytest.raises(ValueError, match="format_version expected 1, found 99; re-train"):
        load_adapter(out)
    payload["config"]["sharing"] = "medium"
    (out / CONFIG_FILE).write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="sharing must be one of"):
        load_adapter(out)
    payload["config"]["sharing"] = "soft"  # weights of a hard-sharing model
    (out / CONFIG_FILE).write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="does not match"):
        load_adapter(out)
    with pytest.raises(FileNotFoundError, match="not an adapter directory"):
        load_adapter(tmp_path / "missing")


def test_error_paths():
    model = make(tasks=("recommend", "outfit"))
    hist, mask = inputs()
    with pytest.raises(ValueError, match="expected 384, got 512"):
        model.item_vectors(torch.randn(3, 512), "recommend")
    with pytest.raises(ValueError, match="unknown task 'ranking'; valid tasks: recommend, outfit, coupon"):
        model.item_vectors(hist, "ranking")
    with pytest.raises(ValueError, match="not part of this model"):
        model({"user_history": hist}, "coupon")
    empty = mask.clone()
    empty[2] = False
    with pytest.raises(ValueError, match=r"empty history in batch row\(s\) \[2\]"):
        model.recommend_query(hist, empty)
    with pytest.raises(ValueError, match="missing \\['items_mask', 'slot'\\]"):
        model({"items": hist}, "outfit")
    with pytest.raises(ValueError, match="slot 4 out of range"):
        model.outfit_query(hist, mask, torch.tensor([0, 1, 2, 4]))


def test_no_pickle_anywhere():
    root = Path(__file__).resolve().parents[1] / "textguide"
    for path in root.rglob("*.py"):  # the adapter, the training loop and its checkpoints, transfer, everything
        text = path.read_text()
        assert "torch.load" not in text and "import pickle" not in text and "torch.save" not in text, path


def test_slot_pair_projections_shapes_start_and_round_trip(tmp_path):
    """Type-aware outfit head: one rank-r projection per (visible item's slot, wanted slot) pair; it starts as
    no change, then makes the query depend on the visible items' slots, and survives save/load."""
    plain, typed = make(), make(outfit_pair_rank=8)
    n_pairs = (4 + 1) ** 2  # n_slots=4 plus "unknown" on each side
    assert typed.outfit.pair_down.shape == (n_pairs, 64, 8) and typed.outfit.pair_up.shape == (n_pairs, 8, 64)
    assert not hasattr(plain.outfit, "pair_down")
    hist, mask = inputs()
    slot = torch.tensor([0, 3, -1, 1])
    kinds = torch.tensor([[1, 2, 0, 0, 0], [0, -1, 2, 3, 3], [4 - 1, 0, 1, 2, 0], [2, 2, 2, 2, 2]])
    # zero-initialised: the typed head starts exactly at the plain head's query (which starts at text similarity)
    torch.testing.assert_close(typed.outfit_query(hist, mask, slot, kinds), plain.outfit_query(hist, mask, slot))
    with torch.no_grad():
        typed.outfit.pair_up.normal_(std=0.2)
    q = typed.outfit_query(hist, mask, slot, kinds)
    assert q.shape == (4, 64)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(4))
    other = kinds.clone()
    other[1, 0] = 1  # another slot for one visible item of row 1 changes row 1 only
    q2 = typed.outfit_query(hist, mask, slot, other)
    assert not torch.allclose(q2[1], q[1]) and torch.equal(q2[[0, 2, 3]], q[[0, 2, 3]])
    pads = kinds.clone()
    pads[~mask] = 3  # the slots of padding positions are ignored
    torch.testing.assert_close(typed.outfit_query(hist, mask, slot, pads), q)
    # each pair has its own projection: the same items read as a (0 -> 1) pair or a (2 -> 1) pair differ
    a = typed.outfit_query(hist[:1, :1], mask[:1, :1], torch.tensor([1]), torch.tensor([[0]]))
    b = typed.outfit_query(hist[:1, :1], mask[:1, :1], torch.tensor([1]), torch.tensor([[2]]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="items_slot 4 out of range"):
        typed.outfit_query(hist, mask, slot, torch.full((4, 5), 4))
    with pytest.raises(ValueError, match="items_slot must have the mask's shape"):
        typed.outfit_query(hist, mask, slot, kinds[:, :2])
    loaded = load_adapter(save_adapter(typed, tmp_path / "typed"))
    assert loaded.config.outfit_pair_rank == 8
    assert torch.equal(loaded.outfit_query(hist, mask, slot, kinds), q)


def test_an_ensemble_scores_the_mean_of_its_members_cosines_and_trains_each_as_if_alone(tmp_path):
    import numpy as np

    from textguide.adapters import encode_items
    from textguide.tasks.recommend import recommend_queries

    model = make(tasks=("recommend",), members=3, dropout=0.0)
    assert len(model.members) == 3 and model.config.out_dim == 192
    weights = [torch.cat([p.flatten() for p in m.parameters()]) for m in model.members]
    assert not torch.equal(weights[0], weights[1])  # each member has its own initialisation
    emb = clustered(30).numpy()
    hists = [[0, 5, 7], [3], [10, 11, 12, 13]]
    scores = recommend_queries(model, emb, hists) @ encode_items(model, emb, "recommend").T
    alone = [recommend_queries(m, emb, hists) @ encode_items(m, emb, "recommend").T for m in model.members]
    np.testing.assert_allclose(scores, np.mean(alone, axis=0), atol=1e-5)
    model.config.text_blend["recommend"] = 0.5  # the blend applies once, to the ensemble's mean cosine
    blended = recommend_queries(model, emb, hists) @ encode_items(model, emb, "recommend").T
    text = emb[hists[0]].mean(0)
    np.testing.assert_allclose(blended[0], scores[0] + 0.5 * (emb @ (text / np.linalg.norm(text))), atol=1e-5)
    model.config.text_blend.clear()

    # training: the summed loss gives each member the gradient it would get trained alone on that batch
    hist, mask = inputs()
    batch = {"history": hist, "history_mask": mask, "candidates": clustered(10, seed=3),
             "targets": torch.tensor([1, 2, 3, 4])}
    model.train()
    logits, loss = model(batch, "recommend")
    member_logits, member_losses = zip(*(m(batch, "recommend") for m in model.members))
    torch.testing.assert_close(logits, torch.stack(member_logits).mean(0))
    torch.testing.assert_close(loss, sum(member_losses))
    loss.backward()
    ensemble_grad = model.members[1].sequence.out.weight.grad.clone()
    model.zero_grad()
    model.members[1](batch, "recommend")[1].backward()
    torch.testing.assert_close(ensemble_grad, model.members[1].sequence.out.weight.grad)
    out, none = model({"history": hist, "history_mask": mask}, "recommend")  # queries only: joined
    assert out.shape == (4, 192) and none is None

    # save / load round trip
    model.eval()
    loaded = load_adapter(save_adapter(model, tmp_path / "ens"))
    assert loaded.config == model.config and loaded.config.members == 3
    torch.testing.assert_close(loaded.recommend_query(hist, mask), model.recommend_query(hist, mask), rtol=0, atol=0)

    with pytest.raises(ValueError, match=r"members > 1 \(an ensemble\) is for tasks=\('recommend',\) only"):
        AdapterConfig(input_dim=384, tasks=("recommend", "outfit"), members=2)
    with pytest.raises(ValueError, match="AdapterConfig.members must be a positive integer, got 0"):
        AdapterConfig(input_dim=384, tasks=("recommend",), members=0)
