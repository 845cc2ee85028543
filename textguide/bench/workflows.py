"""End-to-end workflows behind ``textguide train`` and ``textguide evaluate`` on the benchmark datasets."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import decisions
from . import recipes
from ..adapters import AdapterConfig, MultiTaskAdapter
from ..coupon_hybrid import CouponHybrid
from ..encoder import EmbeddingCache, TextEncoder, load_encoder
from ..guide import Guide
from ..tasks import TASKS
from ..tasks.coupon import CouponTask
from ..tasks.outfit import attach_kind_prior
from ..training import TrainConfig, TrainResult, train

logger = logging.getLogger("textguide")

#: recipe name -> the task it trains
RECIPE_TASK = {"amazon-scientific": "recommend", "polyvore": "outfit", "completejourney": "coupon"}
TASK_RECIPE = {v: k for k, v in RECIPE_TASK.items()}


def _tasks_of(recipe: str) -> tuple[str, ...]:
    if recipe == "all":
        return tuple(RECIPE_TASK.values())
    if recipe not in RECIPE_TASK:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPE_TASK)} or all")
    return (RECIPE_TASK[recipe],)


PREPARE = {"recommend": recipes.prepare_scientific, "outfit": recipes.prepare_polyvore,
           "coupon": recipes.prepare_completejourney}


def prepare(task: str, encoder: TextEncoder, cache: EmbeddingCache | None) -> Any:
    """The benchmark of one task (guide + training task + report split)."""
    return PREPARE[task](encoder, cache)


#: rank of the outfit head's slot-pair projections (type-aware compatibility); chosen on MCN validation
OUTFIT_PAIR_RANK = 16
#: moving average of the weights that training validates and keeps (TrainConfig.ema_decay); chosen on the
#: Scientific selection users (scripts/rec_levers.py --ema: 0 / .99 / .998 -> Recall@10 .1440 / .1511 / .1552)
EMA_DECAY = 0.998
#: a single-task recommendation adapter is an ensemble of this many (AdapterConfig.members), trained for this many
#: times the budget; chosen on the Scientific selection users (RESULTS: two seeds' mean cosine vs each alone)
RECOMMEND_MEMBERS = 2


def new_model(tasks: tuple[str, ...], sharing: str = "hard", seed: int = 0, *,
              input_dim: int = 384, members: int = 1) -> MultiTaskAdapter:
    """A fresh adapter for these benchmark tasks (``input_dim``: the encoder's dimension, MiniLM's by default;
    128-d adapted space, last 20 items read; coupon profiles are encoded text, so of the same dimension;
    the outfit head is type-aware, :data:`OUTFIT_PAIR_RANK`; ``members``: an ensemble, recommendation only)."""
    import torch

    torch.manual_seed(seed)
    return MultiTaskAdapter(AdapterConfig(
        input_dim=input_dim, dim=128, max_history=20, sharing=sharing, tasks=tasks,  # type: ignore[arg-type]
        n_slots=len(recipes.POLYVORE_SLOTS) if "outfit" in tasks else 0,
        profile_dim=input_dim if "coupon" in tasks else 0,
        outfit_pair_rank=OUTFIT_PAIR_RANK if "outfit" in tasks else 0, members=members,
    ))


def pretrain_heads(model: MultiTaskAdapter, benches: dict[str, Any], tasks: tuple[str, ...], *, seed: int = 0,
                   steps: int = 2000, max_seconds: float | None = 150) -> dict[str, Any]:
    """Pre-train each task head that has pre-training data (``bench.pretrain``: polyvore's NGNN outfits of
    category names) before the main training. Only that task's head and logit scale learn here (the shared item
    adapter is frozen, so the other tasks start where they would); the best step on the pre-training
    validation outfits is kept. Returns {task: {"best_step", "valid", "seconds"}}."""
    out: dict[str, Any] = {}
    for t in tasks:
        data = getattr(benches[t], "pretrain", None)
        if data is None:
            continue
        head = (TASKS[t].head_name + ".", "logit_scale." + t)
        frozen = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(head)]
        for p in frozen:
            p.requires_grad_(False)
        t0 = time.time()
        try:
            result = train(model, {t: data}, TrainConfig(steps=steps, batch_size=128, eval_every=100, patience=4,
                                                         seed=seed, max_seconds=max_seconds))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        out[t] = {"outfits": len(data), "best_step": result.best_step, "valid": result.best_metrics.get(t),
                  "seconds": round(time.time() - t0, 1)}
        logger.info("%s: head pre-trained on %d outfits (%s)", t, len(data), out[t])
    return out


def evaluate_model(benches: dict[str, Any], model: MultiTaskAdapter, tasks: tuple[str, ...],
                   hybrid: CouponHybrid | None = None) -> dict[str, dict[str, float]]:
    """Each task's report-split metrics for a trained adapter (coupons: the served hybrid score)."""
    return {t: benches[t].report_metrics(model, hybrid) for t in TASKS if t in tasks}


def selection_per_example(bench: Any, task: str, model: MultiTaskAdapter | None) -> np.ndarray:
    """Each selection example's headline metric, 0/1 (recommend: the target in the top 10 of the full
    ranking; outfit: the FITB answer strictly above its distractors), for the adapter (text if None)."""
    if task not in SELECT_METRIC:
        raise ValueError(f"per-example selection metrics exist for {', '.join(SELECT_METRIC)}, not {task!r}")
    return TASKS[task].per_example(bench.task, model)


def selection_metrics(bench: Any, task: str, model: MultiTaskAdapter | None) -> float:
    """The task's headline metric on its *selection* split for the adapter (or text similarity if None)."""
    if bench.task.kind != task:
        raise ValueError(f"the benchmark {bench.name!r} is a {bench.task.kind!r} benchmark, not {task!r}")
    return bench.selection_metric(model)


BLEND_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
#: the tasks whose served score may blend in text similarity (those with a per-example selection metric), and
#: the metric their guard selects on
SELECT_METRIC = {t: task.select_metric for t, task in TASKS.items() if hasattr(task, "per_example")}


def choose_text_blend(bench: Any, task: str, model: MultiTaskAdapter, grid: tuple[float, ...] = BLEND_GRID,
                      seed: int = 0) -> dict[str, Any]:
    """Pick the text blend (score = adapter + w * text cosine) and whether ``method='auto'`` serves it.

    Cross-fitted on the selection examples: they are split in two halves; ``w`` is picked on each half and
    scored on the other, so every example is scored by a blend chosen without it. The blended adapter replaces
    text similarity only when that held-out gain is significant (95 % paired-bootstrap interval over the
    examples above 0). The served ``w`` is then picked on all selection examples. Sets
    ``model.config.text_blend[task]`` and returns the ``methods`` / ``selection`` entries for the guide.
    """
    text = selection_per_example(bench, task, None).astype(float)
    per_w = {}
    for w in grid:
        model.config.text_blend[task] = w
        per_w[w] = selection_per_example(bench, task, model).astype(float)

    def pick(mask: np.ndarray) -> float:
        return max(grid, key=lambda w: (per_w[w][mask].mean(), -w))

    first = decisions.split_users(len(text), 0.5, seed)
    held_out = np.empty_like(text)
    picks = []
    for half in (first, ~first):
        w = pick(half)
        held_out[~half] = per_w[w][~half]
        picks.append(w)
    best = pick(np.ones(len(text), dtype=bool))
    model.config.text_blend[task] = best
    metric = SELECT_METRIC[task]
    diff = held_out - text
    lo, hi = decisions.paired_bootstrap(diff, seed=seed)
    serve = len(text) >= 20 and lo > 0
    verdict = (f"{'served the adapter' if serve else 'kept text'}: the cross-fitted blend scores {metric} "
               f"{held_out.mean():.4f} vs text {text.mean():.4f} on {len(text)} held-out examples, "
               f"95% CI of the gain [{lo:+.4f}, {hi:+.4f}]")
    choice = "adapter" if serve else "text"
    logger.info("%s: text blend weight %g; serving %s (%s)", task, best, choice, verdict)
    guard = {"metric": metric, "examples": len(text), "weights_picked_per_half": picks,
             "held_out": {"adapter": round(float(held_out.mean()), 6), "text": round(float(text.mean()), 6)},
             "gain": round(float(diff.mean()), 6), "ci95": [round(lo, 6), round(hi, 6)], "switched": serve,
             "verdict": verdict, "observed_at": decisions.now()}
    return {"methods": {task: choice},
            "selection": {"adapter": float(per_w[best].mean()), "text": float(text.mean()), "text_blend": best,
                          "blend_grid": {str(w): round(float(per_w[w].mean()), 6) for w in grid},
                          "guard": guard}}


def preferred_method(bench: Any, task: str, model: MultiTaskAdapter) -> dict[str, Any]:
    """Guard against serving an adapter that validates worse than plain text similarity: compare both on the
    selection split and record which one ``Guide`` should use by default (``method='auto'``)."""
    adapter, text = selection_metrics(bench, task, model), selection_metrics(bench, task, None)
    choice = "adapter" if adapter >= text else "text"
    if choice == "text":
        logger.warning("%s: the adapter validates below text similarity (%.4f < %.4f); the guide will default "
                       "to text similarity for this task", task, adapter, text)
    return {"methods": {task: choice}, "selection": {"adapter": adapter, "text": text}}


def serving_choice(bench: Any, task: str, model: MultiTaskAdapter, seed: int = 0) -> dict[str, Any]:
    """What ``method='auto'`` serves for a task and why: the guarded text blend (recommend, outfit) or the
    adapter-vs-text comparison (coupons)."""
    if task in SELECT_METRIC:
        return choose_text_blend(bench, task, model, seed=seed)
    return preferred_method(bench, task, model)


def guide_meta(task: str, bench: Any, model: MultiTaskAdapter | None = None) -> dict[str, Any]:
    """What the guide must remember to serve a task (slot vocabulary, profile encoding; for coupons with a
    model, the fitted hybrid that ``rank_coupons`` serves): the benchmark's ``serve_meta``."""
    if bench.task.kind != task:
        raise ValueError(f"the benchmark {bench.name!r} is a {bench.task.kind!r} benchmark, not {task!r}")
    return bench.serve_meta(model)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def md_table(rows: list[tuple[str, dict[str, float]]], metrics: list[str]) -> str:
    """A Markdown table: one row per method, one column per metric (4 decimals)."""
    return markdown_table(["method", *metrics],
                          [[name, *(f"{m[k]:.4f}" if k in m else "" for k in metrics)] for name, m in rows])


def plot_curves(curves: dict[str, list[dict]], path: Path) -> None:
    """Validation metric per task vs training step, one panel per task (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({k.split("/", 1)[1] for h in curves.values() for row in h for k in row if k.startswith("valid/")})
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5))
    for ax, task in zip(np.atleast_1d(axes), tasks):
        for name, hist in curves.items():
            pts = [(r["step"], r[f"valid/{task}"]) for r in hist if r.get(f"valid/{task}") is not None]
            if pts:
                ax.plot(*zip(*pts), label=name)
        ax.set_title(f"selection metric: {task}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(report_dir: Path, title: str, results: dict[str, dict[str, dict[str, float]]],
                 curves: dict[str, list[dict]] | None = None, extra: dict[str, Any] | None = None,
                 notes: str = "") -> str:
    """Write report.json, report.md (and curves.png); return the Markdown (``notes`` after the tables)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    for task, rows in results.items():
        metrics = list(next(iter(rows.values())))
        lines += [f"## {task} ({TASK_RECIPE[task]})", "", md_table(list(rows.items()), metrics), ""]
    md = "\n".join(lines + ([notes] if notes else []))
    (report_dir / "report.md").write_text(md + "\n", encoding="utf-8")
    (report_dir / "report.json").write_text(json.dumps({"results": results, "curves": curves or {}, **(extra or {})},
                                                       indent=1, default=float), encoding="utf-8")
    if curves:
        plot_curves(curves, report_dir / "curves.png")
    return md


def train_recipe(
    recipe: str,
    output: str | Path,
    *,
    sharing: str = "hard",
    weighting: str = "dwa",
    steps: int = 3000,
    max_seconds: float | None = 600,
    single_seconds: float | None = None,
    pretrain_seconds: float | None = 150,
    seed: int = 0,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    encoder: TextEncoder | None = None,
    dp: Any = None,
    outfit_folds: int = 5,
    refit: bool = False,
) -> dict[str, Any]:
    """Build the dataset's guide, train adapters (all three tasks jointly for ``all``), evaluate, save.

    ``output`` is the guide directory, or for ``all`` a parent directory receiving one guide per dataset.
    For ``all`` with ``single_seconds``, each task also trains a single-task challenger for up to that many
    seconds (recommendation: an ensemble of :data:`RECOMMEND_MEMBERS` adapters, for that many times as long; so is
    the adapter of ``amazon-scientific`` alone), and each guide serves the adapter (the shared multi-task one or
    its task's own) whose validation ``select_metric`` is higher: the comparison is recorded in the guide (``adapter.selected``) and the
    report. A report (JSON, Markdown, training curves) is written into each guide's ``reports/`` folder.
    ``dp`` (a :class:`textguide.privacy.DPConfig`) trains with DP-SGD instead (one task, fixed steps,
    ``max_seconds=None``) and records the guarantee under ``privacy``. Heads with pre-training data (polyvore:
    the NGNN category outfits) are pre-trained first, for up to ``pretrain_seconds`` (0 skips it; never with ``dp``).
    With ``single_seconds`` and ``outfit_folds`` (>= 2), the outfit task's challenger is instead trained on the
    training *and* validation outfits, its recipe checked by ``outfit_folds``-fold cross-validation
    (:mod:`textguide.bench.outfit_cv`); its refit is served when its out-of-fold FITB beats the other outfit
    adapter on the same questions, and text similarity (see :func:`outfit_cv_challenger`).
    With ``refit`` (not with ``dp``), a served single-task recommend adapter is trained again on the training
    examples plus every user's validation item for the epochs that validated best (:func:`refit_recommend`); its
    report metrics stay those of the run before the refit (the report users' items are in the refit's data).
    """
    tasks = _tasks_of(recipe)
    encoder = encoder or load_encoder()
    cache = EmbeddingCache()
    benches = {t: prepare(t, encoder, cache) for t in tasks}
    cfg = TrainConfig(steps=steps, batch_size=128, weighting=weighting, eval_every=100, patience=6, seed=seed,  # type: ignore[arg-type]
                      max_seconds=max_seconds, checkpoint_dir=checkpoint_dir, resume=resume,
                      select_per_task=len(tasks) > 1, ema_decay=EMA_DECAY if dp is None else 0.0)
    t0 = time.time()
    model, result, pretrained, privacy = _train_adapter(tasks, benches, cfg, sharing, seed, encoder.dim,
                                                        pretrain_seconds, dp)
    label = f"{sharing}/{weighting}"
    challengers: dict[str, tuple[MultiTaskAdapter, TrainResult]] = {}
    challenger_pre: dict[str, Any] = {}
    cross_validate = "outfit" in tasks and dp is None and bool(single_seconds) and outfit_folds >= 2
    single_cfg = replace(cfg, max_seconds=single_seconds, select_per_task=False, checkpoint_dir=None, resume=False)
    if len(tasks) > 1 and dp is None and single_seconds:
        for t in tasks:  # a single-task challenger per task (outfits: the cross-validated one, below)
            if t == "outfit" and cross_validate:
                continue
            budget = single_cfg if t != "recommend" else replace(  # an ensemble: its members' budgets
                single_cfg, max_seconds=single_seconds * RECOMMEND_MEMBERS)
            single, single_result, single_pre, _ = _train_adapter((t,), benches, budget, sharing, seed,
                                                                  encoder.dim, pretrain_seconds, None)
            challengers[t] = (single, single_result)
            challenger_pre.update(single_pre)
    trained, selected = pick_adapters(tasks, (model, result, label), challengers)
    pretrained = {t: (challenger_pre if trained[t][2] == "single-task" else pretrained).get(t) for t in tasks}
    chosen, metrics, best_steps = {}, {}, {}
    for t in tasks:  # each guide keeps the weights that validated best on its own task (select_per_task)
        m, r, _ = trained[t]
        use_task_best(m, r, t)
        chosen[t] = serving_choice(benches[t], t, m, seed)
        if not (t == "outfit" and cross_validate):  # (the outfit incumbent is scored below, if it stays)
            metrics[t] = evaluate_model(benches, m, (t,))[t]
        best_steps[t] = r.task_best_steps.get(t, r.best_step)
    cv_meta: dict[str, Any] = {}
    if cross_validate:
        m, r, as_ = trained["outfit"]
        cv = outfit_cv_challenger(benches["outfit"], m, single_cfg, seed, encoder.dim, pretrain_seconds,
                                  outfit_folds, as_, chosen["outfit"]["methods"]["outfit"] == "adapter")
        cv_meta = {"cross_validation": cv["record"]}
        if "trained" in cv:  # the cross-validated recipe won: its refit is served
            trained["outfit"], chosen["outfit"], metrics["outfit"] = cv["trained"], cv["chosen"], cv["metrics"]
            best_steps["outfit"], pretrained["outfit"] = cv["trained"][1].best_step, cv["pretrained"]
        else:
            metrics["outfit"] = evaluate_model(benches, m, ("outfit",))["outfit"]
    labels = {t: trained[t][2] for t in tasks}  # the report rows' models (a refit is not re-scored)
    refit_meta: dict[str, Any] = {}
    if refit and "recommend" in tasks and dp is None:
        m, r, as_ = trained["recommend"]
        if chosen["recommend"]["methods"]["recommend"] != "adapter":
            logger.warning("recommend: the guide serves text similarity; the adapter is not refit")
        elif tuple(m.config.tasks) == ("recommend",):
            new, new_result, record = refit_recommend(benches["recommend"], m, r, cfg, sharing, seed,
                                                      encoder.dim)
            trained["recommend"] = (new, new_result, f"{as_}, refit on train + validation")
            refit_meta = {"refit": {**record, "report_metrics_of": f"the {as_} adapter before its refit"}}
        else:
            logger.warning("recommend: the served adapter is the multi-task one; not refit (only single-task "
                           "recommend adapters are)")
    seconds = time.time() - t0
    results = {t: {f"{benches[t].label} ({labels[t]})": metrics[t]} for t in tasks}
    curves = {label: result.history, **{f"single-task ({t})": r.history for t, (_, r, _) in trained.items()
                                        if r is not result},
              **{f"single-task ({t}) member {i}": m.history for t, (_, r, _) in trained.items()
                 for i, m in enumerate(r.members)}}
    md = ""
    for t in tasks:
        path = Path(output) / TASK_RECIPE[t] if recipe == "all" else Path(output)
        g: Guide = benches[t].guide
        m, r, as_ = trained[t]
        use_task_best(m, r, t)
        g.set_adapter(m, {**guide_meta(t, benches[t], m), **chosen[t],
                          "trained_as": as_, "tasks": list(m.config.tasks),
                          **({"pretrained": pretrained[t]} if pretrained[t] else {}),
                          **({"selected": selected[t]} if t in selected else {}),
                          "report_metrics": metrics[t], "train_seconds": seconds, "best_step": best_steps[t],
                          **(cv_meta if t == "outfit" else {}), **(refit_meta if t == "recommend" else {}),
                          **privacy})
        g.save(path)
        md = write_report(path / "reports", f"textguide train {recipe}: {label}, {seconds:.0f}s",
                          {t2: results[t2] for t2 in tasks}, curves, {"info": {t2: benches[t2].info for t2 in tasks},
                                                                       "selected": selected, **privacy},
                          notes="\n\n".join(([selection_table(selected)] if selected else [])
                                              + ([cv_table(cv_meta["cross_validation"])] if cv_meta else [])
                                              + ([refit_note(refit_meta["refit"])] if refit_meta else [])))
        # the report lives inside the guide but is not part of its checksummed artifact
    return {"results": results, "markdown": md, "seconds": seconds, "selected": selected, **privacy}


def _train_adapter(tasks: tuple[str, ...], benches: dict[str, Any], cfg: TrainConfig, sharing: str, seed: int,
                   input_dim: int, pretrain_seconds: float | None, dp: Any
                   ) -> tuple[MultiTaskAdapter, TrainResult, dict[str, Any], dict[str, Any]]:
    """A fresh adapter for ``tasks``, its heads pre-trained where there is data (not with ``dp``), then trained:
    (model, result, pre-training records, privacy record)."""
    if tasks == ("recommend",) and dp is None and RECOMMEND_MEMBERS > 1:
        return (*train_members(benches["recommend"], cfg, sharing, seed, input_dim, RECOMMEND_MEMBERS), {}, {})
    model, pretrained = prepared_model(tasks, benches, sharing, seed, input_dim,
                                       pretrain_seconds if dp is None else 0)
    if dp is None:
        return model, train(model, {t: benches[t].task for t in tasks}, cfg), pretrained, {}
    result, privacy = train_recipe_private(model, benches, cfg, dp)  # DP-SGD, textguide.privacy
    return model, result, pretrained, privacy


def train_members(bench: Any, cfg: TrainConfig, sharing: str, seed: int, input_dim: int, members: int
                  ) -> tuple[MultiTaskAdapter, TrainResult]:
    """``members`` recommendation adapters trained apart (seeds ``seed``, ``seed + 1``, ...; ``cfg``'s time budget
    split evenly; checkpoints in ``member<i>/`` under ``cfg.checkpoint_dir``; each keeps its best weights),
    joined by :func:`textguide.adapters.ensemble`. The result has one evaluation, the ensemble's on the
    selection users at the members' latest best step, and each member's own result in ``members``."""
    model, results = _train_apart(bench.task, [replace(
        cfg, checkpoint_dir=str(Path(cfg.checkpoint_dir) / f"member{i}") if cfg.checkpoint_dir else None,
        select_per_task=False, max_seconds=cfg.max_seconds / members if cfg.max_seconds else None)
        for i in range(members)], sharing, seed, input_dim)
    valid = TASKS["recommend"].validate(bench.task, model)
    step = max(r.best_step for r in results)
    logger.warning("recommend: ensemble of %d: validation %s %.4f (members alone: %s)", members,
                   TASKS["recommend"].select_metric, valid,
                   ", ".join(f"{r.best_metrics.get('recommend', float('nan')):.4f}" for r in results))
    row = {"step": step, "seconds": sum(r.history[-1]["seconds"] for r in results if r.history),
           "valid/recommend": valid, "valid_mean": valid}
    return model, TrainResult(history=[row], best_step=step, best_metrics={"recommend": valid},
                              task_best_steps={"recommend": step}, members=results)


def _train_apart(task: Any, configs: list[TrainConfig], sharing: str, seed: int, input_dim: int
                 ) -> tuple[MultiTaskAdapter, list[TrainResult]]:
    """One fresh recommendation adapter per config, trained on ``task`` with seed ``seed + i``; with more than one,
    joined by :func:`textguide.adapters.ensemble`. Returns (model, each one's result)."""
    from ..adapters import ensemble

    parts, results = [], []
    for i, config in enumerate(configs):
        parts.append(new_model(("recommend",), sharing, seed + i, input_dim=input_dim))
        results.append(train(parts[-1], {"recommend": task}, replace(config, seed=seed + i)))
    return (ensemble(parts) if len(parts) > 1 else parts[0]), results


def prepared_model(tasks: tuple[str, ...], benches: dict[str, Any], sharing: str = "hard", seed: int = 0,
                   input_dim: int = 384, pretrain_seconds: float | None = 150
                   ) -> tuple[MultiTaskAdapter, dict[str, Any]]:
    """A fresh adapter for ``tasks`` before its main training: the outfit head gets the benchmark's kind prior
    (polyvore: category structure from NGNN) and heads with pre-training data are pre-trained for up to
    ``pretrain_seconds`` (0 skips it). Returns (model, pre-training records)."""
    model = new_model(tasks, sharing, seed, input_dim=input_dim)
    if "outfit" in tasks and getattr(benches["outfit"], "kind_prior", None) is not None:
        attach_kind_prior(model, *benches["outfit"].kind_prior)
    pretrained = pretrain_heads(model, benches, tasks, seed=seed, max_seconds=pretrain_seconds) \
        if pretrain_seconds != 0 else {}
    return model, pretrained


def outfit_cv_challenger(bench: Any, incumbent: MultiTaskAdapter, config: TrainConfig, seed: int, input_dim: int,
                         pretrain_seconds: float | None, folds: int, incumbent_label: str,
                         incumbent_served: bool = False) -> dict[str, Any]:
    """The outfit recipe trained on training + validation outfits (:mod:`textguide.bench.outfit_cv`), against
    ``incumbent`` (the outfit adapter trained on training outfits only, its text blend already chosen).

    Each fold trains ``min(config.steps, FOLD_STEPS)`` steps, so any machine makes the same choice; a slow or
    busy one stops a fold at twice its even share of ``config.max_seconds`` (over the folds and the refit). The
    refit is served when the out-of-fold FITB of the recipe beats the incumbent's FITB on the same questions,
    and either beats text similarity (95 % interval above 0) or the incumbent already passed its own guard
    against text (``incumbent_served``). (The incumbent chose its weights and blend on some of these questions,
    so the comparison leans its way.) Returns ``{"record": ...}``, plus, when it is served,
    ``trained`` / ``chosen`` / ``metrics`` / ``pretrained`` for the guide (metrics: out-of-fold)."""
    from .outfit_cv import FOLD_STEPS, TRAINED, candidate_hits, cross_validate_outfits, refit_outfits

    base, pre = prepared_model(("outfit",), {"outfit": bench}, "hard", seed, input_dim, pretrain_seconds)
    cap = 2 * config.max_seconds / (folds + 1) if config.max_seconds else None
    cv = cross_validate_outfits(bench, base, replace(config, steps=min(config.steps, FOLD_STEPS)), folds=folds,
                                fold_seconds=cap, seed=seed)
    other = candidate_hits(bench, incumbent, folds, seed=seed)
    serve = (cv.serve or incumbent_served) and float(cv.hits.mean()) > float(other.mean())
    record = {**cv.to_dict(), "incumbent": {"adapter": incumbent_label, "FITB": round(float(other.mean()), 6)},
              "served": "cross-validated refit" if serve else incumbent_label}
    logger.warning("outfit: out-of-fold FITB cross-validated recipe %.4f, %s %.4f, text %.4f -> serving the %s",
                   cv.hits.mean(), incumbent_label, other.mean(), cv.text_hits.mean(), record["served"])
    if not serve:
        return {"record": record}
    model, result = refit_outfits(bench, base, config, cv)
    verdict = (f"served the adapter: trained on train + validation outfits; {folds}-fold cross-validation scores "
               f"FITB {cv.hits.mean():.4f} vs text {cv.text_hits.mean():.4f} and {other.mean():.4f} for the "
               f"{incumbent_label} adapter ({'itself served over text' if incumbent_served else 'not served'}) "
               f"on {cv.questions} out-of-fold questions, 95% CI of the gain over text "
               f"[{cv.ci95[0]:+.4f}, {cv.ci95[1]:+.4f}]")
    chosen = {"methods": {"outfit": "adapter"},
              "selection": {"adapter": float(cv.hits.mean()), "text": float(cv.text_hits.mean()),
                            "text_blend": cv.blend_weight, "word_weight": cv.word_weight,
                            "guard": {"metric": "FITB", "examples": cv.questions, "gain": round(cv.gain, 6),
                                      "ci95": [round(v, 6) for v in cv.ci95], "switched": True,
                                      "verdict": verdict, "observed_at": decisions.now()}}}
    label = f"single-task, train + validation outfits ({folds}-fold CV)"
    return {"record": record, "trained": (model, result, label), "chosen": chosen, "pretrained": pre.get("outfit"),
            "metrics": cv.table[TRAINED]}


def refit_recommend(bench: Any, served: MultiTaskAdapter, result: TrainResult, config: TrainConfig,
                    sharing: str, seed: int, input_dim: int) -> tuple[MultiTaskAdapter, TrainResult, dict[str, Any]]:
    """The served single-task recommend recipe trained again, from the same start, on the training examples plus
    every validation user's (history, validation item) (:meth:`SequenceBench.refit_task`: the newest interaction
    of each user), for as many epochs as ``result`` took to its best validation (its best step times the ratio
    of examples), with ``served``'s text blend; an ensemble's members (``result.members``) each as they were
    trained. Nothing is held out, so its report metrics are those of ``served``. Returns (model, result, record
    for the guide)."""
    task = bench.refit_task()
    t0 = time.time()
    firsts = [r.task_best_steps.get("recommend", r.best_step) for r in result.members or [result]]
    steps = [max(1, round(f * len(task) / len(bench.task))) for f in firsts]
    model, results = _train_apart(task, [replace(config, steps=n, max_seconds=None, patience=None,
                                                 select_per_task=False, checkpoint_dir=None, resume=False)
                                         for n in steps], sharing, seed, input_dim)
    refit = results[0] if len(results) == 1 else TrainResult(
        history=[{"step": max(steps)}], best_step=max(steps), best_metrics={}, members=results)
    model.config.text_blend["recommend"] = served.config.text_blend.get("recommend", 0.0)
    record = {"examples": len(task), "added": len(task) - len(bench.task), "steps": steps, "first_run_steps": firsts,
              "seconds": round(time.time() - t0, 1)}
    logger.warning("recommend: refit on %d examples (%d validation items added) for %s steps in %.0f s",
                   record["examples"], record["added"], steps, record["seconds"])
    return model, refit, record


def refit_note(record: dict[str, Any]) -> str:
    """Markdown: what the served recommend adapter was refit on (its report metrics are the run's before it)."""
    return (f"recommend: the guide serves this recipe refit on the training examples plus every user's validation "
            f"item ({record['examples']} examples, {record['added']} added; steps {record['steps']}: the epochs "
            f"of the run above to its best steps, {record['first_run_steps']}; {record['seconds']:.0f} s); the "
            f"report users' items are in its data, so the table shows {record['report_metrics_of']}")


def cv_table(record: dict[str, Any], with_table: bool = True) -> str:
    """Markdown: the out-of-fold metrics of the cross-validated outfit recipe beside text similarity (the
    sentence alone without ``with_table``)."""
    rows = [(name, m) for name, m in record["table"].items()]
    return (f"Outfits: {record['folds']}-fold cross-validation over the validation outfits (each scored by a model "
            f"that never saw it; {record['questions']} FITB questions); FITB gain over text {record['gain']:+.4f}, "
            f"95% CI [{record['ci95'][0]:+.4f}, {record['ci95'][1]:+.4f}]; the other outfit adapter "
            f"({record['incumbent']['adapter']}) scores FITB {record['incumbent']['FITB']:.4f} on the same "
            f"questions; served: {record['served']}" + ("\n\n" + md_table(rows, list(rows[0][1])) if with_table else ""))


def pick_adapters(tasks: tuple[str, ...], joint: tuple[MultiTaskAdapter, TrainResult, str],
                  challengers: dict[str, tuple[MultiTaskAdapter, TrainResult]]
                  ) -> tuple[dict[str, tuple[MultiTaskAdapter, TrainResult, str]], dict[str, dict[str, Any]]]:
    """Per task, the adapter to serve: the shared one (``joint``: model, result, label) unless the task's
    single-task challenger reached a strictly higher best validation ``select_metric``. Returns
    ({task: (model, result, label)}, {task: the comparison} for the tasks that had a challenger)."""
    trained = {t: joint for t in tasks}
    selected: dict[str, dict[str, Any]] = {}
    for t, (single, single_result) in challengers.items():
        joint_v, single_v = task_best_metric(joint[1], t), task_best_metric(single_result, t)
        winner = "single-task" if single_v > joint_v else "multi-task"
        selected[t] = {"metric": TASKS[t].select_metric, "multi-task": joint_v, "single-task": single_v,
                       "served": winner}
        logger.warning("%s: validation %s multi-task %.4f, single-task %.4f -> serving the %s adapter", t,
                       TASKS[t].select_metric, joint_v, single_v, winner)
        if winner == "single-task":
            trained[t] = (single, single_result, "single-task")
    return trained, selected


def task_best_metric(result: TrainResult, task: str) -> float:
    """The best validation ``select_metric`` of ``task`` over a training run's evaluations (-inf if none)."""
    values = [h[f"valid/{task}"] for h in result.history if f"valid/{task}" in h]
    return max(values) if values else float("-inf")


def selection_table(selected: dict[str, dict[str, Any]]) -> str:
    """Markdown: per task, the validation metric of the multi-task and the single-task adapter, and the served one."""
    lines = ["which adapter each guide serves (validation split, the metric early stopping watches):", "",
             "| task | metric | multi-task | single-task | served |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {v['metric']} | {v['multi-task']:.4f} | {v['single-task']:.4f} | {v['served']} |"
              for t, v in selected.items()]
    return "\n".join(lines)


def example_users(bench: Any) -> np.ndarray:
    """The user of each training example of a textguide.bench.recipes benchmark (Scientific: the Amazon user;
    Complete Journey: the household)."""
    task = bench.task
    if isinstance(task, CouponTask):
        return task.user_index.copy()
    if bench.name == "amazon-scientific":
        from .datasets.amazon_scientific import load_scientific

        users = np.array([ex.user for ex in load_scientific().train])
        if len(users) != len(task):
            raise ValueError(f"Scientific has {len(users)} training examples but the task {len(task)}; rebuild it")
        return users
    raise ValueError(f"no user ids known for the benchmark {bench.name!r}; pass users= to train_private")


def train_recipe_private(model: MultiTaskAdapter, benches: dict[str, Any], config: TrainConfig, dp: Any
                         ) -> tuple[TrainResult, dict[str, Any]]:
    """:func:`textguide.privacy.train_private` on a benchmark of :func:`prepare`; returns the result and ``{"privacy": record}``
    for the guide's adapter metadata and report."""
    from ..privacy import PRIVATE_TASKS, describe, train_private

    if len(benches) != 1:
        raise ValueError(f"DP training takes one recipe at a time, got tasks {sorted(benches)}; "
                         f"train {' and '.join(PRIVATE_TASKS)} recipes separately, not 'all'")
    (name, bench), = benches.items()
    result, record = train_private(model, {name: bench.task}, config, dp, example_users(bench))
    logger.warning("%s", describe(record))
    return result, {"privacy": record.to_dict()}


def use_task_best(model: MultiTaskAdapter, result: Any, task: str) -> None:
    """Load the weights that validated best on ``task`` (``TrainResult.task_weights``); a no-op without them."""
    if task in result.task_weights:
        model.load_state_dict(result.task_weights[task])
    model.eval()


def evaluate_recipe(recipe: str, guide_path: str | Path, *, report_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a saved guide's adapter on its dataset's report split, against the text-similarity baseline;
    the report goes to ``report_dir`` (default ``<guide>/reports/evaluate/``, so the training report stays)."""
    tasks = _tasks_of(recipe)
    if len(tasks) != 1:
        raise ValueError("evaluate one dataset at a time: amazon-scientific, polyvore or completejourney")
    task = tasks[0]
    guide = Guide.load(guide_path)
    if guide.adapter is None or task not in guide.adapter.config.tasks:
        raise ValueError(f"{guide_path} has no trained {task!r} adapter; run `textguide train {recipe} {guide_path}`")
    cv = guide.adapter_meta.get("cross_validation")
    if cv and cv.get("served") == "cross-validated refit":  # the report outfits were in its training data
        out = Path(report_dir) if report_dir else Path(guide_path) / "reports" / "evaluate"
        order = ("FITB", "AUC", "CTL-Recall@10", "NearDup@10")  # the stored JSON has its keys sorted
        results = {name: {k: m[k] for k in sorted(m, key=lambda k: order.index(k) if k in order else len(order))}
                   for name, m in cv["table"].items()}
        md = write_report(out, f"textguide evaluate {recipe} {guide_path}", {task: results},
                          notes="This adapter was trained on the training and validation outfits (the report split "
                                "included), so it is not re-scored here: the table is the out-of-fold estimate "
                                "recorded at training time. " + cv_table(cv, with_table=False))
        md += "\n" + gain_table(results)
        (out / "report.md").write_text(md + "\n", encoding="utf-8")
        return {"results": {task: results}, "markdown": md}
    bench = prepare(task, guide.encoder, EmbeddingCache())
    if bench.guide.index.ids != guide.index.ids:
        raise ValueError(f"{guide_path} does not hold the {recipe} catalog in the expected order; rebuild it with "
                         f"`textguide train {recipe} {guide_path}`")
    hybrid = guide.adapter_meta.get("coupon_hybrid")
    refit = guide.adapter_meta.get("refit")
    served = guide.adapter_meta.get("methods", {}).get(task, "adapter")
    results: dict[str, dict[str, float]] = bench.baselines()
    name = f"trained ({bench.label}{', before its refit, recorded at training' if refit else ''})"
    results[f"{name}{'' if served == 'adapter' else ' [not served: auto uses text]'}"] = (
        {k: guide.adapter_meta["report_metrics"][k] for k in next(iter(results.values()))} if refit else
        evaluate_model({task: bench}, guide.adapter, (task,), CouponHybrid.from_dict(hybrid) if hybrid else None)[task])
    notes = ("The served adapter was refit on the training examples plus every user's validation item (the report "
             f"users' included: {refit['added']} examples added, {refit['steps']} steps), so it is not re-scored "
             "here: the trained row is the same recipe before the refit, scored when it was trained."
             if refit else "")
    out = Path(report_dir) if report_dir else Path(guide_path) / "reports" / "evaluate"  # beside train's report
    md = write_report(out, f"textguide evaluate {recipe} {guide_path}", {task: results}, notes=notes)
    md += "\n" + gain_table(results)
    (out / "report.md").write_text(md + "\n", encoding="utf-8")
    return {"results": {task: results}, "markdown": md}


def gain_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: relative gain (%) of the last row (the trained model) over every other row, per metric."""
    names = list(results)
    model, metrics = results[names[-1]], [k for k in results[names[-1]] if k != "NearDup@10"]
    lines = [f"gain of '{names[-1]}' over each baseline (%):", "",
             "| baseline | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for n in names[:-1]:
        cells = [f"{(model[k] - results[n][k]) / abs(results[n][k]):+.1%}" if results[n].get(k) else ""
                 for k in metrics]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_transferred(bench: Any, result: Any, output: str | Path, meta: dict[str, Any]) -> Path:
    """Save a target benchmark's guide with a transfer result's model (``meta`` in its adapter metadata) to
    ``output``, and the transfer report beside it in ``reports/transfer.json``. For basket complements, each
    item's slot name goes into a ``slot`` field, so that ``complete_outfit(slot=...)`` works on the saved guide."""
    from ..transfer import save_transfer_report

    guide = bench.guide
    if isinstance(bench, recipes.OutfitBench):
        guide.index.metadata = guide.index.metadata.assign(slot=[bench.slots[s] for s in bench.task.item_slots])
        meta = {**meta, "slot_field": "slot", "slots": list(bench.slots)}
    guide.set_adapter(result.model, meta)
    path = guide.save(output)
    save_transfer_report(guide, result.report)
    return path


def transfer_domains(
    source: str,
    target: str,
    output: str | Path,
    *,
    method: str = "auto",
    target_fraction: float = 1.0,
    source_seconds: float = 300,
    seconds: float = 120,
    seed: int = 0,
    encoder: TextEncoder | None = None,
) -> dict[str, Any]:
    """Train an adapter on ``source``, transfer it to ``target`` with ``method`` (``auto`` runs the
    negative-transfer guard), and save the target guide (adapter + ``reports/transfer.json``) to ``output``.

    Domains: next-item recommendation, :data:`textguide.domains.DOMAINS` (hm, online-retail, industrial, office),
    or basket complements, :data:`textguide.bench.recipes.BASKET_DOMAINS` (hm-baskets, or-baskets); source and target
    must be of the same kind.
    """
    import torch

    from . import domains
    from ..transfer import TransferConfig, transfer

    if not 0.0 <= target_fraction <= 1.0:
        raise ValueError(f"target_fraction must be in [0, 1], got {target_fraction}")
    baskets = [name in recipes.BASKET_DOMAINS for name in (source, target)]
    if baskets[0] != baskets[1]:
        raise ValueError(
            f"cannot transfer between {source!r} and {target!r}: one is a recommendation domain "
            f"({', '.join(domains.DOMAINS)}), the other a basket-complement domain ({', '.join(recipes.BASKET_DOMAINS)})"
        )
    encoder = encoder or load_encoder()
    cache = EmbeddingCache()
    if baskets[0]:
        src, tgt = (recipes.BASKET_DOMAINS[n](encoder, cache) for n in (source, target))
        task_name = "outfit"
        config = AdapterConfig(input_dim=src.task.item_emb.shape[1], dim=64, max_history=20, tasks=("outfit",),
                               n_slots=len(src.slots))
        target_task = recipes.subsample_outfits(tgt, target_fraction, seed)
        select, ks = None, (10,)
    else:
        src, tgt = domains.prepare_domain(source, encoder, cache), domains.prepare_domain(target, encoder, cache)
        task_name = "recommend"
        config = AdapterConfig(input_dim=src.item_emb.shape[1], dim=64, seq_layers=1, seq_heads=2, max_history=20,
                               tasks=("recommend",))
        target_task = domains.subsample(tgt, target_fraction, seed) if target_fraction < 1.0 else tgt.task
        select, ks = None, tgt.ks  # the guard selects on the task's select_metric, as early stopping does
    torch.manual_seed(seed)
    model = MultiTaskAdapter(config)
    train(model, {task_name: src.task}, TrainConfig(steps=5000, batch_size=128, eval_every=100, patience=6,
                                                    seed=seed, max_seconds=source_seconds, show_progress=True))
    config = TransferConfig(method=method, select_metric=select, ks=ks, seed=seed,  # type: ignore[arg-type]
                            train=TrainConfig(steps=3000, batch_size=128, eval_every=50, patience=6, seed=seed,
                                              max_seconds=seconds, show_progress=False))
    result = transfer(model, src.task, target_task, config)
    save_transferred(tgt, result, output, {"trained_as": f"transfer {source} -> {target} ({result.method_chosen})",
                                           "methods": {task_name: "adapter"}})
    return {"chosen": result.method_chosen, "summary": result.report.get("summary", ""), "path": str(output)}
