"""Transfer methods between domains: the domain distances (MMD, CORAL), density-ratio instance weights, the
model-based helpers (freezing the shared parameters, L2-SP) and the joint source + target tasks that feature- and
instance-based transfer train on. :mod:`textguide.transfer.guard` runs them and guards against negative transfer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..adapters import MultiTaskAdapter, encode_items
from ..inputs import gather, pad
from ..metrics import text_queries
from ..tasks.outfit import OutfitTask
from ..tasks.recommend import SequenceTask
from ..training import TrainConfig

if TYPE_CHECKING:
    from .guard import TransferConfig

__all__ = [
    "JointOutfitTask",
    "JointTask",
    "coral",
    "domain_weights",
    "example_embeddings",
    "feature_regularizer",
    "freeze_shared",
    "item_distances",
    "joint_task",
    "l2sp_penalty",
    "mmd",
    "retarget_slots",
    "shared_parameter_names",
]

_SHARED_PREFIXES = ("item_adapter.", "towers.", "experts.", "gates.")


# ----------------------------------------------------------------------------------------------------------
# distances and weights
# ----------------------------------------------------------------------------------------------------------


def _pair(x: Any, y: Any, min_rows: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 2-D float tensors with the same number of columns (numpy arrays become float64 tensors)."""
    x = torch.as_tensor(x, dtype=torch.float64) if not torch.is_tensor(x) else x
    y = torch.as_tensor(y, dtype=torch.float64) if not torch.is_tensor(y) else y
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(f"{what} takes two 2-D (n, dim) matrices, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"mismatched embedding dimensions: x has {x.shape[1]} columns, y has {y.shape[1]}; "
            "represent both domains in the same space (same encoder / same adapter)"
        )
    if len(x) < min_rows or len(y) < min_rows:
        raise ValueError(f"{what} needs at least {min_rows} rows in each matrix, got {len(x)} and {len(y)}")
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return x, y


def mmd(x: Any, y: Any, bandwidths: Sequence[float] = (0.25, 0.5, 1.0, 2.0)) -> torch.Tensor:
    """Squared maximum mean discrepancy between the rows of ``x`` (n, d) and ``y`` (m, d) (a 0-d tensor).

    Biased (V-statistic) estimate with the kernel ``k(a, b) = sum_s exp(-||a - b||^2 / (2 s^2))`` over the
    bandwidths ``s``: ``mean k(x, x') + mean k(y, y') - 2 mean k(x, y)`` (all pairs, diagonals included), so it
    is >= 0 and 0 when the two samples are equal. Differentiable; numpy input is computed in float64.
    """
    x, y = _pair(x, y, 1, "mmd")
    bw = [float(b) for b in bandwidths]
    if not bw or min(bw) <= 0:
        raise ValueError(f"bandwidths must be positive numbers, got {list(bandwidths)}")

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = (a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T).clamp_min(0)
        return sum(torch.exp(-d2 / (2 * s * s)) for s in bw)

    return kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()


def coral(x: Any, y: Any) -> torch.Tensor:
    """CORAL distance ``||C_x - C_y||_F^2 / (4 d^2)`` between the feature covariances (unbiased, n - 1) of the
    rows of ``x`` (n, d) and ``y`` (m, d); n, m >= 2. Differentiable; numpy input is computed in float64."""
    x, y = _pair(x, y, 2, "coral")
    d = x.shape[1]

    def cov(a: torch.Tensor) -> torch.Tensor:
        c = a - a.mean(0, keepdim=True)
        return c.T @ c / (len(a) - 1)

    return (cov(x) - cov(y)).pow(2).sum() / (4 * d * d)


def _fit_domain_classifier(source_emb: np.ndarray, target_emb: np.ndarray, l2: float, seed: int) -> tuple[np.ndarray, float]:
    """Class-balanced L2-regularised logistic regression (target = 1) fitted with L-BFGS in float64."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.concatenate([source_emb, target_emb]).astype(np.float64))
    y = torch.cat([torch.zeros(len(source_emb)), torch.ones(len(target_emb))]).double()
    sample_w = torch.cat([torch.full((len(source_emb),), 0.5 / len(source_emb)),
                          torch.full((len(target_emb),), 0.5 / len(target_emb))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ w + b
        loss = (sample_w * torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        loss = loss + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach())


def domain_weights(
    source_emb: np.ndarray,
    target_emb: np.ndarray,
    clip: float = 10.0,
    l2: float = 1e-3,
    seed: int = 0,
    max_fit_rows: int | None = 20_000,
) -> np.ndarray:
    """Importance weights ``min(clip, p_target(x) / p_source(x))`` (n_source,) for the source rows.

    A logistic-regression domain classifier (target = 1) is fitted on the rows of both matrices with balanced
    class weights, so its odds ``p(target | x) / p(source | x)`` estimate the density ratio
    ``p_target(x) / p_source(x)``; source points that look like target points get weights above 1. The ratio
    is clipped at ``clip`` (a few near-perfectly target-like points would otherwise dominate). The classifier
    is fitted on at most ``max_fit_rows`` rows per domain (a seeded random subsample; None = all rows) and
    applied to every source row.
    """
    source_emb = np.asarray(source_emb, dtype=np.float64)
    target_emb = np.asarray(target_emb, dtype=np.float64)
    if source_emb.ndim != 2 or target_emb.ndim != 2:
        raise ValueError(f"source_emb and target_emb must be 2-D, got {source_emb.shape} and {target_emb.shape}")
    if source_emb.shape[1] != target_emb.shape[1]:
        raise ValueError(
            f"mismatched embedding dimensions: source_emb has {source_emb.shape[1]} columns, target_emb has "
            f"{target_emb.shape[1]}; embed both domains with the same encoder"
        )
    if not len(source_emb) or not len(target_emb):
        raise ValueError(f"need rows in both domains, got {len(source_emb)} source and {len(target_emb)} target")
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    rng = np.random.default_rng(seed)

    def fit_rows(x: np.ndarray) -> np.ndarray:
        if max_fit_rows is None or len(x) <= max_fit_rows:
            return x
        return x[np.sort(rng.choice(len(x), size=max_fit_rows, replace=False))]

    w, b = _fit_domain_classifier(fit_rows(source_emb), fit_rows(target_emb), l2, seed)
    logit = np.clip(source_emb @ w + b, -50, 50)
    return np.minimum(np.exp(logit), clip)  # odds = p / (1 - p) = exp(logit)


# ----------------------------------------------------------------------------------------------------------
# model-based helpers
# ----------------------------------------------------------------------------------------------------------


def shared_parameter_names(model: MultiTaskAdapter) -> list[str]:
    """Names of the parameters shared by every task: the item adapter (hard), towers (soft), experts + gates."""
    return [n for n, _ in model.named_parameters() if n.startswith(_SHARED_PREFIXES)]


def freeze_shared(model: MultiTaskAdapter) -> list[str]:
    """Set ``requires_grad=False`` on the shared parameters; returns their names (undo with requires_grad_)."""
    names = set(shared_parameter_names(model))
    for n, p in model.named_parameters():
        if n in names:
            p.requires_grad_(False)
    return sorted(names)


def l2sp_penalty(model: MultiTaskAdapter, reference: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
    """L2-SP: ``weight * sum over trainable parameters of ||theta - theta_reference||^2`` (a 0-d tensor)."""
    total = next(model.parameters()).new_zeros(())
    for n, p in model.named_parameters():
        if p.requires_grad and n in reference:
            total = total + (p - reference[n]).pow(2).sum()
    return weight * total


# ----------------------------------------------------------------------------------------------------------
# source + target together
# ----------------------------------------------------------------------------------------------------------


@dataclass
class JointTask(SequenceTask):
    """Source and target examples in one task: items ``[0, n_source)`` are the source catalog, the rest the
    target's. A row is scored against its own domain's items only (all of them up to ``full_softmax_max``,
    else in-batch targets + ``num_negatives`` sampled items of its domain); validation is the target's."""

    n_source: int = 0
    target: SequenceTask | None = None

    def batch(self, rng: np.random.Generator, batch_size: int, max_history: int, config: TrainConfig) -> dict:
        rows = self.sample_rows(rng, batch_size)
        hist, mask = pad([self.histories[r] for r in rows], max_history)
        targets = self.targets[rows]
        parts = [targets]
        for lo, hi in ((0, self.n_source), (self.n_source, len(self.item_emb))):
            if hi - lo <= config.full_softmax_max:
                parts.append(np.arange(lo, hi))
            else:
                parts.append(lo + rng.integers(hi - lo, size=config.num_negatives))
        cand = np.concatenate(parts)
        seen = np.concatenate([np.where(mask, hist, -1), targets[:, None]], axis=1)
        exclude = (cand[None, None, :] == seen[:, :, None]).any(axis=1)  # history and copies of the target
        exclude |= (cand[None, :] >= self.n_source) != (targets[:, None] >= self.n_source)  # other domain
        exclude[np.arange(batch_size), np.arange(batch_size)] = False
        return {
            "history": gather(self.item_emb, hist),
            "history_mask": torch.from_numpy(mask),
            "candidates": gather(self.item_emb, cand),
            "exclude": torch.from_numpy(exclude),
            "targets": torch.arange(batch_size),
        }

    def valid_metric(self, model: MultiTaskAdapter) -> float | None:
        return None if self.target is None else self.target.valid_metric(model)


@dataclass
class JointOutfitTask(OutfitTask):
    """Source and target baskets in one task: items ``[0, n_source)`` are the source catalog's. Slots
    ``[0, n_target_slots)`` are the target's; source slots are shifted past them, so distractors always come from
    the answer's own domain and slot. In-batch answers of the other domain are left out of a row's softmax, and
    source rows query with the unknown slot (-1): the model's slot vocabulary is the target's."""

    n_source: int = 0
    n_target_slots: int = 0
    target: OutfitTask | None = None

    def batch(self, rng: np.random.Generator, batch_size: int, max_history: int, config: TrainConfig) -> dict:
        positives, visible = self.draw(rng, batch_size)
        out = self.assemble(rng, positives, visible, max_history, config)
        source = positives < self.n_source
        out["exclude"][:, :batch_size] |= torch.from_numpy(source[:, None] != source[None, :])
        out["slot"][torch.from_numpy(source)] = -1
        out["items_slot"][out["items_slot"] >= self.n_target_slots] = -1  # source slots are not the model's
        return out

    @property
    def n_query_slots(self) -> int:
        return self.n_target_slots  # source rows query with -1: their (shifted) slots only pick distractors

    def valid_metric(self, model: MultiTaskAdapter) -> float | None:
        return None if self.target is None else self.target.valid_metric(model)


def retarget_slots(model: MultiTaskAdapter, n_slots: int) -> MultiTaskAdapter:
    """A copy of an outfit model with a new slot vocabulary of ``n_slots`` slots (the target domain's).

    Every new slot, and the unknown slot, starts as the source's learned "unknown slot" embedding, so before
    any target training the copy scores exactly like the source model queried with slot -1.
    """
    model.check_task("outfit")
    if n_slots < 0:
        raise ValueError(f"n_slots must be >= 0, got {n_slots}")
    new = copy.deepcopy(model)
    unknown = model.outfit.slot.weight.detach()[-1]
    new.config.n_slots = n_slots
    new.outfit.n_slots = n_slots
    new.outfit.slot = torch.nn.Embedding(n_slots + 1, unknown.shape[0])
    with torch.no_grad():
        new.outfit.slot.weight.copy_(unknown.expand(n_slots + 1, -1))
    if new.config.outfit_pair_rank:  # every new slot pair starts as the source's (unknown, unknown) pair
        n_pairs = (n_slots + 1) ** 2
        for name in ("pair_down", "pair_up"):
            last = getattr(model.outfit, name).detach()[-1]
            setattr(new.outfit, name, torch.nn.Parameter(last.expand(n_pairs, -1, -1).clone()))
    return new


def _source_weights(source: Any, target: Any, source_weights: np.ndarray | None,
                    source_share: float) -> np.ndarray:
    w_s = np.ones(len(source)) if source_weights is None else np.asarray(source_weights, dtype=np.float64)
    if not len(target):
        return w_s
    return np.concatenate([source_share * w_s / w_s.sum(), np.full(len(target), (1 - source_share) / len(target))])


def joint_outfit_task(source: OutfitTask, target: OutfitTask, source_weights: np.ndarray | None,
                       source_share: float) -> JointOutfitTask:
    n_s, n_t_slots = len(source.item_emb), target.n_query_slots
    src_slots = np.where(source.item_slots >= 0, source.item_slots, source.n_query_slots) + n_t_slots
    return JointOutfitTask(
        np.concatenate([source.item_emb, target.item_emb]),
        source.outfits + [[i + n_s for i in o] for o in target.outfits],
        np.concatenate([src_slots, target.item_slots]),
        weights=_source_weights(source, target, source_weights, source_share),
        n_source=n_s,
        n_target_slots=n_t_slots,
        target=target,
    )


def joint_task(source: Any, target: Any, source_weights: np.ndarray | None,
                source_share: float) -> JointTask | JointOutfitTask:
    if isinstance(target, OutfitTask):
        return joint_outfit_task(source, target, source_weights, source_share)
    n_s = len(source.item_emb)
    weights = _source_weights(source, target, source_weights, source_share)
    return JointTask(
        np.concatenate([source.item_emb, target.item_emb]),
        source.histories + [[i + n_s for i in h] for h in target.histories],
        np.concatenate([source.targets, target.targets + n_s]).astype(np.int64),
        weights=weights,
        n_source=n_s,
        target=target,
    )


def example_embeddings(task: SequenceTask | OutfitTask) -> np.ndarray:
    """One text vector per example: the normalised mean of its items (history + target, or the basket)."""
    return text_queries(task.item_emb, task.example_items())


def feature_regularizer(source: Any, target: Any, config: TransferConfig
                         ) -> Callable[[MultiTaskAdapter], torch.Tensor]:
    rng = np.random.default_rng(config.seed + 1)
    m = config.feature_batch
    dist = mmd if config.feature_distance == "mmd" else coral
    users = config.feature_users and len(target) > 0 and len(source) > 0
    head = target.kind

    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return dist(a, b, config.bandwidths) if dist is mmd else dist(a, b)

    def regularizer(model: MultiTaskAdapter) -> torch.Tensor:
        xs = model.item_vectors(gather(source.item_emb, rng.integers(len(source.item_emb), size=m)), head)
        xt = model.item_vectors(gather(target.item_emb, rng.integers(len(target.item_emb), size=m)), head)
        d = distance(xs, xt)
        if users:
            us = source.training_queries(model, rng.integers(len(source), size=m))
            ut = target.training_queries(model, rng.integers(len(target), size=m))
            d = d + distance(us, ut)
        return config.alpha * d

    return regularizer


@torch.inference_mode()
def item_distances(model: MultiTaskAdapter, source: Any, target: Any, config: TransferConfig,
                    n: int = 1000) -> dict[str, float]:
    """MMD and CORAL between adapted source and target item vectors (fixed samples; diagnostics)."""
    rng = np.random.default_rng(config.seed + 2)
    xs = encode_items(model, source.item_emb[rng.integers(len(source.item_emb), size=n)], target.kind)
    xt = encode_items(model, target.item_emb[rng.integers(len(target.item_emb), size=n)], target.kind)
    return {"mmd": float(mmd(xs, xt, config.bandwidths)), "coral": float(coral(xs, xt))}


