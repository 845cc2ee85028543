"""Zero-shot cold start, leave one domain out: does a recommendation adapter trained on other domains help a
domain it has never seen, and does the per-category decision keep it from hurting?

For each left-out domain D of {scientific, industrial, office, hm, online-retail}:

1. train one recommendation adapter on the other four at once (their item embeddings stacked into one
   catalog, training examples subsampled per domain), regularised toward the text space: L2-SP toward its
   initial weights, which preserve text similarity (orthogonal projection, zero residual; see adapters.py).
   ``--source-similarity s``: only on the sources whose catalog is close to D's (cosine of the mean item
   embeddings >= s, the nearest always kept): a zero-shot choice, it reads D's catalog text only.
   ``--domain-batches``: each batch comes from one source domain (uniformly: balanced sources) with negatives
   from that domain's catalog, so the adapter learns to rank within one catalog, as it is served.
   ``--residual w``: the adapter is trained on ``adapter cosine + w * text cosine`` (its served score, see
   ``AdapterConfig.text_blend``), so it learns a correction to text similarity (the residual-to-text design);
2. the *zero-shot* choice: the adapter weight (text, blends 0.25 / 0.5 / 0.75, adapter) with the best Recall@10
   on the source domains' selection users, each ranked within its own catalog; nothing of D is used;
3. "onboard" D: score D's report users over D's whole catalog (history excluded) with text similarity,
   the adapter and the blends ``w adapter + (1 - w) text`` (cosines);
4. ``auto``: the per-category decision of :func:`textguide.decisions.decide` (what ``Guide.observe`` runs),
   started on text similarity and fed ``--observe`` of D's *selection* users (disjoint from the report users):
   it picks the best of text / blends / adapter on half of them and switches only if the 95 % paired-bootstrap
   interval of the Recall@10 gain on the other half is above 0. Its report numbers are those of its choice.

Amazon Clothing (../shared/data/amazon-clothing-2014) has ratings without time order and also-viewed pairs, no
sequences: it is not one of the domains. Numbers, command and wall time: docs/onboarding.md.

Example:
    PYTHONUNBUFFERED=1 python scripts/bench_coldstart.py --max-seconds 90 --source-similarity 0.5 \
        --json /tmp/coldstart.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from textguide import decisions as dec
from textguide.adapters import AdapterConfig, MultiTaskAdapter, encode_items
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.metrics import rank_of_target, text_queries
from textguide.tasks.recommend import SequenceTask, gather, pad, recommend_queries
from textguide.training import TrainConfig, train
from textguide.transfer import l2sp_penalty

DOMAINS = ("scientific", "industrial", "office", "hm", "online-retail")
WEIGHTS = dec.candidate_weights(True)


@dataclass
class Domain:
    """One domain's catalog embeddings, training examples, observation (selection) rows and report users."""

    name: str
    emb: np.ndarray
    hist: list[list[int]]
    targ: list[int]
    obs_h: list[list[int]]
    obs_t: list[int]
    rep_h: list[list[int]]
    rep_r: list[list[int]]


def load(name: str, encoder: Any, cache: EmbeddingCache) -> Domain:
    """A domain from textguide.bench.domains / textguide.bench.recipes (selection rows: one target each)."""
    if name == "scientific":
        from textguide.bench.recipes import prepare_scientific

        b = prepare_scientific(encoder, cache)
        t = b.task
        return Domain(name, b.guide.index.embeddings, t.histories, t.targets.tolist(), t.valid_histories,
                      t.valid_targets.tolist(), b.report_histories, [[int(x)] for x in b.report_targets])
    from textguide.bench.domains import prepare_domain

    b = prepare_domain(name, encoder, cache)
    t = b.task
    return Domain(name, b.item_emb, t.histories, t.targets.tolist(), t.valid_histories, t.valid_targets.tolist(),
                  b.report_histories, b.report_relevant)


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    idx = np.arange(n)
    return idx if n <= cap else np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


@dataclass
class DomainBatches(SequenceTask):
    """Stacked source domains where each batch comes from one domain (chosen uniformly: balanced sources) and its
    negatives from that domain's catalog, so the adapter learns to rank within a catalog, as it is served, rather
    than to tell catalogs apart (uniform negatives over the stacked catalogs are mostly other domains' items)."""

    spans: list[tuple[int, int, int, int]] = field(default_factory=list)  # (example start, end, item start, end)

    def batch(self, rng: np.random.Generator, batch_size: int, max_history: int, config: TrainConfig) -> dict:
        e0, e1, i0, i1 = self.spans[int(rng.integers(len(self.spans)))]
        rows = rng.integers(e0, e1, size=batch_size)
        hist, mask = pad([self.histories[r] for r in rows], max_history)
        targets = self.targets[rows]
        cand = np.concatenate([targets, rng.integers(i0, i1, size=min(config.num_negatives, i1 - i0))])
        seen = np.concatenate([np.where(mask, hist, -1), targets[:, None]], axis=1)
        exclude = (cand[None, None, :] == seen[:, :, None]).any(axis=1)
        exclude[np.arange(batch_size), np.arange(batch_size)] = False
        return {"history": gather(self.item_emb, hist), "history_mask": torch.from_numpy(mask),
                "candidates": gather(self.item_emb, cand), "exclude": torch.from_numpy(exclude),
                "targets": torch.arange(batch_size)}


class ResidualAdapter(MultiTaskAdapter):
    """Trained on ``adapter cosine + w * text cosine`` (``w = config.text_blend["recommend"]``, the score
    ``encode_items`` / ``recommend_queries`` serve with it): the adapter learns a correction to text similarity
    instead of re-learning it (the residual-to-text design)."""

    def retrieval_output(self, query: torch.Tensor, batch: dict[str, torch.Tensor], task: str
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.config.text_blend.get(task, 0.0)
        if not w or task != "recommend" or "candidates" not in batch or "row_candidates" in batch:
            return super().retrieval_output(query, batch, task)
        m = batch["history_mask"].unsqueeze(-1).to(batch["history"].dtype)
        text_q = F.normalize((batch["history"] * m).sum(1), dim=-1)
        cand = batch["candidates"]
        scores = query @ self.item_vectors(cand, task).T + w * (text_q @ F.normalize(cand, dim=-1).T)
        logits = self.logit_scale_of(task) * scores
        if "exclude" in batch:
            logits = logits.masked_fill(batch["exclude"], float("-inf"))
        if "targets" not in batch:
            return logits, None
        return logits, F.cross_entropy(logits, batch["targets"])


def train_multi_source(sources: list[Domain], args: argparse.Namespace) -> MultiTaskAdapter:
    """One recommend adapter on several domains at once (stacked catalogs), L2-SP toward its text-preserving init;
    ``--domain-batches``: one domain per batch with its own negatives; ``--residual w``: trained as a correction
    to ``w`` x text similarity."""
    offsets = np.cumsum([0] + [len(d.emb) for d in sources])
    hist, targ, vh, vt, spans = [], [], [], [], []
    for d, off, end in zip(sources, offsets, offsets[1:]):
        start = len(targ)
        for i in _sample(len(d.targ), args.train_cap, args.seed):
            hist.append([h + off for h in d.hist[i]])
            targ.append(d.targ[i] + off)
        spans.append((start, len(targ), int(off), int(end)))
        for i in _sample(len(d.obs_t), args.valid_cap, args.seed):
            vh.append([h + off for h in d.obs_h[i]])
            vt.append(d.obs_t[i] + off)
    emb = np.concatenate([d.emb for d in sources])
    task = DomainBatches(emb, hist, targ, vh, vt, spans=spans) if args.domain_batches else SequenceTask(emb, hist, targ, vh, vt)
    torch.manual_seed(args.seed)
    blend = {"recommend": args.residual} if args.residual > 0 else {}
    model = ResidualAdapter(AdapterConfig(input_dim=task.item_emb.shape[1], dim=args.dim, seq_layers=1,
                                          seq_heads=4, tasks=("recommend",), text_blend=blend))
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(steps=args.steps, batch_size=256, lr=1e-3, eval_every=100, patience=4,
                         max_seconds=args.max_seconds, seed=args.seed, show_progress=False)
    reg = (lambda m: l2sp_penalty(m, reference, args.l2sp)) if args.l2sp > 0 else None
    train(model, {"recommend": task}, config, regularizer=reg)
    return model


def catalog_similarity(a: Domain, b: Domain) -> float:
    """Cosine between the mean item embeddings of two catalogs (text only: known as soon as a catalog is onboarded)."""
    ca, cb = a.emb.mean(0), b.emb.mean(0)
    return float(ca @ cb / max(np.linalg.norm(ca) * np.linalg.norm(cb), 1e-12))


def pick_sources(held: Domain, others: list[Domain], min_similarity: float) -> list[Domain]:
    """The source domains whose catalogs are close to the left-out one's (cosine of the mean item embeddings at
    least ``min_similarity``; the nearest is always kept): a zero-shot choice that reads only catalog text."""
    sims = [catalog_similarity(held, d) for d in others]
    keep = [d for d, s in zip(others, sims) if s >= min_similarity]
    return keep or [others[int(np.argmax(sims))]]


def source_weight(sources: list[Domain], model: MultiTaskAdapter, args: argparse.Namespace) -> tuple[float, dict]:
    """The blend weight with the best mean Recall@10 over the source domains' selection users (each ranked in its
    own catalog; domains weighted equally): a zero-shot choice, nothing of the left-out domain is used."""
    means = {w: [] for w in WEIGHTS}
    for d in sources:
        rows = _sample(len(d.obs_t), args.valid_cap, args.seed + 2)
        res = per_user(scores_fn(d, model), [d.obs_h[i] for i in rows], [[d.obs_t[i]] for i in rows])
        for w in WEIGHTS:
            means[w].append(float(res[w]["Recall"].mean()))
    table = {dec.hits_label(w): round(float(np.mean(v)), 4) for w, v in means.items()}
    return max(WEIGHTS, key=lambda w: (np.mean(means[w]), -w)), table


def scores_fn(d: Domain, model: MultiTaskAdapter):
    """histories -> {weight: scores (n, items)} over d's catalog (cosines, adapter queries normalised)."""
    items = encode_items(model, d.emb, "recommend")

    def run(hs: list[list[int]]) -> dict[float, np.ndarray]:
        qt = text_queries(d.emb, hs)
        qa = recommend_queries(model, d.emb, hs)
        qa /= np.maximum(np.linalg.norm(qa, axis=1, keepdims=True), 1e-12)
        text, adapted = qt @ d.emb.T, qa @ items.T
        return {w: dec.blend_scores(text, adapted, w) for w in WEIGHTS}
    return run


def per_user(run, hs: list[list[int]], rel: list[list[int]], k: int = 10, chunk: int = 256) -> dict[float, dict[str, np.ndarray]]:
    """Per-user Recall@k and NDCG@k (full ranking, history excluded) for every weight."""
    out = {w: {"Recall": [], "NDCG": []} for w in WEIGHTS}
    for s in range(0, len(hs), chunk):
        h, r = hs[s:s + chunk], rel[s:s + chunk]
        rows = np.repeat(np.arange(len(h)), [len(x) for x in r])
        targets = np.array([t for x in r for t in x])
        for w, sc in run(h).items():
            ranks = rank_of_target(sc[rows], targets, [h[u] for u in rows])
            start = 0
            for x in r:
                rk = np.sort(ranks[start:start + len(x)])
                start += len(x)
                inside = rk < k
                out[w]["Recall"].append(inside.sum() / len(x))
                idcg = (1.0 / np.log2(np.arange(min(len(x), k)) + 2)).sum()
                out[w]["NDCG"].append((1.0 / np.log2(rk[inside] + 2)).sum() / idcg)
    return {w: {m: np.asarray(v) for m, v in ms.items()} for w, ms in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", default=",".join(DOMAINS))
    p.add_argument("--max-seconds", type=float, default=90.0, help="training budget per left-out domain")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--l2sp", type=float, default=1e-3, help="L2-SP weight toward the text-preserving init (0: off)")
    p.add_argument("--train-cap", type=int, default=20000, help="training examples per source domain (subsampled)")
    p.add_argument("--valid-cap", type=int, default=300, help="selection rows per source domain (early stopping)")
    p.add_argument("--domain-batches", action="store_true", help="one source domain per batch, negatives from it")
    p.add_argument("--source-similarity", type=float, default=0.5,
                   help="train only on sources whose catalog centroid has at least this cosine with the left-out one "
                        "(the nearest source is always kept; -1: every source; default 0.5, docs/onboarding.md)")
    p.add_argument("--residual", type=float, default=0.0, help="train adapter + w x text cosine (0: adapter alone)")
    p.add_argument("--report-users", type=int, default=2000, help="report users per left-out domain (subsampled)")
    p.add_argument("--observe", type=int, default=400, help="observed users of the left-out domain for auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    names = args.domains.split(",")
    encoder, cache = load_encoder(), EmbeddingCache()
    domains = {}
    for n in names:
        t = time.perf_counter()
        domains[n] = load(n, encoder, cache)
        d = domains[n]
        print(f"loaded {n}: {len(d.emb)} items, {len(d.targ)} train examples, {len(d.obs_t)} observation rows, "
              f"{len(d.rep_h)} report users ({time.perf_counter() - t:.0f} s)", flush=True)
    rows, results = [], {}
    for held in names:
        t = time.perf_counter()
        sources = pick_sources(domains[held], [domains[n] for n in names if n != held], args.source_similarity)
        model = train_multi_source(sources, args)
        train_s = time.perf_counter() - t
        zero, zero_table = source_weight(sources, model, args)
        d = domains[held]
        run = scores_fn(d, model)
        rep = _sample(len(d.rep_h), args.report_users, args.seed)
        report = per_user(run, [d.rep_h[i] for i in rep], [d.rep_r[i] for i in rep])
        obs = _sample(len(d.obs_t), args.observe, args.seed + 1)
        seen = per_user(run, [d.obs_h[i] for i in obs], [[d.obs_t[i]] for i in obs])
        decision = dec.decide({w: v["Recall"] for w, v in seen.items()}, 0.0, dec.split_users(len(obs), 0.5, args.seed),
                              min_users=20, seed=args.seed)
        auto = decision.weight

        def ci(w: float) -> list[float]:
            diff = report[w]["Recall"] - report[0.0]["Recall"]
            return [round(x, 4) for x in dec.paired_bootstrap(diff, seed=args.seed)] if w != 0.0 else [0.0, 0.0]

        res = {"sources": {d.name: round(catalog_similarity(domains[held], d), 3) for d in sources},
               "train_seconds": round(train_s, 1), "report_users": len(rep), "observed_users": len(obs),
               "methods": {dec.hits_label(w): {m: round(float(v.mean()), 4) for m, v in report[w].items()} for w in WEIGHTS},
               "zero_shot": dec.hits_label(zero), "zero_shot_source_recall": zero_table, "zero_shot_vs_text_ci95": ci(zero),
               "auto": dec.hits_label(auto), "auto_vs_text_ci95": ci(auto), "decision": decision.evidence}
        results[held] = res
        m = res["methods"]
        text_r = m["text"]["Recall"]
        gain = (m[res["zero_shot"]]["Recall"] / text_r - 1) * 100 if text_r else float("nan")
        rows.append((held, m["text"], m["adapter"], m["blend:0.5"], res["zero_shot"], m[res["zero_shot"]], gain,
                     res["zero_shot_vs_text_ci95"], res["auto"], m[res["auto"]], res["auto_vs_text_ci95"]))
        print(f"{held}: text R@10 {text_r:.4f}, adapter {m['adapter']['Recall']:.4f}, blend {m['blend:0.5']['Recall']:.4f}, "
              f"zero-shot {res['zero_shot']} {m[res['zero_shot']]['Recall']:.4f} ({gain:+.1f} %), "
              f"auto={res['auto']} ({decision.evidence['verdict']}); trained {train_s:.0f} s", flush=True)
    print("\n| left-out domain | text R@10 / N@10 | adapter R@10 / N@10 | blend 0.5 R@10 / N@10 | zero-shot choice "
          "R@10 / N@10 | zero-shot vs text R@10, 95% CI | auto (choice) R@10 / N@10 | auto - text R@10, 95% CI |")
    print("|---|---|---|---|---|---|---|---|")
    for held, t, a, b, zc, z, gain, zci, choice, au, ci95 in rows:
        print(f"| {held} | {t['Recall']:.4f} / {t['NDCG']:.4f} | {a['Recall']:.4f} / {a['NDCG']:.4f} | "
              f"{b['Recall']:.4f} / {b['NDCG']:.4f} | {z['Recall']:.4f} / {z['NDCG']:.4f} ({zc}) | "
              f"{gain:+.1f} % [{zci[0]:+.4f}, {zci[1]:+.4f}] | {au['Recall']:.4f} / {au['NDCG']:.4f} ({choice}) | "
              f"[{ci95[0]:+.4f}, {ci95[1]:+.4f}] |")
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.0f} s; args {vars(args)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "wall_seconds": round(wall, 1), "results": results}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
