"""Load test of ``textguide serve`` on loopback, side by side with the Python API in-process.

Starts ``textguide serve`` (a subprocess: uvicorn, with httptools + uvloop when installed) on a scratch copy of
--guide, bound to 127.0.0.1 only, and measures with a small asyncio keep-alive HTTP/1.1 client (raw sockets,
request bytes prepared in advance, so the load generator itself needs little of the 2 CPU cores):

1. in-process: ``guide.similar`` / ``search`` / ``recommend`` one call at a time (the baseline);
2. HTTP, 1 client: the same calls one at a time; HTTP / in-process p50, and the server's CPU per request /
   the in-process CPU per call, are the HTTP overhead as ratios;
3. HTTP, N closed-loop clients (--clients, each sends its next request when the answer came) per endpoint:
   --seconds at the first N, --seconds-more at the others: throughput, p50, p99, errors (any non-200 answer,
   refused connection or timeout), and the CPU the server and the load generator used per request; with
   --paced RATE ..., also ``similar`` from the first N clients on a fixed schedule (open loop) at those rates;
4. the first N clients (a mix of the three endpoints) while a --onboard-product onboarding (Amazon Toys & Games
   titles, nothing cached: every title is embedded) runs through ``POST /guides/{name}/onboard`` as a background
   job. Every 10th request of each client is a probe: ``similar`` for one of the new ids. Before the swap it
   is answered 404 (expected, not an error); every probe sent after the job finished must be answered 200 and
   every answer must hold k hits. Zero failed requests is the target.

Every phase is bounded in time (--seconds, --seconds-more, --onboard-timeout) and only 127.0.0.1 is contacted.
The 1-minute load average is printed with every phase: the machine is shared, so read the numbers with it.

The H&M guide (105,542 articles) is built when --guide does not exist (--build-backend openvino by default, the
fastest validated encoder backend; queries are then encoded with it too), through an embedding cache in
--build-cache so a stopped build resumes. Run the build with ``nice -n 10`` on a shared machine.

Example (docs/benchmarks.md section 5 has our numbers; about 16 minutes after the build):
    nice -n 10 python scripts/bench_serve.py --guide ../hm-guide --clients 8 16 32 --seconds 60 --seconds-more 20 \\
        --paced 100 300 --json /tmp/bench_serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from textguide.guide import Guide  # noqa: E402

HOST = "127.0.0.1"  # never anything else
TOKEN = "bench-token"
OPS = ("similar", "search", "recommend")
K = 10


def build_hm_guide(out: Path, backend: str = "openvino", precision: str = "fp32", cache_dir: Path | None = None) -> None:
    """The full H&M catalog (105,542 articles) as a guide, embedded in chunks through the embedding cache
    (a stopped build resumes from it). ``backend`` is also what the served guide encodes queries with."""
    from textguide.bench.datasets.hm import load_hm_articles
    from textguide.encoder import EmbeddingCache, encode_texts, load_encoder
    from textguide.bench.recipes import items_catalog

    cat = items_catalog(load_hm_articles(), ("title", "category", "product_type_name", "colour", "section_name"))
    enc = load_encoder(None, precision=precision, backend=backend)
    cache = EmbeddingCache(cache_dir) if cache_dir is not None else EmbeddingCache()
    unique = list(dict.fromkeys(cat.texts))
    t0 = time.perf_counter()
    for s in range(0, len(unique), 4000):
        encode_texts(enc, unique[s:s + 4000], cache=cache)
        print(f"  embedded {min(s + 4000, len(unique))}/{len(unique)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    Guide.build(cat, enc, cache=cache, show_progress=False).save(out)
    cache.close()
    print(f"built {out} in {time.perf_counter() - t0:.0f} s", flush=True)


def pct(xs: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if len(xs) else float("nan")


def load1() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------ workload
class Workload:
    """Request bodies drawn from the guide: item ids, queries (colour + title), 3-item histories."""

    def __init__(self, guide: Guide, seed: int = 0, n: int = 2000) -> None:
        rng = random.Random(seed)
        meta = guide.index.metadata
        self.ids = rng.sample(guide.index.live_ids(), n)
        titles = meta["title"].astype(str).tolist()
        colours = meta["colour"].astype(str).tolist() if "colour" in meta else [""] * len(titles)
        rows = rng.sample(range(len(titles)), n)
        self.queries = [f"{colours[r]} {titles[r]}".strip().lower() for r in rows]
        self.histories = [rng.sample(self.ids, 3) for _ in range(n)]

    def body(self, op: str, i: int) -> dict[str, Any]:
        if op == "similar":
            return {"item_id": self.ids[i % len(self.ids)], "k": K}
        if op == "search":
            return {"query": self.queries[i % len(self.queries)], "k": K}
        return {"history": self.histories[i % len(self.histories)], "k": K}

    def call(self, guide: Guide, op: str, i: int) -> Any:
        b = self.body(op, i)
        if op == "similar":
            return guide.similar(b["item_id"], k=K)
        if op == "search":
            return guide.search(b["query"], k=K)
        return guide.recommend(b["history"], k=K)


def in_process(guide: Guide, work: Workload, op: str, seconds: float) -> dict[str, Any]:
    """One caller, one call at a time, for ``seconds``."""
    lat, i, t_start, cpu0 = [], 0, time.perf_counter(), self_cpu_s()
    while time.perf_counter() - t_start < seconds:
        t = time.perf_counter()
        work.call(guide, op, i)
        lat.append(time.perf_counter() - t)
        i += 1
    elapsed = time.perf_counter() - t_start
    return {"n": len(lat), "rps": len(lat) / elapsed, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "cpu_ms_per_call": 1000 * (self_cpu_s() - cpu0) / max(len(lat), 1), "load1": load1()}


# ------------------------------------------------------------------------------------------ the client
def http_request(path: str, body: bytes, content_type: str = "application/json", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length (uvicorn's JSON answers have one)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    low = head.lower()
    at = low.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError(f"response without Content-Length: {head[:200]!r}")
    n = int(low[at + 17: low.find(b"\r\n", at + 2)])
    return status, await reader.readexactly(n)


@dataclass
class LoadResult:
    """What N clients measured: latencies per op (seconds), errors, probes for new items."""

    lat: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: list[str] = field(default_factory=list)
    probes: list[tuple[float, int, int]] = field(default_factory=list)  # (time sent, status, hits)
    elapsed: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0


async def run_clients(port: int, requests: dict[str, list[bytes]], ops: tuple[str, ...], clients: int,
                      seconds: float | None, stop: threading.Event | None = None,
                      probes: list[bytes] | None = None, timeout: float = 30.0, rate: float | None = None) -> LoadResult:
    """``clients`` keep-alive connections in closed loop until ``seconds`` pass or ``stop`` is set.

    With ``rate`` (requests/s over all clients) each client sends on a fixed schedule instead (open loop), and
    a request's latency counts from the time it was due, so a server that falls behind is not flattered.

    With ``probes``, every 10th request of a client is the next probe (its time sent, status and hit count
    are recorded; a 404 is not an error).
    """
    res = LoadResult()
    t_start = time.perf_counter()
    end = t_start + seconds if seconds is not None else float("inf")

    async def client(c: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        i = c * 7919
        interval = clients / rate if rate else 0.0
        due = t_start + c * interval / clients
        try:
            while time.perf_counter() < end and not (stop is not None and stop.is_set()):
                if rate:
                    due += interval
                    wait = due - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                if probes is not None and i % 10 == 0:
                    sent = time.time()
                    writer.write(probes[(i // 10) % len(probes)])
                    status, body = await asyncio.wait_for(read_response(reader), timeout)
                    hits = len(json.loads(body)["ids"]) if status == 200 else 0
                    res.probes.append((sent, status, hits))
                    if status not in (200, 404):
                        res.errors.append(f"probe {status} {body[:120]!r}")
                op = ops[i % len(ops)]
                reqs = requests[op]
                t = due if rate else time.perf_counter()
                writer.write(reqs[i % len(reqs)])
                try:
                    status, body = await asyncio.wait_for(read_response(reader), timeout)
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
                    res.errors.append(f"{op} {type(e).__name__}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                    i += 1
                    continue
                if status == 200:
                    res.lat[op].append(time.perf_counter() - t)
                else:
                    res.errors.append(f"{op} {status} {body[:120]!r}")
                i += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(c) for c in range(clients)))
    res.elapsed = time.perf_counter() - t_start
    return res


def summarize(res: LoadResult, ops: tuple[str, ...], clients: int, load_before: float) -> dict[str, Any]:
    n = sum(len(res.lat[op]) for op in ops)
    everything = [x for op in ops for x in res.lat[op]]
    out: dict[str, Any] = {"clients": clients, "seconds": round(res.elapsed, 1), "n": n, "errors": len(res.errors),
                           "error_examples": res.errors[:5], "rps": n / res.elapsed,
                           "p50_ms": pct(everything, 50), "p99_ms": pct(everything, 99),
                           "server_cpu_ms_per_req": 1000 * res.server_cpu_s / max(n, 1),
                           "client_cpu_ms_per_req": 1000 * res.client_cpu_s / max(n, 1),
                           "load1_before": load_before, "load1_after": load1()}
    if len(ops) > 1:
        out["per_op"] = {op: {"n": len(res.lat[op]), "p50_ms": pct(res.lat[op], 50), "p99_ms": pct(res.lat[op], 99)}
                         for op in ops}
    return out


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_phase(port: int, server_pid: int, requests: dict[str, list[bytes]], ops: tuple[str, ...], clients: int,
               seconds: float | None, **kwargs: Any) -> LoadResult:
    """``run_clients`` in a fresh event loop, with the CPU both sides used."""
    s0, c0 = proc_cpu_s(server_pid), self_cpu_s()
    res = new_loop_run(run_clients(port, requests, ops, clients, seconds, **kwargs))
    res.server_cpu_s, res.client_cpu_s = proc_cpu_s(server_pid) - s0, self_cpu_s() - c0
    return res


def new_loop_run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# ------------------------------------------------------------------------------------------ the server
def start_server(guide_dir: Path, cache_dir: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TEXTGUIDE_TOKEN": TOKEN, "TEXTGUIDE_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "textguide.cli", "serve", str(guide_dir), "--host", HOST,
                             "--port", str(port), "--max-body-mb", "64"], env=env)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("textguide serve did not start")
        time.sleep(0.5)


def toys_csv(n: int) -> tuple[bytes, list[str]]:
    from textguide.bench.datasets.amazon_toys import load_toys

    items = load_toys().drop_duplicates("id").head(n)
    frame = items[["id", "title"]].copy()
    return frame.to_csv(index=False).encode(), frame["id"].tolist()


def onboarding_phase(port: int, server_pid: int, name: str, requests: dict[str, list[bytes]], clients: int,
                     n_products: int, timeout: float, after_swap: float) -> dict[str, Any]:
    """N clients (mixed) + probes for the new ids while ``n_products`` are onboarded; checks every answer."""
    body, new_ids = toys_csv(n_products)
    probes = [http_request(f"/guides/{name}/similar", json.dumps({"item_id": i, "k": K}).encode()) for i in new_ids]
    url = f"http://{HOST}:{port}"
    stop = threading.Event()
    job: dict[str, Any] = {}
    control_error: list[str] = []

    def control() -> None:
        try:
            time.sleep(2)  # the load is on before the upload
            r = httpx.post(f"{url}/guides/{name}/onboard", params={"category": "Toys & Games"}, content=body,
                           headers={"Content-Type": "text/csv", "Authorization": f"Bearer {TOKEN}"}, timeout=120)
            r.raise_for_status()
            job.update(r.json())
            t0 = time.time()
            while job["state"] not in ("done", "failed") and time.time() - t0 < timeout:
                time.sleep(0.5)
                job.update(httpx.get(f"{url}/jobs/{job['id']}", timeout=30).json())
            time.sleep(after_swap)  # the load stays on a while after the swap
        except Exception as e:  # noqa: BLE001 - reported in the results
            control_error.append(repr(e))
        finally:
            stop.set()

    load_before = load1()
    ctl = threading.Thread(target=control)
    ctl.start()
    res = load_phase(port, server_pid, requests, OPS, clients, None, stop=stop, probes=probes)
    ctl.join()
    swap = job.get("finished") or float("inf")
    before = [(s, h) for t, s, h in res.probes if t <= swap]
    after = [(s, h) for t, s, h in res.probes if t > swap]
    out = summarize(res, OPS, clients, load_before)
    out.update({
        "job": job, "control_error": control_error[:1],
        "probes_before_swap": len(before), "probes_before_swap_found": sum(s == 200 for s, _ in before),
        "probes_after_swap": len(after), "probes_after_swap_missing": sum(s != 200 or h != K for s, h in after),
    })
    return out


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guide", type=Path, default=ROOT.parent / "hm-guide",
                   help="guide directory (default ../hm-guide, outside the repository; the H&M guide is built there "
                        "when missing)")
    p.add_argument("--build-backend", default="openvino", help="encoder backend of a guide built here")
    p.add_argument("--build-cache", type=Path, default=None, help="embedding cache of the build (default: textguide's)")
    p.add_argument("--clients", type=int, nargs="+", default=[8, 16, 32], help="concurrent clients (1-64)")
    p.add_argument("--seconds", type=float, default=60, help="each endpoint's load phase at the first --clients")
    p.add_argument("--seconds-more", type=float, default=20, help="each endpoint's load phase at the other --clients")
    p.add_argument("--baseline-seconds", type=float, default=10, help="in-process and 1-client phases, per endpoint")
    p.add_argument("--paced", type=float, nargs="*", default=[],
                   help="also `similar` at these fixed rates (requests/s over the first --clients, open loop)")
    p.add_argument("--onboard", type=int, default=10_000, help="products onboarded during phase 4 (0: skip)")
    p.add_argument("--onboard-timeout", type=float, default=900)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if any(not 1 <= c <= 64 for c in args.clients):
        p.error("--clients must lie in 1..64")
    if not (args.guide / "manifest.json").is_file():
        print(f"building {args.guide} (H&M, {args.build_backend}) ...", flush=True)
        build_hm_guide(args.guide, backend=args.build_backend, cache_dir=args.build_cache)

    out: dict[str, Any] = {"guide": str(args.guide), "clients": args.clients, "seconds": args.seconds,
                           "seconds_more": args.seconds_more, "load1_start": load1(), "cpus": os.cpu_count(),
                           "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        import httptools  # noqa: F401
        import uvloop  # noqa: F401

        out["uvicorn"] = "httptools + uvloop"
    except ImportError:
        out["uvicorn"] = "h11 + asyncio (install the serve extra for httptools + uvloop)"
    guide = Guide.load(args.guide)
    work = Workload(guide)
    out["items"] = guide.index.count
    out["encoder"] = {k: guide.encoder_info.get(k) for k in ("name", "precision", "backend")}
    print(f"guide {args.guide}: {guide.index.count} items ({guide.index.factory}, {out['encoder']}); "
          f"uvicorn {out['uvicorn']}; load {load1()}", flush=True)
    for op in OPS:  # warm-up
        for i in range(20):
            work.call(guide, op, i)
    out["in_process"] = {op: in_process(guide, work, op, args.baseline_seconds) for op in OPS}
    print("in-process:", json.dumps(out["in_process"]), flush=True)
    del guide

    scratch = Path(tempfile.mkdtemp(prefix="tg-bench-serve-"))
    name = "hm-bench"
    shutil.copytree(args.guide, scratch / name)
    proc, port = start_server(scratch / name, scratch / "empty-cache")
    requests = {op: [http_request(f"/guides/{name}/{op}", json.dumps(work.body(op, i)).encode())
                     for i in range(len(work.ids))] for op in OPS}
    try:
        for op in OPS:  # warm-up (and a check that every endpoint answers)
            w = load_phase(port, proc.pid, requests, (op,), 2, 2)
            if w.errors:
                raise RuntimeError(f"warm-up of {op} failed: {w.errors[:3]}")
        out["http_1"] = {}
        for op in OPS:
            lb = load1()
            out["http_1"][op] = summarize(load_phase(port, proc.pid, requests, (op,), 1, args.baseline_seconds),
                                          (op,), 1, lb)
        print("http, 1 client:", json.dumps(out["http_1"]), flush=True)
        out["http_n"] = {}
        for j, c in enumerate(args.clients):
            secs = args.seconds if j == 0 else args.seconds_more
            out["http_n"][c] = {}
            for op in OPS:
                lb = load1()
                out["http_n"][c][op] = summarize(load_phase(port, proc.pid, requests, (op,), c, secs), (op,), c, lb)
            print(f"http, {c} clients:", json.dumps(out["http_n"][c]), flush=True)
        if args.paced:
            c = args.clients[0]
            out["paced"] = {}
            for rate in args.paced:
                lb = load1()
                out["paced"][rate] = summarize(load_phase(port, proc.pid, requests, ("similar",), c, args.seconds_more,
                                                          rate=rate), ("similar",), c, lb)
            print("paced similar:", json.dumps(out["paced"]), flush=True)
        if args.onboard:
            out["onboarding"] = onboarding_phase(port, proc.pid, name, requests, args.clients[0], args.onboard,
                                                 args.onboard_timeout, after_swap=5)
            print("onboarding:", json.dumps(out["onboarding"], default=str), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    out["load1_end"] = load1()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    print(table(out))


def table(out: dict[str, Any]) -> str:
    """The markdown tables of docs/benchmarks.md section 5."""
    f = "{:.2f} / {:.2f}".format
    lines = [f"guide: {out['items']} items, encoder {out['encoder']}; uvicorn {out['uvicorn']}; "
             f"{out['cpus']} CPUs; 1-min load average {out['load1_start']} at the start, {out['load1_end']} at the end",
             "",
             "| endpoint | in-process p50 / p99 ms (calls/s) | HTTP 1 client p50 / p99 ms (req/s) "
             "| HTTP / in-process p50 | CPU ms per call: in-process, server (HTTP / in-process) |",
             "|---|---|---|---|---|"]
    for op in OPS:
        a, b = out["in_process"][op], out["http_1"][op]
        cpu = a.get("cpu_ms_per_call")
        cpu_cell = (f"{cpu:.2f}, {b['server_cpu_ms_per_req']:.2f} ({b['server_cpu_ms_per_req'] / cpu:.2f}x)"
                    if cpu else f"-, {b['server_cpu_ms_per_req']:.2f}")
        lines.append(f"| {op} | {f(a['p50_ms'], a['p99_ms'])} ({a['rps']:.0f}) | {f(b['p50_ms'], b['p99_ms'])} "
                     f"({b['rps']:.0f}) | {b['p50_ms'] / a['p50_ms']:.2f}x (+{b['p50_ms'] - a['p50_ms']:.2f} ms) | "
                     f"{cpu_cell} |")
    lines += ["", "| clients | endpoint | seconds | requests | errors | req/s | p50 / p99 ms "
                  "| server / client CPU ms per request | load average before, after |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c, per in out["http_n"].items():
        for op in OPS:
            r = per[op]
            lines.append(f"| {c} | {op} | {r['seconds']} | {r['n']} | {r['errors']} | {r['rps']:.0f} | "
                         f"{f(r['p50_ms'], r['p99_ms'])} | {r['server_cpu_ms_per_req']:.2f} / "
                         f"{r['client_cpu_ms_per_req']:.2f} | {r['load1_before']}, {r['load1_after']} |")
    if out.get("paced"):
        c = out["clients"][0]
        lines += ["", f"`similar`, {c} clients on a fixed schedule (open loop; latency from the time each request "
                      f"was due):", "", "| offered req/s | served req/s | errors | p50 / p99 ms | load average |",
                  "|---|---|---|---|---|"]
        for rate, r in out["paced"].items():
            lines.append(f"| {float(rate):.0f} | {r['rps']:.0f} | {r['errors']} | {f(r['p50_ms'], r['p99_ms'])} | "
                         f"{r['load1_before']}, {r['load1_after']} |")
    o = out.get("onboarding")
    if o:
        job = o["job"]
        took = (job.get("finished") or 0) - (job.get("started") or 0)
        lines += ["", f"During onboarding: job {job.get('state')}, {job.get('counts')}, {took:.0f} s from start to "
                      f"swap; {o['clients']} clients, the three endpoints in turn, {o['seconds']} s in all:",
                  "", "| endpoint | requests | p50 / p99 ms |", "|---|---|---|"]
        for op in OPS:
            r = o["per_op"][op]
            lines.append(f"| {op} | {r['n']} | {f(r['p50_ms'], r['p99_ms'])} |")
        lines += ["", f"all: {o['n']} requests, {o['rps']:.0f} req/s, errors {o['errors']} "
                      f"{o['error_examples'] or ''}; probes for new ids: {o['probes_before_swap']} before the swap "
                      f"({o['probes_before_swap_found']} found), {o['probes_after_swap']} after it, "
                      f"{o['probes_after_swap_missing']} missing or short; load average {o['load1_before']}, "
                      f"{o['load1_after']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
