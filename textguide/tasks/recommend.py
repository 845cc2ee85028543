"""Next-item recommendation: everything about the ``recommend`` task.

Data: :class:`SequenceTask`, (history, next item) examples as rows of an item text-embedding matrix. The model
part is ``MultiTaskAdapter.sequence`` (a small transformer over the adapted history, :mod:`textguide.adapters`),
trained with softmax cross-entropy over all items (or in-batch + sampled items on large catalogs). Queries:
:func:`recommend_queries`, scored against ``encode_items(model, item_emb, "recommend")``. Text baseline: cosine
to the mean history embedding (:func:`textguide.metrics.text_queries`). Selection metric: Recall@10 by full
ranking over all items, history excluded. Serving: :meth:`Recommend.serve`, behind ``Guide.recommend``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import AdapterConfig, MultiTaskAdapter, blend_text, encode_items, require_keys
from ..decisions import blend_search, hits_label
from ..inputs import as_embeddings, check_weights, gather, index_array, index_lists, pad, sample_rows
from ..metrics import full_ranking_ranks, text_queries
from .base import SequenceObserving, Toy, check_dim, toy_items

if TYPE_CHECKING:
    from ..guide import Guide, Hits
    from ..index import Where
    from ..training import TrainConfig

__all__ = ["RECOMMEND", "Recommend", "SequenceEncoder", "SequenceTask", "positions_from_end", "history_scorer", "next_item_examples", "recommend_queries"]

T = TypeVar("T")
Scorer = Callable[[list[list[int]]], np.ndarray]


def next_item_examples(sequences: Sequence[Sequence[T]], max_history: int = 50) -> tuple[list[list[T]], list[T]]:
    """Every (history, next item) pair of each sequence (oldest first): the item at position i with the at most
    ``max_history`` items before it."""
    hist = [list(s[max(0, i - max_history):i]) for s in sequences for i in range(1, len(s))]
    targ = [s[i] for s in sequences for i in range(1, len(s))]
    return hist, targ


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
        self.item_emb = as_embeddings(self.item_emb, "item_emb")
        n = len(self.item_emb)
        self.histories = index_lists(self.histories, n, "histories")
        self.targets = index_array(self.targets, n, "targets", len(self.histories), "histories")
        if (self.valid_histories is None) != (self.valid_targets is None):
            raise ValueError("give both valid_histories and valid_targets, or neither")
        if self.valid_histories is not None:
            self.valid_histories = index_lists(self.valid_histories, n, "valid_histories")
            self.valid_targets = index_array(
                self.valid_targets, n, "valid_targets", len(self.valid_histories), "valid_histories"
            )
        self.weights = check_weights(self.weights, len(self.targets), "history")

    def __len__(self) -> int:
        return len(self.targets)

    def sample_rows(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` example rows: uniform, or proportional to ``weights`` when given."""
        return sample_rows(rng, len(self.targets), size, self.weights)

    def batch(self, rng: np.random.Generator, batch_size: int, max_history: int, config: TrainConfig) -> dict:
        """A training batch for ``MultiTaskAdapter.forward(batch, "recommend")``."""
        rows = self.sample_rows(rng, batch_size)
        hist, mask = pad([self.histories[r] for r in rows], max_history)
        targets = self.targets[rows]
        n = len(self.item_emb)
        seen = np.concatenate([np.where(mask, hist, -1), targets[:, None]], axis=1)  # history + duplicates of target
        if n <= config.full_softmax_max:
            candidates, target_cols = gather(self.item_emb, slice(None)), targets
            exclude = np.zeros((batch_size, n), dtype=bool)
            r = np.repeat(np.arange(batch_size), seen.shape[1])
            ok = seen.ravel() >= 0
            exclude[r[ok], seen.ravel()[ok]] = True
        else:
            cand_ids = np.concatenate([targets, rng.integers(n, size=config.num_negatives)])
            candidates, target_cols = gather(self.item_emb, cand_ids), np.arange(batch_size)
            exclude = (cand_ids[None, None, :] == seen[:, :, None]).any(axis=1)
        exclude[np.arange(batch_size), target_cols] = False
        return {
            "history": gather(self.item_emb, hist),
            "history_mask": torch.from_numpy(mask),
            "candidates": candidates,
            "exclude": torch.from_numpy(exclude),
            "targets": torch.from_numpy(np.asarray(target_cols, dtype=np.int64)),
        }

    def example_items(self) -> list[list[int]]:
        """Each training example's items: its history and its target."""
        return [h + [t] for h, t in zip(self.histories, self.targets.tolist())]

    def training_queries(self, model: MultiTaskAdapter, rows: np.ndarray) -> torch.Tensor:
        """The model's queries (with gradients) for training examples ``rows``: their histories."""
        h, mask = pad([self.histories[i] for i in rows], model.config.max_history)
        return model.recommend_query(gather(self.item_emb, h), torch.from_numpy(mask))

    def valid_ranks(self, model: MultiTaskAdapter | None) -> np.ndarray | None:
        """0-based full-ranking rank of each validation target (history excluded) for the adapter, or for text
        similarity when ``model`` is None; None without validation sequences."""
        if not self.valid_histories:
            return None
        return full_ranking_ranks(history_scorer(self.item_emb, "text" if model is None else "adapter", model),
                                  self.valid_histories, self.valid_targets, chunk=1024)

    def valid_metric(self, model: MultiTaskAdapter) -> float | None:
        """Recall@10 over all items (history excluded) on the validation sequences; None without them."""
        ranks = self.valid_ranks(model)
        return None if ranks is None else float((ranks < 10).mean())


# ------------------------------------------------------------------------------------------ the head
def positions_from_end(mask: torch.Tensor) -> torch.Tensor:
    """0 for the last valid element of each row, 1 for the one before, ... (any mask layout)."""
    return mask.flip(1).long().cumsum(1).flip(1) - 1


class SequenceEncoder(nn.Module):
    """Transformer over adapted history vectors; returns the most recent item's vector + a learned correction."""

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        self.max_history = config.max_history
        self.scale = math.sqrt(config.dim)
        self.position = nn.Embedding(config.max_history, config.dim)  # 0 = most recent
        nn.init.normal_(self.position.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            config.dim,
            config.seq_heads,
            dim_feedforward=4 * config.dim,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(
            layer, config.seq_layers, norm=nn.LayerNorm(config.dim), enable_nested_tensor=False
        )
        self.out = nn.Linear(config.dim, config.dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = positions_from_end(mask)
        keep = mask & (pos < self.max_history)  # only the most recent max_history items are read
        x = vectors * self.scale + self.position(pos.clamp(0, self.max_history - 1))
        h = self.blocks(x, src_key_padding_mask=~keep)
        last = (keep & (pos == 0)).long().argmax(dim=1)
        rows = torch.arange(len(last), device=last.device)
        return F.normalize(vectors[rows, last] + self.out(h[rows, last]), dim=-1)


# ------------------------------------------------------------------------------------------ queries and scores
@torch.inference_mode()
def recommend_queries(
    model: MultiTaskAdapter, item_emb: np.ndarray, histories: Sequence[Sequence[int]], batch_size: int = 1024
) -> np.ndarray:
    """Next-item queries (B, dim) float32 for histories of item indices (oldest first); score with encode_items."""
    model.eval()
    emb = as_embeddings(item_emb, "item_emb", model.config.input_dim, check_values=False)
    histories = index_lists(histories, len(emb), "histories")
    out = []
    for start in range(0, len(histories), batch_size):
        idx, mask = pad(histories[start : start + batch_size], model.config.max_history)
        out.append(model.recommend_query(gather(emb, idx), torch.from_numpy(mask)))
    q = torch.cat(out).numpy() if out else np.zeros((0, model.config.out_dim), dtype=np.float32)
    return blend_text(model, "recommend", q, _mean_text(emb, histories)) if model.config.text_blend else q


def _mean_text(emb: np.ndarray, sets: Sequence[Sequence[int]]) -> np.ndarray:
    return np.stack([emb[list(s)].mean(0) for s in sets]) if len(sets) else np.zeros((0, emb.shape[1]), np.float32)


def history_scorer(emb: np.ndarray, method: str, model: MultiTaskAdapter | None = None,
                   popularity: np.ndarray | None = None) -> Scorer:
    """``histories -> scores (n, items)`` for ``text`` (cosine to the mean history embedding: the baseline),
    ``adapter`` (the trained queries against the adapted items) or ``popularity``."""
    if method == "popularity":
        if popularity is None:
            raise ValueError("method='popularity' needs popularity= (one count per item)")
        return lambda hs: np.repeat(popularity[None, :], len(hs), 0)
    if method == "text":
        return lambda hs: text_queries(emb, hs) @ emb.T
    if method == "adapter":
        if model is None:
            raise ValueError("method='adapter' needs model=")
        vectors = encode_items(model, emb, "recommend")
        return lambda hs: recommend_queries(model, emb, hs) @ vectors.T
    raise ValueError(f"unknown method {method!r}: use popularity, text or adapter")


class Recommend(SequenceObserving):
    """The ``recommend`` task (see the module docstring)."""

    name = "recommend"
    data_type = SequenceTask
    select_metric = "Recall@10"
    head_name = "sequence"  # MultiTaskAdapter.sequence
    fine_tunes = True  # Guide.observe(fine_tune=True) may fine-tune on this task's data

    def head(self, config: AdapterConfig) -> nn.Module:
        """The task's part of the model."""
        return SequenceEncoder(config)

    def forward(self, model: MultiTaskAdapter, batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``MultiTaskAdapter.forward(batch, "recommend")``: queries, or logits and softmax cross-entropy."""
        require_keys(batch, ("history", "history_mask"), self.name)
        return model.retrieval_output(model.recommend_query(batch["history"], batch["history_mask"]), batch, self.name)

    def check(self, model: MultiTaskAdapter, data: SequenceTask) -> None:
        """Raise ValueError unless ``data`` fits ``model``."""
        check_dim(model, data, self.name)

    def validate(self, data: SequenceTask, model: MultiTaskAdapter | None = None) -> float:
        """Recall@10 on the validation sequences (text similarity when ``model`` is None)."""
        return float(self.per_example(data, model).mean())

    def per_example(self, data: SequenceTask, model: MultiTaskAdapter | None = None) -> np.ndarray:
        """Each validation example's selection metric, 0/1: the target in the top 10 of the full ranking."""
        ranks = data.valid_ranks(model)
        if ranks is None:
            raise ValueError("this SequenceTask has no validation split (valid_histories / valid_targets)")
        return (ranks < 10).astype(np.float64)

    def serve(self, guide: Guide, history: list[str], k: int, *, category: str | Sequence[str] | None,
              where: Where | None, exclude_history: bool, on_unknown: str, method: str) -> Hits:
        """The body of ``Guide.recommend`` (``where`` already holds the category filter)."""
        if not history:
            raise ValueError("history must be a non-empty list of item ids (oldest first)")
        rows, unknown = guide.rows(history, "history", on_unknown)
        known = [guide.index.ids[r] for r in rows]
        exclude = [known] if exclude_history else None
        # the serving decision of the filtered categories, else of the history's (the conservative one if several)
        served = [category] if isinstance(category, str) else category if category is not None else None
        weight = guide.adapter_weight(self.name, method, served, rows)
        emb = guide.index.embeddings
        if weight > 0:
            guide.require_task(self.name)
            qa = recommend_queries(guide.adapter, emb, [rows])
        q = text_queries(emb, [rows])
        if weight >= 1.0:
            ids, scores = guide.task_vectors(self.name).search(qa, k, where=where, exclude=exclude)
        elif weight <= 0:
            ids, scores = guide.index.search(q, k, where=where, exclude=exclude)
        else:
            ids, scores = blend_search(guide.index, q, guide.task_vectors(self.name), qa, weight, k,
                                       where=where, exclude=exclude)
        hits = guide.to_hits(ids[0], scores[0])
        hits.method, hits.skipped = hits_label(weight), unknown
        return hits

    # -- the toy problem of the shared tests: each item's successor is a fixed random other item
    def toy(self, seed: int = 0) -> Toy:
        return Toy(toy_items(24, seed), seed=seed)

    def toy_data(self, toy: Toy, item_emb: np.ndarray) -> SequenceTask:
        succ = np.random.default_rng(toy.seed).permutation(len(item_emb))
        hist = [[i] for i in range(len(item_emb))] * 20
        return SequenceTask(item_emb, hist, [int(succ[h[0]]) for h in hist],
                            [[i] for i in range(len(item_emb))], [int(succ[i]) for i in range(len(item_emb))])

    def rank(self, data: SequenceTask, example: int, model: MultiTaskAdapter, k: int) -> list[int]:
        hist = data.valid_histories[example]
        scores = history_scorer(data.item_emb, "adapter", model)([hist])[0]
        scores[hist] = -np.inf
        return np.argsort(-scores, kind="stable")[:k].tolist()

    def ask(self, guide: Guide, data: SequenceTask, example: int, k: int) -> list[int]:
        hits = guide.recommend([guide.index.ids[r] for r in data.valid_histories[example]], k=k, method="adapter")
        return [guide.index.row_of[i] for i in hits.ids]

    @staticmethod
    def category_field(meta: dict) -> str:
        """The metadata field whose values the recommend decisions are kept per."""
        return "category"


    def observe_context(self, rows: list[int], j: int) -> list[int]:
        """What ``Guide.observe`` queries with when row ``j`` is the target: the items before it."""
        return rows[:j]

    def observe_queries(self, guide: Guide, contexts: list[list[int]], category: str) -> np.ndarray:
        """The adapter's queries for ``Guide.observe``: the histories."""
        return recommend_queries(guide.adapter, guide.index.embeddings, contexts)


RECOMMEND = Recommend()
