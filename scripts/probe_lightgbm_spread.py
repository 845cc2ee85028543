#!/usr/bin/env python3
"""How stable is the coupon LightGBM baseline (Complete Journey) under last-bit changes of the embeddings?

    python scripts/probe_lightgbm_spread.py --draws 8 --noise 3e-7      # ~75 s (embeddings cached)

Prepares the Complete Journey coupon benchmark, scores popularity and LightGBM (priors + household activity +
text cosine) on the report households once as they are, then again after each of ``--draws`` draws of Gaussian
noise (``--noise`` standard deviation, added cumulatively to the item embeddings: far below what a library or
BLAS update changes in them). Prints one table row per draw and the range of each metric.
"""

from __future__ import annotations

import argparse

import numpy as np

from textguide.bench import recipes
from textguide.bench.workflows import md_table
from textguide.encoder import EmbeddingCache, load_encoder

METRICS = ("AUC", "CouponAUC", "Recall@5")
LGB = "lightgbm (priors + activity + text)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--noise", type=float, default=3e-7)
    args = ap.parse_args()
    bench = recipes.prepare_completejourney(load_encoder(), EmbeddingCache())
    base = recipes.coupon_baselines(bench)
    rows = [("popularity", base["popularity"]), ("lightgbm, embeddings as computed", base[LGB])]
    arrays = {id(a): a for a in (bench.guide.index.embeddings, bench.task.item_emb)}.values()  # may be one array
    for draw in range(args.draws):
        rng = np.random.default_rng(draw)
        for a in arrays:
            a += rng.normal(scale=args.noise, size=a.shape).astype(a.dtype)
        rows.append((f"lightgbm, noise draw {draw + 1} ({args.noise:g} each)", recipes.coupon_baselines(bench)[LGB]))
    print(md_table([(n, {m: r[m] for m in METRICS}) for n, r in rows], list(METRICS)))
    lgb = [r for n, r in rows[1:]]
    print("\nLightGBM range: " + ", ".join(f"{m} {min(r[m] for r in lgb):.4f}-{max(r[m] for r in lgb):.4f}"
                                          for m in METRICS))


if __name__ == "__main__":
    main()
