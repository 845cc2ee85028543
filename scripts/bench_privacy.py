#!/usr/bin/env python3
"""Does the recommendation adapter leak who was in training? A loss-threshold membership-inference attack.

Amazon Scientific users are split in two halves by a seeded permutation: *members*, whose next-item examples
(train.inter) train the adapter, and *non-members*, never seen. The attacker scores each user by the model's
mean next-item loss on that user's train.inter examples (a member's are the very examples trained on) and
guesses "member" when the loss is low; the attack's AUC (members vs non-members) is 0.5 when nothing leaks.
Printed side by side: the same attack against the untrained adapter and against text similarity (no training,
so no membership signal: its AUC is the attack's noise floor), and Recall@10 on valid.inter for both halves.

    python scripts/bench_privacy.py --seconds 120
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from textguide.datasets.amazon_scientific import load_scientific
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.evaluate import rank_of_target, roc_auc
from textguide.guide import Guide
from textguide.recipes import items_catalog
from textguide.train import SequenceTask, TrainConfig, encode_items, recommend_queries, train
from textguide.workflows import new_model


def user_losses(queries: np.ndarray, items: np.ndarray, scale: float, hists: list[list[int]], targets: np.ndarray,
                owner: np.ndarray, n_users: int, chunk: int = 2048) -> np.ndarray:
    """Mean softmax cross-entropy (history excluded, as in training) per user over that user's examples."""
    ce = np.empty(len(targets), np.float64)
    for s in range(0, len(targets), chunk):
        logits = scale * (queries[s:s + chunk] @ items.T)
        for i, h in enumerate(hists[s:s + chunk]):
            t = targets[s + i]
            keep = logits[i, t]
            logits[i, h] = -np.inf
            logits[i, t] = keep
        m = logits.max(1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(1, keepdims=True)))[:, 0]
        ce[s:s + chunk] = lse - logits[np.arange(len(logits)), targets[s:s + chunk]]
    total, count = np.bincount(owner, ce, n_users), np.bincount(owner, minlength=n_users)
    return total / np.maximum(count, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120, help="training budget")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    ds = load_scientific()
    guide = Guide.build(items_catalog(ds.items), load_encoder(), cache=EmbeddingCache())
    row, emb = guide.index.row_of, guide.index.embeddings
    users = sorted({ex.user for ex in ds.train})
    uid = {u: i for i, u in enumerate(users)}
    member = np.zeros(len(users), bool)
    member[np.random.default_rng(args.seed).permutation(len(users))[: len(users) // 2]] = True

    def examples(split, keep):
        rows = [ex for ex in split if keep[uid[ex.user]]] if keep is not None else list(split)
        return ([[row[i] for i in ex.history][-50:] for ex in rows], np.array([row[ex.target] for ex in rows]),
                np.array([uid[ex.user] for ex in rows]))

    tr_h, tr_t, _ = examples(ds.train, member)
    va_h, va_t, va_u = examples(ds.valid, None)
    sel = member[va_u]  # early stopping on members' valid examples only: non-members stay unseen
    task = SequenceTask(emb, tr_h, tr_t, [va_h[i] for i in np.flatnonzero(sel)], va_t[sel].tolist())
    all_h, all_t, all_u = examples(ds.train, None)

    def attack(model, label: str) -> dict:
        if model is None:  # text similarity: mean history embedding vs item embedding
            q = np.stack([emb[h].mean(0) for h in all_h])
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            items, scale, vq, vi = emb, 1 / 0.07, None, emb
        else:
            q, items = recommend_queries(model, emb, all_h), encode_items(model, emb, "recommend")
            scale, vi = float(model.logit_scale_of("recommend").detach()), items
        loss = user_losses(q, items, scale, all_h, all_t, all_u, len(users))
        if model is None:
            vq = np.stack([emb[h].mean(0) for h in va_h])
            vq /= np.linalg.norm(vq, axis=1, keepdims=True)
        else:
            vq = recommend_queries(model, emb, va_h)
        hit = rank_of_target(vq @ vi.T, va_t, va_h) < 10
        return {"model": label, "attack AUC": roc_auc(member.astype(int), -loss),
                "loss members": float(loss[member].mean()), "loss non-members": float(loss[~member].mean()),
                "Recall@10 members": float(hit[member[va_u]].mean()),
                "Recall@10 non-members": float(hit[~member[va_u]].mean())}

    model = new_model(("recommend",), seed=args.seed)
    rows = [attack(None, "text similarity (no training)"), attack(model, "adapter, untrained")]
    t0 = time.time()
    cfg = TrainConfig(steps=args.steps, batch_size=128, eval_every=100, patience=6, seed=args.seed,
                      max_seconds=args.seconds)
    result = train(model, {"recommend": task}, cfg)
    rows.append(attack(model, f"adapter, trained {time.time() - t0:.0f}s (best step {result.best_step})"))
    print(f"Amazon Scientific: {member.sum()} member users ({len(tr_t)} training examples), "
          f"{(~member).sum()} non-member users")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"seconds": args.seconds, "seed": args.seed, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
