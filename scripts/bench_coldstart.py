"""Zero-shot cold start, leave one domain out: does a recommendation adapter trained on other domains help a
domain it has never seen, and does the per-category decision keep it from hurting?

For each left-out domain D of {scientific, industrial, office, hm, online-retail}:

1. train one recommendation adapter on the other four at once (their item embeddings stacked into one
   catalog, training examples subsampled per domain), regularised toward the text space: L2-SP toward its
   initial weights, which preserve text similarity (orthogonal projection, zero residual; see adapters.py);
2. "onboard" D: score D's report users over D's whole catalog (history excluded) with text similarity,
   the adapter, and the blend ``0.5 adapter + 0.5 text`` (cosines);
3. ``auto``: the per-category decision of :func:`textguide.decisions.decide` (what ``Guide.observe`` runs),
   started on text similarity and fed ``--observe`` of D's *selection* users (disjoint from the report users):
   it picks the best of text / blends / adapter on half of them and switches only if the 95 % paired-bootstrap
   interval of the Recall@10 gain on the other half is above 0. Its report numbers are those of its choice.

Amazon Clothing (../shared/data/amazon-clothing-2014) has ratings without time order and also-viewed pairs, no
sequences: it is not one of the domains. Numbers, command and wall time: docs/onboarding.md.

Example:
    PYTHONUNBUFFERED=1 python scripts/bench_coldstart.py --max-seconds 90 --json /tmp/coldstart.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from textguide import decisions as dec
from textguide.adapters import AdapterConfig, MultiTaskAdapter, encode_items
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.metrics import rank_of_target, text_queries
from textguide.tasks.recommend import SequenceTask, recommend_queries
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


def train_multi_source(sources: list[Domain], args: argparse.Namespace) -> MultiTaskAdapter:
    """One recommend adapter on several domains at once (stacked catalogs), L2-SP toward its text-preserving init."""
    offsets = np.cumsum([0] + [len(d.emb) for d in sources])
    hist, targ, vh, vt = [], [], [], []
    for d, off in zip(sources, offsets):
        for i in _sample(len(d.targ), args.train_cap, args.seed):
            hist.append([h + off for h in d.hist[i]])
            targ.append(d.targ[i] + off)
        for i in _sample(len(d.obs_t), args.valid_cap, args.seed):
            vh.append([h + off for h in d.obs_h[i]])
            vt.append(d.obs_t[i] + off)
    task = SequenceTask(np.concatenate([d.emb for d in sources]), hist, targ, vh, vt)
    torch.manual_seed(args.seed)
    model = MultiTaskAdapter(AdapterConfig(input_dim=task.item_emb.shape[1], dim=args.dim, seq_layers=1,
                                           seq_heads=4, tasks=("recommend",)))
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(steps=args.steps, batch_size=256, lr=1e-3, eval_every=100, patience=4,
                         max_seconds=args.max_seconds, seed=args.seed, show_progress=False)
    reg = (lambda m: l2sp_penalty(m, reference, args.l2sp)) if args.l2sp > 0 else None
    train(model, {"recommend": task}, config, regularizer=reg)
    return model


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
        model = train_multi_source([domains[n] for n in names if n != held], args)
        train_s = time.perf_counter() - t
        d = domains[held]
        run = scores_fn(d, model)
        rep = _sample(len(d.rep_h), args.report_users, args.seed)
        report = per_user(run, [d.rep_h[i] for i in rep], [d.rep_r[i] for i in rep])
        obs = _sample(len(d.obs_t), args.observe, args.seed + 1)
        seen = per_user(run, [d.obs_h[i] for i in obs], [[d.obs_t[i]] for i in obs])
        decision = dec.decide({w: v["Recall"] for w, v in seen.items()}, 0.0, dec.split_users(len(obs), 0.5, args.seed),
                              min_users=20, seed=args.seed)
        auto = decision.weight
        diff = report[auto]["Recall"] - report[0.0]["Recall"]
        lo, hi = dec.paired_bootstrap(diff, seed=args.seed) if auto != 0.0 else (0.0, 0.0)
        res = {"train_seconds": round(train_s, 1), "report_users": len(rep), "observed_users": len(obs),
               "methods": {dec.hits_label(w): {m: round(float(v.mean()), 4) for m, v in report[w].items()} for w in WEIGHTS},
               "auto": dec.hits_label(auto), "auto_vs_text_ci95": [round(lo, 4), round(hi, 4)],
               "decision": decision.evidence}
        results[held] = res
        m = res["methods"]
        text_r = m["text"]["Recall"]
        best = max(m["adapter"]["Recall"], m["blend:0.5"]["Recall"])
        rows.append((held, m["text"], m["adapter"], m["blend:0.5"], res["auto"], m[res["auto"]],
                     (best / text_r - 1) * 100 if text_r else float("nan"), res["auto_vs_text_ci95"], train_s))
        print(f"{held}: text R@10 {text_r:.4f}, adapter {m['adapter']['Recall']:.4f}, blend {m['blend:0.5']['Recall']:.4f}, "
              f"auto={res['auto']} ({decision.evidence['verdict']}); trained {train_s:.0f} s", flush=True)
    print("\n| left-out domain | text R@10 / N@10 | adapter R@10 / N@10 | blend 0.5 R@10 / N@10 | auto (choice) "
          "R@10 / N@10 | best of adapter, blend vs text | auto - text, 95% CI |")
    print("|---|---|---|---|---|---|---|")
    for held, t, a, b, choice, au, gain, ci, _ in rows:
        print(f"| {held} | {t['Recall']:.4f} / {t['NDCG']:.4f} | {a['Recall']:.4f} / {a['NDCG']:.4f} | "
              f"{b['Recall']:.4f} / {b['NDCG']:.4f} | {au['Recall']:.4f} / {au['NDCG']:.4f} ({choice}) | {gain:+.1f} % | "
              f"[{ci[0]:+.4f}, {ci[1]:+.4f}] |")
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.0f} s; args {vars(args)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "wall_seconds": round(wall, 1), "results": results}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
