"""Complementary items (outfits, baskets): everything about the ``outfit`` task.

Data: :class:`OutfitTask`, outfits as lists of item rows plus each item's slot. The model part is
``MultiTaskAdapter.outfit`` (attention-pooled partial outfit + the wanted slot, :mod:`textguide.adapters`),
trained by hiding one item per outfit against in-batch answers, same-slot items and the visible items.
Queries: :func:`outfit_queries`. Text baseline: cosine to the mean embedding of the partial outfit
(:func:`textguide.metrics.text_queries`). Selection metric: fill-in-the-blank accuracy (the hidden item against
3 random items of its slot). Serving: :meth:`Outfit.serve`, behind ``Guide.complete_outfit``. The served
adapter score may add the title word overlap with the partial outfit (:mod:`textguide.words`, weight
``AdapterConfig.outfit_word_weight``, chosen on validation outfits): :class:`OutfitScores` carries it through
every metric, and the guide adds it when serving.

Outfit data beyond named outfits: :func:`structure_task` turns outfits known only by item kind (Polyvore's NGNN
category outfits) into a pre-training task for the head, and :func:`kind_pmi` + :func:`attach_kind_prior` give the
head a kind prior that joins the text part of the served blend (see :class:`OutfitHead`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import AdapterConfig, AttentionPool, MultiTaskAdapter, blend_text, encode_items, require_keys
from ..decisions import blend_scores, blend_search, hits_label
from ..inputs import as_embeddings, check_weights, gather, index_lists, pad, sample_rows
from ..metrics import fitb_accuracy, rank_of_target, text_queries
from ..words import WordOverlap
from .base import SequenceObserving, Toy, check_dim, toy_items

if TYPE_CHECKING:
    from ..guide import Guide, Hits
    from ..training import TrainConfig

__all__ = ["OUTFIT", "Outfit", "OutfitHead", "OutfitScores", "OutfitTask", "attach_kind_prior", "fitb_scores",
           "kind_pmi", "outfit_queries", "outfit_scorer", "structure_task"]

Questions = tuple[list[list[int]], list[int], np.ndarray]


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
    ``words`` (optional): the items' title word overlap table, one title per ``item_emb`` row; scoring adds
    ``AdapterConfig.outfit_word_weight`` x the overlap to the model's scores (:class:`OutfitScores`).
    ``slot_pools`` maps each slot to its items' rows.
    """

    item_emb: np.ndarray
    outfits: list[list[int]]
    item_slots: np.ndarray
    valid_outfits: list[list[int]] | None = None
    weights: np.ndarray | None = None
    words: WordOverlap | None = None
    kind: ClassVar[str] = "outfit"

    def __post_init__(self) -> None:
        self.item_emb = as_embeddings(self.item_emb, "item_emb")
        n = len(self.item_emb)
        self.outfits = index_lists(self.outfits, n, "outfits", min_len=2)
        if self.valid_outfits is not None:
            self.valid_outfits = index_lists(self.valid_outfits, n, "valid_outfits", min_len=2)
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
        self.slot_pools = {int(v): pool for v, pool in zip(values, np.split(order, starts[1:]))}  # slot -> items
        self.weights = check_weights(self.weights, len(self.outfits), "outfit")
        if self.words is not None and len(self.words) != n:
            raise ValueError(f"words has {len(self.words)} titles for {n} items (item_emb rows); build it as "
                             f"WordOverlap(titles) with one title per row")

    def __len__(self) -> int:
        return len(self.outfits)

    @property
    def n_query_slots(self) -> int:
        """How many slots the model must know: queries name slots ``0 .. n_query_slots - 1`` (or -1)."""
        return int(self.item_slots.max()) + 1 if len(self.item_slots) else 0

    def sample_rows(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` outfit rows: uniform, or proportional to ``weights`` when given."""
        return sample_rows(rng, len(self.outfits), size, self.weights)

    def batch(self, rng: np.random.Generator, batch_size: int, max_history: int, config: TrainConfig) -> dict:
        """A training batch for ``MultiTaskAdapter.forward(batch, "outfit")``."""
        positives, visible = self.draw(rng, batch_size)
        return self.assemble(rng, positives, visible, max_history, config)

    def draw(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, list[list[int]]]:
        """Sample outfits and hide one item of each: (hidden items, the visible rest)."""
        positives, visible = np.empty(batch_size, dtype=np.int64), []
        for b, r in enumerate(self.sample_rows(rng, batch_size)):
            outfit = self.outfits[r]
            hidden = int(rng.integers(len(outfit)))
            positives[b] = outfit[hidden]
            visible.append(outfit[:hidden] + outfit[hidden + 1 :])
        return positives, visible

    def assemble(self, rng: np.random.Generator, positives: np.ndarray, visible: list[list[int]], max_history: int,
                 config: TrainConfig) -> dict:
        """The batch for hidden items ``positives`` and the visible rest of their outfits."""
        batch_size = len(positives)
        slots = self.item_slots[positives]
        negatives = self.draw_negatives(rng, positives, config.slot_negatives)
        vis, vis_mask = pad(visible, max_history)
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
            "items": gather(self.item_emb, vis),
            "items_mask": torch.from_numpy(vis_mask),
            "items_slot": torch.from_numpy(np.where(vis_mask, self.item_slots[vis], -1)),
            "slot": torch.from_numpy(query_slots),
            "candidates": gather(self.item_emb, positives),
            "row_candidates": gather(self.item_emb, row_ids),
            "exclude": torch.from_numpy(exclude),
            "targets": torch.arange(batch_size),
        }

    def draw_negatives(self, rng: np.random.Generator, positives: np.ndarray, size: int) -> np.ndarray:
        """(B, size) negatives for the answers ``positives``: random items of each answer's slot."""
        return np.stack([rng.choice(self.slot_pools[int(s)], size=size) for s in self.item_slots[positives]])

    def example_items(self) -> list[list[int]]:
        """Each training example's items: the outfit."""
        return self.outfits

    def training_queries(self, model: MultiTaskAdapter, rows: np.ndarray) -> torch.Tensor:
        """The model's queries (with gradients) for training outfits ``rows``: each whole outfit, unknown slot."""
        h, mask = pad([self.outfits[i] for i in rows], model.config.max_history)
        return model.outfit_query(gather(self.item_emb, h), torch.from_numpy(mask), torch.full((len(rows),), -1),
                                  torch.from_numpy(np.where(mask, self.item_slots[h], -1)))

    def fitb_questions(self, outfits: list[list[int]], n_distractors: int = 3, seed: int = 0) -> Questions:
        """Fixed FITB questions: (partials, slots, candidates (Q, 1 + n) with the answer in column 0)."""
        rng = np.random.default_rng(seed)
        pools = self.slot_pools
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
        return partials, slots, candidates, outfit_queries(model, self.item_emb, partials, slots, self.item_slots)

    def valid_metric(self, model: MultiTaskAdapter) -> float | None:
        """FITB accuracy (the hidden item must beat 3 random items of its slot); None without validation.
        The model's title word overlap joins the score when the task has titles (``words``); a task of
        untitled items (the NGNN category outfits that pre-train the head) validates without it."""
        questions = self.valid_questions(model)
        if questions is None:
            return None
        partials, _, candidates, queries = questions
        ids, inverse = np.unique(candidates, return_inverse=True)
        vectors = encode_items(model, self.item_emb[ids], "outfit")[inverse.reshape(candidates.shape)]
        scores = fitb_scores(queries, vectors)
        if model.config.outfit_word_weight and self.words is not None:
            scores = scores + model.config.outfit_word_weight * self.words.pair_scores(partials, candidates)
        return fitb_accuracy(scores, np.zeros(len(candidates), dtype=np.int64))

    def ctl_ranks(self, queries: np.ndarray, vectors: np.ndarray, questions: Questions) -> np.ndarray:
        """Complete the look: each hidden item's 0-based rank among all items of its slot (the partial
        outfit's own items left out; ties count against it)."""
        partials, slots, cands = questions
        ranks = np.empty(len(partials), dtype=np.int64)
        for q, (part, slot, cand) in enumerate(zip(partials, slots, cands)):
            pool = self.slot_pools[slot]
            scores = vectors[pool] @ queries[q]
            answer = float(vectors[cand[0]] @ queries[q])
            ranks[q] = int(((scores > answer) & ~np.isin(pool, part) & (pool != cand[0])).sum())
        return ranks


def attach_kind_prior(model: MultiTaskAdapter, kind_emb: np.ndarray, pmi: np.ndarray) -> None:
    """Give ``model``'s outfit head a kind table of ``len(kind_emb)`` kinds (sets ``config.outfit_kinds``; the
    prior then joins the text part of the outfit blend, see :class:`OutfitHead`)."""
    model.check_task("outfit")
    k, dim = np.shape(kind_emb)
    if dim != model.config.input_dim:
        raise ValueError(f"kind_emb has wrong embedding dimension: expected {model.config.input_dim}, got {dim}")
    model.config.outfit_kinds = k
    head = model.outfit
    head.register_buffer("kind_emb", torch.zeros(k, dim))
    head.register_buffer("kind_pmi", torch.zeros(k, k))
    head.set_kind_prior(np.asarray(kind_emb), np.asarray(pmi))


def kind_pmi(outfits: Sequence[Sequence[str]], names: Sequence[str], smoothing: float = 1.0) -> np.ndarray:
    """(K, K) pointwise mutual information of two kinds appearing in the same outfit (add-``smoothing``
    counts; each kind counted once per outfit; the diagonal is 0): ``log P(a, b) / (P(a) P(b))``."""
    row = {n: i for i, n in enumerate(names)}
    k = len(names)
    together, alone = np.zeros((k, k)), np.zeros(k)
    for outfit in outfits:
        rows = sorted({row[n] for n in outfit if n in row})
        alone[rows] += 1
        together[np.ix_(rows, rows)] += 1
    n = max(len(outfits), 1)
    pmi = np.log((together + smoothing) * n / ((alone[:, None] + smoothing) * (alone[None, :] + smoothing)))
    np.fill_diagonal(pmi, 0.0)
    return pmi.astype(np.float32)


def structure_task(outfits: Sequence[Sequence[str]], names: Sequence[str], name_emb: np.ndarray,
                   name_slots: dict[str, int], valid: Sequence[bool] | None = None) -> OutfitTask:
    """Outfits whose items are known only by a kind name (Polyvore's fine-grained categories in the NGNN
    outfits: "Skinny Jeans", "Ankle Booties"), as an :class:`OutfitTask` for pre-training the outfit head on
    which kinds go together (a structural signal) before it is fine-tuned on named outfits.

    One item per distinct name, embedded as its text (``name_emb[i]`` for ``names[i]``); its slot is
    ``name_slots.get(name, -1)``; a name repeated within an outfit counts once; outfits left with fewer than two
    items are dropped. ``valid`` (one flag per outfit) marks the validation outfits (FITB on kinds).
    """
    if len(names) != len(name_emb):
        raise ValueError(f"{len(names)} names but {len(name_emb)} name embeddings; give one embedding per name")
    if valid is not None and len(valid) != len(outfits):
        raise ValueError(f"valid has {len(valid)} flags for {len(outfits)} outfits; give one per outfit")
    row = {n: i for i, n in enumerate(names)}
    unknown = sorted({n for o in outfits for n in o if n not in row})
    if unknown:
        raise ValueError(f"outfit item name(s) {unknown[:5]} not in names; embed every name that outfits use")
    flags = [False] * len(outfits) if valid is None else [bool(v) for v in valid]
    train_rows, valid_rows = [], []
    for outfit, is_valid in zip(outfits, flags):
        rows = list(dict.fromkeys(row[n] for n in outfit))
        if len(rows) >= 2:
            (valid_rows if is_valid else train_rows).append(rows)
    slots = np.array([name_slots.get(n, -1) for n in names], dtype=np.int64)
    return OutfitTask(name_emb, train_rows, slots, valid_rows or None)


def _kind_scale(config: AdapterConfig) -> float:
    """``sqrt(w * weight)``: split over an item's and a query's kind columns, their product adds
    ``w * weight * prior`` to the score (``w`` the outfit text-blend weight)."""
    return math.sqrt(config.text_blend.get("outfit", 0.0) * config.outfit_kind_weight)


# ------------------------------------------------------------------------------------------ the head
class OutfitHead(nn.Module):
    """Pooled partial outfit + a learned correction from (outfit, wanted slot) -> complementary query (B, dim).

    With ``config.outfit_pair_rank = r > 0`` the query also gets a type-aware term (Vasileva et al. 2018): each
    visible item ``a_i`` of slot ``s_i`` is mapped by the projection of its slot pair ``(s_i, wanted slot)``,
    ``U_p V_p^T a_i`` (rank ``r``, ``U`` zero-initialised), and their mean is added, so that a candidate's score
    ``q . v_c`` sums compatibilities measured in a space of its own for every slot pair (shoe-bag compares other
    features than upper-bottom). Slot ``n_slots`` stands for "unknown" on either side.
    """

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        self.n_slots = config.n_slots
        self.scale = math.sqrt(config.dim)
        self.pool = AttentionPool(config.dim)
        self.slot = nn.Embedding(config.n_slots + 1, config.dim)  # the last row is "unknown slot"
        self.mlp = nn.Sequential(
            nn.Linear(2 * config.dim, 2 * config.dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(2 * config.dim, config.dim),
        )
        # residual: the untrained query is the pooled outfit itself (text similarity), training learns the
        # complementary correction -- small outfit datasets then start from, not below, the text baseline
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.pair_rank = config.outfit_pair_rank
        if self.pair_rank:
            n_pairs = (config.n_slots + 1) ** 2
            self.pair_down = nn.Parameter(torch.randn(n_pairs, config.dim, self.pair_rank) / math.sqrt(config.dim))
            self.pair_up = nn.Parameter(torch.zeros(n_pairs, self.pair_rank, config.dim))  # starts as no change
        # the kind prior (not trained by gradient): kind-name text embeddings and their PMI over kind outfits
        self.register_buffer("kind_emb", torch.zeros(config.outfit_kinds, config.input_dim))
        self.register_buffer("kind_pmi", torch.zeros(config.outfit_kinds, config.outfit_kinds))

    def set_kind_prior(self, kind_emb: np.ndarray, pmi: np.ndarray) -> None:
        """Set the kind table: unit text embeddings of the kind names (K, input_dim) and the (K, K) PMI of
        kinds within outfits (:func:`kind_pmi`). K must be the config's ``outfit_kinds``."""
        k = self.kind_emb.shape[0]
        if kind_emb.shape != tuple(self.kind_emb.shape) or pmi.shape != (k, k):
            raise ValueError(f"kind prior must be ({k}, {self.kind_emb.shape[1]}) embeddings and a ({k}, {k}) PMI "
                             f"matrix (AdapterConfig.outfit_kinds={k}); got {kind_emb.shape} and {pmi.shape}")
        self.kind_emb.copy_(torch.as_tensor(np.asarray(kind_emb, dtype=np.float32)))
        self.kind_pmi.copy_(torch.as_tensor(np.asarray(pmi, dtype=np.float32)))

    def kind_probabilities(self, text: np.ndarray, config: AdapterConfig) -> np.ndarray:
        """(N, K) soft kind of each item: softmax over kinds of ``temperature *`` text cosine to the kind name."""
        logits = config.outfit_kind_temperature * (np.asarray(text, np.float32) @ self.kind_emb.numpy().T)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def kind_item_columns(self, text: np.ndarray, config: AdapterConfig) -> np.ndarray:
        """The columns that an item vector gets for the kind prior: ``sqrt(w * weight) * p(kind | item)``."""
        return (_kind_scale(config) * self.kind_probabilities(text, config)).astype(np.float32)

    def kind_query_columns(self, text: np.ndarray, partials: list[list[int]], config: AdapterConfig) -> np.ndarray:
        """The query's columns: ``sqrt(w * weight) * (sum of the partial outfit's kind probabilities) @ PMI``,
        so a candidate's score gains ``w * weight * sum_i p_i^T PMI p_c``."""
        scale = _kind_scale(config)
        sums = np.stack([self.kind_probabilities(text[list(p)], config).sum(0) for p in partials])
        return (scale * sums @ self.kind_pmi.numpy()).astype(np.float32)

    def pair_index(self, items_slot: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """(B, L) row of each (visible item's slot, wanted slot) pair; -1 on either side maps to "unknown"."""
        unknown = self.n_slots
        items_slot = torch.where(items_slot < 0, torch.full_like(items_slot, unknown), items_slot)
        return items_slot * (unknown + 1) + slot.unsqueeze(1)

    def forward(self, vectors: torch.Tensor, mask: torch.Tensor, slot: torch.Tensor,
                items_slot: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.pool(vectors, mask)
        slot = torch.where(slot < 0, torch.full_like(slot, self.n_slots), slot)
        correction = self.mlp(torch.cat([pooled * self.scale, self.slot(slot)], dim=-1))
        if self.pair_rank:
            if items_slot is None:
                items_slot = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
            pair = self.pair_index(items_slot, slot)  # (B, L)
            low = torch.einsum("bld,bldr->blr", vectors, self.pair_down[pair])
            mapped = torch.einsum("blr,blrd->bld", low, self.pair_up[pair]) * mask.unsqueeze(-1)
            correction = correction + mapped.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return F.normalize(F.normalize(pooled, dim=-1) + correction, dim=-1)


# ------------------------------------------------------------------------------------------ queries and scores
def fitb_scores(queries: np.ndarray, candidate_vectors: np.ndarray) -> np.ndarray:
    """(Q, C) scores of each question's candidates: ``queries`` (Q, d) against ``candidate_vectors`` (Q, C, d)."""
    return np.einsum("qd,qcd->qc", queries, candidate_vectors)


@torch.inference_mode()
def outfit_queries(
    model: MultiTaskAdapter,
    item_emb: np.ndarray,
    partials: Sequence[Sequence[int]],
    slots: Sequence[int],
    item_slots: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Complementary-item queries (B, dim) float32 for partial outfits and wanted slots (-1 = unknown).
    ``item_slots`` (one slot index per ``item_emb`` row, -1 = unknown) tells a type-aware head
    (``outfit_pair_rank``) each visible item's slot; without it every visible item's slot is unknown."""
    model.eval()
    emb = as_embeddings(item_emb, "item_emb", model.config.input_dim, check_values=False)
    partials = index_lists(partials, len(emb), "partials")
    slots = np.asarray(slots, dtype=np.int64).reshape(-1)
    if len(slots) != len(partials):
        raise ValueError(f"{len(partials)} partial outfits but {len(slots)} slots; give one slot per outfit")
    if item_slots is not None:
        item_slots = np.asarray(item_slots, dtype=np.int64).reshape(-1)
        if len(item_slots) != len(emb):
            raise ValueError(f"item_slots has {len(item_slots)} entries for {len(emb)} items; give one per row")
    out = []
    for start in range(0, len(partials), batch_size):
        idx, mask = pad(partials[start : start + batch_size], model.config.max_history)
        slot = torch.from_numpy(slots[start : start + batch_size])
        kinds = None if item_slots is None else torch.from_numpy(np.where(mask, item_slots[idx], -1))
        out.append(model.outfit_query(gather(emb, idx), torch.from_numpy(mask), slot, kinds))
    q = torch.cat(out).numpy() if out else np.zeros((0, model.config.dim), dtype=np.float32)
    if not model.config.text_blend:
        return q
    mean = np.stack([emb[list(s)].mean(0) for s in partials]) if partials else np.zeros((0, emb.shape[1]), np.float32)
    q = blend_text(model, "outfit", q, mean)
    if model.config.outfit_kinds and model.config.text_blend.get("outfit") and partials:
        q = np.concatenate([q, model.outfit.kind_query_columns(emb, partials, model.config)], axis=1)
    return q


@dataclass
class OutfitScores:
    """Scores of items for partial outfits: ``queries[q] . vectors[item]``, plus ``word_weight`` x the title word
    overlap of the item with ``partials[q]`` (:class:`textguide.words.WordOverlap`) when ``words`` is given."""

    queries: np.ndarray  # (Q, d)
    vectors: np.ndarray  # (items, d)
    partials: list[list[int]]
    words: WordOverlap | None = None
    word_weight: float = 0.0

    @classmethod
    def of(cls, scored: OutfitScores | tuple[np.ndarray, np.ndarray], partials: list[list[int]]) -> OutfitScores:
        """What a scorer returned: an :class:`OutfitScores`, or a ``(queries, item_vectors)`` pair."""
        return scored if isinstance(scored, OutfitScores) else cls(scored[0], scored[1], list(partials))

    def pairs(self, candidates: np.ndarray) -> np.ndarray:
        """(Q, C) scores of candidate rows ``candidates`` (Q, C), row ``q`` for partial outfit ``q``."""
        cand = np.asarray(candidates, dtype=np.int64)
        scores = fitb_scores(self.queries, self.vectors[cand])
        if self.word_weight and self.words is not None:
            scores = scores + self.word_weight * self.words.pair_scores(self.partials, cand)
        return scores

    def row(self, q: int, items: np.ndarray) -> np.ndarray:
        """Scores of ``items`` (rows) for partial outfit ``q``."""
        scores = self.vectors[items] @ self.queries[q]
        if self.word_weight and self.words is not None:
            scores = scores + self.word_weight * self.words.scores(self.partials[q], items)
        return scores


OutfitScorer = Callable[[list[list[int]], list[int]], OutfitScores]


def outfit_scorer(emb: np.ndarray, method: str, model: MultiTaskAdapter | None = None,
                  item_slots: np.ndarray | None = None, words: WordOverlap | None = None,
                  word_weight: float | None = None) -> OutfitScorer:
    """``(partials, slots) -> OutfitScores`` for ``text`` (the baseline: the unit mean of the partial outfit
    against the text embeddings) or ``adapter`` (``item_slots``: each row's slot, see :func:`outfit_queries`).
    ``words``: the items' title word overlap, added with ``word_weight`` (default: the adapter's
    ``outfit_word_weight``; 0 for text). An adapter with a word weight needs ``words``."""
    if method not in ("text", "adapter"):
        raise ValueError(f"unknown method {method!r}: use text or adapter")
    if method == "adapter" and model is None:
        raise ValueError("method='adapter' needs model=")
    if word_weight is None:
        word_weight = model.config.outfit_word_weight if method == "adapter" else 0.0
    if word_weight and words is None:
        raise ValueError(f"a word weight of {word_weight:g} needs the items' titles: pass words=WordOverlap(titles)")
    if words is not None and len(words) != len(emb):
        raise ValueError(f"words has {len(words)} titles for {len(emb)} items; give one title per embedding row")
    if method == "text":
        return lambda partials, slots: OutfitScores(text_queries(emb, partials), emb, list(partials), words,
                                                    word_weight)
    vectors = encode_items(model, emb, "outfit")
    return lambda partials, slots: OutfitScores(outfit_queries(model, emb, partials, slots, item_slots), vectors,
                                                list(partials), words, word_weight)


class Outfit(SequenceObserving):
    """The ``outfit`` task (see the module docstring)."""

    name = "outfit"
    data_type = OutfitTask
    select_metric = "FITB"
    head_name = "outfit"  # MultiTaskAdapter.outfit
    fine_tunes = False  # Guide.observe(fine_tune=True) may fine-tune on this task's data

    def head(self, config: AdapterConfig) -> nn.Module:
        """The task's part of the model."""
        return OutfitHead(config)

    def forward(self, model: MultiTaskAdapter, batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``MultiTaskAdapter.forward(batch, "outfit")``: queries, or logits and softmax cross-entropy."""
        require_keys(batch, ("items", "items_mask", "slot"), self.name)
        query = model.outfit_query(batch["items"], batch["items_mask"], batch["slot"], batch.get("items_slot"))
        return model.retrieval_output(query, batch, self.name)

    def check(self, model: MultiTaskAdapter, data: OutfitTask) -> None:
        """Raise ValueError unless ``data`` fits ``model`` (embedding dimension, slot vocabulary)."""
        check_dim(model, data, self.name)
        if data.n_query_slots > model.config.n_slots:
            raise ValueError(
                f"tasks['outfit'].item_slots has slot {data.n_query_slots - 1} but the model has "
                f"n_slots={model.config.n_slots}; build AdapterConfig(n_slots={data.n_query_slots})"
            )

    def validate(self, data: OutfitTask, model: MultiTaskAdapter | None = None) -> float:
        """FITB accuracy on the validation outfits (text similarity when ``model`` is None)."""
        return float(self.per_example(data, model).mean())

    def per_example(self, data: OutfitTask, model: MultiTaskAdapter | None = None,
                    outfits: list[list[int]] | None = None) -> np.ndarray:
        """Each FITB question's selection metric, 0/1: the answer strictly above its distractors (questions
        from ``outfits``, default the validation outfits)."""
        scores = self.question_scores(data, model, outfits)
        return (rank_of_target(scores, np.zeros(len(scores), dtype=np.int64)) < 1).astype(np.float64)

    def question_scores(self, data: OutfitTask, model: MultiTaskAdapter | None = None,
                        outfits: list[list[int]] | None = None) -> np.ndarray:
        """(Q, 4) scores of the FITB questions of ``outfits`` (default the validation outfits; the answer in
        column 0) by the adapter with its word weight (text similarity when ``model`` is None)."""
        outfits = data.valid_outfits if outfits is None else outfits
        if not outfits:
            raise ValueError("this OutfitTask has no validation outfits (valid_outfits)")
        partials, slots, cands = data.fitb_questions(outfits, seed=0)
        return outfit_scorer(data.item_emb, "text" if model is None else "adapter", model, data.item_slots,
                             data.words)(partials, slots).pairs(cands)

    def serve(self, guide: Guide, items: list[str], k: int, *, slot: str | None,
              candidates: Sequence[str] | None, on_unknown: str, method: str) -> Hits:
        """The body of ``Guide.complete_outfit``."""
        if not items:
            raise ValueError("items must be a non-empty list of item ids")
        rows, unknown = guide.rows(items, "items", on_unknown)
        known = [guide.index.ids[r] for r in rows]
        slot_field = self.category_field(guide.adapter_meta)
        where = None
        if slot is not None:
            if slot_field not in guide.index.metadata.columns:
                raise ValueError(f"cannot filter on slot: this guide's items have no {slot_field!r} field")
            where = {slot_field: slot}
        slots = list(guide.adapter_meta.get("slots", []))
        if slot is not None and slot not in slots and slots and not guide.index.mask(where).any():
            raise ValueError(
                f"unknown slot {slot!r}: not a slot of the adapter ({slot_field}: {slots}) and no item has "
                f"{slot_field}={slot!r}"
            )
        # the decision of the wanted slot, else of the candidates' (or the input items') slots
        served_rows = rows
        if slot is None and candidates is not None and not isinstance(candidates, str) and len(candidates):
            served_rows = guide.rows(candidates, "candidates", "error")[0]
        weight = guide.adapter_weight(self.name, method, None if slot is None else [slot], served_rows, slot_field)
        emb = guide.index.embeddings
        if weight > 0:
            guide.require_task(self.name)
            # a category onboarded after training: the adapter's "unknown slot" query, searched within it
            slot_idx = slots.index(slot) if slot in slots else -1
            qa = outfit_queries(guide.adapter, emb, [rows], [slot_idx], self.catalog_slots(guide))
        qt = text_queries(emb, [rows])
        q, space = (qa, guide.task_vectors(self.name)) if weight >= 1.0 else (qt, guide.index)
        # the adapter's title word overlap (validated with it; text and partial blends go without)
        word_weight = guide.adapter.config.outfit_word_weight if weight >= 1.0 else 0.0
        words = guide.title_words() if word_weight else None
        if candidates is not None:
            if isinstance(candidates, str) or not len(candidates):
                raise ValueError("candidates must be a non-empty list of item ids")
            given = set(rows)
            cand_rows = [r for r in guide.rows(candidates, "candidates", "error")[0] if r not in given]
            cand = [guide.index.ids[r] for r in cand_rows]
            scores = (space.vectors(cand) @ q[0]).astype(np.float32)
            if words is not None:
                scores += word_weight * words.scores(rows, cand_rows)
            if 0 < weight < 1:
                qn = qa[0] / max(float(np.linalg.norm(qa[0])), 1e-12)
                scores = blend_scores(guide.index.vectors(cand) @ qt[0],
                                      guide.task_vectors(self.name).vectors(cand) @ qn, weight)
            order = np.argsort(-scores, kind="stable")[:k]
            hits = guide.to_hits([cand[i] for i in order], scores[order])
        elif 0 < weight < 1:
            ids, scores = blend_search(guide.index, qt, guide.task_vectors(self.name), qa, weight, k, where=where,
                                       exclude=[known])
            hits = guide.to_hits(ids[0], scores[0])
        else:  # with a word weight: the word overlap re-ranks an over-fetched top of the vector search
            ids, scores = space.search(q, k if words is None else max(100, 10 * k), where=where, exclude=[known])
            ids, scores = ids[0], scores[0][: len(ids[0])]
            if words is not None and ids:
                scores = scores + word_weight * words.scores(rows, [guide.index.row_of[i] for i in ids])
                order = np.argsort(-scores, kind="stable")[:k]
                ids, scores = [ids[i] for i in order], scores[order]
            hits = guide.to_hits(ids, scores)
        hits.method, hits.skipped = hits_label(weight), unknown
        return hits

    def catalog_slots(self, guide: Guide) -> np.ndarray | None:
        """Each catalog row's slot index in the adapter's slot vocabulary (-1: a slot it does not know), read
        from the guide's slot field (None when the items have no such field)."""
        field = self.category_field(guide.adapter_meta)
        if field not in guide.index.metadata.columns:
            return None
        lookup = {s: i for i, s in enumerate(guide.adapter_meta.get("slots", []))}
        return np.array([lookup.get(v, -1) for v in guide.index.metadata[field]], dtype=np.int64)

    @staticmethod
    def category_field(meta: dict[str, Any]) -> str:
        """The metadata field whose values the outfit decisions are kept per: the guide's slot field."""
        return meta.get("slot_field", "category")

    # -- the toy problem of the shared tests: 3 slots, looks of one item per slot that belong together
    def toy(self, seed: int = 0) -> Toy:
        items = toy_items(24, seed)
        items["slot"] = items["category"]
        return Toy(items, {"slot_field": "slot", "slots": ["alpha", "beta", "gamma"]}, n_slots=3, seed=seed)

    def toy_data(self, toy: Toy, item_emb: np.ndarray) -> OutfitTask:
        slots = np.array([toy.meta["slots"].index(s) for s in toy.items["slot"]], dtype=np.int64)
        rng = np.random.default_rng(toy.seed)
        by_slot = [rng.permutation(np.flatnonzero(slots == s)) for s in range(3)]
        looks = [[int(by_slot[s][j]) for s in range(3)] for j in range(len(by_slot[0]))]
        return OutfitTask(item_emb, looks * 20, slots, looks)

    def rank(self, data: OutfitTask, example: int, model: MultiTaskAdapter, k: int) -> list[int]:
        part, slot, cands = self._question(data, example)
        scores = outfit_scorer(data.item_emb, "adapter", model, data.item_slots, data.words)([part], [slot]).row(
            0, np.asarray(cands))
        return [int(cands[i]) for i in np.argsort(-scores, kind="stable")[:k]]

    def ask(self, guide: Guide, data: OutfitTask, example: int, k: int) -> list[int]:
        part, slot, cands = self._question(data, example)
        ids = guide.index.ids
        names = guide.adapter_meta.get("slots")
        hits = guide.complete_outfit([ids[r] for r in part], k=k, slot=names[slot] if names else None,
                                     candidates=[ids[r] for r in cands], method="adapter")
        return [guide.index.row_of[i] for i in hits.ids]


    def observe_context(self, rows: list[int], j: int) -> list[int]:
        """What ``Guide.observe`` queries with when row ``j`` is the target: the rest of the outfit."""
        return rows[:j] + rows[j + 1:]

    def observe_queries(self, guide: Guide, contexts: list[list[int]], category: str) -> np.ndarray:
        """The adapter's queries for ``Guide.observe``: the partial outfits asking for slot ``category``."""
        slots = list(guide.adapter_meta.get("slots", []))
        slot = slots.index(category) if category in slots else -1
        return outfit_queries(guide.adapter, guide.index.embeddings, contexts, [slot] * len(contexts),
                              self.catalog_slots(guide))

    def observe_extra(self, guide: Guide, contexts: list[list[int]], candidates: np.ndarray) -> np.ndarray | None:
        """The adapter's title word overlap (``outfit_word_weight`` x :meth:`WordOverlap.scores`) of every
        candidate with each partial outfit, as :meth:`serve` adds it to the adapter's score."""
        weight = guide.adapter.config.outfit_word_weight
        if not weight:
            return None
        words = guide.title_words()
        return np.stack([weight * words.scores(rows, candidates) for rows in contexts]).astype(np.float32)

    @staticmethod
    def _question(data: OutfitTask, example: int) -> tuple[list[int], int, list[int]]:
        partials, slots, cands = data.fitb_questions(data.valid_outfits)
        return partials[example], slots[example], cands[example].tolist()


OUTFIT = Outfit()
