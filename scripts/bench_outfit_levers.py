"""Outfit levers on Polyvore (MCN named outfits), measured one at a time (issue 8).

Trains a single-task outfit adapter on the MCN train outfits (early stopping on the 358 selection outfits) and
scores it on the selection and report parts of the MCN valid outfits, raw and blended with text (w=1);
``--lever prior`` scores text similarity plus the NGNN category prior (no training on named outfits).

    python scripts/bench_outfit_levers.py base
    python scripts/bench_outfit_levers.py rank16 rank=16
    python scripts/bench_outfit_levers.py pre_cat pretrain=cat
    python scripts/bench_outfit_levers.py pre_cat_r16_freeze pretrain=cat rank=16 pre_freeze=1
    python scripts/bench_outfit_levers.py prior lever=prior weight=0.1
    python scripts/bench_outfit_levers.py cv0 rank=16 cv=0/2      # train on MCN train + valid folds != 0
    python scripts/bench_outfit_levers.py cv0_train rank=16 cv=0/2 only_train=1   # same questions, MCN train only
    python scripts/bench_outfit_levers.py cv0_ens2 rank=16 cv=0/2 ensemble=2   # two seeds, alone and summed
    python scripts/bench_outfit_levers.py cv0_mango rank=16 cv=0/2 pretrain=mango   # or hm, mango+hm; pre_freeze=1
    python scripts/bench_outfit_levers.py cv0_hard rank=16 cv=0/2 hard=0.5     # half the slot negatives mined
    python scripts/bench_outfit_levers.py cv0_lex rank=16 cv=0/2 lex=0.02,0.05  # + title word overlap (words.py)
    python scripts/bench_outfit_levers.py cv0_wb rank=16 cv=0/2 wordbias=0.1 lex=0.05,0.1  # trained with the overlap

Each run appends a JSON line to ``reports/outfit_levers.jsonl``. The MCN test outfits are never read.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import torch

from textguide.bench import recipes
from textguide.adapters import AdapterConfig, MultiTaskAdapter
from textguide.bench.datasets.polyvore import load_polyvore
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.metrics import text_queries
from textguide.tasks.outfit import OutfitTask, kind_pmi
from textguide.training import TrainConfig, train


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    name, opt = argv[0], dict(a.split("=", 1) for a in argv[1:])

    def o(key, default):
        if isinstance(default, bool):
            return opt.get(key, str(default)) in ("1", "True", "true")
        return type(default)(opt.get(key, default))

    seed = o("seed", 0)
    enc, cache = load_encoder(), EmbeddingCache()
    bench = recipes.prepare_polyvore(enc, cache)
    ds = load_polyvore()
    row = bench.guide.index.row_of
    emb, slots = bench.guide.index.embeddings, bench.task.item_slots
    valid = [[row[i] for i in x.item_ids] for x in ds.outfits if x.split == "valid" and len(x.item_ids) >= 2]
    train_o, sel, rep = bench.task.outfits, bench.task.valid_outfits, bench.report_outfits
    if "cv" in opt:  # fold k of K over the MCN valid outfits; within fold k: 30 % selection, 70 % report
        k, n_folds = map(int, opt["cv"].split("/"))
        folds = np.array_split(np.random.default_rng(123).permutation(len(valid)), n_folds)
        held = [valid[i] for i in folds[k]]
        sel, rep = held[: int(0.3 * len(held))], held[int(0.3 * len(held)):]
        if not o("only_train", False):  # only_train=1: the same fold's questions, trained on MCN train alone
            train_o = train_o + [valid[i] for j in range(n_folds) if j != k for i in folds[j]]
    if o("wordbias", 0.0) > 0:  # training logits carry the word overlap: the adapter learns the rest
        task = WordBiasOutfitTask(emb, train_o, slots, sel, words=bench.task.words)
        task.bias = o("wordbias", 0.0)
    elif o("hard", 0.0) > 0:  # a fraction of the same-slot negatives mined by text similarity to the answer
        task = HardNegativeOutfitTask(emb, train_o, slots, sel, words=bench.task.words)
        task.mine(o("hard", 0.0), o("hard_k", 50))
    else:
        task = OutfitTask(emb, train_o, slots, sel, words=bench.task.words)
    out: dict = {"name": name, "opt": opt}
    t0 = time.time()

    if o("lever", "adapter") == "prior":
        kind_emb, pmi = bench.kind_prior
        t, w = o("temperature", 20.0), o("weight", 0.1)
        logits = t * emb @ kind_emb.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)

        def scorer(partials, _slots):
            q = text_queries(emb, partials)
            return np.hstack([q, w * np.stack([p[list(x)].sum(0) for x in partials]) @ pmi]), np.hstack([emb, p])

        for split, outfits in (("sel", sel), ("rep", rep)):
            b = NS(guide=bench.guide, task=task, report_outfits=outfits)
            out[split] = {k: round(v, 4) for k, v in recipes.evaluate_outfits(b, scorer).items()}
            out[split + "_text"] = {k: round(v, 4) for k, v in
                                    recipes.evaluate_outfits(b, recipes.outfit_scorer(b, "text")).items()}
    else:
        sources = {"cat": lambda: bench.pretrain, "mango": lambda: mango_task(enc, cache, o("mango_text", "title")),
                   "hm": lambda: hm_task(enc, cache)}
        pretrain = [(x, sources[x]()) for x in o("pretrain", "").split("+") if x]  # built once for all members
        models = []
        for i in range(o("ensemble", 1)):  # ensemble=N: N seeds, scored alone and as the sum of their scores
            models.append(train_one(task, pretrain, enc.dim, seed + i, o, out))
        for split, outfits in (("sel", sel), ("rep", rep)):
            b = NS(guide=bench.guide, task=task, report_outfits=outfits)
            for j, model in enumerate(models):
                tag = split if j == 0 else f"{split}_seed{seed + j}"
                out[tag] = {k: round(v, 4) for k, v in
                            recipes.evaluate_outfits(b, recipes.outfit_scorer(b, "adapter", model)).items()}
                model.config.text_blend["outfit"] = 1.0
                out[tag + "_blend1"] = {k: round(v, 4) for k, v in recipes.evaluate_outfits(
                    b, recipes.outfit_scorer(b, "adapter", model)).items()}
            for lw in [float(x) for x in opt["lex"].split(",")] if "lex" in opt else []:  # + title word overlap
                out[f"{split}_blend1_lex{lw:g}"] = {k: round(v, 4) for k, v in recipes.evaluate_outfits(
                    b, recipes.outfit_scorer(b, "adapter", models[0], word_weight=lw)).items()}
                out[f"{split}_text_lex{lw:g}"] = {k: round(v, 4) for k, v in recipes.evaluate_outfits(
                    b, recipes.outfit_scorer(b, "text", word_weight=lw)).items()}
            if len(models) > 1:  # inner products of the joined (query, item) vectors: the sum of the members'
                scorers = [recipes.outfit_scorer(b, "adapter", m) for m in models]

                def joined(partials, slots_, scorers=scorers):
                    parts = [f(partials, slots_) for f in scorers]
                    return np.hstack([q for q, _ in parts]), np.hstack([v for _, v in parts])

                out[split + "_ensemble_blend1"] = {k: round(v, 4) for k, v in
                                                   recipes.evaluate_outfits(b, joined).items()}
            for model in models:
                model.config.text_blend.pop("outfit")
    out["seconds"] = round(time.time() - t0)
    print(json.dumps(out), flush=True)
    Path("reports").mkdir(exist_ok=True)
    with open("reports/outfit_levers.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(out) + "\n")


def train_one(task: OutfitTask, pretrain: list[tuple[str, OutfitTask]], input_dim: int, seed: int, o,
              out: dict) -> MultiTaskAdapter:
    """One single-task outfit adapter, pre-trained on each ``(source, task)`` in turn (``pre_freeze=1``: the
    outfit head only), then early-stopped on ``task``'s selection. Records go to ``out["pretrain_<source>"]``."""
    torch.manual_seed(seed)
    model = MultiTaskAdapter(AdapterConfig(input_dim=input_dim, dim=128, max_history=20, tasks=("outfit",),
                                           n_slots=len(recipes.POLYVORE_SLOTS), outfit_pair_rank=o("rank", 0)))
    tc = dict(batch_size=128, eval_every=100, seed=seed, show_progress=False,
              outfit_visible_negatives=o("visneg", True))
    for source, pre_task in pretrain:
        frozen = [p for n, p in model.named_parameters()
                  if o("pre_freeze", False) and not n.startswith(("outfit.", "logit_scale"))]
        for p in frozen:
            p.requires_grad_(False)
        # the NGNN category outfits as measured first (2000 steps, 150 s); other catalogs' outfits longer
        steps, secs = (2000, 150.0) if source == "cat" else (4000, o("pre_secs", 150.0))
        r = train(model, {"outfit": pre_task}, TrainConfig(steps=steps, patience=4, max_seconds=secs, **tc))
        for p in frozen:
            p.requires_grad_(True)
        out.setdefault("pretrain_" + source, []).append({"best_step": r.best_step, "valid": r.best_metrics})
    model.config.outfit_word_weight = o("wordbias", 0.0)  # wordbias=: validated as trained, with the overlap
    res = train(model, {"outfit": task}, TrainConfig(steps=3000, patience=6, max_seconds=o("secs", 240.0), **tc))
    model.config.outfit_word_weight = 0.0  # the rows add the overlap themselves (lex=)
    out.setdefault("best_steps", []).append(res.best_step)
    return model


class HardNegativeOutfitTask(OutfitTask):
    """OutfitTask whose same-slot negatives are partly the answer's nearest same-slot items by text (below the
    near-duplicate threshold): harder than random ones."""

    def mine(self, fraction: float, k: int, threshold: float = 0.9) -> None:
        self.fraction, self.neighbours = fraction, {}
        for slot, pool in self.slot_pools.items():
            sims = self.item_emb[pool] @ self.item_emb[pool].T
            sims[sims > threshold] = -np.inf  # itself and its near-duplicates
            top = np.argsort(-sims, axis=1)[:, :k]
            for r, row in enumerate(pool):
                self.neighbours[int(row)] = pool[top[r]]

    def draw_negatives(self, rng, positives, size):
        n_hard = int(round(self.fraction * size))
        return np.stack([np.concatenate([rng.choice(self.neighbours[int(p)], size=n_hard),
                                         rng.choice(self.slot_pools[int(self.item_slots[p])], size=size - n_hard)])
                         for p in positives])


class WordBiasOutfitTask(OutfitTask):
    """OutfitTask whose training logits carry ``bias`` x the title word overlap of each candidate (in-batch
    answers and same-slot negatives) with the query's visible items, so the adapter learns what the overlap
    does not already give (the served score adds the overlap). The visible items themselves get no bias."""

    bias: float = 0.0

    def draw_negatives(self, rng, positives, size):
        self.last_negatives = super().draw_negatives(rng, positives, size)
        return self.last_negatives

    def assemble(self, rng, positives, visible, max_history, config):
        batch = super().assemble(rng, positives, visible, max_history, config)
        b, m = len(positives), self.last_negatives.shape[1]
        bias = np.zeros((b, b + batch["row_candidates"].shape[1]), np.float32)
        for i, v in enumerate(visible):
            bias[i, :b] = self.words.scores(v, positives)
            bias[i, b:b + m] = self.words.scores(v, self.last_negatives[i])
        batch["logit_bias"] = torch.from_numpy(self.bias * bias)
        return batch


MANGO_SLOTS = {"Bottoms": "bottom", "Footwear": "shoe", "Bags": "bag", "Wallets & cases": "bag",
               "Jewellery": "accessory", "Glasses": "accessory", "Hats, scarves and gloves": "accessory",
               "Belts and Ties": "accessory", "Tops": "upper", "Outerwear": "upper",
               "Dresses, jumpsuits and Complete set": "upper"}


def mango_task(enc, cache, text: str = "title") -> OutfitTask:
    """The 7,842 Mango outfits (attribute text) in Polyvore's slots; 10 % of the outfits validate."""
    from textguide.bench.datasets.mango import load_mango
    from textguide.encoder import encode_texts

    ds = load_mango()
    items = ds.items.reset_index(drop=True)
    row = {i: r for r, i in enumerate(items["id"])}
    slot = [MANGO_SLOTS.get(f, MANGO_SLOTS.get(c, "")) for f, c in zip(items["category"], items["slot"])]
    slots = np.array([recipes.POLYVORE_SLOTS.index(s) if s else -1 for s in slot], dtype=np.int64)
    emb = encode_texts(enc, items[text].tolist(), cache=cache)
    outfits = [[row[i] for i in x.item_ids] for x in ds.outfits]
    order = np.random.default_rng(7).permutation(len(outfits))
    cut = len(outfits) // 10
    return OutfitTask(emb, [outfits[i] for i in order[cut:]], slots, [outfits[i] for i in order[:cut]])


def hm_task(enc, cache) -> OutfitTask:
    """H&M same-day baskets of different product groups, in Polyvore's slots where one fits (others: -1)."""
    b = recipes.prepare_hm_baskets(enc, cache)
    names = {"Garment Upper body": "upper", "Garment Full body": "upper", "Garment Lower body": "bottom",
             "Shoes": "shoe", "Bags": "bag", "Accessories": "accessory"}
    poly = np.array([recipes.POLYVORE_SLOTS.index(names[g]) if g in names else -1 for g in b.slots])
    return OutfitTask(b.task.item_emb, b.task.outfits, poly[b.task.item_slots], b.task.valid_outfits)


if __name__ == "__main__":
    main(sys.argv[1:])
