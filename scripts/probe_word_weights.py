"""Probe: is the idf weighting of the outfit word overlap worth learning? (Polyvore MCN, issue 8)

The served outfit score adds ``v x`` the idf mass of a candidate's title words found in the partial outfit
(:mod:`textguide.words`). This probe fits, on FITB questions drawn from the MCN *training* outfits (10 draws per
outfit), a conditional logit over the 4 candidates of each question with, on top of ``a x text cosine + b x idf
overlap``:

- ``dense``: five shared-word features (idf mass, number of shared words, the candidate's first word (often the
  brand) shared, idf mass of words that two or more partial items share, the candidate's title length);
- ``per-word``: one learned weight per vocabulary word (added to its idf), L2-regularised;
- ``both``.

It scores them on the MCN validation outfits (5 question draws per outfit) beside text alone and text + the fixed
``v = 0.05`` overlap. Text similarity is the base so the probe needs no adapter training (~2 min):

    python scripts/probe_word_weights.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from textguide.bench import recipes
from textguide.bench.outfit_cv import validation_outfits
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.metrics import text_queries
from textguide.words import words_of

MAX_SHARED = 12


def main() -> None:
    t0 = time.time()
    torch.set_num_threads(2)
    bench = recipes.prepare_polyvore(load_encoder(), EmbeddingCache())
    task, emb, words = bench.task, bench.guide.index.embeddings, bench.task.words
    titles = bench.guide.index.metadata["title"].tolist()
    item_words = [[words.vocab[w] for w in words_of(t)] for t in titles]

    def questions(outfits, seeds):
        partials, cands = [], []
        for seed in seeds:
            p, _, c = task.fitb_questions(outfits, seed=seed)
            partials += p
            cands.append(c)
        return partials, np.concatenate(cands)

    def features(partials, cands):
        shared = np.full(cands.shape + (MAX_SHARED,), -1, np.int64)
        dense = np.zeros(cands.shape + (5,), np.float32)
        for q, (part, row) in enumerate(zip(partials, cands)):
            seen: dict[int, int] = {}
            for r in part:
                for t in item_words[r]:
                    seen[t] = seen.get(t, 0) + 1
            for c, r in enumerate(row):
                common = [t for t in item_words[r] if t in seen]
                shared[q, c, : min(MAX_SHARED, len(common))] = common[:MAX_SHARED]
                first = item_words[r][0] if item_words[r] else -1
                dense[q, c] = [sum(words.idf[t] for t in common), len(common),
                               words.idf[first] if first in seen else 0.0,
                               sum(words.idf[t] for t in common if seen[t] >= 2), len(item_words[r])]
        base = np.einsum("qd,qcd->qc", text_queries(emb, partials), emb[cands]).astype(np.float32)
        return torch.from_numpy(shared), torch.from_numpy(dense), torch.from_numpy(base)

    train_q = features(*questions(task.outfits, range(10)))
    valid_q = features(*questions(validation_outfits(bench), range(5)))

    def fitb(scores: torch.Tensor) -> float:  # the answer (column 0) strictly above the 3 others
        return float((scores[:, :1] > scores[:, 1:]).all(1).float().mean())

    def fit(per_word: bool, dense: bool, l2: float, epochs: int = 300) -> tuple[float, float]:
        torch.manual_seed(0)
        theta = torch.zeros(len(words.idf), requires_grad=True)
        ab = torch.tensor([1.0, 0.05], requires_grad=True)
        wd = torch.zeros(5, requires_grad=True)

        def score(shared, dense_f, base):
            s = ab[0] * base + ab[1] * dense_f[..., 0]
            if per_word:
                s = s + (theta[shared.clamp(min=0)] * (shared >= 0)).sum(-1)
            if dense:
                s = s + 0.1 * (dense_f * wd).sum(-1)
            return s

        opt = torch.optim.Adam([ab, wd, theta], lr=0.01)
        target = torch.zeros(len(train_q[2]), dtype=torch.long)
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(10 * score(*train_q), target)
            (loss + l2 * (theta.square().sum() + wd.square().sum())).backward()
            opt.step()
        with torch.no_grad():
            return fitb(score(*train_q)), fitb(score(*valid_q))

    rows = [("text similarity", "-", fitb(train_q[2]), fitb(valid_q[2])),
            ("text + 0.05 x idf overlap (served form)", "-", fitb(train_q[2] + 0.05 * train_q[1][..., 0]),
             fitb(valid_q[2] + 0.05 * valid_q[1][..., 0])),
            ("fitted a, b (idf overlap)", "-", *fit(False, False, 0.0))]
    for name, per_word, dense in (("dense features", False, True), ("per-word weights", True, False),
                                  ("both", True, True)):
        for l2 in (1e-4, 1e-3, 1e-2):
            rows.append((name, f"{l2:g}", *fit(per_word, dense, l2)))
    print(f"{len(train_q[2])} training questions, {len(valid_q[2])} validation questions, {time.time() - t0:.0f} s")
    print("| score | L2 | FITB, training questions | FITB, validation questions |\n|---|---|---|---|")
    for name, l2, tr, va in rows:
        print(f"| {name} | {l2} | {tr:.4f} | {va:.4f} |")


if __name__ == "__main__":
    main()
