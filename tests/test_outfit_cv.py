"""Outfits trained on train + validation outfits, checked by K-fold cross-validation (textguide.bench.outfit_cv)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from textguide.bench import outfit_cv, recipes, workflows
from textguide.tasks.outfit import OutfitTask
from textguide.training import TrainConfig, train
from test_train import model_for, outfit_world


def toy_bench() -> recipes.OutfitBench:
    """The outfit world of test_train as a benchmark: 150 training outfits, 60 selection and 100 report outfits."""
    emb, slots, train_outfits, valid_outfits = outfit_world()
    task = OutfitTask(emb, train_outfits[:150], slots, valid_outfits[:60])
    guide = SimpleNamespace(index=SimpleNamespace(embeddings=emb))  # what the outfit metrics read of a guide
    return recipes.OutfitBench("toy", guide, task, valid_outfits[60:160], ["a", "b", "c"])


CFG = TrainConfig(steps=60, batch_size=32, lr=3e-3, eval_every=20, slot_negatives=8, patience=None, seed=0)


def test_fold_parts_cover_every_outfit_once():
    parts = outfit_cv.fold_parts(23, 5, seed=1)
    assert len(parts) == 5 and sorted(np.concatenate(parts).tolist()) == list(range(23))
    assert {len(p) for p in parts} == {4, 5}
    assert all(np.array_equal(a, b) for a, b in zip(parts, outfit_cv.fold_parts(23, 5, seed=1)))  # seeded
    for folds in (1, 24):
        with pytest.raises(ValueError, match=r"cross-validation needs 2 <= folds <= 23"):
            outfit_cv.fold_parts(23, folds)


def test_each_fold_trains_without_its_held_out_outfits_and_scores_them_once(monkeypatch):
    bench = toy_bench()
    seen = []
    real_train = train

    def spy(model, tasks, config=None, regularizer=None):
        seen.append([list(o) for o in tasks["outfit"].outfits])
        return real_train(model, tasks, config, regularizer)

    monkeypatch.setattr(outfit_cv, "train", spy)
    base = model_for(("outfit",), n_slots=3)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cv = outfit_cv.cross_validate_outfits(bench, base, CFG, folds=4, fold_seconds=None)
    valid = outfit_cv.validation_outfits(bench)
    parts = outfit_cv.fold_parts(len(valid), 4)
    assert len(seen) == 4
    for part, trained_on in zip(parts, seen):  # the training outfits + every other fold, never its own
        others = sorted(set(range(len(valid))) - set(part.tolist()))
        assert sorted(trained_on) == sorted(bench.task.outfits + [valid[i] for i in others])
    # every held-out fold's 70 % part is scored once: 160 validation outfits in folds of 40 -> 28 each
    assert cv.questions == len(cv.hits) == len(cv.text_hits) == 4 * 28
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # the base model is untouched
    # the text baseline is scored on exactly the questions another model would be compared on
    assert np.array_equal(outfit_cv.candidate_hits(bench, None, 4), cv.text_hits)
    assert cv.table["text similarity"]["FITB"] == pytest.approx(cv.text_hits.mean(), abs=0.02)
    assert cv.table[outfit_cv.TRAINED]["FITB"] == pytest.approx(cv.hits.mean(), abs=0.02)
    assert cv.gain == pytest.approx(float((cv.hits - cv.text_hits).mean()))
    # the length and weight are those with the best pooled selection FITB (ties: fewer steps, smaller w)
    assert [row["step"] for row in cv.curve] == [20, 40, 60]  # CFG: 60 steps, evaluated every 20
    best = max((row[str(w)], -i, -w, row["step"]) for i, row in enumerate(cv.curve) for w in outfit_cv.CV_BLEND_GRID)
    assert (cv.refit_steps, cv.blend_weight) == (best[3], -best[2])
    assert cv.hits.mean() > cv.text_hits.mean() + 0.2  # this world's compatibility is invisible to text
    record = cv.to_dict()
    assert record["folds"] == 4 and len(record["per_fold"]) == 4 and "hits" not in record


def test_the_selection_part_is_asked_several_draws_and_the_report_part_one():
    bench = toy_bench()
    (_, sel, rep), *_ = outfit_cv.held_parts(bench, 4)
    task = outfit_cv._FoldTask(bench.task.item_emb, bench.task.outfits, bench.task.item_slots, sel).watch(sel, rep)
    asked_sel, asked_rep = task.watched
    assert len(asked_sel) == outfit_cv.SELECT_DRAWS * len(sel) and asked_rep == rep
    partials, _, cands = task.fitb_questions(asked_sel, seed=0)  # how question_scores draws them
    draws = np.asarray(cands).reshape(outfit_cv.SELECT_DRAWS, len(sel), -1)
    # each pass over the selection outfits is a new draw (another hidden item or other distractors) ...
    assert all(not np.array_equal(draws[0], draws[d]) for d in range(1, outfit_cv.SELECT_DRAWS))
    # ... of the same outfits: every answer belongs to its outfit and the partial is the rest of it
    for q, (partial, row) in enumerate(zip(partials, cands)):
        outfit = sel[q % len(sel)]
        assert row[0] in outfit and sorted(partial + [int(row[0])]) == sorted(outfit)


def test_the_refit_trains_on_every_outfit_for_the_cross_validated_steps(monkeypatch):
    bench = toy_bench()
    calls = []
    real_train = train

    def spy(model, tasks, config=None, regularizer=None):
        calls.append((len(tasks["outfit"].outfits), tasks["outfit"].valid_outfits, config.steps))
        return real_train(model, tasks, config, regularizer)

    monkeypatch.setattr(outfit_cv, "train", spy)
    cv = outfit_cv.OutfitCV(5, 40, 2.0, 0.05, [], {}, 0.1, (0.05, 0.2), 100, 1.0)
    model, result = outfit_cv.refit_outfits(bench, model_for(("outfit",), n_slots=3), CFG, cv)
    assert calls == [(150 + 160, None, 40)]  # train + all 160 validation outfits, the chosen steps, nothing held out
    assert result.best_step == 40 and model.config.text_blend["outfit"] == 2.0
    assert model.config.outfit_word_weight == 0.05


def test_the_cross_validated_outfit_recipe_is_served_only_when_it_beats_text_and_the_incumbent(monkeypatch):
    bench = toy_bench()
    incumbent = model_for(("outfit",), n_slots=3)
    train(incumbent, {"outfit": bench.task}, CFG)
    monkeypatch.setattr(workflows, "pretrain_heads", lambda *a, **k: {})
    monkeypatch.setattr(workflows, "new_model", lambda *a, **k: model_for(("outfit",), n_slots=3))
    other = outfit_cv.candidate_hits(bench, incumbent, 4)  # the incumbent on the same 112 questions
    assert len(other) == 112 and 0 < other.mean() < 1
    fixed = {}

    def fake_cv(bench_, base, config, *, folds, fold_seconds, seed):
        fixed.update(steps=config.steps, fold_seconds=fold_seconds)
        hits = fixed["hits"]
        return outfit_cv.OutfitCV(folds, 40, 1.0, 0.0, [], {outfit_cv.TRAINED: {"FITB": hits.mean()}}, 0.1,
                                  fixed["ci"], 112, 1.0, hits, np.zeros(112))

    monkeypatch.setattr(outfit_cv, "cross_validate_outfits", fake_cv)
    fixed.update(hits=np.ones(112), ci=(0.02, 0.2))  # above text and the incumbent: the refit is served
    won = workflows.outfit_cv_challenger(bench, incumbent, CFG, 0, 64, 0, 4, "multi-task")
    assert won["chosen"]["methods"] == {"outfit": "adapter"} and won["chosen"]["selection"]["text_blend"] == 1.0
    assert won["record"]["served"] == "cross-validated refit" and won["metrics"] == {"FITB": 1.0}
    assert won["trained"][2] == "single-task, train + validation outfits (4-fold CV)"
    assert won["trained"][1].best_step == 40
    assert won["record"]["incumbent"] == {"adapter": "multi-task", "FITB": round(float(other.mean()), 6)}
    below = np.r_[np.ones(int(other.sum()) - 1), np.zeros(113 - int(other.sum()))]
    for hits, ci, incumbent_served in ((np.ones(112), (-0.01, 0.2), False),  # not significantly above text
                                       (below, (0.02, 0.2), False), (below, (0.02, 0.2), True)):  # below incumbent
        fixed.update(hits=hits, ci=ci)  # the incumbent stays
        lost = workflows.outfit_cv_challenger(bench, incumbent, CFG, 0, 64, 0, 4, "multi-task", incumbent_served)
        assert "trained" not in lost and lost["record"]["served"] == "multi-task"
    fixed.update(hits=np.ones(112), ci=(-0.01, 0.2))  # above an incumbent that itself passed the guard: served
    assert "trained" in workflows.outfit_cv_challenger(bench, incumbent, CFG, 0, 64, 0, 4, "multi-task", True)
    # the folds train a step count (the same choice on any machine), capped at twice their even budget share
    assert fixed["steps"] == CFG.steps and fixed["fold_seconds"] is None  # CFG: 60 steps (< FOLD_STEPS), no budget
    monkeypatch.setattr(outfit_cv, "FOLD_STEPS", 40)
    workflows.outfit_cv_challenger(bench, incumbent, replace(CFG, max_seconds=50.0), 0, 64, 0, 4, "multi-task")
    assert fixed["steps"] == 40 and fixed["fold_seconds"] == pytest.approx(2 * 50.0 / 5)  # 4 folds + the refit


def test_evaluate_shows_the_out_of_fold_table_of_a_guide_trained_on_its_report_outfits(guide, enc, tmp_path,
                                                                                      monkeypatch):
    """A guide whose outfit adapter was refit on the validation outfits is not re-scored on them: `evaluate`
    prints the out-of-fold table recorded at training time (and never prepares the benchmark)."""
    from textguide.adapters import AdapterConfig, MultiTaskAdapter

    table = {"text similarity": {"NearDup@10": 0.0, "AUC": 0.63, "FITB": 0.377},
             outfit_cv.TRAINED: {"NearDup@10": 0.0, "AUC": 0.71, "FITB": 0.437}}
    record = outfit_cv.OutfitCV(5, 300, 2.0, 0.05, [], table, 0.06, (0.026, 0.089), 840, 263.0).to_dict()
    record |= {"incumbent": {"adapter": "hard/dwa", "FITB": 0.4155}, "served": "cross-validated refit"}
    guide.set_adapter(MultiTaskAdapter(AdapterConfig(input_dim=enc.dim, dim=16, tasks=("outfit",), n_slots=2)),
                      {"slot_field": "category", "slots": ["Tops", "Shoes"], "cross_validation": record})
    guide.save(tmp_path / "pv")
    monkeypatch.setattr(workflows, "prepare", lambda *a: pytest.fail("must not re-score the report outfits"))
    out = workflows.evaluate_recipe("polyvore", tmp_path / "pv", report_dir=tmp_path / "rep")
    assert out["results"]["outfit"] == {"text similarity": {"FITB": 0.377, "AUC": 0.63, "NearDup@10": 0.0},
                                        outfit_cv.TRAINED: {"FITB": 0.437, "AUC": 0.71, "NearDup@10": 0.0}}
    assert list(out["results"]["outfit"]["text similarity"]) == ["FITB", "AUC", "NearDup@10"]  # the usual order
    md = out["markdown"]
    assert "out-of-fold estimate recorded at training time" in md and "95% CI [+0.0260, +0.0890]" in md
    assert "| text similarity | +15.9% | +12.7% |" in md  # the gain table: .437/.377 - 1, .71/.63 - 1
    assert (tmp_path / "rep" / "report.md").read_text(encoding="utf-8").startswith(md[:40])


def test_cross_validation_chooses_a_word_weight_when_titles_carry_the_signal():
    """Titles that name each item's style (what makes an outfit here): the CV picks a word weight, the refit
    serves it, and the table shows text + words beside text and the recipe."""
    from textguide.words import WordOverlap

    bench = toy_bench()
    n = len(bench.task.item_emb)
    titles = [f"slot{r // 60} style{(r % 60) // 6} item{r}" for r in range(n)]  # outfit_world's item order
    bench.task = OutfitTask(bench.task.item_emb, bench.task.outfits, bench.task.item_slots,
                            bench.task.valid_outfits, words=WordOverlap(titles))
    assert len(outfit_cv.weight_grid(bench.task)) == len(outfit_cv.CV_BLEND_GRID) * len(outfit_cv.CV_WORD_GRID)
    cv = outfit_cv.cross_validate_outfits(bench, model_for(("outfit",), n_slots=3), replace_steps(CFG, 20),
                                          folds=4, fold_seconds=None)
    assert cv.word_weight > 0 and cv.to_dict()["word_weight"] == cv.word_weight
    assert list(cv.table) == ["text similarity", outfit_cv.WORDS, outfit_cv.TRAINED]
    assert cv.table[outfit_cv.WORDS]["FITB"] > cv.table["text similarity"]["FITB"]
    assert any("+words" in key for key in cv.curve[0])
    model, _ = outfit_cv.refit_outfits(bench, model_for(("outfit",), n_slots=3), replace_steps(CFG, 5), cv)
    assert model.config.outfit_word_weight == cv.word_weight


def replace_steps(config: TrainConfig, steps: int) -> TrainConfig:
    from dataclasses import replace

    return replace(config, steps=steps)
