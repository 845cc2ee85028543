#!/usr/bin/env python3
"""Multi-task benchmark: recommendation (Amazon Scientific), outfits (Polyvore) and coupons (Complete Journey).

In one run: baselines (popularity, text similarity without adapters, LightGBM on the coupon hybrid's features),
the single-task adapter for every task (recommendation also as the ensemble ``textguide train`` serves), and
multi-task configurations (hard / soft / experts sharing, static / uncertainty / GradNorm / DWA weighting), each
reported per metric against single-task, with the multi-task gain Delta_m. Coupon rows of trained models are the
served hybrid (priors + household activity + adapter).
Training keeps a moving average of the weights (``--ema``, textguide train's default), and the outfit recipe that
``textguide train`` also tries, trained on train + validation outfits, is measured by 5-fold cross-validation
(``--outfit-folds``; a table of its own: its out-of-fold questions are not the report split). The best model per
dataset is saved in a loadable guide directory:

    indexes/amazon-scientific   indexes/polyvore   indexes/completejourney

    python scripts/bench_multitask.py                       # everything (about an hour on 2 cores)
    python scripts/bench_multitask.py --budget 60 --configs hard-static   # quick check
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


from textguide.bench import coupons as coupon_tables
from textguide.bench import recipes
from textguide.adapters import MultiTaskAdapter
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.evaluate import multitask_gain
from textguide.training import TrainConfig, train
from textguide.bench.workflows import (EMA_DECAY, SELECT_METRIC, choose_text_blend, evaluate_model, guide_meta,
                                      RECOMMEND_MEMBERS, md_table, new_model, plot_curves, prepared_model,
                                      serving_choice, train_members)
from textguide.bench import outfit_cv

logger = logging.getLogger("textguide")

ANCHORS = {
    "recommend": "Published (Scientific test split, UniSRec/VQ-Rec papers): SASRec R@10 .1080 N@10 .0553; "
    "UniSRec text-only .1188/.0641; UniSRec text+ID .1235/.0634; VQ-Rec .1211/.0643",
    "outfit": "Published (MCN paper, Polyvore-T, images+text): FITB 64.35%, compatibility AUC 0.919",
}
DATASET = {"recommend": "amazon-scientific", "outfit": "polyvore", "coupon": "completejourney"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=240, help="seconds of training per task per run")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--configs", default="hard-static,soft-static,experts-static,hard-uncertainty,hard-gradnorm,hard-dwa")
    ap.add_argument("--tasks", default="recommend,outfit,coupon")
    ap.add_argument("--out", default="indexes")
    ap.add_argument("--report", default="reports/multitask")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    ap.add_argument("--no-uci", dest="uci", action="store_false", help="skip the UCI in-vehicle coupon table")
    ap.add_argument("--no-amexpert", dest="amexpert", action="store_false", help="skip the AmExpert 2019 table")
    ap.add_argument("--ema", type=float, default=EMA_DECAY, help="TrainConfig.ema_decay (textguide train's default)")
    ap.add_argument("--outfit-folds", type=int, default=5,
                    help="also cross-validate the outfit recipe trained on train + validation outfits, as "
                         "`textguide train` does (0: skip)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    tasks = tuple(args.tasks.split(","))
    report_dir = Path(args.report)
    report_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    enc, cache = load_encoder(precision=args.precision), EmbeddingCache()
    benches: dict = {}
    prep_time = {}
    for task, prep in (("recommend", recipes.prepare_scientific), ("outfit", recipes.prepare_polyvore),
                       ("coupon", recipes.prepare_completejourney)):
        if task in tasks:
            t = time.time()
            benches[task] = prep(enc, cache)
            prep_time[task] = time.time() - t
            logger.info("prepared %s in %.0fs: %s", task, prep_time[task], benches[task].info)

    results: dict[str, dict[str, dict[str, float]]] = {t: {} for t in tasks}
    timing: dict[str, float] = {}
    # ---- baselines
    if "recommend" in tasks:
        b = benches["recommend"]
        for m in ("popularity", "text"):
            results["recommend"][m] = recipes.evaluate_sequences(b, recipes.sequence_scores(b, m))
    if "outfit" in tasks:
        b = benches["outfit"]
        results["outfit"]["text"] = recipes.evaluate_outfits(b, recipes.outfit_scorer(b, "text"))
    if "coupon" in tasks:
        results["coupon"].update(recipes.coupon_baselines(benches["coupon"], args.seed))

    models: dict[str, tuple[MultiTaskAdapter, dict]] = {}
    curves: dict[str, list[dict]] = {}

    def run(name: str, run_tasks: tuple[str, ...], sharing: str, weighting: str, members: int = 1) -> None:
        cfg = TrainConfig(steps=args.steps, batch_size=128, lr=1e-3, weighting=weighting, eval_every=100,
                          patience=6, seed=args.seed, max_seconds=args.budget * len(run_tasks) * members,
                          show_progress=False, ema_decay=args.ema)
        t = time.time()
        if members > 1:  # textguide train's recommendation ensemble: members trained apart, then joined
            model, res = train_members(benches["recommend"], cfg, sharing, args.seed, enc.dim, members)
        else:
            model = new_model(run_tasks, sharing, args.seed)
            res = train(model, {t_: benches[t_].task for t_ in run_tasks}, cfg)
        timing[name] = time.time() - t
        curves[name] = res.history
        curves.update({f"{name} member {i}": m.history for i, m in enumerate(res.members)})
        blend_select = {t_: choose_text_blend(benches[t_], t_, model) for t_ in run_tasks if t_ in SELECT_METRIC}
        ev = evaluate_model(benches, model, run_tasks)
        if run_tasks == ("coupon",):  # the adapter's own score, before the hybrid adds the priors
            b = benches["coupon"]
            results["coupon"]["single-task adapter alone (no priors)"] = recipes.evaluate_coupons(
                b, recipes.coupon_scores(b, "adapter", b.report, model))
        for t_ in run_tasks:
            results[t_][name] = ev[t_]
        select = {**res.best_metrics, **{t_: v["selection"]["adapter"] for t_, v in blend_select.items()}}
        models[name] = (model, {"best_step": res.best_step, "select": select, "seconds": timing[name],
                                "text_blend": dict(model.config.text_blend)})
        logger.info("%s: %.0fs, best step %d, %s", name, timing[name], res.best_step, ev)

    for t_ in tasks:
        run(f"single-task ({t_})", (t_,), "hard", "static")
    if "recommend" in tasks and RECOMMEND_MEMBERS > 1:  # what textguide train serves for recommendation
        run(f"single-task ensemble of {RECOMMEND_MEMBERS} (recommend)", ("recommend",), "hard", "static",
            RECOMMEND_MEMBERS)
    if len(tasks) > 1:
        for c in args.configs.split(","):
            sharing, weighting = c.split("-")
            run(f"multi {sharing}/{weighting}", tasks, sharing, weighting)

    # ---- outfits trained on train + validation outfits, 5-fold cross-validated (textguide train's challenger)
    cv_lines: list[str] = []
    if "outfit" in tasks and args.outfit_folds >= 2:
        b, t = benches["outfit"], time.time()
        base, _ = prepared_model(("outfit",), {"outfit": b}, seed=args.seed)
        cfg = TrainConfig(steps=min(args.steps * 10, outfit_cv.FOLD_STEPS), batch_size=128, eval_every=100,
                          seed=args.seed, ema_decay=args.ema, show_progress=False)  # as in textguide train
        cv = outfit_cv.cross_validate_outfits(b, base, cfg, folds=args.outfit_folds,
                                              fold_seconds=2 * args.budget / 5, seed=args.seed)
        timing[f"outfit {args.outfit_folds}-fold CV (train + validation outfits)"] = time.time() - t
        same = {n: outfit_cv.candidate_hits(b, m[0], args.outfit_folds, seed=args.seed).mean()
                for n, m in models.items() if "outfit" in m[0].config.tasks}
        cv_lines = [f"## outfit — {args.outfit_folds}-fold cross-validation, trained on train + validation outfits",
                    "", f"Each fold trains on the training outfits + the other folds ({cfg.steps} steps, at most "
                    f"{2 * args.budget / 5:.0f} s), the "
                    f"length ({cv.refit_steps} steps), blend weight (w = {cv.blend_weight:g}) and title word-overlap "
                    f"weight (v = {cv.word_weight:g}) are chosen on the "
                    f"folds' 30 % parts pooled; the table is the folds' other 70 % ({cv.questions} outfits), scored "
                    f"by models that never saw them. FITB gain over text {cv.gain:+.4f}, 95 % CI "
                    f"[{cv.ci95[0]:+.4f}, {cv.ci95[1]:+.4f}].", "",
                    md_table(list(cv.table.items()), list(cv.table["text similarity"])), "",
                    "FITB of the models above (trained on the training outfits only) on the same "
                    f"{cv.questions} questions: " + ", ".join(f"{n} {v:.4f}" for n, v in same.items()), ""]
        results["outfit_cv"] = cv.table

    # ---- two more coupon datasets, single-task: UCI in-vehicle (by driver) and AmExpert 2019 (by campaign)
    extra: dict[str, tuple[str, dict[str, dict[str, float]], dict]] = {}
    for name, make, wanted in (("uci", coupon_tables.uci_table, args.uci),
                               ("amexpert", coupon_tables.amexpert_table, args.amexpert)):
        if wanted:
            t = time.time()
            extra[name] = make(enc, cache, args.budget, args.seed)
            timing[f"{name} (baselines + coupon adapter + hybrid)"] = time.time() - t

    # ---- tables
    lines = [f"# Multi-task results ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python scripts/bench_multitask.py {' '.join(sys.argv[1:])}`; "
             f"2-core CPU; total {time.time() - t0:.0f}s.", ""]
    gains = {}
    for t_ in tasks:
        single = results[t_][f"single-task ({t_})"]
        metrics = list(single)
        rows = list(results[t_].items())
        lines += [f"## {t_} — {DATASET[t_]} ({json.dumps(benches[t_].info)})", "", md_table(rows, metrics), ""]
        if t_ in ANCHORS:
            lines += [ANCHORS[t_], ""]
    single = {t_: results[t_][f"single-task ({t_})"] for t_ in tasks}
    # Delta_m over the quality metrics; NearDup@10 is a diagnostic (often 0, so no relative change exists)
    diagnostic = {"NearDup@10"}
    single_q = {t_: {k: v for k, v in m.items() if k not in diagnostic} for t_, m in single.items()}
    for name in models:
        if name.startswith("multi"):
            multi = {t_: {k: v for k, v in results[t_][name].items() if k not in diagnostic} for t_ in tasks}
            gains[name] = multitask_gain(multi, single_q)
    if gains:
        lines += ["## Multi-task gain Delta_m (mean relative improvement over single-task; negative = worse)", "",
                  "| configuration | Delta_m | training seconds |", "|---|---|---|"]
        lines += [f"| {n} | {g:+.2%} | {timing[n]:.0f} |" for n, g in gains.items()]
        lines.append("")
    lines += cv_lines
    for title, rows, info in extra.values():
        best, gain = coupon_tables.best_baseline_gain(rows)
        lines += [f"## coupon — {title} ({json.dumps(info, default=str)})", "",
                  md_table(list(rows.items()), list(next(iter(rows.values())))), "",
                  f"Hybrid AUC vs the best baseline ({best}): {gain:+.2%}", ""]
    lines += ["## Training time (seconds, this machine)", "", "| run | seconds | best step |", "|---|---|---|"]
    lines += [f"| {n} | {timing[n]:.0f} | {models[n][1]['best_step'] if n in models else ''} |" for n in timing]
    lines += ["", f"Data preparation (embedding with the cache): {json.dumps({k: round(v) for k, v in prep_time.items()})}"]
    text = "\n".join(lines)
    print(text)
    (report_dir / "results.md").write_text(text + "\n")
    (report_dir / "results.json").write_text(json.dumps(
        {"results": results, "gains": gains, "timing": timing, "curves": curves,
         "coupons_extra": {k: rows for k, (_, rows, _) in extra.items()}, "info": {t_: benches[t_].info for t_ in tasks}}, indent=1, default=float))
    plot_curves(curves, report_dir / "curves.png")

    # ---- save the best model per dataset (by the selection metric) into its guide
    for t_ in tasks:
        cands = [(n, m) for n, m in models.items() if t_ in m[0].config.tasks]
        best_name, (best_model, meta) = max(cands, key=lambda nm: nm[1][1]["select"].get(t_, -1.0))
        b = benches[t_]
        b.guide.set_adapter(best_model, {**guide_meta(t_, b, best_model), **serving_choice(b, t_, best_model, args.seed), "trained_as": best_name, "report_metrics": results[t_][best_name],
                                         "train": meta})
        path = Path(args.out) / DATASET[t_]
        b.guide.save(path)
        logger.info("saved %s (%s) -> %s", DATASET[t_], best_name, path)


if __name__ == "__main__":
    main()
