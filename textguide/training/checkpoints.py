"""Checkpoints of the training loop: safetensors + JSON, no pickle.

A checkpoint is a directory ``<checkpoint_dir>/last`` replaced atomically at every evaluation: the model, the
best weights so far, the optimizer and loss-weighting state, the RNG states and the loop's :class:`Progress`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..adapters import MultiTaskAdapter
from ..storage import atomic_directory
from .config import TrainConfig

if TYPE_CHECKING:
    from .weighting import LossWeighting

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CHECKPOINT_SUBDIR",
    "Progress",
    "flatten_optimizer",
    "load_checkpoint",
    "save_checkpoint",
    "unflatten_optimizer",
]

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_SUBDIR = "last"  # sub-directory of checkpoint_dir, replaced atomically at every evaluation


@dataclass
class Progress:
    """Loop state that a checkpoint carries (besides weights, optimizer and RNGs)."""

    step: int = 0
    best_score: float | None = None
    best_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def flatten_optimizer(state: dict, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (``prefix.state.<param>.<key>``) and JSON scalars."""
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{idx}.{key}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> dict:
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


def save_checkpoint(
    directory: Path,
    model: MultiTaskAdapter,
    optimizer: torch.optim.Optimizer,
    weighting: LossWeighting,
    rng: np.random.Generator,
    progress: Progress,
    best_weights: dict[str, torch.Tensor] | None,
    config: TrainConfig,
    names: list[str],
    average: dict[str, torch.Tensor] | None = None,
) -> None:
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if best_weights is not None:
        tensors |= {f"best.{k}": v.contiguous() for k, v in best_weights.items()}
    if average is not None:  # TrainConfig.ema_decay: the moving average of the weights
        tensors |= {f"ema.{k}": v.contiguous() for k, v in average.items()}
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict(), "optimizer")
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


def load_checkpoint(
    directory: Path,
    model: MultiTaskAdapter,
    optimizer: torch.optim.Optimizer,
    weighting: LossWeighting,
    rng: np.random.Generator,
    names: list[str],
    average: dict[str, torch.Tensor] | None = None,
) -> tuple[Progress, dict[str, torch.Tensor] | None]:
    """Restore a checkpoint into the model, optimizer, weighting and RNGs (and ``average``, the weights' moving
    average, in place when the checkpoint has one); returns the loop's progress and the best weights."""
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
    if average is not None:  # a checkpoint written without averaging: the average starts from its weights
        saved = {k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")} or model.state_dict()
        for k, v in saved.items():
            if k in average:
                average[k].copy_(v)
    optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"], "optimizer"))
    weighting_tensors = {k[len("weighting.") :]: v for k, v in tensors.items() if k.startswith("weighting.")}
    weighting.load_state(weighting_tensors, meta["weighting"])
    torch.set_rng_state(tensors["rng.torch"])
    rng.bit_generator.state = meta["numpy_rng"]
    version, internal, gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return Progress(**meta["progress"]), best
