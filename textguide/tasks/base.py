"""The Task protocol: what the training loop, transfer, benchmarks, tests and :class:`~textguide.guide.Guide`
need to know about a task, in one place per task.

A task module (``recommend.py``, ``outfit.py``, ``coupon.py``) holds, for its task only: the training data
class (examples as rows of an item text-embedding matrix, ``batch`` for the loop, ``valid_metric`` for early
stopping), the query functions of a trained adapter, the text-similarity baseline, the selection metric, the
serving body behind the ``Guide`` method, its head and loss (held by :class:`~textguide.adapters.MultiTaskAdapter`
under ``head_name``), and a toy problem with a planted answer for the shared tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    import torch.nn as nn

    from ..adapters import AdapterConfig, MultiTaskAdapter
    from ..guide import Guide


@dataclass
class Toy:
    """A small problem with a planted answer: a catalog (``id``, ``text``, ``category`` and the task's own
    columns), the guide metadata the task serves with, the model's slot count and the seed of the answer.
    ``Task.toy_data`` builds the training data on the embedded catalog's rows."""

    items: "pd.DataFrame"
    meta: dict[str, Any] = field(default_factory=dict)
    n_slots: int = 0
    seed: int = 0


class Task(Protocol):
    """One task. Instances are stateless; :data:`textguide.tasks.TASKS` maps each name to its instance."""

    name: str  # the head's name in MultiTaskAdapter and the key in TASKS
    data_type: type  # the training data class, e.g. SequenceTask
    select_metric: str  # what early stopping, the transfer guard and the benchmark reports select on
    head_name: str  # the attribute of MultiTaskAdapter that holds the head
    fine_tunes: bool  # whether Guide.observe(fine_tune=True) may fine-tune on this task's sequences

    def head(self, config: "AdapterConfig") -> "nn.Module":
        """The task's part of the model, built from the adapter's config."""

    def forward(self, model: "MultiTaskAdapter", batch: dict[str, Any]) -> tuple[Any, Any]:
        """``MultiTaskAdapter.forward(batch, name)``: (output, loss); loss is None without targets / labels."""

    def check(self, model: "MultiTaskAdapter", data: Any) -> None:
        """Raise ValueError unless ``data`` fits ``model`` (embedding dim, slots, profile features)."""

    def validate(self, data: Any, model: "MultiTaskAdapter | None" = None) -> float:
        """``select_metric`` on ``data``'s validation split: the adapter's, or the text baseline's (None)."""

    def toy(self, seed: int = 0) -> Toy:
        """A toy catalog with a planted answer (for the shared behavioural tests and examples)."""

    def toy_data(self, toy: Toy, item_emb: np.ndarray) -> Any:
        """The toy's training data (with a validation split) on its embedded catalog's rows."""

    def category_field(self, meta: dict[str, Any]) -> str:
        """The item metadata field whose values the serving decisions are kept per (e.g. ``category``)."""

    def rank(self, data: Any, example: int, model: "MultiTaskAdapter", k: int) -> list[int]:
        """The task's own scorer: the top ``k`` item (or coupon) rows of validation example ``example``."""

    def ask(self, guide: "Guide", data: Any, example: int, k: int) -> list[int]:
        """The same validation example through the public ``Guide`` method (served by the adapter), as rows."""

    def observe_metric(self, k: int) -> str:
        """The metric ``Guide.observe`` decides on (e.g. ``Recall@10``, ``AUC``)."""

    def check_observable(self, guide: "Guide", category: str) -> None:
        """Refuse (``ValueError``) a category ``Guide.observe`` cannot measure, before any work."""

    def observe_users(self, guide: "Guide", records: Any, category: str, weights: Any,
                      k: int) -> tuple[dict[float, np.ndarray], dict[str, dict[float, np.ndarray]], int]:
        """Per-user scores of the decision metric for every adapter weight, other metrics the same way, and
        the number of candidates seen."""


def check_dim(model: "MultiTaskAdapter", data: Any, name: str) -> None:
    """Raise ValueError unless ``data.item_emb`` has the model's input dimension."""
    if data.item_emb.shape[1] != model.config.input_dim:
        raise ValueError(
            f"tasks[{name!r}].item_emb has wrong embedding dimension: expected {model.config.input_dim}, "
            f"got {data.item_emb.shape[1]}"
        )


def toy_items(n: int, seed: int, categories: tuple[str, ...] = ("alpha", "beta", "gamma")) -> "pd.DataFrame":
    """``n`` toy products (``id``, ``text``, ``category``) with distinct texts, for the toy problems."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    words = ["red", "blue", "wool", "steel", "linen", "oak", "glass", "silk", "cotton", "brass", "clay", "jade"]
    return pd.DataFrame({
        "id": [f"t{i:03d}" for i in range(n)],
        "text": [" ".join(rng.choice(words, size=3, replace=False)) + f" model {i}" for i in range(n)],
        "category": [categories[i % len(categories)] for i in range(n)],
    })


def sequence_candidates(task: Any, guide: "Guide", category: str) -> np.ndarray:
    """The live rows whose task field (``category`` for recommend, ``slot`` for outfits) is ``category``; an
    error naming the field when there are none (``Guide.observe``'s first check, before any fine-tuning)."""
    field = task.category_field(guide.adapter_meta)
    in_cat = guide.index.mask({field: category}) if field in guide.index.metadata.columns else None
    if in_cat is None or not in_cat.any():
        raise ValueError(f"no live item has {field}={category!r}; onboard the category first")
    return in_cat


def sequence_evidence(task: Any, guide: "Guide", sequences: Any, category: str, weights: Any,
                      k: int) -> tuple[dict[float, np.ndarray], dict[str, dict[float, np.ndarray]], int]:
    """Per-user evidence for ``Guide.observe`` on a sequence-shaped task (recommend, outfit): in each sequence
    the last item of ``category`` is the target, ``task.observe_context`` the query, and the category's live
    items the candidates. Returns each user's hit@``k`` for every adapter weight, the same for NDCG@``k``, and the
    number of candidates (the shape of :meth:`textguide.tasks.coupon.Coupon.observe_users`)."""
    from .. import decisions as dec
    from ..adapters import encode_items
    from ..metrics import text_queries

    in_cat = sequence_candidates(task, guide, category)
    hist, targets = [], []
    for n, seq in enumerate(sequences):
        rows, _ = guide.rows(seq, f"sequence {n}", "error")
        rows = list(dict.fromkeys(rows))
        pos = [j for j, r in enumerate(rows) if in_cat[r]]
        if not pos:
            continue
        context = task.observe_context(rows, pos[-1])
        if context:
            hist.append(context[-50:])
            targets.append(rows[pos[-1]])
    if len(hist) < 2:
        raise ValueError(f"need at least 2 sequences with an item of {category!r} after at least one other item, "
                         f"got {len(hist)}")
    cand = np.flatnonzero(in_cat)
    col = {int(r): i for i, r in enumerate(cand)}
    emb = guide.index.embeddings
    ranks = dec.ranks_by_weight(text_queries(emb, hist), emb[cand], task.observe_queries(guide, hist, category),
                                encode_items(guide.adapter, emb[cand], task.name), [col[t] for t in targets],
                                [[col[r] for r in h if r in col] for h in hist], weights,
                                task.observe_extra(guide, hist, cand))
    hits = {w: dec.rank_metrics(r, k)[0] for w, r in ranks.items()}
    ndcg = {w: dec.rank_metrics(r, k)[1] for w, r in ranks.items()}
    return hits, {f"NDCG@{k}": ndcg}, len(cand)


class SequenceObserving:
    """``Guide.observe`` for the sequence-shaped tasks (recommend, outfit): a task using it has ``name``,
    ``category_field``, ``observe_context`` (the query rows when row ``j`` is the target) and ``observe_queries``."""

    def observe_metric(self, k: int) -> str:
        """The metric ``Guide.observe`` decides on."""
        return f"Recall@{k}"

    def check_observable(self, guide: "Guide", category: str) -> None:
        """Refuse a category with no live item, before ``Guide.observe`` does any work."""
        sequence_candidates(self, guide, category)

    def observe_extra(self, guide: "Guide", contexts: list[list[int]], candidates: np.ndarray) -> np.ndarray | None:
        """A (contexts, candidates) score term the guide serves with the adapter alone, so ``Guide.observe``
        judges the adapter as it is served (none here)."""
        return None

    def observe_users(self, guide: "Guide", sequences: Any, category: str, weights: Any,
                      k: int) -> tuple[dict[float, np.ndarray], dict[str, dict[float, np.ndarray]], int]:
        """Per-user hit@``k`` (and NDCG@``k``) by adapter weight (:func:`sequence_evidence`)."""
        return sequence_evidence(self, guide, sequences, category, weights, k)
