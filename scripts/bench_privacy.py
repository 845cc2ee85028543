#!/usr/bin/env python3
"""Does the recommendation adapter leak who was in training? A loss-threshold membership-inference attack.

Amazon Scientific users are split in two halves by a seeded permutation: *members*, whose next-item examples
(train.inter) train the adapter, and *non-members*, never seen. The attacker scores each user by the model's
mean next-item loss on that user's train.inter examples (a member's are the very examples trained on) and
guesses "member" when the loss is low; the attack's AUC (members vs non-members) is 0.5 when nothing leaks.
Printed side by side: the same attack against the untrained adapter and against text similarity (no training,
so no membership signal: its AUC is the attack's noise floor), and Recall@10 on valid.inter for both halves.

With ``--dp-epsilon E`` the adapter is trained with DP-SGD (textguide.privacy: one example per sampled member
user per step, exactly ``--steps`` steps) and attacked the same way.

``--price RECIPE`` measures instead what DP costs: the validation metric (amazon-scientific: Recall@10 on the
selection users; completejourney: coupon AUC on the selection households) of the usual training, of the DP
pipeline without noise, and of DP-SGD at each ``--epsilons``, all with the same steps, batch size and seed.

    python scripts/bench_privacy.py --seconds 120
    python scripts/bench_privacy.py --dp-epsilon 8 --steps 600
    python scripts/bench_privacy.py --price amazon-scientific --steps 600
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from textguide.bench.datasets.amazon_scientific import load_scientific
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.evaluate import rank_of_target, roc_auc
from textguide.guide import Guide
from textguide.bench.recipes import items_catalog
from textguide.adapters import encode_items
from textguide.tasks.recommend import SequenceTask, recommend_queries
from textguide.training import TrainConfig, train
from textguide.bench.workflows import new_model


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


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |" for r in rows]
    return "\n".join(lines)


def price(recipe: str, steps: int, epsilons: list[float], seed: int) -> list[dict]:
    """Validation metric of the usual training, of the DP pipeline without noise and of DP-SGD per epsilon."""
    from textguide.privacy import DPConfig, train_private
    from textguide.bench.workflows import RECIPE_TASK, example_users, prepare

    task_name = RECIPE_TASK[recipe]
    bench = prepare(task_name, load_encoder(), EmbeddingCache())
    users = example_users(bench)
    task = {task_name: bench.task}
    cfg = TrainConfig(steps=steps, batch_size=128, eval_every=steps, patience=None, restore_best=False, seed=seed)
    metric = "Recall@10" if task_name == "recommend" else "AUC"
    rows = [{"training": "untrained adapter", metric: bench.task.valid_metric(new_model((task_name,), seed=seed)),
             "epsilon": "-", "noise multiplier": "-", "seconds": 0.0}]
    t0 = time.time()
    model = new_model((task_name,), seed=seed)
    train(model, task, cfg)
    rows.append({"training": "usual (no DP)", metric: bench.task.valid_metric(model), "epsilon": "-",
                 "noise multiplier": "-", "seconds": time.time() - t0})
    for eps in [None, *epsilons]:
        t0 = time.time()
        model = new_model((task_name,), seed=seed)
        dp = DPConfig(noise_multiplier=0.0) if eps is None else DPConfig(epsilon=eps)
        _, rec = train_private(model, task, cfg, dp, users)
        rows.append({"training": "DP pipeline, no noise" if eps is None else f"DP-SGD, target epsilon {eps:g}",
                     metric: bench.task.valid_metric(model),
                     "epsilon": "inf" if eps is None else f"{rec.epsilon:.3f}",
                     "noise multiplier": f"{rec.noise_multiplier:.3f}", "seconds": time.time() - t0})
        print(rows[-1], flush=True)
    print(f"{recipe}: {rec.users} training users, {rec.examples} examples, delta {rec.delta:.3g}, sample rate "
          f"{rec.sample_rate:.4g}, {steps} steps, clipping norm {rec.max_grad_norm:g}, {rec.accountant} accountant")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120, help="training budget (without --dp-epsilon)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dp-epsilon", type=float, default=None, help="attack an adapter trained with DP-SGD")
    ap.add_argument("--dp-noise", type=float, default=None,
                    help="instead of --dp-epsilon: this noise multiplier (0: the DP pipeline without noise)")
    ap.add_argument("--price", choices=["amazon-scientific", "completejourney"], default=None,
                    help="measure the validation metric with and without DP instead of the attack")
    ap.add_argument("--epsilons", default="1,4,8", help="with --price: the target epsilons")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.price:
        rows = price(args.price, args.steps, [float(e) for e in args.epsilons.split(",")], args.seed)
        print(table(rows))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"recipe": args.price, "steps": args.steps, "seed": args.seed, "rows": rows}, f, indent=1)
        return

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
    if args.dp_epsilon is None and args.dp_noise is None:
        cfg = TrainConfig(steps=args.steps, batch_size=128, eval_every=100, patience=6, seed=args.seed,
                          max_seconds=args.seconds)
        result = train(model, {"recommend": task}, cfg)
        label = f"adapter, trained {time.time() - t0:.0f}s (best step {result.best_step})"
    else:
        from textguide.privacy import DPConfig, train_private

        cfg = TrainConfig(steps=args.steps, batch_size=128, eval_every=args.steps, seed=args.seed)
        tr_users = np.array([uid[ex.user] for ex in ds.train if member[uid[ex.user]]])
        dp = DPConfig(epsilon=args.dp_epsilon, noise_multiplier=args.dp_noise)
        _, rec = train_private(model, {"recommend": task}, cfg, dp, tr_users)
        label = (f"adapter, DP-SGD epsilon {rec.epsilon:.2f} (delta {rec.delta:.2g}, noise {rec.noise_multiplier:.2f}), "
                 f"{rec.steps} steps, {time.time() - t0:.0f}s")
    rows.append(attack(model, label))
    print(f"Amazon Scientific: {member.sum()} member users ({len(tr_t)} training examples), "
          f"{(~member).sum()} non-member users")
    print(table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"seconds": args.seconds, "steps": args.steps, "dp_epsilon": args.dp_epsilon, "seed": args.seed, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
