"""Training: synthetic tasks with known answers, weighting strategies, checkpoints/resume, inference helpers."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from textguide.adapters import AdapterConfig, MultiTaskAdapter, encode_items
from textguide.evaluate import rank_of_target
from textguide.tasks.coupon import CouponTask, coupon_probabilities
from textguide.tasks.outfit import OutfitTask, outfit_queries
from textguide.tasks.recommend import SequenceTask, recommend_queries
from textguide.training import DWAWeighting, GradNormWeighting, TrainConfig, UncertaintyWeighting, train

D = 64  # text embedding dimension of the fixtures


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: intra-op threads only add overhead (and erratic timing on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def model_for(tasks: tuple[str, ...], seed_: int = 0, **kw) -> MultiTaskAdapter:
    torch.manual_seed(seed_)
    cfg = dict(input_dim=D, dim=32, seq_layers=1, seq_heads=2, max_history=8, dropout=0.0, tasks=tasks)
    return MultiTaskAdapter(AdapterConfig(**(cfg | kw)))


# ---------------------------------------------------------------------------------------------------------
# fixtures with known answers
# ---------------------------------------------------------------------------------------------------------


def sequence_world(seed: int = 0, n_clusters: int = 20, per_cluster: int = 10):
    """Items in clusters with random unit text vectors; the next item is a random item of the cluster that
    follows the last item's cluster in a fixed permutation without fixed points."""
    rng = np.random.default_rng(seed)
    centroids = unit(rng.normal(size=(n_clusters, D)))
    cluster = np.repeat(np.arange(n_clusters), per_cluster)
    emb = unit(centroids[cluster] + 0.08 * rng.normal(size=(len(cluster), D)))
    successor = rng.permutation(n_clusters)
    while (successor == np.arange(n_clusters)).any():
        successor = rng.permutation(n_clusters)
    return rng, centroids, cluster, emb, successor


def walks(rng, cluster, successor, n: int, target_pool: np.ndarray | None = None):
    members = [np.flatnonzero(cluster == k) for k in range(cluster.max() + 1)]
    histories, targets = [], []
    for _ in range(n):
        walk = [int(rng.integers(len(cluster)))]
        for _ in range(int(rng.integers(1, 7))):
            walk.append(int(rng.choice(members[successor[cluster[walk[-1]]]])))
        nxt = members[successor[cluster[walk[-1]]]]
        if target_pool is not None:
            nxt = np.intersect1d(nxt, target_pool)
        histories.append(walk)
        targets.append(int(rng.choice(nxt)))
    return histories, targets


def sequence_task(seed: int = 0) -> SequenceTask:
    rng, _, cluster, emb, successor = sequence_world(seed)
    histories, targets = walks(rng, cluster, successor, 1500)
    valid_h, valid_t = walks(rng, cluster, successor, 300)
    return SequenceTask(emb, histories, targets, valid_h, valid_t)


def outfit_world(seed: int = 0, n_slots: int = 3, n_styles: int = 10, per_style: int = 3):
    """Slot A items of latent style s go with slot B items of style s. Style lives in a subspace of the text
    vector but with an independent direction per slot (so text similarity says nothing about compatibility),
    slots are otherwise far apart, and every item has a near-duplicate twin (cosine ~0.99)."""
    rng = np.random.default_rng(seed)
    slot_dirs = unit(rng.normal(size=(n_slots, D)))
    style_dirs = unit(rng.normal(size=(n_slots, n_styles, D)))
    slots, styles, rows = [], [], []
    for s in range(n_slots):
        for t in range(n_styles):
            for _ in range(per_style):
                base = unit(slot_dirs[s] + 0.7 * style_dirs[s, t] + 0.08 * rng.normal(size=D))
                twin = unit(base + 0.012 * rng.normal(size=D))
                rows += [base, twin]
                slots += [s, s]
                styles += [t, t]
    emb, slots, styles = np.stack(rows).astype(np.float32), np.array(slots), np.array(styles)

    def outfits(n: int) -> list[list[int]]:
        out = []
        for _ in range(n):
            t = int(rng.integers(n_styles))
            out.append([int(rng.choice(np.flatnonzero((slots == s) & (styles == t)))) for s in range(n_slots)])
        return out

    return emb, slots, outfits(800), outfits(200)


def coupon_world(seed: int = 0, n_clusters: int = 8, per_cluster: int = 20, n_users: int = 300, n_coupons: int = 80):
    """A user redeems a coupon iff the coupon's products come from the user's favourite cluster."""
    rng = np.random.default_rng(seed)
    centroids = unit(rng.normal(size=(n_clusters, D)))
    cluster = np.repeat(np.arange(n_clusters), per_cluster)
    emb = unit(centroids[cluster] + 0.08 * rng.normal(size=(len(cluster), D)))
    members = [np.flatnonzero(cluster == k) for k in range(n_clusters)]
    favourite = rng.integers(n_clusters, size=n_users)
    users = [
        [int(i) for i in rng.choice(members[f], size=5)] + [int(rng.integers(len(cluster)))] for f in favourite
    ]
    coupon_cluster = np.arange(n_coupons) % n_clusters
    coupons = [[int(i) for i in rng.choice(members[c], size=4, replace=False)] for c in coupon_cluster]
    profiles = rng.normal(size=(n_users, 2)).astype(np.float32)

    def examples(user_rows: range, coupon_rows: range):
        u_idx, c_idx = [], []
        coupon_rows = np.array(coupon_rows)
        for u in user_rows:
            liked = coupon_rows[coupon_cluster[coupon_rows] == favourite[u]]
            other = coupon_rows[coupon_cluster[coupon_rows] != favourite[u]]
            for c in [*rng.choice(liked, size=2), *rng.choice(other, size=4)]:
                u_idx.append(u)
                c_idx.append(int(c))
        u_idx, c_idx = np.array(u_idx), np.array(c_idx)
        return (coupon_cluster[c_idx] == favourite[u_idx]).astype(np.int64), u_idx, c_idx

    labels, u_idx, c_idx = examples(range(0, 220), range(0, 64))
    v_labels, v_u, v_c = examples(range(220, n_users), range(64, n_coupons))  # unseen users and coupons
    return CouponTask(emb, users, coupons, labels, profiles, u_idx, c_idx, v_labels, v_u, v_c)


def small_tasks() -> dict:
    """Tiny versions of the three tasks for the mode/strategy smoke tests."""
    seq = sequence_task()
    emb, slots, train_outfits, valid_outfits = outfit_world()
    return {
        "recommend": SequenceTask(seq.item_emb, seq.histories[:200], seq.targets[:200].tolist()),
        "outfit": OutfitTask(emb, train_outfits[:200], slots),
        "coupon": coupon_world(),
    }


def fixed_loss(model: MultiTaskAdapter, tasks: dict, seed: int = 123) -> float:
    """Sum of task losses on fixed batches (no dropout in these models)."""
    rng = np.random.default_rng(seed)
    cfg = TrainConfig(slot_negatives=8)
    with torch.no_grad():
        model.train()
        return sum(float(model(t.batch(rng, 64, model.config.max_history, cfg), n)[1]) for n, t in tasks.items())


# ---------------------------------------------------------------------------------------------------------
# batches: what is in the softmax and what is left out
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("full_softmax_max", [20_000, 5])
def test_sequence_batch_leaves_history_out_of_the_softmax(full_softmax_max):
    emb = unit(np.random.default_rng(0).normal(size=(12, D)))
    task = SequenceTask(emb, [[1, 2, 3], [4, 4, 5]], [3, 6])  # row 0 re-buys an item of its history
    cfg = TrainConfig(full_softmax_max=full_softmax_max, num_negatives=40)
    batch = task.batch(np.random.default_rng(1), 6, max_history=2, config=cfg)
    rows = np.flatnonzero(batch["targets"].numpy() >= 0)
    assert batch["history"].shape[1] == 2  # the most recent 2 items
    cands = batch["candidates"].numpy()
    ids = np.array([int(np.argmax(emb @ c)) for c in cands])  # candidate column -> item id
    assert (len(ids) == 12) == (full_softmax_max == 20_000)
    for b in rows:
        target_col = int(batch["targets"][b])
        target = ids[target_col]
        history = {2, 3} if target == 3 else {4, 5}  # the last max_history items
        excluded = batch["exclude"][b].numpy()
        assert not excluded[target_col]
        for col, item in enumerate(ids):
            if col != target_col:
                assert excluded[col] == (item in history or item == target), (b, col, item)


def test_outfit_batch_negatives():
    emb, slots, outfits, _ = outfit_world()  # items 2k and 2k+1 are near-duplicate twins
    task = OutfitTask(emb, outfits, slots)
    cfg = TrainConfig(slot_negatives=6, slot_dropout=0.5)
    batch = task.batch(np.random.default_rng(0), 32, max_history=8, config=cfg)
    item_of = lambda x: (x.numpy() @ emb.T).argmax(-1)  # noqa: E731
    positives, negatives = item_of(batch["candidates"]), item_of(batch["row_candidates"])
    visible = item_of(batch["items"])
    assert (batch["targets"].numpy() == np.arange(32)).all()
    assert ((batch["slot"].numpy() == -1).mean() > 0.2) and (batch["slot"].numpy() >= -1).all()
    excluded = batch["exclude"].numpy()
    for b in range(32):
        twins = {positives[b] // 2 * 2, positives[b] // 2 * 2 + 1}  # the answer and its near-duplicate
        assert (slots[negatives[b, :6]] == slots[positives[b]]).all()  # sampled negatives share the slot
        assert list(visible[b]) == list(negatives[b, 6:])  # the visible items are negatives too
        for col, item in enumerate(positives):
            assert excluded[b, col] == (col != b and item in twins)
        for col, item in enumerate(negatives[b, :6]):
            assert excluded[b, 32 + col] == (item in twins)


def test_coupon_batch_caps_long_coupons():
    task = coupon_world()
    task.coupon_items[0] = list(range(100))
    task.user_index[:] = 0
    task.coupon_index[:] = 0
    batch = task.batch(np.random.default_rng(0), 4, max_history=8, config=TrainConfig())
    assert batch["coupon_items"].shape == (4, 8, D) and batch["coupon_mask"].all()
    assert batch["pos_weight"] == pytest.approx((1 - task.labels.mean()) / task.labels.mean())


# ---------------------------------------------------------------------------------------------------------
# each task learns its rule
# ---------------------------------------------------------------------------------------------------------


def test_sequence_rule_is_learned_and_transfers_to_new_items():
    task = sequence_task()
    model = model_for(("recommend",))
    untrained = task.valid_metric(model)
    result = train(model, {"recommend": task}, TrainConfig(steps=80, batch_size=64, lr=3e-3, eval_every=20))
    trained = task.valid_metric(model)
    assert untrained < 0.1  # random is 10/200 = 0.05
    assert trained > 0.6, result.history
    assert result.best_metrics["recommend"] == pytest.approx(max(r["valid/recommend"] for r in result.history))

    # cold start: 5 new items per cluster, never seen in training, are recommended from their text alone
    rng, centroids, cluster, emb, successor = sequence_world()
    new_cluster = np.repeat(np.arange(len(centroids)), 5)
    new_emb = unit(centroids[new_cluster] + 0.08 * rng.normal(size=(len(new_cluster), D)))
    all_emb = np.concatenate([emb, new_emb])
    all_cluster = np.concatenate([cluster, new_cluster])
    histories, targets = walks(rng, all_cluster, successor, 200, target_pool=np.arange(len(emb), len(all_emb)))
    scores = recommend_queries(model, all_emb, histories) @ encode_items(model, all_emb, "recommend").T
    recall = (rank_of_target(scores, targets, histories) < 10).mean()
    assert recall > 0.3  # at most 10/15 of the target cluster fits in the top 10; random is 10/300


def test_outfit_rule_is_learned_without_near_duplicates():
    emb, slots, train_outfits, valid_outfits = outfit_world()
    task = OutfitTask(emb, train_outfits, slots, valid_outfits)
    model = model_for(("outfit",), n_slots=3)
    untrained = task.valid_metric(model)
    train(model, {"outfit": task}, TrainConfig(steps=80, batch_size=64, lr=3e-3, eval_every=20, slot_negatives=8))
    trained = task.valid_metric(model)
    assert untrained < 0.45  # chance is 0.25
    assert trained > 0.65

    # text similarity alone cannot answer these questions: compatibility had to be learned
    partials, wanted, candidates = task.fitb_questions(valid_outfits)
    text_query = unit(np.stack([emb[p].mean(0) for p in partials]))  # the "more like this" baseline
    text_scores = np.einsum("qd,qcd->qc", text_query, emb[candidates])
    assert (text_scores[:, 0] > text_scores[:, 1:].max(1)).mean() < 0.4

    # near-duplicate rate: top-1 over the whole catalog (visible items excluded) is a near-copy of a visible item
    baseline = text_query @ emb.T
    vectors = encode_items(model, emb, "outfit")
    named = outfit_queries(model, emb, partials, wanted) @ vectors.T
    unnamed = outfit_queries(model, emb, partials, [-1] * len(partials)) @ vectors.T  # "complete this outfit"
    for row, items in enumerate(partials):
        named[row, items] = unnamed[row, items] = baseline[row, items] = -np.inf

    def dup_rate(scores: np.ndarray) -> float:
        top = scores.argmax(1)
        return float(np.mean([(emb[items] @ emb[t]).max() > 0.9 for items, t in zip(partials, top)]))

    assert dup_rate(baseline) > 0.9  # the fixture does punish "more like this"
    assert dup_rate(named) < 0.1
    assert dup_rate(unnamed) < 0.05  # needs training with hidden slots (0.1 with slot_dropout=0)
    assert (slots[named.argmax(1)] == np.asarray(wanted)).mean() > 0.9


def test_coupon_rule_is_learned_for_unseen_users_and_coupons():
    task = coupon_world()
    model = model_for(("coupon",), profile_dim=2)
    untrained = task.valid_metric(model)
    train(model, {"coupon": task}, TrainConfig(steps=60, batch_size=64, lr=3e-3, eval_every=20))
    trained = task.valid_metric(model)
    assert trained > 0.8
    assert trained > untrained + 0.1


# ---------------------------------------------------------------------------------------------------------
# sharing modes and weighting strategies
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sharing,weighting",
    [
        ("hard", "static"),
        ("soft", "static"),
        ("experts", "static"),
        ("hard", "uncertainty"),
        ("hard", "gradnorm"),
        ("soft", "gradnorm"),
        ("experts", "dwa"),
    ],
)
def test_modes_and_weightings_decrease_the_loss(sharing, weighting):
    tasks = small_tasks()
    model = model_for(tuple(tasks), sharing=sharing, n_slots=3, profile_dim=2, n_experts=2)
    before = fixed_loss(model, tasks)
    cfg = TrainConfig(steps=25, batch_size=32, lr=3e-3, weighting=weighting, dwa_window=5, slot_negatives=8)
    result = train(model, tasks, cfg)
    after = fixed_loss(model, tasks)
    assert after < 0.85 * before, (before, after)
    weights = [result.history[-1][f"weight/{n}"] for n in tasks]
    if weighting in ("gradnorm", "dwa"):
        assert sum(weights) == pytest.approx(3.0, rel=1e-4)
    if weighting != "static":
        assert weights != [1.0, 1.0, 1.0]  # the strategy did move the weights


def test_uncertainty_weighting_formula():
    w = UncertaintyWeighting(["a", "b"])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -1.0]))
    total, weights = w.combine({"a": torch.tensor(2.0), "b": torch.tensor(3.0)}, None)
    expected = np.exp(-0.5) * 2 + 0.5 + np.exp(1.0) * 3 - 1.0
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    assert weights["b"] == pytest.approx(np.exp(1.0), rel=1e-6)


def test_dwa_weights_follow_loss_ratios():
    w = DWAWeighting(["a", "b"], temperature=2.0, window=1)
    assert w.current() == [1.0, 1.0]
    w.end_step({"a": 1.0, "b": 1.0})
    w.end_step({"a": 0.5, "b": 1.0})  # a improves twice as fast: ratios 0.5 and 1.0
    e = np.exp(np.array([0.5, 1.0]) / 2.0)
    assert w.current() == pytest.approx((2 * e / e.sum()).tolist())


def test_gradnorm_lowers_the_weight_of_the_task_with_larger_gradients():
    model = model_for(("recommend", "outfit"), n_slots=1)
    layer = model.gradnorm_parameters("recommend")[0]
    x = torch.ones(layer.shape[1])
    # equal loss ratios, but "outfit"'s gradient at the shared layer is 10x larger
    losses = lambda: {"recommend": (layer @ x).sum() + 1.0, "outfit": 10 * (layer @ x).sum() + 1.0}  # noqa: E731
    w = GradNormWeighting(["recommend", "outfit"], alpha=1.5, lr=0.05)
    for _ in range(5):
        _, weights = w.combine(losses(), model)
    assert weights["recommend"] > 1.0 > weights["outfit"]
    assert sum(weights.values()) == pytest.approx(2.0, rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# early stopping, checkpoints, resume
# ---------------------------------------------------------------------------------------------------------


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    tasks = small_tasks()
    tasks["recommend"] = sequence_task()  # with validation data: best weights and early stopping state resume too
    kw = dict(batch_size=32, lr=3e-3, eval_every=5, slot_negatives=8, restore_best=False, weighting="gradnorm")

    make = lambda: model_for(tuple(tasks), sharing="soft", n_slots=3, profile_dim=2, dropout=0.1)  # noqa: E731
    full = make()
    full_result = train(full, tasks, TrainConfig(steps=14, **kw))

    first = make()
    train(first, tasks, TrainConfig(steps=10, checkpoint_dir=str(tmp_path), **kw))  # "interrupted" at step 10
    resumed = make()
    resumed_result = train(resumed, tasks, TrainConfig(steps=14, checkpoint_dir=str(tmp_path), resume=True, **kw))

    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(resumed_result.history) == strip(full_result.history)
    assert not any(p.suffix == ".pkl" or p.suffix == ".pt" for p in tmp_path.rglob("*"))


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    tasks = {"recommend": small_tasks()["recommend"]}
    cfg = TrainConfig(steps=2, batch_size=8, eval_every=2, checkpoint_dir=str(tmp_path))
    train(model_for(("recommend",)), tasks, cfg)
    other = model_for(("recommend",), dim=16)
    with pytest.raises(ValueError, match="another AdapterConfig"):
        train(other, tasks, TrainConfig(steps=4, batch_size=8, checkpoint_dir=str(tmp_path), resume=True))


def test_early_stopping_restores_the_best_weights():
    task = sequence_task()
    model = model_for(("recommend",))
    # lr so high that validation gets worse after the first evaluation
    cfg = TrainConfig(steps=200, batch_size=64, lr=0.3, eval_every=5, patience=2, grad_clip=None)
    result = train(model, {"recommend": task}, cfg)
    assert result.history[-1]["step"] < 200  # stopped early
    assert task.valid_metric(model) == pytest.approx(result.best_metrics["recommend"])
    assert result.best_metrics["recommend"] == max(r["valid/recommend"] for r in result.history)


def test_epochs_set_the_number_of_steps():
    tasks = {"recommend": small_tasks()["recommend"]}  # 200 examples
    result = train(model_for(("recommend",)), tasks, TrainConfig(epochs=1.0, batch_size=50, eval_every=1))
    assert [row["step"] for row in result.history] == [1, 2, 3, 4]


def test_progress_bar_and_time_budget(caplog, capsys):
    tasks = {"recommend": small_tasks()["recommend"]}
    with caplog.at_level(logging.INFO, logger="textguide"):
        result = train(model_for(("recommend",)), tasks, TrainConfig(steps=10_000, batch_size=8, max_seconds=0.5))
    assert result.history[-1]["step"] < 10_000
    assert "time budget" in caplog.text
    assert "train" in capsys.readouterr().err  # tqdm writes to stderr when logging is at INFO


# ---------------------------------------------------------------------------------------------------------
# inference helpers and error paths
# ---------------------------------------------------------------------------------------------------------


def test_inference_helpers_batch_equals_single():
    tasks = small_tasks()
    model = model_for(tuple(tasks), n_slots=3, profile_dim=2)
    train(model, tasks, TrainConfig(steps=3, batch_size=16, slot_negatives=4))
    emb = tasks["recommend"].item_emb
    hists = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]  # the last is longer than max_history
    batch = recommend_queries(model, emb, hists)
    assert batch.dtype == np.float32 and batch.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    for row, h in enumerate(hists):
        np.testing.assert_allclose(recommend_queries(model, emb, [h])[0], batch[row], atol=1e-5)
    # only the most recent max_history (8) items are read
    np.testing.assert_allclose(recommend_queries(model, emb, [hists[2][-8:]])[0], batch[2], atol=1e-5)

    out = tasks["outfit"]
    q = outfit_queries(model, out.item_emb, [[0, 1], [2]], [1, -1])
    np.testing.assert_allclose(outfit_queries(model, out.item_emb, [[2]], [-1])[0], q[1], atol=1e-5)
    vectors = encode_items(model, out.item_emb, "outfit", batch_size=7)
    np.testing.assert_allclose(vectors, encode_items(model, out.item_emb, "outfit"), atol=1e-6)

    cp = tasks["coupon"]
    p = coupon_probabilities(model, cp.item_emb, [1, 2, 3], [[4, 5], [6], [7, 8, 9]], profile=np.zeros(2))
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    single = coupon_probabilities(model, cp.item_emb, [1, 2, 3], [[6]], profile=np.zeros(2))
    assert single[0] == pytest.approx(p[1], abs=1e-6)
    # a user with no purchases but a profile is scored; with neither it is an error
    assert coupon_probabilities(model, cp.item_emb, [], [[6]], profile=np.ones(2)).shape == (1,)
    with pytest.raises(ValueError, match="empty user_history"):
        coupon_probabilities(model, cp.item_emb, [], [[6]])


def test_read_only_embeddings_work_without_copies_or_warnings():
    tasks = small_tasks()
    model = model_for(tuple(tasks), n_slots=3, profile_dim=2)
    emb = tasks["recommend"].item_emb.copy()
    emb.setflags(write=False)  # like a memory-mapped index
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = recommend_queries(model, emb, [[1, 2]])
        v = encode_items(model, emb, "recommend")
        SequenceTask(emb, [[1]], [2]).batch(np.random.default_rng(0), 2, 4, TrainConfig())
    np.testing.assert_allclose(q, recommend_queries(model, tasks["recommend"].item_emb, [[1, 2]]))
    assert v.shape == (len(emb), 32)


def test_error_paths():
    model = MultiTaskAdapter(AdapterConfig(input_dim=384, dim=32, seq_heads=2, n_slots=2))
    emb = unit(np.random.default_rng(0).normal(size=(10, 384)))
    with pytest.raises(ValueError, match=r"histories\[1\] is empty"):
        recommend_queries(model, emb, [[1, 2], []])
    with pytest.raises(ValueError, match="expected 384, got 512"):
        recommend_queries(model, unit(np.ones((10, 512))), [[1, 2]])
    with pytest.raises(ValueError, match="out of range"):
        recommend_queries(model, emb, [[1, 10]])
    with pytest.raises(ValueError, match="valid tasks: recommend, outfit, coupon"):
        encode_items(model, emb, "recomend")
    with pytest.raises(ValueError, match="slot 5 out of range"):
        outfit_queries(model, emb, [[1]], [5])
    with pytest.raises(ValueError, match="valid tasks: recommend, outfit, coupon"):
        train(model, {"ranking": SequenceTask(emb, [[1]], [2])}, TrainConfig(steps=1))
    with pytest.raises(ValueError, match="expected 384, got 64"):
        train(model, {"recommend": SequenceTask(unit(np.ones((10, 64))), [[1]], [2])}, TrainConfig(steps=1))
    with pytest.raises(ValueError, match="must be a SequenceTask"):
        train(model, {"recommend": OutfitTask(emb, [[1, 2]], np.zeros(10, dtype=int))}, TrainConfig(steps=1))
    with pytest.raises(ValueError, match=r"outfits\[0\] has 1 item"):
        OutfitTask(emb, [[1]], np.zeros(10, dtype=int))
    with pytest.raises(ValueError, match="both classes"):
        CouponTask(emb, [[1]], [[2]], np.array([1]), None, np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="weighting must be one of"):
        TrainConfig(weighting="pcgrad")


def test_coupon_logits_indexed_equals_pairwise() -> None:
    """Encoding each user and coupon once gives the same logits as scoring every pair from scratch."""
    from textguide.adapters import AdapterConfig, MultiTaskAdapter
    from textguide.tasks.coupon import coupon_logits, coupon_logits_indexed

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    torch.manual_seed(0)
    model = MultiTaskAdapter(AdapterConfig(input_dim=16, dim=8, seq_heads=2, tasks=("coupon",), profile_dim=4))
    users = [list(rng.integers(40, size=k)) for k in (0, 3, 7)]
    coupons = [list(rng.integers(40, size=k)) for k in (1, 5)]
    profiles = rng.standard_normal((3, 4)).astype(np.float32)
    ui, ci = np.array([0, 1, 2, 2, 1, 0]), np.array([0, 1, 0, 1, 0, 1])
    fast = coupon_logits_indexed(model, emb, users, coupons, ui, ci, profiles)
    slow = coupon_logits(model, emb, [users[i] for i in ui], [coupons[i] for i in ci], profiles[ui])
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)


def test_next_item_examples_hand_computed() -> None:
    from textguide.tasks.recommend import next_item_examples

    hist, targ = next_item_examples([["a", "b", "c", "d"], ["x"], ["p", "q"]], max_history=2)
    assert targ == ["b", "c", "d", "q"]
    assert hist == [["a"], ["a", "b"], ["b", "c"], ["p"]]  # at most the 2 items before each target


def test_outfit_batches_and_queries_carry_each_visible_items_slot():
    """The type-aware head reads each visible item's slot: batches carry it (-1 on padding), and
    ``outfit_queries(item_slots=...)`` gives the same query as the model called with those slots."""
    emb, slots, train_outfits, _ = outfit_world()
    task = OutfitTask(emb, train_outfits[:50], slots)
    batch = task.batch(np.random.default_rng(0), 16, 8, TrainConfig(slot_negatives=2))
    kinds, mask = batch["items_slot"].numpy(), batch["items_mask"].numpy()
    assert kinds.shape == mask.shape and (kinds[~mask] == -1).all()
    # every visible item's slot is the slot of an item whose embedding is in that position
    items = batch["items"].numpy()
    for b, l in zip(*np.nonzero(mask)):
        row = int(np.argmax(emb @ items[b, l]))
        assert kinds[b, l] == slots[row]
    model = model_for(("outfit",), n_slots=int(slots.max()) + 1, outfit_pair_rank=4)
    model.outfit.pair_up.data.normal_(std=0.3)
    _, loss = model(batch, "outfit")
    assert torch.isfinite(loss)
    parts, wanted = [[0, 1], [2, 3, 4]], [1, -1]
    typed = outfit_queries(model, emb, parts, wanted, slots)
    h, m = torch.from_numpy(emb[[0, 1, 0]][None]), torch.tensor([[True, True, False]])
    with torch.no_grad():
        want = model.outfit_query(h, m, torch.tensor([1]), torch.tensor([[slots[0], slots[1], -1]]))
    np.testing.assert_allclose(typed[0], want[0].numpy(), atol=1e-5)
    # without the catalog's slots every visible slot is unknown: a different query
    assert not np.allclose(outfit_queries(model, emb, parts, wanted), typed, atol=1e-4)
    with pytest.raises(ValueError, match="item_slots has 3 entries"):
        outfit_queries(model, emb, parts, wanted, slots[:3])


def test_structure_task_from_kind_names():
    """NGNN-style outfits known only by category names: one item per distinct name, its slot from the map,
    repeats counted once, one-item outfits dropped, the flagged outfits held out for validation."""
    from textguide.tasks.outfit import structure_task

    names = ["Skinny Jeans", "Blouses", "Ankle Booties", "Lipstick"]
    emb = unit(np.random.default_rng(0).normal(size=(4, D)))
    outfits = [["Blouses", "Skinny Jeans", "Blouses"], ["Lipstick"], ["Ankle Booties", "Lipstick", "Blouses"],
               ["Skinny Jeans", "Ankle Booties"]]
    task = structure_task(outfits, names, emb, {"Skinny Jeans": 1, "Blouses": 0, "Ankle Booties": 2},
                          valid=[False, False, False, True])
    assert task.outfits == [[1, 0], [2, 3, 1]] and task.valid_outfits == [[0, 2]]
    assert task.item_slots.tolist() == [1, 0, 2, -1]
    np.testing.assert_array_equal(task.item_emb, emb)
    with pytest.raises(ValueError, match=r"name\(s\) \['Scarves'\] not in names"):
        structure_task([["Scarves", "Blouses"]], names, emb, {})
    with pytest.raises(ValueError, match="4 names but 3 name embeddings"):
        structure_task(outfits, names, emb[:3], {})


def test_pretrain_heads_trains_only_the_outfit_head():
    """Pre-training on kind outfits moves the outfit head and leaves every other parameter (the shared item
    adapter, the recommend head) exactly where it was; parameters stay trainable afterwards."""
    from types import SimpleNamespace

    from textguide.bench.workflows import pretrain_heads

    emb, slots, train_outfits, valid_outfits = outfit_world()
    data = OutfitTask(emb, train_outfits[:300], slots, valid_outfits[:50])
    model = model_for(("recommend", "outfit"), n_slots=int(slots.max()) + 1, outfit_pair_rank=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = pretrain_heads(model, {"recommend": SimpleNamespace(), "outfit": SimpleNamespace(pretrain=data)},
                          ("recommend", "outfit"), steps=40, max_seconds=None)
    assert set(info) == {"outfit"} and info["outfit"]["outfits"] == 300
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("outfit.", "logit_scale.outfit")) for n in changed)
    assert any(n.startswith("outfit.pair_up") for n in changed)
    assert all(p.requires_grad for p in model.parameters())


def test_kind_pmi_hand_computed():
    from textguide.tasks.outfit import kind_pmi

    names = ["a", "b", "c"]
    pmi = kind_pmi([["a", "b"], ["a", "b", "a"], ["a", "c"], ["x"]], names, smoothing=1.0)
    n = 4  # outfits; a in 3, b in 2, c in 1; (a, b) together in 2, (a, c) in 1, (b, c) in 0
    assert pmi[0, 1] == pytest.approx(np.log(3 * n / (4 * 3)))
    assert pmi[0, 2] == pytest.approx(np.log(2 * n / (4 * 2)))
    assert pmi[1, 2] == pytest.approx(np.log(1 * n / (3 * 2)))
    np.testing.assert_allclose(pmi, pmi.T)
    assert (np.diag(pmi) == 0).all()


def test_kind_prior_joins_the_text_part_of_the_outfit_blend(tmp_path):
    """score(query, item) = adapter cosine + w * (text cosine + weight * sum_i p_i^T PMI p_c) when the outfit
    blend weight w > 0; nothing changes at w = 0; the prior survives save / load."""
    from textguide.adapters import load_adapter, save_adapter
    from textguide.tasks.outfit import attach_kind_prior

    emb, slots, _, _ = outfit_world()
    rng = np.random.default_rng(1)
    kinds = unit(rng.normal(size=(5, D)))
    pmi = rng.normal(size=(5, 5)).astype(np.float32)
    model = model_for(("outfit",), n_slots=int(slots.max()) + 1)
    plain_q = outfit_queries(model, emb, [[0, 1]], [2])
    plain_v = encode_items(model, emb, "outfit")
    attach_kind_prior(model, kinds, pmi)
    assert model.config.outfit_kinds == 5
    np.testing.assert_array_equal(outfit_queries(model, emb, [[0, 1]], [2]), plain_q)  # w = 0: no prior
    model.config.text_blend["outfit"] = 2.0
    q, v = outfit_queries(model, emb, [[0, 1]], [2]), encode_items(model, emb, "outfit")
    assert q.shape[1] == v.shape[1] == 32 + D + 5
    t = model.config.outfit_kind_temperature
    p = np.exp(t * emb @ kinds.T)
    p /= p.sum(1, keepdims=True)
    text = emb[[0, 1]].mean(0)
    text /= np.linalg.norm(text)
    want = plain_v @ plain_q[0] + 2.0 * (emb @ text + model.config.outfit_kind_weight * (p[[0, 1]].sum(0) @ pmi @ p.T))
    np.testing.assert_allclose(v @ q[0], want, atol=1e-4)
    loaded = load_adapter(save_adapter(model, tmp_path / "a"))
    np.testing.assert_allclose(outfit_queries(loaded, emb, [[0, 1]], [2]), q, atol=1e-6)
    np.testing.assert_allclose(encode_items(loaded, emb, "outfit"), v, atol=1e-6)
    with pytest.raises(ValueError, match=f"expected {D}, got 7"):
        attach_kind_prior(model, kinds[:, :7], pmi)


def test_select_per_task_keeps_each_tasks_own_best_weights():
    seq = sequence_task()
    tasks = {"recommend": seq, "coupon": coupon_world()}
    model = model_for(("recommend", "coupon"), profile_dim=tasks["coupon"].profiles.shape[1])
    # a high lr makes the metrics wander, so each task peaks at its own evaluation
    cfg = TrainConfig(steps=60, batch_size=32, lr=0.05, eval_every=5, patience=None, select_per_task=True)
    result = train(model, tasks, cfg)
    assert set(result.task_weights) == {"recommend", "coupon"}
    for name, data in tasks.items():
        best = max(r[f"valid/{name}"] for r in result.history)
        step = next(r["step"] for r in result.history if r[f"valid/{name}"] == best)  # the first step at the best
        assert result.task_best_steps[name] == step
        model.load_state_dict(result.task_weights[name])
        assert data.valid_metric(model) == pytest.approx(best)
    plain = train(model_for(("recommend",)), {"recommend": seq}, TrainConfig(steps=10, batch_size=32, eval_every=5))
    assert plain.task_weights == {} and plain.task_best_steps == {}


def test_select_per_task_waits_for_every_task_to_plateau():
    from textguide.training.loop import keep_task_best

    model = model_for(("recommend",))
    kept: dict = {}
    assert keep_task_best(kept, {"recommend": 0.2, "coupon": 0.7}, 5, model)
    assert not keep_task_best(kept, {"recommend": 0.2, "coupon": 0.6}, 10, model)  # no task improved
    assert keep_task_best(kept, {"recommend": 0.3, "coupon": 0.5}, 15, model)  # one did: not a bad evaluation
    assert kept["recommend"][:2] == (0.3, 15) and kept["coupon"][:2] == (0.7, 5)


def test_train_all_serves_the_better_validated_adapter_per_task() -> None:
    """`textguide train all`: each task's guide gets the shared model unless its single-task challenger
    validated strictly better on the task's select_metric (best over the run's evaluations)."""
    from textguide.bench.workflows import pick_adapters, selection_table, task_best_metric
    from textguide.training import TrainResult

    joint = TrainResult(history=[{"step": 100, "valid/recommend": 0.10, "valid/outfit": 0.40},
                                 {"step": 200, "valid/recommend": 0.12, "valid/outfit": 0.38}],
                        best_step=200, best_metrics={})
    rec = TrainResult(history=[{"step": 100, "valid/recommend": 0.13}, {"step": 200, "valid/recommend": 0.11}],
                      best_step=100, best_metrics={})
    out = TrainResult(history=[{"step": 100, "valid/outfit": 0.40}], best_step=100, best_metrics={})
    assert task_best_metric(joint, "recommend") == 0.12 and task_best_metric(out, "coupon") == float("-inf")
    shared, single_rec, single_out = object(), object(), object()
    trained, selected = pick_adapters(("recommend", "outfit", "coupon"), (shared, joint, "hard/dwa"),
                                      {"recommend": (single_rec, rec), "outfit": (single_out, out)})
    assert trained["recommend"] == (single_rec, rec, "single-task")  # .13 > .12
    assert trained["outfit"][0] is shared  # a tie keeps the shared model
    assert trained["coupon"][0] is shared and "coupon" not in selected  # no challenger
    assert selected["recommend"] == {"metric": "Recall@10", "multi-task": 0.12, "single-task": 0.13,
                                     "served": "single-task"}
    table = selection_table(selected)
    assert "| recommend | Recall@10 | 0.1200 | 0.1300 | single-task |" in table
    assert "| outfit | FITB | 0.4000 | 0.4000 | multi-task |" in table


# ---------------------------------------------------------------------------------------------------------
# weight averaging (TrainConfig.ema_decay)
# ---------------------------------------------------------------------------------------------------------


def test_ema_is_the_moving_average_of_the_trajectory_and_does_not_change_it():
    """With ema_decay the returned weights are the warmed-up moving average of the weights after each step
    (recomputed here from runs of 1..n steps without averaging); evaluating the average every 2 steps must not
    perturb the trajectory (the optimizer's weights are swapped back after each evaluation)."""
    emb, slots, train_outfits, valid_outfits = outfit_world()
    task = OutfitTask(emb, train_outfits[:200], slots, valid_outfits[:40])
    kw = dict(batch_size=32, lr=3e-3, eval_every=2, slot_negatives=8, restore_best=False, patience=None)
    make = lambda: model_for(("outfit",), n_slots=3)  # noqa: E731
    decay, n = 0.8, 6
    trajectory = [make().state_dict()]
    for steps in range(1, n + 1):
        m = make()
        train(m, {"outfit": task}, TrainConfig(steps=steps, **kw))
        trajectory.append(m.state_dict())
    expected = {k: v.clone() for k, v in trajectory[0].items()}
    for t in range(n):
        d = min(decay, (1 + t) / (10 + t))
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * trajectory[t + 1][k]
    averaged = make()
    result = train(averaged, {"outfit": task}, TrainConfig(steps=n, ema_decay=decay, **kw))
    for k, v in averaged.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6, msg=k)
    last = trajectory[-1]
    assert any(not torch.allclose(v, last[k]) for k, v in averaged.state_dict().items())  # not the last step
    assert [row["step"] for row in result.history] == [2, 4, 6]


def test_ema_resumes_from_a_checkpoint(tmp_path):
    emb, slots, train_outfits, valid_outfits = outfit_world()
    task = {"outfit": OutfitTask(emb, train_outfits[:200], slots, valid_outfits[:40])}
    kw = dict(batch_size=32, lr=3e-3, eval_every=2, slot_negatives=8, restore_best=False, patience=None,
              ema_decay=0.9)
    full = model_for(("outfit",), n_slots=3)
    train(full, task, TrainConfig(steps=8, **kw))
    first = model_for(("outfit",), n_slots=3)
    train(first, task, TrainConfig(steps=4, checkpoint_dir=str(tmp_path), **kw))
    resumed = model_for(("outfit",), n_slots=3)
    train(resumed, task, TrainConfig(steps=8, checkpoint_dir=str(tmp_path), resume=True, **kw))
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_ema_resumed_from_a_checkpoint_without_an_average_starts_from_its_weights(tmp_path):
    emb, slots, train_outfits, _ = outfit_world()
    task = {"outfit": OutfitTask(emb, train_outfits[:200], slots)}
    kw = dict(batch_size=32, lr=3e-3, eval_every=2, slot_negatives=8, restore_best=False, patience=None, steps=4)
    first = model_for(("outfit",), n_slots=3)
    train(first, task, TrainConfig(checkpoint_dir=str(tmp_path), **kw))  # no averaging
    resumed = model_for(("outfit",), n_slots=3)
    train(resumed, task, TrainConfig(checkpoint_dir=str(tmp_path), resume=True, ema_decay=0.9, **kw))  # nothing left
    for (k, a), b in zip(first.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)  # not the fresh model's initial weights


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_out_of_range_is_refused(decay):
    with pytest.raises(ValueError, match=r"TrainConfig.ema_decay must be in \[0, 1\)"):
        TrainConfig(ema_decay=decay)
