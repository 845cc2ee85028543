"""ONNX Runtime / OpenVINO backends: errors (fast) and agreement with the torch model (real, packaged MiniLM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from textguide.backends import BACKENDS, BackendError, backend_available, check_backend
from textguide.encoder import AUTO_BACKEND, HashingEncoder, load_encoder
from textguide.guide import Guide, build_index
from textguide.catalog import sample_catalog_path


def test_unknown_backend_is_an_error_listing_the_choices() -> None:
    with pytest.raises(ValueError, match="backend must be one of torch, onnx, onnx-int8"):
        check_backend("tensorrt")
    assert check_backend("onnx") == "onnx"


def test_backend_needs_a_sentence_transformers_encoder() -> None:
    with pytest.raises(ValueError, match="needs a sentence-transformers encoder"):
        load_encoder("hashing:16", backend="onnx")


def test_bf16_is_a_torch_only_precision() -> None:
    with pytest.raises(ValueError, match="applies to backend='torch' only"):
        load_encoder(None, precision="bf16", backend="onnx")


@pytest.fixture(scope="module")
def torch_vectors() -> tuple[list[str], np.ndarray]:
    texts = [f"cotton jersey top {i}, short sleeves, colour {c}" for i, c in enumerate(["black", "white", "red"] * 5)]
    texts += ["x", "long description " * 300]  # a one-token text and one past max_seq_length
    return texts, load_encoder().encode(texts)


@pytest.mark.real
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_backend_matches_torch_and_has_its_own_fingerprint(backend: str, torch_vectors, tmp_path: Path) -> None:
    if not backend_available(backend):
        pytest.skip(f"{backend} packages not installed")
    texts, ref = torch_vectors
    enc = load_encoder(backend=backend)
    assert enc.fingerprint != load_encoder().fingerprint and backend in enc.fingerprint
    vecs = enc.encode(texts, batch_size=4)  # several length-sorted batches, back in input order
    cos = (vecs * ref).sum(1)
    assert vecs.shape == ref.shape and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert cos.min() > (0.999 if not backend.endswith("int8") else 0.95), cos.min()
    assert list(tmp_path.iterdir()) == []  # nothing exported outside the cache


@pytest.mark.real
def test_build_index_records_the_backend_and_reloads_with_it(tmp_path: Path) -> None:
    if not backend_available("onnx"):
        pytest.skip("onnxruntime not installed")
    guide = build_index(sample_catalog_path(), tmp_path / "g", backend="onnx")
    assert guide.manifest["encoder"]["backend"] == "onnx"
    loaded = Guide.load(tmp_path / "g")
    assert loaded.encoder.backend == "onnx" and loaded.encoder.fingerprint == guide.manifest["encoder"]["fingerprint"]
    assert loaded.search("linen shirt", k=3).ids == guide.search("linen shirt", k=3).ids


@pytest.mark.real
@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_backend_encodes_from_several_threads_at_once(backend: str, torch_vectors) -> None:
    """A server encodes queries from a thread pool: concurrent calls must each get their own text's vector."""
    if not backend_available(backend):
        pytest.skip(f"{backend} packages not installed")
    import threading

    texts, ref = torch_vectors
    enc = load_encoder(backend=backend)
    got: dict[int, list[np.ndarray]] = {i: [] for i in range(len(texts))}
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for r in range(3 * len(texts)):
                i = (offset + r) % len(texts)
                got[i].append(enc.encode([texts[i]])[0])
        except BaseException as e:  # noqa: BLE001 - collected and re-raised below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(o,)) for o in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    for i, vecs in got.items():
        assert len(vecs) == 18 and min(float(v @ ref[i]) for v in vecs) > 0.999, texts[i][:40]


def test_auto_backend_leaves_other_encoders_on_their_own_runtime() -> None:
    from textguide.guide import encoder_info

    enc = load_encoder("hashing:16", backend="auto")  # an explicit backend here is an error (test above)
    assert isinstance(enc, HashingEncoder) and encoder_info(enc)["backend"] == "torch"


@pytest.mark.real
def test_auto_backend_is_openvino_when_installed_else_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import textguide.backends as backends

    if not backend_available(AUTO_BACKEND):
        pytest.skip(f"{AUTO_BACKEND} not installed")
    auto = load_encoder(backend="auto")
    assert auto.backend == AUTO_BACKEND and auto.fingerprint == load_encoder(backend=AUTO_BACKEND).fingerprint
    assert load_encoder(precision="bf16", backend="auto").backend == "torch"  # bf16 is a torch precision
    monkeypatch.setattr(backends, "backend_available", lambda b: b == "torch")
    assert load_encoder(backend="auto").backend == "torch"


@pytest.mark.real
def test_auto_backend_falls_back_to_torch_when_the_export_fails(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import textguide.backends as backends

    def broken(*args, **kwargs):
        raise RuntimeError("compile failed: unsupported op")

    monkeypatch.setattr(backends, "backend_available", lambda b: True)
    monkeypatch.setattr(backends, "ExportedSentenceEncoder", broken)
    with pytest.raises(BackendError, match="backend 'openvino' cannot run encoder 'minilm': compile failed"):
        load_encoder(backend="openvino")  # asked for by name: an error, no silent fallback
    with caplog.at_level("WARNING", logger="textguide"):
        enc = load_encoder(backend="auto")
    assert enc.backend == "torch" and "compile failed" in caplog.text


@pytest.mark.real
def test_build_index_defaults_to_the_auto_backend(tmp_path: Path) -> None:
    if not backend_available(AUTO_BACKEND):
        pytest.skip(f"{AUTO_BACKEND} not installed")
    guide = build_index(sample_catalog_path(), tmp_path / "g")
    assert guide.manifest["encoder"]["backend"] == AUTO_BACKEND
    assert Guide.load(tmp_path / "g").encoder.backend == AUTO_BACKEND
