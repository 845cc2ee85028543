"""Distributed build on Ray: Ray Data reads the catalog in blocks, an actor pool embeds it, shards are indexed in tasks.

The pipeline (``build-index --engine ray``)::

    read (Parquet / CSV / TSV / JSONL, gz; a file or a folder of files)  -> blocks
    validate each block (the rules of load_catalog)                      -> tasks
    embed (one encoder per actor, through the embedding cache)           -> actor pool
    driver: rows in catalog order -> shard files (embeddings.npy, items.parquet, deleted.npy)
    one FAISS index per shard (the factory the single index picks for the shard's size) -> tasks

The guide directory is written like every guide: in a temporary sibling swapped in at the end, so a failed
build (a bad row, a duplicate id, a worker that keeps dying) leaves the previous guide untouched. Ray retries
what a dead worker was doing (actors are restarted, tasks re-run). Needs the ``ray`` extra: ``pip install
"textguide[ray]"``. Without an address, a local Ray is started (no cluster needed) and stopped at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .catalog import ColumnMap, catalog_from_frame, is_blank
from .encoder import EmbeddingCache, TextEncoder, encode_texts, load_encoder
from .index import INDEX_FILES, IndexConfig, ItemIndex, to_json_text
from .shards import shard_entry, shard_path, sharded_section
from .storage import check_replaceable, write_artifact

logger = logging.getLogger("textguide")

#: Rows per shard when ``shards`` is not given.
DEFAULT_SHARD_ROWS = 1_000_000
#: CPUs one read / validate task asks Ray for: none, so that reads run beside an actor pool that holds every CPU
#: (Ray Data still bounds them by its object-store budget).
READ_CPUS = 0.0

_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


def _need_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"--engine ray needs Ray ({e}); install the extra: pip install \"textguide[ray]\"") from e
    return ray


def catalog_format(path: Path) -> str:
    """``parquet``, ``csv``, ``tsv`` or ``jsonl`` for a catalog file (``.gz`` allowed) or a folder of such files."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))) \
        if path.is_dir() else [path]
    kinds = set()
    for f in files:
        suffixes = [s.lower() for s in f.suffixes if s.lower() != ".gz"]
        kinds.add(_FORMATS.get(suffixes[-1] if suffixes else "", f.suffix or "(none)"))
    if len(kinds) != 1 or not kinds <= set(_FORMATS.values()):
        raise ValueError(f"{path}: --engine ray reads Parquet, CSV, TSV or JSONL files (optionally .gz), or a folder "
                         f"of one of them; found {sorted(kinds) or 'no files'}. Convert it, or build with --engine "
                         f"local / --stream")
    if path.is_file() and path.suffix.lower() == ".gz" and kinds == {"parquet"}:
        raise ValueError(f"{path}: a gzipped Parquet file cannot be read in blocks; decompress it (Parquet compresses "
                         f"its own pages) or build with --engine local")
    return kinds.pop()


def read_catalog(path: str | os.PathLike[str]) -> Any:
    """The catalog as a Ray Dataset of raw rows, every CSV/TSV column read as text (as ``read_table`` does)."""
    ray = _need_ray()
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: catalog not found")
    kind = catalog_format(path)
    paths = str(path)
    if kind == "parquet":
        return ray.data.read_parquet(paths, num_cpus=READ_CPUS)
    if kind == "jsonl":
        return ray.data.read_json(paths, lines=True, num_cpus=READ_CPUS)
    sep = "\t" if kind == "tsv" else ","
    first = path if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                               and not p.name.startswith((".", "_")))[0]
    header = _header(first, sep)
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, null_values=[""],
                                   strings_can_be_null=True, quoted_strings_can_be_null=True)
    return ray.data.read_csv(paths, num_cpus=READ_CPUS, convert_options=convert,
                             parse_options=pacsv.ParseOptions(delimiter=sep),
                             read_options=pacsv.ReadOptions(encoding="utf8"),
                             file_extensions=None)


def count_rows(path: Path, raw: Any) -> int:
    """Rows in the catalog: from the Parquet footers, else by a read pass on Ray (cheap next to embedding)."""
    if catalog_format(path) == "parquet":
        import pyarrow.parquet as pq

        files = [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        return int(sum(pq.ParquetFile(f).metadata.num_rows for f in files))
    return int(raw.count())


def _header(path: Path, sep: str) -> list[str]:
    import csv
    import gzip
    import io

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as f:
        line = f.readline().decode("utf-8-sig")
    header = next(csv.reader(io.StringIO(line), delimiter=sep), [])
    if not header:
        raise ValueError(f"{path}: the catalog is empty (no header, no rows); add products or check the file")
    dups = sorted({h for h in header if header.count(h) > 1})
    if dups:
        raise ValueError(f"{path}: column {dups[0]!r} appears {header.count(dups[0])} times in the header; "
                         f"rename or drop the duplicates")
    return header


class Validate:
    """A Ray Data map: raw rows -> validated rows (``load_catalog``'s rules) with the text to embed."""

    def __init__(self, columns: ColumnMap, template: str | None, strict: bool, source: str) -> None:
        self.columns, self.template, self.strict, self.source = columns, template, strict, source

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        if len(frame) == 0:
            return frame.iloc[:0]
        title = self.columns.title
        if not self.strict and title in frame.columns and frame[title].map(is_blank).all():
            logger.warning("%s: skipping a block of %d rows with no title", self.source, len(frame))
            return frame.iloc[:0]
        try:
            cat = catalog_from_frame(frame, self.columns, self.template, self.strict, "error",
                              f"{self.source} (a block of it)")
        except USER_ERRORS as e:
            return pd.DataFrame(_error_row(e))
        meta = cat.metadata.copy()
        meta["text"] = cat.texts
        for col in meta.columns:
            if meta[col].dtype == object:
                meta[col] = meta[col].map(to_json_text)
        return meta


class Embed:
    """A Ray Data actor: loads the encoder once, appends each batch's ``vector`` column (through the cache)."""

    def __init__(self, encoder: str | TextEncoder | None, precision: str, backend: str, cache_dir: str | None,
                 use_cache: bool, batch_size: int, threads: int) -> None:
        with contextlib.suppress(ImportError):
            import torch

            torch.set_num_threads(max(1, threads))
        self.encoder = encoder if encoder is not None and not isinstance(encoder, str) \
            else load_encoder(encoder, precision=precision, backend=backend)  # type: ignore[arg-type]
        self.cache = EmbeddingCache(cache_dir) if use_cache else None
        self.batch_size = batch_size

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        if table.num_rows == 0:
            return table
        if ERROR in table.column_names:  # a block that failed validation: pass its error on
            if table.column(ERROR).null_count < table.num_rows:
                return pa.table(_error_row(_first_error(table)))
            table = table.drop_columns([ERROR, ERROR_TYPE])
        texts = table.column("text").to_pylist()
        try:
            vecs = encode_texts(self.encoder, texts, cache=self.cache, batch_size=self.batch_size,
                                show_progress=False)
        except USER_ERRORS as e:
            return pa.table(_error_row(e))
        flat = pa.array(np.ascontiguousarray(vecs, np.float32).ravel())
        return table.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1]))


def _shard_index(vectors: np.ndarray, config: dict[str, Any], threads: int) -> tuple[str, np.ndarray]:
    """A Ray task: the FAISS index of one shard (the factory the single index picks for its size), serialised."""
    import faiss

    faiss.omp_set_num_threads(max(1, threads))
    ids = [str(i) for i in range(len(vectors))]
    index = ItemIndex.build(vectors, ids, None, IndexConfig(**config))
    return index.factory, faiss.serialize_index(index.faiss_index)


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, connected: the running session if there is one, else ``ray.init(address)`` (local without an address),
    shut down at the end when this function started it."""
    ray = _need_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False} if address is None else {}
    if num_cpus is not None and address is None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


#: Errors a worker reports as data (an error row), so that the driver raises them as they are: Ray Data wraps an
#: exception raised in a map in its own type and drops the original (a bad row is a ValueError, not a Ray error).
USER_ERRORS = (ValueError, KeyError, OSError)
ERROR, ERROR_TYPE = "_textguide_error", "_textguide_error_type"
_ERROR_TYPES: dict[str, type[Exception]] = {"KeyError": KeyError, "FileNotFoundError": FileNotFoundError,
                                            "PermissionError": PermissionError, "OSError": OSError}


def _error_row(e: BaseException | tuple[str, str]) -> dict[str, list[str]]:
    if isinstance(e, tuple):
        kind, message = e
    else:
        kind = type(e).__name__
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return {ERROR_TYPE: [kind], ERROR: [message]}


def _first_error(table: Any) -> tuple[str, str]:
    errors, kinds = table.column(ERROR).to_pylist(), table.column(ERROR_TYPE).to_pylist()
    return next((k, m) for k, m in zip(kinds, errors) if m is not None)


def _raise_error(table: Any) -> None:
    """Raise the first error row of ``table`` as the exception type the worker caught."""
    kind, message = _first_error(table)
    raise _ERROR_TYPES.get(kind, ValueError)(message)


class _ShardWriter:
    """Writes rows (in catalog order) into shard directories and starts each shard's index task."""

    def __init__(self, root: Path, shard_rows: int, dim: int, config: IndexConfig, index_task: Any) -> None:
        self.root, self.shard_rows, self.dim, self.config = root, shard_rows, dim, config
        self.index_task = index_task
        self.pending: list[tuple[str, int, Any]] = []  # (rel, rows, ObjectRef of (factory, bytes))
        self.schema: Any = None
        self._open(0)

    def _open(self, s: int) -> None:
        self.s, self.rel = s, shard_path(s)
        (self.root / self.rel).mkdir(parents=True)
        self.rows = 0
        self.vectors: list[np.ndarray] = []
        self.writer: Any = None

    def add(self, table: Any, vectors: np.ndarray) -> None:
        import pyarrow.parquet as pq

        start = 0
        while start < table.num_rows:
            take = min(self.shard_rows - self.rows, table.num_rows - start)
            part = table.slice(start, take)
            if self.schema is None:
                self.schema = part.schema
            elif part.schema != self.schema:
                part = part.cast(self.schema)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.root / self.rel / "items.parquet", self.schema)
            self.writer.write_table(part)
            self.vectors.append(vectors[start:start + take])
            self.rows += take
            start += take
            if self.rows == self.shard_rows:
                self.close_shard()
                self._open(self.s + 1)

    def close_shard(self) -> None:
        import ray

        if self.rows == 0:
            (self.root / self.rel).rmdir()
            return
        self.writer.close()
        x = np.concatenate(self.vectors) if len(self.vectors) > 1 else self.vectors[0]
        self.vectors = []
        d = self.root / self.rel
        np.save(d / "embeddings.npy", np.ascontiguousarray(x, np.float32), allow_pickle=False)
        np.save(d / "deleted.npy", np.zeros(self.rows, bool), allow_pickle=False)
        ref = self.index_task.remote(ray.put(x), asdict(self.config), 1)
        self.pending.append((self.rel, self.rows, ref))
        logger.info("shard %s: %d rows written, indexing", self.rel, self.rows)

    def finish(self) -> list[dict[str, Any]]:
        """Close the last shard, wait for every shard's index, write them; the shards' manifest entries."""
        import faiss
        import ray

        self.close_shard()
        entries = []
        for rel, rows, ref in self.pending:
            factory, data = ray.get(ref)
            (self.root / rel / "index.faiss").write_bytes(np.asarray(data, np.uint8).tobytes())
            fi = faiss.deserialize_index(np.asarray(data, np.uint8))
            section = {"factory": factory, "type": type(fi).__name__, "rows": rows, "count": rows}
            entries.append(shard_entry(self.root, rel, section))
        return entries


def build_index_ray(
    catalog: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    columns: ColumnMap | None = None,
    template: str | None = None,
    encoder: str | TextEncoder | None = None,
    precision: str = "fp32",
    backend: str = "auto",
    factory: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    strict: bool = False,
    on_duplicate: str = "error",
    shards: int | None = None,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    batch_rows: int = 1024,
    batch_size: int = 64,
    address: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Build a sharded guide directory on Ray; returns its manifest (``Guide.load`` serves it).

    ``shards``: how many index shards (default: one per million rows); ``actors``: embedding actors, each
    loading the encoder once and asking Ray for ``cpus_per_actor`` CPUs (its torch threads);
    ``batch_rows``: rows per actor call; ``batch_size``: texts per encoder batch. ``address``: a Ray cluster
    (``auto``, ``ray://host:port``); without one a running Ray session is used, else a local one is started.
    Ids must be unique (``on_duplicate='last'`` needs the whole catalog in one process: use the local build).
    """
    from . import __version__
    from .guide import FORMAT, FORMAT_VERSION, encoder_info

    for name, value in (("actors", actors), ("batch_rows", batch_rows), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards <= 0):
        raise ValueError(f"shards must be a positive integer, got {shards!r}")
    if not isinstance(cpus_per_actor, (int, float)) or isinstance(cpus_per_actor, bool) or cpus_per_actor <= 0:
        raise ValueError(f"cpus_per_actor must be a positive number, got {cpus_per_actor!r}")
    if on_duplicate != "error":
        raise ValueError("--engine ray needs unique ids (on_duplicate='error'); resolving duplicates last-wins needs "
                         "the whole catalog in one process: deduplicate first or build with --engine local")
    keep_old = check_replaceable(output, FORMAT, force=force)  # refuse before starting Ray
    columns = columns or ColumnMap()
    source = str(catalog)
    if not Path(catalog).exists():
        raise FileNotFoundError(f"{source}: catalog not found")
    catalog_format(Path(catalog))  # an unreadable format is refused before Ray starts
    enc = encoder if encoder is not None and not isinstance(encoder, str) \
        else load_encoder(encoder, precision=precision, backend=backend)  # type: ignore[arg-type]
    info = encoder_info(enc)
    config = IndexConfig(factory=factory)
    cache = str(cache_dir) if cache_dir is not None else None
    actor_encoder = encoder if not isinstance(encoder, str) and encoder is not None else (encoder or None)

    with ray_session(address) as ray:
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        ordered, v2 = ctx.execution_options.preserve_order, getattr(ctx, "use_datasource_v2", None)
        ctx.execution_options.preserve_order = True  # rows reach the driver in catalog order
        if v2 is not None:  # its Parquet file listing asks for a whole CPU, which an actor pool that fills the
            ctx.use_datasource_v2 = False  # machine never leaves free: the read would wait forever
        try:
            raw = read_catalog(catalog)
            n_rows = count_rows(Path(catalog), raw)
            if n_rows == 0:
                raise ValueError(f"{source}: the catalog is empty (no rows); add products or check the file")
            n_shards = shards or max(1, math.ceil(n_rows / DEFAULT_SHARD_ROWS))
            shard_rows = math.ceil(n_rows / n_shards)
            logger.info("%s: %d rows -> %d shards of up to %d rows, %d embedding actors", source, n_rows, n_shards,
                        shard_rows, actors)
            valid = raw.map_batches(Validate(columns, template, strict, source), batch_format="pandas",
                                    batch_size=None, num_cpus=READ_CPUS)
            embedded = valid.map_batches(
                Embed, fn_constructor_kwargs=dict(encoder=actor_encoder, precision=precision, backend=info["backend"],
                                                  cache_dir=cache, use_cache=use_cache, batch_size=batch_size,
                                                  threads=max(1, int(cpus_per_actor))),
                compute=ActorPoolStrategy(size=actors), batch_size=batch_rows, batch_format="pyarrow",
                num_cpus=cpus_per_actor)
            index_task = ray.remote(num_cpus=1, max_retries=3)(_shard_index)

            def write(tmp: Path) -> dict[str, Any]:
                writer = _ShardWriter(tmp, shard_rows, enc.dim, config, index_task)
                hashes: list[np.ndarray] = []
                kept = 0
                for batch in embedded.iter_batches(batch_format="pyarrow", batch_size=None):
                    if batch.num_rows == 0:
                        continue
                    if ERROR in batch.column_names:
                        if batch.column(ERROR).null_count < batch.num_rows:
                            _raise_error(batch)
                        batch = batch.drop_columns([ERROR, ERROR_TYPE])
                    vec = batch.column("vector").combine_chunks()
                    x = vec.values.to_numpy(zero_copy_only=False).reshape(-1, enc.dim)
                    table = batch.drop_columns(["vector"]).replace_schema_metadata(None)  # plain pandas dtypes
                    ids = table.column("id").to_pylist()
                    hashes.append(_id_hashes(ids))
                    if len(hashes[-1]) != len(np.unique(hashes[-1])):
                        _check_unique(hashes[-1], source)
                    writer.add(table, x)
                    kept += len(ids)
                if kept == 0:
                    raise ValueError(f"{source}: the catalog is empty after skipping rows with no title")
                _check_unique(np.concatenate(hashes), source)
                entries = writer.finish()
                section = sharded_section(entries, enc.dim, config)
                logger.info("%s: %d items (%d rows skipped with an empty title) in %d shards (%s)", source, kept,
                            n_rows - kept, len(entries), section["factory"])
                return {"adapter": None, "format": FORMAT, "format_version": FORMAT_VERSION,
                        "textguide_version": __version__, "encoder": info, "metric": "inner_product",
                        "index": section, "counts": {"items": kept, "coupons": 0},
                        "build": {"engine": "ray", "shards": len(entries), "actors": actors,
                                  "cpus_per_actor": cpus_per_actor, "batch_rows": batch_rows}}

            return write_artifact(Path(output), write, keep_old=keep_old)
        finally:
            ctx.execution_options.preserve_order = ordered
            if v2 is not None:
                ctx.use_datasource_v2 = v2


def _id_hashes(ids: list[str]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids],
                    np.uint64)


def _check_unique(hashes: np.ndarray, source: str) -> None:
    hashes = np.sort(hashes)
    dup = int((hashes[1:] == hashes[:-1]).sum())
    if dup:
        raise ValueError(f"{source}: {dup} duplicate ids in the catalog; make ids unique (the distributed build "
                         "cannot resolve duplicates last-wins: that needs the whole catalog in one process)")


__all__ = ["build_index_ray", "read_catalog", "catalog_format", "ray_session", "INDEX_FILES"]
