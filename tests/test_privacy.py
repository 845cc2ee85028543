"""Differentially private training (textguide.privacy): accounting, per-example clipping, per-user sampling,
refusals, and a DP guide that saves, loads and serves. Fast: tiny models, the fake encoder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")

from opacus.accountants import RDPAccountant  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402

from textguide import privacy  # noqa: E402
from textguide.adapters import AdapterConfig, MultiTaskAdapter  # noqa: E402
from textguide.cli import main  # noqa: E402
from textguide.guide import Guide  # noqa: E402
from textguide.privacy import DPConfig, PrivacyRecord, train_private  # noqa: E402
from textguide.tasks.coupon import CouponTask  # noqa: E402
from textguide.tasks.outfit import OutfitTask  # noqa: E402
from textguide.tasks.recommend import SequenceTask  # noqa: E402
from textguide.training import TrainConfig  # noqa: E402


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sequences(emb: np.ndarray, n_users: int = 40, per_user: int = 3, seed: int = 0):
    """A SequenceTask with ``per_user`` examples per user, and the user of each example."""
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    hist = [rng.integers(len(emb), size=int(rng.integers(1, 6))).tolist() for _ in range(n)]
    targ = rng.integers(len(emb), size=n).tolist()
    return SequenceTask(emb, hist, targ, hist[:10], targ[:10]), np.repeat(np.arange(n_users), per_user)


def _model(tasks=("recommend",), **kw) -> MultiTaskAdapter:
    torch.manual_seed(0)
    return MultiTaskAdapter(AdapterConfig(input_dim=16, dim=8, max_history=6, seq_layers=1, seq_heads=2,
                                          tasks=tasks, **kw))


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 12, "batch_size": 8, "eval_every": 6, "max_seconds": None, **kw})


def test_spent_epsilon_is_within_the_target_and_matches_the_accountant():
    emb = _unit(50, 16)
    task, users = _sequences(emb)
    noise = {}
    for eps in (1.0, 8.0):
        model = _model()
        result, rec = train_private(model, {"recommend": task}, _cfg(), DPConfig(epsilon=eps, negatives=7), users)
        noise[eps] = rec.noise_multiplier
        assert rec.epsilon <= eps
        assert rec.epsilon > 0.8 * eps  # the smallest noise that fits, not an arbitrary large one
        assert rec.users == 40 and rec.examples == 120 and rec.steps == 12
        assert rec.sample_rate == pytest.approx(8 / 40)
        assert rec.delta == pytest.approx(1 / 400) and rec.delta < 1 / rec.users
        # an independent accountant over the same (noise, rate, steps) gives the same epsilon
        acc = RDPAccountant()
        for _ in range(rec.steps):
            acc.step(noise_multiplier=rec.noise_multiplier, sample_rate=rec.sample_rate)
        assert acc.get_epsilon(delta=rec.delta) == pytest.approx(rec.epsilon, rel=1e-6)
        assert [r["step"] for r in result.history] == [6, 12]
    assert noise[1.0] > noise[8.0]  # more noise for a smaller budget


def test_per_example_gradients_match_one_backward_per_example():
    emb = _unit(50, 16)
    task, _ = _sequences(emb)
    model = _model()
    model.eval()  # no dropout: the loop below must see the same function
    loss = privacy._ExampleLoss(model, "recommend", 1.0)
    params = dict(loss.named_parameters())
    batch = privacy.private_batch(task, np.arange(5), np.random.default_rng(0), 6, DPConfig(epsilon=1.0, negatives=7))
    grads, values = privacy.per_example_grads(loss, params, batch)
    for i in range(5):
        loss.zero_grad()
        one = loss({k: v[i:i + 1] for k, v in batch.items()}).sum()
        one.backward()
        assert float(values[i]) == pytest.approx(float(one.detach()), rel=1e-5)
        for k, p in params.items():
            truth = p.grad if p.grad is not None else torch.zeros_like(p)
            torch.testing.assert_close(grads[k][i], truth, atol=1e-5, rtol=1e-4)


def test_each_example_gradient_is_clipped_before_the_sum():
    """DP step with no noise and SGD(lr=1): the update is minus the mean of the clipped per-example gradients."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(()))
    g_w = torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, -12.0], [0.0, 0.0, 0.0]])
    g_b = torch.tensor([0.0, 0.2, 5.0, 0.0])
    opt = DPOptimizer(torch.optim.SGD([w, b], lr=1.0), noise_multiplier=0.0, max_grad_norm=1.0,
                      expected_batch_size=4, loss_reduction="mean")
    privacy.dp_step(opt, {"w": w, "b": b}, {"w": g_w, "b": g_b})
    expected_w, expected_b = torch.zeros(3), torch.zeros(())
    for gw, gb in zip(g_w, g_b):  # the norm is over all parameters of one example together
        norm = math.sqrt(float(gw.pow(2).sum() + gb.pow(2)))
        factor = min(1.0, 1.0 / norm) if norm > 0 else 0.0
        expected_w -= factor * gw / 4
        expected_b -= factor * gb / 4
    torch.testing.assert_close(w.detach(), expected_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.detach(), expected_b, atol=1e-5, rtol=1e-5)
    # every clipped example moves the weights by at most max_grad_norm / batch size
    assert float(torch.sqrt(w.detach().pow(2).sum() + b.detach().pow(2))) <= 3 * 1.0 / 4 + 1e-6


def test_noise_has_the_accounted_standard_deviation():
    w = torch.nn.Parameter(torch.zeros(20000))
    opt = DPOptimizer(torch.optim.SGD([w], lr=1.0), noise_multiplier=2.0, max_grad_norm=0.5,
                      expected_batch_size=10, loss_reduction="mean")
    privacy.dp_step(opt, {"w": w}, None)  # nobody sampled: noise only
    assert float(w.detach().std()) == pytest.approx(2.0 * 0.5 / 10, rel=0.05)


def test_users_are_poisson_sampled_with_one_example_each():
    codes = np.repeat(np.arange(200), np.arange(200) % 5 + 1)  # users with 1..5 examples
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(200):
        rows = privacy.sample_users(rng, codes, 0.1)
        assert len(np.unique(codes[rows])) == len(rows)  # at most one example per user
        sizes.append(len(rows))
    assert np.mean(sizes) == pytest.approx(20, rel=0.1)
    assert np.std(sizes) > 1  # the batch size varies (Poisson), it is not fixed


def test_coupon_task_trains_privately_with_a_fixed_pos_weight():
    emb = _unit(40, 16)
    rng = np.random.default_rng(0)
    hist = [rng.integers(40, size=int(rng.integers(0, 5))).tolist() for _ in range(30)]
    coupons = [rng.integers(40, size=int(rng.integers(1, 10))).tolist() for _ in range(6)]
    ui, ci = rng.integers(30, size=200), rng.integers(6, size=200)
    labels = (rng.random(200) < 0.3).astype(int)
    task = CouponTask(emb, hist, coupons, labels, None, ui, ci, labels[:50], ui[:50], ci[:50])
    model = _model(("coupon",))
    result, rec = train_private(model, {"coupon": task}, _cfg(batch_size=6), DPConfig(epsilon=2.0), ui)
    assert rec.epsilon <= 2.0 and rec.users == 30
    assert "pos_weight 1" in " ".join(rec.notes)
    assert 0.0 <= result.history[-1]["valid/coupon"] <= 1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"epsilon": 0.0}, "--dp-epsilon must be a finite number > 0"),
    ({"epsilon": -1.0}, "--dp-epsilon must be a finite number > 0"),
    ({"epsilon": math.inf}, "--dp-epsilon must be a finite number > 0"),
    ({}, "exactly one of epsilon"),
    ({"epsilon": 1.0, "noise_multiplier": 1.0}, "exactly one of epsilon"),
    ({"epsilon": 1.0, "delta": 1.0}, "--dp-delta must be in"),
    ({"epsilon": 1.0, "max_grad_norm": 0.0}, "--dp-max-grad-norm must be > 0"),
    ({"epsilon": 1.0, "accountant": "gdp"}, "accountant must be one of rdp, prv"),
])
def test_bad_dp_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPConfig(**kwargs)


def test_settings_the_accountant_cannot_cover_are_refused():
    emb = _unit(50, 16)
    task, users = _sequences(emb)
    dp = DPConfig(epsilon=1.0, negatives=7)
    with pytest.raises(ValueError, match=r"--dp-delta 0.05 must be below 1/users = 0.025 \(40 training users\)"):
        train_private(_model(), {"recommend": task}, _cfg(), DPConfig(epsilon=1.0, delta=0.05), users)
    with pytest.raises(ValueError, match="a time budget cannot bound DP training.*drop --max-seconds"):
        train_private(_model(), {"recommend": task}, _cfg(max_seconds=60), dp, users)
    with pytest.raises(ValueError, match="cannot resume.*drop --checkpoint-dir"):
        train_private(_model(), {"recommend": task}, _cfg(checkpoint_dir="x", resume=True), dp, users)
    with pytest.raises(ValueError, match="batch_size 40 must be below the 40 training users"):
        train_private(_model(), {"recommend": task}, _cfg(batch_size=40), dp, users)
    with pytest.raises(ValueError, match="one user per training example"):
        train_private(_model(), {"recommend": task}, _cfg(), dp, users[:-1])
    with pytest.raises(ValueError, match="takes no regularizer"):
        train_private(_model(), {"recommend": task}, _cfg(), dp, users, regularizer=lambda m: torch.zeros(()))
    with pytest.raises(ValueError, match="cannot reach --dp-epsilon 1e-06.*raise --dp-epsilon"):
        train_private(_model(), {"recommend": task}, _cfg(), DPConfig(epsilon=1e-6), users)
    with pytest.raises(ValueError, match="DP training takes one adapter, not an ensemble of 2.*members=1"):
        train_private(_model(members=2), {"recommend": task}, _cfg(), dp, users)


def test_tasks_whose_loss_mixes_examples_are_refused():
    emb = _unit(30, 16)
    slots = np.arange(30) % 3
    outfits = [[i, (i + 1) % 30, (i + 2) % 30] for i in range(30)]
    model = _model(("outfit",), n_slots=3)
    with pytest.raises(ValueError, match="supports the tasks recommend, coupon, not 'outfit'"):
        train_private(model, {"outfit": OutfitTask(emb, outfits, slots)}, _cfg(), DPConfig(epsilon=1.0),
                      np.arange(30))
    task, users = _sequences(emb)
    two = _model(("recommend", "outfit"), n_slots=3)
    with pytest.raises(ValueError, match="one task at a time"):
        train_private(two, {"recommend": task, "outfit": OutfitTask(emb, outfits, slots)}, _cfg(),
                      DPConfig(epsilon=1.0), users)


def test_command_line_refusals_exit_2_with_the_option_and_the_fix(tmp_path, capsys):
    cases = [
        (["--dp-epsilon", "0"], "--dp-epsilon must be a finite number > 0"),
        (["--dp-delta", "1e-6"], "--dp-delta needs --dp-epsilon"),
        (["--dp-epsilon", "4", "--max-seconds", "60"], "--max-seconds cannot bound DP training"),
        (["--dp-epsilon", "4", "--checkpoint-dir", "c"], "drop --checkpoint-dir / --resume"),
    ]
    for extra, match in cases:
        assert main(["train", "amazon-scientific", str(tmp_path / "g"), *extra]) == 2
        assert match in capsys.readouterr().err
    assert main(["train", "polyvore", str(tmp_path / "g"), "--dp-epsilon", "4"]) == 2
    assert "trains the recipes amazon-scientific and completejourney" in capsys.readouterr().err
    assert main(["train", "all", str(tmp_path / "g"), "--dp-epsilon", "4"]) == 2
    assert not (tmp_path / "g").exists()


@pytest.fixture
def fake_scientific(guide: Guide, monkeypatch: pytest.MonkeyPatch, enc):
    """`textguide train amazon-scientific` on the tiny catalog and the fake encoder (no real data)."""
    from textguide.bench import recipes, workflows

    emb = guide.index.embeddings
    rng = np.random.default_rng(0)
    n = guide.index.count
    hist = [rng.integers(n, size=int(rng.integers(1, 5))).tolist() for _ in range(400)]
    targ = rng.integers(n, size=400).tolist()
    task = SequenceTask(emb, hist, targ, hist[:40], targ[:40])
    bench = recipes.SequenceBench("amazon-scientific", guide, task, hist[40:80], np.array(targ[40:80]),
                                  np.ones(n, np.float32), {"items": n})
    users = np.repeat(np.arange(200), 2)  # 200 users, two examples each (train_recipe samples 128 per step)
    monkeypatch.setattr(workflows, "prepare", lambda t, e, c: bench)
    monkeypatch.setattr(workflows, "load_encoder", lambda: enc)
    monkeypatch.setattr(workflows, "new_model", lambda tasks, sharing="hard", seed=0, input_dim=384, members=1:
                        MultiTaskAdapter(AdapterConfig(input_dim=emb.shape[1], dim=8, max_history=6, seq_layers=1,
                                                       seq_heads=2, tasks=tasks, members=members)))
    monkeypatch.setattr(workflows, "example_users", lambda b: users)
    return guide


def test_a_dp_guide_records_its_guarantee_saves_loads_and_serves(fake_scientific, tmp_path, capsys):
    out = tmp_path / "dp-guide"
    assert main(["train", "amazon-scientific", str(out), "--dp-epsilon", "3", "--steps", "10"]) == 0
    printed = capsys.readouterr().out
    assert "differential privacy: (" in printed and "per user" in printed

    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    text = json.dumps(manifest)
    assert '"privacy"' in text
    loaded = Guide.load(out)
    rec = PrivacyRecord.from_dict(loaded.adapter_meta["privacy"])
    assert rec.epsilon <= 3.0 and rec.target_epsilon == 3.0
    assert rec.steps == 10 and rec.users == 200 and rec.examples == 400
    assert rec.accountant == "rdp" and rec.max_grad_norm == 1.0 and rec.noise_multiplier > 0
    assert rec.delta == pytest.approx(1 / 2000) and rec.sample_rate == pytest.approx(128 / 200)
    report = json.loads((out / "reports" / "report.json").read_text(encoding="utf-8"))
    assert report["privacy"]["epsilon"] == pytest.approx(rec.epsilon)

    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["adapter"]["privacy"]["epsilon"] == pytest.approx(rec.epsilon)

    ids = loaded.index.ids[:3]
    for method in ("adapter", "auto"):
        hits = loaded.recommend(ids, k=5, method=method)
        assert len(hits.ids) == 5 and not set(hits.ids) & set(ids)
    assert loaded.recommend(ids, k=5, method="adapter").method == "adapter"


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_both_accountants_calibrate_within_the_target(accountant):
    dp = DPConfig(epsilon=4.0, accountant=accountant)
    noise = privacy.noise_for(dp, 0.05, 50, 1e-4)
    spent = privacy.spent_epsilon(accountant, noise, 0.05, 50, 1e-4)
    assert 3.0 < spent <= 4.0
    assert privacy.spent_epsilon(accountant, 0.0, 0.05, 50, 1e-4) == math.inf
    assert "NOT private" in privacy.describe(PrivacyRecord(
        epsilon=math.inf, delta=1e-4, target_epsilon=None, noise_multiplier=0.0, max_grad_norm=1.0,
        accountant=accountant, steps=50, sample_rate=0.05, expected_batch_size=5.0, users=100, examples=100))
