"""Validated task inputs and batch tensors, shared by the task modules, the training loop and transfer.

Items are rows of a per-task text-embedding matrix; every list of items is checked once (range, type, length)
and turned into padded index matrices and float32 tensors here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["as_embeddings", "binary_labels", "check_weights", "gather", "index_array", "index_lists", "pad",
           "sample_rows"]

logger = logging.getLogger("textguide")


def check_weights(weights: Any, n: int, per: str) -> np.ndarray | None:
    """Sampling weights of a task's examples: None, or ``n`` finite numbers >= 0 with a positive sum."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be {n} finite numbers >= 0 (one per {per}), got shape {w.shape}")
    if len(w) and w.sum() <= 0:
        raise ValueError("weights sum to 0: give at least one example a positive weight")
    return w


def sample_rows(rng: np.random.Generator, n: int, size: int, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return rng.integers(n, size=size)
    return rng.choice(n, size=size, p=weights / weights.sum())


def pad(lists: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-aligned (B, L) index matrix + bool mask of the last ``max_len`` items of each list (L >= 1)."""
    width = max(1, min(max_len, max((len(x) for x in lists), default=1)))
    idx = np.zeros((len(lists), width), dtype=np.int64)
    mask = np.zeros((len(lists), width), dtype=bool)
    for row, items in enumerate(lists):
        items = items[-max_len:] if len(items) > max_len else items
        idx[row, : len(items)] = items
        mask[row, : len(items)] = True
    return idx, mask


def gather(emb: np.ndarray, idx: Any) -> torch.Tensor:
    """float32 tensor of ``emb[idx]`` (a copy when the rows are a read-only or strided view)."""
    rows = emb[idx]
    if rows.dtype != np.float32 or not rows.flags.writeable or not rows.flags.c_contiguous:
        rows = np.array(rows, dtype=np.float32, order="C")
    return torch.from_numpy(rows)


def as_embeddings(
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


def index_lists(lists: Any, n_items: int, name: str, min_len: int = 1) -> list[list[int]]:
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


def index_array(values: Any, n: int, name: str, length: int, length_name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (length,) or (length and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be {length} integers (one per {length_name} row), got shape {arr.shape}")
    if length and (arr.min() < 0 or arr.max() >= n):
        bad = int(arr[(arr < 0) | (arr >= n)][0])
        raise ValueError(f"{name} has index {bad}, out of range for {n} rows")
    return arr.astype(np.int64)


def binary_labels(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be a 1-D array of 0/1 labels")
    return arr.astype(np.float32)
