"""One recommendation lever at a time: train on Amazon Scientific, choose on the selection users, report both.

Prints one JSON line per run: the selection users' Recall@10 (text, the guarded blend) and the report users'
Recall@10 / NDCG@10 of what ``method="auto"`` would serve. Decisions are made on the selection numbers only.

    python scripts/rec_levers.py --seconds 150 --tasks recommend
    python scripts/rec_levers.py --seconds 300 --ema 0.99
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

from textguide.bench import recipes, workflows
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.training import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="recommend", help="comma-separated: recommend,outfit,coupon")
    p.add_argument("--seconds", type=float, default=150)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--sharing", default="hard")
    p.add_argument("--weighting", default="dwa")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.0, help="TrainConfig.ema_decay (0: off)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--members", type=int, default=1, help="AdapterConfig.members: an ensemble trained on the same batches")
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-last-train", action="store_true",
                   help="leave out each user's latest training example (history -> last training item): the "
                        "refit question one step back (does training on the newest item per user help the next?)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (1: two runs side by side on 2 cores)")
    p.add_argument("--label", default="")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    tasks = tuple(a.tasks.split(","))
    enc, cache = load_encoder(), EmbeddingCache()
    benches = {t: workflows.prepare(t, enc, cache) for t in tasks}
    if a.drop_last_train:
        from textguide.bench.datasets.amazon_scientific import load_scientific

        last: dict[str, tuple[int, int]] = {}  # user -> (history length, row) of their latest training example
        for i, ex in enumerate(load_scientific().train):  # prepare_scientific keeps ds.train's row order
            last[ex.user] = max(last.get(ex.user, (-1, -1)), (len(ex.history), i))
        t = benches["recommend"].task
        keep = np.setdiff1d(np.arange(len(t.targets)), [i for _, i in last.values()])
        benches["recommend"].task = recipes.SequenceTask(t.item_emb, [t.histories[i] for i in keep],
                                                         t.targets[keep].tolist(), t.valid_histories,
                                                         t.valid_targets.tolist())
        print(f"dropped {len(last)} latest training rows, {len(keep)} left", flush=True)
    model = workflows.new_model(tasks, a.sharing, a.seed, input_dim=enc.dim)
    model.config.dropout = a.dropout
    if a.dropout != 0.1 or a.dim != 128 or a.members != 1:
        from textguide.adapters import AdapterConfig, MultiTaskAdapter

        cfg = AdapterConfig(**{**model.config.__dict__, "dropout": a.dropout, "dim": a.dim,
                                                  "members": a.members})
        torch.manual_seed(a.seed)
        model = MultiTaskAdapter(cfg)
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch, lr=a.lr, weighting=a.weighting, eval_every=a.eval_every,
                      patience=a.patience, seed=a.seed, max_seconds=a.seconds, ema_decay=a.ema)
    t0 = time.time()
    result = train(model, {t: benches[t].task for t in tasks}, cfg)
    seconds = time.time() - t0
    b = benches["recommend"]
    choice = workflows.choose_text_blend(b, "recommend", model)
    sel = choice["selection"]
    served = choice["methods"]["recommend"]
    rep = recipes.evaluate_sequences(b, recipes.sequence_scores(b, "adapter" if served == "adapter" else "text", model))
    last = result.history[-1]["step"] if result.history else 0
    print(json.dumps({"label": a.label, "args": vars(a), "train_s": round(seconds), "best_step": result.best_step,
                      "last_step": last, "select_text": round(sel["text"], 4), "select_blend": round(sel["adapter"], 4),
                      "blend_w": sel["text_blend"], "blend_grid": sel["blend_grid"], "served": served,
                      "report": {k: round(v, 4) for k, v in rep.items()},
                      "curve": [(h["step"], round(h.get("valid/recommend", float("nan")), 4)) for h in result.history
                                if "valid/recommend" in h]}), flush=True)


if __name__ == "__main__":
    main()
