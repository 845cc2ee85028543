"""Shared fixtures: a deterministic fake encoder, a tiny product catalog, random unit vectors.

Fast tests never load a real model: they pass ``HashingEncoder`` as ``encoder=``. Tests marked
``real`` (tests/test_real.py) use the packaged MiniLM model and ../shared/data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import faiss
import numpy as np
import pytest
import torch

from textguide.catalog import Catalog
from textguide.encoder import HashingEncoder
from textguide.guide import Guide

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One OpenMP thread: on a shared 2-core machine FAISS's thread pool makes small builds ~10x slower,
# and single-threaded HNSW construction is deterministic.
faiss.omp_set_num_threads(1)
# Tiny models train faster on one thread than on two competing ones.
torch.set_num_threads(1)

#: A tiny catalog (20 products, 5 categories) whose texts share words within a category.
PRODUCTS: list[dict] = [
    {"id": "p01", "title": "Cast iron skillet 26 cm", "category": "Kitchen", "brand": "Forge", "price": 39.9, "description": "Pre-seasoned pan for searing"},
    {"id": "p02", "title": "Non-stick frying pan 28 cm", "category": "Kitchen", "brand": "Forge", "price": 29.0, "description": "Ceramic coated pan"},
    {"id": "p03", "title": "Stainless steel saucepan with lid", "category": "Kitchen", "brand": "Inox", "price": 34.5, "description": ""},
    {"id": "p04", "title": "Chef knife 20 cm", "category": "Kitchen", "brand": "Inox", "price": 59.0, "description": "Forged steel blade"},
    {"id": "p05", "title": "Linen summer shirt", "category": "Tops", "brand": "Verano", "price": 45.0, "description": "Breathable linen for the beach"},
    {"id": "p06", "title": "Oxford cotton shirt", "category": "Tops", "brand": "Pemberton", "price": 49.9, "description": "Button-down collar"},
    {"id": "p07", "title": "Merino wool sweater", "category": "Tops", "brand": "Northwind", "price": 89.0, "description": "Warm crew neck knit"},
    {"id": "p08", "title": "Running tee", "category": "Tops", "brand": "Stride", "price": 25.0, "description": "Quick-dry sport shirt"},
    {"id": "p09", "title": "Leather chelsea boots", "category": "Shoes", "brand": "Pemberton", "price": 139.0, "description": "Elastic side panels"},
    {"id": "p10", "title": "Trail running shoes", "category": "Shoes", "brand": "Stride", "price": 119.0, "description": "Grippy outsole for hiking"},
    {"id": "p11", "title": "Canvas espadrilles", "category": "Shoes", "brand": "Verano", "price": 35.0, "description": "Jute sole summer shoes"},
    {"id": "p12", "title": "Snow boots", "category": "Shoes", "brand": "Northwind", "price": 99.0, "description": "Insulated winter boots"},
    {"id": "p13", "title": "Straw beach tote", "category": "Bags", "brand": "Verano", "price": 39.0, "description": "Woven summer bag"},
    {"id": "p14", "title": "Leather briefcase", "category": "Bags", "brand": "Pemberton", "price": 199.0, "description": "Laptop sleeve for the office"},
    {"id": "p15", "title": "Gym duffel bag", "category": "Bags", "brand": "Stride", "price": 55.0, "description": "Shoe compartment"},
    {"id": "p16", "title": "Soy wax candle", "category": "Decor", "brand": "Lumen", "price": 19.0, "description": "Sandalwood and amber scent"},
    {"id": "p17", "title": "Ceramic vase", "category": "Decor", "brand": "Lumen", "price": 29.0, "description": "Matte white glaze"},
    {"id": "p18", "title": "Wool throw blanket", "category": "Decor", "brand": "Northwind", "price": 79.0, "description": "Plaid wool for the sofa"},
    {"id": "p19", "title": "Linen cushion cover", "category": "Decor", "brand": "Verano", "price": None, "description": "Washed linen"},
    {"id": "p20", "title": "Brass photo frame", "category": "Decor", "brand": "Lumen", "price": 24.0, "description": "Holds a 10x15 print"},
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the user's ~/.cache/textguide."""
    monkeypatch.setenv("TEXTGUIDE_CACHE", str(tmp_path_factory.mktemp("embcache")))


@pytest.fixture
def enc() -> HashingEncoder:
    """The deterministic 32-d fake encoder."""
    return HashingEncoder(dim=32)


@pytest.fixture
def products() -> list[dict]:
    """A fresh copy of the tiny product list."""
    return [dict(p) for p in PRODUCTS]


@pytest.fixture
def catalog(products: list[dict]) -> Catalog:
    """The tiny catalog as a Catalog."""
    return Catalog.from_records(products)


@pytest.fixture
def catalog_csv(tmp_path: Path, products: list[dict]) -> Path:
    """The tiny catalog written as a CSV file."""
    import pandas as pd

    path = tmp_path / "catalog.csv"
    pd.DataFrame(products).to_csv(path, index=False)
    return path


@pytest.fixture
def guide(catalog: Catalog, enc: HashingEncoder) -> Guide:
    return Guide.build(catalog, enc)


@pytest.fixture
def saved(guide: Guide, tmp_path: Path) -> Path:
    return guide.save(tmp_path / "guide")


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` random L2-normalised float32 rows."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="session")
def rand_unit() -> Callable[..., np.ndarray]:
    """``rand_unit(n, dim, seed=0)`` -> random unit vectors."""
    return unit_vectors


class CountingEncoder:
    """Wraps an encoder and records every text it is asked to encode."""

    def __init__(self, inner: HashingEncoder) -> None:
        self.inner = inner
        self.name, self.dim, self.fingerprint = inner.name, inner.dim, inner.fingerprint
        self.calls: list[list[str]] = []

    @property
    def seen(self) -> list[str]:
        """Every text encoded so far, in call order."""
        return [t for call in self.calls for t in call]

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.encode(texts, batch_size=batch_size, show_progress=show_progress)


@pytest.fixture(scope="session")
def counting() -> type[CountingEncoder]:
    """``counting(HashingEncoder(32))`` -> an encoder that records what it encodes."""
    return CountingEncoder
