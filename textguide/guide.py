"""Guide: the Python retrieval API over a guide directory (an item index, optionally trained adapters)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, overload

import numpy as np

from . import __version__
from .catalog import Catalog, ColumnMap, load_catalog
from .encoder import EmbeddingCache, TextEncoder, encode_texts, load_encoder
from .index import IndexConfig, ItemIndex, Where
from .storage import ArtifactError, read_manifest, write_artifact

logger = logging.getLogger("textguide")

FORMAT = "textguide-guide"
FORMAT_VERSION = 1


@dataclass
class Hits:
    """Results of one query: item ids, scores (higher is better) and each item's metadata."""

    ids: list[str]
    scores: np.ndarray
    items: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return iter(zip(self.ids, self.scores.tolist()))

    def to_frame(self):
        """A pandas DataFrame: rank, id, score and the metadata columns."""
        import pandas as pd

        frame = pd.DataFrame(self.items) if self.items else pd.DataFrame({"id": self.ids})
        frame.insert(0, "score", self.scores)
        frame.insert(0, "rank", np.arange(1, len(self.ids) + 1))
        return frame


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _where(category: str | Sequence[str] | None, where: Where | None) -> Where | None:
    if category is None:
        return where
    merged = dict(where or {})
    merged["category"] = category if isinstance(category, str) else list(category)
    return merged


class Guide:
    """Shopping guidance over one catalog.

    Example:
        >>> guide = Guide.load("indexes/sample")                           # doctest: +SKIP
        >>> guide.search("linen shirt for the beach", k=5).ids             # doctest: +SKIP
        >>> guide.similar("tg-0006", k=5, category="Tops")                 # doctest: +SKIP
    """

    def __init__(self, index: ItemIndex, encoder_info: dict[str, Any], encoder: TextEncoder | None = None) -> None:
        self.index = index
        self.encoder_info = dict(encoder_info)
        self._encoder = encoder
        self.path: Path | None = None
        self.manifest: dict[str, Any] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        catalog: Catalog,
        encoder: TextEncoder | None = None,
        *,
        index_config: IndexConfig | None = None,
        cache: EmbeddingCache | None = None,
        batch_size: int = 64,
        show_progress: bool | None = None,
    ) -> "Guide":
        """Embed a catalog and index it."""
        encoder = encoder or load_encoder()
        vectors = encode_texts(encoder, catalog.texts, cache=cache, batch_size=batch_size, show_progress=show_progress)
        meta = catalog.metadata.copy()
        meta["text"] = catalog.texts
        index = ItemIndex.build(vectors, catalog.ids, meta, index_config)
        return cls(index, encoder_info(encoder), encoder)

    @property
    def encoder(self) -> TextEncoder:
        """The text encoder (loaded on first use from the manifest's encoder name)."""
        if self._encoder is None:
            self._encoder = load_encoder(self.encoder_info["name"], precision=self.encoder_info.get("precision", "fp32"))
            self._check_encoder(self._encoder)
        return self._encoder

    def _check_encoder(self, enc: TextEncoder) -> None:
        if enc.dim != self.index.dim:
            raise ValueError(
                f"encoder {enc.name!r} has dimension {enc.dim}, but this guide's index expects {self.index.dim} "
                f"(built with {self.encoder_info.get('name')!r}); load it with that encoder or rebuild with "
                f"`textguide build-index --encoder {enc.name}`"
            )
        if enc.fingerprint != self.encoder_info.get("fingerprint"):
            logger.warning(
                "encoder fingerprint %s differs from the one this guide was built with (%s): "
                "query vectors may not match the index; rebuild to be safe",
                enc.fingerprint,
                self.encoder_info.get("fingerprint"),
            )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the guide directory atomically (temp dir, then swap); returns its path."""
        path = Path(path)

        def write(tmp: Path) -> dict[str, Any]:
            return self._write(tmp)

        self.manifest = write_artifact(path, write)
        self.path = path
        return path

    def _write(self, tmp: Path) -> dict[str, Any]:
        section = self.index.write(tmp)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "textguide_version": __version__,
            "encoder": self.encoder_info,
            "metric": "inner_product",
            "index": section,
            "counts": {"items": self.index.count},
        }

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        encoder: TextEncoder | None = None,
        *,
        verify: bool = True,
    ) -> "Guide":
        """Open a guide directory, checking its manifest and every file's checksum.

        Raises ``ArtifactError`` (a ``ValueError``) naming what was expected, what was found and
        what to run when the directory is corrupted, truncated, of another format version, or when
        ``encoder`` does not match the index's dimension.
        """
        path = Path(path)
        hint = f"rebuild it with `textguide build-index CATALOG {path}`"
        for attempt in range(3):  # a concurrent writer may swap the directory in while we read it
            inode = _inode(path)
            try:
                manifest = read_manifest(path, kind=FORMAT, format_version=FORMAT_VERSION, verify=verify, rebuild_hint=hint)
                index = ItemIndex.read(path, manifest["index"])
                break
            except (ArtifactError, OSError):
                if attempt == 2 or inode is None or _inode(path) == inode:
                    raise  # not a concurrent swap: the directory itself is bad
                logger.info("%s was replaced while loading; reading it again", path)
        guide = cls(index, manifest["encoder"], None)
        guide.path, guide.manifest = path, manifest
        if encoder is not None:
            guide._check_encoder(encoder)
            guide._encoder = encoder
        return guide

    # ------------------------------------------------------------------ queries
    def _hits(self, ids: list[str], scores: np.ndarray) -> Hits:
        return Hits(ids, scores[: len(ids)].astype(np.float32), [self.index.item(i) for i in ids])

    @overload
    def search(self, query: str, k: int = 10, *, category: str | None = None, where: Where | None = None) -> Hits: ...
    @overload
    def search(self, query: Sequence[str], k: int = 10, *, category: str | None = None, where: Where | None = None) -> list[Hits]: ...

    def search(self, query, k=10, *, category=None, where=None):
        """Items whose text best matches a free-text query (or a list of queries -> list of hits)."""
        k = _check_k(k)
        single = isinstance(query, str)
        queries = [query] if single else query
        if not isinstance(queries, (list, tuple)) or not queries:
            raise ValueError(f"query must be a string or a non-empty list of strings, got {type(query).__name__}")
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise ValueError(f"query {i} must be a string, got {type(q).__name__}")
        vecs = self.encoder.encode(list(queries), show_progress=False)
        ids, scores = self.index.search(vecs, k, where=_where(category, where))
        hits = [self._hits(i, s) for i, s in zip(ids, scores)]
        return hits[0] if single else hits

    @overload
    def similar(self, item_id: str, k: int = 10, *, category: str | None = None, where: Where | None = None) -> Hits: ...
    @overload
    def similar(self, item_id: Sequence[str], k: int = 10, *, category: str | None = None, where: Where | None = None) -> list[Hits]: ...

    def similar(self, item_id, k=10, *, category=None, where=None):
        """Items most similar in text to an item (itself excluded); a list of ids -> list of hits."""
        k = _check_k(k)
        single = isinstance(item_id, str)
        ids = [item_id] if single else list(item_id)
        for i in ids:
            if not isinstance(i, str):
                raise ValueError(f"item ids must be strings, got {type(i).__name__} {i!r}")
        vecs = self.index.vectors(ids)  # KeyError names an unknown id
        found, scores = self.index.search(vecs, k, where=_where(category, where), exclude=[[i] for i in ids])
        hits = [self._hits(f, s) for f, s in zip(found, scores)]
        return hits[0] if single else hits

    def info(self) -> dict[str, Any]:
        """What this guide holds: counts, encoder, index type, path."""
        meta = self.index.metadata
        cats = meta.loc[~self.index.deleted, "category"].value_counts().to_dict() if "category" in meta else {}
        return {
            "path": str(self.path) if self.path else None,
            "items": self.index.count,
            "encoder": self.encoder_info,
            "index": {"factory": self.index.factory, "dim": self.index.dim, "metric": "inner_product"},
            "categories": cats,
            "textguide_version": self.manifest.get("textguide_version", __version__),
        }


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def encoder_info(encoder: TextEncoder) -> dict[str, Any]:
    """The manifest's description of an encoder."""
    return {
        "name": encoder.name,
        "dim": encoder.dim,
        "fingerprint": encoder.fingerprint,
        "precision": getattr(encoder, "precision", "fp32"),
    }


def build_index(
    catalog_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    columns: ColumnMap | None = None,
    template: str | None = None,
    encoder: str | TextEncoder | None = None,
    precision: str = "fp32",
    factory: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    strict: bool = False,
    on_duplicate: str = "error",
    batch_size: int = 64,
    show_progress: bool | None = None,
) -> Guide:
    """Read a catalog, embed it, index it and write the guide directory atomically."""
    catalog = load_catalog(catalog_path, columns, template, strict=strict, on_duplicate=on_duplicate)  # type: ignore[arg-type]
    logger.info(catalog.report.summary() if catalog.report else "catalog loaded")
    enc = encoder if encoder is not None and not isinstance(encoder, str) else load_encoder(encoder, precision=precision)  # type: ignore[arg-type]
    cache = EmbeddingCache(cache_dir) if use_cache else None
    try:
        guide = Guide.build(
            catalog, enc, index_config=IndexConfig(factory=factory), cache=cache,
            batch_size=batch_size, show_progress=show_progress,
        )
    finally:
        if cache is not None:
            cache.close()
    guide.save(output)
    return guide
