"""Cold-start category onboarding: quality, a zero-interaction catalog, and speed under load.

Subcommands (numbers and commands of our runs: docs/onboarding.md):

  hm        H&M next-purchase recommendation with one product group held out of training entirely.
            Recall@12 on purchases of that group for: text similarity (no training), the adapter trained
            without the group after ``Guide.onboard`` (zero-shot), and the adapter trained with it (upper bound).
  toys      Onboard the Amazon Toys catalog (11,252 titles, no interactions) into a guide trained on Amazon
            Scientific and query it at once (search, similar, recommend) - in this process and after a reload.
  speed     Onboard N new products (default 10,000 Toys titles, embeddings not cached) into a copy of a guide
            while a reader thread in this process and a second process (which polls ``guide.refresh()``)
            query it; reports seconds, throughput, memory and the readers' p50/p99 latency idle vs. during.
  fewshot   The optional few-shot step on the guide ``hm`` saved (trained without a group, then onboarded):
            ``Guide.fine_tune`` on the sequences of N training customers who bought from the group, then
            Recall@12 on the group's report purchases again.
  reader    (internal) the second process of ``speed``.

The base guide of ``toys`` and ``speed`` is --guide (default indexes/amazon-scientific); when it does not
exist it is built with ``textguide.bench.workflows.train_recipe("amazon-scientific", ..., max_seconds=120)``.
Guides are never changed in place: both subcommands onboard into a scratch copy.

Example:
    PYTHONUNBUFFERED=1 python scripts/bench_onboarding.py hm --group Accessories --json /tmp/hm.json
    PYTHONUNBUFFERED=1 python scripts/bench_onboarding.py speed --n 10000 --json /tmp/speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textguide.catalog import Catalog
from textguide.encoder import EmbeddingCache, load_encoder
from textguide.guide import Guide, run_in_thread
from textguide.bench.recipes import items_catalog
from textguide.tasks.recommend import next_item_examples

logger = logging.getLogger("textguide")
DEFAULT_GUIDE = ROOT / "indexes" / "amazon-scientific"


# ------------------------------------------------------------------------------------------------ helpers
def rss_mb() -> float:
    """Resident memory of this process (MiB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Samples this process's resident memory every 20 ms; ``peak`` is the largest seen (MiB)."""

    def __init__(self) -> None:
        self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __enter__(self) -> PeakRSS:  # noqa: PYI034 - typing.Self needs Python 3.11
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


class TimedEncoder:
    """Wraps an encoder and adds up the seconds spent encoding by the thread that made it (the onboarding)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.dim, self.fingerprint = inner.name, inner.dim, inner.fingerprint
        self.precision = getattr(inner, "precision", "fp32")
        self.seconds = 0.0
        self.texts = 0
        self.owner = threading.get_ident()

    def encode(self, texts, batch_size: int = 64, show_progress: bool | None = None) -> np.ndarray:
        onboarding = threading.get_ident() == self.owner or threading.current_thread().name == "textguide-low-priority"
        if not onboarding:  # a reader's query
            return self.inner.encode(texts, batch_size=batch_size, show_progress=show_progress)
        t0 = time.perf_counter()
        try:
            return self.inner.encode(texts, batch_size=batch_size, show_progress=show_progress)
        finally:
            self.seconds += time.perf_counter() - t0
            self.texts += len(texts)


def percentiles(values: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of latencies (given in seconds) in milliseconds."""
    if not values:
        return {"n": 0}
    x = np.asarray(values) * 1000
    return {"n": len(x), "p50_ms": round(float(np.percentile(x, 50)), 2),
            "p99_ms": round(float(np.percentile(x, 99)), 2), "max_ms": round(float(x.max()), 2)}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def base_guide(path: Path, max_seconds: float) -> Path:
    """The Amazon Scientific guide (trained recommend adapter); built when missing."""
    if (path / "manifest.json").is_file():
        return path
    from textguide.bench.workflows import train_recipe

    print(f"{path} does not exist: building it (train_recipe amazon-scientific, max_seconds={max_seconds})", flush=True)
    t0 = time.time()
    train_recipe("amazon-scientific", path, max_seconds=max_seconds)
    print(f"built {path} in {time.time() - t0:.0f}s", flush=True)
    return path


def scratch_copy(src: Path, name: str) -> Path:
    """A private copy of a guide directory to onboard into."""
    dst = Path(tempfile.mkdtemp(prefix="tg-onboard-")) / name
    shutil.copytree(src, dst)
    return dst


def toys_catalog(n: int | None = None) -> Catalog:
    from textguide.bench.datasets.amazon_toys import load_toys

    items = load_toys()
    if n is not None:
        items = items.iloc[:n]
    return items_catalog(items)


# ------------------------------------------------------------------------------------------------ hm
def hm_sequences(seed: int, report_frac: float, select_frac: float) -> dict[str, Any]:
    """H&M purchase sequences (unique items per customer, time order) split by customer."""
    from textguide.bench.datasets.hm import load_hm_articles, load_hm_transactions

    articles, tx = load_hm_articles(), load_hm_transactions()
    items = articles[articles["id"].isin(set(tx["item_id"]))].reset_index(drop=True)
    tx = tx.assign(order=np.arange(len(tx))).sort_values(["customer_id", "t_dat", "order"], kind="stable")
    seqs = [list(dict.fromkeys(s)) for s in tx.groupby("customer_id", sort=True)["item_id"].agg(list)]
    seqs = [s for s in seqs if len(s) >= 2]
    perm = np.random.default_rng(seed).permutation(len(seqs))
    n_rep, n_sel = int(report_frac * len(seqs)), int(select_frac * len(seqs))
    report = [seqs[i] for i in perm[:n_rep]]
    select = [seqs[i] for i in perm[n_rep:n_rep + n_sel]]
    train = [seqs[i] for i in perm[n_rep + n_sel:]]
    return {"items": items, "train": train, "select": select, "report": report}


def train_hm_adapter(guide: Guide, train: list[list[str]], select: list[list[str]], args) -> tuple[Any, dict]:
    """Train a recommend adapter on id sequences over this guide's items (ids not in the guide are dropped)."""
    import torch

    from textguide.adapters import AdapterConfig, MultiTaskAdapter
    from textguide.tasks.recommend import SequenceTask
    from textguide.training import TrainConfig
    from textguide.training import train as fit

    row = guide.index.row_of
    keep = [[row[i] for i in s if i in row] for s in train]
    keep = [s for s in keep if len(s) >= 2]
    hist, targ = next_item_examples(keep)
    sel = [[row[i] for i in s if i in row] for s in select]
    sel = [s for s in sel if len(s) >= 2]
    task = SequenceTask(guide.index.embeddings, hist, targ, [s[-51:-1] for s in sel], [s[-1] for s in sel])
    torch.manual_seed(args.seed)
    model = MultiTaskAdapter(AdapterConfig(input_dim=guide.index.dim, dim=args.dim, seq_layers=args.layers,
                                           max_history=args.max_history, tasks=("recommend",)))
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, eval_every=100, patience=5, seed=args.seed,
                      max_seconds=args.max_seconds, full_softmax_max=args.full_softmax_max,
                      num_negatives=args.num_negatives)
    t0 = time.time()
    result = fit(model, {"recommend": task}, cfg)
    info = {"train_examples": len(targ), "select_users": len(sel), "items": len(row),
            "seconds": round(time.time() - t0, 1), "best_step": result.best_step,
            "steps": result.history[-1]["step"] if result.history else 0,
            "select_Recall@10": result.best_metrics.get("recommend")}
    print(f"trained on {len(row)} items, {len(targ)} examples: {info}", flush=True)
    return model, info


def score_hm(guide: Guide, hist: list[list[str]], targ: list[str], method: str, group_ids: set[str]) -> dict[str, float]:
    """Recall@12 / NDCG@12 over the whole catalog and within the held-out group (history excluded)."""
    from textguide.metrics import full_ranking_ranks, metrics_from_ranks
    from textguide.tasks.recommend import history_scorer

    idx = guide.index
    emb = idx.embeddings
    live = np.flatnonzero(~idx.deleted)
    assert len(live) == len(idx.ids), "scoring assumes no removed rows"
    h_rows = [[idx.row_of[i] for i in h] for h in hist]
    t_rows = np.array([idx.row_of[i] for i in targ])
    scorer = history_scorer(emb, method, guide.adapter if method != "text" else None)
    g_cols = np.array(sorted(idx.row_of[i] for i in group_ids))
    g_pos = {int(c): j for j, c in enumerate(g_cols)}
    ranks_all = full_ranking_ranks(scorer, h_rows, t_rows)
    out = {f"all/{k}": v for k, v in metrics_from_ranks(ranks_all, (12,)).items() if k in ("Recall@12", "NDCG@12")}
    if all(int(t) in g_pos for t in t_rows):  # the group's own catalog: its columns only
        ranks_group = full_ranking_ranks(lambda hs: scorer(hs)[:, g_cols], h_rows, [g_pos[int(t)] for t in t_rows],
                                         exclude=[[g_pos[r] for r in h if r in g_pos] for h in h_rows])
        out |= {f"group/{k}": v for k, v in metrics_from_ranks(ranks_group, (12,)).items()
                if k in ("Recall@12", "NDCG@12")}
    return out


def _eval_sets(report: list[list[str]], gids: set[str], max_other: int, seed: int) -> dict[str, tuple]:
    """Every purchase of a report customer after the first: those of the group, and a sample of the others."""
    hist, targ = next_item_examples(report)
    in_g = np.array([t in gids for t in targ])
    other = np.flatnonzero(~in_g)
    other = np.sort(np.random.default_rng(seed).choice(other, min(max_other, len(other)), replace=False))
    mine = np.flatnonzero(in_g)
    return {"group": ([hist[i] for i in mine], [targ[i] for i in mine]),
            "other": ([hist[i] for i in other], [targ[i] for i in other])}


def _scores(guide: Guide, ev: dict[str, tuple], method: str, gids: set[str]) -> dict[str, float]:
    return {f"{k}/{m}": v for k in ev for m, v in score_hm(guide, *ev[k], method, gids).items()}


def cmd_hm(args) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    data = hm_sequences(args.seed, args.report_frac, args.select_frac)
    items = data["items"]
    groups = args.group or ["Accessories"]
    for g in groups:
        if g not in set(items["category"]):
            raise ValueError(f"unknown product group {g!r}; bought groups: {sorted(set(items['category']))}")
    gids = {g: set(items.loc[items["category"] == g, "id"]) for g in groups}
    ev = {g: _eval_sets(data["report"], gids[g], args.max_other, args.seed) for g in groups}
    enc, cache = load_encoder(), EmbeddingCache()
    print(f"H&M: {len(items)} bought articles; customers train {len(data['train'])}, select {len(data['select'])}, "
          f"report {len(data['report'])}; groups " + ", ".join(f"{g} ({len(gids[g])} items, "
          f"{len(ev[g]['group'][1])} report purchases)" for g in groups), flush=True)
    out = Path(args.out)
    res: dict[str, Any] = {"info": {"items": len(items), "customers": {k: len(data[k]) for k in ("train", "select", "report")},
                                    "max_other": args.max_other}, "groups": {}}

    # text similarity and the upper bound (one model trained with every group) on the full catalog
    full = Guide.build(items_catalog(items), enc, cache=cache)
    text = {g: _scores(full, ev[g], "text", gids[g]) for g in groups}
    model, res["info"]["upper_bound_training"] = train_hm_adapter(full, data["train"], data["select"], args)
    full.set_adapter(model)
    upper = {g: _scores(full, ev[g], "adapter", gids[g]) for g in groups}

    for g in groups:
        # zero-shot: trained without the group (removed from the catalog and from every sequence), then onboarded
        rest = items[~items["id"].isin(gids[g])].reset_index(drop=True)
        guide = Guide.build(items_catalog(rest), enc, cache=cache)
        drop = gids[g]
        model, training = train_hm_adapter(guide, [[i for i in s if i not in drop] for s in data["train"]],
                                           [[i for i in s if i not in drop] for s in data["select"]], args)
        guide.set_adapter(model)
        path = out / f"hm-without-{g.lower().replace(' ', '-')}"
        guide.save(path)
        before = guide.index.count
        report = guide.onboard(items_catalog(items[items["id"].isin(drop)].reset_index(drop=True)), category=g,
                               cache=cache)
        print(f"onboarded {report.added} {g} items into {path} in {report.seconds:.1f}s", flush=True)
        zero = _scores(guide, ev[g], "adapter", drop)

        # the served answers are the scored ones: Guide.recommend on the reloaded guide for 100 purchases
        served = Guide.load(path, encoder=enc)
        gh, gt = ev[g]["group"]
        n = min(100, len(gh))
        hits = sum(gt[i] in served.recommend(gh[i], k=12, method="adapter").ids for i in range(n))
        batch = score_hm(guide, gh[:n], gt[:n], "adapter", drop)["all/Recall@12"] * n
        res["groups"][g] = {
            "items": len(drop), "report_purchases": len(gh),
            "results": {"text similarity (no training)": text[g],
                        "zero-shot onboarding (adapter trained without the group)": zero,
                        "adapter trained with the group (upper bound)": upper[g]},
            "zero_shot_training": training,
            "onboard": {"added": report.added, "seconds": round(report.seconds, 2), "items_before": before,
                        "items_after": report.items, "guide": str(path)},
            "served_check": {"purchases": n, "hits_guide_recommend": int(hits), "hits_batch_scoring": round(batch)},
        }
        print(hm_markdown(g, res["groups"][g]), flush=True)
    return res


def cmd_fewshot(args) -> dict[str, Any]:
    """The few-shot step on a guide from ``hm``: fine-tune its zero-shot adapter on the first interactions of the
    onboarded group (``Guide.fine_tune``: model-based transfer and the guard) and re-score its purchases."""
    import torch

    from textguide.training import TrainConfig
    from textguide.transfer import TransferConfig

    torch.set_num_threads(args.threads)
    src = Path(args.guide)
    if not (src / "manifest.json").is_file():
        raise SystemExit(f"{src} is not a guide: run `scripts/bench_onboarding.py hm --group {args.group} --out DIR` "
                         "first (it saves DIR/hm-without-<group>, trained without the group and then onboarded)")
    data = hm_sequences(args.seed, args.report_frac, args.select_frac)  # the split of `hm`
    items = data["items"]
    gids = set(items.loc[items["category"] == args.group, "id"])
    ev = _eval_sets(data["report"], gids, args.max_other, args.seed)
    enc = load_encoder()
    # interactions that exist once the group is on sale: training customers who bought from it
    with_group = [s for s in data["train"] if any(i in gids for i in s)]
    rng = np.random.default_rng(args.seed)
    out: dict[str, Any] = {"group": args.group, "group_items": len(gids), "report_purchases": len(ev["group"][1]),
                           "train_customers_with_group": len(with_group), "runs": {}}
    base = Guide.load(src, encoder=enc)
    out["zero-shot"] = _scores(base, ev, "adapter", gids)
    out["text"] = _scores(base, ev, "text", gids)
    for n in args.users:
        path = scratch_copy(src, f"fewshot-{n}")
        guide = Guide.load(path, encoder=enc)
        picked = [with_group[i] for i in sorted(rng.permutation(len(with_group))[:n])]
        cfg = TransferConfig(candidates=tuple(args.candidates.split(",")), seed=args.seed,
                             train=TrainConfig(steps=args.steps, batch_size=128, lr=args.lr, eval_every=50,
                                               patience=4, seed=args.seed, max_seconds=args.max_seconds,
                                               full_softmax_max=1000, num_negatives=2048, show_progress=False))
        t0 = time.time()
        report = guide.fine_tune(picked, config=cfg, seed=args.seed)
        seconds = time.time() - t0
        scores = _scores(guide, ev, "adapter", gids)
        out["runs"][str(n)] = {"customers": len(picked), "interactions": sum(len(s) for s in picked),
                               "seconds": round(seconds, 1), "chosen": report["chosen"], "summary": report["summary"],
                               "scores": scores, "valid": {k: v["valid"] for k, v in report["methods"].items()}}
        print(f"{n} customers: chosen {report['chosen']} in {seconds:.0f}s; group Recall@12 "
              f"{scores['group/all/Recall@12']:.4f} (zero-shot {out['zero-shot']['group/all/Recall@12']:.4f}); "
              f"{report['summary']}", flush=True)
        shutil.rmtree(path.parent, ignore_errors=True)
    return out


def hm_markdown(g: str, r: dict[str, Any]) -> str:
    header = (f"| method | Recall@12, {g} purchases | NDCG@12, {g} | Recall@12 among {g} only | "
              f"Recall@12, other purchases |")
    lines = [f"{g}: {r['items']} items held out, {r['report_purchases']} report purchases", "",
             header, "|---|---|---|---|---|"]
    for name, m in r["results"].items():
        lines.append(f"| {name} | {m.get('group/all/Recall@12', float('nan')):.4f} | "
                     f"{m.get('group/all/NDCG@12', float('nan')):.4f} | {m.get('group/group/Recall@12', float('nan')):.4f} | "
                     f"{m.get('other/all/Recall@12', float('nan')):.4f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ toys
def cmd_toys(args) -> dict[str, Any]:
    src = base_guide(Path(args.guide), args.build_seconds)
    path = scratch_copy(src, "amazon-scientific+toys")
    enc = load_encoder()
    guide = Guide.load(path, encoder=enc)
    reader = Guide.load(path, encoder=enc)  # another instance, as a serving process would hold
    before = guide.info()
    catalog = toys_catalog()
    t0 = time.perf_counter()
    report = guide.onboard(catalog, category="Toys & Games", cache=EmbeddingCache())
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"guide": str(path), "base": str(src), "items_before": before["items"],
                           "onboard": {"added": report.added, "unchanged": report.unchanged, "items": report.items,
                                       "seconds": round(seconds, 1)}}
    refreshed = reader.refresh()
    queries = ["lego star wars building kit", "wooden puzzle for toddlers", "microscope for kids",
               "digital caliper stainless steel"]
    shown: dict[str, Any] = {"refresh": refreshed}
    for q in queries:
        for who, g in (("onboarding process", guide), ("other instance after refresh()", reader)):
            hits = g.search(q, k=5)
            shown.setdefault(f"search {q!r}", {})[who] = [(i, g.index.item(i)["title"][:60]) for i in hits.ids]
    toy = catalog.ids[0]
    shown[f"similar {toy} ({catalog.texts[0][:50]})"] = [(i, guide.index.item(i)["title"][:60])
                                                          for i in guide.similar(toy, k=5).ids]
    sci = guide.index.live_ids()[0]  # an Amazon Scientific product
    shown[f"similar {sci}, category Toys & Games"] = [(i, guide.index.item(i)["title"][:60])
                                                      for i in guide.similar(sci, k=3, category="Toys & Games").ids]
    hits = guide.recommend([toy, catalog.ids[1]], k=5)
    shown[f"recommend history [{toy}, {catalog.ids[1]}] ({hits.method})"] = [
        (i, guide.index.item(i)["title"][:60]) for i in hits.ids]
    shown["info categories"] = guide.info()["categories"]
    out["shown"] = shown
    return out


# ------------------------------------------------------------------------------------------------ speed
def _query_loop(guide: Guide, sample_ids: list[str], queries: list[str], stop: threading.Event,
                log: list[tuple[float, str, float]], period: float, faiss_threads: int = 0) -> None:
    """Open-loop reader: one query every ``period`` seconds, alternating similar and search."""
    if faiss_threads:  # per thread: OpenMP settings do not carry over from the main thread
        import faiss

        faiss.omp_set_num_threads(faiss_threads)
    rng = np.random.default_rng(os.getpid() + threading.get_ident() % 1000)
    n = 0
    next_at = time.perf_counter()
    while not stop.is_set():
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        next_at += period
        kind = "similar" if n % 2 == 0 else "search"
        t0 = time.perf_counter()
        if kind == "similar":
            guide.similar(sample_ids[int(rng.integers(len(sample_ids)))], k=10)
        else:
            guide.search(queries[int(rng.integers(len(queries)))], k=10)
        log.append((time.time(), kind, time.perf_counter() - t0))
        n += 1


def _refresh_loop(guide: Guide, stop: threading.Event, log: list, every: float) -> None:
    """The serving pattern: poll ``guide.refresh()`` in a background thread; queries keep the old state meanwhile."""
    while not stop.wait(every):
        t0 = time.perf_counter()
        changed = guide.refresh()
        log.append((time.time(), changed, time.perf_counter() - t0, guide.index.count))


QUERIES = ["pipette tips", "safety goggles", "digital thermometer", "lab notebook", "stainless steel tweezers",
           "nitrile gloves", "magnifying glass", "soldering iron", "ph test strips", "beaker set glass"]


def cmd_reader(args) -> None:
    """The second process: query the guide until the stop file appears; another thread polls guide.refresh()."""
    import torch

    torch.set_num_threads(args.threads)
    guide = Guide.load(args.guide)
    _ = guide.encoder  # load the encoder the manifest names (with its precision)
    ids = guide.index.live_ids()
    guide.search("warm up", k=10)
    log: list = []
    refresh_log: list = []
    stop = threading.Event()
    print("ready", flush=True)
    threads = [threading.Thread(target=_query_loop, args=(guide, ids, QUERIES, stop, log, args.period,
                                                          args.faiss_threads)),
               threading.Thread(target=_refresh_loop, args=(guide, stop, refresh_log, 0.5))]
    for t in threads:
        t.start()
    while not Path(args.stop_file).exists():
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    seen = guide.index.count
    Path(args.log).write_text(json.dumps({"queries": log, "refresh": refresh_log, "final_count": seen}))


def onboard_in_background(guide: Guide, catalog: Catalog, cache: Any, enc: TimedEncoder, nice: int,
                          batch_size: int, precision: str | None, low_priority: bool = False) -> Any:
    """Onboard from a worker thread at a lower CPU priority (``nice``; Linux niceness is per thread and the
    encoder's OpenMP workers, created by that thread, inherit it), as a server would; returns the report."""

    def work() -> Any:
        enc.owner = threading.get_ident()
        return guide.onboard(catalog, category="Toys & Games", cache=cache, batch_size=batch_size,
                             precision=precision, low_priority=low_priority)

    return run_in_thread(work, nice, name="onboard")


def cmd_speed(args) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    catalog = toys_catalog(args.n)
    enc = TimedEncoder(load_encoder(precision=args.precision))
    if args.precision == "fp32":
        src = base_guide(Path(args.guide), args.build_seconds)
        path = scratch_copy(src, "speed")
    else:  # a plain guide (no adapter) of the Scientific catalog embedded at this precision
        from textguide.bench.datasets.amazon_scientific import load_scientific

        path = Path(tempfile.mkdtemp(prefix="tg-onboard-")) / "speed"
        Guide.build(items_catalog(load_scientific().items), enc.inner, cache=EmbeddingCache()).save(path)
    guide = Guide.load(path, encoder=enc)
    onboard_enc = enc
    if args.onboard_precision not in (None, args.precision):  # Guide.onboard(precision=...) loads a twin encoder
        onboard_enc = TimedEncoder(load_encoder(precision=args.onboard_precision))  # the guide's MiniLM, other precision
        guide.use_onboard_encoder(onboard_enc, args.onboard_precision)  # timed, and loaded before the clock starts
    base_ids = guide.index.live_ids()
    guide.search("warm up", k=10)
    guide.similar(base_ids[0], k=10)
    cache = None
    if args.cached:  # warm cache: embeddings reused from the default cache (filled on the first run)
        cache = EmbeddingCache()
    work = path.parent
    stop_file, child_log = work / "stop", work / "reader.json"
    child = None
    if not args.no_process:
        child = subprocess.Popen(
            [sys.executable, __file__, "reader", "--guide", str(path), "--stop-file", str(stop_file), "--log",
             str(child_log), "--period", str(args.period), "--threads", "1", "--faiss-threads",
             str(args.faiss_threads)],
            stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the reader process failed to start")
    log: list = []
    stop = threading.Event()
    reader = threading.Thread(target=_query_loop, args=(guide, base_ids, QUERIES, stop, log, args.period,
                                                        args.faiss_threads))
    phases: dict[str, tuple[float, float]] = {}
    reader.start()
    try:
        t = time.time()
        time.sleep(args.idle_seconds)
        phases["idle"] = (t, time.time())
        rss0 = rss_mb()
        load0 = load_avg()
        onboard_enc.seconds, onboard_enc.texts = 0.0, 0
        cpu0 = os.times()
        t = time.time()
        with PeakRSS() as peak:
            t0 = time.perf_counter()
            report = onboard_in_background(guide, catalog, cache, onboard_enc, args.nice, args.encode_batch_size,
                                           args.onboard_precision, args.low_priority)
            seconds = time.perf_counter() - t0
        cpu1 = os.times()
        phases["onboarding"] = (t, time.time())
        time.sleep(args.after_seconds)
        phases["after"] = (phases["onboarding"][1] + 3, time.time())  # the second process reloads first
    finally:
        stop.set()
        reader.join()
        stop_file.write_text("stop")
        if child is not None:
            child.wait(timeout=120)
    child_data = json.loads(child_log.read_text()) if child is not None else {"queries": [], "refresh": []}

    def window(entries, phases_, kind):
        return [e[2] for e in entries for p in phases_ if phases[p][0] <= e[0] <= phases[p][1] and e[1] == kind]

    # "idle" pools the windows before and after the onboarding, so that drifting background load on a shared
    # machine weighs on both sides alike
    latency: dict[str, Any] = {}
    for who, entries in (("thread", log), ("process", child_data["queries"])):
        for kind in ("similar", "search"):
            idle = percentiles(window(entries, ["idle", "after"], kind))
            during = percentiles(window(entries, ["onboarding"], kind))
            ratio = during.get("p99_ms", float("nan")) / idle["p99_ms"] if idle.get("p99_ms") else float("nan")
            latency[f"{who}/{kind}"] = {"idle": idle, "during": during, "p99_ratio": round(ratio, 2),
                                        "idle_before": percentiles(window(entries, ["idle"], kind)),
                                        "idle_after": percentiles(window(entries, ["after"], kind))}
    reloads = [r for r in child_data["refresh"] if r[1]]
    toy = catalog.ids[-1]
    served = {"search": guide.search("lego building kit", k=3, category="Toys & Games").ids,
              "similar": guide.similar(toy, k=3).ids}
    shutil.rmtree(work, ignore_errors=True)  # the scratch copy
    return {
        "n": len(catalog), "added": report.added, "items_after": report.items, "seconds": round(seconds, 2),
        "encode_seconds": round(onboard_enc.seconds, 2), "texts_encoded": onboard_enc.texts,
        "other_seconds": round(seconds - onboard_enc.seconds, 2),
        "items_per_second": round(len(catalog) / seconds, 1),
        # CPU seconds of this process while onboarding (readers' queries included): independent of other load
        "cpu_seconds": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 1),
        "rss_before_mb": round(rss0, 1), "rss_peak_during_mb": round(peak.peak, 1),
        "rss_peak_increase_mb": round(peak.peak - rss0, 1), "rss_after_mb": round(rss_mb(), 1),
        "load_average_1min_before": load0, "load_average_1min_after": load_avg(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "cached_embeddings": bool(args.cached), "nice": args.nice, "low_priority": args.low_priority, "precision": args.precision, "faiss_threads": args.faiss_threads,
        "encode_batch_size": args.encode_batch_size, "onboard_precision": args.onboard_precision or args.precision,
        "switch_interval": sys.getswitchinterval(),
        "latency": latency,
        "process_reloads": [{"seconds": round(r[2], 3), "items": r[3]} for r in reloads],
        "process_final_count": child_data.get("final_count"),
        "served_at_once": served,
        **({"raw": {"phases": phases, "thread": log, "process": child_data["queries"],
                    "process_refresh": child_data["refresh"]}} if args.raw else {}),
    }


def speed_markdown(r: dict[str, Any]) -> str:
    summary = (f"onboarded {r['added']} items in {r['seconds']} s ({r['items_per_second']} items/s; encoding "
               f"{r['encode_seconds']} s, the rest {r['other_seconds']} s; {r.get('cpu_seconds')} CPU-s); memory: "
               f"RSS {r['rss_before_mb']} MiB before, peak +{r['rss_peak_increase_mb']} MiB during; load average "
               f"{r['load_average_1min_before']} -> {r['load_average_1min_after']} on {r['cpus']} CPUs")
    header = ("| reader | query | idle p50 / p99 (ms) | during p50 / p99 (ms) | p99 ratio | n idle / during | "
              "idle p99 before / after (ms) |")
    lines = [summary, "", header, "|---|---|---|---|---|---|---|"]
    for key, v in r["latency"].items():
        who, kind = key.split("/")
        i, d = v["idle"], v["during"]
        lines.append(f"| {who} | {kind} | {i.get('p50_ms')} / {i.get('p99_ms')} | {d.get('p50_ms')} / "
                     f"{d.get('p99_ms')} | {v['p99_ratio']} | {i.get('n')} / {d.get('n')} | "
                     f"{v['idle_before'].get('p99_ms')} / {v['idle_after'].get('p99_ms')} |")
    lines.append("")
    lines.append(f"second process: reloaded {len(r['process_reloads'])}x via refresh() "
                 f"({r['process_reloads']}), ends with {r['process_final_count']} items")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    h = sub.add_parser("hm")
    h.add_argument("--group", action="append", help="H&M product_group_name held out (repeatable; default Accessories)")
    h.add_argument("--steps", type=int, default=3000)
    h.add_argument("--max-seconds", type=float, default=600, help="training budget of each model")
    h.add_argument("--full-softmax-max", type=int, default=1000, help="sampled softmax above this many items")
    h.add_argument("--dim", type=int, default=128, help="adapted dimension")
    h.add_argument("--layers", type=int, default=1, help="transformer layers of the history encoder")
    h.add_argument("--max-history", type=int, default=20)
    h.add_argument("--batch-size", type=int, default=128)
    h.add_argument("--num-negatives", type=int, default=2048)
    h.add_argument("--out", default=str(ROOT / "indexes"), help="where the onboarded H&M guide is saved")

    f = sub.add_parser("fewshot")
    f.add_argument("--guide", default="/tmp/tg_onboard/hm/hm-without-accessories",
                   help="a guide saved by `hm` (trained without the group, then onboarded)")
    f.add_argument("--group", default="Accessories")
    f.add_argument("--users", type=lambda v: [int(x) for x in v.split(",")], default=[100, 1000],
                   help="numbers of training customers who bought from the group whose sequences are given")
    f.add_argument("--candidates", default="model:finetune,model:l2sp")
    f.add_argument("--steps", type=int, default=1000)
    f.add_argument("--lr", type=float, default=3e-4)
    f.add_argument("--max-seconds", type=float, default=120, help="training budget of each candidate")
    for q in (h, f):  # the H&M customer split and scoring: fewshot must see the same as hm
        q.add_argument("--report-frac", type=float, default=0.2)
        q.add_argument("--select-frac", type=float, default=0.05)
        q.add_argument("--max-other", type=int, default=5000, help="sampled report purchases of other groups")
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--seed", type=int, default=0)

    for name in ("toys", "speed"):
        s = sub.add_parser(name)
        s.add_argument("--guide", default=str(DEFAULT_GUIDE))
        s.add_argument("--build-seconds", type=float, default=120, help="training budget if the guide is built")
    s.add_argument("--n", type=int, default=10_000)
    s.add_argument("--cached", action="store_true", help="reuse cached embeddings (default: encode them all)")
    s.add_argument("--period", type=float, default=0.05, help="seconds between a reader's queries")
    s.add_argument("--idle-seconds", type=float, default=30)
    s.add_argument("--after-seconds", type=float, default=33, help="idle seconds measured after the onboarding")
    s.add_argument("--threads", type=int, default=0, help="torch threads of the onboarding process (0: default)")
    s.add_argument("--no-process", action="store_true", help="no second reader process")
    s.add_argument("--switch-interval", type=float, default=0.0,
                   help="sys.setswitchinterval of the onboarding process (seconds; 0: Python's default 0.005)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: onboard into a plain Scientific guide embedded in bf16 (no adapter)")
    s.add_argument("--encode-batch-size", type=int, default=64, help="Guide.onboard(batch_size=...)")
    s.add_argument("--onboard-precision", choices=["fp32", "bf16"], default=None,
                   help="Guide.onboard(precision=...): embed the new items in bf16 (default: the guide's precision)")
    s.add_argument("--faiss-threads", type=int, default=0,
                   help="OpenMP threads of the readers' FAISS searches (1 recommended on a busy small machine; "
                        "0: FAISS's default)")
    s.add_argument("--raw", action="store_true", help="keep every query's (time, kind, seconds) in the JSON")
    s.add_argument("--nice", type=int, default=0, help="niceness of the onboarding thread (e.g. 10; 0: same as readers)")
    s.add_argument("--low-priority", action="store_true", help="Guide.onboard(low_priority=True): embed in a niced "
                   "worker thread (the library's own way; --nice sets the calling thread's priority instead)")

    r = sub.add_parser("reader")
    r.add_argument("--guide", required=True)
    r.add_argument("--stop-file", required=True)
    r.add_argument("--log", required=True)
    r.add_argument("--period", type=float, default=0.05)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--faiss-threads", type=int, default=0)

    for q in (sub.choices["hm"], sub.choices["toys"], sub.choices["speed"], sub.choices["fewshot"]):
        q.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.cmd == "reader":
        cmd_reader(args)
        return 0
    res = {"hm": cmd_hm, "toys": cmd_toys, "speed": cmd_speed, "fewshot": cmd_fewshot}[args.cmd](args)
    res["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else " ".join(argv)
    if args.json:  # first: a closed stdout pipe must not lose the results
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    if args.cmd == "hm":
        for g, r in res["groups"].items():
            print(hm_markdown(g, r))
    elif args.cmd == "speed":
        print(speed_markdown(res))
    print(json.dumps({k: v for k, v in res.items() if k != "raw"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
