"""Serving-time blend of adapter and text similarity: score = adapter cosine + w * text cosine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textguide.adapters import AdapterConfig, MultiTaskAdapter, encode_items
from textguide.tasks.outfit import outfit_queries
from textguide.tasks.recommend import recommend_queries


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_blend_adds_w_times_text_cosine() -> None:
    torch.manual_seed(0)
    emb = unit(np.random.default_rng(0).normal(size=(12, 16)).astype(np.float32))
    model = MultiTaskAdapter(AdapterConfig(input_dim=16, dim=8, seq_heads=2, n_slots=2, tasks=("recommend", "outfit")))
    hist = [[0, 3, 5], [7]]
    plain = {"recommend": recommend_queries(model, emb, hist) @ encode_items(model, emb, "recommend").T,
             "outfit": outfit_queries(model, emb, hist, [0, -1]) @ encode_items(model, emb, "outfit").T}
    text = unit(np.stack([emb[h].mean(0) for h in hist])) @ emb.T
    model.config.text_blend = {"recommend": 2.0, "outfit": 0.5}
    rec = recommend_queries(model, emb, hist) @ encode_items(model, emb, "recommend").T
    out = outfit_queries(model, emb, hist, [0, -1]) @ encode_items(model, emb, "outfit").T
    np.testing.assert_allclose(rec, plain["recommend"] + 2.0 * text, atol=1e-5)
    np.testing.assert_allclose(out, plain["outfit"] + 0.5 * text, atol=1e-5)
    again = AdapterConfig.from_dict(model.config.to_dict())
    assert again.text_blend == {"recommend": 2.0, "outfit": 0.5}


def test_blend_weights_are_checked() -> None:
    with pytest.raises(ValueError, match="text_blend takes weights >= 0"):
        AdapterConfig(input_dim=16, text_blend={"coupon": 1.0})
    with pytest.raises(ValueError, match="text_blend takes weights >= 0"):
        AdapterConfig(input_dim=16, text_blend={"recommend": -1.0})
