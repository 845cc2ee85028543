"""Out-of-core builds: catalogs as Hugging Face ``datasets`` (Arrow on disk), streamed in batches.

A catalog larger than memory is read batch by batch from its Arrow files (never materialised), each
batch is validated like :func:`textguide.catalog.load_catalog` does, embedded (through the embedding
cache) and appended to the FAISS index, the embeddings file and the metadata Parquet file of a guide
directory being written atomically. Peak memory is one batch plus the FAISS index itself: above
``exact_max_items`` the streaming build picks a compressed IVF index (``IVF{nlist},SQ8``, trained on
the first batch) instead of HNSW, whose graph and float vectors grow with the catalog.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .catalog import Catalog, ColumnMap, catalog_from_frame
from .encoder import EmbeddingCache, TextEncoder, encode_texts, load_encoder
from .index import IndexConfig, to_json_text
from .storage import check_replaceable, write_artifact

logger = logging.getLogger("textguide")


def is_dataset_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder written by ``datasets.Dataset.save_to_disk``."""
    p = Path(path)
    return p.is_dir() and (p / "state.json").is_file() and (p / "dataset_info.json").is_file()


def as_dataset(source: Any) -> Any:
    """A ``datasets.Dataset`` from a Dataset, a ``save_to_disk`` folder, or a Parquet/CSV/JSONL file (gz too)."""
    import datasets

    if isinstance(source, datasets.DatasetDict):
        raise ValueError(f"got a DatasetDict with splits {list(source)}; pass one split, e.g. dataset['train']")
    if isinstance(source, datasets.Dataset):
        return source
    path = Path(source)
    if is_dataset_dir(path):
        return datasets.load_from_disk(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: catalog not found (expected a file or a datasets save_to_disk folder)")
    kinds = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = kinds[-1] if kinds else ""
    if kind == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    if kind in (".csv", ".tsv"):
        return datasets.Dataset.from_csv(str(path), sep="\t" if kind == ".tsv" else ",", dtype=str,
                                         keep_default_na=False, na_values=[""])
    if kind in (".jsonl", ".json"):
        return datasets.Dataset.from_json(str(path))
    raise ValueError(f"{path}: unsupported catalog format {kind!r}; use .parquet, .csv, .tsv, .jsonl (optionally .gz) "
                     "or a datasets save_to_disk folder")


def dataset_frame(dataset: Any) -> pd.DataFrame:
    """The whole dataset as a DataFrame (for the in-memory path)."""
    return as_dataset(dataset).to_pandas()


def iter_frames(dataset: Any, batch_rows: int) -> Iterator[pd.DataFrame]:
    """The dataset's rows as DataFrames of at most ``batch_rows`` rows, read from its Arrow files with plain
    reads (not memory maps, whose touched pages would count towards the process's resident memory)."""
    import pyarrow as pa

    ds = as_dataset(dataset)
    if _files_are_the_table(ds):
        files = [f["filename"] for f in ds.cache_files]
        pending: list[Any] = []
        size = 0
        for fname in files:
            with pa.OSFile(fname) as f:
                for batch in pa.ipc.open_stream(f):
                    pending.append(batch)
                    size += batch.num_rows
                    while size >= batch_rows:
                        table = pa.Table.from_batches(pending)
                        yield table.slice(0, batch_rows).to_pandas()
                        rest = table.slice(batch_rows)
                        pending, size = rest.to_batches(), rest.num_rows
        if size:
            yield pa.Table.from_batches(pending).to_pandas()
        return
    for table in ds.with_format("arrow").iter(batch_size=batch_rows):  # a view: read through datasets
        yield table.to_pandas()


def _files_are_the_table(ds: Any) -> bool:
    """Whether the dataset is exactly its Arrow files' rows and columns (no select, filter, rename...)."""
    import pyarrow as pa

    files = [f["filename"] for f in ds.cache_files]
    if not files or getattr(ds, "_indices", None) is not None:
        return False
    rows = 0
    for fname in files:
        with pa.memory_map(fname) as f:  # reads the stream's metadata, not its data pages
            table = pa.ipc.open_stream(f).read_all()
            if table.schema.remove_metadata() != ds.data.schema.remove_metadata():
                return False
            rows += table.num_rows
    return rows == ds.num_rows


def stream_factory(config: IndexConfig, n: int, dim: int) -> str:
    """The FAISS factory a streamed build of ``n`` rows uses: ``config.factory`` if set, ``Flat`` up to
    ``config.exact_max_items``, else ``IVF{nlist},SQ8`` (its memory does not hold float vectors)."""
    if config.factory:
        return config.factory
    if n <= config.exact_max_items:
        return "Flat"
    nlist = 2 ** int(math.log2(max(16, math.sqrt(n))))
    return f"IVF{nlist},SQ8"


def build_index_streaming(
    catalog: Any,
    output: str | os.PathLike[str],
    *,
    columns: ColumnMap | None = None,
    template: str | None = None,
    encoder: str | TextEncoder | None = None,
    backend: str = "auto",
    factory: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    strict: bool = False,
    batch_rows: int = 50_000,
    batch_size: int = 64,
    force: bool = False,
) -> dict[str, Any]:
    """Build a guide directory from a catalog too large for memory; returns its manifest.

    ``catalog`` is a ``datasets.Dataset``, a ``save_to_disk`` folder or a Parquet/CSV/JSONL file (converted
    to Arrow by ``datasets``). Rows are validated per batch with the rules of ``load_catalog``; duplicate ids
    anywhere in the catalog are an error (deduplicate first: last-wins needs the whole catalog in memory).
    The result loads with ``Guide.load`` like any guide.
    """
    import faiss

    from . import __version__
    from .guide import FORMAT, FORMAT_VERSION, encoder_info

    if not isinstance(batch_rows, int) or batch_rows <= 0:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    keep_old = check_replaceable(output, FORMAT, force=force)  # refuse before the slow embedding
    ds = as_dataset(catalog)
    n_rows = ds.num_rows
    if n_rows == 0:
        raise ValueError("the catalog is empty (no rows); add products or check the file")
    enc = encoder if encoder is not None and not isinstance(encoder, str) else load_encoder(encoder, backend=backend)
    config = IndexConfig(factory=factory)
    fac = stream_factory(config, n_rows, enc.dim)
    cache = EmbeddingCache(cache_dir) if use_cache else None
    columns = columns or ColumnMap()

    def write(tmp: Path) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        index = faiss.index_factory(enc.dim, fac, faiss.METRIC_INNER_PRODUCT)
        raw = tmp / "embeddings.raw"
        writer = None
        schema = None
        hashes: list[np.ndarray] = []
        kept = skipped = 0
        with open(raw, "wb") as vec_file:
            for b, frame in enumerate(iter_frames(ds, batch_rows)):
                cat: Catalog = catalog_from_frame(frame, columns, template, strict, "error", f"{ds_name(ds)} batch {b}")
                skipped += len(cat.report.skipped_empty_title) if cat.report else 0
                hashes.append(np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                                        for i in cat.ids], np.uint64))
                vecs = encode_texts(enc, cat.texts, cache=cache, batch_size=batch_size, show_progress=False)
                if not index.is_trained:
                    logger.info("training %s on the first batch (%d vectors)", fac, len(vecs))
                    index.train(vecs)
                index.add(vecs)
                vec_file.write(np.ascontiguousarray(vecs, np.float32).tobytes())
                meta = cat.metadata.copy()
                meta["text"] = cat.texts
                for col in meta.columns:
                    if meta[col].dtype == object:
                        meta[col] = meta[col].map(to_json_text)
                table = pa.Table.from_pandas(meta, preserve_index=False)
                if writer is None:
                    schema = table.schema
                    writer = pq.ParquetWriter(tmp / "items.parquet", schema)
                elif table.schema != schema:
                    table = table.cast(schema)
                writer.write_table(table)
                kept += len(cat)
                logger.info("streamed batch %d: %d items (%d so far of %d rows)", b, len(cat), kept, n_rows)
        if writer is not None:
            writer.close()
        if kept == 0:
            raise ValueError("the catalog is empty after skipping rows with no title")
        _check_unique(np.concatenate(hashes), ds)
        _raw_to_npy(raw, tmp / "embeddings.npy", kept, enc.dim)
        np.save(tmp / "deleted.npy", np.zeros(kept, bool), allow_pickle=False)
        if hasattr(index, "nprobe"):
            index.nprobe = config.nprobe
        faiss.write_index(index, str(tmp / "index.faiss"))
        from dataclasses import asdict

        section = {"factory": fac, "type": type(index).__name__, "dim": enc.dim, "metric": "inner_product",
                   "rows": kept, "count": kept, "config": asdict(config)}
        logger.info("streamed %d items (%d skipped with an empty title) into %s", kept, skipped, fac)
        return {"adapter": None, "format": FORMAT, "format_version": FORMAT_VERSION, "textguide_version": __version__,
                "encoder": encoder_info(enc), "metric": "inner_product", "index": section,
                "counts": {"items": kept, "coupons": 0}, "build": {"engine": "stream", "batch_rows": batch_rows}}

    try:
        return write_artifact(Path(output), write, keep_old=keep_old)
    finally:
        if cache is not None:
            cache.close()


def ds_name(ds: Any) -> str:
    files = [f["filename"] for f in ds.cache_files]
    return str(Path(files[0]).parent) if files else "<dataset>"


def _check_unique(hashes: np.ndarray, ds: Any) -> None:
    hashes.sort()
    dup = np.flatnonzero(hashes[1:] == hashes[:-1])
    if len(dup):
        raise ValueError(f"{ds_name(ds)}: {len(dup)} duplicate ids in the catalog; make ids unique (the streaming "
                         "build cannot resolve duplicates last-wins: that needs the whole catalog in memory)")


def _raw_to_npy(raw: Path, out: Path, rows: int, dim: int, chunk: int = 1 << 24) -> None:
    """Prefix a raw float32 file with a .npy header, copying in chunks (bounded memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (rows, dim)}
    with open(out, "wb") as dst, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(dst, header)
        while block := src.read(chunk):
            dst.write(block)
    raw.unlink()
