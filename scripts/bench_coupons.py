"""Coupons beyond Complete Journey: UCI in-vehicle coupons (split by driver) and AmExpert 2019 (split by campaign).

Rows per dataset: the priors a user starts from (popularity), LightGBM, the text adapter alone, and the hybrid
(a logistic layer over [tree logit, adapter logit] fitted on the selection part). Report-part numbers; every
choice (thresholds, hybrid weights, early stopping) is made on the selection part.

    python scripts/bench_coupons.py --seconds 120 --out docs/coupons_extra.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from textguide.bench import amexpert as amx
from textguide.bench import recipes, workflows
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.training import TrainConfig, train


def train_coupon_adapter(task, dim: int, seconds: float, seed: int):
    model = workflows.new_model(("coupon",), "hard", seed, input_dim=dim)
    model.config.profile_dim = task.profiles.shape[1]
    from textguide.adapters import MultiTaskAdapter

    torch.manual_seed(seed)
    model = MultiTaskAdapter(model.config)
    train(model, {"coupon": task}, TrainConfig(steps=100_000, batch_size=128, eval_every=100, patience=6, seed=seed,
                                               max_seconds=seconds))
    return model


def table(rows: dict[str, dict[str, float]]) -> str:
    metrics = list(next(iter(rows.values())))
    return workflows.md_table(list(rows.items()), metrics)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=120, help="training budget of each adapter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the Markdown tables here")
    p.add_argument("--skip-uci", action="store_true")
    p.add_argument("--skip-amexpert", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(2)
    enc, cache = load_encoder(), EmbeddingCache()
    md, raw, t0 = [], {}, time.time()
    if not a.skip_uci:
        b = recipes.prepare_uci_coupon(enc, cache, a.seed, by_driver=True)
        rows = {"popularity (offer acceptance rate)": recipes.uci_baseline_popularity(b),
                "lightgbm (one-hot raw fields)": recipes.uci_baseline_gbt(b, a.seed)}
        model = train_coupon_adapter(b.task, enc.dim, a.seconds, a.seed)
        rows["adapter alone (text of context + driver + offer)"] = recipes.uci_adapter_metrics(b, model)
        hybrid = recipes.uci_hybrid_metrics(b, model, a.seed)
        rows["hybrid: trees + adapter (logistic layer, selection drivers)"] = hybrid
        raw["uci"] = {"rows": rows, "info": b.info}
        md += [f"### UCI in-vehicle coupons, split by driver (60/20/20 of {b.frame.shape[0]:,} rows' drivers)", "",
               table(rows), ""]
    if not a.skip_amexpert:
        b = amx.prepare_amexpert(enc, cache, a.seed)
        rep = b.mask("report")
        gbt = amx.gbt_scores(b, a.seed)
        pop = b.features[rep, 0]
        rows = {"popularity (coupon's smoothed rate in training campaigns)": amx.metrics(b, pop),
                "customer's past redemptions": amx.metrics(b, b.features[rep, 6]),
                "lightgbm (priors + activity + demographics)": amx.metrics(b, gbt[rep])}
        model = train_coupon_adapter(b.task, enc.dim, a.seconds, a.seed)
        ad = amx.adapter_logits(b, model)
        rows["adapter alone (history + demographics text vs coupon items)"] = amx.metrics(b, ad[rep])
        rows["hybrid: trees + adapter (logistic layer, selection campaigns)"] = amx.metrics(
            b, amx.hybrid_scores(b, gbt, ad)[rep])
        raw["amexpert"] = {"rows": rows, "info": b.info}
        md += ["### AmExpert 2019, split by campaign (train <= campaign 8, select 9-12, report 13)", "",
               table(rows), ""]
    text = "\n".join(md + [f"`python scripts/bench_coupons.py --seconds {a.seconds:g}`: {time.time() - t0:.0f} s wall"])
    print(text)
    print(json.dumps(raw, default=float))
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
