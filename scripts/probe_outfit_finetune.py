"""Probe: fine-tune the text encoder itself on outfits (Polyvore MCN, issue 8).

Everything served so far keeps the encoder frozen and learns an adapter over its pooled embeddings. This probe
fine-tunes all-MiniLM-L6-v2 end to end as a bi-encoder: the query is the partial outfit's titles joined in one
text, led by the missing slot (``"shoe: title | title | title"``), so the transformer's attention can compare the
items' words with each other; the candidate is its title alone. Loss: softmax over the batch's answers plus one
random same-slot item per example (scale 20). 2-fold cross-validation over the 1,195 MCN validation outfits as in
``bench_outfit_levers.py cv=k/2``: fold k trains on the 1,111 train outfits + the other fold and is scored on
its own outfits (``--draws`` FITB question draws each), beside the frozen encoder's text score on the same
questions, each alone and with the title word overlap.

    python scripts/probe_outfit_finetune.py --epochs 3 --folds 0   # ~8 min an epoch on 2 cores (docs/results.md)
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from textguide.bench import recipes
from textguide.bench.outfit_cv import fold_parts, validation_outfits
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.metrics import fitb_accuracy, text_queries


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def fitb(scores: np.ndarray) -> float:
    return fitb_accuracy(scores, np.zeros(len(scores), dtype=np.int64))


def query_text(titles: list[str], slot_names: list[str], partial: list[int], slot: int) -> str:
    return f"{slot_names[slot]}: " + " | ".join(titles[i] for i in partial)


def encode(model, texts: list[str], batch: int = 256) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return unit(model.encode(texts, batch_size=batch, convert_to_numpy=True, show_progress_bar=False))


def embed(model, texts: list[str]) -> torch.Tensor:
    feats = model.tokenize(texts)
    return torch.nn.functional.normalize(model(feats)["sentence_embedding"], dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--folds", default="0,1", help="which of the 2 folds to run")
    parser.add_argument("--max-steps", type=int, default=0, help="stop an epoch after this many steps (0: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    encoder = load_encoder()
    bench = recipes.prepare_polyvore(encoder, EmbeddingCache())
    task, words = bench.task, bench.task.words
    titles = bench.guide.index.metadata["title"].tolist()
    slots = task.item_slots
    names = list(bench.slots)
    frozen = unit(bench.guide.index.embeddings)
    valid = validation_outfits(bench)
    for k in [int(f) for f in args.folds.split(",")]:
        t0 = time.time()
        held_idx = fold_parts(len(valid), 2)[k]
        held = [valid[i] for i in held_idx]
        train_outfits = list(task.outfits) + [valid[i] for i in sorted(set(range(len(valid))) - set(held_idx.tolist()))]
        partials, qslots, cands = [], [], []
        for seed in range(args.draws):
            p, s, c = task.fitb_questions(held, seed=seed)
            partials += p
            qslots += s
            cands.append(c)
        cands = np.concatenate(cands)
        overlap = words.pair_scores(partials, cands)
        base = np.einsum("qd,qcd->qc", text_queries(frozen, partials), frozen[cands])
        print(f"fold {k}: {len(train_outfits)} training outfits, {len(cands)} questions on {len(held)} held outfits")
        print(f"  frozen text: {fitb(base):.4f}  +.05 overlap {fitb(base + .05 * overlap):.4f}  "
              f"+.1 overlap {fitb(base + .1 * overlap):.4f}")
        model = copy.deepcopy(encoder.model)
        examples = [(o[:h] + o[h + 1:], o[h]) for o in train_outfits for h in range(len(o))]
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        rng = np.random.default_rng(k)
        qtexts = [query_text(titles, names, p, s) for p, s in zip(partials, qslots)]
        for epoch in range(args.epochs):
            model.train()
            order = rng.permutation(len(examples))
            steps = len(order) // args.batch
            if args.max_steps:
                steps = min(steps, args.max_steps)
            loss_sum = 0.0
            for b in range(steps):
                ex = [examples[i] for i in order[b * args.batch:(b + 1) * args.batch]]
                q = [query_text(titles, names, p, int(slots[a])) for p, a in ex]
                pos = [a for _, a in ex]
                neg = [int(rng.choice(task.slot_pools[int(slots[a])])) for a in pos]
                qe = embed(model, q)
                ce = embed(model, [titles[i] for i in pos + neg])
                logits = 20.0 * qe @ ce.T
                # an in-batch answer that is the same item (or the drawn negative equals the answer) is no negative
                ids = torch.tensor(pos + neg)
                same = ids[None, :] == torch.tensor(pos)[:, None]
                same[torch.arange(len(pos)), torch.arange(len(pos))] = False
                logits = logits.masked_fill(same, -1e4)
                loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(pos)))
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_sum += loss.item()
            item = encode(model, titles)
            qv = encode(model, qtexts)
            concat = np.einsum("qd,qcd->qc", qv, item[cands])
            mean = np.einsum("qd,qcd->qc", text_queries(item, partials), item[cands])
            print(f"  epoch {epoch + 1} ({steps} steps, loss {loss_sum / max(steps, 1):.3f}, {time.time() - t0:.0f} s):"
                  f" concat query {fitb(concat):.4f} +.05 {fitb(concat + .05 * overlap):.4f}"
                  f" +.1 {fitb(concat + .1 * overlap):.4f} | mean query {fitb(mean):.4f}"
                  f" +.05 {fitb(mean + .05 * overlap):.4f} | concat+frozen {fitb(concat + base):.4f}"
                  f" +.05 {fitb(concat + base + .05 * overlap):.4f}", flush=True)


if __name__ == "__main__":
    main()
