#!/usr/bin/env python3
"""Scale benchmark: the single-process build vs the Ray build, and a 2-million-product sharded guide.

Parts (``--part``):

``hm``         H&M articles (``../shared/data/hm``; ``--limit`` rows, all 105,542 without it), built with the packaged
               MiniLM three ways: the single-process ``build-index``, Ray with 1 actor (2 CPUs, 2 torch threads) and
               Ray with 2 actors (1 CPU each), every run cold (no embedding cache). Each build runs in a fresh
               child process; a sampler reads the RSS of every process in its tree (driver, Ray's own processes,
               the embedding actors) twice a second: the table gives wall time and each process's peak.
``synthetic``  ``--rows`` generated products (titles from colour/material/kind/brand/size words and a model number),
               embedded by the hashing encoder (``hashing:DIM``: it stands in for the model, so the build time here
               is not a model's), built on Ray into ``--shards`` shards with the index factory the single index
               picks for a shard's size; then loaded with ``Guide.load`` and queried: index bytes per item, query
               latency p50/p99 (one query at a time) and recall@10 against exact search on a sample of queries.
``stream``     out of core: ``--rows`` (and a tenth of it) generated products saved as a ``datasets`` folder (with
               ``--description-words``, each product carries a description: stored as metadata, only the title is
               embedded, so the hashing encoder stays fast), built by
               ``build_index_streaming`` with each ``--stream-batches`` size and, at ``--rows``, by the in-memory
               ``build_index`` with the same factory; each child's peak resident memory (VmHWM) is the result.

Results go to ``--out`` (JSON) and a Markdown table on stdout. Usage::

    nice -n 10 python scripts/bench_scale.py --part hm --limit 10000 --out docs/runs/bench_scale_hm.json
    nice -n 10 python scripts/bench_scale.py --part synthetic --rows 2000000 --out docs/runs/bench_scale_2m.json
    python scripts/bench_scale.py --part stream --rows 2000000 --out docs/runs/bench_scale_stream_2m.json
"""

from __future__ import annotations

import argparse
import json
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
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- child processes
def worker(args: argparse.Namespace) -> None:
    """Run one build in this (child) process and print its result as JSON on the last line."""
    import faiss

    from textguide.guide import build_index

    t0 = time.perf_counter()
    common = dict(encoder=args.encoder or None, backend=args.backend, use_cache=False, template=args.template,
                  force=True)
    if args.worker == "single":
        guide = build_index(args.catalog, args.output, batch_size=args.batch_size, factory=args.factory, **common)
        items = guide.index.count
    elif args.worker == "stream":
        from textguide.stream import build_index_streaming

        manifest = build_index_streaming(args.catalog, args.output, batch_size=args.batch_size,
                                         batch_rows=args.batch_rows, factory=args.factory, **common)
        items = manifest["counts"]["items"]
    else:
        import ray

        from textguide.distributed import build_index_ray

        faiss.omp_set_num_threads(1)
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        manifest = build_index_ray(args.catalog, args.output, shards=args.shards, actors=args.actors,
                                   cpus_per_actor=args.cpus / args.actors, batch_rows=args.batch_rows,
                                   batch_size=args.batch_size, **common)
        items = manifest["counts"]["items"]
        ray.shutdown()
    seconds = time.perf_counter() - t0
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = next((int(line.split()[1]) // 1024 for line in status if line.startswith("VmHWM:")), None)
    print(json.dumps({"seconds": seconds, "items": items, "vm_hwm_mb": hwm}))


def _label(proc: Any, root: int) -> str:
    if proc.pid == root:
        return "driver (the build process)"
    try:
        cmd, name = " ".join(proc.cmdline()), proc.name()
    except Exception:  # noqa: BLE001 - the process ended
        return "gone"
    if "MapBatches(Embed)" in cmd or "MapWorker" in cmd:
        return "embed actor"
    if cmd.startswith("ray::") or "default_worker.py" in cmd:
        return "ray worker (idle, tasks)"
    for exe in ("raylet", "gcs_server"):
        if name.startswith(exe):
            return "ray: " + exe
    return "ray: other (" + name + ")"


def run_child(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run ``cmd``, sampling the RSS of its process tree; its JSON result plus peaks per process."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peaks: dict[int, tuple[str, int]] = {}
    total_peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal total_peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            total = 0
            for p in tree:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                label = peaks.get(p.pid, (None, 0))[0]
                if label in (None, "gone") or label.startswith("ray worker"):  # an idle worker becomes an actor
                    label = _label(p, proc.pid)
                peaks[p.pid] = (label, max(rss, peaks.get(p.pid, ("", 0))[1]))
            total_peak = max(total_peak, total)
            done.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"{cmd} ran past {timeout} s; stderr tail: {err[-2000:]}")
    finally:
        done.set()
        thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    by_label: dict[str, list[int]] = {}
    for label, rss in peaks.values():
        by_label.setdefault(label, []).append(rss)
    result["peak_rss_mb"] = {k: [round(v / 2**20) for v in sorted(vs, reverse=True)] for k, vs in by_label.items()}
    result["peak_tree_rss_mb"] = round(total_peak / 2**20)
    return result


def _cmd(kind: str, catalog: Path, output: Path, args: argparse.Namespace, **extra: Any) -> list[str]:
    cmd = [sys.executable, __file__, "--worker", kind, "--catalog", str(catalog), "--output", str(output),
           "--encoder", extra.get("encoder", args.encoder or ""), "--batch-size", str(args.batch_size),
           "--backend", extra.get("backend", args.backend)]
    for key in ("actors", "shards", "cpus", "batch_rows", "template", "factory"):
        if key in extra and extra[key] is not None:
            cmd += [f"--{key.replace('_', '-')}", str(extra[key])]
    return cmd


# ---------------------------------------------------------------------------------------------- part a: H&M
def part_hm(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from textguide.bench.datasets.hm import load_hm_articles

    frame = load_hm_articles()
    if args.limit:
        frame = frame.iloc[: args.limit]
    catalog = work / "hm.parquet"
    frame[["id", "text", "category"]].rename(columns={"text": "title"}).to_parquet(catalog, index=False)
    runs = {}
    for name, extra in (("single process", {}),
                        ("ray, 1 actor x 2 CPUs", {"actors": 1, "cpus": 2, "shards": 1}),
                        ("ray, 2 actors x 1 CPU", {"actors": 2, "cpus": 2, "shards": 2})):
        kind = "single" if name.startswith("single") else "ray"
        cmd = _cmd(kind, catalog, work / f"guide-{kind}-{extra.get('actors', 0)}", args, template="{title}",
                   batch_rows=args.batch_rows, **extra)
        print(f"running {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        load = os.getloadavg()[0]
        runs[name] = run_child(cmd, args.timeout)
        runs[name]["load_average_1min_before_after"] = [load, os.getloadavg()[0]]
        runs[name]["items_per_s"] = runs[name]["items"] / runs[name]["seconds"]
        print(json.dumps(runs[name]), file=sys.stderr, flush=True)
    return {"catalog_rows": len(frame), "encoder": f"minilm (packaged), backend {args.backend}", "runs": runs}


# ---------------------------------------------------------------------------------------------- part b: synthetic
COLOURS = "black white navy red green beige olive grey pink yellow blue brown cream khaki teal burgundy".split()
MATERIALS = "linen wool cotton leather denim silk cashmere jersey canvas suede ceramic oak steel glass bamboo".split()
KINDS = ("shirt dress boot scarf mug lamp sofa tote sneaker vase jacket skirt sandal blanket candle chair rug "
         "backpack hoodie coat belt hat").split()
BRANDS = "Forge Verano Lumen Stride Northwind Pemberton Inox Aurora Kestrel Maple Solace Tundra".split()


WORDS = ("soft warm light classic slim relaxed tailored washable breathable durable handmade recycled organic "
         "lined quilted stretch waterproof padded woven knitted brushed printed striped plain fitted cropped long "
         "short wide narrow round square deep shallow heavy matte glossy textured smooth vintage modern everyday "
         "travel office garden kitchen outdoor indoor evening weekend summer winter spring autumn gift").split()


def synthetic_catalog(rows: int, path: Path, seed: int = 0, description_words: int = 0) -> None:
    """``rows`` generated products in a folder of 100k-row Parquet files; with ``description_words`` > 0 a
    ``description`` column of that many words (a catalog's bulk is usually its descriptions)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    for start in range(0, rows, 500_000):
        n = min(500_000, rows - start)
        c, m, k, b = (rng.integers(0, len(x), n) for x in (COLOURS, MATERIALS, KINDS, BRANDS))
        size = rng.integers(30, 50, n)
        model = rng.integers(0, 100_000, n)
        kinds = np.array(KINDS)[k]
        title = (pd.Series(np.array(BRANDS)[b]) + " " + np.array(COLOURS)[c] + " " + np.array(MATERIALS)[m] + " "
                 + kinds + " size " + size.astype(str) + " model " + model.astype(str))
        frame = pd.DataFrame({"id": [f"s{i:08d}" for i in range(start, start + n)], "title": title, "category": kinds})
        if description_words:
            words = np.array(WORDS)[rng.integers(0, len(WORDS), (n, description_words))]
            frame["description"] = [" ".join(w) for w in words]
        for j in range(0, n, 100_000):  # a folder of Parquet files, as a large catalog export would be
            frame.iloc[j:j + 100_000].to_parquet(path / f"part-{(start + j) // 100_000:05d}.parquet", index=False)


def part_synthetic(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import faiss

    from textguide.encoder import HashingEncoder
    from textguide.guide import Guide

    catalog = work / "synthetic"
    t0 = time.perf_counter()
    synthetic_catalog(args.rows, catalog)
    gen_s = time.perf_counter() - t0
    encoder = f"hashing:{args.dim}"
    out = work / "guide-synthetic"
    cmd = _cmd("ray", catalog, out, args, encoder=encoder, actors=args.actors, cpus=2, shards=args.shards,
               batch_rows=args.batch_rows)
    print(f"running: {' '.join(cmd)}", file=sys.stderr, flush=True)
    build = run_child(cmd, args.timeout)
    manifest = json.loads((out / "manifest.json").read_text())
    files = manifest["files"]
    index_bytes = sum(v["bytes"] for k, v in files.items() if k.endswith("index.faiss"))
    emb_bytes = sum(v["bytes"] for k, v in files.items() if k.endswith("embeddings.npy"))
    total_bytes = sum(v["bytes"] for v in files.values())
    n = manifest["counts"]["items"]

    import psutil

    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    enc = HashingEncoder(args.dim)
    guide = Guide.load(out, enc)
    load_s = time.perf_counter() - t0
    load_rss = psutil.Process().memory_info().rss - rss0
    rng = np.random.default_rng(1)
    frame = pd.read_parquet(catalog / "part-00000.parquet", columns=["title"])
    picks = rng.choice(len(frame), args.queries, replace=False)
    queries = [" ".join(t.split()[1:4]) for t in frame["title"].to_numpy()[picks]]  # colour material kind
    qv = enc.encode(queries)
    faiss.omp_set_num_threads(1)
    lat = []
    for text in queries:  # the full query path: encode, fan out over the shards, merge, metadata
        t = time.perf_counter()
        guide.search(text, k=10)
        lat.append((time.perf_counter() - t) * 1e3)
    lat_vec = []
    for v in qv:
        t = time.perf_counter()
        guide.index.search(v[None, :], 10)
        lat_vec.append((time.perf_counter() - t) * 1e3)
    got, _ = guide.index.search(qv, 10)
    sims = qv @ guide.index.embeddings.T  # exact search over all rows (none removed)
    exact = np.argsort(-sims, axis=1)[:, :10]
    kth = np.take_along_axis(sims, exact[:, 9:10], 1)
    ids = np.array(guide.index.ids)
    # recall@10 counting ties at the 10th score as hits (generated titles repeat, so many vectors coincide)
    recall = float(np.mean([np.mean([sims[i, guide.index.row_of[g]] >= kth[i, 0] - 1e-6 for g in got[i]])
                            for i in range(len(got))]))
    strict = float(np.mean([len(set(g) & set(ids[e])) / 10 for g, e in zip(got, exact)]))
    return {
        "rows": n, "generate_s": gen_s, "encoder": encoder + " (stands in for the model)",
        "build": build, "build_items_per_s": n / build["seconds"],
        "shards": len(manifest["index"]["shards"]), "factory": manifest["index"]["factory"],
        "index_bytes_per_item": index_bytes / n, "embedding_bytes_per_item": emb_bytes / n,
        "guide_bytes_per_item": total_bytes / n, "load_s": load_s, "load_rss_mb": round(load_rss / 2**20),
        "query_ms_p50": float(np.percentile(lat, 50)), "query_ms_p99": float(np.percentile(lat, 99)),
        "vector_query_ms_p50": float(np.percentile(lat_vec, 50)),
        "vector_query_ms_p99": float(np.percentile(lat_vec, 99)),
        "recall_at_10_ties_counted": recall, "recall_at_10_strict_ids": strict, "queries": args.queries,
    }


# ---------------------------------------------------------------------------------------------- part c: stream
def part_stream(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Out of core: ``build_index_streaming`` over a ``datasets`` folder of ``--rows`` products vs the in-memory build.

    Each build runs in a fresh child process; its peak resident memory is the kernel's VmHWM. The in-memory build
    gets the same factory as the streamed one, so the difference is the catalog held in memory, not the index."""
    import datasets

    from textguide.stream import stream_factory
    from textguide.index import IndexConfig

    runs: dict[str, Any] = {}
    sizes = sorted({max(args.rows // 10, 1000), args.rows})
    for rows in sizes:
        parquet = work / f"synthetic-{rows}"
        t0 = time.perf_counter()
        synthetic_catalog(rows, parquet, description_words=args.description_words)
        ds_dir = work / f"dataset-{rows}"
        files = sorted(str(f) for f in parquet.glob("*.parquet"))
        datasets.Dataset.from_parquet(files, cache_dir=str(work / "hf-cache")).save_to_disk(str(ds_dir))
        shutil.rmtree(parquet)
        shutil.rmtree(work / "hf-cache", ignore_errors=True)
        gen_s = time.perf_counter() - t0
        factory = args.factory or stream_factory(IndexConfig(), rows, args.dim)
        plans = [(f"stream, batch_rows {b:,}", "stream", b) for b in args.stream_batches]
        if rows == args.rows:
            plans.append(("in memory (build_index)", "single", None))
        for name, kind, batch_rows in plans:
            cmd = _cmd(kind, ds_dir, work / "guide-stream", args, encoder=f"hashing:{args.dim}", backend="torch",
                       batch_rows=batch_rows, factory=factory, template="{title}")  # descriptions: metadata
            print(f"running {rows:,} rows, {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            run = run_child(cmd, args.timeout)
            run.update(rows=rows, factory=factory, generate_s=gen_s, items_per_s=run["items"] / run["seconds"],
                       load_average_1min_before_after=[load, os.getloadavg()[0]],
                       dataset_bytes=sum(f.stat().st_size for f in ds_dir.glob("*.arrow")))
            runs[f"{rows:,} rows, {name}"] = run
            print(json.dumps(run), file=sys.stderr, flush=True)
            shutil.rmtree(work / "guide-stream", ignore_errors=True)
        shutil.rmtree(ds_dir)
    return {"encoder": f"hashing:{args.dim} (stands in for the model)", "description_words": args.description_words,
            "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["hm", "synthetic", "stream"])
    p.add_argument("--limit", type=int, default=None, help="H&M: first N articles (default all)")
    p.add_argument("--rows", type=int, default=2_000_000, help="synthetic: products")
    p.add_argument("--dim", type=int, default=64, help="synthetic: hashing encoder dimension")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus", type=float, default=2)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--batch-rows", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--backend", default="torch", help="hm: the encoder runtime (torch, onnx, openvino, ...)")
    p.add_argument("--factory", default=None, help="FAISS factory (default: what the build picks for the size)")
    p.add_argument("--description-words", type=int, default=0,
                   help="stream: add a description of N generated words to every product (default 0: titles only)")
    p.add_argument("--stream-batches", type=lambda v: [int(x) for x in v.split(",")], default=[10_000, 50_000],
                   help="stream: batch_rows values to run (comma-separated)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    # child-process mode
    p.add_argument("--worker", choices=["single", "ray", "stream"], help=argparse.SUPPRESS)
    p.add_argument("--catalog", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    p.add_argument("--encoder", default="", help=argparse.SUPPRESS)
    p.add_argument("--template", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        args.encoder = args.encoder or None
        worker(args)
        return
    if not args.part:
        p.error("--part is required")
    work = args.work or Path(tempfile.mkdtemp(prefix="tg-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        result = {"hm": part_hm, "synthetic": part_synthetic, "stream": part_stream}[args.part](args, work)
        result.update(part=args.part, command=" ".join(sys.argv), seconds_total=time.perf_counter() - t0,
                      load_average=os.getloadavg(), cpus=os.cpu_count())
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
