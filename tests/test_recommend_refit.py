"""The recommendation adapter `textguide train` serves: an ensemble of members trained apart
(textguide.bench.workflows.train_members, textguide.adapters.ensemble), optionally refit on the training
examples plus every user's validation item (refit_recommend), and how `train` / `evaluate` report it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from textguide.bench import recipes, workflows
from textguide.encoder import HashingEncoder
from textguide.guide import Guide
from textguide.tasks.recommend import SequenceTask
from textguide.training import TrainConfig, train
from test_reliability import _fake_scientific
from test_train import model_for, sequence_world, walks


def toy_bench() -> recipes.SequenceBench:
    """The sequence world of test_train as a benchmark: 300 training, 60 selection and 80 report examples."""
    rng, _, cluster, emb, successor = sequence_world(0)
    hist, targ = walks(rng, cluster, successor, 440)
    task = SequenceTask(emb, hist[:300], targ[:300], hist[300:360], targ[300:360])
    guide = SimpleNamespace(index=SimpleNamespace(embeddings=emb))  # what the sequence metrics read of a guide
    return recipes.SequenceBench("toy", guide, task, hist[360:], np.array(targ[360:]), np.ones(len(emb), np.float32))


CFG = TrainConfig(steps=60, batch_size=32, lr=3e-3, eval_every=20, patience=None, seed=0, ema_decay=0.9)


def test_members_are_trained_apart_with_their_own_seed_budget_and_checkpoints_then_joined(monkeypatch, tmp_path):
    from textguide.adapters import encode_items, ensemble
    from textguide.tasks import TASKS
    from textguide.tasks.recommend import recommend_queries

    bench = toy_bench()
    calls = []

    def spy(model, tasks, config=None, regularizer=None):
        calls.append((config.seed, config.max_seconds, config.checkpoint_dir))
        return train(model, tasks, config, regularizer)

    monkeypatch.setattr(workflows, "train", spy)
    monkeypatch.setattr(workflows, "new_model", lambda tasks, sharing="hard", seed=0, input_dim=384, members=1:
                        model_for(tasks, seed_=seed))
    cfg = replace(CFG, max_seconds=60.0, checkpoint_dir=str(tmp_path))
    model, result = workflows.train_members(bench, cfg, "hard", 5, 64, 2)
    assert calls == [(5, 30.0, str(tmp_path / "member0")), (6, 30.0, str(tmp_path / "member1"))]
    assert model.config.members == 2 and len(result.members) == 2
    assert result.best_metrics["recommend"] == pytest.approx(TASKS["recommend"].validate(bench.task, model))
    assert result.best_step == max(r.best_step for r in result.members)
    emb, hists = bench.task.item_emb, bench.report_histories[:5]
    alone = [recommend_queries(m, emb, hists) @ encode_items(m, emb, "recommend").T for m in model.members]
    joined = recommend_queries(model, emb, hists) @ encode_items(model, emb, "recommend").T
    np.testing.assert_allclose(joined, np.mean(alone, axis=0), atol=1e-5)
    with pytest.raises(ValueError, match="an ensemble needs at least 2 models, got 1"):
        ensemble([model.members[0]])
    with pytest.raises(ValueError, match="model 1 of the ensemble has another configuration than model 0"):
        ensemble([model.members[0], model_for(("recommend",), dim=16)])


def test_the_refit_task_holds_the_training_selection_and_report_examples_in_order_and_no_validation():
    bench = toy_bench()
    task = bench.refit_task()
    t = bench.task
    assert task.histories == t.histories + t.valid_histories + bench.report_histories
    assert task.targets.tolist() == t.targets.tolist() + t.valid_targets.tolist() + bench.report_targets.tolist()
    assert task.valid_histories is None and task.valid_targets is None and len(task) == 440


def test_the_refit_trains_a_fresh_single_task_adapter_on_every_example_for_the_best_step(monkeypatch):
    bench = toy_bench()
    served = model_for(("recommend",))
    result = train(served, {"recommend": bench.task}, CFG)
    served.config.text_blend["recommend"] = 0.5
    calls = []

    def spy(model, tasks, config=None, regularizer=None):
        task = tasks["recommend"]
        calls.append((len(task), task.valid_histories, config.steps, config.max_seconds, config.ema_decay,
                      sum(float(p.detach().abs().sum()) for p in model.parameters())))
        return train(model, tasks, config, regularizer)

    monkeypatch.setattr(workflows, "train", spy)
    monkeypatch.setattr(workflows, "new_model", lambda tasks, sharing="hard", seed=0, input_dim=384, members=1:
                        model_for(tasks, members=members))
    model, refit, record = workflows.refit_recommend(bench, served, result, CFG, "hard", 0, 64)
    fresh = sum(float(p.detach().abs().sum()) for p in model_for(("recommend",)).parameters())
    best = result.task_best_steps.get("recommend", result.best_step)
    steps = round(best * 440 / 300)  # as many epochs as the first run took to its best validation
    assert 0 < best <= 60 and steps > best
    # every example, nothing held out, those epochs, no time cap, the same averaging, a fresh start
    assert calls == [(440, None, steps, None, 0.9, pytest.approx(fresh))]
    assert refit.history[-1]["step"] == steps and model is not served
    assert model.config.text_blend["recommend"] == 0.5 and model.config.tasks == ("recommend",)
    assert record["examples"] == 440 and record["added"] == 140 and record["steps"] == [steps]
    assert record["first_run_steps"] == [best]


def test_train_serves_the_refit_reports_the_run_before_it_and_evaluate_does_not_rescore_it(tmp_path: Path,
                                                                                         monkeypatch):
    _fake_scientific(tmp_path / "data")
    monkeypatch.setenv("TEXTGUIDE_DATA", str(tmp_path / "data"))
    enc = HashingEncoder(384)
    seen = []
    real_train, real_choice = workflows.train, workflows.serving_choice
    adapter_wins = {"on": True}  # the tiny data's guard would serve text similarity, and then nothing is refit

    def choice(bench, task, model, seed=0):
        out = real_choice(bench, task, model, seed)
        return {**out, "methods": {task: "adapter"}} if adapter_wins["on"] else out

    monkeypatch.setattr(workflows, "serving_choice", choice)
    monkeypatch.setattr(workflows, "train", lambda m, t, c=None, r=None: seen.append(len(t["recommend"]))
                        or real_train(m, t, c, r))
    first = workflows.train_recipe("amazon-scientific", tmp_path / "plain", steps=20, max_seconds=30, encoder=enc)
    refit = workflows.train_recipe("amazon-scientific", tmp_path / "refit", steps=20, max_seconds=30, encoder=enc,
                                   refit=True)
    # two ensembles of two members on 24 users x 4 training examples; the refit adds each user's validation item
    assert seen == [96, 96, 96, 96, 96 + 24, 96 + 24]
    assert refit["results"] == first["results"]  # the report metrics are the run's before its refit
    plain, served = Guide.load(tmp_path / "plain", encoder=enc), Guide.load(tmp_path / "refit", encoder=enc)
    assert "refit" not in plain.adapter_meta
    rec = served.adapter_meta["refit"]
    assert rec["examples"] == 120 and rec["added"] == 24 and len(rec["first_run_steps"]) == workflows.RECOMMEND_MEMBERS
    assert rec["steps"] == [round(s * 120 / 96) for s in rec["first_run_steps"]]
    assert served.adapter.config.members == workflows.RECOMMEND_MEMBERS
    assert served.adapter_meta["trained_as"].endswith("refit on train + validation")
    assert any((a != b).any() for a, b in zip(plain.adapter.state_dict().values(),
                                              served.adapter.state_dict().values()))

    adapter_wins["on"] = False  # a guide that serves text similarity: its adapter is not refit
    seen.clear()
    workflows.train_recipe("amazon-scientific", tmp_path / "text", steps=20, max_seconds=30, encoder=enc, refit=True)
    text = Guide.load(tmp_path / "text", encoder=enc)
    assert seen == [96, 96] and "refit" not in text.adapter_meta and text.adapter_meta["methods"]["recommend"] == "text"

    stored = served.adapter_meta["report_metrics"]
    monkeypatch.setattr(workflows, "evaluate_model", lambda *a, **k: pytest.fail("must not re-score the refit"))
    out = workflows.evaluate_recipe("amazon-scientific", tmp_path / "refit", report_dir=tmp_path / "rep")
    rows = out["results"]["recommend"]
    name = "trained (adapter, before its refit, recorded at training)"
    assert list(rows) == ["popularity", "text similarity", name]
    assert rows[name] == {k: stored[k] for k in rows["text similarity"]}
    assert list(rows[name]) == ["Recall@10", "NDCG@10", "Recall@50", "NDCG@50"]  # the usual order, not sorted
    assert "24 examples added" in out["markdown"] and "not re-scored" in out["markdown"]

