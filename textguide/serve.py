"""``textguide serve``: the retrieval API over HTTP (FastAPI + uvicorn) and a page to try a guide.

One process serves several guide directories by name (the directory's name). Reads (search, similar,
recommend, complete_outfit, rank_coupons) answer from the guide object current when the request started;
writes (onboard, remove) need a bearer token and work on a copy of the guide that replaces the current one
only once it is safely on disk, so readers see the old state or the new one, never a mix. Onboarding runs as a
background job at low CPU priority (``GET /jobs/{id}``). A timer picks up changes another process made to a
served directory (``Guide.refresh``).

Needs the ``serve`` extra: ``pip install -e ".[serve]"``.

Example:
    >>> app = create_app(["indexes/sample"], token="s3cret")          # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hmac
import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import numpy as np

from .catalog import ColumnMap, load_catalog
from .encoder import EmbeddingCache, TextEncoder, load_encoder
from .guide import Guide, Hits

try:
    from fastapi import Depends, FastAPI, HTTPException, Query, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, ConfigDict, Field, field_validator
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"textguide serve needs FastAPI and uvicorn ({e.name} is missing); install them with "
        f"`pip install -e \".[serve]\"`"
    ) from e

logger = logging.getLogger("textguide")

#: Content types accepted by ``POST /guides/{name}/onboard`` -> the file suffix the catalog reader expects.
CATALOG_TYPES = {
    "text/csv": ".csv",
    "text/tab-separated-values": ".tsv",
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
    "application/json": ".json",
    "application/vnd.apache.parquet": ".parquet",
    "application/x-parquet": ".parquet",
}
STATIC = Path(str(resources.files("textguide") / "static"))


@dataclass
class ServeConfig:
    """Limits and timings of the service."""

    max_body_bytes: int = 32 * 2**20  #: larger request bodies get 413 (a catalog upload counts)
    max_k: int = 200  #: ``k`` must lie in 1..max_k (422 otherwise)
    refresh_seconds: float = 1.0  #: how often served directories are checked for other writers' changes (0: never)
    niceness: int = 19  #: CPU priority of onboarding's embedding thread (19 = lowest)
    use_cache: bool = True  #: onboarding goes through the embedding cache (``$TEXTGUIDE_CACHE``)
    max_jobs: int = 100  #: finished jobs remembered for ``GET /jobs/{id}``


# ------------------------------------------------------------------------------------------ request models
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _non_blank(v: str, what: str) -> str:
    if not v.strip():
        raise ValueError(f"{what} must not be empty or only spaces")
    return v


class SearchRequest(_Strict):
    query: str = Field(min_length=1, max_length=2000, description="free text")
    k: int = Field(10, description="number of results (1..max_k)")
    category: Optional[str] = None

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        return _non_blank(v, "query")


class SimilarRequest(_Strict):
    item_id: str = Field(min_length=1, max_length=512)
    k: int = 10
    category: Optional[str] = None


Method = Literal["auto", "adapter", "text"]
OnUnknown = Literal["error", "skip"]


class RecommendRequest(_Strict):
    history: list[str] = Field(min_length=1, max_length=500, description="item ids, oldest first")
    k: int = 10
    category: Optional[str] = None
    exclude_history: bool = True
    on_unknown: OnUnknown = "error"
    method: Method = "auto"


class OutfitRequest(_Strict):
    items: list[str] = Field(min_length=1, max_length=100, description="the partial outfit's item ids")
    k: int = 10
    slot: Optional[str] = Field(None, description="wanted slot or category, e.g. 'shoe' or 'Shoes'")
    candidates: Optional[list[str]] = Field(None, min_length=1, max_length=10_000)
    on_unknown: OnUnknown = "error"
    method: Method = "auto"


class CouponRequest(_Strict):
    history: list[str] = Field(default_factory=list, max_length=500)
    coupons: Optional[Union[list[str], dict[str, list[str]]]] = Field(
        None, description="coupon ids registered in the guide (default: all), or coupon id -> product ids")
    profile: Optional[dict[str, Optional[Union[str, int, float]]]] = Field(None, description="household fields")
    on_unknown: OnUnknown = "error"
    method: Method = "auto"


class RemoveRequest(_Strict):
    ids: list[str] = Field(min_length=1, max_length=100_000)


# ------------------------------------------------------------------------------------------ response models
class HitsResponse(BaseModel):
    guide: str
    method: str = Field(description="'adapter' or 'text' (the text-similarity fallback)")
    ids: list[str]
    scores: list[float]
    items: list[dict[str, Any]] = Field(description="each result's fields (title, category, ...)")
    skipped: list[str] = Field(default_factory=list, description="unknown ids dropped with on_unknown='skip'")


class GuideSummary(BaseModel):
    name: str
    items: int
    encoder: str
    tasks: list[str]
    coupons: int


class JobResponse(BaseModel):
    id: str
    guide: str
    kind: str
    state: Literal["queued", "running", "done", "failed"]
    submitted: float
    started: Optional[float] = None
    finished: Optional[float] = None
    counts: dict[str, Any] = Field(default_factory=dict, description="added, replaced, unchanged, items, seconds")
    error: Optional[str] = None


class RemoveResponse(BaseModel):
    guide: str
    removed: int
    items: int


# ------------------------------------------------------------------------------------------ state
class GuideSlot:
    """One served guide: the current :class:`Guide` object, replaced (never changed) by writes and refreshes."""

    def __init__(self, name: str, guide: Guide) -> None:
        self.name = name
        self.guide = _ready(guide)
        self.lock = threading.Lock()  # serialises replacing ``guide``; readers never take it

    def files(self) -> Any:
        return self.guide.manifest.get("files")

    def refresh(self, blocking: bool = True) -> bool:
        """Load the directory again if another writer changed it; True if the served guide was replaced."""
        if not self.lock.acquire(blocking=blocking):
            return False  # a write of this process is replacing it right now
        try:
            return self._refresh_locked()
        finally:
            self.lock.release()

    def _refresh_locked(self) -> bool:
        fresh = copy.copy(self.guide)  # Guide.refresh updates in place: do it on a copy readers do not hold
        if fresh.refresh():
            self.guide = _ready(fresh)
            logger.info("guide %r: picked up a change on disk (%d items)", self.name, fresh.index.count)
            return True
        return False

    def write(self, change: Callable[[Guide], Any], attempts: int = 2) -> Any:
        """Apply ``change`` to a copy of the guide (it saves atomically), then serve the copy."""
        with self.lock:
            for attempt in range(attempts):
                self._refresh_locked()
                staged = copy.copy(self.guide)
                try:
                    out = change(staged)
                except ValueError:
                    # another process wrote the directory between our refresh and our write: once more
                    if attempt + 1 < attempts and _disk_files(staged) != staged.manifest.get("files"):
                        continue
                    raise
                self.guide = _ready(staged)
                return out

    def adopt(self, staged: Guide, base_files: Any) -> None:
        """Serve ``staged`` (written by a job from the state ``base_files``) unless a newer write came in between."""
        with self.lock:
            if self.files() in (base_files, staged.manifest.get("files")):
                self.guide = staged
            else:
                self._refresh_locked()


def _ready(guide: Guide) -> Guide:
    """``guide`` with the lookup tables its item records need built now, not by the first read after a swap."""
    guide.index.warm()
    return guide


def _disk_files(guide: Guide) -> Any:
    try:
        return json.loads((guide.path / "manifest.json").read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, TypeError):
        return None


@dataclass
class Job:
    id: str
    guide: str
    kind: str
    submitted: float = field(default_factory=time.time)
    state: str = "queued"
    started: float | None = None
    finished: float | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Service:
    """The guides, the write token, the background jobs and the refresh timer of one server."""

    def __init__(self, slots: dict[str, GuideSlot], token: str | None, config: ServeConfig) -> None:
        self.slots = slots
        self.token = token
        self.config = config
        self.jobs: dict[str, Job] = {}
        self._job_ids = itertools.count(1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textguide-job")
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> None:
        if self.config.refresh_seconds > 0:
            self._timer = threading.Thread(target=self._refresh_loop, name="textguide-refresh", daemon=True)
            self._timer.start()

    def stop(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.config.refresh_seconds):
            for slot in self.slots.values():
                try:
                    slot.refresh(blocking=False)
                except Exception as e:  # noqa: BLE001 - a bad directory must not stop the timer; keep serving
                    logger.warning("guide %r: cannot refresh from disk (%s); serving the last good state", slot.name, e)

    # -- lookups
    def slot(self, name: str) -> GuideSlot:
        if name not in self.slots:
            raise HTTPException(404, f"unknown guide {name!r}; served guides: {sorted(self.slots)}")
        return self.slots[name]

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.config.max_k:
            raise HTTPException(422, f"k must be between 1 and {self.config.max_k}, got {k}")
        return k

    # -- jobs
    def submit(self, slot: GuideSlot, kind: str, work: Callable[[Guide], dict[str, Any]]) -> Job:
        job = Job(id=f"job-{next(self._job_ids)}", guide=slot.name, kind=kind)
        self.jobs[job.id] = job
        done = [j for j in self.jobs.values() if j.state in ("done", "failed")]
        for old in done[: max(0, len(done) - self.config.max_jobs)]:
            self.jobs.pop(old.id, None)
        self._executor.submit(self._run, job, slot, work)
        return job

    def _run(self, job: Job, slot: GuideSlot, work: Callable[[Guide], dict[str, Any]]) -> None:
        job.state, job.started = "running", time.time()
        try:
            for attempt in range(2):
                slot.refresh()
                base = slot.guide
                staged = copy.copy(base)
                try:
                    job.counts = work(staged)  # embeds without holding the slot's lock: removes stay quick
                except ValueError:
                    if attempt == 0 and _disk_files(staged) != staged.manifest.get("files"):
                        continue  # another writer came in between: again on its state (the cache keeps vectors)
                    raise
                slot.adopt(_ready(staged), base.manifest.get("files"))
                break
            job.state = "done"
        except Exception as e:  # noqa: BLE001 - reported through GET /jobs/{id}
            job.error = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            job.state = "failed"
            logger.warning("%s (%s on %r) failed: %s", job.id, job.kind, job.guide, job.error)
        finally:
            job.finished = time.time()


def _hits_fields(name: str, hits: Hits) -> dict[str, Any]:
    """The fields of a :class:`HitsResponse` for ``hits`` (one mapping for the routes and the fast path)."""
    return {"guide": name, "method": hits.method, "ids": list(hits.ids),
            "scores": np.asarray(hits.scores, dtype=np.float64).tolist(), "items": hits.items,
            "skipped": list(hits.skipped)}


def _hits_response(name: str, hits: Hits) -> HitsResponse:
    return HitsResponse(**_hits_fields(name, hits))


def _call(fn: Callable[[], Any]) -> Any:
    """Run a guide call; its documented errors become 4xx answers (KeyError: 404, ValueError: 422)."""
    try:
        return fn()
    except KeyError as e:
        raise HTTPException(404, e.args[0] if e.args else str(e)) from None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None


# ------------------------------------------------------------------------------------------ body guard
class BodyGuard:
    """ASGI middleware: 415 for a content type an endpoint does not take, 413 for a body over the limit.

    The body is read (up to the limit) before the endpoint runs, so an oversize upload is refused without
    touching any guide.
    """

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if path.startswith("/guides/"):
            allowed = sorted(CATALOG_TYPES) if path.endswith("/onboard") else ["application/json"]
            if ctype not in allowed:
                await _send_error(send, 415, f"unsupported content type {ctype or '(none)'!r} for POST {path}; "
                                             f"send one of {allowed}")
                return
        limit = self.max_body_bytes
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            await _send_error(send, 413, f"request body of {declared} bytes is over the limit of {limit} bytes "
                                         f"(--max-body-mb); split the upload")
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                await _send_error(send, 413, f"request body over the limit of {limit} bytes (--max-body-mb); "
                                             f"split the upload")
                return
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Callable) -> Callable:
    """An ASGI ``receive`` that first gives the body already read, then defers to ``receive``."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class FastReads:
    """The hot read endpoints (search, similar, recommend) answered ahead of FastAPI's whole middleware stack.

    Only a request with a JSON body under ``FAST_MAX_BODY`` that validates against the endpoint's own model,
    names a served guide, has a valid ``k`` and gets an answer from the guide is answered here, with the bytes
    the FastAPI route would send (the same response model and serialiser, without validating our own output
    again); anything else is handed on, its body replayed, to the app, which answers exactly as before (the
    4xx answers all come from there). The routes stay the documented API (and the OpenAPI page).
    """

    PATH = re.compile(r"/guides/([^/]+)/(search|similar|recommend)")
    FAST_MAX_BODY = 64 * 1024  #: larger bodies (long histories) take the ordinary path

    def __init__(self, service: "Service") -> None:
        self.service = service
        self.answered = 0  #: requests answered here (tests check the shortcut is taken)
        self._calls: dict[str, tuple[type[BaseModel], Callable[[Guide, Any, int], Hits], bool]] = {
            "search": (SearchRequest, lambda g, r, k: g.search(r.query, k=k, category=r.category), True),
            "similar": (SimilarRequest, lambda g, r, k: g.similar(r.item_id, k=k, category=r.category), False),
            "recommend": (RecommendRequest, lambda g, r, k: g.recommend(
                r.history, k=k, category=r.category, exclude_history=r.exclude_history, on_unknown=r.on_unknown,
                method=r.method), False),
        }
        self._serialize = HitsResponse.__pydantic_serializer__.to_json
        self._limit = min(self.FAST_MAX_BODY, service.config.max_body_bytes)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> Optional[Callable]:
        """Answer the request and return None, or return the ``receive`` the app must be called with."""
        match = self.PATH.fullmatch(scope["path"])
        if match is None:
            return receive
        length = ctype = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
            elif key == b"content-type":
                ctype = value
        if ctype != b"application/json" or length is None or not length.isdigit() or int(length) > self._limit:
            return receive  # not read: BodyGuard answers 415 / 413 as usual
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client went away
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        name, op = match.groups()
        model, call, threaded = self._calls[op]
        slot = self.service.slots.get(name)
        try:
            req = model.model_validate_json(body)
        except ValueError:  # pydantic's ValidationError: FastAPI answers it in its own format
            return _replay(body, receive)
        k = getattr(req, "k", 0)
        if slot is None or not 1 <= k <= self.service.config.max_k:
            return _replay(body, receive)
        g = slot.guide
        try:
            if threaded:  # it encodes text: off the event loop
                hits = await run_in_threadpool(call, g, req, k)
            else:
                hits = call(g, req, k)
            payload = self._serialize(HitsResponse.model_construct(**_hits_fields(name, hits)))
        except Exception:  # noqa: BLE001 - the route runs it again and answers the error as it always does
            return _replay(body, receive)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload})
        self.answered += 1
        return None


class ServeApp(FastAPI):
    """FastAPI with :class:`FastReads` in front of its middleware stack (``fast = None`` turns it off)."""

    fast: Optional[FastReads] = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.fast is not None and scope["type"] == "http" and scope["method"] == "POST":
            receive = await self.fast(scope, receive, send)
            if receive is None:
                return
        await super().__call__(scope, receive, send)


async def _send_error(send: Callable, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


# ------------------------------------------------------------------------------------------ the app
def load_guides(guide_dirs: Sequence[str | os.PathLike[str]], encoder: TextEncoder | None = None) -> dict[str, GuideSlot]:
    """Load each directory (named by its last path part); guides built with the same encoder (name, precision,
    backend) share one."""
    slots: dict[str, GuideSlot] = {}
    encoders: dict[tuple[str, str, str], TextEncoder] = {}
    for d in guide_dirs:
        path = Path(d)
        name = path.resolve().name
        if name in slots:
            raise ValueError(f"two guide directories are both named {name!r}; serve directories with distinct names")
        enc = encoder
        if enc is None:  # loaded now (not on the first query), once per encoder
            try:
                spec = json.loads((path / "manifest.json").read_text(encoding="utf-8")).get("encoder") or {}
            except (OSError, ValueError):
                spec = {}  # Guide.load below says what is wrong with the directory
            if spec.get("name"):
                key = (str(spec["name"]), str(spec.get("precision", "fp32")), str(spec.get("backend", "torch")))
                if key not in encoders:
                    encoders[key] = load_encoder(key[0], precision=key[1], backend=key[2])  # type: ignore[arg-type]
                enc = encoders[key]
        slots[name] = GuideSlot(name, Guide.load(path, enc))
    return slots


def create_app(
    guide_dirs: Sequence[str | os.PathLike[str]],
    token: str | None = None,
    *,
    config: ServeConfig | None = None,
    encoder: TextEncoder | None = None,
) -> FastAPI:
    """The FastAPI app serving ``guide_dirs``; writes need ``Authorization: Bearer <token>`` (``None``: disabled).

    ``encoder`` overrides every guide's own encoder (tests pass the hashing encoder).
    """
    config = config or ServeConfig()
    if not guide_dirs:
        raise ValueError("no guide directories given; pass at least one, e.g. indexes/sample")
    if token is not None and not token.strip():
        raise ValueError("the write token is empty; put a secret in --token-file / TEXTGUIDE_TOKEN, or leave it unset")
    service = Service(load_guides(guide_dirs, encoder), token, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        logger.warning("serving guides %s; writes %s", sorted(service.slots),
                       "need a bearer token" if token else "are DISABLED (no --token-file / TEXTGUIDE_TOKEN)")
        telemetry = getattr(app, "_native_telemetry", None)
        if app.fast is not None and telemetry is not None and telemetry.enabled():
            app.fast = None  # OpenTelemetry is configured: every request goes through FastAPI's instrumentation
        service.start()
        yield
        service.stop()

    app = ServeApp(title="textguide", summary="Text-driven shopping guidance over HTTP", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyGuard, max_body_bytes=config.max_body_bytes)
    app.fast = FastReads(service)

    def writer(request: Request) -> None:
        if service.token is None:
            raise HTTPException(403, "writes are disabled on this server: start it with --token-file FILE or "
                                     "TEXTGUIDE_TOKEN set")
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), service.token.encode()):
            raise HTTPException(401, "a write needs the header 'Authorization: Bearer <token>' with the server's token",
                                headers={"WWW-Authenticate": "Bearer"})

    # -- pages and health
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "guides": len(service.slots), "writes": service.token is not None}

    @app.get("/guides", response_model=list[GuideSummary])
    def guides() -> list[GuideSummary]:
        out = []
        for name, slot in sorted(service.slots.items()):
            g = slot.guide
            out.append(GuideSummary(name=name, items=g.index.count, encoder=str(g.encoder_info.get("name")),
                                    tasks=list(g.adapter.config.tasks) if g.adapter is not None else [],
                                    coupons=len(g.coupons)))
        return out

    @app.get("/guides/{name}")
    def info(name: str) -> dict[str, Any]:
        g = service.slot(name).guide
        out = g.info()
        out["name"] = name
        out["slots"] = list(g.adapter_meta.get("slots", [])) or sorted(out["categories"])
        out["slot_field"] = g.adapter_meta.get("slot_field", "category")
        out["coupon_ids"] = list(g.coupons)[:1000]
        out["examples"] = g.index.live_ids()[:5]
        return json.loads(json.dumps(out, default=str))

    # -- reads
    # similar and recommend answer inline on the event loop (a vector lookup and one index search: cheaper than
    # the two thread-pool hops a sync endpoint costs, one for the call and one for the response model);
    # calls that encode text or may score many candidates run in the thread pool, so the loop keeps answering.
    @app.post("/guides/{name}/search", response_model=HitsResponse)
    async def search(name: str, req: SearchRequest) -> HitsResponse:
        g, k = service.slot(name).guide, service.check_k(req.k)
        return _hits_response(name, await run_in_threadpool(_call, lambda: g.search(req.query, k=k,
                                                                                      category=req.category)))

    @app.post("/guides/{name}/similar", response_model=HitsResponse)
    async def similar(name: str, req: SimilarRequest) -> HitsResponse:
        g, k = service.slot(name).guide, service.check_k(req.k)
        return _hits_response(name, _call(lambda: g.similar(req.item_id, k=k, category=req.category)))

    @app.post("/guides/{name}/recommend", response_model=HitsResponse)
    async def recommend(name: str, req: RecommendRequest) -> HitsResponse:
        g, k = service.slot(name).guide, service.check_k(req.k)
        return _hits_response(name, _call(lambda: g.recommend(
            req.history, k=k, category=req.category, exclude_history=req.exclude_history,
            on_unknown=req.on_unknown, method=req.method)))

    @app.post("/guides/{name}/complete_outfit", response_model=HitsResponse)
    async def complete_outfit(name: str, req: OutfitRequest) -> HitsResponse:
        g, k = service.slot(name).guide, service.check_k(req.k)
        return _hits_response(name, await run_in_threadpool(_call, lambda: g.complete_outfit(
            req.items, k=k, slot=req.slot, candidates=req.candidates, on_unknown=req.on_unknown, method=req.method)))

    @app.post("/guides/{name}/rank_coupons", response_model=HitsResponse)
    async def rank_coupons(name: str, req: CouponRequest) -> HitsResponse:
        g = service.slot(name).guide
        return _hits_response(name, await run_in_threadpool(_call, lambda: g.rank_coupons(
            req.history, req.coupons, profile=req.profile, on_unknown=req.on_unknown, method=req.method)))

    # -- writes
    @app.post("/guides/{name}/remove", response_model=RemoveResponse, dependencies=[Depends(writer)])
    def remove(name: str, req: RemoveRequest) -> RemoveResponse:
        slot = service.slot(name)
        _call(lambda: slot.write(lambda g: g.remove(req.ids)))
        return RemoveResponse(guide=name, removed=len(set(req.ids)), items=slot.guide.index.count)

    @app.post("/guides/{name}/onboard", response_model=JobResponse, status_code=202, dependencies=[Depends(writer)],
              openapi_extra={"requestBody": {"required": True, "content": {t: {"schema": {"type": "string",
                             "format": "binary"}} for t in CATALOG_TYPES}}})
    async def onboard(
        name: str,
        request: Request,
        category: Optional[str] = Query(None, description="category of every new item"),
        replace: bool = Query(False, description="replace items whose id exists with another text"),
        precision: Optional[Literal["fp32", "bf16"]] = Query(None),
        id_column: str = "id",
        title_column: str = "title",
        description_column: str = Query("description", description="'none' if absent"),
        category_column: str = Query("category", description="'none' if absent"),
        brand_column: str = Query("brand", description="'none' if absent"),
        price_column: str = Query("price", description="'none' if absent"),
        extra_column: list[str] = Query([], description="extra metadata column to keep (repeatable)"),
        template: Optional[str] = Query(None, description="text template, e.g. '{title}. {brand}. {description}'"),
        strict: bool = Query(False, description="an empty title is an error instead of a skipped row"),
        on_duplicate: Literal["error", "last"] = "error",
    ) -> JobResponse:
        slot = service.slot(name)
        body = await request.body()
        if not body:
            raise HTTPException(422, "the request body is empty: send the catalog file as the body")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()

        def opt(v: str) -> str | None:
            return None if v in ("", "none", "-") else v

        columns = ColumnMap(id=id_column, title=title_column, description=opt(description_column),
                            category=opt(category_column), brand=opt(brand_column), price=opt(price_column),
                            extra=tuple(extra_column))
        catalog = parse_catalog(body, CATALOG_TYPES[ctype], columns, template, strict=strict,
                                on_duplicate=on_duplicate, keep=slot.guide.extra_fields)
        use_cache = config.use_cache

        def work(g: Guide) -> dict[str, Any]:
            cache = EmbeddingCache() if use_cache else None
            try:
                report = g.onboard(catalog, category=category, replace=replace, cache=cache, precision=precision,
                                   low_priority=config.niceness > 0)
            finally:
                if cache is not None:
                    cache.close()
            return {"added": report.added, "replaced": report.replaced, "unchanged": report.unchanged,
                    "items": report.items, "seconds": round(report.seconds, 3), "precision": report.precision}

        job = service.submit(slot, "onboard", work)
        return JobResponse(**job.__dict__)

    @app.get("/jobs/{job_id}", response_model=JobResponse)
    def job(job_id: str) -> JobResponse:
        if job_id not in service.jobs:
            raise HTTPException(404, f"unknown job {job_id!r}; jobs are kept in memory until the server stops")
        return JobResponse(**service.jobs[job_id].__dict__)

    return app


def parse_catalog(body: bytes, suffix: str, columns: ColumnMap, template: str | None, **kwargs: Any):
    """An uploaded catalog (the request body) read and validated like a file; errors name 'upload<suffix>'."""
    with tempfile.TemporaryDirectory(prefix="textguide-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(body)
        try:
            return _call(lambda: load_catalog(path, columns, template, **kwargs))
        except HTTPException as e:
            e.detail = str(e.detail).replace(str(path), path.name)
            raise


def read_token(token_file: str | os.PathLike[str] | None) -> str | None:
    """The write token: the first line of ``token_file``, else ``$TEXTGUIDE_TOKEN``, else ``None`` (writes off)."""
    if token_file is not None:
        token = Path(token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"{token_file}: the token file is empty; write a secret into it")
        return token
    return os.environ.get("TEXTGUIDE_TOKEN", "").strip() or None


class _HeldHeaders:
    """An asyncio transport that holds a response's status line and headers back until its body is written,
    so a small answer leaves in one write (one TCP segment, one wake-up of the client) instead of two."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._held = b""

    def write(self, data: bytes) -> None:
        if self._held:
            data, self._held = self._held + data, b""
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 1") and data.endswith(b"\r\n\r\n"):
            self._held = data  # a final response's header block (not 100 Continue): wait for the body
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held:
            data, self._held = self._held, b""
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return len(self._held) + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


def http_protocol() -> Any:
    """The ``http`` protocol for uvicorn: httptools, sending each answer in one write (``"auto"`` without it)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: uvicorn's own choice
        return "auto"

    class OneWriteHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(_HeldHeaders(transport))

        def on_response_complete(self) -> None:
            self.transport.flush()  # a response without a body write (HEAD) sends its headers now
            super().on_response_complete()

    return OneWriteHttpToolsProtocol


class BackgroundServer:
    """uvicorn serving ``app`` on a free port of ``host`` (loopback) in a thread: for tests and benchmarks.

    Example:
        >>> with BackgroundServer(create_app(["indexes/sample"])) as server:   # doctest: +SKIP
        ...     httpx.get(server.url + "/healthz").json()
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", start_timeout: float = 30.0) -> None:
        import socket

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))  # port 0: the kernel picks a free one
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.start_timeout = start_timeout
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, http=http_protocol()))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="textguide-uvicorn", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()
