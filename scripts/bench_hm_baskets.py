#!/usr/bin/env python3
"""Complementary items on a second catalog: H&M same-day baskets of different product groups.

    python scripts/bench_hm_baskets.py --budget 120

Prints FITB (1 of 4, same product group), compatibility AUC and complete-the-look Recall@10 for text
similarity and a single-task outfit adapter (selection split for early stopping, report split for the table).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from textguide.bench import recipes
from textguide.adapters import AdapterConfig, MultiTaskAdapter
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.training import TrainConfig, train
from textguide.bench.workflows import md_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=120)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    bench = recipes.prepare_hm_baskets(load_encoder(), EmbeddingCache(), seed=args.seed)
    rows = {"text similarity": recipes.evaluate_outfits(bench, recipes.outfit_scorer(bench, "text"))}
    torch.manual_seed(args.seed)
    model = MultiTaskAdapter(AdapterConfig(input_dim=384, dim=128, max_history=20, tasks=("outfit",),
                                           n_slots=len(bench.slots)))
    t = time.time()
    res = train(model, {"outfit": bench.task}, TrainConfig(steps=5000, batch_size=128, eval_every=100, patience=6,
                                                           seed=args.seed, max_seconds=args.budget,
                                                           show_progress=False))
    rows[f"single-task outfit adapter ({time.time() - t:.0f}s, best step {res.best_step})"] = \
        recipes.evaluate_outfits(bench, recipes.outfit_scorer(bench, "adapter", model))
    print(f"## H&M same-day baskets as complementary sets ({json.dumps(bench.info)})\n")
    print(md_table(list(rows.items()), ["FITB", "AUC", "CTL-Recall@10", "NearDup@10"]))
    print(f"\nCommand: python scripts/bench_hm_baskets.py --budget {args.budget:g}")


if __name__ == "__main__":
    main()
