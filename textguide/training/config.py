"""The training loop's configuration: :class:`TrainConfig` (a dataclass, JSON round trip)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..storage import check_config_fields
from ..tasks import TASKS

__all__ = ["TrainConfig"]


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
        ema_decay: if > 0, keep an exponential moving average of the weights (decay per step, warmed up as
            ``min(ema_decay, (1 + t) / (10 + t))``); validation, best-weight selection and the returned model
            use the averaged weights, which are less noisy than the last step's. 0 turns it off.
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
    ema_decay: float = 0.0
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
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1) (0 turns averaging off), got {self.ema_decay}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"TrainConfig.epochs must be > 0, got {self.epochs}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown fields raise ValueError naming them."""
        check_config_fields(cls, d)
        return cls(**d)

