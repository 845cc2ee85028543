"""Probe: untrained ways to score an outfit candidate from text (Polyvore MCN, issue 8).

The served outfit score's text part is the cosine between a candidate and the mean of the partial outfit's
(normalised) embeddings, plus the title word overlap (:mod:`textguide.words`). This probe scores the 1,195 MCN
validation outfits (5 FITB question draws each, 5,975 questions) with other untrained text scores, each alone
and with ``+ 0.05 / 0.1 x`` the word overlap:

- ``max``: the candidate's highest cosine to one partial item; ``meanpair``: the mean of its cosines;
  ``lse<t>``: log-sum-exp of the cosines at inverse temperature t (between mean and max);
- ``tokens``: late interaction over the encoder's token embeddings (each candidate token's best cosine to any
  partial-outfit token, averaged; ``tokens-sym`` adds the other direction), as in ColBERT, without training;
- ``--encoder PATH``: the same text score with another local sentence-transformers model (for example a
  downloaded all-mpnet-base-v2), beside the packaged all-MiniLM-L6-v2.

    python scripts/probe_outfit_text_scores.py                       # ~1 min (embeddings cached)
    python scripts/probe_outfit_text_scores.py --encoder /path/to/all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from textguide.bench import recipes
from textguide.bench.outfit_cv import validation_outfits
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.metrics import fitb_accuracy, text_queries


def fitb(scores: np.ndarray) -> float:
    """The answer (column 0) strictly above the 3 others."""
    return fitb_accuracy(scores, np.zeros(len(scores), dtype=np.int64))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def token_scores(model, titles: list[str], partials: list[list[int]], cands: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(one-way, symmetric) late-interaction scores of every candidate against its partial outfit's tokens
    (``model``: the SentenceTransformer whose token embeddings are compared)."""
    raw = model.encode(titles, output_value="token_embeddings", batch_size=256, show_progress_bar=False)
    tokens = [unit((t[1:-1] if len(t) > 2 else t).float().numpy()) for t in raw]  # without [CLS] / [SEP]
    one, sym = np.zeros(cands.shape), np.zeros(cands.shape)
    for q, part in enumerate(partials):
        seen = np.concatenate([tokens[r] for r in part])
        for j, r in enumerate(cands[q]):
            sim = tokens[r] @ seen.T
            one[q, j] = sim.max(1).mean()
            sym[q, j] = one[q, j] + sim.max(0).mean()
    return one, sym


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", help="another local sentence-transformers model directory to compare")
    parser.add_argument("--draws", type=int, default=5, help="FITB question draws per validation outfit")
    args = parser.parse_args()
    t0 = time.time()
    torch.set_num_threads(2)
    encoder = load_encoder()
    bench = recipes.prepare_polyvore(encoder, EmbeddingCache())
    task, words = bench.task, bench.task.words
    titles = bench.guide.index.metadata["title"].tolist()
    emb = unit(bench.guide.index.embeddings)
    partials, cands = [], []
    for seed in range(args.draws):
        p, _, c = task.fitb_questions(validation_outfits(bench), seed=seed)
        partials += p
        cands.append(c)
    cands = np.concatenate(cands)
    overlap = words.pair_scores(partials, cands)
    pairs = [emb[cands[q]] @ emb[part].T for q, part in enumerate(partials)]  # (4, len(partial)) cosines
    rows = {"text (cosine to the mean, served)": np.einsum("qd,qcd->qc", text_queries(emb, partials), emb[cands]),
            "max": np.stack([p.max(1) for p in pairs]), "meanpair": np.stack([p.mean(1) for p in pairs])}
    for t in (5, 10, 20):
        rows[f"lse{t}"] = np.stack([np.log(np.exp(t * p).sum(1)) / t for p in pairs])
    rows["tokens"], rows["tokens-sym"] = token_scores(encoder.model, titles, partials, cands)
    if args.encoder:
        from sentence_transformers import SentenceTransformer

        t1 = time.time()
        other = unit(SentenceTransformer(args.encoder, device="cpu").encode(titles, batch_size=128,
                                                                           show_progress_bar=False))
        print(f"{args.encoder}: {len(titles)} titles encoded in {time.time() - t1:.0f} s, {other.shape[1]}-d")
        rows[f"text, {args.encoder}"] = np.einsum("qd,qcd->qc", text_queries(other, partials), other[cands])
    print(f"{len(cands)} questions from {len(validation_outfits(bench))} validation outfits")
    print("| text score | FITB | + .05 x overlap | + .1 x overlap |\n|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {fitb(s):.4f} | {fitb(s + 0.05 * overlap):.4f} | {fitb(s + 0.1 * overlap):.4f} |")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
