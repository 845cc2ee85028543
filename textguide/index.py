"""ItemIndex: a FAISS index over item text embeddings, with string ids, metadata, filters and a manifest.

Rows are append-only: an item's internal label is its row number, new items go at the end (the
LightFM idea: old labels never move), removed items become tombstones that searches skip. The
index type is chosen by size (exact inner product below ``exact_max_items``, HNSW above) or set with
a FAISS factory string. Vectors are L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import faiss
import numpy as np
import pandas as pd

logger = logging.getLogger("textguide")

#: Query batches smaller than this run FAISS on one OpenMP thread.
SMALL_BATCH = 16

#: A filter: metadata field -> wanted value, or a list of accepted values.
Where = Mapping[str, Any]


@dataclass
class IndexConfig:
    """How to index. ``factory=None`` picks by size: ``Flat`` up to ``exact_max_items``, else ``HNSW{hnsw_m}``."""

    factory: str | None = None
    exact_max_items: int = 50_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nprobe: int = 32
    brute_force_max: int = 20_000

    def choose(self, n: int) -> str:
        """The FAISS factory string for ``n`` items."""
        if self.factory:
            return self.factory
        return "Flat" if n <= self.exact_max_items else f"HNSW{self.hnsw_m},Flat"


def as_matrix(vectors: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    """``vectors`` as a float32 (n, dim) matrix (one vector becomes one row); ValueError naming ``what`` otherwise."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, dim), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what} have wrong dimension: expected {dim}, got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return np.ascontiguousarray(x)


class ItemIndex:
    """Nearest-neighbour search over items by inner product, with string ids and metadata filters."""

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        self.dim = dim
        self.config = config or IndexConfig()
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.embeddings = np.zeros((0, dim), np.float32)
        self.metadata = pd.DataFrame({"id": pd.Series([], dtype=str)})
        self.deleted = np.zeros(0, dtype=bool)
        self.factory = ""
        self.faiss_index: faiss.Index | None = None

    @property
    def metadata(self) -> pd.DataFrame:
        """Item metadata, one row per index row (removed rows included), with an ``id`` column."""
        return self._metadata

    @metadata.setter
    def metadata(self, frame: pd.DataFrame) -> None:
        self._metadata = frame
        self._columns: dict[str, np.ndarray] | None = None  # per-column object arrays, built on first use
        self._records: dict[int, tuple] = {}  # row -> its cleaned values in column order, filled on first use

    # ------------------------------------------------------------------ build / mutate
    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        ids: Sequence[str],
        metadata: pd.DataFrame | None = None,
        config: IndexConfig | None = None,
    ) -> "ItemIndex":
        """Index ``embeddings`` (n, dim) under ``ids``; ``metadata`` rows align with ``ids``."""
        x = as_matrix(embeddings, None, "embeddings")
        if len(x) == 0:
            raise ValueError("cannot build an index from zero items")
        index = cls(x.shape[1], config)
        index.factory = index.config.choose(len(x))
        index.faiss_index = index._new_faiss(x)
        index._append(x, list(ids), metadata)
        return index

    def _new_faiss(self, train: np.ndarray) -> faiss.Index:
        try:
            fi = faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:  # FAISS reports a bad factory string as a C++ RuntimeError
            raise ValueError(
                f"cannot make a FAISS index from factory string {self.factory!r} for dimension {self.dim} "
                f"({str(e).rsplit(': ', 1)[-1].strip()}); use e.g. 'Flat', 'HNSW32,Flat' or 'IVF256,Flat'"
            ) from e
        if hasattr(fi, "hnsw"):
            fi.hnsw.efConstruction = self.config.ef_construction
            fi.hnsw.efSearch = self.config.ef_search
        if not fi.is_trained:
            logger.info("training %s on %d vectors", self.factory, len(train))
            try:
                fi.train(train)
            except RuntimeError as e:
                raise ValueError(
                    f"cannot train FAISS index {self.factory!r} on {len(train)} vectors "
                    f"({str(e).rsplit(': ', 1)[-1].strip()}); use fewer lists/centroids, or 'Flat' for small catalogs"
                ) from e
        return fi

    def _append(self, x: np.ndarray, ids: list[str], metadata: pd.DataFrame | None) -> None:
        metadata = self._check_new(x, ids, metadata)
        start = len(self.ids)
        self._faiss_add(x)  # labels are row numbers: start .. start+n-1
        self.embeddings = np.concatenate([self.embeddings, x]) if start else x
        self.ids.extend(ids)
        self.row_of.update({i: start + j for j, i in enumerate(ids)})
        self.metadata = pd.concat([self.metadata, metadata], ignore_index=True) if start else metadata
        self.deleted = np.concatenate([self.deleted, np.zeros(len(ids), bool)])

    def _faiss_add(self, x: np.ndarray) -> None:
        """Add rows to the FAISS index (a sharded index adds them to its last shard)."""
        self.faiss_index.add(x)

    @staticmethod
    def _check_new(x: np.ndarray, ids: list[str], metadata: pd.DataFrame | None) -> pd.DataFrame:
        """Validate new items (before anything is changed); returns their metadata with an ``id`` column."""
        if len(ids) != len(x):
            raise ValueError(f"got {len(x)} vectors but {len(ids)} ids")
        bad = [i for i in ids if not isinstance(i, str) or not i]
        if bad:
            raise ValueError(f"item ids must be non-empty strings, got {bad[:3]}")
        seen: set[str] = set()
        dups = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
        if dups:
            raise ValueError(f"duplicate ids in the new items: {dups[:5]}")
        if metadata is None:
            metadata = pd.DataFrame({"id": ids})
        if len(metadata) != len(ids):
            raise ValueError(f"metadata has {len(metadata)} rows for {len(ids)} items")
        metadata = metadata.reset_index(drop=True).copy()
        metadata["id"] = ids
        return metadata

    def add(
        self,
        embeddings: np.ndarray,
        ids: Sequence[str],
        metadata: pd.DataFrame | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Add items without rebuilding. Ids already present are an error unless ``replace=True``."""
        x = as_matrix(embeddings, self.dim, "embeddings")
        ids = list(ids)
        clash = [i for i in ids if i in self.row_of and not self.deleted[self.row_of[i]]]
        if clash and not replace:
            raise ValueError(
                f"{len(clash)} ids already in the index, first {clash[:5]}; pass replace=True to replace them"
            )
        if clash:
            self._check_new(x, ids, metadata)  # a call that fails must not remove the items it would replace
            self.remove(clash)
        # a removed id may come back: its old row stays a tombstone, the id maps to the new row
        self._append(x, ids, metadata)

    def remove(self, ids: Sequence[str]) -> None:
        """Remove items (they stop appearing in results). Unknown ids raise ``KeyError``."""
        rows = [self._row(i) for i in ids]
        self.deleted[rows] = True

    def _row(self, item_id: str) -> int:
        row = self.row_of.get(item_id)
        if row is None or self.deleted[row]:
            raise KeyError(f"unknown item id {item_id!r}: not in this index ({self.count} items)")
        return row

    def copy(self) -> "ItemIndex":
        """An independent copy (copy-on-write updates: readers keep the old object meanwhile)."""
        new = self._copy_items(ItemIndex(self.dim, self.config))
        new.factory = self.factory
        new.faiss_index = faiss.clone_index(self.faiss_index)
        return new

    def _copy_items(self, new: "ItemIndex") -> "ItemIndex":
        """Copy ids, rows, vectors, metadata and tombstones into ``new`` (the part every index type shares)."""
        new.ids = list(self.ids)
        new.row_of = dict(self.row_of)
        new.embeddings = self.embeddings.copy()
        new.metadata = self.metadata.copy()
        new.deleted = self.deleted.copy()
        return new

    # ------------------------------------------------------------------ read
    @property
    def count(self) -> int:
        """Number of live (not removed) items."""
        return int(len(self.ids) - np.count_nonzero(self.deleted))

    def __len__(self) -> int:
        return self.count

    def __contains__(self, item_id: object) -> bool:
        row = self.row_of.get(item_id) if isinstance(item_id, str) else None
        return row is not None and not self.deleted[row]

    def vector(self, item_id: str) -> np.ndarray:
        """The stored embedding of an item."""
        return self.embeddings[self._row(item_id)]

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """Stored embeddings of several items, in order."""
        return self.embeddings[[self._row(i) for i in item_ids]]

    def item(self, item_id: str) -> dict[str, Any]:
        """Metadata of one item."""
        return self.items([item_id])[0]

    def warm(self) -> "ItemIndex":
        """Build the per-column lookup arrays that item records are read from now (a server calls this before
        it serves a new index, so no request pays for it); returns the index."""
        if self._columns is None:  # column arrays make a record ~50x cheaper than a DataFrame row lookup
            self._columns = {c: self._metadata[c].to_numpy(dtype=object) for c in self._metadata.columns}
        return self

    def items(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Metadata of several items, in order (plain Python values; missing values are ``None``)."""
        rows = [self._row(i) for i in item_ids]
        self.warm()
        names, memo, out = tuple(self._columns), self._records, []
        for r in rows:  # a row's cleaned values are kept: served results repeat the same popular rows
            values = memo.get(r)
            if values is None:
                values = memo[r] = tuple(_clean_record({c: a[r] for c, a in self._columns.items()}).values())
            out.append(dict(zip(names, values)))
        return out

    def live_ids(self) -> list[str]:
        """Ids of the live items, in row order."""
        return [i for i, d in zip(self.ids, self.deleted) if not d]

    def mask(self, where: Where | None = None) -> np.ndarray:
        """Boolean row mask of live items matching every ``field == value`` (or ``field in [values]``)."""
        m = ~self.deleted
        for field, wanted in (where or {}).items():
            if field not in self.metadata.columns:
                raise ValueError(
                    f"cannot filter on {field!r}: no such metadata field; available: {sorted(self.metadata.columns)}"
                )
            col = self.metadata[field]
            if isinstance(wanted, (list, tuple, set, frozenset)):
                m &= col.isin(list(wanted)).to_numpy()
            else:
                m &= (col == wanted).to_numpy()
        return m

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        where: Where | None = None,
        exclude: Sequence[Sequence[str]] | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-``k`` items for each query row: ``(ids per query, scores (m, k'))``.

        With ``where``, only matching items are searched and ``min(k, matches)`` results come back
        (never fewer through post-filtering). ``exclude[i]`` lists ids to leave out of query i's results.
        Scores of missing slots (fewer than k items exist) are ``-inf``.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = as_matrix(queries, self.dim, "queries")
        if exclude is not None and len(exclude) != len(q):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(q)} queries")
        filtered = where is not None or bool(self.deleted.any())
        allowed = self.mask(where) if filtered else None  # no mask to build for an unfiltered search
        n_allowed = int(np.count_nonzero(allowed)) if filtered else len(self.ids)
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        kk = min(k + extra, n_allowed)
        if kk == 0:
            return [[] for _ in q], np.zeros((len(q), 0), np.float32)
        if filtered and n_allowed <= self.config.brute_force_max:
            scores, rows = self._brute_force(q, kk, np.flatnonzero(allowed))
        else:
            scores, rows = self._faiss_search(q, kk, allowed)
            short = (rows < 0).any(axis=1)
            if short.any():  # approximate search under a filter came back short: answer those exactly
                s2, r2 = self._brute_force(q[short], kk, np.flatnonzero(allowed) if filtered else np.arange(n_allowed))
                scores[short], rows[short] = s2, r2
        out_ids: list[list[str]] = []
        out_scores = np.full((len(q), min(k, n_allowed)), -np.inf, np.float32)
        for i in range(len(q)):
            skip = set(exclude[i]) if exclude else set()
            got = [(self.ids[r], s) for r, s in zip(rows[i], scores[i]) if r >= 0 and self.ids[r] not in skip][:k]
            out_ids.append([g[0] for g in got])
            out_scores[i, : len(got)] = [g[1] for g in got]
        return out_ids, out_scores

    def _brute_force(self, q: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims = q @ self.embeddings[rows].T
        k = min(k, len(rows))
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, part, 1)
        order = np.argsort(-top, axis=1, kind="stable")
        return np.take_along_axis(top, order, 1).astype(np.float32), rows[np.take_along_axis(part, order, 1)]

    def _faiss_search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        return search_faiss(self.faiss_index, self.factory, self.config, q, k, allowed)

    # ------------------------------------------------------------------ persistence
    def write(self, directory: Path) -> dict[str, Any]:
        """Write the index files into ``directory``; returns the manifest's index section."""
        faiss.write_index(self.faiss_index, str(directory / "index.faiss"))
        np.save(directory / "embeddings.npy", self.embeddings, allow_pickle=False)
        np.save(directory / "deleted.npy", self.deleted, allow_pickle=False)
        meta = self.metadata.copy()
        for col in meta.columns:
            if meta[col].dtype == object:
                meta[col] = meta[col].map(to_json_text)
        meta.to_parquet(directory / "items.parquet", index=False)
        return {
            "factory": self.factory,
            "type": type(self.faiss_index).__name__,
            "dim": self.dim,
            "metric": "inner_product",
            "rows": len(self.ids),
            "count": self.count,
            "config": asdict(self.config),
        }

    @classmethod
    def read(cls, directory: Path, section: Mapping[str, Any], snapshot: Any = None) -> "ItemIndex":
        """Read index files written by :meth:`write` (the manifest was checked by the caller).

        ``snapshot`` (a :class:`textguide.storage.Snapshot`) supplies the files' verified bytes, read through one
        directory handle; without it they are read from ``directory``. A malformed section or file is an
        ``ArtifactError`` naming it.
        """
        from .storage import ArtifactError, Snapshot

        if isinstance(section, Mapping) and "shards" in section:  # one FAISS index per shard (textguide.shards)
            from .shards import ShardedIndex

            return ShardedIndex.read(directory, section, snapshot)
        hint = "rebuild it with `textguide build-index`"
        if snapshot is None:
            snapshot = Snapshot(Path(directory), {}, {n: (Path(directory) / n).read_bytes() for n in INDEX_FILES
                                                      if (Path(directory) / n).is_file()}, hint)
        where = f"{snapshot.directory / 'manifest.json'}: 'index'"
        if not isinstance(section, Mapping):
            raise ArtifactError(f"{where} must be an object, found {type(section).__name__}; {snapshot.rebuild_hint}")
        dim, factory, config = section.get("dim"), section.get("factory"), section.get("config", {})
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or not isinstance(factory, str) \
                or not isinstance(config, Mapping):
            raise ArtifactError(f"{where} needs dim (a positive integer), factory (a string) and config (an object), "
                                f"found dim={dim!r}, factory={factory!r}, config={config!r:.60}; {snapshot.rebuild_hint}")
        try:
            index = cls(dim, IndexConfig(**config))
        except TypeError as e:
            raise ArtifactError(f"{where}.config: {e}; {snapshot.rebuild_hint}") from e
        index.factory = factory
        index.faiss_index = snapshot.parse("index.faiss", "a FAISS index",
                                           lambda b: faiss.deserialize_index(np.frombuffer(b, dtype=np.uint8)))
        if hasattr(index.faiss_index, "hnsw"):
            index.faiss_index.hnsw.efSearch = index.config.ef_search
        index.embeddings = snapshot.parse("embeddings.npy", "a float32 (rows, dim) array", _npy(np.float32, 2))
        index.deleted = snapshot.parse("deleted.npy", "a boolean array", _npy(np.bool_, 1))
        index.metadata = snapshot.parse("items.parquet", "a Parquet table with an 'id' column", _items)
        index.ids = index.metadata["id"].astype(str).tolist()
        index.row_of = {}
        for r, i in enumerate(index.ids):  # later rows win: a re-added id maps to its newest row
            if not index.deleted[r] or i not in index.row_of:
                index.row_of[i] = r
        n = len(index.ids)
        if not (index.faiss_index.ntotal == n == len(index.embeddings) == len(index.deleted)) \
                or index.embeddings.shape[1] != dim or index.faiss_index.d != dim:
            raise ArtifactError(
                f"{snapshot.directory}: index parts disagree: {index.faiss_index.ntotal} FAISS vectors, "
                f"{len(index.embeddings)} embeddings, {n} metadata rows, {len(index.deleted)} tombstone flags; "
                f"dimension {index.faiss_index.d} in FAISS, {index.embeddings.shape[1]} in the embeddings, {dim} in "
                f"the manifest; {snapshot.rebuild_hint}"
            )
        return index


def search_faiss(fi: faiss.Index, factory: str, config: IndexConfig, q: np.ndarray, k: int,
                 allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, labels) of one FAISS index, restricted to the rows where ``allowed`` is True."""
    params = None
    hnsw = hasattr(fi, "hnsw")
    if hnsw and allowed is None:
        params = _hnsw_params(max(config.ef_search, k))  # shared: nothing sets a selector on it
    elif hnsw:
        params = faiss.SearchParametersHNSW(efSearch=max(config.ef_search, k))
    elif "IVF" in factory:
        params = faiss.SearchParametersIVF(nprobe=config.nprobe)
    sel = bitmap = None
    if allowed is not None:
        bitmap = np.packbits(allowed, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        params = params or faiss.SearchParameters()
        params.sel = sel
    # FAISS parallelises over queries: for a few queries an OpenMP team only adds a barrier
    # (a single flat query over 105k items: 16 ms with 2 threads, 10 ms with 1, on the dev machine)
    threads = faiss.omp_get_max_threads()
    if len(q) < SMALL_BATCH and threads > 1:
        faiss.omp_set_num_threads(1)  # affects the calling thread only
    try:
        scores, rows = fi.search(q, k, params=params)
    finally:
        faiss.omp_set_num_threads(threads)
    del sel, bitmap  # the selector reads the bitmap until the search returns
    return scores, rows


@functools.lru_cache(maxsize=64)
def _hnsw_params(ef_search: int) -> faiss.SearchParametersHNSW:
    """HNSW search parameters without a selector (read-only during a search, so threads share them)."""
    return faiss.SearchParametersHNSW(efSearch=ef_search)


#: The files an :class:`ItemIndex` is written to.
INDEX_FILES = ("index.faiss", "embeddings.npy", "deleted.npy", "items.parquet")


def _npy(dtype: Any, ndim: int) -> Any:
    def parse(data: bytes) -> np.ndarray:
        x = np.load(io.BytesIO(data), allow_pickle=False)
        if x.dtype != dtype or x.ndim != ndim:
            raise ValueError(f"expected a {ndim}-d {np.dtype(dtype).name} array, found {x.ndim}-d {x.dtype}")
        return x

    return parse


def _items(data: bytes) -> pd.DataFrame:
    frame = pd.read_parquet(io.BytesIO(data))
    if "id" not in frame.columns:
        raise ValueError(f"no 'id' column (columns: {list(frame.columns)[:10]})")
    return frame


def to_json_text(v: Any) -> str | None:
    """A value of a mixed (object) metadata column as parquet-safe text; missing values stay missing."""
    if v is None or isinstance(v, str):
        return v
    if v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    return json.dumps(v, default=str)


def _clean_record(rec: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in rec.items():
        if isinstance(v, np.generic):
            v = v.item()
        if v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v):
            v = None
        out[k] = v
    return out


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k (rows, scores): the reference answer."""
    sims = np.asarray(queries, np.float32) @ np.asarray(embeddings, np.float32).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, 1)


def recall_vs_exact(index: ItemIndex, queries: np.ndarray, k: int = 10) -> float:
    """Mean overlap of the index's top-k with exact search: recall@k of the approximate index."""
    exact_rows, _ = exact_search(index.embeddings[~index.deleted], queries, k)
    live = np.array(index.live_ids())
    got, _ = index.search(queries, k)
    hits = [len(set(g) & set(live[e])) / k for g, e in zip(got, exact_rows)]
    return float(np.mean(hits))


os.environ.setdefault("KMP_DUPLICATE_LIB_OK", "TRUE")
