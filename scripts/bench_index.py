#!/usr/bin/env python3
"""Benchmark textguide's build and query paths against the baseline a user would otherwise write.

The baseline is ``SentenceTransformer(path).encode(texts, normalize_embeddings=True)`` plus a
``faiss.IndexFlatIP``. Everything runs on real H&M article texts (``../shared/data/hm``), composed as
``textguide.bench.datasets.hm`` composes them: prod_name. product_type_name. colour_group_name. section_name. detail_desc.

Sections (one Markdown table at the end, with a target and a pass column per row):

1. encoding throughput (items/s) of ``encode_texts`` (fresh empty cache) vs plain ``encode`` on
   20,000 distinct texts, fp32 runs alternated; bf16 throughput, its cosine to fp32 and top-10 overlap.
2. re-encoding after editing 1% of the titles (warm cache) vs the cold encode.
3. the full catalog: build time, peak RSS of the build (measured in a fresh child process), size
   on disk, recall@10 of the auto-chosen index vs exact search, and single-query latency p50/p99 of
   ``guide.similar`` / ``guide.search`` vs the baseline.
4. CPU backends (``--backend``: ONNX Runtime, OpenVINO, their int8 exports) vs plain ``encode`` fp32 on
   ``--backend-texts`` texts, runs interleaved: throughput ratio, cosine to fp32, top-10 neighbour overlap.

Usage::

    python scripts/bench_index.py --limit 5000                      # quick check (~10 min on 2 cores)
    python scripts/bench_index.py --cache-dir /tmp/tg-bench-cache   # full run (~1 h on 2 cores, cold)
    python scripts/bench_index.py --cache-dir /tmp/tg-bench-cache --skip-encode-bench   # warm rerun of 3.
    python scripts/bench_index.py --only-backends --backend-texts 3000 --repeats 3      # section 4 only

The cold encode time of section 3 is stored next to the cache (``bench_index_cold.json``) the first
time it is measured, so a rerun with a warm ``--cache-dir`` still reports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import resource
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

try:
    import textguide  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger("textguide")

ENCODE_N = 20_000
EDIT_FRACTION = 0.01
N_QUERIES = 1_000
K = 10
COLD_FILE = "bench_index_cold.json"


# ---------------------------------------------------------------------------------------------- data
def default_hm_path() -> Path:
    from textguide.bench.datasets import data_root

    return data_root() / "hm" / "articles.csv.gz"


def read_articles(path: Path, limit: int | None = None) -> pd.DataFrame:
    """H&M articles with the raw text columns and the composed ``text`` (as textguide.bench.datasets.hm does)."""
    from textguide.bench.datasets import compose_column
    from textguide.bench.datasets.hm import ARTICLE_COLUMNS, PREFIX, TEXT_COLUMNS

    if path.is_dir():
        path = path / "articles.csv.gz" if (path / "articles.csv.gz").is_file() else path / "articles.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: H&M articles file not found; pass --hm PATH/articles.csv.gz")
    frame = pd.read_csv(path, usecols=ARTICLE_COLUMNS, dtype=str, keep_default_na=False, nrows=limit)
    frame["id"] = PREFIX + frame["article_id"].str.zfill(10)
    frame["text"] = compose_column(frame, TEXT_COLUMNS)
    return frame.reset_index(drop=True)


def metadata_of(frame: pd.DataFrame) -> pd.DataFrame:
    """The metadata columns textguide.bench.datasets.hm.load_hm_articles exposes."""
    from textguide.bench.datasets.hm import article_metadata

    return article_metadata(frame, frame["id"])


def edit_titles(frame: pd.DataFrame, rows: np.ndarray) -> list[str]:
    """Texts after appending " (new)" to the titles of ``rows``."""
    from textguide.bench.datasets import compose_column
    from textguide.bench.datasets.hm import TEXT_COLUMNS

    edited = frame.loc[rows].copy()
    edited["prod_name"] = edited["prod_name"].str.strip() + " (new)"
    texts = frame["text"].tolist()
    for r, t in zip(rows, compose_column(edited, TEXT_COLUMNS)):
        texts[r] = t
    return texts


# ---------------------------------------------------------------------------------------------- helpers
@dataclass
class Row:
    """One line of the result table."""

    section: str
    metric: str
    textguide: str
    baseline: str
    target: str
    passed: bool | None = None


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_ms(x: float) -> str:
    return f"{x * 1e3:.2f} ms"


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def peak_rss_kb() -> tuple[int, int | None]:
    """(ru_maxrss, VmHWM) in KiB. A spawned child's ru_maxrss also counts the pages of the parent it was
    forked from before exec; VmHWM (Linux) is the high-water mark of this process image alone."""
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def texts_key(fingerprint: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return f"{fingerprint}:{len(texts)}:{h.hexdigest()[:16]}"


def topk_exact(base: np.ndarray, queries: np.ndarray, k: int, exclude_rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of the exact inner-product top-k (optionally excluding each query's own row)."""
    sims = queries @ base.T
    if exclude_rows is not None:
        sims[np.arange(len(queries)), exclude_rows] = -np.inf
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1, kind="stable")
    return np.take_along_axis(part, order, 1)


def plain_model():
    """The baseline model, loaded as a user would (the same packaged MiniLM files)."""
    from sentence_transformers import SentenceTransformer

    from textguide.encoder import packaged_minilm_path

    return SentenceTransformer(str(packaged_minilm_path()), device="cpu")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


class CpuShare:
    """CPU seconds this process got per wall second (2.0 = both cores of a 2-core machine)."""

    def __enter__(self) -> "CpuShare":
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.value = (time.process_time() - self.cpu) / max(time.perf_counter() - self.wall, 1e-9)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("sentence_transformers", "transformers", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------- 1 + 2
def bench_encode(frame: pd.DataFrame, n: int, repeats: int, work: Path, rows: list[Row], results: dict) -> None:
    """Sections 1 and 2: throughput, bf16 quality, 1% rebuild."""
    import torch

    from textguide.encoder import EmbeddingCache, encode_texts, load_encoder

    sub = frame.drop_duplicates("text").head(n).reset_index(drop=True)
    texts = sub["text"].tolist()
    n = len(texts)
    dup_rows = int(frame["text"].head(n).duplicated().sum())
    logger.info("section 1: %d distinct H&M texts (the first %d rows hold %d duplicate texts)", n, n, dup_rows)

    plain = plain_model()
    enc = load_encoder()
    warm = texts[:128]
    plain.encode(warm, normalize_embeddings=True, show_progress_bar=False)
    encode_texts(enc, warm, show_progress=False)

    runs: dict[str, list[float]] = {"plain": [], "textguide": []}
    share: dict[str, list[float]] = {"plain": [], "textguide": []}
    loads: list[str] = []
    vec_plain = vec_tg = None
    cache = None
    for r in range(repeats):
        order = ["plain", "textguide"] if r % 2 == 0 else ["textguide", "plain"]
        for who in order:
            before = load()
            if who == "textguide":
                if cache is not None:
                    cache.close()
                cache = EmbeddingCache(work / f"cache-cold-{r}")  # fresh and empty
            with CpuShare() as cpu:
                if who == "plain":
                    vec_plain, dt = timed(lambda: plain.encode(texts, normalize_embeddings=True))
                else:
                    vec_tg, dt = timed(lambda: encode_texts(enc, texts, cache=cache))
            runs[who].append(dt)
            share[who].append(cpu.value)
            loads.append(f"{who}#{r + 1} {before}->{load()}")
            logger.info("%s fp32 run %d: %.1f s, %.1f items/s, %.2f CPU s per s (load %s -> %s)", who, r + 1, dt,
                        n / dt, cpu.value, before, load())
    cos_tg_plain = float(np.mean(np.sum(np.asarray(vec_plain) * vec_tg, axis=1)))

    tput = {w: [n / t for t in ts] for w, ts in runs.items()}
    best = {w: max(v) for w, v in tput.items()}
    mean = {w: float(np.mean(v)) for w, v in tput.items()}
    ratio_best = best["textguide"] / best["plain"]
    ratio_mean = mean["textguide"] / mean["plain"]
    results["encode"] = {"n": n, "seconds": runs, "items_per_s": tput, "cpu_share": share, "loads": loads,
                         "ratio_best": ratio_best, "ratio_mean": ratio_mean, "cos_tg_plain": cos_tg_plain,
                         "torch_threads": torch.get_num_threads()}
    runs_s = lambda w: ", ".join(f"{x:.1f} [{c:.2f}]" for x, c in zip(tput[w], share[w]))  # noqa: E731
    rows.append(Row("1", f"fp32 encode throughput, {n:,} distinct texts, items/s (runs [CPU s per s]: "
                         f"textguide {runs_s('textguide')}; plain {runs_s('plain')})",
                    f"{best['textguide']:.1f} (mean {mean['textguide']:.1f})",
                    f"{best['plain']:.1f} (mean {mean['plain']:.1f})", "", None))
    rows.append(Row("1", "textguide / plain throughput (best of runs; mean of runs)",
                    f"{ratio_best:.3f}x ({ratio_mean:.3f}x)", "1x", ">= 0.95x", ratio_best >= 0.95))
    rows.append(Row("1", "mean cosine textguide vs plain vectors", f"{cos_tg_plain:.5f}", "1", "", None))

    # bf16
    enc16 = load_encoder(precision="bf16")
    encode_texts(enc16, warm, show_progress=False)
    cache16 = EmbeddingCache(work / "cache-bf16")
    before = load()
    with CpuShare() as cpu16:
        vec16, dt16 = timed(lambda: encode_texts(enc16, texts, cache=cache16))
    cache16.close()
    logger.info("textguide bf16: %.1f s, %.1f items/s, %.2f CPU s per s (load %s -> %s)", dt16, n / dt16,
                cpu16.value, before, load())
    cos16 = float(np.mean(np.sum(vec16 * vec_tg, axis=1)))
    rng = np.random.default_rng(0)
    q = rng.choice(n, size=min(N_QUERIES, n), replace=False)
    nn32 = topk_exact(vec_tg, vec_tg[q], K, q)
    nn16 = topk_exact(vec16, vec16[q], K, q)
    overlap = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(nn32, nn16)]))
    results["bf16"] = {"seconds": dt16, "items_per_s": n / dt16, "cpu_share": cpu16.value, "cosine": cos16,
                       "overlap@10": overlap, "load": before}
    rows.append(Row("1", f"bf16 encode throughput, items/s (textguide precision='bf16'; [{cpu16.value:.2f}] CPU s per s)",
                    f"{n / dt16:.1f} ({n / dt16 / best['textguide']:.2f}x best fp32)", "—", "", None))
    rows.append(Row("1", "bf16 mean cosine to fp32", f"{cos16:.4f}", "—", ">= 0.99", cos16 >= 0.99))
    rows.append(Row("1", f"bf16 top-{K} neighbour overlap with fp32 ({len(q):,} queries)", f"{overlap:.3f}", "—",
                    ">= 0.95", overlap >= 0.95))
    del enc16

    # section 2: the last textguide cache is warm with exactly `texts`
    n_edit = max(1, round(n * EDIT_FRACTION))
    edit_rows = np.sort(rng.choice(n, size=n_edit, replace=False))
    edited = edit_titles(sub, edit_rows)
    before = load()
    vec_edit, dt_warm = timed(lambda: encode_texts(enc, edited, cache=cache))
    cache.close()
    keep = np.setdiff1d(np.arange(n), edit_rows)
    unchanged_equal = bool(np.array_equal(vec_edit[keep], vec_tg[keep]))
    cold = min(runs["textguide"])
    speedup = cold / dt_warm
    logger.info("1%% rebuild: %.2f s vs cold %.1f s -> %.1fx (load %s -> %s)", dt_warm, cold, speedup, before, load())
    results["rebuild"] = {"edited": n_edit, "warm_s": dt_warm, "cold_s": cold, "speedup": speedup,
                          "unchanged_rows_identical": unchanged_equal}
    rows.append(Row("2", f"re-encode after editing {n_edit} titles (1%) vs cold ({cold:.1f} s, fastest cold run)",
                    f"{dt_warm:.2f} s = {speedup:.0f}x faster", f"{min(runs['plain']):.1f} s (re-encodes all)", ">= 20x",
                    speedup >= 20 and unchanged_equal))
    results["_plain_items_per_s"] = best["plain"]


# ---------------------------------------------------------------------------------------------- 4
def bench_backends(frame: pd.DataFrame, n: int, repeats: int, backends: Sequence[str], rows: list[Row],
                   results: dict) -> None:
    """Section 4: CPU backends vs plain ``SentenceTransformer.encode`` fp32 on the same texts, runs interleaved
    (plain, b1, b2, ..., then rotated) so that load from other processes hits every encoder alike."""
    from textguide.backends import backend_available
    from textguide.encoder import load_encoder

    texts = frame.drop_duplicates("text").head(n)["text"].tolist()
    n = len(texts)
    encoders: dict[str, Any] = {"plain": plain_model()}
    for b in backends:
        if not backend_available(b):
            logger.warning("backend %s: packages missing, skipped", b)
            continue
        encoders[b] = load_encoder(backend=b)  # exports on first use (cached): not timed
    run = {name: (lambda e=e: e.encode(texts, normalize_embeddings=True, show_progress_bar=False)) if name == "plain"
           else (lambda e=e: e.encode(texts, show_progress=False)) for name, e in encoders.items()}
    for name, e in encoders.items():  # warm-up
        (e.encode(texts[:64], normalize_embeddings=True) if name == "plain" else e.encode(texts[:64]))
    names = list(encoders)
    secs: dict[str, list[float]] = {w: [] for w in names}
    vecs: dict[str, np.ndarray] = {}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for who in order:
            before = load()
            vecs[who], dt = timed(run[who])
            secs[who].append(dt)
            logger.info("backend %s run %d: %.1f s, %.1f items/s (load %s -> %s)", who, r + 1, dt, n / dt, before, load())
    ref = np.asarray(vecs["plain"], np.float32)
    q = np.random.default_rng(0).choice(n, size=min(N_QUERIES, n), replace=False)
    nn_ref = topk_exact(ref, ref[q], K, q)
    base_tput = float(np.mean([n / t for t in secs["plain"]]))
    results["backends"] = {"n": n, "seconds": secs, "queries": len(q)}
    rows.append(Row("4", f"plain ST encode fp32, {n:,} H&M texts, items/s (mean of {repeats} interleaved runs)",
                    "—", f"{base_tput:.1f}", "", None))
    for b in names[1:]:
        v = vecs[b]
        cos = np.sum(v * ref, axis=1)
        nn = topk_exact(v, v[q], K, q)
        overlap = float(np.mean([len(set(a) & set(c)) / K for a, c in zip(nn_ref, nn)]))
        tput = float(np.mean([n / t for t in secs[b]]))
        ratio = tput / base_tput
        ok = ratio >= 2.0 and float(cos.mean()) >= 0.99 and overlap >= 0.95
        results["backends"][b] = {"items_per_s": tput, "ratio": ratio, "cos_mean": float(cos.mean()),
                                  "cos_min": float(cos.min()), "overlap@10": overlap}
        rows.append(Row("4", f"backend {b}: items/s, x plain; cosine to fp32 mean (min); top-{K} overlap ({len(q)} queries)",
                        f"{tput:.1f} = {ratio:.2f}x; cos {cos.mean():.4f} ({cos.min():.4f}); overlap {overlap:.3f}",
                        f"{base_tput:.1f}", ">= 2x, cos >= .99, overlap >= .95", ok))


# ---------------------------------------------------------------------------------------------- 3
def _build_child(hm_path: str, limit: int | None, cache_dir: str, out_dir: str, queue) -> None:
    """Build the guide in a fresh process so ru_maxrss is the build's own peak RSS."""
    setup_logging()
    try:
        from textguide.encoder import EmbeddingCache, encode_texts, load_encoder
        from textguide.guide import Guide, encoder_info
        from textguide.index import ItemIndex

        t0 = time.perf_counter()
        frame = read_articles(Path(hm_path), limit)
        texts = frame["text"].tolist()
        meta = metadata_of(frame)
        meta["text"] = texts
        enc = load_encoder()
        t_load = time.perf_counter() - t0
        cache = EmbeddingCache(cache_dir)
        keys = [EmbeddingCache.key(t) for t in dict.fromkeys(texts)]
        cached = len(cache.get(enc.fingerprint, keys, enc.dim))
        logger.info("section 3 build: %d items, %d unique texts, %d already cached", len(texts), len(keys), cached)
        before = load()
        # the same two steps as Guide.build, timed apart
        with CpuShare() as cpu:
            vectors, t_enc = timed(lambda: encode_texts(enc, texts, cache=cache))
        cache.close()
        index, t_idx = timed(lambda: ItemIndex.build(vectors, frame["id"].tolist(), meta))
        guide = Guide(index, encoder_info(enc), enc)
        _, t_save = timed(lambda: guide.save(out_dir))
        queue.put({
            "ok": True, "n": len(texts), "unique": len(keys), "cached_before": cached,
            "load_s": t_load, "encode_s": t_enc, "encode_cpu_share": cpu.value, "index_s": t_idx, "save_s": t_save,
            "factory": index.factory, "fingerprint": enc.fingerprint, "key": texts_key(enc.fingerprint, texts),
            "maxrss_kb": peak_rss_kb()[0], "hwm_kb": peak_rss_kb()[1], "load": f"{before}->{load()}",
        })
    except BaseException as e:  # report, then let the parent raise
        queue.put({"ok": False, "error": f"{type(e).__name__}: {e}"})
        raise


def bench_catalog(args: argparse.Namespace, work: Path, rows: list[Row], results: dict) -> None:
    """Section 3: full-catalog build, size, recall, latency."""
    import faiss

    from textguide.guide import Guide

    cache_dir = Path(args.cache_dir) if args.cache_dir else work / "cache-catalog"
    out_dir = work / "guide-hm"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_build_child, args=(str(args.hm), args.limit, str(cache_dir), str(out_dir), queue))
    proc.start()
    while True:
        try:
            res = queue.get(timeout=5)
            break
        except queue_mod.Empty:
            if not proc.is_alive():
                res = {"ok": False, "error": "the build process died without a result (killed for memory?)"}
                break
    proc.join()
    if not res.get("ok") or proc.exitcode != 0:
        raise RuntimeError(f"build child failed (exit {proc.exitcode}): {res.get('error')}")
    n = res["n"]
    build_s = res["encode_s"] + res["index_s"]
    peak_kb = res["hwm_kb"] or res["maxrss_kb"]
    logger.info("build: encode %.1f s (%d/%d cached), index %.1f s (%s), save %.1f s, peak RSS %.2f GB "
                "(ru_maxrss %.2f GB)", res["encode_s"], res["cached_before"], res["unique"], res["index_s"],
                res["factory"], res["save_s"], peak_kb / 2**20, res["maxrss_kb"] / 2**20)

    # the cold encode time: measured now, or by an earlier run with this cache
    cold_path = cache_dir / COLD_FILE
    cold_db = json.loads(cold_path.read_text()) if cold_path.is_file() else {}
    if res["cached_before"] == 0:
        cold = {"encode_s": res["encode_s"], "unique": res["unique"], "date": time.strftime("%Y-%m-%d %H:%M"),
                "load": res["load"], "cpu_share": res["encode_cpu_share"]}
        cold_db[res["key"]] = cold
        cold_path.write_text(json.dumps(cold_db, indent=2))
        cold_note = "this run"
    else:
        cold = cold_db.get(res["key"])
        cold_note = f"measured {cold['date']}" if cold else "not measured: the cache was partly warm"
    results["build"] = dict(res, cold=cold)

    size = dir_bytes(out_dir)
    files = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}

    # load the guide the way an application would
    guide, t_open = timed(lambda: Guide.load(out_dir))
    emb = guide.index.embeddings
    flat, t_flat = timed(lambda: _flat(emb))
    with tempfile.NamedTemporaryFile(dir=work, suffix=".faiss", delete=False) as f:
        flat_path = f.name
    faiss.write_index(flat, flat_path)
    flat_size = os.path.getsize(flat_path)
    os.unlink(flat_path)

    plain_ips = results.get("_plain_items_per_s")
    base_build = f"{n / plain_ips + t_flat:.0f} s (est.: {n:,} / {plain_ips:.1f} items/s + Flat add {t_flat:.2f} s)" \
        if plain_ips else f"plain encode not run here (--skip-encode-bench) + Flat add {t_flat:.2f} s"
    enc_line = f"encode {res['encode_s']:.1f} s ({res['cached_before']:,}/{res['unique']:,} cached) + index {res['index_s']:.1f} s"
    rows.append(Row("3", f"build, {n:,} items ({res['unique']:,} unique texts), this run", f"{build_s:.1f} s: {enc_line}",
                    base_build, "", None))
    if cold:
        rows.append(Row("3", f"cold encode of the catalog ({cold_note}, load {cold['load']}, "
                             f"[{cold.get('cpu_share', float('nan')):.2f}] CPU s per s)",
                        f"{cold['encode_s']:.0f} s = {cold['unique'] / cold['encode_s']:.1f} unique texts/s", "—", "", None))
    rss_gb = peak_kb / 2**20
    what = f"VmHWM; ru_maxrss {res['maxrss_kb'] / 2**20:.2f} GB counts the parent's pages" if res["hwm_kb"] else "ru_maxrss"
    rows.append(Row("3", f"peak RSS of the build process, {'cold' if res['cached_before'] == 0 else 'warm'} cache ({what})",
                    f"{rss_gb:.2f} GB", "—", "<= 3 GB", rss_gb <= 3))
    big = ", ".join(f"{k} {v / 2**20:.0f} MB" for k, v in files.items() if v > 2**20)
    rows.append(Row("3", f"size on disk (Guide.save{'; ' + big if big else ''})",
                    f"{size / 2**20:.0f} MB", f"{flat_size / 2**20:.0f} MB (IndexFlatIP only, no ids)", "", None))
    rows.append(Row("3", "Guide.load (checksums verified)", f"{t_open:.2f} s", "—", "", None))

    # recall@10 of the chosen index vs exact search
    rng = np.random.default_rng(0)
    qrows = rng.choice(n, size=min(N_QUERIES, n), replace=False)
    qv = emb[qrows]
    _, exact = flat.search(qv, K)
    got, _ = guide.index.search(qv, K)
    got_rows = [[guide.index.row_of[i] for i in g] for g in got]
    recall = float(np.mean([len(set(g) & set(e)) / K for g, e in zip(got_rows, exact)]))
    kth = np.sum(emb[exact[:, -1]] * qv, axis=1)  # the exact 10th score: equal scores are equally right
    tie_recall = float(np.mean([np.sum(emb[g] @ q >= t - 1e-5) / K for g, q, t in zip(got_rows, qv, kth)]))
    results["recall"] = {"factory": guide.index.factory, "recall@10": recall, "tie_aware": tie_recall}
    rows.append(Row("3", f"recall@{K} of {guide.index.factory} vs exact, {len(qrows):,} item queries (by id; tie-aware)",
                    f"{recall:.4f} ({tie_recall:.4f})", "1 (exact)", ">= 0.95", tie_recall >= 0.95))

    # single-query latency, textguide and baseline alternated query by query
    plain = plain_model()
    guide.encoder  # noqa: B018 - load the query encoder before timing
    ids = guide.index.ids
    row_of = {i: r for r, i in enumerate(ids)}
    meta = guide.index.metadata
    qtext = (meta["colour"].iloc[qrows] + " " + meta["title"].iloc[qrows]).tolist()
    qids = [ids[r] for r in qrows]

    def base_similar(item_id: str) -> list[str]:
        _, i = flat.search(emb[row_of[item_id]][None, :], K + 1)
        return [ids[j] for j in i[0] if j >= 0 and ids[j] != item_id][:K]

    def base_search(text: str) -> list[str]:
        v = plain.encode([text], normalize_embeddings=True, show_progress_bar=False)
        _, i = flat.search(v, K)
        return [ids[j] for j in i[0] if j >= 0]

    import torch

    def one_thread(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(x: Any) -> Any:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return fn(x)
            finally:
                torch.set_num_threads(threads)
        return run

    # per kind: textguide, baseline, a diagnostic variant (what a proposed patch would get), inputs
    kinds = {
        "similar": ({"textguide": lambda x: guide.similar(x, k=K), "baseline": base_similar,
                     "diag": lambda x: guide.index.search(guide.index.vector(x)[None, :], K, exclude=[[x]])}, qids),
        "search": ({"textguide": lambda x: guide.search(x, k=K), "baseline": base_search,
                    "diag": one_thread(lambda x: guide.search(x, k=K))}, qtext),
    }
    lat: dict[str, dict[str, Any]] = {}
    for name, (fns, inputs) in kinds.items():
        for x in inputs[:20]:  # warm-up
            for fn in fns.values():
                fn(x)
        times: dict[str, list[float]] = {w: [] for w in fns}
        names = list(fns)
        before = load()
        for x in tqdm(inputs, desc=f"latency {name}", mininterval=5):
            # a random order per query: whoever runs right after the baseline's full scan finds cold caches
            for w in rng.permutation(names):
                t0 = time.perf_counter()
                fns[w](x)
                times[w].append(time.perf_counter() - t0)
        lat[name] = dict(times, load=f"{before}->{load()}")
        logger.info("latency %s p50: %s (load %s)", name,
                    ", ".join(f"{w} {fmt_ms(pct(v, 50))}" for w, v in times.items()), lat[name]["load"])
    results["latency"] = {k: {w: {"p50": pct(v[w], 50), "p99": pct(v[w], 99)} for w in ("textguide", "baseline", "diag")}
                          for k, v in lat.items()}
    for name, target, label, diag in (
        ("similar", 1e-3, f"guide.similar(id, k={K})", "ItemIndex.search alone (no metadata dicts)"),
        ("search", 15e-3, f"guide.search(text, k={K}) incl. encoding", "guide.search with 1 torch thread"),
    ):
        tg, base, dg = lat[name]["textguide"], lat[name]["baseline"], lat[name]["diag"]
        p50 = pct(tg, 50)
        rows.append(Row("3", f"{label} p50 / p99, {len(tg):,} single queries (load {lat[name]['load']})",
                        f"{fmt_ms(p50)} / {fmt_ms(pct(tg, 99))}", f"{fmt_ms(pct(base, 50))} / {fmt_ms(pct(base, 99))}",
                        f"p50 <= {target * 1e3:.0f} ms", p50 <= target))
        rows.append(Row("3", f"diagnostic, same queries interleaved: {diag}",
                        f"{fmt_ms(pct(dg, 50))} / {fmt_ms(pct(dg, 99))}", "—", "", None))


def _flat(emb: np.ndarray):
    import faiss

    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(np.ascontiguousarray(emb, dtype=np.float32))
    return flat


# ---------------------------------------------------------------------------------------------- main
def machine_info() -> list[str]:
    import faiss
    import sentence_transformers
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM; torch threads {torch.get_num_threads()}, "
        f"faiss OpenMP threads {faiss.omp_get_max_threads()}",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, faiss {faiss.__version__}, "
        f"sentence-transformers {sentence_transformers.__version__}",
    ]


def table(rows: list[Row]) -> str:
    out = ["| # | metric | textguide | baseline (ST encode + IndexFlatIP) | target | pass |", "|---|---|---|---|---|---|"]
    for r in rows:
        ok = "" if r.passed is None else ("yes" if r.passed else "**NO**")
        out.append(f"| {r.section} | {r.metric} | {r.textguide} | {r.baseline} | {r.target} | {ok} |")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hm", type=Path, default=None, help="H&M articles.csv.gz (or its folder); default ../shared/data/hm")
    p.add_argument("--limit", type=int, default=None, help="use only the first N articles (quick check)")
    p.add_argument("--cache-dir", default=None, help="embedding cache for section 3, kept between runs (default: a temp dir)")
    p.add_argument("--skip-encode-bench", action="store_true", help="skip sections 1 and 2")
    p.add_argument("--repeats", type=int, default=2, help="alternating fp32 runs per encoder in section 1 (default 2)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results to this JSON file")
    p.add_argument("--backend-texts", type=int, default=3000, help="texts for section 4 (CPU backends; 0 skips it)")
    p.add_argument("--backends", default="onnx,onnx-int8,openvino,openvino-int8", help="section 4's backends")
    p.add_argument("--only-backends", action="store_true", help="run section 4 only")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        p.error("--limit must be positive")
    if args.repeats <= 0:
        p.error("--repeats must be positive")
    args.hm = args.hm or default_hm_path()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    start = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_start = load()
    t_start = time.perf_counter()
    logger.info("bench_index: %s (load %s)", command, load_start)
    rows: list[Row] = []
    results: dict[str, Any] = {"command": command, "start": start, "load_start": load_start}
    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp:
        work = Path(tmp)
        if args.backend_texts > 0:
            frame = read_articles(args.hm, args.limit)
            bench_backends(frame, args.backend_texts, max(args.repeats, 2), args.backends.split(","), rows, results)
            del frame
        if not args.skip_encode_bench and not args.only_backends:
            frame = read_articles(args.hm, args.limit)
            bench_encode(frame, ENCODE_N, args.repeats, work, rows, results)
            del frame
        if not args.only_backends:
            bench_catalog(args, work, rows, results)
    load_end = load()
    minutes = (time.perf_counter() - t_start) / 60
    results["load_end"] = load_end
    info = machine_info()
    results["machine"] = info
    missed = [r for r in rows if r.passed is False]
    report = "\n".join([
        "",
        f"## bench_index: {start}, {minutes:.1f} min",
        "",
        *info,
        f"- load average (1/5/15 min): {load_start} at start, {load_end} at end",
        "",
        table(rows),
        "",
        f"targets missed: {len(missed)}" + (": " + "; ".join(r.metric for r in missed) if missed else ""),
        "",
        "command:",
        "",
        f"    {command}",
        "",
    ])
    print(report, flush=True)
    if args.json:
        results.pop("_plain_items_per_s", None)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
