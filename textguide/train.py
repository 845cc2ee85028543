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
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, Protocol, TypeVar, Union

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .adapters import TASKS, MultiTaskAdapter
from .evaluate import fitb_accuracy, rank_of_target, roc_auc
from .storage import atomic_directory

__all__ = [
    "CouponTask",
    "OutfitTask",
    "SequenceTask",
    "Task",
    "TrainConfig",
    "TrainResult",
    "coupon_logits",
    "coupon_probabilities",
    "encode_items",
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
    ``valid_mean``."""

    history: list[dict[str, float]]
    best_step: int
    best_metrics: dict[str, float]


# ----------------------------------------------------------------------------------------------------------
# tasks: plain dataclasses of indices into a per-task item embedding matrix
# ----------------------------------------------------------------------------------------------------------


T = TypeVar("T")


def next_item_examples(sequences: Sequence[Sequence[T]], max_history: int = 50) -> tuple[list[list[T]], list[T]]:
    """Every (history, next item) pair of each sequence (oldest first): the item at position i with the at most
    ``max_history`` items before it."""
    hist = [list(s[max(0, i - max_history):i]) for s in sequences for i in range(1, len(s))]
    targ = [s[i] for s in sequences for i in range(1, len(s))]
    return hist, targ


def _check_weights(weights: Any, n: int, per: str) -> np.ndarray | None:
    """Sampling weights of a task's examples: None, or ``n`` finite numbers >= 0 with a positive sum."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be {n} finite numbers >= 0 (one per {per}), got shape {w.shape}")
    if len(w) and w.sum() <= 0:
        raise ValueError("weights sum to 0: give at least one example a positive weight")
    return w


def _sample_rows(rng: np.random.Generator, n: int, size: int, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return rng.integers(n, size=size)
    return rng.choice(n, size=size, p=weights / weights.sum())


@dataclass
class SequenceTask:
    """Next-item recommendation: predict ``targets[i]`` from ``histories[i]`` (time order, oldest first).

    Loss: softmax cross-entropy over all items (catalogs up to ``full_softmax_max``), else over in-batch targets
    plus uniformly sampled items; history items are left out of the softmax except the target.
    Validation: Recall@10 by full ranking over all items, history excluded.
    ``weights`` (optional, one non-negative number per example) makes batches sample example ``i`` with
    probability ``weights[i] / sum(weights)`` instead of uniformly (instance re-weighting, textguide.transfer).
    """

    item_emb: np.ndarray
    histories: list[list[int]]
    targets: list[int]
    valid_histories: list[list[int]] | None = None
    valid_targets: list[int] | None = None
    weights: np.ndarray | None = None
    kind: ClassVar[str] = "recommend"

    def __post_init__(self) -> None:
        self.item_emb = _as_embeddings(self.item_emb, "item_emb")
        n = len(self.item_emb)
        self.histories = _index_lists(self.histories, n, "histories")
        self.targets = _index_array(self.targets, n, "targets", len(self.histories), "histories")
        if (self.valid_histories is None) != (self.valid_targets is None):
            raise ValueError("give both valid_histories and valid_targets, or neither")
        if self.valid_histories is not None:
            self.valid_histories = _index_lists(self.valid_histories, n, "valid_histories")
            self.valid_targets = _index_array(
                self.valid_targets, n, "valid_targets", len(self.valid_histories), "valid_histories"
            )
        self.weights = _check_weights(self.weights, len(self.targets), "history")

    def __len__(self) -> int:
        return len(self.targets)

    def sample_rows(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` example rows: uniform, or proportional to ``weights`` when given."""
        return _sample_rows(rng, len(self.targets), size, self.weights)

    def batch(self, rng: np.random.Generator, batch_size: int, max_history: int, config: TrainConfig) -> dict:
        """A training batch for ``MultiTaskAdapter.forward(batch, "recommend")``."""
        rows = self.sample_rows(rng, batch_size)
        hist, mask = _pad([self.histories[r] for r in rows], max_history)
        targets = self.targets[rows]
        n = len(self.item_emb)
        seen = np.concatenate([np.where(mask, hist, -1), targets[:, None]], axis=1)  # history + duplicates of target
        if n <= config.full_softmax_max:
            candidates, target_cols = _gather(self.item_emb, slice(None)), targets
            exclude = np.zeros((batch_size, n), dtype=bool)
            r = np.repeat(np.arange(batch_size), seen.shape[1])
            ok = seen.ravel() >= 0
            exclude[r[ok], seen.ravel()[ok]] = True
        else:
            cand_ids = np.concatenate([targets, rng.integers(n, size=config.num_negatives)])
            candidates, target_cols = _gather(self.item_emb, cand_ids), np.arange(batch_size)
            exclude = (cand_ids[None, None, :] == seen[:, :, None]).any(axis=1)
        exclude[np.arange(batch_size), target_cols] = False
        return {
            "history": _gather(self.item_emb, hist),
            "history_mask": torch.from_numpy(mask),
            "candidates": candidates,
            "exclude": torch.from_numpy(exclude),
            "targets": torch.from_numpy(np.asarray(target_cols, dtype=np.int64)),
        }

    def valid_metric(self, model: MultiTaskAdapter) -> float | None:
        """Recall@10 over all items (history excluded) on the validation sequences; None without them."""
        if not self.valid_histories:
            return None
        vectors = encode_items(model, self.item_emb, "recommend")
        ranks = []
        for start in range(0, len(self.valid_histories), 1024):
            hists = self.valid_histories[start : start + 1024]
            scores = recommend_queries(model, self.item_emb, hists) @ vectors.T
            targets = self.valid_targets[start : start + 1024]
            ranks.append(rank_of_target(scores, targets, hists))  # history excluded, target kept
        return float((np.concatenate(ranks) < 10).mean())


@dataclass
class OutfitTask:
    """Complementary items: hide one item of an outfit, query with the rest + the hidden item's slot.

    A fraction ``slot_dropout`` of the queries does not name the slot (-1). Negatives are the other in-batch
    answers, ``slot_negatives`` sampled items of the answer's slot (so the model learns compatibility rather
    than slot prediction) and the visible items themselves (a query must not just return what the outfit
    already has, nor its near-duplicates). Candidates whose text is a near-duplicate of
    the answer (cosine > ``duplicate_threshold``) are left out of the softmax. Validation: fill-in-the-blank
    accuracy (hidden item against 3 random items of its slot). ``weights`` (optional, one non-negative number
    per outfit) samples outfits proportionally to them (instance re-weighting, textguide.transfer).
    """

    item_emb: np.ndarray
    outfits: list[list[int]]
    item_slots: np.ndarray
    valid_outfits: list[list[int]] | None = None
    weights: np.ndarray | None = None
    kind: ClassVar[str] = "outfit"

    def __post_init__(self) -> None:
        self.item_emb = _as_embeddings(self.item_emb, "item_emb")
        n = len(self.item_emb)
        self.outfits = _index_lists(self.outfits, n, "outfits", min_len=2)
        if self.valid_outfits is not None:
            self.valid_outfits = _index_lists(self.valid_outfits, n, "valid_outfits", min_len=2)
        slots = np.asarray(self.item_slots)
        if slots.shape != (n,) or not np.issubdtype(slots.dtype, np.integer):
            raise ValueError(
                f"item_slots must be integers of shape ({n},) (one slot per item_emb row), got {slots.shape}"
            )
        if len(slots) and slots.min() < -1:
            raise ValueError(f"item_slots must be >= 0 (or -1 for unknown), found {int(slots.min())}")
        self.item_slots = slots.astype(np.int64)
        order = np.argsort(self.item_slots, kind="stable")
        values, starts = np.unique(self.item_slots[order], return_index=True)
        self._pools = {int(v): pool for v, pool in zip(values, np.split(order, starts[1:]))}  # slot -> items
        self.weights = _check_weights(self.weights, len(self.outfits), "outfit")

    def __len__(self) -> int:
        return len(self.outfits)

    @property
    def n_query_slots(self) -> int:
        """How many slots the model must know: queries name slots ``0 .. n_query_slots - 1`` (or -1)."""
        return int(self.item_slots.max()) + 1 if len(self.item_slots) else 0

    def sample_rows(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` outfit rows: uniform, or proportional to ``weights`` when given."""
        return _sample_rows(rng, len(self.outfits), size, self.weights)

    def batch(self, rng: np.random.Generator, batch_size: int, max_history: int, config: TrainConfig) -> dict:
        """A training batch for ``MultiTaskAdapter.forward(batch, "outfit")``."""
        positives, visible = self._draw(rng, batch_size)
        return self._assemble(rng, positives, visible, max_history, config)

    def _draw(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, list[list[int]]]:
        """Sample outfits and hide one item of each: (hidden items, the visible rest)."""
        positives, visible = np.empty(batch_size, dtype=np.int64), []
        for b, r in enumerate(self.sample_rows(rng, batch_size)):
            outfit = self.outfits[r]
            hidden = int(rng.integers(len(outfit)))
            positives[b] = outfit[hidden]
            visible.append(outfit[:hidden] + outfit[hidden + 1 :])
        return positives, visible

    def _assemble(self, rng: np.random.Generator, positives: np.ndarray, visible: list[list[int]], max_history: int,
                  config: TrainConfig) -> dict:
        """The batch for hidden items ``positives`` and the visible rest of their outfits."""
        pools = self._pools
        batch_size = len(positives)
        slots = self.item_slots[positives]
        negatives = np.stack([rng.choice(pools[int(s)], size=config.slot_negatives) for s in slots])
        vis, vis_mask = _pad(visible, max_history)
        row_ids = np.concatenate([negatives, vis], axis=1)
        row_valid = np.concatenate([np.ones(negatives.shape, dtype=bool), vis_mask], axis=1)

        # the answer at column b; any other candidate that is (a near-duplicate of) the answer is left out
        answer = self.item_emb[positives]
        near_in_batch = answer @ answer.T > config.duplicate_threshold
        near_in_batch[np.arange(batch_size), np.arange(batch_size)] = False
        near_in_row = np.einsum("bd,bmd->bm", answer, self.item_emb[row_ids]) > config.duplicate_threshold
        left_out = near_in_row | ~row_valid
        if not config.outfit_visible_negatives:  # the outfit's own items are not pushed away
            left_out[:, negatives.shape[1]:] = True
        exclude = np.concatenate([near_in_batch, left_out], axis=1)

        query_slots = np.where(rng.random(batch_size) < config.slot_dropout, -1, slots)  # -1: "any slot"
        return {
            "items": _gather(self.item_emb, vis),
            "items_mask": torch.from_numpy(vis_mask),
            "slot": torch.from_numpy(query_slots),
            "candidates": _gather(self.item_emb, positives),
            "row_candidates": _gather(self.item_emb, row_ids),
            "exclude": torch.from_numpy(exclude),
            "targets": torch.arange(batch_size),
        }

    def fitb_questions(self, outfits: list[list[int]], n_distractors: int = 3, seed: int = 0):
        """Fixed FITB questions: (partials, slots, candidates (Q, 1 + n) with the answer in column 0)."""
        rng = np.random.default_rng(seed)
        pools = self._pools
        partials, slots, candidates = [], [], []
        for outfit in outfits:
            hidden = int(rng.integers(len(outfit)))
            answer, rest = outfit[hidden], outfit[:hidden] + outfit[hidden + 1 :]
            pool = np.setdiff1d(pools[int(self.item_slots[answer])], [answer, *rest])
            if len(pool) < n_distractors:
                continue
            partials.append(rest)
            slots.append(int(self.item_slots[answer]))
            candidates.append([answer, *rng.choice(pool, size=n_distractors, replace=False)])
        return partials, slots, np.asarray(candidates, dtype=np.int64).reshape(-1, 1 + n_distractors)

    def valid_questions(self, model: MultiTaskAdapter):
        """The fixed validation FITB questions with the model's queries: (partials, slots, candidates, queries),
        or None without validation outfits."""
        if not self.valid_outfits:
            return None
        partials, slots, candidates = self.fitb_questions(self.valid_outfits)
        if not partials:
            return None
        return partials, slots, candidates, outfit_queries(model, self.item_emb, partials, slots)

    def valid_metric(self, model: MultiTaskAdapter) -> float | None:
        """FITB accuracy (the hidden item must beat 3 random items of its slot); None without validation."""
        questions = self.valid_questions(model)
        if questions is None:
            return None
        _, _, candidates, queries = questions
        ids, inverse = np.unique(candidates, return_inverse=True)
        vectors = encode_items(model, self.item_emb[ids], "outfit")[inverse.reshape(candidates.shape)]
        scores = np.einsum("qd,qcd->qc", queries, vectors)
        return fitb_accuracy(scores, np.zeros(len(scores), dtype=np.int64))


@dataclass
class CouponTask:
    """Coupon redemption: example ``i`` pairs user row ``user_index[i]`` with coupon row ``coupon_index[i]``.

    ``user_histories[u]`` are the items user ``u`` bought, ``coupon_items[c]`` the items coupon ``c`` covers,
    ``profiles[u]`` optional numeric user features (standardised). Loss: binary cross-entropy with
    ``pos_weight = negatives / positives``. Validation: AUC on the ``valid_*`` examples (any user/coupon rows,
    including ones never seen in training).
    """

    item_emb: np.ndarray
    user_histories: list[list[int]]
    coupon_items: list[list[int]]
    labels: np.ndarray
    profiles: np.ndarray | None
    user_index: np.ndarray
    coupon_index: np.ndarray
    valid_labels: np.ndarray | None = None
    valid_user_index: np.ndarray | None = None
    valid_coupon_index: np.ndarray | None = None
    kind: ClassVar[str] = "coupon"

    def __post_init__(self) -> None:
        self.item_emb = _as_embeddings(self.item_emb, "item_emb")
        n = len(self.item_emb)
        self.user_histories = _index_lists(self.user_histories, n, "user_histories", min_len=0)
        self.coupon_items = _index_lists(self.coupon_items, n, "coupon_items")
        n_users, n_coupons = len(self.user_histories), len(self.coupon_items)
        self.labels = _labels(self.labels, "labels")
        self.user_index = _index_array(self.user_index, n_users, "user_index", len(self.labels), "labels")
        self.coupon_index = _index_array(self.coupon_index, n_coupons, "coupon_index", len(self.labels), "labels")
        n_pos = int(self.labels.sum())
        if n_pos == 0 or n_pos == len(self.labels):
            raise ValueError(f"labels need both classes, got {n_pos} positives of {len(self.labels)}")
        self.pos_weight = (len(self.labels) - n_pos) / n_pos
        if self.profiles is not None:
            self.profiles = np.asarray(self.profiles, dtype=np.float32)
            if self.profiles.ndim != 2 or len(self.profiles) != n_users:
                raise ValueError(
                    f"profiles must be (n_users={n_users}, profile_dim), one row per user_histories row; "
                    f"got {self.profiles.shape}"
                )
            if not np.isfinite(self.profiles).all():
                raise ValueError("profiles contain NaN or inf; impute and standardise them first")
        given = [self.valid_labels is not None, self.valid_user_index is not None, self.valid_coupon_index is not None]
        if any(given) and not all(given):
            raise ValueError("give valid_labels, valid_user_index and valid_coupon_index together, or none")
        if all(given):
            self.valid_labels = _labels(self.valid_labels, "valid_labels")
            m = len(self.valid_labels)
            self.valid_user_index = _index_array(self.valid_user_index, n_users, "valid_user_index", m, "valid_labels")
            self.valid_coupon_index = _index_array(
                self.valid_coupon_index, n_coupons, "valid_coupon_index", m, "valid_labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rng: np.random.Generator, batch_size: int, max_history: int, config: TrainConfig) -> dict:
        """A training batch for ``MultiTaskAdapter.forward(batch, "coupon")``."""
        rows = rng.integers(len(self.labels), size=batch_size)
        users, coupons = self.user_index[rows], self.coupon_index[rows]
        batch = _coupon_inputs(
            self.item_emb,
            [self.user_histories[u] for u in users],
            [self.coupon_items[c] for c in coupons],
            None if self.profiles is None else self.profiles[users],
            max_history,
            rng,
        )
        batch["labels"] = torch.from_numpy(self.labels[rows].astype(np.float32))
        batch["pos_weight"] = torch.tensor(self.pos_weight, dtype=torch.float32)
        return batch

    def valid_metric(self, model: MultiTaskAdapter) -> float | None:
        """AUC on the validation examples; None without them (or with one class only)."""
        if self.valid_labels is None or len(np.unique(self.valid_labels)) < 2:
            return None
        logits = coupon_logits_indexed(
            model, self.item_emb, self.user_histories, self.coupon_items,
            self.valid_user_index, self.valid_coupon_index, self.profiles,
        )
        return roc_auc(self.valid_labels, logits)


Task = Union[SequenceTask, OutfitTask, CouponTask]


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
            if progress.best_score is None or score > progress.best_score:
                progress.best_score, progress.best_step, progress.best_metrics = score, progress.step, metrics
                progress.bad_evals = 0
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
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
    return TrainResult(history=progress.history, best_step=progress.best_step, best_metrics=progress.best_metrics)


def _check_tasks(model: MultiTaskAdapter, tasks: dict[str, Task]) -> list[str]:
    """Validate the task dict against the model; returns the task names in a fixed order."""
    if not tasks:
        raise ValueError(f"no tasks given; pass {{name: task}} with names from {', '.join(model.config.tasks)}")
    expected = {"recommend": SequenceTask, "outfit": OutfitTask, "coupon": CouponTask}
    for name, task in tasks.items():
        model.check_task(name)
        if not isinstance(task, expected[name]):
            raise ValueError(f"tasks[{name!r}] must be a {expected[name].__name__}, got {type(task).__name__}")
        if task.item_emb.shape[1] != model.config.input_dim:
            raise ValueError(
                f"tasks[{name!r}].item_emb has wrong embedding dimension: expected {model.config.input_dim}, "
                f"got {task.item_emb.shape[1]}"
            )
        if isinstance(task, OutfitTask) and task.n_query_slots > model.config.n_slots:
            raise ValueError(
                f"tasks['outfit'].item_slots has slot {task.n_query_slots - 1} but the model has "
                f"n_slots={model.config.n_slots}; build AdapterConfig(n_slots={task.n_query_slots})"
            )
        if isinstance(task, CouponTask):
            found = 0 if task.profiles is None else task.profiles.shape[1]
            if found != model.config.profile_dim:
                raise ValueError(
                    f"tasks['coupon'] has {found} profile features but the model has "
                    f"profile_dim={model.config.profile_dim}; build AdapterConfig(profile_dim={found})"
                )
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


# ----------------------------------------------------------------------------------------------------------
# inference helpers (used by the retrieval API)
# ----------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def encode_items(model: MultiTaskAdapter, item_emb: np.ndarray, task: str, batch_size: int = 4096) -> np.ndarray:
    """Adapted item vectors (N, dim) float32, L2-normalised, for ``task`` (index these with FAISS)."""
    model.eval()
    emb = _as_embeddings(item_emb, "item_emb", model.config.input_dim)
    model.check_task(task)
    out = [model.item_vectors(_gather(emb, slice(i, i + batch_size)), task) for i in range(0, len(emb), batch_size)]
    vecs = torch.cat(out).numpy() if out else np.zeros((0, model.config.dim), dtype=np.float32)
    return _blend(model, task, vecs, emb)


def _blend(model: MultiTaskAdapter, task: str, vectors: np.ndarray, text: np.ndarray) -> np.ndarray:
    """With ``config.text_blend[task] = w > 0``: append ``sqrt(w) *`` the unit text vectors, so that the inner
    product of a blended query and item is ``adapter cosine + w * text cosine`` (items and queries alike)."""
    w = model.config.text_blend.get(task, 0.0)
    if not w:
        return vectors
    text = np.asarray(text, dtype=np.float32)
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    return np.concatenate([vectors, np.sqrt(w, dtype=np.float32) * text], axis=1).astype(np.float32)


def _mean_text(emb: np.ndarray, sets: Sequence[Sequence[int]]) -> np.ndarray:
    return np.stack([emb[list(s)].mean(0) for s in sets]) if len(sets) else np.zeros((0, emb.shape[1]), np.float32)


@torch.inference_mode()
def recommend_queries(
    model: MultiTaskAdapter, item_emb: np.ndarray, histories: Sequence[Sequence[int]], batch_size: int = 1024
) -> np.ndarray:
    """Next-item queries (B, dim) float32 for histories of item indices (oldest first); score with encode_items."""
    model.eval()
    emb = _as_embeddings(item_emb, "item_emb", model.config.input_dim, check_values=False)
    histories = _index_lists(histories, len(emb), "histories")
    out = []
    for start in range(0, len(histories), batch_size):
        idx, mask = _pad(histories[start : start + batch_size], model.config.max_history)
        out.append(model.recommend_query(_gather(emb, idx), torch.from_numpy(mask)))
    q = torch.cat(out).numpy() if out else np.zeros((0, model.config.dim), dtype=np.float32)
    return _blend(model, "recommend", q, _mean_text(emb, histories)) if model.config.text_blend else q


@torch.inference_mode()
def outfit_queries(
    model: MultiTaskAdapter,
    item_emb: np.ndarray,
    partials: Sequence[Sequence[int]],
    slots: Sequence[int],
    batch_size: int = 1024,
) -> np.ndarray:
    """Complementary-item queries (B, dim) float32 for partial outfits and wanted slots (-1 = unknown)."""
    model.eval()
    emb = _as_embeddings(item_emb, "item_emb", model.config.input_dim, check_values=False)
    partials = _index_lists(partials, len(emb), "partials")
    slots = np.asarray(slots, dtype=np.int64).reshape(-1)
    if len(slots) != len(partials):
        raise ValueError(f"{len(partials)} partial outfits but {len(slots)} slots; give one slot per outfit")
    out = []
    for start in range(0, len(partials), batch_size):
        idx, mask = _pad(partials[start : start + batch_size], model.config.max_history)
        slot = torch.from_numpy(slots[start : start + batch_size])
        out.append(model.outfit_query(_gather(emb, idx), torch.from_numpy(mask), slot))
    q = torch.cat(out).numpy() if out else np.zeros((0, model.config.dim), dtype=np.float32)
    return _blend(model, "outfit", q, _mean_text(emb, partials)) if model.config.text_blend else q


def coupon_probabilities(
    model: MultiTaskAdapter,
    item_emb: np.ndarray,
    user_history: Sequence[int],
    coupons: Sequence[Sequence[int]],
    profile: np.ndarray | None = None,
) -> np.ndarray:
    """P(redeem) (M,) for one user (purchased item indices, optional profile) and M coupons (covered items)."""
    if len(user_history) == 0 and profile is None:
        raise ValueError("empty user_history and no profile: pass at least one purchased item or a profile")
    profiles = None
    if profile is not None:
        profiles = np.repeat(np.asarray(profile, dtype=np.float32).reshape(1, -1), len(coupons), axis=0)
    logits = coupon_logits(model, item_emb, [list(user_history)] * len(coupons), coupons, profiles)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


@torch.inference_mode()
def coupon_logits(
    model: MultiTaskAdapter,
    item_emb: np.ndarray,
    histories: Sequence[Sequence[int]],
    coupons: Sequence[Sequence[int]],
    profiles: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Redemption logits (B,) for B (user history, coupon items[, profile row]) pairs; histories may be empty."""
    model.eval()
    emb = _as_embeddings(item_emb, "item_emb", model.config.input_dim, check_values=False)
    histories = _index_lists(histories, len(emb), "user_history", min_len=0)
    coupons = _index_lists(coupons, len(emb), "coupons")
    out = []
    for start in range(0, len(coupons), batch_size):
        stop = start + batch_size
        profile = None if profiles is None else profiles[start:stop]
        batch = _coupon_inputs(
            emb, histories[start:stop], coupons[start:stop], profile, model.config.max_history, rng=None
        )
        out.append(model(batch, "coupon")[0])
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


_coupon_logits = coupon_logits  # the name textguide.recipes imports


@torch.inference_mode()
def coupon_logits_indexed(
    model: MultiTaskAdapter,
    item_emb: np.ndarray,
    user_histories: Sequence[Sequence[int]],
    coupon_items: Sequence[Sequence[int]],
    user_index: np.ndarray,
    coupon_index: np.ndarray,
    profiles: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Logits for many (user row, coupon row) pairs, encoding each user and each coupon once.

    Same result as :func:`coupon_logits` on the expanded pairs (in eval mode), much faster when users
    and coupons repeat: ``profiles`` has one row per user.
    """
    model.eval()
    model.check_task("coupon")
    emb = _as_embeddings(item_emb, "item_emb", model.config.input_dim, check_values=False)
    head = model.coupon
    users, coupons = [], []
    for start in range(0, len(user_histories), batch_size):
        b = _coupon_inputs(emb, [list(h) for h in user_histories[start:start + batch_size]],
                           [[0]] * len(user_histories[start:start + batch_size]),
                           None if profiles is None else profiles[start:start + batch_size],
                           model.config.max_history, rng=None)
        users.append(head.encode_user(model.item_vectors(b["user_history"], "coupon"), b["user_mask"], b.get("profile")))
    for start in range(0, len(coupon_items), batch_size):
        chunk = [list(c) for c in coupon_items[start:start + batch_size]]
        b = _coupon_inputs(emb, [[] for _ in chunk], chunk, None, model.config.max_history, rng=None)
        coupons.append(head.encode_coupon(model.item_vectors(b["coupon_items"], "coupon"), b["coupon_mask"]))
    u, c = torch.cat(users), torch.cat(coupons)
    ui, ci = torch.as_tensor(np.array(user_index, dtype=np.int64)), torch.as_tensor(np.array(coupon_index, dtype=np.int64))
    out = [head.score(u[ui[s:s + 8192]], c[ci[s:s + 8192]]) for s in range(0, len(ui), 8192)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------


def _coupon_inputs(
    item_emb: np.ndarray,
    histories: list[list[int]],
    coupons: list[list[int]],
    profiles: np.ndarray | None,
    max_items: int,
    rng: np.random.Generator | None,
) -> dict[str, torch.Tensor]:
    """Coupon batch tensors; coupons covering more than ``max_items`` products are subsampled
    (randomly with ``rng``, evenly spaced without)."""
    capped = []
    for items in coupons:
        if len(items) > max_items:
            if rng is None:
                keep = np.linspace(0, len(items) - 1, max_items).round().astype(np.int64)
            else:
                keep = np.sort(rng.choice(len(items), size=max_items, replace=False))
            items = [items[i] for i in keep]
        capped.append(items)
    hist, hist_mask = _pad(histories, max_items)
    coup, coup_mask = _pad(capped, max_items)
    batch = {
        "user_history": _gather(item_emb, hist),
        "user_mask": torch.from_numpy(hist_mask),
        "coupon_items": _gather(item_emb, coup),
        "coupon_mask": torch.from_numpy(coup_mask),
    }
    if profiles is not None:
        batch["profile"] = torch.from_numpy(np.asarray(profiles, dtype=np.float32))
    return batch


def _pad(lists: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned (B, L) index matrix + bool mask of the last ``max_len`` items of each list (L >= 1)."""
    width = max(1, min(max_len, max((len(x) for x in lists), default=1)))
    idx = np.zeros((len(lists), width), dtype=np.int64)
    mask = np.zeros((len(lists), width), dtype=bool)
    for row, items in enumerate(lists):
        items = items[-max_len:] if len(items) > max_len else items
        idx[row, : len(items)] = items
        mask[row, : len(items)] = True
    return idx, mask


def _gather(emb: np.ndarray, idx: Any) -> torch.Tensor:
    """float32 tensor of ``emb[idx]`` (a copy when the rows are a read-only or strided view)."""
    rows = emb[idx]
    if rows.dtype != np.float32 or not rows.flags.writeable or not rows.flags.c_contiguous:
        rows = np.array(rows, dtype=np.float32, order="C")
    return torch.from_numpy(rows)


def _as_embeddings(
    item_emb: Any, name: str, expected_dim: int | None = None, check_values: bool = True
) -> np.ndarray:
    """float32 (N, D). With ``check_values`` (O(N D), done once per task, not per query): finite, rows of unit
    length (others are normalised with a warning) and writeable (copied otherwise)."""
    emb = np.asarray(item_emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_items, dim) array, got shape {emb.shape}")
    if expected_dim is not None and emb.shape[1] != expected_dim:
        raise ValueError(
            f"{name} has wrong embedding dimension: expected {expected_dim}, got {emb.shape[1]} "
            "(embed the items with the encoder this adapter was trained on)"
        )
    if not check_values:
        return emb
    if not emb.flags.writeable or not emb.flags.c_contiguous:
        emb = np.array(emb, order="C")
    if not np.isfinite(emb).all():
        raise ValueError(f"{name} contains NaN or inf; re-encode those items")
    norms = np.linalg.norm(emb, axis=1)
    if len(emb) and np.abs(norms - 1).max() > 1e-3:
        if (norms == 0).any():
            raise ValueError(f"{name} row {int(np.flatnonzero(norms == 0)[0])} is all zeros; re-encode that item")
        logger.warning("%s rows are not L2-normalised; normalising a copy", name)
        emb = emb / norms[:, None]
    return emb


def _index_lists(lists: Any, n_items: int, name: str, min_len: int = 1) -> list[list[int]]:
    """Validate lists of item indices (each at least ``min_len`` long, all in [0, n_items))."""
    if isinstance(lists, (str, bytes)) or not isinstance(lists, (Sequence, np.ndarray)):
        raise ValueError(f"{name} must be a list of lists of item indices, got {type(lists).__name__}")
    out = []
    for row, items in enumerate(lists):
        arr = np.asarray(items)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{name}[{row}] must be a flat list of integer item indices, got {items!r:.80}")
        if arr.size < min_len:
            what = "is empty" if arr.size == 0 else f"has {arr.size} item(s)"
            raise ValueError(f"{name}[{row}] {what}; at least {min_len} item(s) are needed (drop that row)")
        if arr.size and (arr.min() < 0 or arr.max() >= n_items):
            bad = int(arr[(arr < 0) | (arr >= n_items)][0])
            raise ValueError(f"{name}[{row}] has item index {bad}, out of range for item_emb with {n_items} rows")
        out.append(arr.astype(np.int64).tolist())
    return out


def _index_array(values: Any, n: int, name: str, length: int, length_name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (length,) or (length and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be {length} integers (one per {length_name} row), got shape {arr.shape}")
    if length and (arr.min() < 0 or arr.max() >= n):
        bad = int(arr[(arr < 0) | (arr >= n)][0])
        raise ValueError(f"{name} has index {bad}, out of range for {n} rows")
    return arr.astype(np.int64)


def _labels(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be a 1-D array of 0/1 labels")
    return arr.astype(np.float32)
