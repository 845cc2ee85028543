"""Ranking, classification, outfit and multi-task metrics in pure numpy, each written once.

Besides the metrics, two shared building blocks every task and benchmark uses: :func:`text_queries` (the
text-similarity baseline: the unit mean of a set's text embeddings) and :func:`full_ranking_ranks` (the one
full-ranking evaluation loop: score histories in chunks, rank each target with the history excluded).

Conventions shared by every function here:

* Ranked-list metrics take one ranked list of ids (strings or ints, best first) and a collection of
  relevant ids. Relevance is binary. An id repeated in the ranked list counts only at its first position
  (as in the Kaggle H&M ``apk``). An empty ranked list scores 0; an empty relevant set raises ``ValueError``
  (drop users without ground truth before evaluating).
* ``Recall@k = |top-k & relevant| / |relevant|``; ``NDCG@k`` uses gains ``1 / log2(pos + 2)`` (0-based pos) and
  the ideal DCG of ``min(|relevant|, k)`` hits; ``MAP@k`` is the Kaggle H&M definition
  ``sum_{i<=k} P@i * rel(i) / min(|relevant|, k)``; ``MRR`` is ``1 / (pos + 1)`` of the first hit (0 if none).
* Full ranking (``rank_of_target``): the 0-based rank of the target is the number of non-excluded items whose
  score is ``>=`` the target's score. Ties are broken against the target (a model that scores every item
  the same gets the worst rank, not the best). Excluded items never compete; the target never competes
  with itself, so listing it in ``exclude`` has no effect. With one target, ``Recall@k == Hit@k``,
  ``NDCG@k = 1 / log2(rank + 2)`` and ``MAP@k = MRR@k = 1 / (rank + 1)`` when ``rank < k``, else 0.
* AUC is the Mann-Whitney statistic with average ranks for ties (a tie between a positive and a negative
  counts 1/2). ``roc_auc`` raises ``ValueError`` when only one class is present (AUC is undefined);
  ``grouped_auc`` skips such groups and returns how many groups it counted.
* FITB: a question is answered correctly only if the answer's score is strictly greater than every other
  candidate's score (ties count as wrong), consistent with the full-ranking tie rule.
* Gains (``multitask_gain``, ``relative_gain``) are fractions (0.05 == +5 %), positive means better.
* Scores containing NaN raise ``ValueError`` (a diverged model should not be silently ranked).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from numbers import Integral
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "recall_at_k",
    "ndcg_at_k",
    "hit_at_k",
    "average_precision_at_k",
    "mrr",
    "ranking_report",
    "rank_of_target",
    "metrics_from_ranks",
    "full_ranking_metrics",
    "roc_auc",
    "grouped_auc",
    "precision_recall_f1",
    "best_f1_threshold",
    "log_loss",
    "accuracy",
    "fitb_accuracy",
    "recall_at_k_among",
    "multitask_gain",
    "relative_gain",
    "near_duplicate_rate",
    "mean_cosine",
    "text_queries",
    "full_ranking_ranks",
    "multi_relevant_metrics",
    "select_value",
]


# ----------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------


def _check_k(k: object, name: str = "k") -> int:
    """Return k as an int, raising ValueError unless it is a positive integer."""
    if isinstance(k, bool) or not isinstance(k, Integral):
        raise ValueError(f"{name} must be a positive integer, got {k!r} ({type(k).__name__})")
    if k <= 0:
        raise ValueError(f"{name} must be a positive integer, got {k}")
    return int(k)


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    """Return ks as a tuple of positive ints, raising ValueError if empty or invalid."""
    if isinstance(ks, Integral):
        ks = (ks,)
    out = tuple(_check_k(k, "each k in ks") for k in ks)
    if not out:
        raise ValueError("ks is empty; pass at least one cut-off, e.g. ks=(10, 50)")
    return out


def _as_relevant(relevant: Collection[Hashable]) -> frozenset:
    """Return relevant as a non-empty frozenset, rejecting a bare string."""
    if isinstance(relevant, (str, bytes)):
        raise ValueError(
            f"relevant must be a collection of ids, not a single string {relevant!r}; wrap it: {{{relevant!r}}}"
        )
    rel = frozenset(relevant)
    if not rel:
        raise ValueError("relevant is empty: ranking metrics are undefined; drop users without ground truth")
    return rel


def _hits(ranked_ids: Iterable[Hashable], relevant: frozenset, k: int | None) -> list[bool]:
    """Return per-position relevance of the top-k, counting a repeated id only at its first position."""
    if isinstance(ranked_ids, (str, bytes)):
        raise ValueError(f"ranked_ids must be a sequence of ids, not a single string {ranked_ids!r}")
    head = ranked_ids if k is None else itertools.islice(ranked_ids, k)
    seen: set = set()
    out: list[bool] = []
    for item in head:
        out.append(item in relevant and item not in seen)
        seen.add(item)
    return out


def _as_1d(x: ArrayLike, name: str) -> np.ndarray:
    """Return x as a non-empty 1-D array."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _as_scores(x: ArrayLike, name: str) -> np.ndarray:
    """Return x as a non-empty 1-D float64 array without NaN."""
    arr = _as_1d(x, name)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN at index {int(np.flatnonzero(np.isnan(arr))[0])}")
    return arr


def _as_binary(x: ArrayLike, name: str = "labels") -> np.ndarray:
    """Return x as a non-empty 1-D float64 array of 0/1 labels."""
    arr = _as_1d(x, name)
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be binary (0/1 or bool), got dtype {arr.dtype}")
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        bad = np.flatnonzero(~ok)[0]
        raise ValueError(f"{name} must be binary (0/1 or bool); found {arr[bad].item()!r} at index {int(bad)}")
    return arr.astype(np.float64)


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise ValueError unless a and b have the same length."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"shape mismatch: {name_a} has {a.shape[0]} entries but {name_b} has {b.shape[0]}")


def _as_index(x: ArrayLike, n_rows: int, n_cols: int, name: str) -> np.ndarray:
    """Return x as an int64 vector of length n_rows with values in [0, n_cols)."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise ValueError(f"shape mismatch: {name} has {arr.shape[0]} entries but scores has {n_rows} rows")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer column indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = (arr < 0) | (arr >= n_cols)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {int(arr[i])} is out of range for {n_cols} columns")
    return arr


def _as_score_matrix(x: ArrayLike, name: str = "scores") -> np.ndarray:
    """Return x as a non-empty 2-D numeric array (no copy when possible)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_rows, n_columns), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


# ----------------------------------------------------------------------------------------------------------
# ranked-list metrics (one user)
# ----------------------------------------------------------------------------------------------------------


def recall_at_k(ranked_ids: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Fraction of the relevant ids found in the top-k of ranked_ids."""
    k = _check_k(k)
    rel = _as_relevant(relevant)
    return sum(_hits(ranked_ids, rel, k)) / len(rel)


def hit_at_k(ranked_ids: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """1.0 if any relevant id is in the top-k of ranked_ids, else 0.0."""
    k = _check_k(k)
    rel = _as_relevant(relevant)
    return float(any(_hits(ranked_ids, rel, k)))


def ndcg_at_k(ranked_ids: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Binary-relevance NDCG@k: DCG of the top-k over the DCG of min(|relevant|, k) hits at the top."""
    k = _check_k(k)
    rel = _as_relevant(relevant)
    dcg = sum(1.0 / math.log2(i + 2) for i, h in enumerate(_hits(ranked_ids, rel, k)) if h)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
    return dcg / idcg


def average_precision_at_k(ranked_ids: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> float:
    """Kaggle H&M AP@k: sum over i <= k of P@i * rel(i), divided by min(|relevant|, k)."""
    k = _check_k(k)
    rel = _as_relevant(relevant)
    total, n_hits = 0.0, 0
    for i, h in enumerate(_hits(ranked_ids, rel, k)):
        if h:
            n_hits += 1
            total += n_hits / (i + 1)
    return total / min(len(rel), k)


def mrr(ranked_ids: Sequence[Hashable], relevant: Collection[Hashable], k: int | None = None) -> float:
    """Reciprocal rank 1/(pos+1) of the first relevant id (within the top-k if k is given), else 0.0."""
    if k is not None:
        k = _check_k(k)
    rel = _as_relevant(relevant)
    for i, h in enumerate(_hits(ranked_ids, rel, k)):
        if h:
            return 1.0 / (i + 1)
    return 0.0


def ranking_report(
    ranked_lists: Sequence[Sequence[Hashable]],
    relevant_sets: Sequence[Collection[Hashable]],
    ks: Iterable[int] = (10, 50),
) -> dict[str, float]:
    """Mean Recall@k, NDCG@k, Hit@k, MAP@k (for each k) and MRR over users, keyed like "NDCG@10"."""
    ks = _check_ks(ks)
    if len(ranked_lists) != len(relevant_sets):
        raise ValueError(
            f"shape mismatch: {len(ranked_lists)} ranked lists but {len(relevant_sets)} relevant sets"
        )
    if len(ranked_lists) == 0:
        raise ValueError("ranked_lists is empty; pass one ranked list per user")
    sums: dict[str, float] = {}
    for k in ks:
        for name in ("Recall", "NDCG", "Hit", "MAP"):
            sums[f"{name}@{k}"] = 0.0
    sums["MRR"] = 0.0
    for user, (ranked, relevant) in enumerate(zip(ranked_lists, relevant_sets)):
        try:
            rel = _as_relevant(relevant)
        except ValueError as err:
            raise ValueError(f"user {user}: {err}") from None
        ranked = list(ranked)
        for k in ks:
            sums[f"Recall@{k}"] += recall_at_k(ranked, rel, k)
            sums[f"NDCG@{k}"] += ndcg_at_k(ranked, rel, k)
            sums[f"Hit@{k}"] += hit_at_k(ranked, rel, k)
            sums[f"MAP@{k}"] += average_precision_at_k(ranked, rel, k)
        sums["MRR"] += mrr(ranked, rel)
    n = len(ranked_lists)
    return {key: value / n for key, value in sums.items()}


# ----------------------------------------------------------------------------------------------------------
# full ranking over a score matrix (leave-one-out)
# ----------------------------------------------------------------------------------------------------------


def _exclude_csr(
    exclude: Sequence[Iterable[int]] | None, n_users: int, n_items: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Return exclude as (indptr, cols) CSR arrays after checking lengths and ranges."""
    if exclude is None:
        return None
    if len(exclude) != n_users:
        raise ValueError(f"shape mismatch: exclude has {len(exclude)} lists but scores has {n_users} rows")
    lengths = np.zeros(n_users + 1, dtype=np.int64)
    parts: list[np.ndarray] = []
    for user, items in enumerate(exclude):
        arr = items if isinstance(items, np.ndarray) else np.asarray(list(items) if items is not None else [])
        if arr.ndim != 1:
            raise ValueError(f"exclude[{user}] must be a flat list of item indices, got shape {arr.shape}")
        if arr.size == 0:
            continue
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"exclude[{user}] must hold integer item indices, got dtype {arr.dtype}")
        if arr.min() < 0 or arr.max() >= n_items:
            bad = arr[(arr < 0) | (arr >= n_items)][0]
            raise ValueError(f"exclude[{user}] contains item {int(bad)}, out of range for {n_items} items")
        lengths[user + 1] = arr.size
        parts.append(arr.astype(np.int64, copy=False))
    indptr = np.cumsum(lengths)
    cols = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return indptr, cols


def rank_of_target(
    scores: ArrayLike,
    targets: ArrayLike,
    exclude: Sequence[Iterable[int]] | None = None,
    *,
    batch_size: int = 1024,
) -> np.ndarray:
    """0-based rank of each user's target among non-excluded items (ties count against the target)."""
    scores = _as_score_matrix(scores)
    n_users, n_items = scores.shape
    targets = _as_index(targets, n_users, n_items, "targets")
    batch_size = _check_k(batch_size, "batch_size")
    csr = _exclude_csr(exclude, n_users, n_items)
    ranks = np.empty(n_users, dtype=np.int64)
    for start in range(0, n_users, batch_size):
        stop = min(start + batch_size, n_users)
        chunk = scores[start:stop]
        nan_rows = np.isnan(chunk).any(axis=1) if chunk.dtype.kind == "f" else None
        if nan_rows is not None and nan_rows.any():
            raise ValueError(f"scores contains NaN in row {start + int(np.flatnonzero(nan_rows)[0])}")
        rows = np.arange(stop - start)
        tgt = chunk[rows, targets[start:stop]]
        beats = chunk >= tgt[:, None]  # (batch, items) bool: the only O(batch x items) temporary
        if csr is not None:
            indptr, cols = csr
            lo, hi = indptr[start], indptr[stop]
            if hi > lo:
                ex_rows = np.repeat(rows, np.diff(indptr[start : stop + 1]))
                beats[ex_rows, cols[lo:hi]] = False
        beats[rows, targets[start:stop]] = False  # the target never competes with itself
        ranks[start:stop] = beats.sum(axis=1)
    return ranks


def metrics_from_ranks(ranks: ArrayLike, ks: Iterable[int] = (10, 50)) -> dict[str, float]:
    """Single-target Recall@k, NDCG@k, Hit@k, MAP@k and MRR averaged over 0-based target ranks."""
    ks = _check_ks(ks)
    r = _as_1d(ranks, "ranks")
    if not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"ranks must be integers (0-based), got dtype {r.dtype}")
    if (r < 0).any():
        raise ValueError(f"ranks must be >= 0 (0-based), found {int(r.min())}")
    r = r.astype(np.float64)
    out: dict[str, float] = {}
    for k in ks:
        inside = r < k
        out[f"Recall@{k}"] = float(inside.mean())
        out[f"NDCG@{k}"] = float(np.where(inside, 1.0 / np.log2(r + 2.0), 0.0).mean())
        out[f"Hit@{k}"] = out[f"Recall@{k}"]
        out[f"MAP@{k}"] = float(np.where(inside, 1.0 / (r + 1.0), 0.0).mean())
    out["MRR"] = float((1.0 / (r + 1.0)).mean())
    return out


def full_ranking_metrics(
    scores: ArrayLike,
    targets: ArrayLike,
    exclude: Sequence[Iterable[int]] | None = None,
    ks: Iterable[int] = (10, 50),
    *,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Leave-one-out metrics (keys as in ranking_report) from a (users, items) score matrix."""
    ks = _check_ks(ks)
    return metrics_from_ranks(rank_of_target(scores, targets, exclude, batch_size=batch_size), ks)


# ----------------------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------------------


def _auc_by_group(
    labels: np.ndarray, scores: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group Mann-Whitney AUC with average tie ranks, plus positive and negative counts."""
    n = labels.shape[0]
    order = np.lexsort((scores, codes))  # by group, then by score
    g, s, y = codes[order], scores[order], labels[order]
    pos = np.arange(n)
    group_start = np.r_[True, g[1:] != g[:-1]]
    run_start = group_start | np.r_[True, s[1:] != s[:-1]]
    group_first = pos[group_start][np.cumsum(group_start) - 1]
    run_first = pos[run_start]
    run_last = np.r_[run_first[1:] - 1, n - 1]
    avg_pos = ((run_first + run_last) / 2.0)[np.cumsum(run_start) - 1]
    rank_in_group = avg_pos - group_first + 1.0  # 1-based average rank within the group
    n_pos = np.bincount(g, weights=y, minlength=n_groups)
    n_neg = np.bincount(g, minlength=n_groups) - n_pos
    rank_sum = np.bincount(g, weights=rank_in_group * y, minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return auc, n_pos, n_neg


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """ROC AUC via the Mann-Whitney U statistic (ties: average ranks); raises if only one class is present."""
    y = _as_binary(labels)
    s = _as_scores(scores, "scores")
    _same_length(y, s, "labels", "scores")
    auc, n_pos, n_neg = _auc_by_group(y, s, np.zeros(y.shape[0], dtype=np.int64), 1)
    if n_pos[0] == 0 or n_neg[0] == 0:
        raise ValueError(
            f"roc_auc is undefined with one class ({int(n_pos[0])} positives, {int(n_neg[0])} negatives); "
            "use grouped_auc to skip such groups"
        )
    return float(auc[0])


def grouped_auc(
    labels: ArrayLike,
    scores: ArrayLike,
    groups: ArrayLike,
    *,
    weight: Literal["uniform", "size"] = "uniform",
) -> tuple[float, int]:
    """Mean per-group AUC over groups with both classes (uniform or size-weighted) and how many counted."""
    y = _as_binary(labels)
    s = _as_scores(scores, "scores")
    gr = _as_1d(groups, "groups")
    _same_length(y, s, "labels", "scores")
    _same_length(y, gr, "labels", "groups")
    if weight not in ("uniform", "size"):
        raise ValueError(f"weight must be 'uniform' or 'size', got {weight!r}")
    uniq, codes = np.unique(gr, return_inverse=True)
    auc, n_pos, n_neg = _auc_by_group(y, s, codes.reshape(-1).astype(np.int64), uniq.shape[0])
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        raise ValueError(
            f"grouped_auc: none of the {uniq.shape[0]} groups has both positive and negative labels"
        )
    w = np.ones(int(valid.sum())) if weight == "uniform" else (n_pos + n_neg)[valid]
    return float(np.average(auc[valid], weights=w)), int(valid.sum())


def precision_recall_f1(labels: ArrayLike, probs: ArrayLike, threshold: float = 0.5) -> tuple[float, float, float]:
    """Precision, recall and F1 of predicting positive when prob >= threshold (0/0 counts as 0.0)."""
    y = _as_binary(labels)
    p = _as_scores(probs, "probs")
    _same_length(y, p, "labels", "probs")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    pred = p >= threshold
    tp = float((pred & (y == 1)).sum())
    n_pred, n_pos = float(pred.sum()), float(y.sum())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_pos if n_pos else 0.0
    f1 = 2 * tp / (n_pred + n_pos) if (n_pred + n_pos) else 0.0
    return precision, recall, f1


def best_f1_threshold(labels: ArrayLike, probs: ArrayLike) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of prob >= threshold over observed probs; ties pick the highest threshold."""
    y = _as_binary(labels)
    p = _as_scores(probs, "probs")
    _same_length(y, p, "labels", "probs")
    n_pos = y.sum()
    if n_pos == 0:
        raise ValueError("best_f1_threshold: labels contain no positive, so F1 is 0 at every threshold")
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    tp = np.cumsum(y)
    n_pred = np.arange(1, p.shape[0] + 1)
    last_of_tie = np.r_[p[1:] != p[:-1], True]  # a threshold at p[i] predicts every prob >= p[i]
    f1 = (2.0 * tp / (n_pred + n_pos))[last_of_tie]
    best = int(np.argmax(f1))
    return float(p[last_of_tie][best]), float(f1[best])


def log_loss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy with probs clipped to [eps, 1 - eps]."""
    y = _as_binary(labels)
    p = _as_scores(probs, "probs")
    _same_length(y, p, "labels", "probs")
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    if (p < 0).any() or (p > 1).any():
        i = int(np.flatnonzero((p < 0) | (p > 1))[0])
        raise ValueError(f"probs must lie in [0, 1]; probs[{i}] = {p[i]} (apply a sigmoid to logits first)")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)).mean())


def accuracy(labels: ArrayLike, preds: ArrayLike) -> float:
    """Fraction of positions where preds equals labels (any class labels)."""
    y = _as_1d(labels, "labels")
    p = _as_1d(preds, "preds")
    _same_length(y, p, "labels", "preds")
    return float((y == p).mean())


# ----------------------------------------------------------------------------------------------------------
# outfits: fill-in-the-blank and diversity
# ----------------------------------------------------------------------------------------------------------


def recall_at_k_among(candidate_scores: ArrayLike, answer_index: ArrayLike, k: int) -> float:
    """Fraction of questions whose answer ranks in the top-k of its candidates (ties count against it)."""
    k = _check_k(k)
    cs = _as_score_matrix(candidate_scores, "candidate_scores")
    if cs.shape[1] < 2:
        raise ValueError(f"candidate_scores needs at least 2 candidates per question, got {cs.shape[1]}")
    ranks = rank_of_target(cs, _as_index(answer_index, cs.shape[0], cs.shape[1], "answer_index"))
    return float((ranks < k).mean())


def fitb_accuracy(candidate_scores: ArrayLike, answer_index: ArrayLike) -> float:
    """Fill-in-the-blank accuracy: the answer must score strictly above every other candidate."""
    return recall_at_k_among(candidate_scores, answer_index, 1)


def _pair_cosines(query_vecs: ArrayLike, result_vecs: ArrayLike) -> np.ndarray:
    """Cosine between each query (n, d) and each of its results (n, k, d) or (n, d); returns (n, k)."""
    q = np.asarray(query_vecs, dtype=np.float64)
    r = np.asarray(result_vecs, dtype=np.float64)
    if q.ndim != 2:
        raise ValueError(f"query_vecs must be 2-D (n, dim), got shape {q.shape}")
    if r.ndim == 2:
        r = r[:, None, :]
    if r.ndim != 3:
        raise ValueError(f"result_vecs must be (n, k, dim) or (n, dim), got shape {np.shape(result_vecs)}")
    if q.shape[0] == 0 or r.shape[1] == 0:
        raise ValueError(f"empty input: query_vecs {q.shape}, result_vecs {np.shape(result_vecs)}")
    if r.shape[0] != q.shape[0]:
        raise ValueError(f"shape mismatch: {q.shape[0]} queries but result_vecs has {r.shape[0]} rows")
    if r.shape[2] != q.shape[1]:
        raise ValueError(f"vector dim mismatch: query_vecs has dim {q.shape[1]}, result_vecs has {r.shape[2]}")
    if not (np.isfinite(q).all() and np.isfinite(r).all()):
        raise ValueError("query_vecs and result_vecs must be finite (found NaN or inf)")
    qn = np.linalg.norm(q, axis=1)
    rn = np.linalg.norm(r, axis=2)
    if (qn == 0).any() or (rn == 0).any():
        raise ValueError("cosine is undefined for a zero vector; drop or fix zero embeddings")
    return np.einsum("nd,nkd->nk", q, r) / (qn[:, None] * rn)


def near_duplicate_rate(query_vecs: ArrayLike, result_vecs: ArrayLike, threshold: float = 0.9) -> float:
    """Fraction of returned items whose cosine to their query item is strictly greater than threshold."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine and must be in [-1, 1], got {threshold}")
    return float((_pair_cosines(query_vecs, result_vecs) > threshold).mean())


def mean_cosine(query_vecs: ArrayLike, result_vecs: ArrayLike) -> float:
    """Mean cosine between each query item and each of its returned items."""
    return float(_pair_cosines(query_vecs, result_vecs).mean())


# ----------------------------------------------------------------------------------------------------------
# multi-task and transfer gain
# ----------------------------------------------------------------------------------------------------------


def _check_lower(lower_is_better: Collection[str], known: set[str]) -> frozenset[str]:
    """Return lower_is_better as a frozenset, rejecting a bare string and names that match no metric."""
    if isinstance(lower_is_better, str):
        raise ValueError(f"lower_is_better must be a set of metric names; wrap it: {{{lower_is_better!r}}}")
    lower = frozenset(lower_is_better)
    unknown = sorted(lower - known)
    if unknown:
        raise ValueError(f"lower_is_better names unknown metrics {unknown}; known metrics: {sorted(known)}")
    return lower


def _gain(new: float, base: float, lower: bool, where: str) -> float:
    """Relative change (new - base) / |base|, negated when lower is better."""
    new, base = float(new), float(base)
    if not (math.isfinite(new) and math.isfinite(base)):
        raise ValueError(f"{where}: values must be finite, got new={new}, base={base}")
    if base == 0.0:
        raise ValueError(f"{where}: baseline is 0, relative gain is undefined; report the absolute difference")
    g = (new - base) / abs(base)
    return -g if lower else g


def _check_same_keys(a: Mapping, b: Mapping, name_a: str, name_b: str, what: str) -> None:
    """Raise ValueError naming the keys present in only one of a and b."""
    if set(a) != set(b):
        raise ValueError(
            f"{what} differ: only in {name_a}: {sorted(map(str, set(a) - set(b)))}, "
            f"only in {name_b}: {sorted(map(str, set(b) - set(a)))}"
        )


def multitask_gain(
    multi: Mapping[str, Mapping[str, float]],
    single: Mapping[str, Mapping[str, float]],
    lower_is_better: Collection[str] = frozenset(),
    *,
    average: Literal["task", "metric"] = "task",
) -> float:
    """Delta_m: mean relative gain of multi over single-task baselines (per-task mean, then over tasks)."""
    if average not in ("task", "metric"):
        raise ValueError(f"average must be 'task' (LibMTL) or 'metric' (flat mean), got {average!r}")
    if not single:
        raise ValueError("single is empty; pass {task: {metric: value}} for at least one task")
    _check_same_keys(multi, single, "multi", "single", "tasks")
    known = {m for metrics in single.values() for m in metrics}
    lower = _check_lower(lower_is_better, known)
    per_task: list[list[float]] = []
    for task, base_metrics in single.items():
        if not base_metrics:
            raise ValueError(f"task {task!r} has no metrics in single")
        _check_same_keys(multi[task], base_metrics, "multi", "single", f"metrics of task {task!r}")
        per_task.append(
            [_gain(multi[task][m], v, m in lower, f"task {task!r} metric {m!r}") for m, v in base_metrics.items()]
        )
    if average == "task":
        return float(np.mean([np.mean(g) for g in per_task]))
    return float(np.mean([x for g in per_task for x in g]))


def relative_gain(
    new: Mapping[str, float], base: Mapping[str, float], lower_is_better: Collection[str] = frozenset()
) -> dict[str, float]:
    """Per-metric relative change (new - base) / |base|, sign-flipped for lower-is-better metrics."""
    if not base:
        raise ValueError("base is empty; pass {metric: value}")
    _check_same_keys(new, base, "new", "base", "metrics")
    lower = _check_lower(lower_is_better, set(base))
    return {m: _gain(new[m], v, m in lower, f"metric {m!r}") for m, v in base.items()}


# ----------------------------------------------------------------------------------------------------------
# shared by every task: the text-similarity baseline and the full-ranking loop
# ----------------------------------------------------------------------------------------------------------


def text_queries(emb: np.ndarray, sets: Sequence[Sequence[int]]) -> np.ndarray:
    """The text-similarity baseline's query per set of item rows: the unit-length mean of their embeddings
    (float32 (len(sets), D); an empty set gives a zero row). Inner products with unit item embeddings are
    cosines."""
    emb = np.asarray(emb)
    if not len(sets):
        return np.zeros((0, emb.shape[1]), dtype=np.float32)
    q = np.stack([emb[list(s)].mean(0) if len(s) else np.zeros(emb.shape[1], emb.dtype) for s in sets])
    q = q.astype(np.float32, copy=False)
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def full_ranking_ranks(
    scorer: Callable[[list[list[int]]], np.ndarray],
    histories: Sequence[Sequence[int]],
    targets: ArrayLike,
    chunk: int = 512,
    exclude: Sequence[Iterable[int]] | None = None,
) -> np.ndarray:
    """0-based rank of each target among all items (:func:`rank_of_target`), with ``scorer(histories) ->
    (n, items)`` called on ``chunk`` histories at a time; each history's own items are excluded (or those of
    ``exclude``, one list per history, when the scored columns are not the history's item rows)."""
    targets = np.asarray(targets)
    if len(histories) != len(targets):
        raise ValueError(f"{len(histories)} histories but {len(targets)} targets; give one target per history")
    if exclude is not None and len(exclude) != len(histories):
        raise ValueError(f"{len(exclude)} exclude lists but {len(histories)} histories; give one per history")
    chunk = _check_k(chunk, "chunk")
    skip = histories if exclude is None else exclude
    ranks = [rank_of_target(scorer(list(histories[s:s + chunk])), targets[s:s + chunk], skip[s:s + chunk])
             for s in range(0, len(histories), chunk)]
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


def multi_relevant_metrics(ranks: Sequence[ArrayLike], ks: Iterable[int]) -> dict[str, float]:
    """Recall@k, NDCG@k and MAP@k (Kaggle H&M definition) averaged over users, from each user's 0-based ranks
    of their relevant items (every relevant item ranked on its own, the others excluded or not as the caller
    ranked them). With one relevant item per user these equal :func:`metrics_from_ranks`."""
    ks = _check_ks(ks)
    if not len(ranks):
        raise ValueError("no users to average over; give at least one user's ranks")
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("Recall", "NDCG", "MAP")}
    for r in ranks:
        rk = np.sort(np.asarray(r))
        if not len(rk):
            raise ValueError("a user has no relevant items; drop users without ground truth first")
        for k in ks:
            inside = rk < k
            sums[f"Recall@{k}"] += inside.sum() / len(rk)
            idcg = (1.0 / np.log2(np.arange(min(len(rk), k)) + 2)).sum()
            sums[f"NDCG@{k}"] += (1.0 / np.log2(rk[inside] + 2)).sum() / idcg
            # other relevant items rank ahead of this one: precision at its position = hits so far / (rank + 1)
            sums[f"MAP@{k}"] += (np.arange(1, inside.sum() + 1) / (rk[inside] + 1)).sum() / min(len(rk), k)
    return {key: v / len(ranks) for key, v in sums.items()}


def select_value(metrics: Mapping[str, float], name: str) -> float:
    """``metrics[name]`` with an error that lists what is there (the one lookup of a selection metric)."""
    if name not in metrics:
        raise KeyError(f"selection metric {name!r} is not among the computed metrics {sorted(metrics)}")
    return float(metrics[name])
