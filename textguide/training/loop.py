"""Training loop for :class:`~textguide.adapters.MultiTaskAdapter`: one readable loop, nanoGPT style.

Tasks come from different datasets with different catalogs, so each task carries its own item embedding
matrix and refers to items by row index. Every step draws one batch from every task, sums the weighted
losses (static weights, uncertainty weighting, GradNorm or DWA) plus the soft-sharing penalty, and takes one
AdamW step. Every ``eval_every`` steps each task's selection metric (``TASKS[name].select_metric``, computed by
the task data's ``valid_metric``) is computed on its validation split; their mean drives early stopping, and a
checkpoint (safetensors + JSON, no pickle; :mod:`textguide.training.checkpoints`) is written.

Example::

    from textguide.adapters import AdapterConfig, MultiTaskAdapter, encode_items
    from textguide.tasks.recommend import SequenceTask, recommend_queries
    from textguide.training import TrainConfig, train

    model = MultiTaskAdapter(AdapterConfig(input_dim=384, tasks=("recommend",)))
    task = SequenceTask(item_emb, histories, targets, valid_histories, valid_targets)
    result = train(model, {"recommend": task}, TrainConfig(steps=2000, eval_every=200))
    vectors = encode_items(model, item_emb, "recommend")     # index these with FAISS
    queries = recommend_queries(model, item_emb, [[3, 17, 5]])  # item rows, oldest first
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters import MultiTaskAdapter
from ..tasks import TASKS
from ..tasks.coupon import CouponTask
from ..tasks.outfit import OutfitTask
from ..tasks.recommend import SequenceTask
from .checkpoints import CHECKPOINT_SUBDIR, Progress, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .weighting import make_weighting

__all__ = ["Task", "TrainResult", "train"]

logger = logging.getLogger("textguide")


@dataclass
class TrainResult:
    """What :func:`train` returns. ``history`` has one row per evaluation with keys ``step``, ``seconds``,
    ``loss/<task>`` (mean training loss since the previous row), ``weight/<task>``, ``valid/<task>`` and
    ``valid_mean``. With ``TrainConfig.select_per_task``: ``task_weights`` (task -> the state dict at that
    task's best validation metric) and ``task_best_steps``; empty otherwise. ``members``: for an ensemble whose
    members were trained apart (textguide.bench.workflows.train_members), each member's own result."""

    history: list[dict[str, float]]
    best_step: int
    best_metrics: dict[str, float]
    task_weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    task_best_steps: dict[str, int] = field(default_factory=dict)
    members: list["TrainResult"] = field(default_factory=list)  # an ensemble trained member by member: theirs


Task = Union[SequenceTask, OutfitTask, CouponTask]  # the training data of one task


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
    weighting = make_weighting(config, names)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("every model parameter has requires_grad=False: nothing to train")
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2] + weighting.parameters()
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    progress = Progress()
    best_weights: dict[str, torch.Tensor] | None = None
    task_best: dict[str, tuple[float, int, dict[str, torch.Tensor]]] = {}  # select_per_task: (metric, step, weights)
    checkpoint = Path(config.checkpoint_dir) / CHECKPOINT_SUBDIR if config.checkpoint_dir else None
    average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
    if config.resume:
        if checkpoint is not None and checkpoint.is_dir():
            progress, best_weights = load_checkpoint(checkpoint, model, optimizer, weighting, rng, names,
                                                     average.weights if average else None)
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
        if average is not None:
            average.update(progress.step)

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
        # evaluate (the averaged weights, with ema_decay), keep the best weights, checkpoint
        live = average.swap_in(model) if average is not None else None
        metrics = {n: m for n in names if (m := tasks[n].valid_metric(model)) is not None}
        row: dict[str, float] = {"step": progress.step, "seconds": round(time.monotonic() - start_time, 3)}
        row |= {f"loss/{n}": loss_sums[n] / n_summed for n in names}
        row |= {f"weight/{n}": w for n, w in weights.items()}
        row |= {f"valid/{n}": m for n, m in metrics.items()}
        loss_sums, n_summed = {n: 0.0 for n in names}, 0
        if metrics:
            score = float(np.mean(list(metrics.values())))
            row["valid_mean"] = score
            task_improved = config.select_per_task and keep_task_best(task_best, metrics, progress.step, model)
            if progress.best_score is None or score > progress.best_score:
                progress.best_score, progress.best_step, progress.best_metrics = score, progress.step, metrics
                progress.bad_evals = 0
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif task_improved:
                progress.bad_evals = 0
            else:
                progress.bad_evals += 1
        if live is not None:
            model.load_state_dict(live)  # back to the optimizer's weights
        progress.history.append(row)
        bar.set_postfix({k.split("/")[-1]: round(v, 4) for k, v in row.items() if k.startswith("valid/")})
        logger.info("step %d: %s", progress.step, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, optimizer, weighting, rng, progress, best_weights, config, names,
                            average.weights if average else None)
        if config.patience is not None and progress.bad_evals >= config.patience:
            logger.info("early stopping at step %d (best %d)", progress.step, progress.best_step)
            stopped = True
        if out_of_time:
            logger.info("time budget of %.0f s spent at step %d", config.max_seconds, progress.step)
            break
    bar.close()

    if config.restore_best and best_weights is not None:
        model.load_state_dict(best_weights)
    elif average is not None:  # no validation (or restore_best=False): the averaged weights are the result
        average.swap_in(model)
    model.eval()
    if progress.best_score is None:  # no validation data: the last step is the result
        progress.best_step = progress.step
    return TrainResult(history=progress.history, best_step=progress.best_step, best_metrics=progress.best_metrics,
                       task_weights={n: b[2] for n, b in task_best.items()},
                       task_best_steps={n: b[1] for n, b in task_best.items()})


class WeightAverage:
    """An exponential moving average of a model's floating-point weights (``TrainConfig.ema_decay``)."""

    def __init__(self, model: MultiTaskAdapter, decay: float) -> None:
        self.decay = decay
        # the model's tensors (state_dict aliases them; load_state_dict copies in place, so they stay valid)
        self.live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.weights = {k: v.detach().clone() for k, v in self.live.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the weights after optimizer step ``step`` (0-based), with the warmed-up decay."""
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in self.live.items():
            self.weights[k].lerp_(v, 1.0 - d)

    def swap_in(self, model: MultiTaskAdapter) -> dict[str, torch.Tensor]:
        """Load the averaged weights into ``model``; return (a copy of) the weights they replaced."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict({**live, **self.weights})
        return live


def keep_task_best(task_best: dict[str, tuple[float, int, dict[str, torch.Tensor]]], metrics: dict[str, float],
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

