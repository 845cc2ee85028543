"""The negative-transfer guard: :func:`transfer` (and :func:`few_shot`) train the candidate methods of
:mod:`textguide.transfer.methods`, score them on the target's validation split and keep the best one that beats
the baseline on the task's selection metric.

Every domain is seen through the same frozen text encoder, so a model trained on one catalog (the *source*)
scores another catalog (the *target*) without retraining: that is the zero-shot starting point. On top of
it, three families of transfer (Pan & Yang 2010's taxonomy):

* **model-based** (``method="model"``): the target model starts from the source weights and is trained on the
  target examples, ``model_mode`` = ``"finetune"`` (all parameters), ``"freeze-shared"`` (the item adapter
  is frozen, the sequence head and temperature are trained) or ``"l2sp"`` (all parameters, plus
  ``l2sp_weight * ||theta - theta_source||^2``; Li et al. 2018).
* **feature-based** (``method="feature"``): train on source and target examples together while pulling the
  two domains' adapted representations together: ``L = L_target + L_source + alpha * D(source, target)``,
  with ``D`` = :func:`mmd` (Gaussian kernels, several bandwidths; Long et al. 2015) or :func:`coral`
  (Sun & Saenko 2016), on the adapted item vectors and, when the target has training histories, on the user
  (query) vectors.
* **instance-based** (``method="instance"``): source examples are re-weighted by an estimated density ratio
  ``p_target(x) / p_source(x)`` (:func:`domain_weights`: a logistic-regression domain classifier on the text
  embeddings), clipped at ``weight_clip``, and source and target examples are trained on together.

Source and target examples are trained on together through a joint task (source rows of the batch are
scored against source items only, target rows against target items only). Feature- and instance-based runs
start from the source weights by default (``init="source"``): the source model is already trained, and this
spares a full source pre-training per run; ``init="scratch"`` starts from a fresh model.

``method="auto"`` is the negative-transfer guard: it trains target-only and every enabled method
(``candidates``), scores them on the target's validation split, keeps the best and *refuses* every transfer
that does not beat target-only on ``select_metric`` (by more than ``min_gain``, relative), with the numbers
in the report. Gains are relative changes vs target-only, per metric (:func:`textguide.metrics.relative_gain`).

With no target training examples (0 %), target-only is the untrained adapter (text similarity through a
random orthogonal projection), model-based transfer is the source model applied as is, and feature- and
instance-based transfer train on source examples only (aligned to / re-weighted toward the target catalog).

The same methods work for complementary items (``OutfitTask`` source and target, e.g. H&M same-day baskets ->
Online Retail invoices): the adapted vectors are the "outfit" head's, the query vectors are pooled baskets, and
the validation metrics are fill-in-the-blank accuracy (``FITB``, the default ``select_metric`` there) and
complete-the-look ``Recall@k`` within the hidden item's slot. Slot (category) vocabularies are per domain: the
target model gets the target's slots, each starting from the source's learned "unknown slot" embedding
(:func:`retarget_slots`), and joint training queries source baskets with the unknown slot.

Example::

    result = transfer(source_model, source_task, target_task, TransferConfig(method="auto"))
    result.method_chosen                      # e.g. "model:finetune", or "target-only" when transfer hurts
    result.report["refused"]                  # {"feature:mmd": "worse than target-only: valid Recall@10 ... vs ..."}
    save_transfer_report(guide, result.report)   # -> <guide>/reports/transfer.json
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..adapters import MultiTaskAdapter, encode_items
from ..storage import check_config_fields
from ..metrics import fitb_accuracy, metrics_from_ranks, relative_gain
from ..tasks import TASKS
from ..tasks.outfit import OutfitTask, fitb_scores
from ..tasks.recommend import SequenceTask
from ..training import TrainConfig, train
from .methods import (
    domain_weights,
    example_embeddings,
    feature_regularizer,
    freeze_shared,
    item_distances,
    joint_task,
    l2sp_penalty,
    retarget_slots,
)

__all__ = [
    "CANDIDATES",
    "METHODS",
    "TransferConfig",
    "TransferResult",
    "few_shot",
    "save_transfer_report",
    "transfer",
    "validation_metrics",
]

logger = logging.getLogger("textguide")

METHODS: tuple[str, ...] = ("target-only", "model", "feature", "instance", "auto")
MODEL_MODES: tuple[str, ...] = ("finetune", "freeze-shared", "l2sp")
DISTANCES: tuple[str, ...] = ("mmd", "coral")
#: every concrete candidate ``auto`` can compare (``"model"`` / ``"feature"`` alone use the config's mode)
CANDIDATES: tuple[str, ...] = (
    "target-only", *(f"model:{m}" for m in MODEL_MODES), *(f"feature:{d}" for d in DISTANCES), "instance",
)
REPORT_FILE = "transfer.json"


# ----------------------------------------------------------------------------------------------------------
# configuration and result
# ----------------------------------------------------------------------------------------------------------


@dataclass
class TransferConfig:
    """How to transfer (JSON-serialisable with :meth:`to_dict`).

    Attributes:
        method: "target-only", "model", "feature", "instance" or "auto" (the negative-transfer guard).
        model_mode: model-based variant: "finetune", "freeze-shared" or "l2sp".
        l2sp_weight: weight of ``||theta - theta_source||^2`` (summed over all parameters) in "l2sp".
        feature_distance: "mmd" or "coral".
        alpha: weight of the domain distance in feature-based transfer (>= 0; 0 = plain joint training).
        bandwidths: Gaussian kernel bandwidths (sigma) of the MMD; the kernel is their sum.
        feature_batch: items (and histories) per domain drawn each step to estimate the distance.
        feature_users: also align user (query) vectors when the target has training histories.
        weight_clip: upper clip of the instance weights (density ratios); must be > 0.
        classifier_l2: L2 penalty of the logistic-regression domain classifier.
        source_share: fraction of each joint batch drawn from source examples when the target has some.
        init: where feature- and instance-based runs start: "source" (the source weights) or "scratch".
        candidates: what ``auto`` compares with target-only: "model", "feature", "instance" (the config's
            variants) or explicit variants "model:finetune", "model:freeze-shared", "model:l2sp",
            "feature:mmd", "feature:coral"; a feature variant may set its own alpha: "feature:coral@1e6".
        select_metric: the validation metric that picks the winner: "Recall@k", "NDCG@k", "MAP@k" (k in ``ks``)
            for recommendation, "FITB" or "Recall@k" for complements; None (default) = the task's selection
            metric, the one early stopping watches (``TASKS[kind].select_metric``: Recall@10, FITB).
        ks: cut-offs of the validation metrics (Recall@k, NDCG@k, MAP@k).
        min_gain: a transfer is kept only if its relative gain on ``select_metric`` exceeds this (0 = any gain).
        seed: seeds model initialisation, sampling and the domain classifier.
        train: the training loop's configuration (steps, time budget, early stopping) for every run.
    """

    method: Literal["target-only", "model", "feature", "instance", "auto"] = "auto"
    model_mode: Literal["finetune", "freeze-shared", "l2sp"] = "finetune"
    l2sp_weight: float = 0.01
    feature_distance: Literal["mmd", "coral"] = "mmd"
    alpha: float = 1.0
    bandwidths: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    feature_batch: int = 256
    feature_users: bool = True
    weight_clip: float = 10.0
    classifier_l2: float = 1e-3
    source_share: float = 0.5
    init: Literal["source", "scratch"] = "source"
    candidates: tuple[str, ...] = ("model", "feature", "instance")
    select_metric: str | None = None
    ks: tuple[int, ...] = (10,)
    min_gain: float = 0.0
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.bandwidths = tuple(float(b) for b in self.bandwidths)
        self.candidates = tuple(self.candidates)
        self.ks = tuple(int(k) for k in self.ks)
        if self.method not in METHODS:
            raise ValueError(f"unknown transfer method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.model_mode not in MODEL_MODES:
            raise ValueError(f"unknown model_mode {self.model_mode!r}; choose one of {', '.join(MODEL_MODES)}")
        if self.feature_distance not in DISTANCES:
            raise ValueError(
                f"unknown feature_distance {self.feature_distance!r}; choose one of {', '.join(DISTANCES)}"
            )
        for name in ("alpha", "l2sp_weight", "classifier_l2", "min_gain"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"TransferConfig.{name} must be a finite number >= 0, got {value!r}")
        if not self.weight_clip > 0:
            raise ValueError(f"TransferConfig.weight_clip must be > 0, got {self.weight_clip!r}")
        if not 0.0 < self.source_share < 1.0:
            raise ValueError(f"TransferConfig.source_share must be in (0, 1), got {self.source_share!r}")
        if not self.bandwidths or min(self.bandwidths) <= 0:
            raise ValueError(f"TransferConfig.bandwidths must be positive numbers, got {self.bandwidths!r}")
        if self.feature_batch < 2:
            raise ValueError(f"TransferConfig.feature_batch must be >= 2, got {self.feature_batch!r}")
        if self.init not in ("source", "scratch"):
            raise ValueError(f"TransferConfig.init must be 'source' or 'scratch', got {self.init!r}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"TransferConfig.ks must be positive cut-offs, got {self.ks!r}")
        if self.select_metric is not None and self.select_metric != "FITB":
            metric, _, k = str(self.select_metric).partition("@")
            if metric not in ("Recall", "NDCG", "MAP") or not k.isdigit() or int(k) not in self.ks:
                raise ValueError(
                    f"select_metric {self.select_metric!r} must be Recall@k, NDCG@k or MAP@k with k in ks={self.ks}, "
                    "FITB (complements), or None for the task's default"
                )
        self.expanded_candidates()  # validates the names

    def expanded_candidates(self) -> list[str]:
        """The concrete candidates ``auto`` trains besides target-only (``"model"`` -> ``"model:<model_mode>"``).

        A feature candidate may carry its own alpha, ``"feature:coral@1e6"`` (MMD and CORAL live on very
        different scales, and ``auto`` then also picks the alpha on the validation split)."""
        out: list[str] = []
        for name in self.candidates:
            base, _, alpha = str(name).partition("@")
            if base == "model":
                base = f"model:{self.model_mode}"
            elif base == "feature":
                base = f"feature:{self.feature_distance}"
            ok = base in CANDIDATES and base != "target-only"
            if alpha:
                try:
                    ok = ok and base.startswith("feature:") and math.isfinite(float(alpha)) and float(alpha) >= 0
                except ValueError:
                    ok = False
            if not ok:
                raise ValueError(
                    f"unknown transfer candidate {name!r}; choose from model, feature, instance, "
                    f"{', '.join(c for c in CANDIDATES if c != 'target-only')} (feature ones may end in "
                    "@<alpha >= 0>, e.g. feature:coral@1e6)"
                )
            full = f"{base}@{alpha}" if alpha else base
            if full not in out:
                out.append(full)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the training config nested under "train")."""
        d = asdict(self)
        d["bandwidths"], d["candidates"], d["ks"] = list(self.bandwidths), list(self.candidates), list(self.ks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransferConfig":
        """Inverse of :meth:`to_dict`; unknown fields raise ValueError naming them."""
        check_config_fields(cls, d)
        d = dict(d)
        if isinstance(d.get("train"), dict):
            d["train"] = TrainConfig.from_dict(d["train"])
        return cls(**d)


@dataclass
class TransferResult:
    """What :func:`transfer` returns.

    Attributes:
        model: the chosen model (trained on the target, in eval mode).
        method_chosen: the candidate it came from ("target-only", "model:finetune", "feature:mmd", ...).
        report: JSON-ready dict: per-candidate validation metrics, gains vs target-only, refused candidates
            with reasons, training time and steps, instance-weight and domain-distance diagnostics, config.
        models: every trained candidate by name (the chosen one included).
    """

    model: MultiTaskAdapter
    method_chosen: str
    report: dict[str, Any]
    models: dict[str, MultiTaskAdapter] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------


def validation_metrics(model: MultiTaskAdapter, task: SequenceTask | OutfitTask,
                       ks: Sequence[int] = (10,)) -> dict[str, float] | None:
    """Validation metrics of ``task``; None without a validation split. Always includes the task's selection
    metric (:attr:`textguide.tasks.base.Task.select_metric`, what early stopping watches).

    Recommendation: Recall@k, NDCG@k, MAP@k (full ranking, history excluded). Complements: FITB (the hidden item
    against 3 random items of its slot, :meth:`OutfitTask.fitb_questions`) and Recall@k of complete-the-look
    (the hidden item's rank among all items of its slot, the basket's own items left out).
    """
    if isinstance(task, OutfitTask):
        return _outfit_metrics(model, task, ks)
    ranks = task.valid_ranks(model)  # the loop early stopping runs (SequenceTask.valid_metric)
    if ranks is None:
        return None
    cut = tuple(dict.fromkeys((*ks, int(TASKS[task.kind].select_metric.partition("@")[2]))))
    m = metrics_from_ranks(ranks, cut)
    return {k: v for k, v in m.items() if k.split("@")[0] in ("Recall", "NDCG", "MAP")}


def _outfit_metrics(model: MultiTaskAdapter, task: OutfitTask, ks: Sequence[int]) -> dict[str, float] | None:
    questions = task.valid_questions(model)
    if questions is None:
        return None
    partials, slots, cands, queries = questions
    vectors = encode_items(model, task.item_emb, "outfit")
    out = {"FITB": fitb_accuracy(fitb_scores(queries, vectors[cands]), np.zeros(len(cands), np.int64))}
    ranks = task.ctl_ranks(queries, vectors, (partials, slots, cands))
    out.update({f"Recall@{k}": float((ranks < k).mean()) for k in ks})
    return out


# ----------------------------------------------------------------------------------------------------------
# transfer
# ----------------------------------------------------------------------------------------------------------


def _check_inputs(source_model: MultiTaskAdapter, source_task: Any, target_task: Any) -> None:
    if not isinstance(source_model, MultiTaskAdapter):
        raise ValueError(f"source_model must be a MultiTaskAdapter, got {type(source_model).__name__}")
    for name, task in (("source_task", source_task), ("target_task", target_task)):
        if not isinstance(task, (SequenceTask, OutfitTask)):
            raise ValueError(
                f"{name} must be a SequenceTask (next-item recommendation) or an OutfitTask (basket / outfit "
                f"complements), got {type(task).__name__}"
            )
    if source_task.kind != target_task.kind:
        raise ValueError(
            f"source_task is a {type(source_task).__name__} but target_task a {type(target_task).__name__}: "
            "transfer needs the same task on both sides"
        )
    source_model.check_task(target_task.kind)
    dims = {"source_model": source_model.config.input_dim, "source_task": source_task.item_emb.shape[1],
            "target_task": target_task.item_emb.shape[1]}
    if len(set(dims.values())) > 1:
        raise ValueError(
            f"mismatched embedding dimensions {dims}: embed both catalogs with the encoder the source model "
            "was trained on"
        )
    if not len(source_task):
        raise ValueError("source_task has no training examples; transfer needs a source to learn from")


def _fresh(source_model: MultiTaskAdapter, target: Any, seed: int) -> MultiTaskAdapter:
    """An untrained model of the source's architecture (with the target's slot vocabulary for complements)."""
    torch.manual_seed(seed)
    config = copy.deepcopy(source_model.config)
    if isinstance(target, OutfitTask):
        config.n_slots = target.n_query_slots
    return MultiTaskAdapter(config)


def _from_source(source_model: MultiTaskAdapter, target: Any) -> MultiTaskAdapter:
    """The source weights, ready for the target (its slot vocabulary for complements)."""
    if isinstance(target, OutfitTask):
        return retarget_slots(source_model, target.n_query_slots)
    return copy.deepcopy(source_model)


def _run(name: str, source_model: MultiTaskAdapter, source: Any, target: Any,
         config: TransferConfig) -> tuple[MultiTaskAdapter, dict[str, Any]]:
    """Train one candidate; returns (model in eval mode, info)."""
    info: dict[str, Any] = {"trained": False}
    tc = config.train
    name, _, alpha = name.partition("@")
    if alpha:
        config = replace(config, alpha=float(alpha))
    family, _, variant = name.partition(":")
    regularizer = None
    task = target
    frozen: list[str] = []
    if family == "target-only":
        model = _fresh(source_model, target, config.seed)
        if not len(target):
            info["note"] = "no target examples: the untrained adapter (text similarity through a random projection)"
    elif family == "model":
        model = _from_source(source_model, target)
        if not len(target):
            info["note"] = "no target examples: the source model applied as is (zero-shot through the text space)"
        elif variant == "freeze-shared":
            frozen = freeze_shared(model)
            info["frozen_parameters"] = int(sum(p.numel() for n, p in model.named_parameters() if n in set(frozen)))
        elif variant == "l2sp":
            reference = {n: p.detach().clone() for n, p in model.named_parameters()}
            regularizer = lambda m: l2sp_penalty(m, reference, config.l2sp_weight)  # noqa: E731
    else:
        model = _from_source(source_model, target) if config.init == "source" else _fresh(source_model, target, config.seed)
        weights = None
        if family == "instance":
            t0 = time.monotonic()
            target_points = example_embeddings(target) if len(target) else target.item_emb
            weights = domain_weights(example_embeddings(source), target_points, config.weight_clip,
                                     config.classifier_l2, config.seed)
            info["weights"] = {
                "target_sample": "target training examples" if len(target) else "target catalog items",
                "mean": float(weights.mean()), "max": float(weights.max()),
                "share_clipped": float((weights >= config.weight_clip).mean()),
                "effective_source_share": float(weights.sum() ** 2 / (weights ** 2).sum() / len(weights)),
                "seconds": round(time.monotonic() - t0, 2),
            }
            if weights.sum() <= 0:
                raise ValueError("every source example got weight 0; raise weight_clip or classifier_l2")
        else:
            info["alpha"] = config.alpha
            regularizer = feature_regularizer(source, target, config)
        task = joint_task(source, target, weights, config.source_share)
    if len(task):
        t0 = time.monotonic()
        start_metric = target.valid_metric(model) if tc.restore_best else None  # early stopping sees step 0 too
        start_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.train()
        try:
            result = train(model, {target.kind: task}, tc, regularizer=regularizer)
        finally:
            for n, p in model.named_parameters():
                if n in frozen:
                    p.requires_grad_(True)
        info.update(trained=True, seconds=round(time.monotonic() - t0, 1), best_step=result.best_step,
                    steps=int(result.history[-1]["step"]) if result.history else 0)
        best = result.best_metrics.get(target.kind)
        if start_metric is not None and best is not None and start_metric >= best:
            model.load_state_dict(start_weights)
            info["best_step"] = 0
            info["note"] = (f"training never beat the starting weights on validation ({_train_metric(target)} "
                            f"{best:.4f} vs {start_metric:.4f} at step 0): kept the starting weights")
    model.eval()
    return model, info


def _train_metric(task: Any) -> str:
    """What the training loop's early stopping watches (``task.valid_metric``)."""
    return TASKS[task.kind].select_metric


def transfer(
    source_model: MultiTaskAdapter,
    source_task: SequenceTask | OutfitTask,
    target_task: SequenceTask | OutfitTask,
    config: TransferConfig | None = None,
) -> TransferResult:
    """Transfer a source model to a target domain (see the module docstring).

    Args:
        source_model: a model with the task's head ("recommend" or "outfit"), trained on ``source_task``.
        source_task: the source domain's training examples (used by feature- and instance-based transfer).
        target_task: the target's training examples (may be empty: zero-shot) and validation split
            (``valid_histories`` / ``valid_targets``, or ``valid_outfits``; required by ``method="auto"``).
        config: the method and its settings.

    Returns:
        TransferResult(model, method_chosen, report, models). The report is JSON-ready
        (:func:`save_transfer_report` writes it into a guide directory).
    """
    config = config or TransferConfig()
    _check_inputs(source_model, source_task, target_task)
    complements = isinstance(target_task, OutfitTask)
    if config.select_metric is None:  # what early stopping watched
        config = replace(config, select_metric=TASKS[target_task.kind].select_metric)
    allowed = ("FITB", "Recall") if complements else ("Recall", "NDCG", "MAP")
    if config.select_metric.partition("@")[0] not in allowed:
        raise ValueError(
            f"select_metric {config.select_metric!r} does not fit a {type(target_task).__name__}: use "
            + (f"FITB or Recall@k (k in ks={config.ks})" if complements else "Recall@k, NDCG@k or MAP@k")
        )
    if config.method == "auto":
        if not (target_task.valid_outfits if complements else target_task.valid_histories):
            split = "valid_outfits" if complements else "valid_histories / valid_targets"
            raise ValueError(
                f"method='auto' needs a target validation split (target_task.{split}) to compare the candidates on"
            )
        names = ["target-only", *config.expanded_candidates()]
    elif config.method == "model":
        names = [f"model:{config.model_mode}"]
    elif config.method == "feature":
        names = [f"feature:{config.feature_distance}"]
    else:
        names = [config.method]

    models: dict[str, MultiTaskAdapter] = {}
    methods: dict[str, dict[str, Any]] = {}
    for name in names:
        logger.info("transfer: training %s (%d target examples)", name, len(target_task))
        model, info = _run(name, source_model, source_task, target_task, config)
        info["valid"] = validation_metrics(model, target_task, config.ks)
        info["item_distance"] = item_distances(model, source_task, target_task, config)
        models[name], methods[name] = model, info
        logger.info("transfer: %s -> %s", name, info["valid"])

    report: dict[str, Any] = {
        "method": config.method,
        "select_metric": config.select_metric,
        "source_examples": len(source_task),
        "target_examples": len(target_task),
        "target_valid_rows": len((target_task.valid_outfits if complements else target_task.valid_histories) or []),
        "methods": methods,
        "refused": {},
        "config": config.to_dict(),
    }
    chosen = names[0]
    if config.method == "auto":
        chosen = _guard(methods, config, report)
    report["chosen"] = chosen
    report["summary"] = _summary(report)
    return TransferResult(models[chosen], chosen, report, models)


def _guard(methods: dict[str, dict[str, Any]], config: TransferConfig, report: dict[str, Any],
           baseline: str = "target-only") -> str:
    """Gains vs the baseline candidate; refuse every candidate not better than it on select_metric; return the
    best. ``baseline`` is "target-only" for transfer, "current" (the model as it is) for :func:`few_shot`."""
    key = config.select_metric
    base = methods[baseline]["valid"]
    best, best_value = baseline, base[key]
    accepted = []
    suffix = baseline.replace("-", "_")
    for name, info in methods.items():
        if name == baseline:
            continue
        valid = info["valid"]
        info[f"gain_vs_{suffix}"] = {m: _safe_gain(valid[m], base[m]) for m in base}
        info[f"difference_vs_{suffix}"] = {m: valid[m] - base[m] for m in base}
        gain = info[f"gain_vs_{suffix}"][key]
        better = valid[key] > base[key] and (gain is None or gain > config.min_gain)
        if not better:
            word = "worse than" if valid[key] < base[key] else "no better than"
            shown = "n/a" if gain is None else f"{gain:+.1%}"
            report["refused"][name] = (
                f"{word} {baseline}: valid {key} {valid[key]:.4f} vs {base[key]:.4f} ({shown} relative"
                + (f", needs > {config.min_gain:+.1%}" if config.min_gain and valid[key] > base[key] else "") + ")"
            )
            continue
        accepted.append(name)
        if valid[key] > best_value:
            best, best_value = name, valid[key]
    report["accepted"] = accepted
    return best


def _safe_gain(new: float, base: float) -> float | None:
    if base == 0:
        return None  # relative gain undefined; difference_vs_target_only has the absolute change
    return relative_gain({"m": new}, {"m": base})["m"]


def _summary(report: dict[str, Any]) -> str:
    key, chosen = report["select_metric"], report["chosen"]
    baseline = report.get("baseline", "target-only")
    valid = report["methods"][chosen]["valid"]
    if report["method"] != "auto":
        shown = "no validation split" if valid is None else f"valid {key} {valid[key]:.4f}"
        return f"{chosen}: {shown}"
    base = report["methods"][baseline]["valid"][key]
    if chosen == baseline:
        text = f"kept {baseline} (valid {key} {base:.4f}): no {'fine-tuning' if baseline == 'current' else 'transfer'} beat it"
    else:
        gain = report["methods"][chosen][f"gain_vs_{baseline.replace('-', '_')}"][key]
        text = f"kept {chosen} (valid {key} {valid[key]:.4f} vs {baseline} {base:.4f}" + (
            f", {gain:+.1%})" if gain is not None else ")")
    if report["refused"]:
        text += "; refused: " + "; ".join(f"{n}: {r}" for n, r in report["refused"].items())
    return text


def few_shot(model: MultiTaskAdapter, task: SequenceTask, config: TransferConfig | None = None) -> TransferResult:
    """The few-shot step after onboarding: fine-tune a trained recommendation model on a few interactions
    (``task``: training examples and a validation split over the current catalog) with model-based transfer,
    guarded against the model as it is.

    Each model-based candidate of ``config`` (default ``model:finetune`` and ``model:l2sp``) starts from
    ``model``; the guard compares them with ``"current"`` (``model`` untouched) on the validation split and
    keeps ``model`` unless a candidate beats it by more than ``min_gain``. When the model has other tasks
    besides "recommend", only ``model:freeze-shared`` runs: the shared item adapter, which those tasks read,
    stays as it is. :meth:`textguide.guide.Guide.fine_tune` builds the task from item-id sequences.
    """
    config = config or TransferConfig(candidates=("model:finetune", "model:l2sp"))
    if not isinstance(model, MultiTaskAdapter):
        raise ValueError(f"model must be a MultiTaskAdapter, got {type(model).__name__}")
    model.check_task("recommend")
    if not isinstance(task, SequenceTask):
        raise ValueError(f"task must be a SequenceTask of next-item examples, got {type(task).__name__}")
    if not len(task) or not task.valid_histories:
        raise ValueError("few-shot fine-tuning needs training examples and a validation split (valid_histories)")
    if config.select_metric is None:  # what early stopping watched
        config = replace(config, select_metric=TASKS[task.kind].select_metric)
    names = config.expanded_candidates()
    others = [n for n in names if not n.startswith("model:")]
    if others:
        raise ValueError(
            f"few-shot fine-tuning uses model-based candidates only (no source examples here), got {others}; "
            "use model:finetune, model:freeze-shared or model:l2sp"
        )
    note = None
    if set(model.config.tasks) != {"recommend"}:
        names = ["model:freeze-shared"]
        note = (f"the model also serves {sorted(set(model.config.tasks) - {'recommend'})}: only model:freeze-shared "
                "ran, so the shared item adapter they read is unchanged")
    model.eval()
    methods: dict[str, dict[str, Any]] = {
        "current": {"trained": False, "note": "the model as it is", "valid": validation_metrics(model, task, config.ks)}
    }
    models: dict[str, MultiTaskAdapter] = {"current": model}
    for name in names:
        logger.info("few-shot: training %s on %d examples", name, len(task))
        trained, info = _run(name, model, task, task, config)
        info["valid"] = validation_metrics(trained, task, config.ks)
        models[name], methods[name] = trained, info
        logger.info("few-shot: %s -> %s", name, info["valid"])
    report: dict[str, Any] = {
        "method": "auto", "baseline": "current", "select_metric": config.select_metric,
        "target_examples": len(task), "target_valid_rows": len(task.valid_histories),
        "methods": methods, "refused": {}, "config": config.to_dict(), **({"note": note} if note else {}),
    }
    chosen = _guard(methods, config, report, baseline="current")
    report["chosen"] = chosen
    report["summary"] = _summary(report)
    return TransferResult(models[chosen], chosen, report, models)


# ----------------------------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_transfer_report(guide: Any, report: dict[str, Any], name: str = REPORT_FILE) -> Path:
    """Write ``report`` as JSON to ``<guide.path>/reports/<name>`` (directory created if needed); returns the path.

    The guide must have a directory (``Guide.save`` or ``Guide.load`` first); ``reports/`` is kept when the
    guide is saved again.
    """
    if getattr(guide, "path", None) is None:
        raise ValueError("the guide has no directory yet: save it first (guide.save(path)), then save the report")
    folder = Path(guide.path) / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=1, default=_json_default, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
