"""Coupons beyond Complete Journey, as tables: UCI in-vehicle coupons (split by driver) and AmExpert 2019 (split
by campaign). Each table has the priors a user starts from (popularity), LightGBM, the text adapter alone and
the hybrid (a logistic layer over [tree logit, adapter logit] fitted on the selection part), on the report part;
every choice (thresholds, hybrid weights, early stopping) is made on the selection part.

Used by ``scripts/bench_coupons.py`` and ``scripts/bench_multitask.py``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..adapters import MultiTaskAdapter
from ..encoder import EmbeddingCache, TextEncoder
from ..training import TrainConfig, train
from . import amexpert as amx
from . import recipes, workflows

Rows = dict[str, dict[str, float]]


def train_coupon_adapter(task: Any, dim: int, seconds: float, seed: int) -> MultiTaskAdapter:
    """A single-task coupon adapter reading the task's profiles, trained for up to ``seconds`` (early stopping on
    the selection part)."""
    config = workflows.new_model(("coupon",), "hard", seed, input_dim=dim).config
    config.profile_dim = task.profiles.shape[1]
    torch.manual_seed(seed)
    model = MultiTaskAdapter(config)
    train(model, {"coupon": task}, TrainConfig(steps=100_000, batch_size=128, eval_every=100, patience=6, seed=seed,
                                               max_seconds=seconds, show_progress=False))
    return model


def uci_table(encoder: TextEncoder, cache: EmbeddingCache | None, seconds: float,
              seed: int = 0) -> tuple[str, Rows, dict[str, Any]]:
    """(title, rows, info) for UCI in-vehicle coupons split by driver; metrics Accuracy and AUC."""
    b = recipes.prepare_uci_coupon(encoder, cache, seed, by_driver=True)
    rows = {"popularity (offer acceptance rate)": recipes.uci_baseline_popularity(b),
            "lightgbm (one-hot raw fields)": recipes.uci_baseline_gbt(b, seed)}
    model = train_coupon_adapter(b.task, encoder.dim, seconds, seed)
    rows["adapter alone (text of context + driver + offer)"] = recipes.uci_adapter_metrics(b, model)
    rows["hybrid: trees + adapter (logistic layer, selection drivers)"] = recipes.uci_hybrid_metrics(b, model, seed)
    title = f"UCI in-vehicle coupons, split by driver (60/20/20 of {b.frame.shape[0]:,} rows' drivers)"
    return title, rows, b.info


def amexpert_table(encoder: TextEncoder, cache: EmbeddingCache | None, seconds: float,
                   seed: int = 0) -> tuple[str, Rows, dict[str, Any]]:
    """(title, rows, info) for AmExpert 2019 split by campaign; metrics AUC and per-coupon AUC."""
    b = amx.prepare_amexpert(encoder, cache, seed)
    rep = b.mask("report")
    gbt = amx.gbt_scores(b, seed)
    rows = {"popularity (coupon's smoothed rate in training campaigns)": amx.metrics(b, b.features[rep, 0]),
            "customer's past redemptions": amx.metrics(b, b.features[rep, 6]),
            "lightgbm (priors + activity + demographics)": amx.metrics(b, gbt[rep])}
    model = train_coupon_adapter(b.task, encoder.dim, seconds, seed)
    ad = amx.adapter_logits(b, model)
    rows["adapter alone (history + demographics text vs coupon items)"] = amx.metrics(b, ad[rep])
    rows["hybrid: trees + adapter (logistic layer, selection campaigns)"] = amx.metrics(
        b, amx.hybrid_scores(b, gbt, ad)[rep])
    return "AmExpert 2019, split by campaign (train <= campaign 8, select 9-12, report 13)", rows, b.info


def best_baseline_gain(rows: Rows, metric: str = "AUC") -> tuple[str, float]:
    """(best baseline row, relative gain of the hybrid over it in ``metric``); baselines are the rows that are
    neither the adapter nor the hybrid."""
    hybrid = next(v for k, v in rows.items() if k.startswith("hybrid"))
    baselines = {k: v for k, v in rows.items() if not k.startswith(("hybrid", "adapter"))}
    best = max(baselines, key=lambda k: baselines[k][metric])
    return best, hybrid[metric] / baselines[best][metric] - 1
