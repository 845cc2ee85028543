"""Outfits trained on train + validation outfits, with the recipe checked by K-fold cross-validation (issue 8).

Polyvore has only 1,111 named training outfits; the 1,195 MCN validation outfits more than double that. To train
on them without losing an honest measure, :func:`cross_validate_outfits` splits the validation outfits into K
folds; for fold k a copy of the (head-pre-trained) model trains on the training outfits plus the other folds,
and every ``eval_every`` steps each of fold k's outfits is scored, for every text blend weight of the grid and,
when the benchmark has item titles, every weight of the title word overlap (:mod:`textguide.words`).
Each fold's outfits are cut 30 / 70: the training length and the two weights are chosen once, on the 30 % parts
of all folds pooled (about 360 outfits, as many as the usual selection split; each asked :data:`SELECT_DRAWS`
questions, so the choice does not hang on which item one draw hid), and the 70 % parts, scored by
models that never saw them and never chose anything on them, give the *out-of-fold* FITB / AUC, side by side with
text similarity on the same questions, and a paired-bootstrap interval of the FITB gain. :func:`refit_outfits`
then trains the served model on the training outfits plus *all* validation outfits for the chosen number of steps,
with the chosen weights.

A guide trained this way records ``cross_validation`` in its adapter metadata: its report split was in its
training data, so ``textguide evaluate`` shows the out-of-fold table instead of re-scoring it.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import decisions
from ..adapters import MultiTaskAdapter
from ..metrics import rank_of_target
from ..tasks import TASKS
from ..tasks.outfit import OutfitTask
from ..training import TrainConfig, TrainResult, train
from . import recipes

logger = logging.getLogger("textguide")

__all__ = ["FOLD_STEPS", "OutfitCV", "candidate_hits", "cross_validate_outfits", "fold_parts", "refit_outfits"]

#: text blend weights tried at every evaluation (score = adapter + w * (text cosine + kind prior))
CV_BLEND_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
#: title word-overlap weights tried with each blend weight (score + v * overlap; only with item titles)
CV_WORD_GRID = (0.0, 0.02, 0.05, 0.1, 0.2)
#: FITB questions drawn per selection outfit (a hidden item and 3 distractors each): the length and the weights are
#: chosen on these, so more draws make the choice less dependent on which item one draw happened to hide
SELECT_DRAWS = 5
#: training steps of each fold in ``textguide train`` (:func:`textguide.bench.workflows.outfit_cv_challenger`): a
#: step count, not seconds, so every machine trains the same fold models and makes the same choice (about the
#: 50 s of the even budget share on 2 quiet cores; the selection FITB peaks near it and falls after 650 steps)
FOLD_STEPS = 350
WORDS = "text similarity + word overlap"
TRAINED = "trained (adapter, cross-validated)"


@dataclass
class OutfitCV:
    """What :func:`cross_validate_outfits` measured (JSON-ready through :meth:`to_dict`)."""

    folds: int
    refit_steps: int  # the training length chosen on the pooled 30 % parts
    blend_weight: float  # the text blend weight chosen with it
    word_weight: float  # the title word-overlap weight chosen with them (0: none)
    per_fold: list[dict[str, Any]]
    table: dict[str, dict[str, float]]  # method -> out-of-fold metrics (the folds' 70 % parts)
    gain: float  # out-of-fold FITB gain of the blended adapter over text similarity
    ci95: tuple[float, float]
    questions: int
    seconds: float
    hits: np.ndarray | None = None  # out-of-fold FITB hits of the blended adapter (for comparisons; not saved)
    text_hits: np.ndarray | None = None
    curve: list[dict[str, float]] | None = None  # pooled selection FITB per evaluation step and weight

    @property
    def serve(self) -> bool:
        """Better than text similarity: the out-of-fold gain's 95 % interval is above 0."""
        return self.questions >= 20 and self.ci95[0] > 0

    def to_dict(self) -> dict[str, Any]:
        return {"folds": self.folds, "refit_steps": self.refit_steps, "blend_weight": self.blend_weight,
                "word_weight": self.word_weight,
                "per_fold": self.per_fold, "table": self.table, "gain": round(self.gain, 6),
                "ci95": [round(v, 6) for v in self.ci95], "questions": self.questions,
                "seconds": round(self.seconds, 1), "selection_curve": self.curve or []}


def fold_parts(n: int, folds: int, seed: int = 0) -> list[np.ndarray]:
    """``folds`` disjoint index arrays covering ``range(n)`` (a seeded permutation, sizes differ by at most 1)."""
    if folds < 2 or folds > n:
        raise ValueError(f"cross-validation needs 2 <= folds <= {n} (the number of validation outfits), got {folds}")
    return np.array_split(np.random.default_rng(seed).permutation(n), folds)


def validation_outfits(bench: recipes.OutfitBench) -> list[list[int]]:
    """Every validation outfit of a benchmark: its selection outfits, then its report outfits."""
    return list(bench.task.valid_outfits or []) + list(bench.report_outfits)


def held_parts(bench: recipes.OutfitBench, folds: int, select_frac: float = 0.3, seed: int = 0
               ) -> list[tuple[list[int], list[list[int]], list[list[int]]]]:
    """Per fold: (indices of the validation outfits it holds out, its selection part, its report part)."""
    outfits = validation_outfits(bench)
    out = []
    for part in fold_parts(len(outfits), folds, seed):
        held = [outfits[i] for i in part]
        n_sel = max(1, int(select_frac * len(held)))
        out.append((part.tolist(), held[:n_sel], held[n_sel:]))
    return out


def word_grid(task: OutfitTask) -> tuple[float, ...]:
    """The word-overlap weights cross-validation tries: none without titles."""
    return CV_WORD_GRID if task.words is not None else (0.0,)


def weight_grid(task: OutfitTask) -> list[tuple[float, float]]:
    """The (text blend, word overlap) weight pairs cross-validation tries."""
    return [(w, v) for w in CV_BLEND_GRID for v in word_grid(task)]


class _FoldTask(OutfitTask):
    """A fold's training task whose validation step also records, for every (blend, word) weight pair, each
    held-out question's FITB hit (selection and report parts) and a snapshot of the weights being validated."""

    def watch(self, select: list[list[int]], report: list[list[int]]) -> "_FoldTask":
        self.watched, self.log = (select * SELECT_DRAWS, report), []  # the rng goes on: a new draw each pass
        self.word_scores = []  # the word overlap of each part's questions (the same questions as per_example)
        for part in self.watched:
            partials, _, cands = self.fitb_questions(part, seed=0)
            self.word_scores.append(self.words.pair_scores(partials, cands) if self.words is not None else 0.0)
        return self

    def valid_metric(self, model: MultiTaskAdapter) -> float | None:
        blend, word = dict(model.config.text_blend), model.config.outfit_word_weight
        entry: dict[Any, Any] = {"weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        model.config.outfit_word_weight = 0.0
        for w in CV_BLEND_GRID:
            model.config.text_blend["outfit"] = w
            scores = [TASKS["outfit"].question_scores(self, model, part) for part in self.watched]
            for v in word_grid(self):
                entry[(w, v)] = [(rank_of_target(s + v * ws, np.zeros(len(s), dtype=np.int64)) < 1).astype(float)
                                 for s, ws in zip(scores, self.word_scores)]
        model.config.text_blend.clear()
        model.config.text_blend.update(blend)
        model.config.outfit_word_weight = word
        self.log.append(entry)
        return float(entry[(0.0, 0.0)][0].mean())


def cross_validate_outfits(bench: recipes.OutfitBench, base: MultiTaskAdapter, config: TrainConfig, *,
                           folds: int = 5, fold_seconds: float | None = 60, select_frac: float = 0.3,
                           seed: int = 0) -> OutfitCV:
    """K-fold cross-validation of "train on the training outfits + the other folds" (module docstring): every
    fold trains for ``config.steps`` steps or ``fold_seconds`` (no early stopping: the length is chosen on the
    pooled selection parts). ``base`` (an outfit model, its head possibly pre-trained) is copied for every fold
    and left unchanged."""
    outfits = validation_outfits(bench)
    t0 = time.time()
    logs, histories, parts = [], [], held_parts(bench, folds, select_frac, seed)
    for k, (_, sel, rep) in enumerate(parts):
        others = [outfits[i] for j, p in enumerate(parts) if j != k for i in p[0]]
        task = _FoldTask(bench.task.item_emb, bench.task.outfits + others, bench.task.item_slots, sel,
                         words=bench.task.words).watch(sel, rep)
        model = copy.deepcopy(base)
        result = train(model, {"outfit": task}, replace(config, max_seconds=fold_seconds, patience=None,
                                                        eval_every=min(config.eval_every, 50),
                                                        select_per_task=False, checkpoint_dir=None, resume=False))
        logs.append(task.log)
        histories.append([int(row["step"]) for row in result.history])
        logger.info("outfit CV fold %d/%d: %d steps, %d training outfits", k + 1, folds, histories[-1][-1],
                    len(task.outfits))
    n_evals = min(len(h) for h in histories)

    def pooled(i: int, wv: tuple[float, float], which: int) -> np.ndarray:
        return np.concatenate([log[i][wv][which] for log in logs])

    grid = weight_grid(bench.task)
    curve = [{"step": int(np.median([h[i] for h in histories])),
              **{(str(w) if not v else f"{w}+words{v}"): round(float(pooled(i, (w, v), 0).mean()), 6)
                 for w, v in grid}} for i in range(n_evals)]
    best_i, (best_w, best_v) = max(((i, wv) for i in range(n_evals) for wv in grid),
                                   key=lambda iwv: (pooled(iwv[0], iwv[1], 0).mean(), -iwv[0], -iwv[1][0],
                                                    -iwv[1][1]))
    hits = pooled(best_i, (best_w, best_v), 1)
    text_hits = candidate_hits(bench, None, folds, select_frac, seed)

    sums: dict[str, dict[str, float]] = {"text similarity": {}, **({WORDS: {}} if best_v else {}), TRAINED: {}}
    per_fold = []
    for k, ((_, sel, rep), log) in enumerate(zip(parts, logs)):
        model = copy.deepcopy(base)
        model.load_state_dict(log[best_i]["weights"])
        model.config.text_blend["outfit"] = best_w
        model.config.outfit_word_weight = best_v
        fold_bench = replace(bench, report_outfits=rep)
        rows = {"text similarity": recipes.evaluate_outfits(fold_bench, recipes.outfit_scorer(fold_bench, "text"))}
        if best_v:  # the word overlap alone on top of text: what the trained part adds beyond it
            rows[WORDS] = recipes.evaluate_outfits(fold_bench, recipes.outfit_scorer(fold_bench, "text",
                                                                                     word_weight=best_v))
        rows[TRAINED] = recipes.evaluate_outfits(fold_bench, recipes.outfit_scorer(fold_bench, "adapter", model))
        for name, metrics in rows.items():
            for key, value in metrics.items():
                sums[name][key] = sums[name].get(key, 0.0) + value * len(rep)
        per_fold.append({"fold": k, "select": len(sel), "report": len(rep), "steps": histories[k][best_i],
                         **{f"{name}/{key}": round(v, 4) for name, m in rows.items() for key, v in m.items()}})
    n_rep = sum(len(rep) for _, _, rep in parts)
    table = {name: {key: round(v / n_rep, 6) for key, v in m.items()} for name, m in sums.items()}
    lo, hi = decisions.paired_bootstrap(hits - text_hits, seed=seed)
    steps = int(np.median([h[best_i] for h in histories]))
    cv = OutfitCV(folds, max(1, steps), float(best_w), float(best_v), per_fold, table,
                  float((hits - text_hits).mean()), (lo, hi), len(hits), time.time() - t0, hits, text_hits, curve)
    logger.warning("outfit CV (%d folds, %.0f s): chose %d steps, w=%g, words %g on %d pooled selection outfits; "
                   "out-of-fold FITB %.4f vs text %.4f on %d outfits, CI of the gain [%+.4f, %+.4f]", folds,
                   cv.seconds, cv.refit_steps, best_w, best_v, sum(len(sel) for _, sel, _ in parts), hits.mean(),
                   text_hits.mean(), len(hits), lo, hi)
    return cv


def refit_outfits(bench: recipes.OutfitBench, base: MultiTaskAdapter, config: TrainConfig, cv: OutfitCV
                  ) -> tuple[MultiTaskAdapter, TrainResult]:
    """A copy of ``base`` trained on the training outfits + every validation outfit for ``cv.refit_steps``
    steps (no early stopping: nothing is held out), with the cross-validated text blend and word weights."""
    task = OutfitTask(bench.task.item_emb, bench.task.outfits + validation_outfits(bench), bench.task.item_slots,
                      words=bench.task.words)
    model = copy.deepcopy(base)
    result = train(model, {"outfit": task}, replace(config, steps=cv.refit_steps, max_seconds=None,
                                                    select_per_task=False, checkpoint_dir=None, resume=False))
    model.config.text_blend["outfit"] = cv.blend_weight
    model.config.outfit_word_weight = cv.word_weight
    return model, result


def candidate_hits(bench: recipes.OutfitBench, model: MultiTaskAdapter | None, folds: int, select_frac: float = 0.3,
                   seed: int = 0) -> np.ndarray:
    """Another outfit model's FITB hits (text similarity for None) on the out-of-fold questions of
    :func:`cross_validate_outfits` (each fold's report part, in fold order), to compare it with the recipe."""
    return np.concatenate([TASKS["outfit"].per_example(bench.task, model, rep)
                           for _, _, rep in held_parts(bench, folds, select_frac, seed)])
