"""``textguide serve`` through a real HTTP client (httpx) against a live uvicorn on a free loopback port.

The truth for every read endpoint is the Python API on an independently loaded copy of the same directory;
every error class of the issue gets its status code and a message naming the culprit, and no bad request
changes a guide on disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve,serve-test]'")
httpx = pytest.importorskip("httpx", reason="the serve-test extra is not installed: pip install -e '.[serve-test]'")

from textguide import Guide
from textguide.adapters import AdapterConfig, MultiTaskAdapter
from textguide.catalog import Catalog
from textguide.encoder import HashingEncoder
from textguide.serve import BackgroundServer, ServeConfig, create_app

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ps3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SLOTS = ["upper", "shoe", "bag"]
MAX_BODY = 64 * 1024
COUPONS = {"c-kitchen": ["p01", "p02", "p03"], "c-shoes": ["p09", "p10"], "c-decor": ["p16", "p17"]}


def make_guides(root: Path, products: list[dict]) -> tuple[Path, Path]:
    """'shop': untrained adapter (recommend, outfit, coupon), slots and coupons; 'plain': text only."""
    enc = HashingEncoder(dim=32)
    shop = Guide.build(Catalog.from_records(products), enc)
    slot = {"Tops": "upper", "Shoes": "shoe", "Bags": "bag"}
    shop.index.metadata["slot"] = [slot.get(c, "") for c in shop.index.metadata["category"]]
    torch.manual_seed(0)
    model = MultiTaskAdapter(AdapterConfig(input_dim=32, dim=16, seq_heads=2, n_slots=len(SLOTS), profile_dim=32))
    shop.set_adapter(model, {"slot_field": "slot", "slots": SLOTS, "profile": "text"})
    shop.add_coupons(COUPONS, save=False)
    shop.save(root / "shop")
    Guide.build(Catalog.from_records(products), enc).save(root / "plain")
    return root / "shop", root / "plain"


def disk_state(path: Path) -> str:
    """A digest of every file of a guide directory (a write changes it)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def guides(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import PRODUCTS

    return make_guides(tmp_path_factory.mktemp("guides"), [dict(p) for p in PRODUCTS])


@pytest.fixture(scope="module")
def server(guides: tuple[Path, Path]):
    app = create_app(list(guides), TOKEN, encoder=HashingEncoder(dim=32),
                     config=ServeConfig(max_body_bytes=MAX_BODY, max_k=50, refresh_seconds=0.1, niceness=0))
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: BackgroundServer):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def shop(guides: tuple[Path, Path]) -> Guide:
    """The truth: the 'shop' directory loaded in this process, beside the server's own copy."""
    return Guide.load(guides[0], HashingEncoder(dim=32))


def wait_job(client, job_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def same_hits(answer: dict, hits) -> None:
    assert answer["ids"] == hits.ids
    np.testing.assert_allclose(answer["scores"], hits.scores, rtol=1e-5, atol=1e-6)
    assert answer["method"] == hits.method
    assert answer["items"] == hits.items  # every item field, as the Python API gives it
    assert answer["skipped"] == hits.skipped


# ------------------------------------------------------------------------------------------ reads
def test_health_guides_and_info(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "guides": 2, "writes": True}
    listed = {g["name"]: g for g in client.get("/guides").json()}
    assert listed["shop"]["items"] == 20 and listed["shop"]["coupons"] == 3
    assert sorted(listed["shop"]["tasks"]) == ["coupon", "outfit", "recommend"]
    assert listed["plain"]["tasks"] == [] and listed["plain"]["encoder"] == "hashing:32"
    info = client.get("/guides/shop").json()
    assert info["items"] == 20 and info["slots"] == SLOTS and info["slot_field"] == "slot"
    assert info["categories"] == {"Kitchen": 4, "Tops": 4, "Shoes": 4, "Bags": 3, "Decor": 5}
    assert sorted(info["coupon_ids"]) == sorted(COUPONS)
    r = client.get("/guides/nope")
    assert r.status_code == 404 and "'nope'" in r.json()["detail"] and "plain" in r.json()["detail"]


def test_openapi_lists_every_endpoint(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/healthz", "/guides", "/guides/{name}", "/jobs/{job_id}"):
        assert p in paths
    for op in ("search", "similar", "recommend", "complete_outfit", "rank_coupons", "onboard", "remove"):
        assert "post" in paths[f"/guides/{{name}}/{op}"], op
    assert "text/csv" in paths["/guides/{name}/onboard"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_search_and_similar_match_the_python_api(client, shop: Guide) -> None:
    r = client.post("/guides/shop/search", json={"query": "linen summer shirt", "k": 5})
    assert r.status_code == 200
    same_hits(r.json(), shop.search("linen summer shirt", k=5))
    assert r.json()["guide"] == "shop" and r.json()["items"][0]["title"]
    r = client.post("/guides/shop/search", json={"query": "boots", "k": 3, "category": "Shoes"})
    same_hits(r.json(), shop.search("boots", k=3, category="Shoes"))
    assert {i["category"] for i in r.json()["items"]} == {"Shoes"}
    r = client.post("/guides/shop/similar", json={"item_id": "p06", "k": 4})
    same_hits(r.json(), shop.similar("p06", k=4))
    assert "p06" not in r.json()["ids"]


def test_tasks_match_the_python_api(client, shop: Guide) -> None:
    r = client.post("/guides/shop/recommend", json={"history": ["p01", "p05"], "k": 4})
    same_hits(r.json(), shop.recommend(["p01", "p05"], k=4))
    assert r.json()["method"] == "adapter"
    r = client.post("/guides/shop/recommend", json={"history": ["p01", "zzz"], "k": 4, "on_unknown": "skip",
                                                    "method": "text"})
    same_hits(r.json(), shop.recommend(["p01", "zzz"], k=4, on_unknown="skip", method="text"))
    assert r.json()["skipped"] == ["zzz"] and r.json()["method"] == "text"
    r = client.post("/guides/shop/complete_outfit", json={"items": ["p05"], "k": 3, "slot": "shoe"})
    same_hits(r.json(), shop.complete_outfit(["p05"], k=3, slot="shoe"))
    assert {i["slot"] for i in r.json()["items"]} == {"shoe"}
    r = client.post("/guides/shop/complete_outfit", json={"items": ["p05"], "k": 2, "candidates": ["p09", "p10", "p11"]})
    same_hits(r.json(), shop.complete_outfit(["p05"], k=2, candidates=["p09", "p10", "p11"]))
    profile = {"age": "45-54", "income": "50-74K", "kids_count": 1}
    r = client.post("/guides/shop/rank_coupons", json={"history": ["p02"], "profile": profile})
    truth = shop.rank_coupons(["p02"], profile=profile)
    same_hits(r.json(), truth)
    assert sorted(r.json()["ids"]) == sorted(COUPONS) and all(0 <= s <= 1 for s in r.json()["scores"])
    r = client.post("/guides/shop/rank_coupons", json={"history": ["p02"], "coupons": {"new": ["p18", "p19"]}})
    same_hits(r.json(), shop.rank_coupons(["p02"], {"new": ["p18", "p19"]}))


# ------------------------------------------------------------------------------------------ bad input
BAD = [  # (endpoint, body, status, words the message must contain)
    ("similar", {"item_id": "nope-1", "k": 3}, 404, ["nope-1"]),
    ("recommend", {"history": ["p01", "ghost-7"]}, 404, ["ghost-7"]),
    ("complete_outfit", {"items": ["ghost-8"], "slot": "shoe"}, 404, ["ghost-8"]),
    ("rank_coupons", {"history": ["p01"], "coupons": ["no-such-coupon"]}, 404, ["no-such-coupon"]),
    ("search", {"query": "shirt", "k": 0}, 422, ["k must be between 1 and 50"]),
    ("search", {"query": "shirt", "k": 51}, 422, ["k must be between 1 and 50"]),
    ("similar", {"item_id": "p01", "k": -2}, 422, ["k must be between"]),
    ("search", {"query": "shirt", "k": "5"}, 422, ["valid integer"]),
    ("search", {"query": "shirt", "k": 2.5}, 422, ["valid integer"]),
    ("search", {"query": 17}, 422, ["valid string"]),
    ("search", {"query": ""}, 422, ["at least 1 character"]),
    ("search", {"query": "   "}, 422, ["must not be empty"]),
    ("search", {"k": 3}, 422, ["query", "Field required"]),
    ("search", {"query": "shirt", "color": "red"}, 422, ["color", "Extra inputs"]),
    ("recommend", {"history": []}, 422, ["history", "at least 1 item"]),
    ("recommend", {"history": "p01"}, 422, ["history", "valid list"]),
    ("recommend", {"history": ["p01"], "method": "magic"}, 422, ["method", "'auto', 'adapter' or 'text'"]),
    ("complete_outfit", {"items": ["p05"], "slot": "hat"}, 422, ["unknown slot 'hat'"]),
    ("rank_coupons", {"history": [], "method": "text"}, 422, ["history is empty"]),
]


@pytest.mark.parametrize("endpoint,body,status,words", BAD, ids=[f"{e}-{s}-{i}" for i, (e, _, s, _) in enumerate(BAD)])
def test_bad_requests_get_a_clear_4xx(client, endpoint: str, body: dict, status: int, words: list[str]) -> None:
    r = client.post(f"/guides/shop/{endpoint}", json=body)
    assert r.status_code == status, r.text
    text = json.dumps(r.json()["detail"])
    for w in words:
        assert w in text, (w, text)


def test_transport_level_errors(client, guides) -> None:
    before = [disk_state(p) for p in guides]
    r = client.post("/guides/nope/search", json={"query": "shirt"})
    assert r.status_code == 404 and "unknown guide 'nope'" in r.json()["detail"]
    r = client.post("/guides/shop/search", content=b'{"query": "shirt", ', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in json.dumps(r.json()["detail"])
    r = client.post("/guides/shop/search", content=b"query=shirt", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "text/plain" in r.json()["detail"] and "application/json" in r.json()["detail"]
    r = client.post("/guides/shop/search", content=b'{"query": "shirt"}')  # no content type at all
    assert r.status_code == 415
    big = {"query": "shirt " * (MAX_BODY // 5)}
    r = client.post("/guides/shop/search", json=big)
    assert r.status_code == 413 and str(MAX_BODY) in r.json()["detail"]

    def chunks():  # no Content-Length: the limit holds for a streamed body too
        for _ in range(20):
            yield b"x" * 8192

    r = client.post("/guides/plain/onboard", content=chunks(), headers={"Content-Type": "text/csv", **AUTH})
    assert r.status_code == 413
    r = client.get("/guides/shop/search")
    assert r.status_code == 405
    for _ in range(2):  # an answer without a body (HEAD) is sent whole, and the connection keeps working
        r = client.head("/healthz")
        assert r.status_code in (200, 405) and r.content == b""
    assert client.get("/healthz").json()["status"] == "ok"
    r = client.get("/jobs/job-999")
    assert r.status_code == 404 and "job-999" in r.json()["detail"]
    assert [disk_state(p) for p in guides] == before


def test_hot_reads_answer_exactly_as_the_fastapi_routes(guides) -> None:
    """search / similar / recommend take a shortcut past FastAPI's request machinery (``FastReads``): with and
    without it every answer, good or bad, is the same bytes and status."""
    app = create_app([guides[0]], TOKEN, encoder=HashingEncoder(dim=32),
                     config=ServeConfig(max_body_bytes=MAX_BODY, max_k=50, refresh_seconds=0, niceness=0))
    asks = [("similar", {"item_id": "p03", "k": 4}), ("similar", {"item_id": "p03", "k": 4, "category": "Shoes"}),
            ("search", {"query": "leather shoes", "k": 5}), ("recommend", {"history": ["p01", "p09"], "k": 3}),
            ("recommend", {"history": ["p01", "ghost"], "on_unknown": "skip", "exclude_history": False}),
            ("recommend", {"history": ["p02"], "method": "text"})]
    asks += [(e, b) for e, b, _, _ in BAD if e in ("search", "similar", "recommend")]
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        shortcut = app.fast
        assert shortcut is not None
        fast = [http.post(f"/guides/shop/{e}", json=b) for e, b in asks]
        app.fast = None
        slow = [http.post(f"/guides/shop/{e}", json=b) for e, b in asks]
    for (e, b), a, z in zip(asks, fast, slow):
        assert (a.status_code, a.content) == (z.status_code, z.content), (e, b)
        assert a.headers["content-type"] == z.headers["content-type"] == "application/json"
    assert sum(a.status_code == 200 for a in fast) == 6
    assert shortcut.answered == 6  # every good read took the shortcut, every bad one the route


# ------------------------------------------------------------------------------------------ writes
def csv_body(rows: list[dict]) -> bytes:
    return pd.DataFrame(rows).to_csv(index=False).encode()


NEW = [{"id": f"t{i:02d}", "title": f"Wooden toy train {i}", "brand": "Choo", "price": 20 + i,
        "description": "Painted beech wagons"} for i in range(6)]


def test_writes_need_the_token(client, guides) -> None:
    before = disk_state(guides[1])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = client.post("/guides/plain/onboard", content=csv_body(NEW), headers={"Content-Type": "text/csv", **headers})
        assert r.status_code == 401 and "Bearer" in r.json()["detail"], headers
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.post("/guides/plain/remove", json={"ids": ["p01"]}, headers=headers)
        assert r.status_code == 401
    assert disk_state(guides[1]) == before


def test_onboard_runs_as_a_job_and_is_served(client, guides) -> None:
    r = client.post("/guides/plain/onboard", params={"category": "Toys"}, content=csv_body(NEW),
                    headers={"Content-Type": "text/csv", **AUTH})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    assert job["counts"]["added"] == 6 and job["counts"]["items"] == 26 and job["guide"] == "plain"
    hits = client.post("/guides/plain/search", json={"query": "wooden toy train", "k": 6, "category": "Toys"}).json()
    assert sorted(hits["ids"]) == [r["id"] for r in NEW]
    assert client.get("/guides/plain").json()["categories"]["Toys"] == 6
    assert Guide.load(guides[1]).index.count == 26  # on disk too
    # the same upload again: idempotent, nothing added
    r = client.post("/guides/plain/onboard", content=csv_body(NEW), headers={"Content-Type": "text/csv", **AUTH})
    again = wait_job(client, r.json()["id"])["counts"]
    assert (again["added"], again["unchanged"], again["items"]) == (0, 6, 26)


def test_onboarded_slot_column_reaches_complete_outfit(guides, tmp_path: Path) -> None:
    """An upload with id,title,category,slot to an outfit guide: the new shoes answer slot='shoe' at once."""
    shutil.copytree(guides[0], tmp_path / "shop")
    app = create_app([tmp_path / "shop"], TOKEN, encoder=HashingEncoder(dim=32),
                     config=ServeConfig(refresh_seconds=0, niceness=0))
    rows = [{"id": "n1", "title": "Red leather ankle boots", "category": "Boots", "slot": "shoe"},
            {"id": "n2", "title": "Quilted shoulder bag", "category": "Bags", "slot": "bag"}]
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/guides/shop/onboard", content=csv_body(rows), headers={"Content-Type": "text/csv", **AUTH})
        assert wait_job(c, r.json()["id"])["state"] == "done"
        shoes = c.post("/guides/shop/complete_outfit", json={"items": ["p05"], "k": 50, "slot": "shoe"}).json()
        bags = c.post("/guides/shop/complete_outfit", json={"items": ["p05"], "k": 50, "slot": "bag"}).json()
    assert "n1" in shoes["ids"] and "n2" not in shoes["ids"] and "n2" in bags["ids"]
    assert Guide.load(tmp_path / "shop", HashingEncoder(dim=32)).index.item("n1")["slot"] == "shoe"  # on disk


def test_onboard_jsonl_and_parquet_uploads(client) -> None:
    rows = [{"sku": "j1", "name": "Jute doormat", "price": 12.5}, {"sku": "j2", "name": "Coir doormat"}]
    body = "\n".join(json.dumps(r) for r in rows).encode()
    params = {"id_column": "sku", "title_column": "name", "category": "Home", "description_column": "none",
              "brand_column": "none", "category_column": "none"}
    r = client.post("/guides/plain/onboard", params=params, content=body,
                    headers={"Content-Type": "application/x-ndjson", **AUTH})
    assert wait_job(client, r.json()["id"])["counts"]["added"] == 2
    buf = io.BytesIO()
    pd.DataFrame([{"sku": "q1", "name": "Sisal rug", "price": 80.0}]).to_parquet(buf, index=False)
    r = client.post("/guides/plain/onboard", params=params, content=buf.getvalue(),
                    headers={"Content-Type": "application/vnd.apache.parquet", **AUTH})
    assert wait_job(client, r.json()["id"])["state"] == "done"
    items = client.post("/guides/plain/search", json={"query": "doormat rug", "k": 3, "category": "Home"}).json()
    assert sorted(items["ids"]) == ["j1", "j2", "q1"]
    assert {i["id"]: i["price"] for i in items["items"]}["j1"] == 12.5


BAD_UPLOADS = [  # (csv text, query params, words of the 422 message)
    ("id,title,price\nb1,Mug,3\nb2,Cup,cheap\n", {}, ["upload.csv", "'price'", "row 2", "'cheap'"]),
    ("id,title\nb1,Mug\n,Cup\n", {}, ["'id'", "rows [2]"]),
    ("id,title\nb1,Mug\nb2,\n", {"strict": "true"}, ["'title'", "rows [2]"]),
    ("sku,title\nb1,Mug\n", {}, ["missing required column 'id'", "sku"]),
    ("id,title\nb1,Mug\nb1,Cup\n", {}, ["duplicate ids", "b1"]),
    ("id,title\n", {}, ["empty"]),
    ("id,title\nb1,Mug\n", {"template": "{title}. {colour}"}, ["colour"]),
]


@pytest.mark.parametrize("text,params,words", BAD_UPLOADS)
def test_bad_catalog_uploads_are_rejected_whole(client, guides, text: str, params: dict, words: list[str]) -> None:
    before = disk_state(guides[1]), client.get("/guides/plain").json()["items"]
    r = client.post("/guides/plain/onboard", params=params, content=text.encode(),
                    headers={"Content-Type": "text/csv", **AUTH})
    assert r.status_code == 422, r.text
    for w in words:
        assert w in r.json()["detail"], (w, r.json()["detail"])
    assert "textguide-upload-" not in r.json()["detail"]  # the upload is named "upload.csv", no server temp path
    assert (disk_state(guides[1]), client.get("/guides/plain").json()["items"]) == before


def test_bad_upload_transport(client, guides) -> None:
    before = disk_state(guides[1])
    r = client.post("/guides/plain/onboard", content=b"id,title\nx,Y\n", headers={"Content-Type": "image/png", **AUTH})
    assert r.status_code == 415 and "text/csv" in r.json()["detail"]
    r = client.post("/guides/plain/onboard", content=b"", headers={"Content-Type": "text/csv", **AUTH})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = client.post("/guides/plain/onboard", content=b"\x00\x01garbage", headers={"Content-Type": "application/x-parquet", **AUTH})
    assert r.status_code == 422 and "Parquet" in r.json()["detail"]
    r = client.post("/guides/plain/onboard", params={"on_duplicate": "first"}, content=b"id,title\nx,Y\n",
                    headers={"Content-Type": "text/csv", **AUTH})
    assert r.status_code == 422 and "on_duplicate" in json.dumps(r.json()["detail"])
    assert disk_state(guides[1]) == before


def test_onboard_clash_fails_the_job_and_changes_nothing(client, guides) -> None:
    before = disk_state(guides[1])
    r = client.post("/guides/plain/onboard", content=csv_body([{"id": "p01", "title": "Another text entirely"}]),
                    headers={"Content-Type": "text/csv", **AUTH})
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "failed" and "p01" in job["error"] and "replace" in job["error"]
    assert disk_state(guides[1]) == before
    assert client.post("/guides/plain/similar", json={"item_id": "p01", "k": 1}).status_code == 200


def test_remove(client, guides) -> None:
    n = client.get("/guides/plain").json()["items"]
    r = client.post("/guides/plain/remove", json={"ids": ["p20", "ghost-9"]}, headers=AUTH)
    assert r.status_code == 404 and "ghost-9" in r.json()["detail"]
    assert client.get("/guides/plain").json()["items"] == n  # nothing removed
    r = client.post("/guides/plain/remove", json={"ids": ["p20"]}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"guide": "plain", "removed": 1, "items": n - 1}
    r = client.post("/guides/plain/similar", json={"item_id": "p20", "k": 3})
    assert r.status_code == 404
    hits = client.post("/guides/plain/search", json={"query": "Brass photo frame", "k": 50}).json()
    assert "p20" not in hits["ids"]
    assert Guide.load(guides[1]).index.count == n - 1


def test_readers_keep_flowing_during_onboarding(client, guides) -> None:
    """A reader thread queries while a 1,500-item onboarding runs: every answer is 200 and whole."""
    n0 = client.get("/guides/plain").json()["items"]
    errors, answers, stop = [], [], threading.Event()

    def reader() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
            while not stop.is_set():
                r = c.post("/guides/plain/similar", json={"item_id": "p01", "k": 5})
                (answers if r.status_code == 200 and len(r.json()["ids"]) == 5 else errors).append(r.status_code)

    rows = [{"id": f"bulk{i:04d}", "title": f"Bulk item {i} ceramic mug blue {i % 7}"} for i in range(1500)]
    t = threading.Thread(target=reader)
    t.start()
    try:
        r = client.post("/guides/plain/onboard", content=csv_body(rows), headers={"Content-Type": "text/csv", **AUTH})
        assert r.status_code == 202
        job = wait_job(client, r.json()["id"], timeout=60)
    finally:
        stop.set()
        t.join()
    assert job["state"] == "done" and job["counts"]["added"] == 1500
    assert errors == [] and len(answers) > 0
    # every answer after the job reports done sees the new items
    assert client.get("/guides/plain").json()["items"] == n0 + 1500
    assert client.post("/guides/plain/similar", json={"item_id": "bulk0042", "k": 1}).status_code == 200


def test_an_external_writer_is_picked_up(client, guides) -> None:
    other = Guide.load(guides[1], HashingEncoder(dim=32))  # e.g. `textguide onboard` in another process
    other.onboard(Catalog.from_records([{"id": "ext-1", "title": "Enamel camping mug"}]), category="Outdoor")
    deadline = time.monotonic() + 10
    while client.post("/guides/plain/similar", json={"item_id": "ext-1", "k": 1}).status_code != 200:
        assert time.monotonic() < deadline, "the server did not pick up the external write"
        time.sleep(0.05)
    assert client.get("/guides/plain").json()["categories"].get("Outdoor") == 1


def test_writes_disabled_without_a_token(guides, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="textguide")
    app = create_app([guides[0]], None, encoder=HashingEncoder(dim=32), config=ServeConfig(refresh_seconds=0))
    before = disk_state(guides[0])
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/healthz").json()["writes"] is False
        r = c.post("/guides/shop/remove", json={"ids": ["p01"]}, headers=AUTH)
        assert r.status_code == 403 and "writes are disabled" in r.json()["detail"]
        r = c.post("/guides/shop/onboard", content=b"id,title\nx,Y\n", headers={"Content-Type": "text/csv", **AUTH})
        assert r.status_code == 403
    assert "writes are DISABLED" in caplog.text
    assert disk_state(guides[0]) == before


def test_create_app_rejects_bad_setups(guides, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no guide directories"):
        create_app([])
    with pytest.raises(ValueError, match="token is empty"):
        create_app([guides[0]], "  ", encoder=HashingEncoder(dim=32))
    (tmp_path / "shop").mkdir()
    with pytest.raises(ValueError, match="both named 'shop'"):
        create_app([guides[0], tmp_path / "shop"], encoder=HashingEncoder(dim=32))


def test_the_serve_command(guides, tmp_path: Path) -> None:
    """`textguide serve` in a subprocess: starts, says writes are off or on, answers, stops."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("TEXTGUIDE_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "textguide.cli", "serve", str(guides[0]), "--port", str(port),
                             "--token-file", str(token_file)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "textguide serve did not start"
                time.sleep(0.2)
        assert r.json() == {"status": "ok", "guides": 1, "writes": True}
        page = httpx.get(f"http://127.0.0.1:{port}/")
        assert page.status_code == 200 and "<title>textguide</title>" in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/static/app.js").status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "writes need a bearer token" in err
