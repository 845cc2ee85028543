"""Domains for transfer experiments: a dataset becomes a guide, a next-item training task and a report split.

Each ``prepare_*`` function embeds a domain's catalog into a :class:`~textguide.guide.Guide` (pass an
:class:`~textguide.encoder.EmbeddingCache`: re-encoding is then free) and returns a :class:`DomainBench`:

* ``task``: a :class:`~textguide.tasks.recommend.SequenceTask` whose training examples come before the selection period
  and whose validation rows (one per (user, new item) pair) are the *selection* split (early stopping, the
  negative-transfer guard). ``example_users[i]`` is the user of training example ``i`` (for subsampling).
* ``report_histories`` / ``report_relevant``: the split we publish numbers on. Relevance is a set (every new
  item the user bought in the report period), history items are excluded from the ranking and from the
  relevant set (a repeat purchase is not a recommendation).

Time-based splits (retail):

=================== ===================================== ===================== ======================
domain              training examples                     selection             report
=================== ===================================== ===================== ======================
H&M (1 week)        purchases 2020-09-16..20              2020-09-21            2020-09-22
Online Retail       invoices 2010-12-01..2011-11-10       2011-11-11..24        2011-11-25..12-09
=================== ===================================== ===================== ======================

A training example is (the user's distinct earlier items, oldest first, last ``max_history`` kept; the next
item that is not already in that history). Amazon Industrial / Office ship only the ``valid`` and ``test``
rows of a leave-last-out split: the ``valid`` rows are split by user into training (every row and every prefix
of its history) and selection users; the ``test`` rows are the report split (one target each).

Example::

    bench = prepare_online_retail(load_encoder(), EmbeddingCache())
    small = subsample(bench, 0.1, seed=0)                # 10 % of the training users, same selection split
    print(evaluate_domain(bench, domain_scorer(bench, "popularity")))   # {"Recall@12": ..., "MAP@12": ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..encoder import EmbeddingCache, TextEncoder
from ..guide import Guide
from ..metrics import multi_relevant_metrics, rank_of_target
from .recipes import items_catalog
from ..tasks.recommend import SequenceTask, history_scorer

__all__ = [
    "DomainBench",
    "DOMAINS",
    "domain_scorer",
    "evaluate_domain",
    "prepare_domain",
    "prepare_hm",
    "prepare_industrial",
    "prepare_office",
    "prepare_online_retail",
    "subsample",
]

Scorer = Callable[[list[list[int]]], np.ndarray]


@dataclass
class DomainBench:
    """One domain ready for training and evaluation (row indices into ``guide.index``)."""

    name: str
    guide: Guide
    task: SequenceTask
    example_users: np.ndarray
    report_histories: list[list[int]]
    report_relevant: list[list[int]]
    popularity: np.ndarray
    ks: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def item_emb(self) -> np.ndarray:
        """The frozen text embeddings of the catalog (n_items, dim)."""
        return self.guide.index.embeddings


# ------------------------------------------------------------------------------------------ split helpers
def _distinct(items: list[int]) -> list[int]:
    """Distinct items, each at its first position (time order kept)."""
    return list(dict.fromkeys(items))


def _time_split(
    events: pd.DataFrame, select_start: pd.Timestamp, report_start: pd.Timestamp, max_history: int,
    max_relevant: int,
) -> dict[str, Any]:
    """Training examples, selection and report users from ``events`` (columns user, item, time; sorted by user,
    then time)."""
    hist_tr, targ_tr, users_tr = [], [], []
    sel_h, sel_r, rep_h, rep_r = [], [], [], []
    user = events["user"].to_numpy()
    item = events["item"].to_numpy(dtype=np.int64)
    period = np.where(events["time"].to_numpy() < np.datetime64(select_start), 0,
                      np.where(events["time"].to_numpy() < np.datetime64(report_start), 1, 2))
    bounds = np.flatnonzero(user[1:] != user[:-1]) + 1
    for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(user)]):
        items, per = item[s:e].tolist(), period[s:e]
        seen: set[int] = set()
        order: list[int] = []
        for it in items[: int((per == 0).sum())]:
            if it in seen:
                continue
            if order:
                hist_tr.append(order[-max_history:])
                targ_tr.append(it)
                users_tr.append(user[s])
            seen.add(it)
            order.append(it)
        for p, hs, rs in ((1, sel_h, sel_r), (2, rep_h, rep_r)):
            before = _distinct([it for it, q in zip(items, per) if q < p])
            old = set(before)
            new = [it for it in _distinct([it for it, q in zip(items, per) if q == p]) if it not in old]
            if before and new:
                hs.append(before[-max_history:])
                rs.append(new[:max_relevant])
    return {"hist": hist_tr, "targ": targ_tr, "users": users_tr, "sel_h": sel_h, "sel_r": sel_r,
            "rep_h": rep_h, "rep_r": rep_r}


def _expand(histories: list[list[int]], relevant: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """One (history, target) validation row per relevant item."""
    h_out, t_out = [], []
    for h, rel in zip(histories, relevant):
        for r in rel:
            h_out.append(h)
            t_out.append(r)
    return h_out, t_out


def _bench(name: str, guide: Guide, split: dict[str, Any], popularity: np.ndarray, ks: tuple[int, ...],
           info: dict[str, Any]) -> DomainBench:
    v_h, v_t = _expand(split["sel_h"], split["sel_r"])
    task = SequenceTask(guide.index.embeddings, split["hist"], split["targ"], v_h, v_t)
    info = {"items": guide.index.count, "train_examples": len(split["targ"]),
            "train_users": len(set(split["users"])), "select_users": len(split["sel_h"]),
            "select_rows": len(v_t), "report_users": len(split["rep_h"]),
            "report_relevant": int(sum(len(r) for r in split["rep_r"])), **info}
    return DomainBench(name, guide, task, np.asarray(split["users"], dtype=object), split["rep_h"], split["rep_r"],
                       popularity.astype(np.float32), ks, info)


# ------------------------------------------------------------------------------------------ the domains
def prepare_hm(encoder: TextEncoder, cache: EmbeddingCache | None = None, max_history: int = 50,
               max_relevant: int = 12) -> DomainBench:
    """H&M, the final week of purchases: items = the ~18k articles bought that week (text from articles.csv).

    Training: purchases of 2020-09-16..20; selection: new items bought on 09-21 by users with earlier purchases;
    report: new items bought on 09-22 (history = everything before). Popularity = purchases before 09-22.
    """
    from .datasets.hm import load_hm_articles, load_hm_transactions

    tx = load_hm_transactions()
    articles = load_hm_articles()
    items = articles[articles["id"].isin(set(tx["item_id"]))].reset_index(drop=True)
    guide = Guide.build(items_catalog(items, ("title", "category", "product_type_name")), encoder, cache=cache)
    row = guide.index.row_of
    events = pd.DataFrame({"user": tx["customer_id"], "item": tx["item_id"].map(row), "time": tx["t_dat"],
                           "order": np.arange(len(tx))}).sort_values(["user", "time", "order"], kind="stable")
    select, report = pd.Timestamp("2020-09-21"), pd.Timestamp("2020-09-22")
    split = _time_split(events, select, report, max_history, max_relevant)
    before = events[events["time"] < report]
    pop = np.bincount(before["item"].to_numpy(), minlength=len(row))
    return _bench("hm", guide, split, pop, (12,),
                  {"train_period": "2020-09-16..20", "select_period": "2020-09-21", "report_period": "2020-09-22"})


def prepare_online_retail(encoder: TextEncoder, cache: EmbeddingCache | None = None, max_history: int = 50,
                          max_relevant: int = 12, popularity_days: int = 28) -> DomainBench:
    """UCI Online Retail 2010-12..2011-12 (UK gift and home ware): customers' invoices in time order.

    Training: invoices before 2011-11-11; selection: 2011-11-11..24; report: 2011-11-25..12-09.
    Popularity = purchases in the ``popularity_days`` before the report period.
    """
    from .datasets.online_retail import load_online_retail

    items, tx = load_online_retail()
    guide = Guide.build(items_catalog(items), encoder, cache=cache)
    row = guide.index.row_of
    events = pd.DataFrame({"user": tx["customer_id"], "item": tx["item_id"].map(row), "time": tx["timestamp"],
                           "order": np.arange(len(tx))}).sort_values(["user", "time", "order"], kind="stable")
    select, report = pd.Timestamp("2011-11-11"), pd.Timestamp("2011-11-25")
    split = _time_split(events, select, report, max_history, max_relevant)
    recent = events[(events["time"] < report) & (events["time"] >= report - pd.Timedelta(days=popularity_days))]
    pop = np.bincount(recent["item"].to_numpy(), minlength=len(row))
    return _bench("online-retail", guide, split, pop, (12,),
                  {"train_period": "2010-12-01..2011-11-10", "select_period": "2011-11-11..24",
                   "report_period": "2011-11-25..12-09"})


def _prepare_amazon(name: str, short: str, encoder: TextEncoder, cache: EmbeddingCache | None,
                    select_frac: float, seed: int) -> DomainBench:
    from .datasets.amazon_industrial_office import load_domain

    ds = load_domain(name)
    guide = Guide.build(items_catalog(ds.items), encoder, cache=cache)
    row = guide.index.row_of
    users = sorted({ex.user for ex in ds.valid})
    perm = np.random.default_rng(seed).permutation(len(users))
    select_users = {users[i] for i in perm[: int(round(select_frac * len(users)))]}
    examples: dict[tuple[tuple[int, ...], int], str] = {}  # (history, target) -> user, deduplicated
    sel_h, sel_r = [], []
    for ex in ds.valid:
        seq = [row[i] for i in ex.history] + [row[ex.target]]
        if ex.user in select_users:
            sel_h.append(seq[:-1])
            sel_r.append([seq[-1]])
            continue
        for j in range(1, len(seq)):  # the row and every prefix of its history
            examples.setdefault((tuple(seq[:j]), seq[j]), ex.user)
    split = {"hist": [list(h) for h, _ in examples], "targ": [t for _, t in examples], "users": list(examples.values()),
             "sel_h": sel_h, "sel_r": sel_r,
             "rep_h": [[row[i] for i in ex.history] for ex in ds.test],
             "rep_r": [[row[ex.target]] for ex in ds.test]}
    counted = [t for t in split["targ"]] + [i for h in split["hist"] for i in h]
    pop = np.bincount(np.asarray(counted, dtype=np.int64), minlength=len(row))
    return _bench(short, guide, split, pop, (10,),
                  {"train": "valid rows of training users (+ history prefixes)", "select": "valid rows of "
                   f"{len(select_users)} held-out users", "report": "test rows"})


def prepare_industrial(encoder: TextEncoder, cache: EmbeddingCache | None = None, select_frac: float = 0.2,
                       seed: int = 0) -> DomainBench:
    """Amazon 2018 Industrial & Scientific (MiniOneRec rows): valid rows -> training + selection, test -> report."""
    return _prepare_amazon("Industrial_and_Scientific", "industrial", encoder, cache, select_frac, seed)


def prepare_office(encoder: TextEncoder, cache: EmbeddingCache | None = None, select_frac: float = 0.2,
                   seed: int = 0) -> DomainBench:
    """Amazon 2018 Office Products (MiniOneRec rows): valid rows -> training + selection, test -> report."""
    return _prepare_amazon("Office_Products", "office", encoder, cache, select_frac, seed)


DOMAINS: dict[str, Callable[..., DomainBench]] = {
    "hm": prepare_hm,
    "online-retail": prepare_online_retail,
    "industrial": prepare_industrial,
    "office": prepare_office,
}


def prepare_domain(name: str, encoder: TextEncoder, cache: EmbeddingCache | None = None) -> DomainBench:
    """``prepare_<name>`` by name (one of :data:`DOMAINS`)."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; choose one of {', '.join(DOMAINS)}")
    return DOMAINS[name](encoder, cache)


# ------------------------------------------------------------------------------------------ subsampling
def subsample(bench: DomainBench, fraction: float, seed: int = 0) -> SequenceTask:
    """The training task restricted to a random ``fraction`` of the training users (all their examples);
    the selection split is unchanged. ``fraction=0`` gives a task with no training examples."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    task = bench.task
    if fraction == 1.0:
        return task
    users = np.array(sorted(set(bench.example_users.tolist())), dtype=object)
    n = int(round(fraction * len(users)))
    if fraction > 0:
        n = max(n, 1)
    keep_users = set(users[np.random.default_rng(seed).permutation(len(users))[:n]].tolist())
    keep = [i for i, u in enumerate(bench.example_users) if u in keep_users]
    return replace(task, histories=[task.histories[i] for i in keep], targets=task.targets[keep].tolist(),
                   weights=None)


# ------------------------------------------------------------------------------------------ scoring
def domain_scorer(bench: DomainBench, method: str, model: Any = None) -> Scorer:
    """``histories -> scores (n, items)`` for ``popularity``, ``text`` (mean history cosine) or ``adapter``."""
    return history_scorer(bench.item_emb, method, model, bench.popularity)


def evaluate_domain(bench: DomainBench, scorer: Scorer, ks: tuple[int, ...] | None = None,
                    histories: list[list[int]] | None = None, relevant: list[list[int]] | None = None,
                    chunk: int = 256) -> dict[str, float]:
    """Recall@k, NDCG@k and MAP@k (Kaggle H&M definition) on the report split by full ranking over the catalog,
    history excluded; every relevant item's rank comes from :func:`textguide.evaluate.rank_of_target`
    (ties count against it). With one relevant item per user these are the usual leave-one-out metrics."""
    ks = tuple(ks or bench.ks)
    hs = bench.report_histories if histories is None else histories
    rel = bench.report_relevant if relevant is None else relevant
    if len(hs) != len(rel) or not hs:
        raise ValueError(f"{len(hs)} histories but {len(rel)} relevant sets; give one non-empty set per history")
    per_user = []
    for s in range(0, len(hs), chunk):
        h_chunk, r_chunk = hs[s:s + chunk], rel[s:s + chunk]
        scores = scorer(h_chunk)
        rows = np.repeat(np.arange(len(h_chunk)), [len(r) for r in r_chunk])
        targets = np.array([t for r in r_chunk for t in r], dtype=np.int64)
        ranks = rank_of_target(scores[rows], targets, [h_chunk[u] for u in rows])
        per_user += np.split(ranks, np.cumsum([len(r) for r in r_chunk])[:-1])
    return multi_relevant_metrics(per_user, ks)
