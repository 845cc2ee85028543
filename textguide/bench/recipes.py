"""Recipes: turn a public dataset into a guide, a training task and its evaluation protocol.

Each ``prepare_*`` function embeds a dataset's catalog into a :class:`~textguide.guide.Guide` and builds
the :mod:`textguide.tasks` task; each ``evaluate_*`` function scores a method on the dataset's
validation protocol and returns ``{metric: value}``. Benchmark scripts and ``textguide train`` use them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd

from ..catalog import Catalog
from .datasets.polyvore import SLOTS as POLYVORE_SLOT_NAMES
from ..encoder import EmbeddingCache, TextEncoder
from ..metrics import (
    best_f1_threshold,
    fitb_accuracy,
    full_ranking_ranks,
    grouped_auc,
    metrics_from_ranks,
    near_duplicate_rate,
    precision_recall_f1,
    roc_auc,
)
from ..coupon_hybrid import ACTIVITY, FEATURES, CouponHybrid, household_activity, smoothed_rates
from ..guide import Guide, verbalise_profile
from ..index import ItemIndex
from ..tasks import TASKS
from ..tasks.coupon import CouponTask, coupon_logits_indexed, text_cosines
from ..tasks.outfit import OutfitScorer, OutfitScores, OutfitTask, kind_pmi, structure_task
from ..tasks.outfit import outfit_scorer as task_outfit_scorer
from ..tasks.recommend import SequenceTask, history_scorer
from ..words import WordOverlap

logger = logging.getLogger("textguide")

POLYVORE_SLOTS = list(POLYVORE_SLOT_NAMES)  # the slot vocabulary of the Polyvore loader


def items_catalog(items: pd.DataFrame, columns: tuple[str, ...] = ("title", "category")) -> Catalog:
    """A catalog from a dataset's items frame (``id``, ``text`` and metadata columns)."""
    meta = items[["id", *[c for c in columns if c in items.columns]]].reset_index(drop=True).copy()
    return Catalog(ids=items["id"].astype(str).tolist(), texts=items["text"].astype(str).tolist(), metadata=meta)


def _split_users(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(frac * n))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


# ------------------------------------------------------------------------------------------ recommendation
@dataclass
class SequenceBench:
    """A next-item dataset on a guide: train task, a selection split and a report split (row indices)."""

    name: str
    guide: Guide
    task: SequenceTask
    report_histories: list[list[int]]
    report_targets: np.ndarray
    popularity: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    label: ClassVar[str] = "adapter"  # what a trained model's report row is called

    def report_metrics(self, model: Any, hybrid: CouponHybrid | None = None) -> dict[str, float]:
        """The report split's metrics of a trained adapter."""
        return evaluate_sequences(self, sequence_scores(self, "adapter", model))

    def baselines(self, seed: int = 0) -> dict[str, dict[str, float]]:
        """The report split's metrics of the baselines without adapter: popularity and text similarity."""
        return {"popularity": evaluate_sequences(self, sequence_scores(self, "popularity")),
                "text similarity": evaluate_sequences(self, sequence_scores(self, "text"))}

    def selection_metric(self, model: Any) -> float:
        """The task's selection metric on the selection split (text similarity if ``model`` is None)."""
        return float(TASKS[self.task.kind].per_example(self.task, model).mean())

    def serve_meta(self, model: Any = None) -> dict[str, Any]:
        """What the guide must remember to serve this task (nothing besides the adapter)."""
        return {}

    def refit_task(self) -> SequenceTask:
        """The training examples plus every validation user's (history, validation item), selection and report
        users alike, without validation data: what a model is trained on once its recipe is chosen."""
        t = self.task
        return SequenceTask(t.item_emb, t.histories + list(t.valid_histories or []) + self.report_histories,
                            np.concatenate([t.targets, np.asarray(t.valid_targets if t.valid_targets is not None
                                                                   else [], dtype=np.int64),
                                            self.report_targets]).astype(np.int64).tolist())


def prepare_scientific(encoder: TextEncoder, cache: EmbeddingCache | None = None, select_frac: float = 0.2,
                       seed: int = 0) -> SequenceBench:
    """Amazon Scientific (UniSRec protocol): train on train.inter; valid.inter users are split into a
    selection part (early stopping) and a report part (the numbers we publish). Test is held out."""
    from .datasets.amazon_scientific import load_scientific

    ds = load_scientific()
    guide = Guide.build(items_catalog(ds.items), encoder, cache=cache)
    row = guide.index.row_of
    hist = [[row[i] for i in ex.history] for ex in ds.train]
    targ = [row[ex.target] for ex in ds.train]
    v_hist = [[row[i] for i in ex.history] for ex in ds.valid]
    v_targ = np.array([row[ex.target] for ex in ds.valid])
    sel, rep = _split_users(len(v_hist), select_frac, seed)
    task = SequenceTask(guide.index.embeddings, hist, targ, [v_hist[i] for i in sel], v_targ[sel].tolist())
    pop = np.bincount(np.array(targ), minlength=len(row)).astype(np.float32)  # each interaction once
    return SequenceBench("amazon-scientific", guide, task, [v_hist[i] for i in rep], v_targ[rep], pop,
                         {"items": len(row), "train_rows": len(hist), "select_users": len(sel), "report_users": len(rep)})


def sequence_scores(bench: SequenceBench, method: str, model: Any = None) -> Callable[[list[list[int]]], np.ndarray]:
    """:func:`textguide.tasks.recommend.history_scorer` on a benchmark's catalog and popularity."""
    return history_scorer(bench.guide.index.embeddings, method, model, bench.popularity)


def evaluate_sequences(bench: SequenceBench, scorer: Callable[[list[list[int]]], np.ndarray],
                       ks: tuple[int, ...] = (10, 50)) -> dict[str, float]:
    """Full-ranking Recall@k / NDCG@k on the report split, history items excluded."""
    m = metrics_from_ranks(full_ranking_ranks(scorer, bench.report_histories, bench.report_targets), ks)
    return {key: m[key] for key in m if key.split("@")[0] in ("Recall", "NDCG")}


# ------------------------------------------------------------------------------------------ outfits
@dataclass
class OutfitBench:
    """Polyvore outfits on a guide: train task, selection and report outfits (row indices)."""

    name: str
    guide: Guide
    task: OutfitTask
    report_outfits: list[list[int]]
    slots: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    pretrain: OutfitTask | None = None  # outfits of item kinds to pre-train the outfit head on (polyvore: NGNN)
    kind_prior: tuple[np.ndarray, np.ndarray] | None = None  # kind-name embeddings and their PMI (polyvore: NGNN)

    label: ClassVar[str] = "adapter"

    def report_metrics(self, model: Any, hybrid: CouponHybrid | None = None) -> dict[str, float]:
        """The report split's metrics of a trained adapter."""
        return evaluate_outfits(self, outfit_scorer(self, "adapter", model))

    def baselines(self, seed: int = 0) -> dict[str, dict[str, float]]:
        """The report split's metrics of text similarity."""
        return {"text similarity": evaluate_outfits(self, outfit_scorer(self, "text"))}

    def selection_metric(self, model: Any) -> float:
        """The task's selection metric on the selection split (text similarity if ``model`` is None)."""
        return float(TASKS[self.task.kind].per_example(self.task, model).mean())

    def serve_meta(self, model: Any = None) -> dict[str, Any]:
        """The slot vocabulary the guide serves ``complete_outfit(slot=...)`` with."""
        return {"slot_field": "slot", "slots": list(self.slots)}


def prepare_polyvore(encoder: TextEncoder, cache: EmbeddingCache | None = None, select_frac: float = 0.3,
                     seed: int = 0) -> OutfitBench:
    """Polyvore (Maryland, MCN named outfits): train on MCN train outfits; MCN valid outfits are split into
    selection and report parts. Item text = the item name (the same for every split)."""
    from .datasets.polyvore import load_polyvore

    ds = load_polyvore()
    items = ds.items.copy()
    items["text"] = items["title"]
    items["category"] = items["slot"]
    guide = Guide.build(items_catalog(items, ("title", "category", "slot")), encoder, cache=cache)
    row = guide.index.row_of
    slot_of = {s: i for i, s in enumerate(POLYVORE_SLOTS)}
    item_slots = np.array([slot_of.get(s, -1) for s in guide.index.metadata["slot"]], dtype=np.int64)
    train = [[row[i] for i in o.item_ids] for o in ds.outfits if o.split == "train" and len(o.item_ids) >= 2]
    valid = [[row[i] for i in o.item_ids] for o in ds.outfits if o.split == "valid" and len(o.item_ids) >= 2]
    sel, rep = _split_users(len(valid), select_frac, seed)
    words = WordOverlap(guide.index.metadata["title"].tolist())  # served with the adapter's word weight
    task = OutfitTask(guide.index.embeddings, train, item_slots, [valid[i] for i in sel], words=words)
    pretrain = polyvore_structure(ds, encoder, cache)
    names = sorted({c for o in ds.category_outfits for c in o})  # the rows of pretrain.item_emb
    fit = [o for o, s in zip(ds.category_outfits, ds.category_outfit_info["split"]) if s != "ngnn-test"]
    return OutfitBench("polyvore", guide, task, [valid[i] for i in rep], POLYVORE_SLOTS,
                       {"items": len(row), "train_outfits": len(train), "select_outfits": len(sel),
                        "report_outfits": len(rep), "pretrain_outfits": len(pretrain.outfits), "kinds": len(names)},
                       pretrain, (pretrain.item_emb, kind_pmi(fit, names)))


def polyvore_structure(ds: Any, encoder: TextEncoder, cache: EmbeddingCache | None = None) -> OutfitTask:
    """The NGNN outfits known only by category names, as a pre-training task (NGNN test outfits validate).
    A category's slot is the most common slot of the named items of that category (-1 if none has one)."""
    from ..encoder import encode_texts

    named = ds.items[(ds.items["category"] != "") & ds.items["slot"].isin(POLYVORE_SLOTS)]
    majority = named.groupby("category")["slot"].agg(lambda s: s.value_counts().index[0])
    slot_of = {c: POLYVORE_SLOTS.index(s) for c, s in majority.items()}
    names = sorted({c for o in ds.category_outfits for c in o})
    emb = encode_texts(encoder, names, cache=cache)
    valid = (ds.category_outfit_info["split"] == "ngnn-test").tolist()
    return structure_task(ds.category_outfits, names, emb, slot_of, valid)


def outfit_scorer(bench: OutfitBench, method: str, model: Any = None, word_weight: float | None = None
                  ) -> OutfitScorer:
    """:func:`textguide.tasks.outfit.outfit_scorer` on a benchmark's catalog (with its title words, if any)."""
    return task_outfit_scorer(bench.guide.index.embeddings, method, model, bench.task.item_slots,
                              bench.task.words, word_weight)


def evaluate_outfits(bench: OutfitBench, scorer, seed: int = 0) -> dict[str, float]:
    """FITB accuracy (1 of 4, same slot), compatibility AUC (real vs random same-slot replacements),
    complete-the-look Recall@10 among all items of the wanted slot, and the near-duplicate rate of top-10."""
    task = bench.task
    emb = bench.guide.index.embeddings
    partials, slots, cands = task.fitb_questions(bench.report_outfits, seed=seed)
    scored = OutfitScores.of(scorer(partials, slots), partials)
    fitb = fitb_accuracy(scored.pairs(cands), np.zeros(len(cands), dtype=np.int64))

    # compatibility: an outfit's score = mean over its items of score(item | the rest, its slot)
    rng = np.random.default_rng(seed + 1)
    pools = task.slot_pools

    def outfit_score(outfits: list[list[int]]) -> np.ndarray:
        parts, sl, ans, owner = [], [], [], []
        for o_i, o in enumerate(outfits):
            for j in range(len(o)):
                parts.append(o[:j] + o[j + 1:])
                sl.append(int(task.item_slots[o[j]]))
                ans.append(o[j])
                owner.append(o_i)
        s = OutfitScores.of(scorer(parts, sl), parts).pairs(np.array(ans)[:, None])[:, 0]
        return np.bincount(owner, s, len(outfits)) / np.bincount(owner, minlength=len(outfits))

    fakes = [[int(rng.choice(pools[int(task.item_slots[i])])) for i in o] for o in bench.report_outfits]
    pos, neg = outfit_score(bench.report_outfits), outfit_score(fakes)
    auc = roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])

    # complete the look: rank the hidden item among all items of its slot
    hits, dup = [], []
    for p_i, (part, slot, cand) in enumerate(zip(partials, slots, cands)):
        pool = np.setdiff1d(pools[slot], part)
        scores = scored.row(p_i, pool)
        top = pool[np.argsort(-scores)[:10]]
        hits.append(cand[0] in set(top.tolist()))
        dup.append(near_duplicate_rate(emb[part].mean(0, keepdims=True), emb[top][None], threshold=0.9))
    return {"FITB": fitb, "AUC": auc, "CTL-Recall@10": float(np.mean(hits)), "NearDup@10": float(np.mean(dup))}


# ------------------------------------------------------------------------------------------ coupons
@dataclass
class CouponBench:
    """Complete Journey coupon redemption on a guide, split by household."""

    name: str
    guide: Guide
    task: CouponTask
    coupon_ids: list[str]
    households: list[str]
    report: pd.DataFrame  # household row, coupon row, label, user index, coupon index
    train_frame: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    select_frame: pd.DataFrame | None = None  # the selection households' examples (fits the coupon hybrid)

    label: ClassVar[str] = "hybrid: priors + adapter"  # the served coupon score

    def report_metrics(self, model: Any, hybrid: CouponHybrid | None = None) -> dict[str, float]:
        """The report split's metrics of the served score (:func:`evaluate_coupon_hybrid`)."""
        return evaluate_coupon_hybrid(self, model, hybrid)

    def baselines(self, seed: int = 0) -> dict[str, dict[str, float]]:
        """:func:`coupon_baselines`."""
        return coupon_baselines(self, seed)

    def selection_metric(self, model: Any) -> float:
        """AUC on the selection households: the hybrid's (2-fold by household) or text similarity's (None)."""
        if model is not None:
            return coupon_hybrid_selection_auc(self, model)
        t = self.task
        frame = pd.DataFrame({"u": t.valid_user_index, "c": t.valid_coupon_index, "label": t.valid_labels})
        return roc_auc(frame["label"].to_numpy(), coupon_scores(self, "text", frame, model))

    def serve_meta(self, model: Any = None) -> dict[str, Any]:
        """Profiles are encoded text; with a model, the fitted hybrid that ``rank_coupons`` serves."""
        if model is not None:
            return {"profile": "text", "coupon_hybrid": fit_coupon_hybrid(self, model).to_dict()}
        return {"profile": "text"}


def prepare_completejourney(encoder: TextEncoder, cache: EmbeddingCache | None = None, seed: int = 0,
                            max_coupon_items: int = 30) -> CouponBench:
    """Complete Journey: (household, received coupon) -> redeemed? Households split 60/20/20 into
    train / selection / report. Users are their purchases (transaction sample) plus a verbalised profile."""
    from .datasets.completejourney import coupon_examples, load_completejourney

    ds = load_completejourney()
    rng = np.random.default_rng(seed)
    coupon_ids = sorted(ds.coupons)
    # a coupon is represented by (at most max_coupon_items of) the products it covers, sampled once
    covered = {}
    for c in coupon_ids:
        items = list(dict.fromkeys(ds.coupons[c]))
        if len(items) > max_coupon_items:
            items = rng.choice(items, max_coupon_items, replace=False).tolist()
        covered[c] = items
    used = set(ds.transactions["item_id"]) | {i for c in coupon_ids for i in covered[c]}
    items = ds.products[ds.products["id"].isin(used)].reset_index(drop=True)
    guide = Guide.build(items_catalog(items), encoder, cache=cache)
    row = guide.index.row_of
    coupons = [[row[i] for i in covered[c] if i in row] for c in coupon_ids]
    keep = [i for i, c in enumerate(coupons) if c]
    coupon_ids, coupons = [coupon_ids[i] for i in keep], [coupons[i] for i in keep]

    examples = coupon_examples(ds)
    activity = household_activity(ds.received, ds.campaigns, ds.redemptions, ds.transactions)
    examples = examples.merge(activity, on=["household_id", "campaign_id"], how="left").fillna(
        {c: 0.0 for c in ACTIVITY.values()})
    households = sorted(examples["household_id"].unique())
    h_index = {h: i for i, h in enumerate(households)}
    tx = ds.transactions[ds.transactions["item_id"].isin(row.keys())].sort_values("timestamp")
    by_h = tx.groupby("household_id")["item_id"].apply(list).to_dict()
    histories = [[row[i] for i in by_h.get(h, [])][-200:] for h in households]
    c_index = {c: i for i, c in enumerate(coupon_ids)}
    demo = ds.demographics
    prof_text = [verbalise_profile(demo.loc[h].to_dict()) if h in demo.index else "unknown customer" for h in households]
    profiles = encoder.encode(prof_text, show_progress=False)
    known = np.array([h in demo.index for h in households])
    profiles[~known] = 0.0

    examples = examples.assign(u=examples["household_id"].map(h_index), c=examples["coupon_id"].map(c_index))
    examples = examples.dropna(subset=["c"]).astype({"c": int})
    perm = rng.permutation(len(households))
    n = len(households)
    part = np.empty(n, dtype="<U6")
    part[perm[: int(0.6 * n)]] = "train"
    part[perm[int(0.6 * n): int(0.8 * n)]] = "select"
    part[perm[int(0.8 * n):]] = "report"
    examples["part"] = part[examples["u"].to_numpy()]
    tr, se, re_ = (examples[examples["part"] == p] for p in ("train", "select", "report"))
    task = CouponTask(
        guide.index.embeddings, histories, coupons, tr["label"].to_numpy(), profiles,
        tr["u"].to_numpy(), tr["c"].to_numpy(),
        se["label"].to_numpy(), se["u"].to_numpy(), se["c"].to_numpy(),
    )
    info = {"items": len(row), "coupons": len(coupon_ids), "households": n, "train_examples": len(tr),
            "train_positives": int(tr["label"].sum()), "report_examples": len(re_),
            "report_positives": int(re_["label"].sum()), "households_with_purchases": int(sum(bool(h) for h in histories))}
    guide.coupons = {c: [guide.index.ids[r] for r in rows] for c, rows in zip(coupon_ids, coupons)}
    return CouponBench("completejourney", guide, task, coupon_ids, households, re_.reset_index(drop=True),
                       tr.reset_index(drop=True), info, se.reset_index(drop=True))


def coupon_features(bench: CouponBench, frame: pd.DataFrame) -> np.ndarray:
    """Hand-made features for the gradient-boosted-trees baseline: text similarity of history and coupon,
    coupon popularity in training, sizes, and the embedded profile reduced to 16 dimensions."""
    emb = bench.guide.index.embeddings
    task = bench.task
    u_vec = np.stack([emb[h].mean(0) if h else np.zeros(emb.shape[1], np.float32) for h in task.user_histories])
    c_vec = np.stack([emb[c].mean(0) for c in task.coupon_items])
    tf = bench.train_frame
    rate = np.zeros(len(task.coupon_items))
    cnt = np.bincount(tf["c"], minlength=len(rate))
    pos = np.bincount(tf["c"], weights=tf["label"], minlength=len(rate))
    rate = (pos + 0.01) / (cnt + 1)
    u, c = frame["u"].to_numpy(), frame["c"].to_numpy()
    sim = np.einsum("nd,nd->n", u_vec[u], c_vec[c])
    n_hist = np.array([len(h) for h in task.user_histories])[u]
    n_items = np.array([len(x) for x in task.coupon_items])[c]
    prof = task.profiles[u][:, :16] if task.profiles is not None else np.zeros((len(u), 0))
    return np.column_stack([sim, rate[c], n_hist, n_items, prof]).astype(np.float32)


def coupon_prior(bench: CouponBench) -> tuple[dict[str, float], float]:
    """Smoothed redemption rate per coupon id in the training households, and the global rate."""
    tf = bench.train_frame
    rates, g = smoothed_rates(tf["c"].to_numpy(), tf["label"].to_numpy(), len(bench.coupon_ids))
    return dict(zip(bench.coupon_ids, rates.tolist())), g


def hybrid_features(bench: CouponBench, frame: pd.DataFrame, model: Any, prior: dict[str, float],
                    global_rate: float) -> np.ndarray:
    """The :data:`~textguide.coupon_hybrid.FEATURES` matrix of ``frame`` rows (household activity columns
    come from :func:`prepare_completejourney`)."""
    task, emb = bench.task, bench.guide.index.embeddings
    u, c = frame["u"].to_numpy(), frame["c"].to_numpy()
    prior_logit = CouponHybrid([], 0.0, [], [], prior, global_rate).prior_logit([bench.coupon_ids[i] for i in c])
    cols = {"prior_logit": prior_logit,
            "adapter_logit": np.zeros(len(u)) if model is None else coupon_scores(bench, "adapter", frame, model),
            "text_cosine": text_cosines(emb, task.user_histories, task.coupon_items)[u, c]}
    cols.update({k: frame[k].to_numpy(np.float64) for k in ACTIVITY.values()})
    return np.column_stack([cols[f] for f in FEATURES])


def fit_coupon_hybrid(bench: CouponBench, model: Any) -> CouponHybrid:
    """Fit the hybrid on the selection households (never seen by the adapter's training); priors from training."""
    if bench.select_frame is None:
        raise ValueError("this coupon benchmark has no selection frame; prepare it with prepare_completejourney")
    prior, g = coupon_prior(bench)
    x = hybrid_features(bench, bench.select_frame, model, prior, g)
    return CouponHybrid.fit(x, bench.select_frame["label"].to_numpy(), prior, g)


def coupon_scores(bench: CouponBench, method: str, frame: pd.DataFrame, model: Any = None,
                  gbt: Any = None) -> np.ndarray:
    """Scores for ``frame`` rows by ``popularity``, ``text`` (the GBT features' history-coupon text dot
    product), ``gbt`` or ``adapter`` (the adapter's logits, :func:`textguide.tasks.coupon.coupon_logits_indexed`)."""
    task, emb = bench.task, bench.guide.index.embeddings
    u, c = frame["u"].to_numpy(), frame["c"].to_numpy()
    if method == "popularity":
        tf = bench.train_frame
        cnt = np.bincount(tf["c"], minlength=len(task.coupon_items))
        pos = np.bincount(tf["c"], weights=tf["label"], minlength=len(task.coupon_items))
        return ((pos + 0.01) / (cnt + 1))[c]
    if method == "text":
        return coupon_features(bench, frame)[:, 0]
    if method == "gbt":
        return gbt.predict_proba(coupon_features(bench, frame))[:, 1]
    if method == "adapter":
        return coupon_logits_indexed(model, emb, task.user_histories, task.coupon_items, u, c, task.profiles)
    raise ValueError(f"unknown method {method!r}: use popularity, text, gbt or adapter")


def evaluate_coupons(bench: CouponBench, scores: np.ndarray, frame: pd.DataFrame | None = None,
                     threshold: float | None = None) -> dict[str, float]:
    """AUC, mean per-coupon AUC, Recall@5 of redeemed among received coupons (per household), and
    precision / recall / F1 at ``threshold`` (default: the best-F1 threshold on these scores — optimistic)."""
    frame = bench.report if frame is None else frame
    labels = frame["label"].to_numpy()
    probs = 1 / (1 + np.exp(-scores)) if scores.min() < 0 or scores.max() > 1 else scores
    auc = roc_auc(labels, probs)
    cauc, _ = grouped_auc(labels, probs, frame["c"].to_numpy())
    rec = []
    for _, g in frame.assign(s=probs).groupby(["u", "campaign_id"]):
        if g["label"].sum() == 0:
            continue
        top = g.nlargest(5, "s")
        rec.append(top["label"].sum() / g["label"].sum())
    if threshold is None:
        threshold, _ = best_f1_threshold(labels, probs)
    p, r, f1 = precision_recall_f1(labels, probs, threshold)
    return {"AUC": auc, "CouponAUC": cauc, "Recall@5": float(np.mean(rec)), "P": p, "R": r, "F1": f1}


# ------------------------------------------------------------------------------------------ in-vehicle coupons
def evaluate_coupon_hybrid(bench: Any, model: Any, hybrid: CouponHybrid | None = None
                           ) -> dict[str, float]:
    """Report-split metrics of the served coupon score: the hybrid of priors, household activity and the
    adapter's affinity (fitted on the selection households unless ``hybrid`` is given; the F1 threshold is
    chosen on the selection households)."""
    hybrid = hybrid or fit_coupon_hybrid(bench, model)
    sel = bench.select_frame
    s_sel = hybrid.logits(hybrid_features(bench, sel, model, hybrid.prior, hybrid.global_rate))
    thr, _ = best_f1_threshold(sel["label"].to_numpy(), 1 / (1 + np.exp(-s_sel)))
    s_rep = hybrid.logits(hybrid_features(bench, bench.report, model, hybrid.prior, hybrid.global_rate))
    return evaluate_coupons(bench, s_rep, threshold=thr)


def coupon_hybrid_selection_auc(bench: Any, model: Any) -> float:
    """Selection-split AUC of the hybrid without fitting and scoring on the same rows: 2-fold by household."""
    sel = bench.select_frame
    prior, g = coupon_prior(bench)
    x, y = hybrid_features(bench, sel, model, prior, g), sel["label"].to_numpy()
    fold = (sel["u"].to_numpy() % 2).astype(bool)
    scores = np.zeros(len(y))
    for f in (fold, ~fold):
        scores[f] = CouponHybrid.fit(x[~f], y[~f], prior, g).logits(x[f])
    return roc_auc(y, scores)


def coupon_baselines(bench: Any, seed: int = 0) -> dict[str, dict[str, float]]:
    """Coupon baselines on the report households: popularity (smoothed redemption rate), text similarity, and
    LightGBM on the hybrid's features without the adapter (priors + household activity + text cosine), fitted
    on the training households."""
    import lightgbm

    rows = {m: evaluate_coupons(bench, coupon_scores(bench, m, bench.report))
            for m in ("popularity", "text")}
    rows["text similarity"] = rows.pop("text")
    prior, g = coupon_prior(bench)
    gbt = lightgbm.LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=31, verbose=-1, random_state=seed)
    gbt.fit(hybrid_features(bench, bench.train_frame, None, prior, g), bench.train_frame["label"].to_numpy())
    p_sel, p_rep = (gbt.predict_proba(hybrid_features(bench, f, None, prior, g))[:, 1]
                    for f in (bench.select_frame, bench.report))
    thr, _ = best_f1_threshold(bench.select_frame["label"].to_numpy(), p_sel)
    rows["lightgbm (priors + activity + text)"] = evaluate_coupons(bench, p_rep, threshold=thr)
    return rows


@dataclass
class ContextCouponBench:
    """UCI in-vehicle coupon acceptance: a user is the verbalised driver + context (a profile vector, no
    purchase history); a coupon is its verbalised offer, embedded as one "item"."""

    name: str
    guide: Guide
    task: CouponTask
    report_users: np.ndarray
    report_coupons: np.ndarray
    report_labels: np.ndarray
    frame: pd.DataFrame
    parts: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def prepare_uci_coupon(encoder: TextEncoder, cache: EmbeddingCache | None = None, seed: int = 0,
                       by_driver: bool = False) -> ContextCouponBench:
    """UCI in-vehicle coupons: rows split 60/20/20 at random into train / selection / report; ``by_driver``
    splits drivers instead (every row of one driver in one part; see :func:`uci_driver_ids`)."""
    from .datasets.uci_coupon import load_uci_coupon

    from ..encoder import encode_texts

    df = load_uci_coupon().reset_index(drop=True)
    offers = sorted(df["coupon_text"].unique())
    items = pd.DataFrame({"id": [f"uci-offer:{i}" for i in range(len(offers))], "title": offers, "text": offers,
                          "category": "coupon"})
    guide = Guide.build(items_catalog(items), encoder, cache=cache)
    offer_row = {t: i for i, t in enumerate(offers)}
    profiles = encode_texts(encoder, df["user_text"].tolist(), cache=cache, show_progress=False)
    users = np.arange(len(df))
    coupons = df["coupon_text"].map(offer_row).to_numpy()
    labels = df["label"].to_numpy().astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(df))
    parts = np.empty(len(df), dtype="<U6")
    parts[perm[: int(0.6 * len(df))]] = "train"
    parts[perm[int(0.6 * len(df)): int(0.8 * len(df))]] = "select"
    parts[perm[int(0.8 * len(df)):]] = "report"
    if by_driver:  # 60/20/20 of the drivers, each with all its rows
        driver = uci_driver_ids(df)
        n = driver.max() + 1
        order = np.random.default_rng(seed).permutation(n)  # order[k]: the driver at position k
        part_of = np.empty(n, dtype="<U6")
        part_of[order[: int(0.6 * n)]], part_of[order[int(0.6 * n): int(0.8 * n)]] = "train", "select"
        part_of[order[int(0.8 * n):]] = "report"
        parts = part_of[driver]
    tr, se, rp = (parts == p for p in ("train", "select", "report"))
    task = CouponTask(guide.index.embeddings, [[] for _ in users], [[i] for i in range(len(offers))], labels[tr],
                      profiles, users[tr], coupons[tr], labels[se], users[se], coupons[se])
    return ContextCouponBench("uci-coupon", guide, task, users[rp], coupons[rp], labels[rp], df, parts,
                              {"rows": len(df), "offers": len(offers), "train": int(tr.sum()), "report": int(rp.sum()),
                               "accept_rate": float(labels.mean())})


#: the UCI columns that describe the driver (the survey has no respondent id; these identify one)
UCI_DRIVER_COLUMNS = ("gender", "age", "maritalStatus", "has_children", "education", "occupation", "income", "car",
                      "Bar", "CoffeeHouse", "CarryAway", "RestaurantLessThan20", "Restaurant20To50")


def uci_driver_ids(df: pd.DataFrame) -> np.ndarray:
    """One integer per distinct driver description (:data:`UCI_DRIVER_COLUMNS`), 0..n_drivers-1."""
    return df.groupby(list(UCI_DRIVER_COLUMNS), dropna=False, sort=False).ngroup().to_numpy()


def uci_baseline_popularity(bench: ContextCouponBench) -> dict[str, float]:
    """Each offer's smoothed acceptance rate in the training rows (the prior a user would start from)."""
    t = bench.task
    rate, _ = smoothed_rates(t.coupon_index, t.labels, len(t.coupon_items))
    return _binary_metrics(t.valid_labels, rate[t.valid_coupon_index], bench.report_labels, rate[bench.report_coupons])


def uci_baseline_gbt(bench: ContextCouponBench, seed: int = 0) -> dict[str, float]:
    """The usual tabular baseline: gradient-boosted trees on one-hot raw columns."""
    p_sel, p_rep = _uci_gbt(bench, seed)
    y = bench.frame["label"].to_numpy()
    return _binary_metrics(y[bench.parts == "select"], p_sel, y[bench.parts == "report"], p_rep)


def _uci_gbt(bench: ContextCouponBench, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The trees' probabilities on the selection and report rows (trained on the training rows)."""
    import lightgbm

    raw = bench.frame.drop(columns=[c for c in ("text", "coupon_text", "user_text", "label", "Y") if c in bench.frame])
    x = pd.get_dummies(raw.astype(str)).to_numpy(dtype=np.float32)
    y = bench.frame["label"].to_numpy()
    tr, se, rp = (bench.parts == p for p in ("train", "select", "report"))
    gbt = lightgbm.LGBMClassifier(n_estimators=400, learning_rate=0.05, num_leaves=63, verbose=-1, random_state=seed)
    gbt.fit(x[tr], y[tr])
    return gbt.predict_proba(x[se])[:, 1], gbt.predict_proba(x[rp])[:, 1]


def uci_hybrid_metrics(bench: ContextCouponBench, model: Any, seed: int = 0) -> dict[str, float]:
    """Trees and the text adapter combined: a logistic layer over [tree logit, adapter logit], fitted on the
    selection rows (neither model trained on them)."""
    from ..coupon_hybrid import logit

    t = bench.task
    g_sel, g_rep = _uci_gbt(bench, seed)
    a_sel, a_rep = (coupon_logits_indexed(model, t.item_emb, t.user_histories, t.coupon_items, u, c, t.profiles)
                    for u, c in ((t.valid_user_index, t.valid_coupon_index), (bench.report_users, bench.report_coupons)))
    x_sel, x_rep = np.c_[logit(g_sel), a_sel], np.c_[logit(g_rep), a_rep]
    h = CouponHybrid.fit(x_sel, t.valid_labels, {}, float(t.labels.mean()), features=["gbt_logit", "adapter_logit"])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    return _binary_metrics(t.valid_labels, sig(h.logits(x_sel)), bench.report_labels, sig(h.logits(x_rep)))


def uci_adapter_metrics(bench: ContextCouponBench, model: Any) -> dict[str, float]:
    """Accuracy (threshold chosen on the selection split) and AUC of an adapter on the report split."""
    t = bench.task

    def logits(users: np.ndarray, coupons: np.ndarray) -> np.ndarray:
        return coupon_logits_indexed(model, t.item_emb, t.user_histories, t.coupon_items, users, coupons, t.profiles)

    sel = 1 / (1 + np.exp(-logits(t.valid_user_index, t.valid_coupon_index)))
    rep = 1 / (1 + np.exp(-logits(bench.report_users, bench.report_coupons)))
    return _binary_metrics(t.valid_labels, sel, bench.report_labels, rep)


def _binary_metrics(y_sel: np.ndarray, p_sel: np.ndarray, y_rep: np.ndarray, p_rep: np.ndarray) -> dict[str, float]:
    grid = np.linspace(0.05, 0.95, 91)
    thr = grid[int(np.argmax([((p_sel >= g) == y_sel).mean() for g in grid]))]
    return {"Accuracy": float(((p_rep >= thr) == y_rep).mean()), "AUC": roc_auc(y_rep, p_rep)}


def prepare_hm_baskets(encoder: TextEncoder, cache: EmbeddingCache | None = None, select_frac: float = 0.1,
                       report_frac: float = 0.2, seed: int = 0) -> OutfitBench:
    """H&M same-day baskets as complementary sets: items of *different* product groups bought together by one
    customer on one day (at most one item per group, up to 5 groups). Baskets split at random 70/10/20 into
    train / selection / report; the slot of an item is its product group."""
    from .datasets.hm import hm_baskets, load_hm_articles, load_hm_transactions

    articles = load_hm_articles().set_index("id")
    baskets = hm_baskets(load_hm_transactions())
    complementary = _one_per_slot(baskets, articles["category"].to_dict())
    used = sorted({i for b in complementary for i in b})
    items = articles.loc[used].reset_index()
    guide = Guide.build(items_catalog(items, ("title", "category")), encoder, cache=cache)
    slots = sorted(items["category"].unique())
    slot_of = {s: i for i, s in enumerate(slots)}
    item_slots = np.array([slot_of[c] for c in guide.index.metadata["category"]], dtype=np.int64)
    return _basket_bench("hm-baskets", guide, complementary, item_slots, slots, select_frac, report_frac, seed)


def _one_per_slot(baskets: Any, slot_of: dict[str, Any], max_items: int = 5) -> list[list[str]]:
    """Complementary sets from baskets: the first item of each slot, in basket order (items without a slot are
    dropped), up to ``max_items``; baskets left with fewer than 2 slots are dropped."""
    out = []
    for basket in baskets:
        by_slot: dict[Any, str] = {}
        for i in basket:
            if slot_of.get(i, "") != "":
                by_slot.setdefault(slot_of[i], i)
        if len(by_slot) >= 2:
            out.append(list(by_slot.values())[:max_items])
    return out


def _basket_bench(name: str, guide: Guide, baskets: list[list[str]], item_slots: np.ndarray, slots: list[str],
                  select_frac: float, report_frac: float, seed: int) -> OutfitBench:
    """Baskets (item ids) split at random into train / selection / report parts."""
    row = guide.index.row_of
    outfits = [[row[i] for i in b] for b in baskets]
    perm = np.random.default_rng(seed).permutation(len(outfits))
    n_sel, n_rep = int(select_frac * len(outfits)), int(report_frac * len(outfits))
    sel, rep, tr = perm[:n_sel], perm[n_sel:n_sel + n_rep], perm[n_sel + n_rep:]
    task = OutfitTask(guide.index.embeddings, [outfits[i] for i in tr], item_slots, [outfits[i] for i in sel])
    return OutfitBench(name, guide, task, [outfits[i] for i in rep], slots,
                       {"items": len(row), "baskets": len(outfits), "train": len(tr), "select": len(sel),
                        "report": len(rep), "groups": len(slots)})


def subsample_outfits(bench: OutfitBench, fraction: float, seed: int = 0) -> OutfitTask:
    """The training outfits / baskets restricted to a random ``fraction`` (at least one when ``fraction > 0``;
    none at 0: zero-shot); the selection split is unchanged."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    task = bench.task
    if fraction == 1.0:
        return task
    n = max(int(round(fraction * len(task.outfits))), 1) if fraction > 0 else 0
    keep = sorted(np.random.default_rng(seed).permutation(len(task.outfits))[:n].tolist())
    return OutfitTask(task.item_emb, [task.outfits[i] for i in keep], task.item_slots, task.valid_outfits)


def text_clusters(embeddings: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """k-means (inner product on unit vectors, FAISS) cluster of each item: categories from text alone,
    for catalogs that have none."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not 1 <= n <= len(x):
        raise ValueError(f"cannot make {n} text clusters from {len(x)} items; use 1..{len(x)}")
    km = faiss.Kmeans(x.shape[1], n, niter=25, seed=seed, spherical=True, verbose=False)
    km.train(x)
    return km.index.search(x, 1)[1][:, 0].astype(np.int64)


def prepare_or_baskets(encoder: TextEncoder, cache: EmbeddingCache | None = None, n_slots: int = 20,
                       select_frac: float = 0.1, report_frac: float = 0.2, seed: int = 0) -> OutfitBench:
    """Online Retail (2010-12..2011-12) invoices as complementary sets. The catalog has no categories, so an
    item's slot is its text cluster (:func:`text_clusters`, ``n_slots`` spherical k-means clusters of the item
    vectors); a basket keeps the first item of each cluster in invoice order (up to 5, at least 2 clusters),
    so that it holds things bought *with* each other rather than variants of one thing. Baskets split at
    random 70/10/20 into train / selection / report, like :func:`prepare_hm_baskets`."""
    from .datasets.online_retail import load_online_retail

    items, tx = load_online_retail()
    full = Guide.build(items_catalog(items), encoder, cache=cache)
    cluster_of = dict(zip(full.index.ids, text_clusters(full.index.embeddings, n_slots, seed).tolist()))
    complementary = _one_per_slot((b for _, b in tx.groupby("invoice", sort=True)["item_id"]), cluster_of)
    used = sorted({i for b in complementary for i in b})
    meta = full.index.metadata.set_index("id").loc[used].reset_index()  # the basket items, already embedded
    guide = Guide(ItemIndex.build(full.index.vectors(used), used, meta), full.encoder_info, encoder)
    item_slots = np.array([cluster_of[i] for i in guide.index.ids], dtype=np.int64)
    # a slot's name: the title of the item nearest its mean vector
    names = []
    for c in range(n_slots):
        members = np.flatnonzero(item_slots == c)
        if not len(members):
            names.append(f"cluster {c} (empty)")
            continue
        centre = guide.index.embeddings[members].mean(0)
        nearest = members[np.argmax(guide.index.embeddings[members] @ centre)]
        names.append(f"cluster {c}: {guide.index.metadata['title'].iloc[nearest]}")
    return _basket_bench("or-baskets", guide, complementary, item_slots, names, select_frac, report_frac, seed)


#: basket-complement domains for transfer: name -> prepare function (``textguide transfer --source hm-baskets``)
BASKET_DOMAINS: dict[str, Callable[..., OutfitBench]] = {
    "hm-baskets": prepare_hm_baskets,
    "or-baskets": prepare_or_baskets,
}
