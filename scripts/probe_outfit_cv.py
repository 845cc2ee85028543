"""Probe: the outfit cross-validation of ``textguide train`` (textguide/bench/outfit_cv.py) with other settings.

Default mode: the 5-fold CV with a fixed number of steps per fold (instead of the README command's ~50 s per
fold), printing the pooled selection curve (best weights per evaluation), the chosen length and weights, and the
out-of-fold table. Answers "would longer training help?" (``--steps 1500``) and "how much does the number of
question draws per selection outfit change the choice?" (``--draws 1`` vs ``--draws 5`` at ``--steps 400``: the
fold trainings are the same, only the choice differs).

``--serve A``: what to serve after the CV. The validation outfits are cut in two halves; half ``A`` (0 or 1) is
held out, the CV runs on the other half, and on half ``A`` (5 question draws per outfit) it compares the refit
(what ``train`` serves), the uniform average of the five fold models' weights (a "soup"), the average of their
scores (an ensemble), and the fold models one by one.

    python scripts/probe_outfit_cv.py --steps 400 --draws 1      # ~7 min each (NGNN head pre-training ~100 s)
    python scripts/probe_outfit_cv.py --serve 0 --fold-seconds 50  # ~7 min
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace

import numpy as np
import torch

from textguide.bench import outfit_cv, recipes, workflows
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.metrics import fitb_accuracy
from textguide.tasks.outfit import OutfitScores
from textguide.training import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps per fold (without --fold-seconds)")
    parser.add_argument("--fold-seconds", type=float, help="a time budget per fold instead of fixed steps")
    parser.add_argument("--draws", type=int, default=outfit_cv.SELECT_DRAWS,
                        help="FITB question draws per selection outfit")
    parser.add_argument("--serve", type=int, choices=(0, 1), help="hold out this half and compare what to serve")
    args = parser.parse_args()
    torch.set_num_threads(2)
    outfit_cv.SELECT_DRAWS = args.draws
    encoder = load_encoder()
    bench = workflows.prepare("outfit", encoder, EmbeddingCache())
    held: list[list[int]] = []
    if args.serve is not None:  # the CV sees one half of the validation outfits
        valid = outfit_cv.validation_outfits(bench)
        order = np.random.default_rng(123).permutation(len(valid))
        held = [valid[i] for i in order[args.serve::2]]
        rest = [valid[i] for i in order[1 - args.serve::2]]
        n_sel = int(0.3 * len(rest))
        task = copy.copy(bench.task)
        task.valid_outfits = rest[:n_sel]
        bench = replace(bench, task=task, report_outfits=rest[n_sel:])
    t0 = time.time()
    base, _ = workflows.prepared_model(("outfit",), {"outfit": bench}, "hard", 0, encoder.dim, 150)
    print(f"head pre-training: {time.time() - t0:.0f} s", flush=True)
    config = TrainConfig(steps=args.steps if args.fold_seconds is None else 3000, batch_size=128, weighting="dwa",
                         eval_every=100, patience=6, seed=0, max_seconds=args.fold_seconds, select_per_task=False,
                         ema_decay=workflows.EMA_DECAY)
    fold_tasks = []  # the fold tasks keep the weights of every evaluation (for --serve)
    watch = outfit_cv._FoldTask.watch
    outfit_cv._FoldTask.watch = lambda self, s, r: fold_tasks.append(self) or watch(self, s, r)
    cv = outfit_cv.cross_validate_outfits(bench, base, config, folds=5, fold_seconds=args.fold_seconds, seed=0)
    key = str(cv.blend_weight) if not cv.word_weight else f"{cv.blend_weight}+words{cv.word_weight}"
    print("| step | best pooled selection FITB (weights) | the chosen weights |\n|---|---|---|")
    for row in cv.curve:
        value, name = max((v, k) for k, v in row.items() if k != "step")
        print(f"| {row['step']} | {value:.4f} ({name}) | {row[key]:.4f} |")
    print(f"chosen: {cv.refit_steps} steps, blend {cv.blend_weight}, words {cv.word_weight}; "
          f"out-of-fold FITB {cv.hits.mean():.4f} vs text {cv.text_hits.mean():.4f} ({cv.seconds:.0f} s)")
    print(json.dumps(cv.table, indent=1))
    if args.serve is None:
        return
    best_i = int(np.argmax([row[key] for row in cv.curve]))  # the first evaluation with the chosen score

    def served(state: dict[str, torch.Tensor]):
        model = copy.deepcopy(base)
        model.load_state_dict(state)
        model.config.text_blend["outfit"], model.config.outfit_word_weight = cv.blend_weight, cv.word_weight
        return model

    states = [t.log[best_i]["weights"] for t in fold_tasks]
    soup = served({k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) for k, v in states[0].items()})
    refit, _ = outfit_cv.refit_outfits(bench, base, replace(config, max_seconds=None), cv)
    questions = [bench.task.fitb_questions(held, seed=s) for s in range(5)]

    def pairs(model) -> list[np.ndarray]:
        scorer = recipes.outfit_scorer(bench, "text" if model is None else "adapter", model,
                                       word_weight=cv.word_weight if model is None else None)
        return [OutfitScores.of(scorer(p, s), p).pairs(c) for p, s, c in questions]

    def fitb(draws: list[np.ndarray]) -> float:
        return float(np.mean([fitb_accuracy(d, np.zeros(len(d), dtype=np.int64)) for d in draws]))

    folds = [pairs(served(s)) for s in states]
    rows = {"text + word overlap": pairs(None), "refit (served)": pairs(refit),
            "soup of the 5 fold models": pairs(soup),
            "ensemble of the 5 fold models": [np.mean([f[d] for f in folds], 0) for d in range(5)]}
    print(f"| held-out half {args.serve}: {len(held)} outfits, 5 draws | FITB |\n|---|---|")
    for name, p in rows.items():
        print(f"| {name} | {fitb(p):.4f} |")
    print(f"| the fold models one by one (mean) | {np.mean([fitb(f) for f in folds]):.4f} |")


if __name__ == "__main__":
    main()
