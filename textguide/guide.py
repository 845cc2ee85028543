"""Guide: the Python retrieval API over a guide directory (an item index, optionally trained adapters)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, overload

import numpy as np

from . import __version__
from .catalog import Catalog, ColumnMap, load_catalog
from . import decisions as dec
from .decisions import category_of_items, combine
from .encoder import EmbeddingCache, SentenceTransformerEncoder, TextEncoder, encode_texts, load_encoder
from .index import INDEX_FILES, IndexConfig, ItemIndex, Where
from .storage import (ArtifactError, ConcurrentWriteError, Snapshot, check_replaceable, read_snapshot,
                      write_artifact)

if TYPE_CHECKING:  # imported lazily at run time: transfer pulls in torch
    from .transfer import TransferConfig

logger = logging.getLogger("textguide")

FORMAT = "textguide-guide"
FORMAT_VERSION = 1


@dataclass
class Hits:
    """Results of one query: item ids, scores (higher is better) and each item's metadata."""

    ids: list[str]
    scores: np.ndarray
    items: list[dict[str, Any]] = field(default_factory=list)
    method: str = "text"
    skipped: list[str] = field(default_factory=list)

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


def _id_list(ids: Any, what: str) -> list[str]:
    """``ids`` as a list of item-id strings; anything else is a ValueError naming the argument ``what``."""
    if isinstance(ids, (str, bytes)):
        raise ValueError(f"{what} must be a non-empty list of item ids, got a single string; wrap it as [{ids!r}]")
    if not isinstance(ids, (list, tuple, np.ndarray)):
        raise ValueError(f"{what} must be a list of item ids (in order), got {type(ids).__name__} {ids!r:.60}")
    out = list(ids)
    bad = [i for i in out if not isinstance(i, str)]
    if bad:
        raise ValueError(f"{what} must hold item id strings, got {type(bad[0]).__name__} {bad[0]!r:.40}")
    return out


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _where(category: str | Sequence[str] | None, where: Where | None) -> Where | None:
    from collections.abc import Mapping

    if where is not None:
        if not isinstance(where, Mapping):
            raise ValueError(f"where must be a dict of field -> value (or list of values), got {type(where).__name__} "
                             f"{where!r:.60}")
        bad = [f for f in where if not isinstance(f, str)]
        if bad:
            raise ValueError(f"where: field names must be strings, got {bad[0]!r}")
    if category is None:
        return where
    cats = [category] if isinstance(category, str) else category
    if not isinstance(cats, (list, tuple)) or not cats or not all(isinstance(c, str) and c for c in cats):
        raise ValueError(f"category must be a string or a list of strings, got {type(category).__name__} "
                         f"{category!r:.60}")
    merged = dict(where or {})
    merged["category"] = category if isinstance(category, str) else list(category)
    return merged


@dataclass
class OnboardReport:
    """What an onboarding did."""

    added: int = 0
    replaced: int = 0
    unchanged: int = 0
    items: int = 0
    seconds: float = 0.0
    precision: str = "fp32"


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
        self._twins: dict[str, TextEncoder] = {}  # the encoder's model at another precision (onboarding)
        self.path: Path | None = None
        self.manifest: dict[str, Any] = {}
        self.adapter: Any = None  # textguide.adapters.MultiTaskAdapter once trained or loaded
        self.adapter_meta: dict[str, Any] = {}
        self.coupons: dict[str, list[str]] = {}
        self._task_index: dict[str, tuple[ItemIndex, Any, ItemIndex]] = {}  # task -> (index, adapter, vectors)
        self._words: tuple[ItemIndex, Any] | None = None  # (index, WordOverlap of its titles)

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
            self._encoder = load_encoder(self.encoder_info["name"], precision=self.encoder_info.get("precision", "fp32"),
                                         backend=self.encoder_info.get("backend", "torch"))
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
    def save(self, path: str | os.PathLike[str], *, force: bool = False) -> Path:
        """Write the guide directory atomically (temp dir, then swap); returns its path.

        ``path`` must be new, empty or a guide: any other directory is refused (``ValueError``), and with
        ``force=True`` its contents are moved aside to ``<path>.replaced-<time>``, never deleted.
        """
        path = Path(path)

        def write(tmp: Path) -> dict[str, Any]:
            return self._write(tmp)

        with _writer_lock(path):
            keep_old = check_replaceable(path, FORMAT, force=force)
            self.manifest = write_artifact(path, write, keep_old=keep_old)
        self.path = path
        return path

    def _write(self, tmp: Path) -> dict[str, Any]:
        section = self.index.write(tmp)
        if self.path is not None and (self.path / "reports").is_dir():  # keep training reports across updates
            import shutil

            shutil.copytree(self.path / "reports", tmp / "reports")
        adapter = None
        if self.adapter is not None:
            from .adapters import save_adapter

            save_adapter(self.adapter, tmp / "adapter")
            adapter = {"config": self.adapter.config.to_dict(), **self.adapter_meta}
        if self.coupons:
            import pandas as pd

            rows = [(c, i) for c, items in self.coupons.items() for i in items]
            pd.DataFrame(rows, columns=["coupon_id", "item_id"]).to_parquet(tmp / "coupons.parquet", index=False)
        return {
            "adapter": adapter,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "textguide_version": __version__,
            "encoder": self.encoder_info,
            "metric": "inner_product",
            "index": section,
            "counts": {"items": self.index.count, "coupons": len(self.coupons)},
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
        # one version, read whole through one directory handle and checked byte for byte (a writer may swap a
        # new version in meanwhile: the reader then gets the old or the new one, never a mix)
        snap = read_snapshot(path, kind=FORMAT, format_version=FORMAT_VERSION, verify=verify, rebuild_hint=hint)
        manifest = snap.manifest
        _check_manifest(snap)
        index = ItemIndex.read(path, manifest["index"], snap)
        guide = cls(index, manifest["encoder"], None)
        guide.path, guide.manifest = path, manifest
        if manifest.get("adapter") is not None:
            from .adapters import CONFIG_FILE, WEIGHTS_FILE, adapter_from_bytes

            config = snap.parse(f"adapter/{CONFIG_FILE}", "an adapter config", lambda b: b)
            guide.adapter = snap.parse(f"adapter/{WEIGHTS_FILE}", "adapter weights",
                                       lambda b: adapter_from_bytes(config, b, path / "adapter", hint))
            guide.adapter_meta = {k: v for k, v in manifest["adapter"].items() if k != "config"}
        if "coupons.parquet" in snap:
            guide.coupons = snap.parse("coupons.parquet", "a Parquet table of coupon_id, item_id", _read_coupons)
        if encoder is not None:
            guide._check_encoder(encoder)
            guide._encoder = encoder
        return guide

    # ------------------------------------------------------------------ queries
    def to_hits(self, ids: list[str], scores: np.ndarray) -> Hits:
        """Hits for item ids (best first) and their scores, with each item's metadata."""
        return Hits(ids, scores[: len(ids)].astype(np.float32), self.index.items(ids))

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
            if not q.strip():
                raise ValueError(f"query {'' if single else f'{i} '}is empty (or only whitespace); give some words "
                                 f"to search for")
        vecs = self.encoder.encode(list(queries), show_progress=False)
        ids, scores = self.index.search(vecs, k, where=_where(category, where))
        hits = [self.to_hits(i, s) for i, s in zip(ids, scores)]
        return hits[0] if single else hits

    @overload
    def similar(self, item_id: str, k: int = 10, *, category: str | None = None, where: Where | None = None) -> Hits: ...
    @overload
    def similar(self, item_id: Sequence[str], k: int = 10, *, category: str | None = None, where: Where | None = None) -> list[Hits]: ...

    def similar(self, item_id, k=10, *, category=None, where=None):
        """Items most similar in text to an item (itself excluded); a list of ids -> list of hits."""
        k = _check_k(k)
        single = isinstance(item_id, str)
        if not single and (not isinstance(item_id, (list, tuple)) or not item_id):
            raise ValueError(f"item_id must be a string or a non-empty list of strings, got {item_id!r}")
        ids = [item_id] if single else list(item_id)
        for i in ids:
            if not isinstance(i, str):
                raise ValueError(f"item ids must be strings, got {type(i).__name__} {i!r}")
        vecs = self.index.vectors(ids)  # KeyError names an unknown id
        found, scores = self.index.search(vecs, k, where=_where(category, where), exclude=[[i] for i in ids])
        hits = [self.to_hits(f, s) for f, s in zip(found, scores)]
        return hits[0] if single else hits

    # ------------------------------------------------------------------ onboarding
    def onboard(
        self,
        catalog: Catalog | str | os.PathLike[str],
        *,
        category: str | None = None,
        replace: bool = False,
        columns: ColumnMap | None = None,
        template: str | None = None,
        cache: EmbeddingCache | None = None,
        save: bool = True,
        batch_size: int = 64,
        precision: str | None = None,
        low_priority: bool = False,
        backend: str | None = None,
        show_progress: bool | None = None,
    ) -> "OnboardReport":
        """Add a new category's products to the live guide, without rebuilding or retraining.

        The products are embedded, added to a copy of the index and, when the guide has a directory,
        written there atomically; only then does this object switch to the new state, so concurrent
        readers see the old or the new state and a failure leaves everything as it was. Items whose id
        and text are already present are skipped (re-onboarding is idempotent); an id present with a
        different text is an error unless ``replace=True``. ``category`` sets the category of every
        new item (it becomes filterable at once). A catalog file keeps the guide's own fields where it has
        them (:attr:`extra_fields`, e.g. the outfit slot field, so ``complete_outfit(slot=...)`` finds the new
        items), besides ``columns.extra``.

        Embedding is nearly all of the time. ``batch_size`` sets the encoder's batch; ``precision="bf16"``
        embeds the new items with the guide's sentence-transformers model in bfloat16 (AMX on recent Intel
        CPUs: ~1.6x faster on the development machine, cosine to fp32 vectors >= 0.9999 on real titles, so
        they sit with fp32-built items without a rebuild). Queries keep using the guide's own encoder.
        ``low_priority=True`` embeds in a short-lived worker thread at the lowest CPU priority (Linux niceness
        is per thread, and the encoder's worker threads inherit it), so that queries served by this process
        and others keep their latency while it runs; the calling thread's priority is untouched.
        """
        t0 = time.perf_counter()
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if precision not in (None, "fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if not isinstance(catalog, Catalog):
            catalog = load_catalog(catalog, columns, template, keep=self.extra_fields)
        meta = catalog.metadata.copy()
        meta["text"] = catalog.texts
        if category is not None:
            if not isinstance(category, str) or not category.strip():
                raise ValueError(f"category must be a non-empty string, got {category!r}")
            meta["category"] = category
        old = self.index
        keep, unchanged, clashes = [], [], []
        texts = old.metadata["text"] if "text" in old.metadata.columns else None
        for j, item_id in enumerate(catalog.ids):
            if item_id in old:
                same = texts is not None and texts.iloc[old.row_of[item_id]] == catalog.texts[j]
                if same and not replace:
                    unchanged.append(item_id)
                    continue
                clashes.append(item_id)
            keep.append(j)
        if clashes and not replace:
            raise ValueError(
                f"{len(clashes)} ids already in the guide with a different text, first {clashes[:5]}; "
                f"use new ids, or pass replace=True (--replace) to replace those items"
            )
        report = OnboardReport(added=len(keep) - len(clashes), replaced=len(clashes), unchanged=len(unchanged),
                               precision=precision or self.encoder_info.get("precision", "fp32"))
        if keep:  # the encoder (or its twin) is loaded only when something needs embedding
            encoder = self._onboard_encoder(precision, backend)

            def embed() -> np.ndarray:
                return encode_texts(encoder, [catalog.texts[j] for j in keep], cache=cache, batch_size=batch_size,
                                    show_progress=show_progress)

            vecs = run_in_thread(embed) if low_priority else embed()
            new = old.copy()
            new.add(vecs, [catalog.ids[j] for j in keep], meta.iloc[keep].reset_index(drop=True), replace=replace)
            before = self.adapter_meta
            self.adapter_meta = self._onboarded_decisions(new)  # new categories start on text similarity
            try:
                self._swap(new, save)
            except BaseException:
                self.adapter_meta = before
                raise
        report.seconds = time.perf_counter() - t0
        report.items = self.index.count
        logger.info("onboarded: %s", report)
        return report

    @property
    def extra_fields(self) -> tuple[str, ...]:
        """The guide's metadata fields beyond the standard catalog fields (e.g. an outfit guide's slot field)."""
        standard = {"id", "title", "text", *ColumnMap().optional()}
        return tuple(str(c) for c in self.index.metadata.columns if c not in standard)

    def use_onboard_encoder(self, encoder: TextEncoder, precision: str, backend: str = "torch") -> None:
        """Use ``encoder`` (this guide's model at ``precision`` / ``backend``) when :meth:`onboard` asks for that
        precision, instead of loading it then."""
        self._twins[precision if backend == "torch" else f"{precision}-{backend}"] = encoder

    def _onboard_encoder(self, precision: str | None, backend: str | None = None) -> TextEncoder:
        """The guide's encoder, or its model at another precision or backend (loaded once, kept for later)."""
        own = getattr(self.encoder, "precision", "fp32")
        own_backend = getattr(self.encoder, "backend", "torch")
        if (precision is None or precision == own) and (backend is None or backend == own_backend):
            return self.encoder
        precision, backend = precision or own, backend or own_backend
        key = precision if backend == "torch" else f"{precision}-{backend}"
        if key in self._twins:
            return self._twins[key]
        if not isinstance(self.encoder, SentenceTransformerEncoder):
            raise ValueError(
                f"precision={precision!r} needs a sentence-transformers encoder; this guide uses "
                f"{self.encoder_info.get('name')!r}: leave precision unset"
            )
        twin = SentenceTransformerEncoder(self.encoder.model_path, precision=precision,  # type: ignore[arg-type]
                                          max_seq_length=self.encoder.model.max_seq_length, backend=backend)
        twin.name = self.encoder.name
        self._twins[key] = twin
        return twin

    def fine_tune(
        self,
        sequences: Sequence[Sequence[str]],
        *,
        valid_fraction: float = 0.2,
        config: TransferConfig | None = None,
        seed: int = 0,
        save: bool = True,
    ) -> dict[str, Any]:
        """The optional few-shot step after onboarding: when a new category already has some interactions,
        fine-tune the recommendation adapter on them with model-based transfer and the negative-transfer guard.

        ``sequences`` are users' item-id sequences, oldest first (their items must be in the guide). A
        ``valid_fraction`` of them (at least one) is held out: its last item is the validation target. The
        candidates of ``config`` (a :class:`~textguide.transfer.TransferConfig`; default fine-tune and L2-SP)
        each start from the current adapter, and the adapter is replaced only by one that beats it on that
        validation split (:func:`textguide.transfer.few_shot`). The guide is then written atomically like
        :meth:`onboard`; the report (returned, and saved as ``reports/fine_tune.json`` when the guide has a
        directory) has every candidate's numbers and what was refused.
        """
        from .tasks.recommend import SequenceTask, next_item_examples
        from .transfer import few_shot, save_transfer_report

        self.require_task("recommend")
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
        if isinstance(sequences, str) or not len(sequences):
            raise ValueError("sequences must be a non-empty list of item-id lists (each user's items, oldest first)")
        live = np.flatnonzero(~self.index.deleted)
        pos = {self.index.ids[r]: j for j, r in enumerate(live)}
        seqs, unknown = [], []
        for n, seq in enumerate(sequences):
            if isinstance(seq, str) or not isinstance(seq, Sequence):
                raise ValueError(f"sequence {n} must be a list of item ids, got {type(seq).__name__} {seq!r:.60}")
            unknown += [i for i in seq if i not in pos]
            ids = list(dict.fromkeys(seq))  # a repeat purchase is not a new item
            if len(ids) >= 2:
                seqs.append([pos[i] for i in ids if i in pos])
        if unknown:
            raise KeyError(f"{len(unknown)} item ids in sequences are not in the guide, first {unknown[:5]}; "
                           "onboard those items first")
        if len(seqs) < 2:
            raise ValueError(f"need at least 2 sequences of >= 2 distinct items (one to train, one to validate), "
                             f"got {len(seqs)}")
        order = np.random.default_rng(seed).permutation(len(seqs))
        n_valid = min(max(1, round(valid_fraction * len(seqs))), len(seqs) - 1)
        valid, train = [seqs[i] for i in order[:n_valid]], [seqs[i] for i in order[n_valid:]]
        hist, targ = next_item_examples(train)
        task = SequenceTask(self.index.embeddings[live], hist, targ, [s[:-1][-50:] for s in valid], [s[-1] for s in valid])
        result = few_shot(self.adapter, task, config)
        report = dict(result.report, sequences={"train": len(train), "valid": len(valid)})
        if result.method_chosen != "current":
            old = (self.adapter, self.adapter_meta)
            self.set_adapter(result.model, {**self.adapter_meta, "fine_tuned": {
                "method": result.method_chosen, "examples": len(task), "summary": report["summary"]}})
            try:
                self._swap(self.index, save)  # writes the guide with the new adapter, atomically
            except BaseException:
                self.adapter, self.adapter_meta = old
                self._on_index_change()
                raise
        if save and self.path is not None:
            save_transfer_report(self, report, "fine_tune.json")
        return report

    def remove(self, item_ids: Sequence[str], *, save: bool = True) -> None:
        """Remove items from the guide (atomically on disk, like :meth:`onboard`); unknown ids raise ``KeyError``."""
        if isinstance(item_ids, str):
            raise ValueError(f"item_ids must be a list of ids, got a single string; wrap it as [{item_ids!r}]")
        new = self.index.copy()
        new.remove(list(item_ids))
        self._swap(new, save)

    def _swap(self, new_index: ItemIndex, save: bool) -> None:
        """Persist (if this guide has a directory) and only then switch to ``new_index``.

        The directory is written from a staged shallow copy of this guide, so threads querying this
        object keep the old index until the new state is safely on disk, and a failed write leaves
        them on the old one. A directory changed by another writer since this guide was loaded is an
        error (the other writer's items would be lost): call :meth:`refresh` and try again.
        """
        if save and self.path is not None:
            import copy

            staged = copy.copy(self)
            staged.index = new_index
            manifest = self._write_checked(staged._write)
            self.index, self.manifest = new_index, manifest
        else:
            self.index = new_index
        self._on_index_change()

    def _write_checked(self, write: Any) -> dict[str, Any]:
        """Write this guide's directory with ``write`` under the writer lock, unless another writer changed it
        since this object read it (``ConcurrentWriteError``: its update would be lost; refresh and try again)."""
        import json

        assert self.path is not None
        with _writer_lock(self.path):
            try:
                on_disk = json.loads((self.path / "manifest.json").read_text(encoding="utf-8")).get("files")
            except (OSError, ValueError, AttributeError):
                on_disk = None  # no readable guide there: nothing to lose
            if on_disk is not None and self.manifest.get("files") and on_disk != self.manifest["files"]:
                raise ConcurrentWriteError(
                    f"{self.path} was changed by another writer since this guide was loaded; "
                    f"call guide.refresh() and onboard again"
                )
            return write_artifact(self.path, write)

    def _on_index_change(self) -> None:
        """Drop derived state (adapted item vectors, the title word table) that depends on the index."""
        self._task_index = {}
        self._words = None

    def refresh(self) -> bool:
        """Reload from disk if another process changed the guide directory; True if reloaded."""
        if self.path is None:
            return False
        try:
            import json

            on_disk = json.loads((self.path / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        if on_disk.get("files") == self.manifest.get("files"):
            return False
        for attempt in range(3):
            try:
                fresh = type(self).load(self.path, self._encoder)
                break
            except (ValueError, OSError, RuntimeError):
                # a writer swapped a new version in between load's checksum pass and its reads
                # (its parts then disagree): read again; a directory that stays bad raises
                if attempt == 2:
                    raise
                logger.info("%s changed while refreshing; reading it again", self.path)
        self.__dict__.update(fresh.__dict__)
        return True

    # ------------------------------------------------------------------ adapters: recommend, outfits, coupons
    def set_adapter(self, model: Any, meta: dict[str, Any] | None = None) -> None:
        """Attach a trained :class:`~textguide.adapters.MultiTaskAdapter` (saved with the guide).

        ``meta`` may hold ``slot_field`` (metadata column of outfit slots) and ``slots`` (its vocabulary,
        in the model's slot order), ``profile`` ("text" when coupon profiles are verbalised and embedded),
        and free-form training facts (metrics, data, time).
        """
        if model.config.input_dim != self.index.dim:
            raise ValueError(
                f"adapter expects {model.config.input_dim}-d text embeddings, this guide has {self.index.dim}-d; "
                f"train it on this guide's embeddings"
            )
        self.adapter = model
        self.adapter_meta = dict(meta or {})
        self.adapter_meta.setdefault("trained_categories", self._live_values("category"))  # see dec.py
        self._task_index = {}

    def require_task(self, task: str) -> None:
        """Raise ValueError unless this guide has a trained adapter for ``task``."""
        if self.adapter is None or task not in self.adapter.config.tasks:
            have = list(self.adapter.config.tasks) if self.adapter is not None else []
            raise ValueError(
                f"this guide has no trained {task!r} adapter (it has {have or 'none'}); train one with "
                f"`textguide train`, or use the text-similarity fallback (method='text')"
            )

    def adapter_weight(self, task: str, method: str, categories: Sequence[str] | None, rows: Sequence[int],
                       field: str = "category") -> float:
        """The adapter's share in a query's scores: 1 adapter, 0 text, between a blend. ``auto`` follows the
        decisions of ``categories`` (default: the values of ``field`` of ``rows``), see :mod:`textguide.decisions`."""
        if method not in ("auto", "adapter", "text", "blend"):
            raise ValueError(f"method must be 'auto', 'adapter', 'text' or 'blend', got {method!r}")
        if method in ("adapter", "text"):
            return 1.0 if method == "adapter" else 0.0
        has = self.adapter is not None and task in self.adapter.config.tasks
        if categories is None:
            col = self.index.metadata[field] if field in self.index.metadata.columns else None
            categories = [] if col is None else category_of_items(col.iloc[list(rows)].tolist())
        weight = combine(self.adapter_meta, task, categories, has)
        if method == "blend":
            self.require_task(task)
            return weight if 0.0 < weight < 1.0 else 0.5
        return weight

    def _live_values(self, field: str, index: ItemIndex | None = None) -> list[str]:
        index = self.index if index is None else index
        if field not in index.metadata.columns:
            return []
        values = category_of_items(index.metadata.loc[~index.deleted, field].unique().tolist())
        return sorted({v for v in values if v is not None})

    def _task_field(self, task: str) -> str:
        from .tasks import TASKS

        return TASKS[task].category_field(self.adapter_meta)

    def _onboarded_decisions(self, new_index: ItemIndex) -> dict[str, Any]:
        """The adapter section with a text-similarity decision for every category ``new_index`` adds."""
        meta = self.adapter_meta
        if self.adapter is None:
            return meta
        for task in self.adapter.config.tasks:
            field = self._task_field(task)
            old = set(self._live_values(field))
            col = new_index.metadata[field] if field in new_index.metadata.columns else None
            for value in sorted(set(self._live_values(field, new_index)) - old):
                trained = dec.trained_categories(meta, task)
                if value in dec.recorded(meta, task) or (trained is not None and value in trained):
                    continue
                count = int(((col == value).to_numpy() & ~new_index.deleted).sum()) if col is not None else 0
                meta = dec.with_decision(meta, task, value, dec.Decision(0.0, "onboarded", {
                    "note": "onboarded after training: text similarity until observe() shows the adapter helps",
                    "items": count, "onboarded_at": dec.now()}))
        return meta

    def decisions(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per task, per category it serves: the method (adapter / text / blend), adapter weight, source and
        evidence (see :mod:`textguide.decisions`). Empty without an adapter: everything is text similarity."""
        if self.adapter is None:
            return {}
        out = {}
        for task in self.adapter.config.tasks:
            cats = sorted(set(self._live_values(self._task_field(task))) | set(dec.recorded(self.adapter_meta, task)))
            out[task] = {c: dec.resolve(self.adapter_meta, task, c, True).to_dict() for c in cats}
        return out

    def set_decision(self, category: str, method: str, *, task: str = "recommend", weight: float | None = None,
                     note: str | None = None, save: bool = True) -> None:
        """Override how ``category`` of ``task`` is served: ``"adapter"``, ``"text"``, ``"blend"`` (with
        ``weight``, the adapter's share) or ``"auto"`` (forget the recorded decision). Written atomically."""
        self.require_task(task)
        if method == "auto":
            table = {t: dict(v) for t, v in self.adapter_meta.get(dec.KEY, {}).items()}
            table.get(task, {}).pop(category, None)
            meta = {**self.adapter_meta, dec.KEY: table}
        else:
            decision = dec.Decision(dec.weight_of_method(method, weight), "user",
                                          {"note": note or "set by hand", "set_at": dec.now()})
            meta = dec.with_decision(self.adapter_meta, task, category, decision)
        self._write_meta(meta, save)

    def _write_meta(self, meta: dict[str, Any], save: bool) -> None:
        """Switch to a new adapter section and write the guide atomically (restored on failure)."""
        before, self.adapter_meta = self.adapter_meta, meta
        try:
            self._swap(self.index, save)
        except BaseException:
            self.adapter_meta = before
            raise

    def observe(
        self,
        sequences: Sequence[Sequence[str]],
        category: str,
        *,
        task: str = "recommend",
        k: int = 10,
        select_fraction: float = 0.5,
        fine_tune: bool = False,
        fine_tune_fraction: float = 0.5,
        min_users: int = 20,
        n_boot: int = 2000,
        seed: int = 0,
        save: bool = True,
    ) -> dict[str, Any]:
        """Evidence from a category's interactions: measure adapter vs text vs blends, switch only on a
        significant gain, and record the decision (written atomically with the guide).

        ``sequences`` are users' item ids, oldest first (``task="recommend"``; the target is each sequence's
        last item of ``category``, ranked among the category's items with the earlier items as history), or
        outfits (``task="outfit"``: the target is the outfit's item of slot ``category``, the other items the
        partial outfit), or coupon records (``task="coupon"``, ``category`` a coupon family: ``{"history": [...],
        "offered": [coupon ids], "redeemed": [coupon ids]}`` per user, scored by the AUC of the redeemed coupons
        of the family among those offered, see :meth:`textguide.tasks.coupon.Coupon.observe_users`).
        Users are split into a selection part (picks the best adapter weight among text, the
        blends and the adapter by hit@``k``, AUC for coupons) and a held-out part, where the pick replaces the current decision
        only if the 95 % paired-bootstrap interval of its per-user gain is above 0
        (:func:`textguide.decisions.decide`). With ``fine_tune=True`` (recommend only), a ``fine_tune_fraction``
        of the users first goes to :meth:`fine_tune` (its own guard decides whether the adapter changes) and
        the evaluation uses the others. Returns the report (also ``reports/observe.json``).
        """
        from .tasks import TASKS

        if task not in TASKS:
            names = [repr(t) for t in TASKS]
            raise ValueError(f"observe supports task {', '.join(names[:-1])} or {names[-1]}, got {task!r}")
        self.require_task(task)
        k = _check_k(k)
        if not isinstance(category, str) or not category:
            raise ValueError(f"category must be a non-empty string, got {category!r}")
        if isinstance(sequences, str) or not len(sequences):
            raise ValueError("sequences must be a non-empty list of item-id lists")
        spec = TASKS[task]
        if fine_tune and not spec.fine_tunes:
            tunable = [name for name, t in TASKS.items() if t.fine_tunes]
            raise ValueError(f"fine_tune=True is supported for task={' or '.join(map(repr, tunable))} only")
        spec.check_observable(self, category)
        report: dict[str, Any] = {"task": task, "category": category, "sequences": len(sequences)}
        if fine_tune:
            tune = dec.split_users(len(sequences), fine_tune_fraction, seed + 1)
            report["fine_tune"] = self.fine_tune([sequences[i] for i in np.flatnonzero(tune)], seed=seed, save=False)
            sequences = [sequences[i] for i in np.flatnonzero(~tune)]
        current = dec.resolve(self.adapter_meta, task, category, True)
        weights = sorted({*dec.candidate_weights(True), current.weight})
        scores, extra, candidates = spec.observe_users(self, sequences, category, weights, k)
        users = len(scores[current.weight])
        decision = dec.decide(scores, current.weight, dec.split_users(users, select_fraction, seed),
                              metric=spec.observe_metric(k), min_users=min_users, n_boot=n_boot, seed=seed,
                              extra=extra)
        decision.evidence.update(previous=current.to_dict(), candidates=candidates)
        report["users"] = users
        return self._record_observed(task, category, decision, report, save)

    def _record_observed(self, task: str, category: str, decision: dec.Decision, report: dict[str, Any],
                         save: bool) -> dict[str, Any]:
        """Record an observed decision (written atomically with the guide) and its report (reports/observe.json)."""
        report.update(decision=decision.to_dict(), summary=decision.evidence["verdict"])
        self._write_meta(dec.with_decision(self.adapter_meta, task, category, decision), save)
        if save and self.path is not None:
            from .transfer import save_transfer_report

            save_transfer_report(self, report, "observe.json")
        logger.info("observe %s/%s: %s", task, category, report["summary"])
        return report

    def task_vectors(self, task: str) -> ItemIndex:
        """Exact inner-product index over the adapted item vectors of ``task`` (live items only).

        Cached per (index object, adapter): a reader that computes it while an onboarding swaps the index
        in can never leave vectors of the old index behind for later queries."""
        index, adapter = self.index, self.adapter
        cached = self._task_index.get(task)
        if cached is None or cached[0] is not index or cached[1] is not adapter:
            from .adapters import encode_items

            live = np.flatnonzero(~index.deleted)
            vecs = encode_items(adapter, index.embeddings[live], task)
            meta = index.metadata.iloc[live].reset_index(drop=True)
            cached = (index, adapter, ItemIndex.build(vecs, [index.ids[r] for r in live], meta,
                                                      IndexConfig(factory="Flat")))
            self._task_index[task] = cached
        return cached[2]

    def title_words(self) -> Any:
        """The :class:`~textguide.words.WordOverlap` of the index rows' titles (idf over this catalog).

        Cached per index object, like :meth:`task_vectors`: after an onboarding it is rebuilt, so the new items'
        words count and the idf follows the catalog."""
        index, cached = self.index, self._words
        if cached is None or cached[0] is not index:
            from .words import WordOverlap

            cached = (index, WordOverlap(index.metadata["title"].astype(str).tolist()))
            self._words = cached
        return cached[1]

    def rows(self, item_ids: Sequence[str], what: str, on_unknown: str) -> tuple[list[int], list[str]]:
        """Index rows of known ``item_ids`` and the unknown ids (``on_unknown``: "error" raises KeyError,
        "skip" drops them unless all are unknown); ``what`` names the argument in errors."""
        if isinstance(item_ids, str):
            raise ValueError(f"{what} must be a list of item ids, got a single string; wrap it as [{item_ids!r}]")
        if on_unknown not in ("error", "skip"):
            raise ValueError(f"on_unknown must be 'error' or 'skip', got {on_unknown!r}")
        ids = list(item_ids)
        unknown = [i for i in ids if i not in self.index]
        if unknown and (on_unknown == "error" or len(unknown) == len(ids)):
            raise KeyError(
                f"unknown item ids in {what}: {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
                f"({len(unknown)} of {len(ids)}); onboard them first, or pass on_unknown='skip' to ignore them"
            )
        if unknown:
            logger.warning("%s: skipping %d unknown item ids %s", what, len(unknown), unknown[:5])
        return [self.index.row_of[i] for i in ids if i in self.index], unknown

    def recommend(
        self,
        history: Sequence[str],
        k: int = 10,
        *,
        category: str | Sequence[str] | None = None,
        where: Where | None = None,
        exclude_history: bool = True,
        on_unknown: str = "error",
        method: str = "auto",
    ) -> Hits:
        """Next items for a user with this history (item ids, oldest first).

        Uses the trained recommendation adapter; ``method='text'`` (or a guide without one) ranks by
        cosine to the mean history embedding. History items are excluded unless ``exclude_history=False``.
        Unknown ids raise ``KeyError`` (``on_unknown='skip'`` drops them and lists them in ``hits.skipped``).
        """
        from .tasks import TASKS

        return TASKS["recommend"].serve(self, _id_list(history, "history"), _check_k(k), category=category,
                                        where=_where(category, where), exclude_history=exclude_history,
                                        on_unknown=on_unknown, method=method)

    def complete_outfit(
        self,
        items: Sequence[str],
        k: int = 10,
        *,
        slot: str | None = None,
        candidates: Sequence[str] | None = None,
        on_unknown: str = "error",
        method: str = "auto",
    ) -> Hits:
        """Items that go with a partial outfit (not near-duplicates of it).

        ``slot`` names the wanted slot or category (a value of the guide's slot field, e.g. "shoe" or
        "Shoes"); with ``candidates`` only those ids are ranked (fill-in-the-blank), otherwise the whole
        catalog of that slot is searched. A category onboarded after the adapter was trained works too: the
        adapter's "unknown slot" query, searched within that category. The input items are never returned.
        """
        from .tasks import TASKS

        return TASKS["outfit"].serve(self, _id_list(items, "items"), _check_k(k), slot=slot, candidates=candidates,
                                     on_unknown=on_unknown, method=method)

    def add_coupons(self, coupons: dict[str, Sequence[str]], *, replace: bool = False, save: bool = True) -> None:
        """Register coupons (coupon id -> ids of the products it covers); new coupons need no retraining."""
        new = dict(self.coupons)
        for cid, items in coupons.items():
            items = list(items)
            if not items:
                raise ValueError(f"coupon {cid!r} covers no products; give the product ids it applies to")
            unknown = [i for i in items if i not in self.index]
            if unknown:
                raise KeyError(f"coupon {cid!r} covers unknown item ids {unknown[:5]}; onboard those products first")
            if cid in new and new[cid] != items and not replace:
                raise ValueError(f"coupon {cid!r} already exists with other products; pass replace=True")
            new[cid] = items
        old, self.coupons = self.coupons, new
        if save and self.path is not None:
            try:
                self.manifest = self._write_checked(self._write)
            except BaseException:
                self.coupons = old
                raise

    def rank_coupons(
        self,
        history: Sequence[str],
        coupons: Sequence[str] | dict[str, Sequence[str]] | None = None,
        *,
        profile: dict[str, Any] | None = None,
        activity: dict[str, float] | None = None,
        on_unknown: str = "error",
        method: str = "auto",
    ) -> Hits:
        """Rank coupons for a user by the probability of redemption (``hits.scores`` are probabilities).

        ``coupons`` are ids registered in the guide (default: all) or a mapping coupon id -> product ids
        for coupons never seen before. ``profile`` is a dict of user fields (age, income, ...), verbalised
        and embedded. ``activity`` is what is known about the household so far: ``redemptions``,
        ``campaigns`` (received), ``baskets`` and ``spend``; missing fields count as the training average.
        A guide trained by ``textguide train completejourney`` serves the coupon hybrid
        (:mod:`textguide.coupon_hybrid`: coupon redemption prior + household activity + the adapter's affinity;
        a coupon never seen in training gets the global rate as prior). Without a coupon adapter (or
        ``method='text'``), scores are the cosine between the user's mean history and the coupon's mean
        product embedding, mapped to [0, 1].
        A registered coupon
        whose products were partly removed is ranked on those left; one with none left is skipped, listed in
        ``hits.skipped`` (after any unknown history ids) with a warning.
        """
        from .tasks import TASKS

        return TASKS["coupon"].serve(self, _id_list(history, "history"), coupons, profile=profile, activity=activity,
                                     on_unknown=on_unknown, method=method)

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
            "coupons": len(self.coupons),
            "serving": self.decisions(),  # per task and category: method, adapter weight, source, evidence
            "adapter": None if self.adapter is None else {
                "tasks": list(self.adapter.config.tasks), "sharing": self.adapter.config.sharing,
                "dim": self.adapter.config.dim, **self.adapter_meta},
            "textguide_version": self.manifest.get("textguide_version", __version__),
        }


def _read_coupons(data: bytes) -> dict[str, list[str]]:
    import io

    import pandas as pd

    frame = pd.read_parquet(io.BytesIO(data))
    if not {"coupon_id", "item_id"} <= set(frame.columns):
        raise ValueError(f"expected columns coupon_id, item_id, found {list(frame.columns)}")
    return {str(c): [str(i) for i in g] for c, g in frame.groupby("coupon_id", sort=False)["item_id"]}


def _check_manifest(snap: Snapshot) -> None:
    """The guide-specific structure of a manifest (storage checked the format, version and file list)."""
    m, where, hint = snap.manifest, f"{snap.directory / 'manifest.json'}", snap.rebuild_hint
    enc = m.get("encoder")
    if not isinstance(enc, dict) or not isinstance(enc.get("name"), str) or not enc["name"].strip() \
            or isinstance(enc.get("dim"), bool) or not isinstance(enc.get("dim"), int) or enc["dim"] <= 0:
        raise ArtifactError(f"{where}: 'encoder' must be an object with a non-empty 'name' and a positive integer "
                            f"'dim', found {enc!r:.120}; the manifest is damaged: {hint}")
    if not isinstance(m.get("index"), dict):
        raise ArtifactError(f"{where}: 'index' must be an object describing the FAISS index, found "
                            f"{m.get('index')!r:.80}; the manifest is damaged: {hint}")
    if m["index"].get("dim") != enc["dim"]:
        raise ArtifactError(f"{where}: encoder dim {enc['dim']} differs from index dim {m['index'].get('dim')!r}; "
                            f"the manifest is damaged: {hint}")
    required = INDEX_FILES if "shards" not in m["index"] else ()  # a sharded index checks its shards' files
    missing = [f for f in required if f not in m["files"]]
    if missing:
        raise ArtifactError(f"{where}: 'files' does not list {missing}; the manifest is damaged: {hint}")
    adapter = m.get("adapter")
    adapter_files = sorted(f for f in m["files"] if f.startswith("adapter/"))
    if adapter is None and adapter_files:  # a null, missing or renamed key would silently serve text similarity
        raise ArtifactError(f"{where}: lists adapter files {adapter_files} but its 'adapter' section is "
                            f"{'null' if 'adapter' in m else 'missing'}; the manifest is damaged: {hint}")
    if adapter is not None and (not isinstance(adapter, dict) or not isinstance(adapter.get("config"), dict)
                                or not adapter_files):
        raise ArtifactError(f"{where}: 'adapter' must be null or an object with a 'config' object, with the adapter "
                            f"files listed; found {adapter!r:.80} and files {adapter_files}; the manifest is damaged: "
                            f"{hint}")
    for key, kind in (("counts", dict), ("metric", str)):
        if key in m and not isinstance(m[key], kind):
            raise ArtifactError(f"{where}: {key!r} must be a {kind.__name__}, found {m[key]!r:.60}; {hint}")


def verbalise_profile(profile: dict[str, Any]) -> str:
    """A user profile as text (:func:`textguide.tasks.coupon.verbalise_profile`)."""
    from .tasks.coupon import verbalise_profile as verbalise

    return verbalise(profile)


@contextlib.contextmanager
def _writer_lock(path: Path):
    """Exclusive lock (a sibling ``.<name>.lock`` file) serialising onboarding writers of one guide directory.

    The kernel drops it when its holder dies, so a killed writer never blocks the next one.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: the manifest check alone guards against lost updates
        yield
        return
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_in_thread(fn: Any, niceness: int = 19, name: str = "textguide-low-priority") -> Any:
    """``fn()`` in a new thread at ``niceness`` (Linux: per thread, inherited by the threads it starts, such as
    torch's OpenMP workers; 0 leaves it); its exception is re-raised here. Where thread priorities cannot be set,
    it simply runs at normal priority. The caller's own priority is untouched."""
    import threading

    out: dict[str, Any] = {}

    def work() -> None:
        try:
            if niceness:
                with contextlib.suppress(OSError, AttributeError):
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out["error"] = e

    worker = threading.Thread(target=work, name=name)
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def encoder_info(encoder: TextEncoder) -> dict[str, Any]:
    """The manifest's description of an encoder."""
    return {
        "name": encoder.name,
        "dim": encoder.dim,
        "fingerprint": encoder.fingerprint,
        "precision": getattr(encoder, "precision", "fp32"),
        "backend": getattr(encoder, "backend", "torch"),
    }


def build_index(
    catalog_path: str | os.PathLike[str],
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
    batch_size: int = 64,
    show_progress: bool | None = None,
    force: bool = False,
) -> Guide:
    """Read a catalog, embed it, index it and write the guide directory atomically.

    ``output`` must be new, empty or a guide; ``force=True`` writes into any other directory after moving its
    contents aside to ``<output>.replaced-<time>`` (nothing is deleted). ``backend="auto"`` encodes a
    sentence-transformers model on OpenVINO when installed (docs/benchmarks.md section 4), else on torch; the
    manifest records the backend used, and the guide encodes queries with it.
    """
    if not force:
        check_replaceable(output, FORMAT)  # refuse before the slow embedding
    catalog = load_catalog(catalog_path, columns, template, strict=strict, on_duplicate=on_duplicate)  # type: ignore[arg-type]
    logger.info(catalog.report.summary() if catalog.report else "catalog loaded")
    enc = encoder if encoder is not None and not isinstance(encoder, str) else load_encoder(encoder, precision=precision, backend=backend)  # type: ignore[arg-type]
    cache = EmbeddingCache(cache_dir) if use_cache else None
    try:
        guide = Guide.build(
            catalog, enc, index_config=IndexConfig(factory=factory), cache=cache,
            batch_size=batch_size, show_progress=show_progress,
        )
    finally:
        if cache is not None:
            cache.close()
    guide.save(output, force=force)
    return guide
