"""Loss weighting: how the per-task losses of one step become one loss (static, uncertainty, GradNorm, DWA)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn

from ..adapters import MultiTaskAdapter
from .checkpoints import flatten_optimizer, unflatten_optimizer
from .config import TrainConfig

__all__ = [
    "DWAWeighting",
    "GradNormWeighting",
    "LossWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "make_weighting",
]


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
        tensors, meta = flatten_optimizer(self.optimizer.state_dict(), "optimizer")
        tensors["weights"] = self.weights.detach().clone()
        if self.initial is not None:
            tensors["initial"] = self.initial
        return tensors, {"optimizer": meta}

    def load_state(self, tensors, meta) -> None:
        with torch.no_grad():
            self.weights.copy_(tensors["weights"])
        self.initial = tensors.get("initial")
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"], "optimizer"))


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


def make_weighting(config: TrainConfig, names: list[str]) -> LossWeighting:
    if config.weighting == "uncertainty":
        return UncertaintyWeighting(names)
    if config.weighting == "gradnorm":
        return GradNormWeighting(names, config.gradnorm_alpha, config.gradnorm_lr)
    if config.weighting == "dwa":
        return DWAWeighting(names, config.dwa_temperature, config.dwa_window)
    return StaticWeighting(names, config.lambdas)

