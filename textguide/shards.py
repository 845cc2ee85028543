"""ShardedIndex: one FAISS index per shard under one global row space; queries fan out and merge.

A sharded guide is a guide directory whose ``index`` section lists its shards: each shard is a sub-directory
``shards/NNNNN`` holding the files of an :class:`~textguide.index.ItemIndex` (``index.faiss``, ``embeddings.npy``,
``deleted.npy``, ``items.parquet``) for a contiguous range of rows, and the manifest records each shard's rows,
factory and file checksums. Loaded, it behaves like an ``ItemIndex``: global row numbers, ids, metadata, filters,
tombstones and appends work as in the single index (new items go to the last shard), and a FAISS search runs on
every shard (in threads for small query batches) and merges the per-shard top-k by score.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import faiss
import numpy as np
import pandas as pd

from .index import INDEX_FILES, SMALL_BATCH, IndexConfig, ItemIndex, as_matrix, search_faiss
from .storage import ArtifactError, Snapshot, check_relpath, sha256_file

logger = logging.getLogger("textguide")

#: The sub-directory holding the shards.
SHARDS_DIR = "shards"
_SHARD_PATH = re.compile(r"shards/\d{5}")
_POOL: ThreadPoolExecutor | None = None


def shard_path(s: int) -> str:
    """The relative directory of shard ``s`` inside a guide."""
    return f"{SHARDS_DIR}/{s:05d}"


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="textguide-shard")
    return _POOL


def shard_entry(directory: Path, rel: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest entry of one written shard: its path, its ``ItemIndex`` section and its files' SHA-256."""
    files = {name: sha256_file(directory / rel / name) for name in INDEX_FILES}
    return {"path": rel, **{k: section[k] for k in ("factory", "type", "rows", "count")}, "sha256": files}


def sharded_section(entries: Sequence[Mapping[str, Any]], dim: int, config: IndexConfig) -> dict[str, Any]:
    """The manifest's ``index`` section of a sharded index made of ``entries`` (see :func:`shard_entry`)."""
    factories = list(dict.fromkeys(e["factory"] for e in entries))
    return {
        "factory": "+".join(factories),
        "type": "ShardedIndex",
        "dim": dim,
        "metric": "inner_product",
        "rows": int(sum(e["rows"] for e in entries)),
        "count": int(sum(e["count"] for e in entries)),
        "config": asdict(config),
        "shards": [dict(e) for e in entries],
    }


class ShardedIndex(ItemIndex):
    """An :class:`ItemIndex` whose FAISS part is split into shards of contiguous rows.

    Everything but the FAISS search (ids, metadata, stored vectors, filters, tombstones, brute force
    under selective filters) is the single index's code on the global rows. Shards other than the
    last are never modified after they are built, so :meth:`copy` shares them.
    """

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        super().__init__(dim, config)
        self.shards: list[faiss.Index] = []
        self.shard_factories: list[str] = []
        self.bounds: list[int] = [0]  # shard s holds rows bounds[s] .. bounds[s+1]-1

    @property
    def num_shards(self) -> int:
        """How many shards."""
        return len(self.shards)

    # ------------------------------------------------------------------ build
    @classmethod
    def build(  # type: ignore[override]
        cls,
        embeddings: np.ndarray,
        ids: Sequence[str],
        metadata: pd.DataFrame | None = None,
        config: IndexConfig | None = None,
        *,
        shards: int = 2,
    ) -> "ShardedIndex":
        """Index ``embeddings`` in ``shards`` contiguous, near-equal shards (each with the factory
        ``config`` picks for the shard's size)."""
        x = as_matrix(embeddings, None, "embeddings")
        if isinstance(shards, bool) or not isinstance(shards, int) or shards <= 0:
            raise ValueError(f"shards must be a positive integer, got {shards!r}")
        if len(x) == 0:
            raise ValueError("cannot build an index from zero items")
        ids = list(ids)
        ItemIndex._check_new(x, ids, metadata)
        meta = metadata.reset_index(drop=True) if metadata is not None else None
        cuts = np.linspace(0, len(x), min(shards, len(x)) + 1).round().astype(int)
        parts = [ItemIndex.build(x[a:b], ids[a:b], None if meta is None else meta.iloc[a:b], config)
                 for a, b in zip(cuts[:-1], cuts[1:])]
        return cls.from_parts(parts, config)

    @classmethod
    def from_parts(cls, parts: Sequence[ItemIndex], config: IndexConfig | None = None) -> "ShardedIndex":
        """One sharded index over ``parts`` (their rows in order; their FAISS indexes become the shards)."""
        if not parts:
            raise ValueError("a sharded index needs at least one shard")
        dims = {p.dim for p in parts}
        if len(dims) != 1:
            raise ValueError(f"shards have different dimensions {sorted(dims)}; build every shard with one encoder")
        index = cls(parts[0].dim, config or parts[0].config)
        index.shards = [p.faiss_index for p in parts]
        index.shard_factories = [p.factory for p in parts]
        index.bounds = np.cumsum([0] + [len(p.ids) for p in parts]).tolist()
        index.ids = [i for p in parts for i in p.ids]
        index.embeddings = np.concatenate([p.embeddings for p in parts]) if len(parts) > 1 else parts[0].embeddings
        index.deleted = np.concatenate([p.deleted for p in parts])
        index.metadata = pd.concat([p.metadata for p in parts], ignore_index=True) if len(parts) > 1 \
            else parts[0].metadata
        index.row_of = {}
        for r, i in enumerate(index.ids):  # later rows win: a re-added id maps to its newest row
            if not index.deleted[r] or i not in index.row_of:
                index.row_of[i] = r
        index._set_factory()
        return index

    def _set_factory(self) -> None:
        self.factory = "+".join(dict.fromkeys(self.shard_factories))

    def _faiss_add(self, x: np.ndarray) -> None:
        self.shards[-1].add(x)
        self.bounds[-1] += len(x)

    def copy(self) -> "ShardedIndex":
        """An independent copy; only the last shard (the one appends change) is cloned."""
        new = self._copy_items(ShardedIndex(self.dim, self.config))
        new.shards = self.shards[:-1] + [faiss.clone_index(self.shards[-1])]
        new.shard_factories = list(self.shard_factories)
        new.bounds = list(self.bounds)
        new._set_factory()
        return new

    # ------------------------------------------------------------------ search
    def _faiss_search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        jobs = []
        for s, fi in enumerate(self.shards):
            lo, hi = self.bounds[s], self.bounds[s + 1]
            sub = None if allowed is None else allowed[lo:hi]
            if hi == lo or (sub is not None and not sub.any()):
                continue
            jobs.append((s, lo, min(k, hi - lo), sub))

        def one(job: tuple[int, int, int, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
            s, lo, kk, sub = job
            scores, rows = search_faiss(self.shards[s], self.shard_factories[s], self.config, q, kk, sub)
            return scores, np.where(rows >= 0, rows + lo, -1)

        if len(jobs) > 1 and len(q) < SMALL_BATCH:  # a few queries: one shard per thread (FAISS drops the GIL)
            results = list(_pool().map(one, jobs))
        else:  # many queries: FAISS parallelises each shard's search over the queries
            results = [one(j) for j in jobs]
        return merge_topk([r[0] for r in results], [r[1] for r in results], k, len(q))

    # ------------------------------------------------------------------ persistence
    def write(self, directory: Path) -> dict[str, Any]:
        """Write every shard's files under ``directory/shards``; returns the manifest's index section."""
        entries = []
        for s, fi in enumerate(self.shards):
            lo, hi = self.bounds[s], self.bounds[s + 1]
            part = ItemIndex(self.dim, self.config)
            part.faiss_index, part.factory = fi, self.shard_factories[s]
            part.ids = self.ids[lo:hi]
            part.embeddings, part.deleted = self.embeddings[lo:hi], self.deleted[lo:hi]
            part.metadata = self.metadata.iloc[lo:hi].reset_index(drop=True)
            rel = shard_path(s)
            (directory / rel).mkdir(parents=True)
            entries.append(shard_entry(directory, rel, part.write(directory / rel)))
        return sharded_section(entries, self.dim, self.config)

    @classmethod
    def read(cls, directory: Path, section: Mapping[str, Any], snapshot: Any = None) -> "ShardedIndex":
        """Read a sharded index written by :meth:`write` or by the distributed build; every shard's files
        must be listed in the manifest with the checksums its shard entry records."""
        directory = Path(directory)
        if snapshot is None:
            files = {p.relative_to(directory).as_posix(): p.read_bytes()
                     for p in sorted((directory / SHARDS_DIR).rglob("*")) if p.is_file()}
            snapshot = Snapshot(directory, {}, files, "rebuild it with `textguide build-index`")
        hint = snapshot.rebuild_hint
        where = f"{snapshot.directory / 'manifest.json'}: 'index'"
        entries = section.get("shards")
        if not isinstance(entries, list) or not entries or not all(isinstance(e, Mapping) for e in entries):
            raise ArtifactError(f"{where}.shards must be a non-empty list of shard objects, found {entries!r:.80}; "
                                f"{hint}")
        listed = snapshot.manifest.get("files", {}) if isinstance(snapshot.manifest, Mapping) else {}
        parts = []
        for s, entry in enumerate(entries):
            rel = entry.get("path")
            if not isinstance(rel, str) or not _SHARD_PATH.fullmatch(check_relpath(rel, where)):
                raise ArtifactError(f"{where}.shards[{s}].path must be '{shard_path(s)}'-like, found {rel!r}; {hint}")
            digests = entry.get("sha256")
            if not isinstance(digests, Mapping) or sorted(digests) != sorted(INDEX_FILES):
                raise ArtifactError(f"{where}.shards[{s}].sha256 must give the checksum of each of {list(INDEX_FILES)}, "
                                    f"found {digests!r:.80}; {hint}")
            for name, digest in digests.items():
                info = listed.get(f"{rel}/{name}")
                if listed and (not isinstance(info, Mapping) or info.get("sha256") != digest):
                    raise ArtifactError(f"{snapshot.directory / rel / name}: the shard entry's checksum "
                                        f"{str(digest)[:12]}... is not the one 'files' lists; the manifest is damaged: "
                                        f"{hint}")
            sub = Snapshot(snapshot.directory / rel, {}, {n: snapshot.files[f"{rel}/{n}"] for n in INDEX_FILES
                                                          if f"{rel}/{n}" in snapshot.files}, hint)
            part_section = {"dim": section.get("dim"), "factory": entry.get("factory"),
                            "config": section.get("config", {})}
            part = ItemIndex.read(snapshot.directory / rel, part_section, sub)
            if entry.get("rows") != len(part.ids):
                raise ArtifactError(f"{snapshot.directory / rel}: the manifest says {entry.get('rows')!r} rows, the "
                                    f"shard holds {len(part.ids)}; {hint}")
            parts.append(part)
        index = cls.from_parts(parts, parts[0].config)
        if section.get("rows") != len(index.ids):
            raise ArtifactError(f"{where}: says {section.get('rows')!r} rows, the shards hold {len(index.ids)}; {hint}")
        return index


def merge_topk(scores: Sequence[np.ndarray], rows: Sequence[np.ndarray], k: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists (global row labels, -1 for none) into the top-``k`` of all:
    ``(scores (m, k), rows (m, k))`` by descending score, ties by row; missing slots are (-inf, -1)."""
    if not scores:
        return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
    s = np.concatenate(scores, axis=1).astype(np.float32, copy=False)
    r = np.concatenate(rows, axis=1).astype(np.int64, copy=False)
    s = np.where(r >= 0, s, -np.inf)
    if s.shape[1] < k:
        pad = k - s.shape[1]
        s = np.concatenate([s, np.full((m, pad), -np.inf, np.float32)], axis=1)
        r = np.concatenate([r, np.full((m, pad), -1, np.int64)], axis=1)
    key = np.where(r >= 0, r, np.iinfo(np.int64).max)
    order = np.lexsort((key, -s), axis=-1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
