"""Transfer: the negative-transfer guard on synthetic domains with known answers, MMD / CORAL / density-ratio
weights / L2-SP against hand-computed values, freezing, joint batches, reports, error paths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from textguide.adapters import AdapterConfig, MultiTaskAdapter
from textguide.tasks.outfit import OutfitTask
from textguide.tasks.recommend import SequenceTask
from textguide.training import TrainConfig, train
from textguide.transfer import (
    TransferConfig,
    coral,
    domain_weights,
    l2sp_penalty,
    mmd,
    save_transfer_report,
    shared_parameter_names,
    transfer,
)
from textguide.transfer.methods import joint_task

D = 32  # text embedding dimension of the synthetic domains
K, PER = 12, 8  # clusters, items per cluster in each domain's catalog


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# synthetic domains: two catalogs in the same text space (the same K cluster centroids, different items);
# the next item comes from the cluster that follows the last item's cluster under a rule
# ---------------------------------------------------------------------------------------------------------

_rng = np.random.default_rng(0)
CENTROIDS = unit(_rng.normal(size=(K, D)))
SUCC = _rng.permutation(K)
while (SUCC == np.arange(K)).any() or (SUCC[SUCC] == np.arange(K)).any():  # no fixed points, no 2-cycles
    SUCC = _rng.permutation(K)
PRED = np.argsort(SUCC)  # the reverse rule: the cluster that precedes


def domain_task(seed: int, rule: np.ndarray, n_train: int, n_valid: int = 200) -> SequenceTask:
    rng = np.random.default_rng(seed)
    cluster = np.repeat(np.arange(K), PER)
    emb = unit(CENTROIDS[cluster] + 0.1 * rng.normal(size=(len(cluster), D)))
    members = [np.flatnonzero(cluster == k) for k in range(K)]

    def walks(n: int) -> tuple[list[list[int]], list[int]]:
        hs, ts = [], []
        for _ in range(n):
            walk = [int(rng.integers(len(cluster)))]
            for _ in range(int(rng.integers(0, 4))):
                walk.append(int(rng.choice(members[rule[cluster[walk[-1]]]])))
            hs.append(walk)
            ts.append(int(rng.choice(members[rule[cluster[walk[-1]]]])))
        return hs, ts

    h, t = walks(n_train)
    vh, vt = walks(n_valid) if n_valid else (None, None)
    return SequenceTask(emb, h, t, vh, vt)


def small_model(input_dim: int = D) -> MultiTaskAdapter:
    torch.manual_seed(0)
    return MultiTaskAdapter(AdapterConfig(input_dim=input_dim, dim=16, seq_layers=1, seq_heads=2, max_history=6,
                                          dropout=0.0, tasks=("recommend",)))


TRAIN = TrainConfig(steps=60, batch_size=64, lr=3e-3, eval_every=20, show_progress=False)


_SOURCES: dict[str, tuple[MultiTaskAdapter, SequenceTask]] = {}


def source_model(rule: np.ndarray) -> tuple[MultiTaskAdapter, SequenceTask]:
    """A model trained on a source domain that follows ``rule`` (trained once per rule; transfer never
    modifies it)."""
    key = "succ" if rule is SUCC else "pred"
    if key not in _SOURCES:
        _SOURCES[key] = _train_source(rule)
    return _SOURCES[key]


def _train_source(rule: np.ndarray) -> tuple[MultiTaskAdapter, SequenceTask]:
    task = domain_task(1, rule, 1500)
    model = small_model()
    train(model, {"recommend": task}, TRAIN)
    assert task.valid_metric(model) > 0.9  # the source rule is learned
    return model, task


# ---------------------------------------------------------------------------------------------------------
# the negative-transfer guard
# ---------------------------------------------------------------------------------------------------------


def test_guard_refuses_a_source_built_to_hurt():
    # the source's next item follows the REVERSE of the target's rule; training on it together with the target
    # (feature- and instance-based) teaches contradicting answers for the same text clusters
    model, source = source_model(PRED)
    target = domain_task(2, SUCC, 300)
    cfg = TransferConfig(method="auto", candidates=("feature:mmd", "feature:coral", "instance"), train=TRAIN)
    result = transfer(model, source, target, cfg)
    report = result.report
    base = report["methods"]["target-only"]["valid"]["Recall@10"]
    assert result.method_chosen == "target-only" and report["chosen"] == "target-only"
    assert result.model is result.models["target-only"]
    assert base > 0.9
    assert set(report["refused"]) == {"feature:mmd", "feature:coral", "instance"}
    for name, reason in report["refused"].items():
        valid = report["methods"][name]["valid"]["Recall@10"]
        gain = report["methods"][name]["gain_vs_target_only"]["Recall@10"]
        assert valid < base - 0.05  # clearly hurt, not a tie
        assert gain == pytest.approx((valid - base) / base)
        assert f"{valid:.4f}" in reason and f"{base:.4f}" in reason and "worse than target-only" in reason
    assert report["accepted"] == []
    assert "kept target-only" in report["summary"]
    json.dumps(report)  # JSON-ready


def test_guard_keeps_a_helpful_source_at_small_target_size():
    model, source = source_model(SUCC)  # the same rule as the target
    target = domain_task(2, SUCC, 10)  # 10 target examples
    result = transfer(model, source, target, TransferConfig(method="auto", train=TRAIN))
    report = result.report
    methods = report["methods"]
    assert set(methods) == {"target-only", "model:finetune", "feature:mmd", "instance"}
    assert result.method_chosen != "target-only"
    base = methods["target-only"]["valid"]["Recall@10"]
    chosen = methods[result.method_chosen]["valid"]["Recall@10"]
    assert chosen == max(m["valid"]["Recall@10"] for m in methods.values())
    assert chosen > base + 0.3
    assert methods[result.method_chosen]["gain_vs_target_only"]["Recall@10"] > 0.5
    assert result.method_chosen in report["accepted"]
    # zero-shot: with no target examples the source model is applied as is, and still beats the text baseline
    zero = transfer(model, source, domain_task(2, SUCC, 0), TransferConfig(method="auto", candidates=("model",),
                                                                        train=TRAIN))
    assert zero.method_chosen == "model:finetune"
    assert zero.report["methods"]["model:finetune"]["trained"] is False
    assert "zero-shot" in zero.report["methods"]["model:finetune"]["note"]


# ---------------------------------------------------------------------------------------------------------
# distances, weights, L2-SP against hand-computed values
# ---------------------------------------------------------------------------------------------------------


def test_mmd_hand_computed():
    x = np.array([[0.0], [1.0]])
    y = np.array([[2.0]])
    # bandwidth s = 1: k(a, b) = exp(-(a - b)^2 / 2)
    #   mean k(x, x') = (1 + e^-0.5 + e^-0.5 + 1) / 4 = (1 + e^-0.5) / 2
    #   mean k(y, y') = 1
    #   mean k(x, y)  = (e^-(4/2) + e^-(1/2)) / 2
    #   MMD^2 = (1 + e^-0.5) / 2 + 1 - (e^-2 + e^-0.5) = 1.5 - 0.5 e^-0.5 - e^-2
    #         = 1.5 - 0.3032653 - 0.1353353 = 1.0613994
    s1 = 1.5 - 0.5 * math.exp(-0.5) - math.exp(-2)
    assert float(mmd(x, y, [1.0])) == pytest.approx(s1, abs=1e-12)
    assert s1 == pytest.approx(1.0613994, abs=1e-7)
    # bandwidth s = 2: k = exp(-(a - b)^2 / 8), same steps: 1.5 - 0.5 e^-0.125 - e^-0.5
    s2 = 1.5 - 0.5 * math.exp(-0.125) - math.exp(-0.5)
    # several bandwidths: the kernel is the sum, so MMD^2 is the sum of the single-bandwidth values
    assert float(mmd(x, y, [1.0, 2.0])) == pytest.approx(s1 + s2, abs=1e-12)
    assert float(mmd(x, x, [1.0, 2.0])) == pytest.approx(0.0, abs=1e-12)
    # differentiable, and torch in -> torch out
    xt = torch.tensor(x, requires_grad=True)
    mmd(xt, torch.tensor(y), [1.0]).backward()
    assert xt.grad is not None and torch.isfinite(xt.grad).all()


def test_coral_hand_computed():
    x = np.array([[1.0, 0.0], [-1.0, 0.0]])
    y = np.array([[0.0, 1.0], [0.0, -1.0]])
    # means are 0; unbiased covariance = sum of outer products / (n - 1) = / 1
    #   C_x = [[2, 0], [0, 0]], C_y = [[0, 0], [0, 2]], C_x - C_y = [[2, 0], [0, -2]]
    #   ||C_x - C_y||_F^2 = 4 + 4 = 8;  CORAL = 8 / (4 d^2) = 8 / 16 = 0.5
    assert float(coral(x, y)) == pytest.approx(0.5, abs=1e-12)
    # a shift of the mean leaves covariances (and CORAL) unchanged
    assert float(coral(x, x + 3.0)) == pytest.approx(0.0, abs=1e-12)
    # x3 = [[0,0],[2,0],[0,2]]: mean (2/3, 2/3); centred rows (-2/3,-2/3), (4/3,-2/3), (-2/3,4/3)
    #   C = [[4/9 + 16/9 + 4/9, 4/9 - 8/9 - 8/9], [., 4/9 + 4/9 + 16/9]] / 2 = [[4/3, -2/3], [-2/3, 4/3]]
    #   vs C_x = [[2, 0], [0, 0]]: diff [[-2/3, -2/3], [-2/3, 4/3]] -> 4/9 * 3 + 16/9 = 28/9; / 16 = 7/36
    x3 = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    assert float(coral(x3, x)) == pytest.approx(7 / 36, abs=1e-12)


def test_domain_weights_favour_source_points_near_the_target_and_are_clipped():
    rng = np.random.default_rng(0)
    a, b = unit(rng.normal(size=(2, D)))
    near = unit(a + 0.1 * rng.normal(size=(60, D)))  # source points in the target's region
    far = unit(b + 0.1 * rng.normal(size=(60, D)))  # source points elsewhere
    target = unit(a + 0.1 * rng.normal(size=(80, D)))
    source = np.concatenate([near, far])
    w = domain_weights(source, target, clip=50.0)
    assert w.shape == (120,) and (w >= 0).all()
    assert w[:60].min() > w[60:].max()  # every near point outweighs every far point
    assert w[:60].mean() > 0.5 > 2 * w[60:].mean()
    clipped = domain_weights(source, target, clip=0.8)
    assert clipped.max() == pytest.approx(0.8) and (clipped <= 0.8).all()
    assert np.isclose(clipped[:60], 0.8).sum() > 30  # the clip binds for the near points
    np.testing.assert_allclose(clipped, np.minimum(w, 0.8))  # the same classifier, then the clip


def test_l2sp_penalty_zero_at_source_and_hand_computed():
    model = small_model(input_dim=8)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert l2sp_penalty(model, reference, 0.5).item() == 0.0
    with torch.no_grad():
        model.item_adapter.center.add_(0.1)  # 8 elements moved by 0.1
        model.logit_scale["recommend"].add_(-0.2)  # 1 element moved by 0.2
    # 0.5 * (8 * 0.1^2 + 1 * 0.2^2) = 0.5 * (0.08 + 0.04) = 0.06
    assert l2sp_penalty(model, reference, 0.5).item() == pytest.approx(0.06, rel=1e-5)
    model.item_adapter.center.requires_grad_(False)  # frozen parameters are not penalised
    assert l2sp_penalty(model, reference, 0.5).item() == pytest.approx(0.5 * 0.04, rel=1e-5)


def test_freeze_shared_leaves_the_shared_parameters_unchanged():
    model, source = source_model(SUCC)
    target = domain_task(2, PRED, 200)  # a different rule, so the heads have to move
    cfg = TransferConfig(method="model", model_mode="freeze-shared", train=TRAIN)
    result = transfer(model, source, target, cfg)
    tuned = dict(result.model.named_parameters())
    shared = shared_parameter_names(model)
    assert shared and all(n.startswith("item_adapter.") for n in shared)
    for n, p in model.named_parameters():
        if n in shared:
            assert torch.equal(p, tuned[n]), n
    assert any(not torch.equal(p, tuned[n]) for n, p in model.named_parameters() if n not in shared)
    assert all(p.requires_grad for p in result.model.parameters())  # unfrozen again afterwards
    assert result.report["methods"]["model:freeze-shared"]["frozen_parameters"] == sum(
        p.numel() for n, p in model.named_parameters() if n in shared)
    # L2-SP from the same source stays closer to the source weights than plain fine-tuning
    dist = {}
    for mode in ("finetune", "l2sp"):
        r = transfer(model, source, target, TransferConfig(method="model", model_mode=mode, l2sp_weight=1.0,
                                                           train=TRAIN))
        dist[mode] = l2sp_penalty(r.model, {n: p.detach() for n, p in model.named_parameters()}, 1.0).item()
    assert dist["l2sp"] < dist["finetune"]


# ---------------------------------------------------------------------------------------------------------
# the trainer hooks transfer relies on
# ---------------------------------------------------------------------------------------------------------


def test_joint_batches_score_rows_against_their_own_domain_and_follow_the_weights():
    source = domain_task(1, SUCC, 50, n_valid=0)
    target = domain_task(2, SUCC, 30)
    weights = np.zeros(len(source))
    weights[:5] = 1.0  # only the first 5 source examples may be drawn
    joint = joint_task(source, target, weights, source_share=0.5)
    n_s = len(source.item_emb)
    batch = joint.batch(np.random.default_rng(0), 256, 6, TrainConfig(full_softmax_max=10_000))
    targets_rows = joint.targets[joint.sample_rows(np.random.default_rng(0), 256)]
    is_target_row = targets_rows >= n_s
    assert 0.35 < is_target_row.mean() < 0.65  # source_share = 0.5
    src_rows = targets_rows[~is_target_row]
    assert set(src_rows.tolist()) <= set(source.targets[:5].tolist())
    excl = batch["exclude"].numpy()
    n_cols = excl.shape[1]
    assert n_cols == 256 + n_s + len(target.item_emb)
    domain_of_col = np.r_[targets_rows >= n_s, np.zeros(n_s, bool), np.ones(len(target.item_emb), bool)]
    other = domain_of_col[None, :] != is_target_row[:, None]
    assert excl[other].all()  # never scored against the other domain's items
    assert not excl[np.arange(256), np.arange(256)].any()  # the answer stays in
    assert joint.valid_metric(small_model()) == target.valid_metric(small_model())  # validation = the target's


def test_train_regularizer_and_frozen_parameters():
    task = domain_task(2, SUCC, 100)
    model = small_model()
    calls = []

    def pull_center_to_one(m: MultiTaskAdapter) -> torch.Tensor:
        calls.append(1)
        return 10.0 * (m.item_adapter.center - 1.0).pow(2).sum()

    model.logit_scale["recommend"].requires_grad_(False)
    before = model.logit_scale["recommend"].detach().clone()
    train(model, {"recommend": task}, TrainConfig(steps=30, batch_size=32, lr=1e-2, eval_every=30,
                                                  show_progress=False), regularizer=pull_center_to_one)
    assert len(calls) == 30
    assert model.item_adapter.center.mean().item() > 0.2  # pulled from 0 toward 1
    assert torch.equal(model.logit_scale["recommend"], before)  # frozen: untouched, even by weight decay
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, {"recommend": task}, TrainConfig(steps=1))


# ---------------------------------------------------------------------------------------------------------
# reports and errors
# ---------------------------------------------------------------------------------------------------------


def test_report_is_saved_in_the_guide_directory(tmp_path, catalog, enc):
    from textguide.guide import Guide

    report = {"chosen": "target-only", "methods": {"target-only": {"valid": {"Recall@10": np.float32(0.25)}}}}
    guide = Guide.build(catalog, enc)
    with pytest.raises(ValueError, match="save it first"):
        save_transfer_report(guide, report)
    guide.save(tmp_path / "g")
    path = save_transfer_report(guide, report)
    assert path == tmp_path / "g" / "reports" / "transfer.json"
    assert json.loads(path.read_text())["methods"]["target-only"]["valid"]["Recall@10"] == 0.25
    loaded = Guide.load(tmp_path / "g")  # the extra file does not break the checksummed manifest
    loaded.save(tmp_path / "g")  # and survives a re-save
    assert (tmp_path / "g" / "reports" / "transfer.json").is_file()


def test_error_paths():
    with pytest.raises(ValueError, match="unknown transfer method 'magic'"):
        TransferConfig(method="magic")
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        TransferConfig(alpha=-0.1)
    with pytest.raises(ValueError, match="unknown transfer candidate 'model:zap'"):
        TransferConfig(candidates=("model:zap",))
    with pytest.raises(ValueError, match="select_metric 'MAP@12' must be"):
        TransferConfig(select_metric="MAP@12")  # 12 not in ks
    with pytest.raises(ValueError, match="mismatched embedding dimensions"):
        mmd(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="mismatched embedding dimensions"):
        coral(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="mismatched embedding dimensions"):
        domain_weights(np.ones((3, 4)), np.ones((3, 5)))
    model = small_model()
    source = domain_task(1, SUCC, 20, n_valid=0)
    wide = SequenceTask(unit(np.random.default_rng(0).normal(size=(10, D + 1))), [[0]], [1], [[2]], [3])
    with pytest.raises(ValueError, match="mismatched embedding dimensions"):
        transfer(model, source, wide)
    no_valid = domain_task(2, SUCC, 20, n_valid=0)
    with pytest.raises(ValueError, match="needs a target validation split"):
        transfer(model, source, no_valid, TransferConfig(method="auto"))
    with pytest.raises(ValueError, match="weights must be 20 finite numbers"):
        SequenceTask(source.item_emb, source.histories, source.targets, weights=-np.ones(20))


# ---------------------------------------------------------------------------------------------------------
# domain preparation helpers (textguide.bench.domains) on tiny hand-made data
# ---------------------------------------------------------------------------------------------------------


def test_time_split_examples_and_periods():
    import pandas as pd

    from textguide.bench.domains import _time_split

    day = pd.Timestamp
    events = pd.DataFrame({
        "user": ["a"] * 6 + ["b"] * 2,
        "item": [1, 2, 1, 3, 4, 2, 5, 6],
        "time": [day("2020-01-01"), day("2020-01-01"), day("2020-01-02"), day("2020-01-02"),  # a: training
                 day("2020-01-05"),  # a: selection period
                 day("2020-01-09"),  # a: report period (item 2 is a repeat: not relevant)
                 day("2020-01-01"), day("2020-01-09")],  # b: training, report
    })
    split = _time_split(events, day("2020-01-05"), day("2020-01-08"), max_history=2, max_relevant=12)
    # a: 1, 2 (new: example [1] -> 2), 1 (repeat: no example), 3 (example [1, 2] -> 3); b: 5 only (no example)
    assert split["hist"] == [[1], [1, 2]] and split["targ"] == [2, 3] and split["users"] == ["a", "a"]
    assert split["sel_h"] == [[2, 3]] and split["sel_r"] == [[4]]  # last max_history=2 distinct items
    # report: a's only report item (2) is in its history -> a is dropped; b: history [5], relevant [6]
    assert split["rep_h"] == [[5]] and split["rep_r"] == [[6]]


def test_evaluate_domain_matches_ranking_report_without_ties():
    from textguide.bench.domains import DomainBench, evaluate_domain
    from textguide.evaluate import ranking_report

    rng = np.random.default_rng(0)
    n_items = 40
    scores = rng.random((30, n_items))
    histories = [rng.choice(n_items, size=int(rng.integers(1, 5)), replace=False).tolist() for _ in range(30)]
    relevant = [rng.choice(np.setdiff1d(np.arange(n_items), h), size=int(rng.integers(1, 6)),
                           replace=False).tolist() for h in histories]
    bench = DomainBench("toy", None, None, np.array([]), histories, relevant, np.zeros(n_items), (5, 12))
    row_of = {id(h): i for i, h in enumerate(histories)}  # the scorer gets the same list objects back

    def scorer(hs):
        return scores[[row_of[id(h)] for h in hs]]

    got = evaluate_domain(bench, scorer, chunk=7)
    ranked = []
    for i, h in enumerate(histories):
        order = [int(j) for j in np.argsort(-scores[i]) if j not in set(h)]
        ranked.append(order)
    want = ranking_report(ranked, relevant, ks=(5, 12))
    for key in got:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


# ---------------------------------------------------------------------------------------------------------
# complements (OutfitTask): synthetic basket domains. Items = K text clusters (the slot) x STYLES styles; the
# style is part of the text vector. A basket holds items of different slots whose styles follow a rule:
# "same" (style s with s: text similarity already gets it) or "shift" (style s with s+1: text similarity
# cannot), "shift2" (s with s+2: contradicts both)
# ---------------------------------------------------------------------------------------------------------

STYLES = 4
STYLE_VECS = unit(np.random.default_rng(7).normal(size=(STYLES, D)))


def basket_task(seed: int, rule: int, n_train: int, n_valid: int = 150) -> OutfitTask:
    rng = np.random.default_rng(seed)
    slot = np.repeat(np.arange(K), PER)
    style = np.tile(np.arange(STYLES), K * PER // STYLES)
    emb = unit(CENTROIDS[slot] + 0.8 * STYLE_VECS[style] + 0.1 * rng.normal(size=(len(slot), D)))
    by = {(k, s): np.flatnonzero((slot == k) & (style == s)) for k in range(K) for s in range(STYLES)}

    def baskets(n: int) -> list[list[int]]:
        out = []
        for _ in range(n):
            slots = rng.choice(K, size=2, replace=False)
            s = int(rng.integers(STYLES))
            out.append([int(rng.choice(by[(int(slots[0]), s)])),
                        int(rng.choice(by[(int(slots[1]), (s + rule) % STYLES)]))])
        return out

    return OutfitTask(emb, baskets(n_train), slot, baskets(n_valid) if n_valid else None)


def outfit_model(n_slots: int = K) -> MultiTaskAdapter:
    torch.manual_seed(0)
    return MultiTaskAdapter(AdapterConfig(input_dim=D, dim=16, max_history=4, dropout=0.0, tasks=("outfit",),
                                          n_slots=n_slots))


OUTFIT_TRAIN = TrainConfig(steps=300, batch_size=64, lr=1e-2, eval_every=25, patience=100, slot_negatives=4,
                           show_progress=False)
#: FITB ceiling of these domains: each (slot, style) has 2 items, so the answer's twin is among the 3 distractors
#: (drawn from the slot's 7 other items) with probability 3/7, and then a coin flip decides: 1 - 3/7 / 2 = 0.79
_BASKET_SOURCES: dict[int, tuple[MultiTaskAdapter, OutfitTask]] = {}


def basket_source(rule: int) -> tuple[MultiTaskAdapter, OutfitTask]:
    if rule not in _BASKET_SOURCES:
        task = basket_task(11, rule, 2000)
        model = outfit_model(n_slots=K + 3)  # a source vocabulary of another size: slots are per domain
        train(model, {"outfit": task}, OUTFIT_TRAIN)
        assert task.valid_metric(model) > (0.7 if rule == 2 else 0.45)  # learned (chance 0.25, ceiling 0.79)
        _BASKET_SOURCES[rule] = (model, task)
    return _BASKET_SOURCES[rule]


def test_outfit_guard_refuses_a_contradicting_source():
    model, source = basket_source(rule=2)  # complements have the opposite-ish style
    target = basket_task(12, rule=0, n_train=300)  # complements share the style
    cfg = TransferConfig(method="auto", candidates=("feature:mmd", "feature:coral", "instance"), train=OUTFIT_TRAIN)
    result = transfer(model, source, target, cfg)
    report = result.report
    assert report["select_metric"] == "FITB"  # the default for complements
    base = report["methods"]["target-only"]["valid"]["FITB"]
    assert base > 0.7 and result.method_chosen == "target-only"
    assert set(report["refused"]) == {"feature:mmd", "feature:coral", "instance"}
    for name, reason in report["refused"].items():
        valid = report["methods"][name]["valid"]["FITB"]
        assert valid < base and f"{valid:.4f}" in reason and "worse than target-only" in reason
    assert set(report["methods"]["target-only"]["valid"]) == {"FITB", "Recall@10"}
    assert result.model.config.n_slots == K  # the target's slot vocabulary
    json.dumps(report)


def test_outfit_transfer_helps_a_small_target_with_the_same_rule():
    model, source = basket_source(rule=1)  # text similarity cannot find style s+1; the source model learned it
    target = basket_task(12, rule=1, n_train=8)
    result = transfer(model, source, target, TransferConfig(method="auto", candidates=("model",), train=OUTFIT_TRAIN))
    methods = result.report["methods"]
    assert result.method_chosen == "model:finetune"
    assert methods["model:finetune"]["valid"]["FITB"] > methods["target-only"]["valid"]["FITB"] + 0.2
    # zero-shot: no target baskets at all, the source model through the target's slot vocabulary
    zero = transfer(model, source, basket_task(12, rule=1, n_train=0),
                    TransferConfig(method="auto", candidates=("model",), train=OUTFIT_TRAIN))
    assert zero.method_chosen == "model:finetune" and zero.report["methods"]["model:finetune"]["trained"] is False


def test_retarget_slots_starts_every_target_slot_as_the_unknown_slot():
    from textguide.transfer import retarget_slots

    model, source = basket_source(rule=1)
    new = retarget_slots(model, 5)
    assert new.config.n_slots == 5 and new.outfit.slot.weight.shape == (6, 16)
    assert model.config.n_slots == K + 3  # the source is untouched
    items = torch.from_numpy(source.item_emb[[[0, 9, 20], [3, 40, 50]]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    new.eval(), model.eval()
    with torch.no_grad():
        want = model.outfit_query(items, mask, torch.tensor([-1, -1]))
        for slots in ([0, 4], [-1, 2]):
            torch.testing.assert_close(new.outfit_query(items, mask, torch.tensor(slots)), want)
    with pytest.raises(ValueError, match="slot 5 out of range"):
        new.outfit_query(items, mask, torch.tensor([5, 0]))


def test_joint_outfit_batches_stay_in_their_domain():
    source = basket_task(11, 1, 60, n_valid=0)
    target = basket_task(12, 1, 40)
    weights = np.zeros(len(source))
    weights[:3] = 1.0  # only the first 3 source baskets may be drawn
    joint = joint_task(source, target, weights, source_share=0.5)
    n_s = len(source.item_emb)
    assert joint.item_slots[:n_s].min() >= K and (joint.item_slots[n_s:] == target.item_slots).all()
    cfg = TrainConfig(slot_negatives=4, slot_dropout=0.0)
    rng = np.random.default_rng(0)
    positives, _ = joint.draw(np.random.default_rng(0), 200)
    batch = joint.batch(rng, 200, 4, cfg)
    src = positives < n_s
    assert 0.35 < src.mean() < 0.65
    assert set(positives[src].tolist()) <= {i for o in source.outfits[:3] for i in o}
    slots = batch["slot"].numpy()
    assert (slots[src] == -1).all() and (slots[~src] == target.item_slots[positives[~src] - n_s]).all()
    excl = batch["exclude"].numpy()[:, :200]
    assert (excl[src[:, None] != src[None, :]]).all()  # never the other domain's answers
    assert not excl[np.arange(200), np.arange(200)].any()
    assert joint.valid_metric(outfit_model()) == target.valid_metric(outfit_model())


def test_outfit_validation_metrics_against_brute_force():
    from textguide.adapters import encode_items
    from textguide.tasks.outfit import outfit_queries
    from textguide.transfer import validation_metrics

    task = basket_task(12, 1, 10)
    model = outfit_model()
    got = validation_metrics(model, task, ks=(1, 5))
    assert got["FITB"] == pytest.approx(task.valid_metric(model))
    partials, slots, cands = task.fitb_questions(task.valid_outfits)
    q = outfit_queries(model, task.item_emb, partials, slots)
    v = encode_items(model, task.item_emb, "outfit")
    hits = {1: [], 5: []}
    for p, s, c, qq in zip(partials, slots, cands, q):
        pool = [i for i in np.flatnonzero(task.item_slots == s) if i not in p]
        ranked = sorted(pool, key=lambda i: -float(v[i] @ qq))
        for k in hits:
            hits[k].append(c[0] in ranked[:k])
    assert got["Recall@1"] == pytest.approx(np.mean(hits[1])) and got["Recall@5"] == pytest.approx(np.mean(hits[5]))


def test_outfit_transfer_error_paths():
    model, source = basket_source(rule=1)
    target = basket_task(12, 1, 10)
    with pytest.raises(ValueError, match="source_task is a SequenceTask but target_task a OutfitTask"):
        transfer(model, domain_task(1, SUCC, 20), target)
    with pytest.raises(ValueError, match="does not fit a OutfitTask: use FITB or Recall@k"):
        transfer(model, source, target, TransferConfig(select_metric="NDCG@10"))
    with pytest.raises(ValueError, match="does not fit a SequenceTask"):
        transfer(small_model(), domain_task(1, SUCC, 20), domain_task(2, SUCC, 20), TransferConfig(select_metric="FITB"))
    with pytest.raises(ValueError, match=r"target validation split \(target_task.valid_outfits\)"):
        transfer(model, source, basket_task(12, 1, 10, n_valid=0), TransferConfig(method="auto"))
    with pytest.raises(ValueError, match="task .outfit. is not part of this model"):
        transfer(small_model(), source, target)
    with pytest.raises(ValueError, match="weights must be 10 finite numbers >= 0 \\(one per outfit\\)"):
        type(target)(target.item_emb, target.outfits, target.item_slots, weights=np.ones(3))


def test_retarget_slots_keeps_a_type_aware_head_scoring_like_the_unknown_slot():
    """With slot-pair projections, every pair of the new vocabulary starts as the source's (unknown, unknown)
    pair: before target training the copy scores like the source queried with unknown slots."""
    from textguide.transfer import retarget_slots

    torch.manual_seed(0)
    model = MultiTaskAdapter(AdapterConfig(input_dim=32, dim=16, max_history=8, tasks=("outfit",), n_slots=4,
                                           outfit_pair_rank=3))
    with torch.no_grad():
        model.outfit.pair_up.normal_(std=0.3)
    new = retarget_slots(model, 2)
    assert new.outfit.pair_down.shape == (9, 16, 3) and new.outfit.pair_up.shape == (9, 3, 16)
    assert model.outfit.pair_up.shape == (25, 3, 16)  # the source is untouched
    items = torch.nn.functional.normalize(torch.randn(2, 3, 32), dim=-1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    model.eval(), new.eval()
    want = model.outfit_query(items, mask, torch.tensor([-1, -1]))
    got = new.outfit_query(items, mask, torch.tensor([0, 1]), torch.tensor([[0, 1, -1], [1, 1, 0]]))
    torch.testing.assert_close(got, want)
