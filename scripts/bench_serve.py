"""Load test of ``textguide serve`` on loopback, side by side with the Python API in-process.

Starts ``textguide serve`` (a subprocess, uvicorn) on a scratch copy of --guide bound to 127.0.0.1 only, then:

1. in-process: ``guide.similar`` / ``search`` / ``recommend`` one call at a time for --seconds (the baseline);
2. HTTP, 1 client: the same calls through httpx, one at a time (the HTTP overhead = p50 ratio to 1.);
3. HTTP, N clients (--clients, 8-32) for --seconds per endpoint: throughput, p50, p99, errors;
4. the same N clients (a mix of the three) while a 10,000-product onboarding (Amazon Toys titles, embedding
   cache empty) runs as a background job; a probe asks for a new item in every 10th request, and every probe
   sent after the job's swap must find it. Zero failed requests is the target.

Every phase is bounded (--seconds, --onboard-timeout) and only 127.0.0.1 is contacted.

Example (docs/benchmarks.md has our numbers):
    PYTHONUNBUFFERED=1 python scripts/bench_serve.py --guide indexes/hm --clients 8 --seconds 20 --json /tmp/serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from textguide.guide import Guide  # noqa: E402

HOST = "127.0.0.1"  # never anything else
TOKEN = "bench-token"


def build_hm_guide(out: Path, precision: str = "bf16") -> None:
    """The full H&M catalog (105,542 articles) as a guide, embedded in chunks through the embedding cache."""
    from textguide.datasets.hm import load_hm_articles
    from textguide.encoder import EmbeddingCache, encode_texts, load_encoder
    from textguide.recipes import items_catalog

    cat = items_catalog(load_hm_articles(), ("title", "category", "product_type_name", "colour", "section_name"))
    enc = load_encoder(None, precision=precision)
    cache = EmbeddingCache()
    unique = list(dict.fromkeys(cat.texts))
    for s in range(0, len(unique), 4000):  # the cache keeps the progress of a stopped build
        encode_texts(enc, unique[s:s + 4000], cache=cache)
        print(f"  embedded {min(s + 4000, len(unique))}/{len(unique)}", flush=True)
    Guide.build(cat, enc, cache=cache, show_progress=False).save(out)
    cache.close()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


class Workload:
    """Request bodies drawn from the guide: item ids, queries (titles + colour), 3-item histories."""

    def __init__(self, guide: Guide, seed: int = 0) -> None:
        rng = random.Random(seed)
        ids = guide.index.live_ids()
        meta = guide.index.metadata
        self.ids = rng.sample(ids, 2000)
        titles = meta["title"].astype(str).tolist()
        colours = meta["colour"].astype(str).tolist() if "colour" in meta else [""] * len(titles)
        rows = rng.sample(range(len(titles)), 2000)
        self.queries = [f"{colours[r]} {titles[r]}".strip().lower() for r in rows]
        self.histories = [rng.sample(self.ids, 3) for _ in range(2000)]
        self.rng = rng

    def body(self, op: str, i: int) -> dict[str, Any]:
        if op == "similar":
            return {"item_id": self.ids[i % len(self.ids)], "k": 10}
        if op == "search":
            return {"query": self.queries[i % len(self.queries)], "k": 10}
        return {"history": self.histories[i % len(self.histories)], "k": 10}

    def call(self, guide: Guide, op: str, i: int):
        b = self.body(op, i)
        if op == "similar":
            return guide.similar(b["item_id"], k=10)
        if op == "search":
            return guide.search(b["query"], k=10)
        return guide.recommend(b["history"], k=10)


def in_process(guide: Guide, work: Workload, op: str, seconds: float) -> dict[str, Any]:
    lat, i, end = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        work.call(guide, op, i)
        lat.append(time.perf_counter() - t)
        i += 1
    return {"n": len(lat), "rps": len(lat) / seconds, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


def http_load(url: str, name: str, work: Workload, ops: list[str], clients: int, seconds: float | None,
              stop: threading.Event | None = None, probe: Callable[[httpx.Client, int], None] | None = None) -> dict:
    """``clients`` threads, each with its own keep-alive connection, until ``seconds`` pass or ``stop`` is set."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = stop or threading.Event()
    t_start = time.perf_counter()

    def client(c: int) -> None:
        mine, bad = [], []
        with httpx.Client(base_url=url, timeout=30) as http:
            i = c * 100_000
            while not stop.is_set() and (seconds is None or time.perf_counter() - t_start < seconds):
                if probe is not None and i % 10 == 0:
                    probe(http, i)
                op = ops[i % len(ops)]
                t = time.perf_counter()
                try:
                    r = http.post(f"/guides/{name}/{op}", json=work.body(op, i))
                    ok = r.status_code == 200
                    if not ok:
                        bad.append(f"{op} {r.status_code} {r.text[:120]}")
                except httpx.HTTPError as e:
                    ok = False
                    bad.append(f"{op} {type(e).__name__}")
                if ok:
                    mine.append(time.perf_counter() - t)
                i += 1
        with lock:
            lat.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    return {"clients": clients, "seconds": round(elapsed, 1), "n": len(lat), "errors": len(errors),
            "error_examples": errors[:5], "rps": len(lat) / elapsed, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


def start_server(guide_dir: Path, cache_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TEXTGUIDE_TOKEN": TOKEN, "TEXTGUIDE_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "textguide.cli", "serve", str(guide_dir), "--host", HOST,
                             "--port", str(port), "--max-body-mb", "64"], env=env)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("textguide serve did not start")
        time.sleep(0.5)


def toys_csv(n: int) -> tuple[bytes, list[str]]:
    from textguide.datasets.amazon_toys import load_toys

    items = load_toys().drop_duplicates("id").head(n)
    frame = items[["id", "title"]].copy()
    return frame.to_csv(index=False).encode(), frame["id"].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guide", type=Path, default=ROOT / "indexes" / "hm",
                   help="guide directory (default indexes/hm; built from ../shared/data/hm in bf16 when missing)")
    p.add_argument("--clients", type=int, nargs="+", default=[8], help="concurrent clients (8-32)")
    p.add_argument("--seconds", type=float, default=20, help="duration of each load phase")
    p.add_argument("--onboard", type=int, default=10_000, help="products onboarded during phase 4 (0: skip)")
    p.add_argument("--onboard-timeout", type=float, default=900)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the in-process baseline")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if any(not 1 <= c <= 32 for c in args.clients):
        p.error("--clients must lie in 1..32")
    import torch

    torch.set_num_threads(args.threads)
    if not (args.guide / "manifest.json").is_file():
        print(f"building {args.guide} (H&M, bf16) ...", flush=True)
        build_hm_guide(args.guide)

    out: dict[str, Any] = {"guide": str(args.guide), "clients": args.clients, "seconds": args.seconds,
                           "load_before": os.getloadavg(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    ops = ["similar", "search", "recommend"]
    guide = Guide.load(args.guide)
    work = Workload(guide)
    out["items"] = guide.index.count
    print(f"guide {args.guide}: {guide.index.count} items ({guide.index.factory}, {guide.encoder_info['precision']})",
          flush=True)
    for op in ops:  # warm-up
        for i in range(20):
            work.call(guide, op, i)
    out["in_process"] = {op: in_process(guide, work, op, args.seconds / 2) for op in ops}
    print("in-process:", json.dumps(out["in_process"]), flush=True)
    del guide

    scratch = Path(tempfile.mkdtemp(prefix="tg-bench-serve-"))
    name = "hm-bench"
    shutil.copytree(args.guide, scratch / name)
    proc, url = start_server(scratch / name, scratch / "empty-cache")
    try:
        for op in ops:  # warm-up
            http_load(url, name, work, [op], 1, 2)
        out["http_1"] = {op: http_load(url, name, work, [op], 1, args.seconds / 2) for op in ops}
        print("http, 1 client:", json.dumps(out["http_1"]), flush=True)
        out["http_n"] = {}
        for c in args.clients:
            out["http_n"][c] = {op: http_load(url, name, work, [op], c, args.seconds) for op in ops}
            print(f"http, {c} clients:", json.dumps(out["http_n"][c]), flush=True)

        if args.onboard:
            body, new_ids = toys_csv(args.onboard)
            probes: list[tuple[float, int]] = []  # (time sent, status) of requests for new items
            plock = threading.Lock()

            def probe(http: httpx.Client, i: int) -> None:
                t = time.time()
                r = http.post(f"/guides/{name}/similar", json={"item_id": new_ids[i % len(new_ids)], "k": 10})
                with plock:
                    probes.append((t, r.status_code))

            stop = threading.Event()
            c = args.clients[0]
            result: dict[str, Any] = {}
            loader = threading.Thread(target=lambda: result.update(
                http_load(url, name, work, ops, c, None, stop=stop, probe=probe)))
            loader.start()
            time.sleep(2)
            t0 = time.time()
            r = httpx.post(f"{url}/guides/{name}/onboard", params={"category": "Toys & Games"}, content=body,
                           headers={"Content-Type": "text/csv", "Authorization": f"Bearer {TOKEN}"}, timeout=120)
            r.raise_for_status()
            job_id = r.json()["id"]
            while True:
                job = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
                if job["state"] in ("done", "failed") or time.time() - t0 > args.onboard_timeout:
                    break
                time.sleep(0.5)
            time.sleep(3)  # keep the load on a little after the swap
            stop.set()
            loader.join()
            swap = job.get("finished") or float("inf")
            after = [s for t, s in probes if t > swap]
            before = [s for t, s in probes if t <= swap]
            out["onboarding"] = {
                "job": job, "clients": c, "load": result, "wall_s": round(time.time() - t0, 1),
                "probes_before_swap": len(before), "probes_before_swap_found": sum(s == 200 for s in before),
                "probes_after_swap": len(after), "probes_after_swap_missing": sum(s != 200 for s in after),
            }
            print("onboarding:", json.dumps(out["onboarding"], default=str), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    print_table(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


def print_table(out: dict[str, Any]) -> None:
    print("\n| endpoint | in-process p50 / p99 ms | HTTP 1 client p50 / p99 ms | HTTP / in-process (p50) | "
          + " | ".join(f"HTTP {c} clients req/s, p50 / p99 ms, errors" for c in out["http_n"]) + " |")
    print("|---|---|---|---|" + "---|" * len(out["http_n"]))
    for op in ("similar", "search", "recommend"):
        a, b = out["in_process"][op], out["http_1"][op]
        cells = [f"{r[op]['rps']:.0f}, {r[op]['p50_ms']:.2f} / {r[op]['p99_ms']:.2f}, {r[op]['errors']}"
                 for r in out["http_n"].values()]
        print(f"| {op} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} | {b['p50_ms']:.2f} / {b['p99_ms']:.2f} | "
              f"{b['p50_ms'] / a['p50_ms']:.2f}x | " + " | ".join(cells) + " |")
    o = out.get("onboarding")
    if o:
        L = o["load"]
        print(f"\nduring onboarding ({o['job']['state']}, {o['job']['counts']}): {o['clients']} clients, mixed: "
              f"{L['rps']:.0f} req/s, p50 {L['p50_ms']:.2f} ms, p99 {L['p99_ms']:.2f} ms, errors {L['errors']}; "
              f"probes for new items after the swap: {o['probes_after_swap']}, missing {o['probes_after_swap_missing']}")


if __name__ == "__main__":
    main()
