"""Training: one generic loop over any tasks of :data:`textguide.tasks.TASKS`, its configuration, loss
weighting and checkpoints.

    loop.py         train(model, {task name: task data}, TrainConfig) -> TrainResult
    config.py       TrainConfig
    weighting.py    static, uncertainty, GradNorm and DWA loss weighting
    checkpoints.py  safetensors + JSON checkpoints (resume)

Task data, heads, losses and validation metrics live in the task modules (:mod:`textguide.tasks`).
"""

from .checkpoints import CHECKPOINT_FORMAT_VERSION
from .config import TrainConfig
from .loop import Task, TrainResult, train
from .weighting import DWAWeighting, GradNormWeighting, LossWeighting, StaticWeighting, UncertaintyWeighting

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "DWAWeighting",
    "GradNormWeighting",
    "LossWeighting",
    "StaticWeighting",
    "Task",
    "TrainConfig",
    "TrainResult",
    "UncertaintyWeighting",
    "train",
]
