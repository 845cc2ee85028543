"""The multi-task adapter model: small PyTorch parts on top of frozen text embeddings.

There are no item-id embeddings anywhere. An item is its frozen, L2-normalised text embedding
(``input_dim`` floats); the model maps it through a trained *item adapter* to a ``dim``-dim unit vector,
so an item, a coupon or a user never seen in training is scored without retraining (cold start).
Callers gather text-embedding tensors from an item embedding matrix by index and pass them in.

Parts:

* item adapter: a residual projection ``input_dim -> dim`` whose output is L2-normalised. It starts as a
  random orthogonal projection (the residual MLP starts at zero), so the untrained model preserves text
  similarity. ``sharing`` decides how tasks share it: ``"hard"`` (one adapter), ``"soft"`` (one tower per task,
  pulled together by an L2 penalty, :meth:`MultiTaskAdapter.sharing_penalty`) or ``"experts"`` (MMoE:
  ``n_experts`` shared adapters mixed by one softmax gate per task, conditioned on the input embedding).
Each task's head and loss live in its module (:mod:`textguide.tasks.recommend`, ``.outfit``, ``.coupon``);
the model holds them under ``sequence``, ``outfit`` and ``coupon``:

* recommend: a small transformer over the adapted history (positions counted from the most recent item);
  the query is the most recent item's vector plus a learned (zero-initialised) correction.
* outfit: the attention-pooled partial outfit plus the wanted slot's embedding, through an MLP, into a
  *complementary* query scored against ``item_vectors(candidates, "outfit")``.
* coupon: attention-pooled adapted purchase history (+ profile MLP) and attention-pooled coupon products,
  an MLP on ``[u, c, u*c, |u-c|]`` gives the logit of P(redeem).

``forward(batch, task) -> (output, loss)`` is the one path used by training and evaluation (nanoGPT style);
``loss`` is None when the batch has no targets. Batch keys (tensors; ``D = input_dim``):

=========== ===========================================================================================
task        keys
=========== ===========================================================================================
recommend   ``history`` (B, L, D), ``history_mask`` (B, L) bool
outfit      ``items`` (B, L, D), ``items_mask`` (B, L) bool, ``slot`` (B,) long, -1 = unknown
both        optional ``candidates`` (C, D) shared by all rows, ``row_candidates`` (B, M, D) per row,
            ``exclude`` (B, C + M) bool (True = left out of the softmax), ``targets`` (B,) long column
            index into ``[candidates, row_candidates]``. Output: logits (B, C + M) when candidates are
            given, else the query vectors (B, dim).
coupon      ``user_history`` (B, L, D), ``user_mask`` (B, L), ``coupon_items`` (B, M, D),
            ``coupon_mask`` (B, M), optional ``profile`` (B, profile_dim), ``labels`` (B,) float,
            ``pos_weight`` () float. Output: logits (B,).
=========== ===========================================================================================

Saved as a directory: ``adapter_config.json`` (format version + config) and ``adapter.safetensors``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from .inputs import as_embeddings, gather
from .storage import ArtifactError, atomic_directory, check_config_fields

__all__ = [
    "AdapterConfig",
    "AttentionPool",
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "ItemAdapter",
    "MultiTaskAdapter",
    "TASKS",
    "WEIGHTS_FILE",
    "blend_text",
    "encode_items",
    "ensemble",
    "load_adapter",
    "require_keys",
    "save_adapter",
]

FORMAT_VERSION = 1
TASKS: tuple[str, ...] = ("recommend", "outfit", "coupon")
SHARING_MODES: tuple[str, ...] = ("hard", "soft", "experts")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
_KIND = "textguide.MultiTaskAdapter"
_MAX_LOGIT_SCALE = 100.0


@dataclass
class AdapterConfig:
    """Everything needed to rebuild a :class:`MultiTaskAdapter` (stored as JSON next to the weights).

    Attributes:
        input_dim: dimension of the frozen text embeddings (e.g. 384 for MiniLM).
        dim: dimension of the adapted item vectors and queries.
        sharing: how tasks share the item adapter: "hard", "soft" (one tower per task + L2 penalty) or
            "experts" (MMoE: ``n_experts`` shared adapters, one softmax gate per task).
        n_experts: number of expert adapters in "experts" mode.
        soft_penalty: weight of the L2 penalty between corresponding tower parameters in "soft" mode.
        seq_layers, seq_heads: size of the recommendation transformer.
        max_history: longest history / partial outfit / coupon product list the model reads (most recent kept).
        dropout: dropout probability in the MLPs and the transformer.
        n_slots: size of the outfit slot (category) vocabulary; slot -1 means "unknown".
        profile_dim: number of numeric user-profile features for the coupon task (0 = none). Standardise them.
        tasks: the tasks this model serves, a subset of ("recommend", "outfit", "coupon").
        init_temperature: initial softmax temperature of the learnable logit scale (recommend, outfit).
        outfit_pair_rank: type-aware outfit compatibility: rank of one learned projection per (visible item's
            slot, wanted slot) pair, added to the outfit query (0 = off: one space for every slot pair). Queries
            then read each visible item's slot (``items_slot``; -1 = unknown).
        outfit_kinds: size of the outfit head's kind table (0 = none): a structural prior over item kinds
            (e.g. Polyvore's 120 category names) learned from outfits known only by kind
            (``OutfitHead.set_kind_prior``); it joins the text part of the outfit blend:
            ``text cosine + outfit_kind_weight * prior``.
        outfit_kind_weight, outfit_kind_temperature: the prior's weight beside text cosine, and the softmax
            temperature (inverse) that turns an item's text cosines to the kind names into kind probabilities.
        text_blend: per task ("recommend", "outfit"), weight ``w`` of plain text similarity added to the adapter's
            score at serving time: ``score = adapter cosine + w * text cosine`` (0 or absent = adapter only;
            chosen on a selection split after training).
        outfit_word_weight: weight ``v`` of the title word overlap (:class:`textguide.words.WordOverlap`: idf mass
            of a candidate's title words found in the partial outfit's titles) added to the served outfit score:
            ``score = adapter + w * text + v * overlap`` (0 = none; chosen with ``w`` on validation outfits).
            The model has no titles: whoever scores passes them (``OutfitTask.words``, the guide's titles).
        members: ``M > 1`` makes the model an ensemble of M adapters of this configuration, each with its own
            parameters and initialisation (recommendation only): item vectors and queries are the members'
            concatenated and divided by sqrt(M), so a score is the mean of the members' cosines; training sums
            the members' losses on the same batches (each member learns as if alone).
    """

    input_dim: int
    dim: int = 256
    sharing: Literal["hard", "soft", "experts"] = "hard"
    n_experts: int = 4
    soft_penalty: float = 1e-3
    seq_layers: int = 2
    seq_heads: int = 4
    max_history: int = 50
    dropout: float = 0.1
    n_slots: int = 0
    profile_dim: int = 0
    tasks: tuple[str, ...] = TASKS
    init_temperature: float = 0.07
    outfit_pair_rank: int = 0
    outfit_kinds: int = 0
    outfit_kind_weight: float = 0.1
    outfit_kind_temperature: float = 20.0
    text_blend: dict[str, float] = field(default_factory=dict)
    outfit_word_weight: float = 0.0
    members: int = 1

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        bad = {k: v for k, v in dict(self.text_blend).items() if k not in ("recommend", "outfit") or not v >= 0}
        if bad:
            raise ValueError(f"AdapterConfig.text_blend takes weights >= 0 for 'recommend' / 'outfit', got {bad}")
        self.text_blend = {k: float(v) for k, v in self.text_blend.items()}
        if not (isinstance(self.outfit_word_weight, (int, float)) and self.outfit_word_weight >= 0):
            raise ValueError(f"AdapterConfig.outfit_word_weight must be a number >= 0, got {self.outfit_word_weight!r}")
        self.outfit_word_weight = float(self.outfit_word_weight)
        for name in ("input_dim", "dim", "n_experts", "seq_heads", "max_history", "members"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AdapterConfig.{name} must be a positive integer, got {value!r}")
        for name in ("seq_layers", "n_slots", "profile_dim", "outfit_pair_rank", "outfit_kinds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"AdapterConfig.{name} must be an integer >= 0, got {value!r}")
        if self.sharing not in SHARING_MODES:
            raise ValueError(f"AdapterConfig.sharing must be one of {', '.join(SHARING_MODES)}; got {self.sharing!r}")
        if not self.tasks:
            raise ValueError(f"AdapterConfig.tasks is empty; choose from {', '.join(TASKS)}")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(
                f"AdapterConfig.tasks must be distinct names from {', '.join(TASKS)}; got {list(self.tasks)}"
            )
        if "recommend" in self.tasks and self.dim % self.seq_heads:
            raise ValueError(f"AdapterConfig.dim ({self.dim}) must be divisible by seq_heads ({self.seq_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"AdapterConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.soft_penalty < 0:
            raise ValueError(f"AdapterConfig.soft_penalty must be >= 0, got {self.soft_penalty}")
        if not (self.outfit_kind_weight >= 0 and self.outfit_kind_temperature > 0):
            raise ValueError("AdapterConfig.outfit_kind_weight must be >= 0 and outfit_kind_temperature > 0, got "
                             f"{self.outfit_kind_weight} and {self.outfit_kind_temperature}")
        if not self.init_temperature > 0:
            raise ValueError(f"AdapterConfig.init_temperature must be > 0, got {self.init_temperature}")
        if self.members > 1 and self.tasks != ("recommend",):
            raise ValueError(f"AdapterConfig.members > 1 (an ensemble) is for tasks=('recommend',) only; got "
                             f"tasks={list(self.tasks)}: use members=1, or an ensemble of recommendation only")

    @property
    def out_dim(self) -> int:
        """Dimension of the item vectors and queries (``dim``, times ``members`` for an ensemble)."""
        return self.dim * self.members

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tasks as a list)."""
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdapterConfig":
        """Inverse of :meth:`to_dict`; unknown or missing fields raise ValueError naming them."""
        check_config_fields(cls, d)
        if "input_dim" not in d:
            raise ValueError("AdapterConfig needs 'input_dim' (the text embedding dimension)")
        return cls(**d)


# ----------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------


class ItemAdapter(nn.Module):
    """Residual projection ``input_dim -> dim``: ``h = P(x - b)``, ``h + MLP(LayerNorm(h))``, L2-normalised.

    ``b`` is a learned centering vector (UniSRec-style whitening). ``P`` starts as a random orthogonal
    projection and the MLP's last layer starts at zero, so the untrained adapter preserves text similarity.
    """

    def __init__(self, input_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.center = nn.Parameter(torch.zeros(input_dim))
        self.proj = nn.Linear(input_dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        nn.init.orthogonal_(self.proj.weight, gain=max(1.0, math.sqrt(input_dim / dim)))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @property
    def last_layer(self) -> nn.Linear:
        """The last linear layer (GradNorm measures gradient norms here)."""
        return self.mlp[-1]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised adapted vectors (..., dim)."""
        h = self.proj(x - self.center)
        return h + self.mlp(self.norm(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.hidden(x), dim=-1)


class AttentionPool(nn.Module):
    """Masked softmax pooling over a set (B, L, dim) -> (B, dim). Starts as the mean; empty rows pool to 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        nonempty = mask.any(dim=-1, keepdim=True)
        logits = torch.where(nonempty, logits, torch.zeros_like(logits))  # no NaN for empty rows
        weights = torch.softmax(logits, dim=-1) * nonempty
        return (weights.unsqueeze(-1) * x).sum(dim=1)


# ----------------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------------


class MultiTaskAdapter(nn.Module):
    """Item adapter(s) shared across tasks + one small head per task. See the module docstring.

    Example:
        >>> model = MultiTaskAdapter(AdapterConfig(input_dim=384, dim=64))
        >>> hist = torch.nn.functional.normalize(torch.randn(2, 5, 384), dim=-1)
        >>> model.recommend_query(hist, torch.ones(2, 5, dtype=torch.bool)).shape
        torch.Size([2, 64])
    """

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.members > 1:  # an ensemble: the members hold every parameter (the text blend is applied here)
            one = replace(c, members=1, text_blend={})
            self.members = nn.ModuleList([MultiTaskAdapter(one) for _ in range(c.members)])
            return
        if c.sharing == "hard":
            self.item_adapter = ItemAdapter(c.input_dim, c.dim, c.dropout)
        elif c.sharing == "soft":
            tower = ItemAdapter(c.input_dim, c.dim, c.dropout)  # every tower starts equal: zero penalty
            self.towers = nn.ModuleDict({t: copy.deepcopy(tower) for t in c.tasks})
        else:
            self.experts = nn.ModuleList([ItemAdapter(c.input_dim, c.dim, c.dropout) for _ in range(c.n_experts)])
            self.gates = nn.ModuleDict({t: nn.Linear(c.input_dim, c.n_experts) for t in c.tasks})
            for gate in self.gates.values():  # uniform mixture at the start
                nn.init.zeros_(gate.weight)
                nn.init.zeros_(gate.bias)
        init_scale = math.log(1.0 / c.init_temperature)
        self.logit_scale = nn.ParameterDict(
            {t: nn.Parameter(torch.tensor(init_scale)) for t in c.tasks if t in ("recommend", "outfit")}
        )
        from .tasks import TASKS  # each head is defined in its task's module

        for name, task in TASKS.items():  # registry order: parameters are created (and seeded) in a fixed order
            if name in c.tasks:
                self.add_module(task.head_name, task.head(c))

    # -- checks ------------------------------------------------------------------------------------------

    def check_task(self, task: str) -> None:
        """Raise ValueError unless ``task`` is one of this model's tasks."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
        if task not in self.config.tasks:
            raise ValueError(
                f"task {task!r} is not part of this model (its tasks: {', '.join(self.config.tasks)}); "
                "build it with AdapterConfig(tasks=...) including it"
            )

    def _check_emb(self, emb: torch.Tensor, name: str) -> None:
        if emb.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"{name} has wrong embedding dimension: expected {self.config.input_dim}, got {emb.shape[-1]} "
                "(embed the items with the encoder this adapter was trained on)"
            )

    @staticmethod
    def _check_set(emb: torch.Tensor, mask: torch.Tensor, name: str, allow_empty: bool = False) -> None:
        if emb.dim() != 3 or mask.shape != emb.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"{name} must be (B, L, input_dim) with a bool mask (B, L); "
                f"got {tuple(emb.shape)} and mask {tuple(mask.shape)} {mask.dtype}"
            )
        if not allow_empty:
            empty = (~mask.any(dim=1)).nonzero().flatten()
            if len(empty):
                raise ValueError(f"empty {name} in batch row(s) {empty[:5].tolist()}: at least one item is needed")

    # -- task parts --------------------------------------------------------------------------------------

    def item_vectors(self, emb: torch.Tensor, task: str) -> torch.Tensor:
        """Adapted, L2-normalised item vectors (..., dim) from text embeddings (..., input_dim)."""
        self.check_task(task)
        self._check_emb(emb, "item embeddings")
        if self.config.members > 1:
            return self._joined([m.item_vectors(emb, task) for m in self.members])
        if self.config.sharing == "hard":
            return self.item_adapter(emb)
        if self.config.sharing == "soft":
            return self.towers[task](emb)
        gates = torch.softmax(self.gates[task](emb), dim=-1)  # (..., K)
        hidden = torch.stack([expert.hidden(emb) for expert in self.experts], dim=-2)  # (..., K, dim)
        return F.normalize((gates.unsqueeze(-1) * hidden).sum(dim=-2), dim=-1)

    def recommend_query(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-item query (B, dim) from a history (B, L, input_dim) in time order with a bool mask (B, L)."""
        self.check_task("recommend")
        self._check_set(hist, mask, "history")
        if self.config.members > 1:
            return self._joined([m.recommend_query(hist, mask) for m in self.members])
        return self.sequence(self.item_vectors(hist, "recommend"), mask)

    @staticmethod
    def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
        """The members' unit vectors side by side, / sqrt(M): inner products are the mean of the members'."""
        return torch.cat(parts, dim=-1) / math.sqrt(len(parts))

    def outfit_query(self, items: torch.Tensor, mask: torch.Tensor, slot: torch.Tensor,
                     items_slot: torch.Tensor | None = None) -> torch.Tensor:
        """Complementary-item query (B, dim) from a partial outfit and the wanted slot (B,) (-1 = unknown);
        ``items_slot`` (B, L): each visible item's slot (-1 or None = unknown; read when ``outfit_pair_rank``)."""
        self.check_task("outfit")
        self._check_set(items, mask, "partial outfit")
        slot = torch.as_tensor(slot, dtype=torch.long)
        if slot.shape != (items.shape[0],):
            raise ValueError(f"slot must have shape ({items.shape[0]},), got {tuple(slot.shape)}")
        self._check_slots(slot, "slot")
        if items_slot is not None:
            items_slot = torch.as_tensor(items_slot, dtype=torch.long)
            if items_slot.shape != mask.shape:
                raise ValueError(f"items_slot must have the mask's shape {tuple(mask.shape)}, "
                                 f"got {tuple(items_slot.shape)}")
            items_slot = items_slot.masked_fill(~mask, -1)  # padding positions have no slot
            self._check_slots(items_slot, "items_slot")
        return self.outfit(self.item_vectors(items, "outfit"), mask, slot, items_slot)

    def _check_slots(self, slot: torch.Tensor, name: str) -> None:
        bad = (slot < -1) | (slot >= self.config.n_slots)
        if bad.any():
            raise ValueError(
                f"{name} {int(slot[bad][0])} out of range: this model has n_slots={self.config.n_slots} "
                "(use -1 for an unknown slot, or build AdapterConfig(n_slots=...) large enough)"
            )

    def coupon_logit(
        self,
        user_hist: torch.Tensor,
        user_mask: torch.Tensor,
        coupon_items: torch.Tensor,
        coupon_mask: torch.Tensor,
        profile: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B,) of P(redeem) for user histories and the products each coupon covers.

        A user with an empty history is allowed (pooled to zero; the profile then carries the signal).
        """
        self.check_task("coupon")
        self._check_set(user_hist, user_mask, "user history", allow_empty=True)
        self._check_set(coupon_items, coupon_mask, "coupon items")
        if user_hist.shape[0] != coupon_items.shape[0]:
            raise ValueError(f"{user_hist.shape[0]} user rows but {coupon_items.shape[0]} coupon rows")
        if profile is not None:
            if self.config.profile_dim == 0:
                raise ValueError("a profile was given but this model has profile_dim=0; build it with profile_dim")
            if profile.shape != (user_hist.shape[0], self.config.profile_dim):
                raise ValueError(
                    f"profile must be ({user_hist.shape[0]}, {self.config.profile_dim}), got {tuple(profile.shape)}"
                )
        return self.coupon(
            self.item_vectors(user_hist, "coupon"),
            user_mask,
            self.item_vectors(coupon_items, "coupon"),
            coupon_mask,
            profile,
        )

    def logit_scale_of(self, task: str) -> torch.Tensor:
        """The learnable inverse temperature of a retrieval task (clamped at 100)."""
        return self.logit_scale[task].exp().clamp(max=_MAX_LOGIT_SCALE)

    def forward(self, batch: dict[str, torch.Tensor], task: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One path for training and evaluation: ``(output, loss)``; loss is None without targets/labels.
        The task's module says what its batch holds and which loss it trains with."""
        from .tasks import TASKS

        self.check_task(task)
        if self.config.members > 1:  # each member on the same batch: mean logits (or joined queries), summed loss
            outputs, losses = zip(*(m(batch, task) for m in self.members))
            scored = "candidates" in batch or "row_candidates" in batch
            out = torch.stack(outputs).mean(dim=0) if scored else self._joined(list(outputs))
            return out, None if losses[0] is None else torch.stack(losses).sum()
        return TASKS[task].forward(self, batch)

    def retrieval_output(self, query: torch.Tensor, batch: dict[str, torch.Tensor], task: str
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For retrieval tasks: the queries alone, or the scaled logits against ``candidates`` /
        ``row_candidates`` (``exclude`` masked out) and, with ``targets``, their softmax cross-entropy.
        ``logit_bias`` (optional, the logits' shape) is added to the scores before scaling: a fixed part of the
        score the model should not have to learn (e.g. the outfit word overlap of a probe)."""
        if "candidates" not in batch and "row_candidates" not in batch:
            if "targets" in batch:
                raise ValueError(f"{task} batch has 'targets' but no 'candidates'/'row_candidates' to score")
            return query, None
        parts = []
        if "candidates" in batch:
            parts.append(query @ self.item_vectors(batch["candidates"], task).T)
        if "row_candidates" in batch:
            parts.append(torch.einsum("bd,bmd->bm", query, self.item_vectors(batch["row_candidates"], task)))
        scores = torch.cat(parts, dim=1)
        if "logit_bias" in batch:
            scores = scores + batch["logit_bias"]
        logits = self.logit_scale_of(task) * scores
        if "exclude" in batch:
            logits = logits.masked_fill(batch["exclude"], float("-inf"))
        if "targets" not in batch:
            return logits, None
        return logits, F.cross_entropy(logits, batch["targets"])

    # -- multi-task helpers ------------------------------------------------------------------------------

    def sharing_penalty(self) -> torch.Tensor:
        """Soft sharing: ``soft_penalty * sum over tower pairs of ||theta_i - theta_j||^2``; 0 otherwise."""
        ref = next(self.parameters())
        total = ref.new_zeros(())
        if self.config.members > 1:
            return sum((m.sharing_penalty() for m in self.members), total)
        if self.config.sharing != "soft" or self.config.soft_penalty == 0:
            return total
        towers = list(self.towers.values())
        for i in range(len(towers)):
            for j in range(i + 1, len(towers)):
                for a, b in zip(towers[i].parameters(), towers[j].parameters()):
                    total = total + (a - b).pow(2).sum()
        return self.config.soft_penalty * total

    def gradnorm_parameters(self, task: str) -> list[nn.Parameter]:
        """The last shared layer's weights that ``task`` reaches (its own tower's in soft mode), for GradNorm."""
        self.check_task(task)
        if self.config.members > 1:
            return [p for m in self.members for p in m.gradnorm_parameters(task)]
        if self.config.sharing == "hard":
            return [self.item_adapter.last_layer.weight]
        if self.config.sharing == "soft":
            return [self.towers[task].last_layer.weight]
        return [expert.last_layer.weight for expert in self.experts]


def require_keys(batch: dict[str, torch.Tensor], keys: tuple[str, ...], task: str) -> None:
    """Raise ValueError naming the missing keys of a ``task`` batch."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{task} batch is missing {missing}; it needs {list(keys)} (see textguide.adapters)")


# ----------------------------------------------------------------------------------------------------------
# item vectors for an index
# ----------------------------------------------------------------------------------------------------------


def ensemble(models: list[MultiTaskAdapter]) -> MultiTaskAdapter:
    """One adapter (``AdapterConfig.members = len(models)``) that scores with the mean of ``models``' cosines:
    trained apart (e.g. with different seeds), they must share their configuration but for the text blend;
    the ensemble takes the first model's blend (the members' own are not used)."""
    if len(models) < 2:
        raise ValueError(f"an ensemble needs at least 2 models, got {len(models)}")
    base = replace(models[0].config, text_blend={})
    for i, m in enumerate(models):
        if m.config.members != 1 or replace(m.config, text_blend={}) != base:
            raise ValueError(f"model {i} of the ensemble has another configuration than model 0 (or is an ensemble "
                             f"itself): {m.config} vs {models[0].config}; train the members with one AdapterConfig")
    out = MultiTaskAdapter(replace(base, members=len(models), text_blend=dict(models[0].config.text_blend)))
    for member, m in zip(out.members, models):
        member.load_state_dict(m.state_dict())
    return out.eval()


@torch.inference_mode()
def encode_items(model: MultiTaskAdapter, item_emb: Any, task: str, batch_size: int = 4096) -> np.ndarray:
    """Adapted item vectors (N, dim) float32, L2-normalised, for ``task`` (index these with FAISS)."""
    model.eval()
    emb = as_embeddings(item_emb, "item_emb", model.config.input_dim)
    model.check_task(task)
    out = [model.item_vectors(gather(emb, slice(i, i + batch_size)), task) for i in range(0, len(emb), batch_size)]
    vecs = torch.cat(out).numpy() if out else np.zeros((0, model.config.out_dim), dtype=np.float32)
    vecs = blend_text(model, task, vecs, emb)
    if task == "outfit" and model.config.outfit_kinds and model.config.text_blend.get("outfit"):
        vecs = np.concatenate([vecs, model.outfit.kind_item_columns(emb, model.config)], axis=1)
    return vecs


def blend_text(model: MultiTaskAdapter, task: str, vectors: np.ndarray, text: np.ndarray) -> np.ndarray:
    """With ``config.text_blend[task] = w > 0``: append ``sqrt(w) *`` the unit text vectors, so that the inner
    product of a blended query and item is ``adapter cosine + w * text cosine`` (items and queries alike)."""
    w = model.config.text_blend.get(task, 0.0)
    if not w:
        return vectors
    text = np.asarray(text, dtype=np.float32)
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    return np.concatenate([vectors, np.sqrt(w, dtype=np.float32) * text], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------------------


def save_adapter(model: MultiTaskAdapter, directory: str | os.PathLike[str]) -> Path:
    """Write ``adapter_config.json`` + ``adapter.safetensors`` into ``directory``, atomically replacing it."""
    directory = Path(directory)
    payload = {"format": _KIND, "format_version": FORMAT_VERSION, "config": model.config.to_dict()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": _KIND, "format_version": str(FORMAT_VERSION)})
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
    return directory


def load_adapter(directory: str | os.PathLike[str]) -> MultiTaskAdapter:
    """Rebuild a model written by :func:`save_adapter` (in eval mode); raises on a wrong format version."""
    directory = Path(directory)
    hint = (
        "re-train the adapter and save it again with this textguide version "
        "(textguide.training.train, then textguide.adapters.save_adapter)"
    )
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {directory} is not an adapter directory; {hint}")
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found; {hint}")
    return adapter_from_bytes(config_path.read_bytes(), weights_path.read_bytes(), directory, hint)


def adapter_from_bytes(config: bytes, weights: bytes, directory: str | os.PathLike[str],
                       hint: str = "re-train the adapter and save it again") -> MultiTaskAdapter:
    """Rebuild a model from the bytes of its ``adapter_config.json`` and ``adapter.safetensors`` (read elsewhere,
    e.g. from a verified guide snapshot); ``directory`` only names them in errors."""
    config_path, weights_path = Path(directory) / CONFIG_FILE, Path(directory) / WEIGHTS_FILE
    try:
        payload = json.loads(config.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{config_path} is not valid JSON ({e}); {hint}") from e
    found = payload.get("format_version") if isinstance(payload, dict) else None
    if found != FORMAT_VERSION:
        raise ArtifactError(
            f"{config_path}: adapter format_version expected {FORMAT_VERSION}, found {found!r}; {hint}"
        )
    if not isinstance(payload.get("config"), dict):
        raise ArtifactError(f"{config_path} has no 'config' object; {hint}")
    try:
        config_obj = AdapterConfig.from_dict(payload["config"])
        model = MultiTaskAdapter(config_obj)
    except (TypeError, ValueError, KeyError) as e:
        raise ArtifactError(f"{config_path}: {e}; {hint}") from e
    try:
        state = load_bytes(weights)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ArtifactError(f"{weights_path}: not a safetensors file ({type(e).__name__}: {e}); {hint}") from e
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ArtifactError(
            f"{weights_path} does not match {CONFIG_FILE}: missing {missing[:5]}, unexpected {unexpected[:5]}; {hint}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # shape mismatches
        raise ArtifactError(f"{weights_path} does not match {CONFIG_FILE}: {e}; {hint}") from e
    model.eval()
    return model
