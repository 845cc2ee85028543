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

from textguide.bench.coupons import amexpert_table, best_baseline_gain, uci_table
from textguide.bench.workflows import md_table
from textguide.encoder import EmbeddingCache, load_encoder


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
    for name, make, skip in (("uci", uci_table, a.skip_uci), ("amexpert", amexpert_table, a.skip_amexpert)):
        if skip:
            continue
        title, rows, info = make(enc, cache, a.seconds, a.seed)
        best, gain = best_baseline_gain(rows)
        raw[name] = {"rows": rows, "info": info, "best_baseline": best, "hybrid_auc_gain": gain}
        md += [f"### {title}", "", md_table(list(rows.items()), list(next(iter(rows.values())))), "",
               f"Hybrid AUC vs the best baseline ({best}): {gain:+.2%}", ""]
    text = "\n".join(md + [f"`python scripts/bench_coupons.py --seconds {a.seconds:g}`: {time.time() - t0:.0f} s wall"])
    print(text)
    print(json.dumps(raw, default=float))
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
