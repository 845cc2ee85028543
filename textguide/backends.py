"""CPU inference backends for sentence-transformers encoders: ONNX Runtime and OpenVINO, fp32 or int8.

The model is exported once from the local weights (the packaged MiniLM by default; nothing is
downloaded) with ``torch.onnx.export`` into ``<cache>/models/<fingerprint>/`` and reused from there.
``onnx-int8`` is ONNX Runtime's dynamic int8 quantisation of that export. OpenVINO compiles the same
ONNX files. The tokenizer and pooling are the sentence-transformers model's own (mean pooling and
CLS pooling are supported), so vectors match ``SentenceTransformer.encode`` up to kernel rounding.

sentence-transformers' own ``backend="onnx"`` needs ``optimum-onnx``, which (at the time of writing)
pins transformers < 5; this module needs only ``onnxruntime`` (and ``openvino`` for those backends).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger("textguide")

#: Backends a sentence-transformers encoder can run on.
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_NEEDS = {"torch": ("torch",), "onnx": ("onnxruntime", "onnx"), "onnx-int8": ("onnxruntime", "onnx"),
          "openvino": ("openvino", "onnx"), "openvino-int8": ("openvino", "onnxruntime", "onnx")}


class BackendError(ValueError):
    """A backend cannot run this model (unsupported pooling, a failed export or compile)."""


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a ``ValueError`` listing them."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


def backend_available(backend: str) -> bool:
    """Whether the packages a backend needs are installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in _NEEDS[check_backend(backend)])


def _pooling_mode(st: Any) -> str:
    pooling = next((m for m in st if type(m).__name__ == "Pooling"), None)
    mode = getattr(pooling, "pooling_mode", None) or (pooling.get_config_dict().get("pooling_mode") if pooling else None)
    if mode is None and pooling is not None:  # older sentence-transformers: boolean flags
        cfg = pooling.get_config_dict()
        mode = "cls" if cfg.get("pooling_mode_cls_token") else "mean" if cfg.get("pooling_mode_mean_tokens") else None
    if mode not in ("mean", "cls"):
        raise ValueError(f"the onnx/openvino backends support mean or CLS pooling, this model uses {mode!r}; "
                         "use backend='torch'")
    return mode


def export_onnx(st: Any, directory: Path, quantize: bool) -> Path:
    """The transformer of a SentenceTransformer as ONNX (int8-quantised if asked), cached in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    fp32 = directory / "model.onnx"
    if not fp32.is_file():
        import torch

        hf = st[0].auto_model.eval()

        class Body(torch.nn.Module):
            def __init__(self, m: Any) -> None:
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        sample = st.tokenizer(["an example product title", "a longer example product description text"],
                              padding=True, return_tensors="pt")
        if "token_type_ids" not in sample:
            sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
        axes = {k: {0: "batch", 1: "tokens"} for k in (*_INPUTS, "last_hidden_state")}
        logger.info("exporting %s to ONNX in %s", type(hf).__name__, directory)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            out = Path(tmp) / "model.onnx"
            with torch.inference_mode():
                torch.onnx.export(Body(hf), tuple(sample[k] for k in _INPUTS), str(out), input_names=list(_INPUTS),
                                  output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
            os.replace(out, fp32)  # atomic: a concurrent exporter's file is as good as ours
    if not quantize:
        return fp32
    int8 = directory / "model-int8.onnx"
    if not int8.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            out = Path(tmp) / "model-int8.onnx"
            quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)
            os.replace(out, int8)
    return int8


class CompiledBody:
    """The exported transformer on ONNX Runtime or OpenVINO: token ids -> last hidden states."""

    def __init__(self, path: Path, runtime: str, threads: int | None = None) -> None:
        self.runtime = runtime
        threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or (os.cpu_count() or 1)
        if runtime == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        else:
            import openvino as ov

            core = ov.Core()
            self._compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
            # One call at a time: the compiled model's own infer request is not thread-safe, and separate
            # requests per thread deadlocked in a server when two first calls reshaped them at once.
            self._lock = threading.Lock()

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Thread-safe: ONNX Runtime sessions are; OpenVINO calls take turns (each uses all its threads)."""
        if self.runtime == "onnx":
            return self._session.run(None, feeds)[0]
        with self._lock:
            return next(iter(self._compiled(feeds).values())).copy()  # the request reuses its output buffer


def backend_dir(cache_dir: Path, base_fingerprint: str) -> Path:
    """Where a model's exports are cached."""
    return cache_dir / "models" / base_fingerprint


class ExportedSentenceEncoder:
    """Tokenise with the sentence-transformers model's tokenizer, run the exported body, pool, normalise."""

    def __init__(self, st: Any, backend: str, directory: Path, threads: int | None = None) -> None:
        check_backend(backend)
        if backend == "torch":
            raise ValueError("backend='torch' runs the model itself; use SentenceTransformerEncoder")
        if not backend_available(backend):
            raise ImportError(f"backend {backend!r} needs: pip install {' '.join(_NEEDS[backend])} "
                              f"(or pip install 'textguide[fast]')")
        self.tokenizer = st.tokenizer
        self.max_seq_length = int(st.max_seq_length)
        self.pooling = _pooling_mode(st)
        self.path = export_onnx(st, directory, quantize=backend.endswith("-int8"))
        self.body = CompiledBody(self.path, backend.split("-")[0], threads)
        (directory / "export.json").write_text(json.dumps({"pooling": self.pooling, "max_seq_length": self.max_seq_length}))

    def embed(self, texts: Sequence[str], batch_size: int, progress: bool) -> np.ndarray:
        """Unnormalised sentence vectors, in input order (batches sorted by length, as sentence-transformers does)."""
        from tqdm.auto import tqdm

        order = np.argsort([-len(t) for t in texts], kind="stable")
        out: list[np.ndarray] = []
        for i in tqdm(range(0, len(texts), batch_size), desc="encode", unit="batch", disable=not progress):
            batch = [texts[j] for j in order[i:i + batch_size]]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np")
            feeds = {k: np.asarray(enc[k], np.int64) for k in _INPUTS if k in enc}
            feeds.setdefault("token_type_ids", np.zeros_like(feeds["input_ids"]))
            hidden = self.body(feeds)
            if self.pooling == "cls":
                out.append(hidden[:, 0])
            else:
                mask = feeds["attention_mask"][..., None].astype(np.float32)
                out.append((hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9))
        vecs = np.concatenate(out).astype(np.float32, copy=False)
        result = np.empty_like(vecs)
        result[order] = vecs
        return result
