"""Training loop for :class:`~textguide.adapters.MultiTaskAdapter`: one readable loop, nanoGPT style.

Tasks come from different datasets with different catalogs, so each task carries its own item embedding
matrix and refers to items by row index. Every step draws one batch from every task, sums the weighted
losses (static weights, uncertainty weighting, GradNorm or DWA) plus the soft-sharing penalty, and takes one
AdamW step. Every ``eval_every`` steps the validation metric of each task is computed (Recall@10, FITB
accuracy, AUC); their mean drives early stopping, and a checkpoint (safetensors + JSON, no pickle) is written.

Example::

    model = MultiTaskAdapter(AdapterConfig(input_dim=384, tasks=("recommend",)))
    task = SequenceTask(item_emb, histories, targets, valid_histories, valid_targets)
    result = train(model, {"recommend": task}, TrainConfig(steps=2000, eval_every=200))
    vectors = encode_items(model, item_emb, "recommend")     # index these with FAISS
    queries = recommend_queries(model, item_emb, [[3, 17, 5]])  # item rows, oldest first
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal, Protocol, Union

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .adapters import MultiTaskAdapter, encode_items
from .storage import atomic_directory
from .tasks import TASKS
from .tasks.coupon import CouponTask, coupon_logits, coupon_logits_indexed, coupon_probabilities
from .tasks.outfit import OutfitTask, outfit_queries
from .tasks.recommend import SequenceTask, next_item_examples, recommend_queries

__all__ = [
    "CouponTask",
    "OutfitTask",
    "SequenceTask",
    "Task",
    "TrainConfig",
    "TrainResult",
    "coupon_logits",
    "coupon_probabilities",
    "coupon_logits_indexed",
    "encode_items",
    "next_item_examples",
    "outfit_queries",
    "recommend_queries",
    "train",
]

logger = logging.getLogger("textguide")

CHECKPOINT_FORMAT_VERSION = 1
_CHECKPOINT = "last"  # sub-directory of checkpoint_dir, replaced atomically at every evaluation


@dataclass
class TrainConfig:
    """Training hyper-parameters (JSON-serialisable with :func:`dataclasses.asdict`).

    Attributes:
        steps: optimisation steps (each draws one batch from every task). Ignored when ``epochs`` is set.
        epochs: if set, ``steps = ceil(epochs * largest task size / batch_size)``.
        batch_size, lr, weight_decay, warmup_steps, grad_clip: the usual (AdamW, linear warm-up, clip norm).
        weighting: "static" (``lambdas``), "uncertainty" (Kendall et al. 2018), "gradnorm" (Chen et al. 2018)
            or "dwa" (Liu et al. 2019).
        lambdas: static task weights (default 1.0 each); used only with weighting="static".
        gradnorm_alpha, gradnorm_lr: GradNorm's asymmetry and the learning rate of its task weights.
        dwa_temperature, dwa_window: DWA's temperature and the number of steps per loss "epoch".
        eval_every: validate (and checkpoint) every this many steps, and at the end.
        patience: stop after this many evaluations without improvement of the mean validation metric (None: never).
        restore_best: load the best validated weights into the model at the end.
        seed: seeds torch, numpy and random.
        num_negatives: uniformly sampled negatives for the sequence task when the catalog exceeds full_softmax_max.
        slot_negatives: same-slot negatives per outfit example.
        outfit_visible_negatives: also use the partial outfit's own items as negatives (pushes queries away
            from what the outfit already has; on data where outfits share style words this can cost accuracy).
        slot_dropout: fraction of outfit examples whose wanted slot is hidden (-1), so that queries without a
            known slot work too.
        duplicate_threshold: text cosine above which an outfit candidate counts as a duplicate of the answer
            (left out of the softmax instead of being pushed away).
        full_softmax_max: catalogs up to this size use a softmax over all items.
        checkpoint_dir, resume: where to checkpoint; continue from the last checkpoint there.
        max_seconds: time budget; training stops (after a final evaluation) once it is spent.
        select_per_task: with several tasks, also keep each task's own best validated weights
            (``TrainResult.task_weights``) and count an evaluation as an improvement when any task improved
            (early stopping waits for every task to plateau, not for their mean). Kept in memory only.
        show_progress: tqdm bar; None shows it when the "textguide" logger is at INFO or below.
    """

    steps: int = 1000
    epochs: float | None = None
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    weighting: Literal["static", "uncertainty", "gradnorm", "dwa"] = "static"
    lambdas: dict[str, float] = field(default_factory=dict)
    gradnorm_alpha: float = 1.5
    gradnorm_lr: float = 0.025
    dwa_temperature: float = 2.0
    dwa_window: int = 50
    eval_every: int = 100
    patience: int | None = 5
    restore_best: bool = True
    seed: int = 0
    num_negatives: int = 1024
    slot_negatives: int = 16
    outfit_visible_negatives: bool = True
    slot_dropout: float = 0.2
    duplicate_threshold: float = 0.95
    full_softmax_max: int = 20_000
    checkpoint_dir: str | None = None
    resume: bool = False
    max_seconds: float | None = None
    select_per_task: bool = False
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        if self.weighting not in ("static", "uncertainty", "gradnorm", "dwa"):
            raise ValueError(
                f"TrainConfig.weighting must be one of static, uncertainty, gradnorm, dwa; got {self.weighting!r}"
            )
        for name in ("steps", "batch_size", "eval_every", "dwa_window", "num_negatives", "slot_negatives"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig.patience must be >= 1 or None, got {self.patience}")
        unknown = sorted(set(self.lambdas) - set(TASKS))
        if unknown:
            raise ValueError(f"TrainConfig.lambdas has unknown task(s) {unknown}; valid tasks: {', '.join(TASKS)}")
        if not 0.0 <= self.slot_dropout <= 1.0:
            raise ValueError(f"TrainConfig.slot_dropout must be in [0, 1], got {self.slot_dropout}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"TrainConfig.epochs must be > 0, got {self.epochs}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown fields raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)


@dataclass
class TrainResult:
    """What :func:`train` returns. ``history`` has one row per evaluation with keys ``step``, ``seconds``,
    ``loss/<task>`` (mean training loss since the previous row), ``weight/<task>``, ``valid/<task>`` and
    ``valid_mean``. With ``TrainConfig.select_per_task``: ``task_weights`` (task -> the state dict at that
    task's best validation metric) and ``task_best_steps``; empty otherwise."""

    history: list[dict[str, float]]
    best_step: int
    best_metrics: dict[str, float]
    task_weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    task_best_steps: dict[str, int] = field(default_factory=dict)


Task = Union[SequenceTask, OutfitTask, CouponTask]  # the training data of one task


# ----------------------------------------------------------------------------------------------------------
# loss weighting
# ----------------------------------------------------------------------------------------------------------


class LossWeighting(Protocol):
    """How per-task losses become one loss. ``combine`` returns (total, weights used)."""

    def parameters(self) -> list[torch.Tensor]: ...

    def combine(
        self, losses: dict[str, torch.Tensor], model: MultiTaskAdapter
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def end_step(self, losses: dict[str, float]) -> None: ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...


class StaticWeighting:
    """``L = sum_i lambda_i L_i`` with fixed ``lambdas`` (default 1.0)."""

    def __init__(self, names: list[str], lambdas: dict[str, float]) -> None:
        self.weights = {n: float(lambdas.get(n, 1.0)) for n in names}

    def parameters(self) -> list[torch.Tensor]:
        return []

    def combine(self, losses, model):
        return sum(self.weights[n] * loss for n, loss in losses.items()), dict(self.weights)

    def end_step(self, losses) -> None:
        pass

    def state(self):
        return {}, {}

    def load_state(self, tensors, meta) -> None:
        pass


class UncertaintyWeighting:
    """Kendall et al. 2018: learnable log-variances ``s_i``, ``L = sum_i exp(-s_i) L_i + s_i``."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.log_vars = nn.Parameter(torch.zeros(len(names)))

    def parameters(self) -> list[torch.Tensor]:
        return [self.log_vars]

    def combine(self, losses, model):
        stacked = torch.stack([losses[n] for n in self.names])
        total = (torch.exp(-self.log_vars) * stacked + self.log_vars).sum()
        return total, dict(zip(self.names, torch.exp(-self.log_vars).tolist()))

    def end_step(self, losses) -> None:
        pass

    def state(self):
        return {"log_vars": self.log_vars.detach().clone()}, {}

    def load_state(self, tensors, meta) -> None:
        with torch.no_grad():
            self.log_vars.copy_(tensors["log_vars"])


class GradNormWeighting:
    """Chen et al. 2018: learn weights ``w_i`` so that ``||grad_W w_i L_i||`` on the last shared layer ``W``
    tracks ``mean_G * r_i^alpha``, with ``r_i`` the relative inverse training rate ``(L_i / L_i(0)) / mean``.
    Weights are renormalised to sum to the number of tasks after every update."""

    def __init__(self, names: list[str], alpha: float, lr: float) -> None:
        self.names = names
        self.alpha = alpha
        self.weights = nn.Parameter(torch.ones(len(names)))
        self.optimizer = torch.optim.Adam([self.weights], lr=lr)
        self.initial: torch.Tensor | None = None

    def parameters(self) -> list[torch.Tensor]:
        return []  # updated by its own optimizer

    def combine(self, losses, model):
        stacked = torch.stack([losses[n] for n in self.names])
        if self.initial is None:
            self.initial = stacked.detach().clone()
        norms = []
        for name in self.names:
            params = model.gradnorm_parameters(name)
            grads = torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True)
            norms.append(torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.tensor(0.0))))
        grad_norms = torch.stack(norms).detach()  # ||grad_W L_i||; ||grad_W w_i L_i|| = w_i * that
        weights = self.weights.detach().clone()
        total = (weights * stacked).sum()

        weighted_norms = self.weights * grad_norms
        ratio = stacked.detach() / self.initial
        target = (weighted_norms.mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        self.optimizer.zero_grad(set_to_none=True)
        (weighted_norms - target).abs().sum().backward()
        self.optimizer.step()
        with torch.no_grad():
            self.weights.clamp_(min=1e-3)
            self.weights.mul_(len(self.names) / self.weights.sum())
        return total, dict(zip(self.names, weights.tolist()))

    def end_step(self, losses) -> None:
        pass

    def state(self):
        tensors, meta = _flatten_optimizer(self.optimizer.state_dict(), "optimizer")
        tensors["weights"] = self.weights.detach().clone()
        if self.initial is not None:
            tensors["initial"] = self.initial
        return tensors, {"optimizer": meta}

    def load_state(self, tensors, meta) -> None:
        with torch.no_grad():
            self.weights.copy_(tensors["weights"])
        self.initial = tensors.get("initial")
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"], "optimizer"))


class DWAWeighting:
    """Liu et al. 2019 (Dynamic Weight Average): ``lambda_k = K softmax_k(r_k / T)`` with ``r_k`` the ratio of task
    k's mean training loss over the last two windows of ``window`` steps (weights 1 until two windows exist)."""

    def __init__(self, names: list[str], temperature: float, window: int) -> None:
        self.names = names
        self.temperature = temperature
        self.window = window
        self.sums = [0.0] * len(names)
        self.count = 0
        self.means: list[list[float]] = []  # the last two completed windows

    def parameters(self) -> list[torch.Tensor]:
        return []

    def current(self) -> list[float]:
        """The weights for the next step."""
        if len(self.means) < 2:
            return [1.0] * len(self.names)
        ratios = np.array(self.means[-1]) / np.maximum(np.array(self.means[-2]), 1e-12)
        e = np.exp((ratios - ratios.max()) / self.temperature)
        return (len(self.names) * e / e.sum()).tolist()

    def combine(self, losses, model):
        weights = self.current()
        return sum(w * losses[n] for w, n in zip(weights, self.names)), dict(zip(self.names, weights))

    def end_step(self, losses) -> None:
        self.sums = [s + losses[n] for s, n in zip(self.sums, self.names)]
        self.count += 1
        if self.count == self.window:
            self.means = (self.means + [[s / self.count for s in self.sums]])[-2:]
            self.sums, self.count = [0.0] * len(self.names), 0

    def state(self):
        return {}, {"sums": self.sums, "count": self.count, "means": self.means}

    def load_state(self, tensors, meta) -> None:
        self.sums, self.count, self.means = list(meta["sums"]), int(meta["count"]), [list(m) for m in meta["means"]]


def _make_weighting(config: TrainConfig, names: list[str]) -> LossWeighting:
    if config.weighting == "uncertainty":
        return UncertaintyWeighting(names)
    if config.weighting == "gradnorm":
        return GradNormWeighting(names, config.gradnorm_alpha, config.gradnorm_lr)
    if config.weighting == "dwa":
        return DWAWeighting(names, config.dwa_temperature, config.dwa_window)
    return StaticWeighting(names, config.lambdas)


# ----------------------------------------------------------------------------------------------------------
# the training loop
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Progress:
    """Loop state that a checkpoint carries (besides weights, optimizer and RNGs)."""

    step: int = 0
    best_score: float | None = None
    best_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def train(
    model: MultiTaskAdapter,
    tasks: dict[str, Task],
    config: TrainConfig | None = None,
    regularizer: Callable[[MultiTaskAdapter], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` on every task in ``tasks`` ({task name: task data}) at once; returns the history.

    Each step draws one batch from every task, ``L = sum_i lambda_i L_i (+ soft-sharing penalty)
    (+ regularizer(model))``. ``regularizer`` is called once per step in training mode (textguide.transfer
    uses it for L2-SP and for MMD/CORAL between domains). Parameters with ``requires_grad=False`` are frozen:
    the optimizer never sees them. With validation data the best weights (mean validation metric) are kept
    in memory, and loaded at the end when ``config.restore_best``.
    """
    config = config or TrainConfig()
    names = _check_tasks(model, tasks)
    steps = config.steps
    if config.epochs is not None:
        steps = max(1, math.ceil(config.epochs * max(len(t) for t in tasks.values()) / config.batch_size))

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    rng = np.random.default_rng(config.seed)
    weighting = _make_weighting(config, names)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("every model parameter has requires_grad=False: nothing to train")
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2] + weighting.parameters()
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    progress = _Progress()
    best_weights: dict[str, torch.Tensor] | None = None
    task_best: dict[str, tuple[float, int, dict[str, torch.Tensor]]] = {}  # select_per_task: (metric, step, weights)
    checkpoint = Path(config.checkpoint_dir) / _CHECKPOINT if config.checkpoint_dir else None
    if config.resume:
        if checkpoint is not None and checkpoint.is_dir():
            progress, best_weights = _load_checkpoint(checkpoint, model, optimizer, weighting, rng, names)
            logger.info("resumed from %s at step %d", checkpoint, progress.step)
        else:
            logger.warning("resume=True but no checkpoint in %s; starting from scratch", config.checkpoint_dir)

    show = config.show_progress
    if show is None:
        show = logger.isEnabledFor(logging.INFO)
    bar = tqdm(total=steps, initial=progress.step, desc="train", disable=not show, dynamic_ncols=True)
    start_time = time.monotonic()
    loss_sums = {n: 0.0 for n in names}
    n_summed = 0
    weights: dict[str, float] = {}
    stopped = config.patience is not None and progress.bad_evals >= config.patience  # a resumed early stop
    while progress.step < steps and not stopped:
        model.train()
        if config.warmup_steps:
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (progress.step + 1) / config.warmup_steps)
        losses = {}
        for name in names:
            batch = tasks[name].batch(rng, config.batch_size, model.config.max_history, config)
            _, losses[name] = model(batch, name)
        total, weights = weighting.combine(losses, model)
        total = total + model.sharing_penalty()
        if regularizer is not None:
            total = total + regularizer(model)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()

        values = {n: float(loss.detach()) for n, loss in losses.items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(
                f"training diverged at step {progress.step + 1} (losses {values}); try a lower lr or grad_clip"
            )
        weighting.end_step(values)
        loss_sums = {n: loss_sums[n] + values[n] for n in names}
        n_summed += 1
        progress.step += 1
        bar.update(1)

        out_of_time = config.max_seconds is not None and time.monotonic() - start_time > config.max_seconds
        if progress.step % config.eval_every and progress.step < steps and not out_of_time:
            continue
        # evaluate, keep the best weights, checkpoint
        metrics = {n: m for n in names if (m := tasks[n].valid_metric(model)) is not None}
        row: dict[str, float] = {"step": progress.step, "seconds": round(time.monotonic() - start_time, 3)}
        row |= {f"loss/{n}": loss_sums[n] / n_summed for n in names}
        row |= {f"weight/{n}": w for n, w in weights.items()}
        row |= {f"valid/{n}": m for n, m in metrics.items()}
        loss_sums, n_summed = {n: 0.0 for n in names}, 0
        if metrics:
            score = float(np.mean(list(metrics.values())))
            row["valid_mean"] = score
            task_improved = config.select_per_task and _keep_task_best(task_best, metrics, progress.step, model)
            if progress.best_score is None or score > progress.best_score:
                progress.best_score, progress.best_step, progress.best_metrics = score, progress.step, metrics
                progress.bad_evals = 0
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif task_improved:
                progress.bad_evals = 0
            else:
                progress.bad_evals += 1
        progress.history.append(row)
        bar.set_postfix({k.split("/")[-1]: round(v, 4) for k, v in row.items() if k.startswith("valid/")})
        logger.info("step %d: %s", progress.step, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, weighting, rng, progress, best_weights, config, names)
        if config.patience is not None and progress.bad_evals >= config.patience:
            logger.info("early stopping at step %d (best %d)", progress.step, progress.best_step)
            stopped = True
        if out_of_time:
            logger.info("time budget of %.0f s spent at step %d", config.max_seconds, progress.step)
            break
    bar.close()

    if config.restore_best and best_weights is not None:
        model.load_state_dict(best_weights)
    model.eval()
    if progress.best_score is None:  # no validation data: the last step is the result
        progress.best_step = progress.step
    return TrainResult(history=progress.history, best_step=progress.best_step, best_metrics=progress.best_metrics,
                       task_weights={n: b[2] for n, b in task_best.items()},
                       task_best_steps={n: b[1] for n, b in task_best.items()})


def _keep_task_best(task_best: dict[str, tuple[float, int, dict[str, torch.Tensor]]], metrics: dict[str, float],
                    step: int, model: MultiTaskAdapter) -> bool:
    """Record the weights of every task whose validation metric beat its best so far; True if any did."""
    improved = [n for n, m in metrics.items() if n not in task_best or m > task_best[n][0]]
    if improved:
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for n in improved:
            task_best[n] = (metrics[n], step, weights)
    return bool(improved)


def _check_tasks(model: MultiTaskAdapter, tasks: dict[str, Task]) -> list[str]:
    """Validate the task dict against the model; returns the task names in a fixed order."""
    if not tasks:
        raise ValueError(f"no tasks given; pass {{name: task}} with names from {', '.join(model.config.tasks)}")
    for name, data in tasks.items():
        model.check_task(name)
        task = TASKS[name]
        if not isinstance(data, task.data_type):
            raise ValueError(f"tasks[{name!r}] must be a {task.data_type.__name__}, got {type(data).__name__}")
        task.check(model, data)
    return [t for t in TASKS if t in tasks]


# ----------------------------------------------------------------------------------------------------------
# checkpoints: safetensors + JSON, no pickle
# ----------------------------------------------------------------------------------------------------------


def _flatten_optimizer(state: dict, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (``prefix.state.<param>.<key>``) and JSON scalars."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{idx}.{key}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> dict:
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}.state."
    for name, value in tensors.items():
        if name.startswith(head):
            idx, key = name[len(head) :].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _save_checkpoint(
    directory: Path,
    model: MultiTaskAdapter,
    optimizer: torch.optim.Optimizer,
    weighting: LossWeighting,
    rng: np.random.Generator,
    progress: _Progress,
    best_weights: dict[str, torch.Tensor] | None,
    config: TrainConfig,
    names: list[str],
) -> None:
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if best_weights is not None:
        tensors |= {f"best.{k}": v.contiguous() for k, v in best_weights.items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict(), "optimizer")
    w_tensors, w_meta = weighting.state()
    tensors |= opt_tensors
    tensors |= {f"weighting.{k}": v.contiguous() for k, v in w_tensors.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    py_state = random.getstate()
    meta = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "adapter_config": model.config.to_dict(),
        "train_config": config.to_dict(),
        "tasks": names,
        "progress": asdict(progress),
        "optimizer": opt_meta,
        "weighting": w_meta,
        "numpy_rng": rng.bit_generator.state,
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
    }
    with atomic_directory(directory) as tmp:
        save_file(tensors, str(tmp / "checkpoint.safetensors"))
        with open(tmp / "checkpoint.json", "w", encoding="utf-8") as f:
            json.dump(meta, f)


def _load_checkpoint(
    directory: Path,
    model: MultiTaskAdapter,
    optimizer: torch.optim.Optimizer,
    weighting: LossWeighting,
    rng: np.random.Generator,
    names: list[str],
) -> tuple[_Progress, dict[str, torch.Tensor] | None]:
    meta = json.loads((directory / "checkpoint.json").read_text(encoding="utf-8"))
    hint = "use another checkpoint_dir or resume=False"
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(
            f"{directory}: checkpoint format_version expected {CHECKPOINT_FORMAT_VERSION}, "
            f"found {meta.get('format_version')!r}; {hint}"
        )
    if meta["adapter_config"] != model.config.to_dict():
        raise ValueError(
            f"{directory}: checkpoint was written for another AdapterConfig ({meta['adapter_config']}); {hint}"
        )
    if meta["tasks"] != names:
        raise ValueError(f"{directory}: checkpoint was written for tasks {meta['tasks']}, not {names}; {hint}")
    tensors = load_file(str(directory / "checkpoint.safetensors"))
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")} or None
    optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"], "optimizer"))
    weighting_tensors = {k[len("weighting.") :]: v for k, v in tensors.items() if k.startswith("weighting.")}
    weighting.load_state(weighting_tensors, meta["weighting"])
    torch.set_rng_state(tensors["rng.torch"])
    rng.bit_generator.state = meta["numpy_rng"]
    version, internal, gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return _Progress(**meta["progress"]), best
